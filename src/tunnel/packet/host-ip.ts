// The `ip` commands of the tunnel hosts: argument arrays through the injected Exec, never a
// shell. Thin: each function is one command and its check; what to run is decided elsewhere.
import { realExec, type Exec, type ExecResult } from "../../os/spawn.ts";

export class HostCommandError extends Error {
  override name = "HostCommandError";
}

export function checked(argv: readonly string[], r: ExecResult): ExecResult {
  if (r.code !== 0) throw new HostCommandError(`${argv.join(" ")} exited ${r.code}: ${(r.stderr || r.stdout).trim().split("\n").slice(0, 3).join("; ")}`);
  return r;
}

/** One link as `ip -j -d link show` reports what the hosts use. */
export interface IpLink {
  ifname: string;
  /** The bridge it is a port of. */
  master?: string;
  /** "tun", "bridge", "veth"… (linkinfo.info_kind), when the kernel says. */
  kind?: string;
}

export function parseLinks(json: string): IpLink[] {
  const rows = JSON.parse(json || "[]") as { ifname: string; master?: string; linkinfo?: { info_kind?: string } }[];
  return rows.map((r) => ({ ifname: r.ifname, master: r.master, kind: r.linkinfo?.info_kind }));
}

/** IPv4 addresses with prefix per interface from `ip -j -4 addr show`. */
export function parseAddrs(json: string): Map<string, string[]> {
  const rows = JSON.parse(json || "[]") as { ifname: string; addr_info?: { local: string; prefixlen: number }[] }[];
  return new Map(rows.map((r) => [r.ifname, (r.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`)]));
}

export class IpCommands {
  constructor(private readonly exec: Exec = realExec) {}

  async run(argv: string[]): Promise<ExecResult> {
    return checked(argv, await this.exec(argv));
  }
  /** Runs and ignores failure (removing what may already be gone). */
  async tolerate(argv: string[]): Promise<ExecResult> {
    return this.exec(argv);
  }

  async links(): Promise<IpLink[]> {
    return parseLinks((await this.run(["ip", "-j", "-d", "link", "show"])).stdout);
  }
  async addrs(): Promise<Map<string, string[]>> {
    return parseAddrs((await this.run(["ip", "-j", "-4", "addr", "show"])).stdout);
  }
  up(dev: string, mtu: number): Promise<ExecResult> {
    return this.run(["ip", "link", "set", "dev", dev, "mtu", String(mtu), "up"]);
  }
  addAddress(dev: string, cidr: string): Promise<ExecResult> {
    return this.run(["ip", "addr", "add", cidr, "dev", dev]);
  }
  addRoute(dest: string, dev: string): Promise<ExecResult> {
    return this.run(["ip", "route", "replace", dest, "dev", dev]);
  }
  delRoute(dest: string, dev: string): Promise<ExecResult> {
    return this.tolerate(["ip", "route", "del", dest, "dev", dev]);
  }
  setMaster(dev: string, bridge: string): Promise<ExecResult> {
    return this.run(["ip", "link", "set", "dev", dev, "master", bridge]);
  }
  noMaster(dev: string): Promise<ExecResult> {
    return this.tolerate(["ip", "link", "set", "dev", dev, "nomaster"]);
  }
  addBridge(name: string): Promise<ExecResult> {
    return this.run(["ip", "link", "add", "name", name, "type", "bridge"]);
  }
  bridgeUp(name: string): Promise<ExecResult> {
    return this.run(["ip", "link", "set", "dev", name, "up"]);
  }
  delLink(name: string): Promise<ExecResult> {
    return this.tolerate(["ip", "link", "del", "dev", name]);
  }
}
