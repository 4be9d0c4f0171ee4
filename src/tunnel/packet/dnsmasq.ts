// The master's DHCP server on its secondary interface (routed mode): a laptop plugged in there
// gets a lease with the master as its gateway. The file is rendered by the one dnsmasq
// renderer (src/uplink/apconf.ts renderDhcpServer) and the process is run by the one
// supervisor (src/uplink/supervisor.ts): restarted when it dies, its pid kept in a pid file,
// and an orphan left by a killed agent stopped at the next start, only when /proc still shows
// our dnsmasq with our own configuration file (`agent-tun-dnsmasq-<iface>.conf`).
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Clock } from "../../clock.ts";
import type { Logger } from "../../log.ts";
import { parseIPv4, type Cidr } from "../../netaddr.ts";
import type { Spawner } from "../../os/spawn.ts";
import { renderDhcpServer } from "../../uplink/apconf.ts";
import { stopOrphan, Supervisor } from "../../uplink/supervisor.ts";

export interface DhcpPaths {
  conf: string;
  pid: string;
  leases: string;
}

/** The agent-owned files of the secondary interface's dnsmasq, in `dir`. */
export function dhcpPaths(dir: string, iface: string): DhcpPaths {
  const base = join(dir, `agent-tun-dnsmasq-${iface}`);
  return { conf: `${base}.conf`, pid: `${base}.pid`, leases: `${base}.leases` };
}

export function dnsmasqArgv(bin: string, p: DhcpPaths): string[] {
  return [bin, "--keep-in-foreground", `--conf-file=${p.conf}`];
}

/** "192.168.77.1/24" (as `ip -j addr` reports it) as the renderer's address. */
export function parseInterfaceAddress(text: string): Cidr & { host: number } {
  const [a, p] = text.split("/");
  const host = parseIPv4(a!);
  const prefix = Number(p ?? 32);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > 32) throw new Error(`bad prefix in ${JSON.stringify(text)}`);
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return { network: (host & mask) >>> 0, prefix, host };
}

export function renderSecondaryDnsmasq(iface: string, address: string, leaseFile: string): string {
  return renderDhcpServer({
    interface: iface,
    address: parseInterfaceAddress(address),
    leaseFile,
    // DHCP only: the laptop reaches the customer's LAN by address through the tunnel.
    captiveDns: false,
    banner: "# written by the agent for a routed packet tunnel; edits are overwritten",
  });
}

export interface SecondaryDhcpOptions {
  dir: string;
  iface: string;
  log: Logger;
  bin?: string;
  spawn?: Spawner;
  clock?: Clock;
}

export class SecondaryDhcp {
  private sup: Supervisor | undefined;
  readonly paths: DhcpPaths;
  private readonly argv: string[];

  constructor(private readonly o: SecondaryDhcpOptions) {
    this.paths = dhcpPaths(o.dir, o.iface);
    this.argv = dnsmasqArgv(o.bin ?? "dnsmasq", this.paths);
  }

  get running(): boolean {
    return this.sup !== undefined;
  }

  get pid(): number | undefined {
    return this.sup?.pid;
  }

  /** Starts dnsmasq on the interface, serving leases in the subnet of `address` ("192.168.77.1/24"). */
  async start(address: string): Promise<void> {
    if (this.sup) return;
    mkdirSync(this.o.dir, { recursive: true, mode: 0o700 });
    writeFileSync(this.paths.conf, renderSecondaryDnsmasq(this.o.iface, address, this.paths.leases), { mode: 0o600 });
    this.sup = new Supervisor({ name: `dnsmasq on ${this.o.iface}`, argv: this.argv, pidFile: this.paths.pid, log: this.o.log, spawn: this.o.spawn, clock: this.o.clock });
    await this.sup.start();
  }

  async stop(): Promise<void> {
    const s = this.sup;
    this.sup = undefined;
    await s?.stop();
    rmSync(this.paths.conf, { force: true });
    rmSync(this.paths.leases, { force: true });
  }

  /** Stops a dnsmasq a killed agent left running (by pid file and cmdline); says what went. */
  async sweep(): Promise<string[]> {
    const pid = await stopOrphan(this.paths.pid, this.argv, this.o.log, this.o.clock);
    rmSync(this.paths.conf, { force: true });
    rmSync(this.paths.leases, { force: true });
    return pid ? [`dnsmasq pid ${pid} on ${this.o.iface}`] : [];
  }
}
