// A relay, a master and an onsite daemon composed in THIS process (src/roles), over real TLS on
// 127.0.0.1, with in-memory tunnel hosts: what the wire does with packets can be driven and read
// from the test, while everything between (TLS, mux, relay routing, sessions) is the real code.
// Cross-process tunnels need the Linux host (test/tunnel-system*.test.ts).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveConfig, type RawConfig } from "../../src/config.ts";
import { ControlClient, inProcessTransport } from "../../src/control.ts";
import { createLogger, type Logger } from "../../src/log.ts";
import { FakeBackend, type Exec } from "../../src/nat/backend.ts";
import { initCa, issueToFile, loadBundle, type Bundle } from "../../src/pki.ts";
import type { MasterApi, OnsiteApi } from "../../src/roles/api.ts";
import { Daemon } from "../../src/roles/daemon.ts";
import { composeMaster, type MasterRole } from "../../src/roles/master.ts";
import { composeOnsite, type OnsiteDaemon } from "../../src/roles/onsite.ts";
import { RelayRole } from "../../src/roles/relay.ts";
import { MemoryMasterTunnelHost, MemoryOnsiteTunnelHost, type MemoryMasterOptions, type MemoryOnsiteOptions } from "../../src/tunnel/packet/memory.ts";
import { waitFor } from "./wait.ts";

export interface TrioOptions {
  /** Added to the relay's config (e.g. `access`). */
  relay?: RawConfig;
  onsite?: RawConfig;
  master?: RawConfig;
  onsiteHost?: MemoryOnsiteOptions;
  masterHost?: MemoryMasterOptions;
}

const exec: Exec = async (argv) => ({ code: 0, stdout: argv[0] === "ip" ? "[]" : "", stderr: "" });

/** Bundles are made once per process: RSA keys are slow. */
let bundles: Promise<{ dir: string; relay: Bundle; master: Bundle; onsite: Bundle }> | null = null;
function fleetBundles() {
  bundles ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), "agent-trio-ca-"));
    await initCa(join(dir, "ca"));
    const issue = async (role: "relay" | "master" | "onsite", id: string) => {
      const out = join(dir, `${id}.bundle`);
      await issueToFile(join(dir, "ca"), { role, id, out, ...(role === "relay" ? { hosts: ["127.0.0.1"] } : {}) });
      return loadBundle(out);
    };
    return { dir, relay: await issue("relay", "relay-1"), master: await issue("master", "tech-1"), onsite: await issue("onsite", "site-1") };
  })();
  return bundles;
}

export class Trio {
  readonly dir = mkdtempSync(join(tmpdir(), "agent-trio-"));
  readonly logs: string[] = [];
  relay!: Daemon;
  relayRole!: RelayRole;
  master!: Daemon;
  masterRole!: MasterRole;
  onsite!: Daemon;
  onsiteParts!: OnsiteDaemon;
  masterHost!: MemoryMasterTunnelHost;
  onsiteHost!: MemoryOnsiteTunnelHost;
  masterApi!: ControlClient<MasterApi>;
  onsiteApi!: ControlClient<OnsiteApi>;
  private closed = false;

  private log(tag: string): Logger {
    return createLogger({ level: "debug", json: true, write: (l) => void this.logs.push(`${tag} ${l}`) });
  }

  private config(id: string, raw: RawConfig) {
    return resolveConfig([{ origin: { kind: "flag" }, raw: { control: join(this.dir, `${id}.sock`), state_dir: join(this.dir, `state-${id}`), ...raw } }]);
  }

  static async start(o: TrioOptions = {}): Promise<Trio> {
    const t = new Trio();
    const b = await fleetBundles();
    const rcfg = t.config("relay-1", { listen: "127.0.0.1:0", ...o.relay });
    t.relay = new Daemon({ role: "relay", id: "relay-1" }, rcfg, t.log("relay"));
    t.relayRole = new RelayRole(rcfg, b.relay, t.log("relay"));
    t.relay.add(t.relayRole);
    t.relay.control.serve({ ...t.relay.api(), ...t.relayRole.api }, "relay");
    await t.relay.start();
    const port = (t.relayRole.status() as { port: number }).port;
    await t.startOnsite(o, port);
    await t.startMaster(o, port);
    return t;
  }

  relayPort(): number {
    return (this.relayRole.status() as { port: number }).port;
  }

  async startOnsite(o: TrioOptions, port = this.relayPort()): Promise<void> {
    const b = await fleetBundles();
    const cfg = this.config("site-1", { relay: `127.0.0.1:${port}`, allow: ["192.168.1.0/24"], ...o.onsite });
    this.onsite = new Daemon({ role: "onsite", id: "site-1" }, cfg, this.log("onsite"));
    this.onsiteHost = new MemoryOnsiteTunnelHost(o.onsiteHost);
    this.onsiteParts = await composeOnsite(this.onsite, cfg, b.onsite, this.log("onsite"), { nat: { backend: new FakeBackend(), exec }, tunnelHost: this.onsiteHost });
    this.onsiteApi = new ControlClient<OnsiteApi>(inProcessTransport(this.onsite.control));
    await this.onsite.start();
    await waitFor(() => this.onsiteParts.role.client.state === "up", 10_000, "onsite connected to the relay");
  }

  async startMaster(o: TrioOptions, port = this.relayPort()): Promise<void> {
    const b = await fleetBundles();
    const cfg = this.config("tech-1", { relay: `127.0.0.1:${port}`, ...o.master });
    this.master = new Daemon({ role: "master", id: "tech-1" }, cfg, this.log("master"));
    this.masterHost = new MemoryMasterTunnelHost(o.masterHost);
    this.masterRole = composeMaster(this.master, cfg, b.master, this.log("master"), { tunnelHost: this.masterHost }).role;
    this.masterApi = new ControlClient<MasterApi>(inProcessTransport(this.master.control));
    await this.master.start();
    await waitFor(() => this.masterRole.client.state === "up", 10_000, "master connected to the relay");
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const d of [this.master, this.onsite, this.relay]) await d?.close().catch(() => undefined);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A fake IPv4 packet of `n` bytes whose bytes 20.. carry `tag` (enough for the wire: it reads no header). */
export function packet(n: number, tag: number): Uint8Array {
  const p = new Uint8Array(n);
  p[0] = 0x45;
  new DataView(p.buffer).setUint32(Math.min(20, n - 4), tag);
  return p;
}
export function tagOf(p: Uint8Array): number {
  return new DataView(p.buffer, p.byteOffset, p.length).getUint32(Math.min(20, p.length - 4));
}
