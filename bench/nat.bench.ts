// NAT benchmark (`make bench B=nat`, as root). In namespaces of its own (nt-b*):
//  1. time from `nat add` (a nat.add request on the real onsite daemon's control socket) to
//     the first TCP connection through the new rule, median and p99 over 50 rules, per
//     backend; peer: seed 001's way, one `iptables -t nat -I PREROUTING` process per rule;
//  2. time to apply and to remove 1,000 rules: one backend transaction, and 1,000
//     concurrent nat.add requests to the daemon then one nat.flush, per backend; peer:
//     seed 001's one `iptables -I` (and `-D`) process per rule.
// The backends are each other's peer; the seed way is measured in the same run.
// A rule that lets no connection through within PROBE_TIMEOUT_MS, or a daemon that does not
// come up with the asked backend, ends the benchmark with an error: never a figure.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { controlRequest } from "../src/control.ts";
import { spawnExec } from "../src/nat/backend.ts";
import { IptablesBackend } from "../src/nat/iptables.ts";
import { NftBackend } from "../src/nat/nft.ts";
import type { Rule } from "../src/nat/rule.ts";
import { formatTable } from "../src/table.ts";
import { buildRouterTopology, deleteNamespaces, must } from "../test/helpers/nat-lab.ts";
import { nsArgv } from "../test/helpers/netns.ts";

const CLI = "nt-bc";
const RTR = "nt-br";
const LAN = "nt-bl";
const PEER = "198.18.9.2";
const PUBLIC = "198.18.9.1";
const SERVER = "192.168.79.50";
const LATENCY_RULES = 50;
const BULK_RULES = 1000;
const ROOT = join(import.meta.dir, "..");
const BUN = process.execPath;
const SELF = import.meta.path;
const MAIN = join(ROOT, "src", "main.ts");
const now = () => performance.timeOrigin + performance.now();
/** How long the probe tries one port before it reports that the rule does not work. */
const PROBE_TIMEOUT_MS = 10_000;
/** How long the onsite daemon may take to answer `status` with the asked NAT backend. */
const READY_TIMEOUT_MS = 15_000;

/** Runs a measuring child to completion (no time limit: the seed peer takes a while). */
async function measure(argv: string[]): Promise<{ apply: number; remove: number }> {
  const p = Bun.spawn(argv, { stdout: "pipe", stderr: "inherit" });
  const [out, code] = await Promise.all([new Response(p.stdout).text(), p.exited]);
  if (code !== 0) throw new Error(`${argv.join(" ")} exited ${code}`);
  return JSON.parse(out) as { apply: number; remove: number };
}

function bulkRules(n: number): Rule[] {
  const t = Date.now();
  return [...Array(n).keys()].map((i) => ({
    id: (0x10000000 + i).toString(16),
    proto: "tcp" as const,
    src: PEER + "/32",
    port: 30000 + i,
    toAddr: SERVER,
    toPort: 80,
    ttlMs: 3_600_000,
    owner: "bench",
    createdAt: t,
    expiresAt: t + 3_600_000,
  }));
}

// --- modes run inside a namespace (re-executed through `ip netns exec`) -----------------

async function inside(mode: string, args: string[]): Promise<void> {
  if (mode === "probe") {
    // Reads ports on stdin; for each, tries to connect every millisecond until one connection
    // succeeds (nothing on the router listens there: a connection is the DNAT working), then
    // prints "PORT ok TIME"; after PROBE_TIMEOUT_MS without one, "PORT fail ATTEMPTS".
    for await (const line of console) {
      if (!line.trim()) continue;
      const port = Number(line.trim());
      const until = performance.now() + PROBE_TIMEOUT_MS;
      let attempts = 0;
      let ok = false;
      while (!ok && performance.now() < until) {
        attempts++;
        ok = await new Promise<boolean>((resolve) => {
          // A connect into a black hole waits for the kernel's SYN retries: bound it too.
          const timer = setTimeout(() => resolve(false), Math.max(1, until - performance.now()));
          const done = (v: boolean) => {
            clearTimeout(timer);
            resolve(v);
          };
          Bun.connect({ hostname: PUBLIC, port, socket: { open(s) { s.end(); done(true); }, error() { done(false); }, connectError() { done(false); }, data() {} } }).catch(() => done(false));
        });
        if (!ok) await Bun.sleep(1);
      }
      console.log(ok ? `${port} ok ${now()}` : `${port} fail ${attempts}`);
    }
    return;
  }
  if (mode === "backend") {
    const [name, nText] = args;
    const b = name === "nft" ? new NftBackend(spawnExec) : new IptablesBackend(spawnExec);
    const rules = bulkRules(Number(nText));
    let t = now();
    await b.apply(rules);
    const apply = now() - t;
    t = now();
    await b.apply([]);
    await b.teardown();
    const remove = now() - t;
    console.log(JSON.stringify({ apply, remove }));
    return;
  }
  if (mode === "seed") {
    // Seed 001: one iptables process per rule, inserted at the top of PREROUTING.
    const rules = bulkRules(Number(args[0]));
    const spec = (r: Rule) => ["-t", "nat", "PREROUTING", "-s", r.src, "-p", "tcp", "-m", "tcp", "--dport", String(r.port), "-j", "DNAT", "--to-destination", `${r.toAddr}:${r.toPort}`];
    let t = now();
    for (const r of rules) {
      const s = spec(r);
      await must(["iptables", "-w", s[0]!, s[1]!, "-I", ...s.slice(2)]);
    }
    const apply = now() - t;
    t = now();
    for (const r of rules) {
      const s = spec(r);
      await must(["iptables", "-w", s[0]!, s[1]!, "-D", ...s.slice(2)]);
    }
    const remove = now() - t;
    console.log(JSON.stringify({ apply, remove }));
    return;
  }
  throw new Error(`unknown inside mode ${mode}`);
}

