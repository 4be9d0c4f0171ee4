// A throwaway fleet of real agent processes on 127.0.0.1 for integration tests: a CA, a relay
// on a system-chosen port, onsite and master daemons, each with its own control socket and
// state dir. Everything it starts is stopped by `close()` (use `await using`).
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { BUN, MAIN, agent } from "./cli.ts";
import { spawnLogged } from "./logged-spawn.ts";
import { nsArgv } from "./netns.ts";
import { waitFor } from "./wait.ts";

export interface Daemon {
  role: string;
  id: string;
  proc: Subprocess<"ignore", "pipe", "pipe">;
  sock: string;
  bundle: string;
  args: string[];
  /** Network namespace it runs in (`ip netns exec`), if any. */
  netns?: string;
  log: () => string;
}

export class Fleet {
  readonly dir = mkdtempSync(join(tmpdir(), "agent-fleet-"));
  readonly ca = join(this.dir, "ca");
  readonly daemons: Daemon[] = [];
  relayPort = 0;
  /** Put before the daemon's command line, e.g. ["prlimit", "--nofile=80:80"] (it execs). */
  wrap: string[] = [];

  static async create(): Promise<Fleet> {
    const f = new Fleet();
    const r = await agent(["pki", "init", "--dir", f.ca]);
    if (r.code !== 0) throw new Error(`pki init: ${r.stderr}`);
    return f;
  }

  async issue(role: string, id: string, extra: string[] = []): Promise<string> {
    const out = join(this.dir, `${id}.bundle`);
    const r = await agent(["pki", "issue", "--dir", this.ca, "--role", role, "--id", id, ...extra, "--out", out]);
    if (r.code !== 0) throw new Error(`pki issue ${id}: ${r.stderr}`);
    return out;
  }

  async start(role: string, id: string, args: string[], bundle?: string, netns?: string): Promise<Daemon> {
    bundle ??= existsSync(join(this.dir, `${id}.bundle`)) ? join(this.dir, `${id}.bundle`) : await this.issue(role, id, role === "relay" ? ["--host", "127.0.0.1"] : []);
    const sock = join(this.dir, `${id}.sock`);
    const full = ["--role", role, "--bundle", bundle, ...args, "--control", sock, "--state-dir", join(this.dir, `state-${id}`)];
    // `ip netns exec` execs the program: the pid is the daemon's own.
    const argv = [...this.wrap, BUN, MAIN, ...full];
    const { proc, log } = spawnLogged(netns ? nsArgv(netns, ...argv) : argv);
    const d: Daemon = { role, id, proc, sock, bundle, args, netns, log };
    this.daemons.push(d);
    await waitFor(() => existsSync(sock) || proc.exitCode !== null, 10_000, `${id} control socket`);
    if (proc.exitCode !== null) throw new Error(`${id} exited with ${proc.exitCode}: ${log()}`);
    return d;
  }

  async startRelay(id = "relay-1", extra: string[] = [], port = 0): Promise<Daemon> {
    const d = await this.start("relay", id, ["--listen", `127.0.0.1:${port}`, ...extra]);
    const st = await this.status(d);
    this.relayPort = (st.relay as { port: number }).port;
    return d;
  }

  startOnsite(id = "site-1", extra: string[] = ["--allow", "127.0.0.1/32"]): Promise<Daemon> {
    return this.start("onsite", id, ["--relay", `127.0.0.1:${this.relayPort}`, ...extra]);
  }

  startMaster(id = "tech-1", extra: string[] = []): Promise<Daemon> {
    return this.start("master", id, ["--relay", `127.0.0.1:${this.relayPort}`, ...extra]);
  }

  async status(d: Daemon): Promise<Record<string, unknown>> {
    return JSON.parse((await this.cli(d, ["status", "--json"])).stdout);
  }

  /** Runs `agent ARGS --control SOCK` against a daemon. */
  cli(d: Daemon, args: string[]) {
    return agent([...args, "--control", d.sock]);
  }

  async json<T>(d: Daemon, args: string[]): Promise<T> {
    const r = await this.cli(d, [...args, "--json"]);
    if (r.code !== 0) throw new Error(`agent ${args.join(" ")}: exit ${r.code}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  }

  /** Waits until the relay connection of a device is up. */
  async waitConnected(d: Daemon, ms = 15_000): Promise<void> {
    await waitFor(async () => ((await this.status(d))[d.role] as { state?: string })?.state === "up", ms, `${d.id} connected to the relay`);
  }

  /** Opens a forward through the master; returns the local port and session id. */
  async connect(master: Daemon, onsite: string, targets: string[], ttl?: string): Promise<{ session: string; ports: number[] }> {
    const args = ["connect", onsite, ...targets.flatMap((t) => ["--forward", `127.0.0.1:0:${t}`])];
    if (ttl) args.push("--ttl", ttl);
    const s = await this.json<{ session: string; forwards: { port: number }[] }>(master, args);
    return { session: s.session, ports: s.forwards.map((f) => f.port) };
  }

  async stop(d: Daemon, signal: NodeJS.Signals | number = "SIGTERM"): Promise<void> {
    if (d.proc.exitCode === null && d.proc.signalCode === null) d.proc.kill(signal);
    await d.proc.exited;
  }

  async restart(d: Daemon): Promise<Daemon> {
    await this.stop(d);
    const idx = this.daemons.indexOf(d);
    if (idx >= 0) this.daemons.splice(idx, 1);
    const args = d.role === "relay" ? ["--listen", `127.0.0.1:${this.relayPort}`, ...d.args.slice(2)] : d.args;
    const again = await this.start(d.role, d.id, args, d.bundle, d.netns);
    return again;
  }

  async close(): Promise<void> {
    for (const d of this.daemons) if (d.proc.exitCode === null && d.proc.signalCode === null) d.proc.kill("SIGTERM");
    await Promise.all(this.daemons.map((d) => Promise.race([d.proc.exited, Bun.sleep(5000).then(() => d.proc.kill("SIGKILL"))])));
    rmSync(this.dir, { recursive: true, force: true });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
