// The onsite device's tunnel host on Linux (OnsiteTunnelHost, device.ts).
//
// Routed: a TUN device `agt-t<tag>` with the onsite tunnel address; the end's own firewall
// table (firewall.ts) lets packets from it reach only the allow list, masquerades them into
// the LAN and clamps TCP MSS; the rules are loaded before the device comes up, so no packet
// ever crosses unfiltered. Bridged: a TAP device `agt-p<tag>` made a port of
// `[tunnel] lan_bridge`, only where `[tunnel] bridged = true` and never next to an uplink.
//
// close() undoes what that end made (rules, bridge port, device); sweep() removes what a
// killed agent left, by the agent-owned names of names.ts only.
import { writeFileSync } from "node:fs";
import type { Logger } from "../../log.ts";
import type { AllowEntry } from "../../netaddr.ts";
import { realExec, type Exec } from "../../os/spawn.ts";
import { parseTunnelMode, TUNNEL_MTU, TunnelRefused, type OnsiteTunnelEnd, type OnsiteTunnelHost, type OnsiteTunnelRequest, type PacketDevice, type TunnelEndInfo, type TunnelMode } from "./device.ts";
import { firewallIfAny, hostFirewall, type FirewallKind, type OnsiteRules, type TunnelFirewall, type TunnelRules } from "./firewall.ts";
import { IpCommands } from "./host-ip.ts";
import { advertisedSubnets, bareAddress, onsiteBridgedRefusal, ownedLinks, subnetOf, tunnelNetwork } from "./host-rules.ts";
import { deviceName } from "./names.ts";
import { LinuxTunDevice } from "./tun-linux.ts";

/** Opens a TUN or TAP device by name (the real one: tun-linux.ts). */
export type DeviceOpener = (name: string, mode: TunnelMode) => PacketDevice;
export const openLinuxDevice: DeviceOpener = (name, mode) => LinuxTunDevice.open({ name, mode });

export const writeProc = (path: string, v: string) => writeFileSync(path, v);

/**
 * Brings a routed end's TUN device up: its firewall rules first (no packet ever crosses
 * unfiltered), IPv4 forwarding on, the address, the link up, then `routes` through it. On a
 * failure it undoes what it did and rethrows; otherwise it returns that undo (the end's close).
 */
export async function upRouted(o: {
  ip: IpCommands;
  fw: TunnelFirewall;
  rules: TunnelRules;
  device: PacketDevice;
  name: string;
  address: string;
  routes: readonly string[];
  writeSysctl: (path: string, v: string) => void;
}): Promise<() => Promise<void>> {
  const { ip, fw, rules, device, name } = o;
  const undo = async () => {
    for (const r of o.routes) await ip.delRoute(r, name);
    await fw.remove(rules).catch(() => {});
    await device.close();
    await ip.delLink(name);
  };
  try {
    await fw.apply(rules);
    o.writeSysctl("/proc/sys/net/ipv4/ip_forward", "1\n");
    await ip.addAddress(name, o.address);
    await ip.up(name, TUNNEL_MTU.routed);
    for (const r of o.routes) await ip.addRoute(r, name);
  } catch (e) {
    await undo();
    throw e;
  }
  return undo;
}

export interface OnsiteHostOptions {
  /** The onsite allow list: routed packets reach only these (CIDR and ports). */
  allow: readonly AllowEntry[];
  /** `[tunnel] bridged`: bridged mode allowed at all. */
  bridged?: boolean;
  /** `[tunnel] lan_bridge`. */
  lanBridge?: string;
  /** The device's uplink interfaces: never bridged. */
  uplinks?: readonly string[];
  exec?: Exec;
  /** Default: nft, or iptables where nft is missing (firewall.ts hostFirewall). */
  firewall?: TunnelFirewall;
  /** Which firewall to build when `firewall` is not given (default: nft where it exists, else iptables). */
  firewallKind?: FirewallKind;
  openDevice?: DeviceOpener;
  writeSysctl?: (path: string, v: string) => void;
  log?: Logger;
}

/** A session id as the host uses it in names and messages: printable, bounded. */
export function checkSession(session: unknown): string {
  if (typeof session !== "string" || session.length === 0 || session.length > 128 || /[^\x21-\x7e]/.test(session)) {
    throw new TunnelRefused("invalid", `bad session id ${JSON.stringify(session)?.slice(0, 40)}: expected 1 to 128 printable characters`);
  }
  return session;
}

export function checkMode(mode: unknown): TunnelMode {
  const m = parseTunnelMode(mode);
  if (!m) throw new TunnelRefused("invalid", `bad tunnel mode ${JSON.stringify(mode)?.slice(0, 40)}: expected "routed" or "bridged"`);
  return m;
}