// --- the orchestrating run ---------------------------------------------------------------

const topology = () => buildRouterTopology({ cli: CLI, rtr: RTR, lan: LAN, veth: "ntb", clientAddrs: [PEER], publicAddr: PUBLIC, routerLan: "192.168.79.1", server: SERVER });
const teardown = () => deleteNamespaces([CLI, RTR, LAN]);

function stats(xs: number[]): { median: number; p99: number } {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)]!;
  return { median: at(0.5), p99: at(0.99) };
}

const ms = (x: number) => (x >= 100 ? x.toFixed(0) : x.toFixed(1)) + " ms";

class Probe {
  private readonly proc: Subprocess<"pipe", "pipe", "inherit">;
  private readonly reader: { read(): Promise<{ value?: Uint8Array; done?: boolean }> };
  private buf = "";
  constructor() {
    this.proc = Bun.spawn(nsArgv(CLI, BUN, SELF, "--inside", "probe"), { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
    this.reader = this.proc.stdout.getReader();
  }
  start(port: number): void {
    this.proc.stdin.write(`${port}\n`);
    this.proc.stdin.flush();
  }
  /** When the first connection through the rule for `port` succeeded; throws when none did. */
  async result(port: number, rule: string): Promise<number> {
    while (!this.buf.includes("\n")) {
      const { value, done } = await this.reader.read();
      if (done) throw new Error(`the probe exited while trying port ${port}`);
      this.buf += new TextDecoder().decode(value);
    }
    const line = this.buf.slice(0, this.buf.indexOf("\n"));
    this.buf = this.buf.slice(this.buf.indexOf("\n") + 1);
    const [p, verdict, value] = line.split(" ");
    if (Number(p) !== port) throw new Error(`the probe answered for port ${p} while port ${port} was asked: ${line}`);
    if (verdict !== "ok") throw new Error(`${rule}: no TCP connection to ${PUBLIC}:${port} went through within ${PROBE_TIMEOUT_MS} ms (${value} attempts): the rule does not work, so there is no figure`);
    return Number(value);
  }
  close(): void {
    this.proc.kill();
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.error("nat.bench.ts needs root: it builds network namespaces and firewall rules inside them");
    process.exit(1);
  }
  const dir = mkdtempSync(join(tmpdir(), "agent-nt-bench-"));
  const procs: Subprocess[] = [];
  try {
    await topology();
    const server = Bun.spawn(nsArgv(LAN, BUN, join(ROOT, "test/fixtures/nat/lan-server.ts"), "80", "7"), { stdout: "pipe", stderr: "inherit" });
    procs.push(server);
    await server.stdout.getReader().read();
    await must([BUN, MAIN, "pki", "init", "--dir", join(dir, "ca")]);
    await must([BUN, MAIN, "pki", "issue", "--dir", join(dir, "ca"), "--role", "onsite", "--id", "bench", "--out", join(dir, "b.bundle")]);
    const probe = new Probe();

    const latency: Record<string, { first: number[]; ack: number[] }> = {};
    const bulk: Record<string, { apply: number; remove: number }> = {};
    const daemonBulk: Record<string, { apply: number; remove: number }> = {};

    for (const backend of ["iptables", "nft"] as const) {
      const sock = join(dir, `${backend}.sock`);
      const cfg = join(dir, `${backend}.toml`);
      writeFileSync(cfg, `bundle = "${join(dir, "b.bundle")}"\nrelay = "127.0.0.1:9"\nallow = ["192.168.79.0/24"]\ncontrol = "${sock}"\nstate_dir = "${join(dir, backend)}"\nlog_level = "warn"\n[nat]\nbackend = "${backend}"\nmax_rules = ${BULK_RULES + 10}\nmax_ttl = "1h"\n`);
      const daemon = Bun.spawn(nsArgv(RTR, BUN, MAIN, "--role", "onsite", "--config", cfg), { stdout: "inherit", stderr: "inherit" });
      procs.push(daemon);
      let last = "no answer yet";
      for (const until = performance.now() + READY_TIMEOUT_MS; ; await Bun.sleep(20)) {
        if (daemon.exitCode !== null) throw new Error(`the onsite daemon (nat backend ${backend}) exited ${daemon.exitCode} before it was ready`);
        try {
          const s = (await controlRequest(sock, "status", {}, 500)) as { nat?: { backend?: string } };
          if (s.nat?.backend === backend) break;
          last = `status reports nat ${JSON.stringify(s.nat ?? null)}`;
        } catch (e) {
          last = (e as Error).message; // not up yet
        }
        if (performance.now() > until) throw new Error(`the onsite daemon did not report nat backend ${backend} within ${READY_TIMEOUT_MS} ms (last: ${last})`);
      }

      const first: number[] = [];
      const ack: number[] = [];
      for (let i = 0; i < LATENCY_RULES; i++) {
        const port = 21000 + i;
        probe.start(port);
        await Bun.sleep(5); // the probe is trying (and being refused) before the rule exists
        const t0 = now();
        await controlRequest(sock, "nat.add", { src: PEER, port: String(port), to: `${SERVER}:80`, ttl: "10m" });
        ack.push(now() - t0);
        first.push((await probe.result(port, `agent ${backend} rule (nat.add)`)) - t0);
      }
      latency[backend] = { first, ack };
      await controlRequest(sock, "nat.flush");

      let t = now();
      await Promise.all([...Array(BULK_RULES).keys()].map((i) => controlRequest(sock, "nat.add", { src: PEER, port: String(30000 + i), to: `${SERVER}:80`, ttl: "10m" }, 60_000)));
      const apply = now() - t;
      t = now();
      await controlRequest(sock, "nat.flush", {}, 60_000);
      daemonBulk[backend] = { apply, remove: now() - t };
      daemon.kill("SIGTERM");
      await daemon.exited;

      bulk[backend] = await measure(nsArgv(RTR, BUN, SELF, "--inside", "backend", backend, String(BULK_RULES)));
    }

    // Seed 001's way for the first packet: one iptables -I, then the same probe.
    const seedFirst: number[] = [];
    for (let i = 0; i < LATENCY_RULES; i++) {
      const port = 22000 + i;
      probe.start(port);
      await Bun.sleep(5);
      const t0 = now();
      await must(nsArgv(RTR, "iptables", "-w", "-t", "nat", "-I", "PREROUTING", "-s", `${PEER}/32`, "-p", "tcp", "-m", "tcp", "--dport", String(port), "-j", "DNAT", "--to-destination", `${SERVER}:80`));
      seedFirst.push((await probe.result(port, "seed rule (iptables -I)")) - t0);
    }
    await must(nsArgv(RTR, "iptables", "-t", "nat", "-F", "PREROUTING"));
    const seedBulk = await measure(nsArgv(RTR, BUN, SELF, "--inside", "seed", String(BULK_RULES)));
    probe.close();

    const li = stats(latency.iptables!.first);
    const ln = stats(latency.nft!.first);
    const ls = stats(seedFirst);
    console.log(`\nnat add → first TCP connection through the rule (${LATENCY_RULES} rules each):`);
    process.stdout.write(
      formatTable(
        ["", "agent iptables", "agent nft", "seed: iptables -I"],
        [
          ["median", ms(li.median), ms(ln.median), ms(ls.median)],
          ["p99", ms(li.p99), ms(ln.p99), ms(ls.p99)],
          ["nat.add answered (median)", ms(stats(latency.iptables!.ack).median), ms(stats(latency.nft!.ack).median), "-"],
          ["median vs nft", (li.median / ln.median).toFixed(2) + "x", "1.00x", (ls.median / ln.median).toFixed(2) + "x"],
        ],
      ),
    );
    console.log(`\n${BULK_RULES} rules, apply / remove:`);
    process.stdout.write(
      formatTable(
        ["", "iptables", "nft", "seed: one iptables per rule"],
        [
          ["backend, one transaction: apply", ms(bulk.iptables!.apply), ms(bulk.nft!.apply), ms(seedBulk.apply)],
          ["backend, one transaction: remove", ms(bulk.iptables!.remove), ms(bulk.nft!.remove), ms(seedBulk.remove)],
          [`daemon, ${BULK_RULES} concurrent nat.add`, ms(daemonBulk.iptables!.apply), ms(daemonBulk.nft!.apply), "-"],
          ["daemon, nat.flush", ms(daemonBulk.iptables!.remove), ms(daemonBulk.nft!.remove), "-"],
          ["apply, seed ÷ backend", (seedBulk.apply / bulk.iptables!.apply).toFixed(0) + "x", (seedBulk.apply / bulk.nft!.apply).toFixed(0) + "x", "1x"],
        ],
      ),
    );
  } finally {
    for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.exited));
    await teardown();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === "--inside") await inside(process.argv[3]!, process.argv.slice(4));
else await main();