/** A routed end's address: an IPv4 address with its prefix (e.g. 10.99.0.2/30, as the master allocates them). */
export function checkTunnelAddress(a: unknown, which: string): string {
  if (typeof a !== "string" || !/^\d+\.\d+\.\d+\.\d+\/\d+$/.test(a) || !subnetOf(a)) {
    throw new TunnelRefused("invalid", `bad ${which} tunnel address ${JSON.stringify(a)?.slice(0, 40)}: expected an IPv4 address with prefix such as 10.99.0.2/30`);
  }
  return a;
}

export class LinuxOnsiteHost implements OnsiteTunnelHost {
  private readonly ip: IpCommands;
  private fw: TunnelFirewall | undefined;
  private readonly open_ = new Map<string, OnsiteTunnelEnd>();

  constructor(private readonly o: OnsiteHostOptions) {
    this.ip = new IpCommands(o.exec ?? realExec);
    this.fw = o.firewall;
  }

  /** The subnets a routed end advertises (the allow list's CIDRs). */
  get subnets(): string[] {
    return advertisedSubnets(this.o.allow);
  }

  private firewall(): TunnelFirewall {
    return (this.fw ??= hostFirewall(this.o.exec ?? realExec, undefined, this.o.firewallKind));
  }

  async open(req: OnsiteTunnelRequest): Promise<OnsiteTunnelEnd> {
    const session = checkSession(req.session);
    const mode = checkMode(req.mode);
    return mode === "routed" ? this.openRouted(session, req) : this.openBridged(session);
  }

  private async openRouted(session: string, req: OnsiteTunnelRequest): Promise<OnsiteTunnelEnd> {
    if (!req.addressing) throw new TunnelRefused("invalid", "a routed tunnel needs its addresses (addressing.onsite), and the request has none");
    const address = checkTunnelAddress(req.addressing.onsite, "onsite");
    if (this.o.allow.length === 0) throw new TunnelRefused("invalid", "the allow list is empty: a routed tunnel would reach nothing");
    const name = deviceName("onsite", "tun", session);
    const rules: OnsiteRules = { role: "onsite", session, dev: name, address: bareAddress(address), tunnelNet: tunnelNetwork(address), allow: this.o.allow };
    const device = (this.o.openDevice ?? openLinuxDevice)(name, "routed");
    const undo = await upRouted({ ip: this.ip, fw: this.firewall(), rules, device, name, address, routes: [], writeSysctl: this.o.writeSysctl ?? writeProc });
    const subnets = this.subnets;
    const info = (): TunnelEndInfo => ({ iface: name, addresses: [address], routes: [] });
    return this.track(name, { device, subnets, info, close: undo });
  }

  private async openBridged(session: string): Promise<OnsiteTunnelEnd> {
    const links = await this.ip.links();
    const refusal = onsiteBridgedRefusal({ allowed: this.o.bridged === true, lanBridge: this.o.lanBridge, uplinks: this.o.uplinks ?? [], links });
    if (refusal) throw refusal;
    const bridge = this.o.lanBridge!;
    const name = deviceName("onsite", "tap", session);
    const device = (this.o.openDevice ?? openLinuxDevice)(name, "bridged");
    const undo = async () => {
      await this.ip.noMaster(name);
      await device.close();
      await this.ip.delLink(name);
    };
    try {
      await this.ip.setMaster(name, bridge);
      await this.ip.up(name, TUNNEL_MTU.bridged);
    } catch (e) {
      await undo();
      throw e;
    }
    const info = (): TunnelEndInfo => ({ iface: name, addresses: [], routes: [], bridge });
    return this.track(name, { device, subnets: [], info, close: undo });
  }

  private track(name: string, end: { device: PacketDevice; subnets: string[]; info: () => TunnelEndInfo; close: () => Promise<void> }): OnsiteTunnelEnd {
    let closing: Promise<void> | undefined;
    const tracked: OnsiteTunnelEnd = {
      device: end.device,
      subnets: end.subnets,
      info: end.info,
      close: () =>
        (closing ??= end.close().finally(() => {
          if (this.open_.get(name) === tracked) this.open_.delete(name);
        })),
    };
    this.open_.set(name, tracked);
    return tracked;
  }

  /** Ends open now (for tests and status). */
  get openEnds(): number {
    return this.open_.size;
  }

  async sweep(): Promise<string[]> {
    const gone: string[] = [];
    for (const n of ownedLinks("onsite", await this.ip.links())) {
      if (this.open_.has(n)) continue;
      await this.ip.delLink(n);
      gone.push(`interface ${n}`);
    }
    // The firewall is looked at only if one can be had: a host without nft or iptables has no rules left.
    const fw = firewallIfAny(() => this.firewall());
    if (fw && this.open_.size === 0) gone.push(...(await fw.sweep("onsite")));
    return gone;
  }
}
