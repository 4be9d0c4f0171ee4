// The master's tunnel host on Linux (MasterTunnelHost, device.ts).
//
// Routed: a TUN device `agt-m<tag>` with the master's tunnel address and routes to the onsite
// end's subnets through it; the end's firewall table masquerades what comes from the secondary
// interface (the technician's laptop) into the TUN and clamps TCP MSS; dnsmasq serves leases
// on the secondary interface (`[tunnel] dhcp`) with the master as the gateway.
// Bridged: that dnsmasq is stopped, then a bridge `agt-b<tag>` joins the secondary interface
// and a TAP device `agt-q<tag>`, so the laptop's DHCP reaches the customer's own server.
// Refused when the request comes from the secondary interface's subnet (seed 000's rule), or
// while another session holds the secondary interface.
//
// close() undoes what that end made and brings dnsmasq back when routed ends remain;
// sweep() removes what a killed agent left: its interfaces (a deleted bridge frees the
// secondary interface), its firewall tables or chains, its dnsmasq (by pid file and cmdline).
import type { Clock } from "../../clock.ts";
import { createLogger, type Logger } from "../../log.ts";
import { realExec, type Exec, type Spawner } from "../../os/spawn.ts";
import type { LinkMonitor } from "../../uplink/monitor.ts";
import { TUNNEL_MTU, TunnelRefused, type MasterTunnelEnd, type MasterTunnelHost, type MasterTunnelRequest, type PacketDevice, type TunnelEndInfo, type TunnelMode } from "./device.ts";
import { SecondaryDhcp } from "./dnsmasq.ts";
import { firewallIfAny, hostFirewall, type FirewallKind, type MasterRules, type TunnelFirewall } from "./firewall.ts";
import { checkMode, checkSession, checkTunnelAddress, openLinuxDevice, upRouted, writeProc, type DeviceOpener } from "./host-onsite.ts";
import { IpCommands, type IpLink } from "./host-ip.ts";
import { dhcpWanted, fromSecondaryRefusal, masterRoutes, ownedLinks } from "./host-rules.ts";
import { deviceName } from "./names.ts";
import { SecondaryWatch } from "./netmon.ts";

export const DEFAULT_SECONDARY = "eth1";

export interface MasterHostOptions {
  /** `[tunnel] secondary`: the technician's port. Default eth1. */
  secondary?: string;
  /** `[tunnel] dhcp`: dnsmasq on the secondary interface in routed mode. Default true. */
  dhcp?: boolean;
  /** Where dnsmasq's agent-owned files go (the state directory). */
  stateDir: string;
  /** Addresses never routed into a tunnel (the relay's): a subnet holding one is skipped. */
  keepOut?: readonly string[];
  exec?: Exec;
  firewall?: TunnelFirewall;
  /** Which firewall to build when `firewall` is not given (default: nft where it exists, else iptables). */
  firewallKind?: FirewallKind;
  openDevice?: DeviceOpener;
  writeSysctl?: (path: string, v: string) => void;
  log?: Logger;
  spawn?: Spawner;
  clock?: Clock;
  dnsmasqBin?: string;
  /** The link monitor behind onSecondaryChange (default: netlink, src/uplink/monitor.ts). */
  monitor?: () => LinkMonitor;
}

interface OpenEnd {
  session: string;
  mode: TunnelMode;
  end: MasterTunnelEnd;
}

export class LinuxMasterHost implements MasterTunnelHost {
  readonly secondary: string;
  private readonly ip: IpCommands;
  private fw: TunnelFirewall | undefined;
  private readonly dhcp: SecondaryDhcp;
  private readonly watch: SecondaryWatch;
  private readonly log: Logger;
  private readonly ends: OpenEnd[] = [];
  /** DHCP changes one after the other. */
  private dhcpChain: Promise<void> = Promise.resolve();
  /** A bridged open under way: dnsmasq must already be stopped for it. */
  private bridging = false;

  constructor(private readonly o: MasterHostOptions) {
    this.secondary = o.secondary ?? DEFAULT_SECONDARY;
    this.ip = new IpCommands(o.exec ?? realExec);
    this.fw = o.firewall;
    this.log = o.log ?? createLogger({ level: "silent" });
    this.dhcp = new SecondaryDhcp({ dir: o.stateDir, iface: this.secondary, log: this.log, bin: o.dnsmasqBin, spawn: o.spawn, clock: o.clock });
    this.watch = new SecondaryWatch(this.secondary, o.monitor, (e) => this.log.warn(`secondary interface monitor: ${(e as Error).message}`));
  }

  private firewall(): TunnelFirewall {
    return (this.fw ??= hostFirewall(this.o.exec ?? realExec, undefined, this.o.firewallKind));
  }

  /** Whether dnsmasq runs on the secondary interface now. */
  get dhcpRunning(): boolean {
    return this.dhcp.running;
  }
  get dhcpPid(): number | undefined {
    return this.dhcp.pid;
  }

  async open(req: MasterTunnelRequest): Promise<MasterTunnelEnd> {
    const session = checkSession(req.session);
    const mode = checkMode(req.mode);
    return mode === "routed" ? this.openRouted(session, req) : this.openBridged(session, req);
  }

  private async openRouted(session: string, req: MasterTunnelRequest): Promise<MasterTunnelEnd> {
    if (!req.addressing) throw new TunnelRefused("invalid", "a routed tunnel needs its addresses (addressing.master), and the request has none");
    const address = checkTunnelAddress(req.addressing.master, "master");
    if (this.ends.some((e) => e.mode === "bridged" && e.session !== session)) {
      throw new TunnelRefused("busy", `the secondary interface ${this.secondary} is bridged by another session; routed tunnels wait until it ends`);
    }
    const { routes, skipped } = masterRoutes(req.subnets ?? [], this.o.keepOut ?? []);
    for (const s of skipped) this.log.warn(`session ${session}: ${s}`);
    const name = deviceName("master", "tun", session);
    const rules: MasterRules = { role: "master", session, dev: name, secondary: this.secondary };
    const device = (this.o.openDevice ?? openLinuxDevice)(name, "routed");
    const undo = await upRouted({ ip: this.ip, fw: this.firewall(), rules, device, name, address, routes, writeSysctl: this.o.writeSysctl ?? writeProc });
    const info = (): TunnelEndInfo => ({ iface: name, addresses: [address], routes: [...routes] });
    const end = this.track(session, "routed", device, info, undo);
    await this.syncDhcp();
    return end;
  }

  async precheck(req: MasterTunnelRequest): Promise<TunnelRefused | null> {
    if (req.mode !== "bridged") return null;
    const [links, addrs] = await Promise.all([this.ip.links(), this.ip.addrs()]);
    return this.bridgedRefusal(req.session, req.requester, links, addrs);
  }

  private bridgedRefusal(session: string, requester: string | undefined, links: IpLink[], addrs: Map<string, string[]>): TunnelRefused | null {
    const sec = this.secondary;
    const refusal = fromSecondaryRefusal(requester, sec, addrs.get(sec) ?? []);
    if (refusal) return refusal;
    if (!links.some((l) => l.ifname === sec)) return new TunnelRefused("no_device", `the secondary interface ${sec} (\`[tunnel] secondary\`) does not exist on this master`);
    const other = this.ends.find((e) => e.session !== session);
    if (other) return new TunnelRefused("busy", `bridging ${sec} would take it from session ${other.session}'s ${other.mode} tunnel; end that one first`);
    return null;
  }

  private async openBridged(session: string, req: MasterTunnelRequest): Promise<MasterTunnelEnd> {
    const [links, addrs] = await Promise.all([this.ip.links(), this.ip.addrs()]);
    const sec = this.secondary;
    const refusal = this.bridgedRefusal(session, req.requester, links, addrs);
    if (refusal) throw refusal;
    const bridge = deviceName("master", "bridge", session);
    const name = deviceName("master", "tap", session);
    // dnsmasq goes first: the laptop must hear only the customer's DHCP server from now on.
    this.bridging = true;
    await this.syncDhcp();
    let device: PacketDevice | undefined;
    const undo = async () => {
      await this.ip.noMaster(sec);
      await this.ip.delLink(bridge);
      await device?.close();
      await this.ip.delLink(name);
    };
    try {
      device = (this.o.openDevice ?? openLinuxDevice)(name, "bridged");
      await this.ip.addBridge(bridge);
      await this.ip.setMaster(name, bridge);
      await this.ip.setMaster(sec, bridge);
      await this.ip.up(name, TUNNEL_MTU.bridged);
      await this.ip.bridgeUp(bridge);
      await this.ip.bridgeUp(sec);
    } catch (e) {
      this.bridging = false;
      await undo();
      await this.syncDhcp();
      throw e;
    }
    this.bridging = false;
    const info = (): TunnelEndInfo => ({ iface: name, addresses: [], routes: [], bridge });
    return this.track(session, "bridged", device, info, undo);
  }

  private track(session: string, mode: TunnelMode, device: PacketDevice, info: () => TunnelEndInfo, undo: () => Promise<void>): MasterTunnelEnd {
    let closing: Promise<void> | undefined;
    const end: MasterTunnelEnd = {
      device,
      info,
      close: () =>
        (closing ??= (async () => {
          try {
            await undo();
          } finally {
            const i = this.ends.findIndex((e) => e.end === end);
            if (i >= 0) this.ends.splice(i, 1);
            await this.syncDhcp();
          }
        })()),
    };
    this.ends.push({ session, mode, end });
    return end;
  }

  /** Starts or stops dnsmasq on the secondary interface as the open ends want it (dhcpWanted). */
  private syncDhcp(): Promise<void> {
    const step = async () => {
      const want = dhcpWanted(this.o.dhcp ?? true, this.bridging ? [...this.ends, { mode: "bridged" as const }] : this.ends);
      if (want === this.dhcp.running) return;
      if (!want) return this.dhcp.stop();
      const addr = (await this.ip.addrs()).get(this.secondary)?.[0];
      if (!addr) {
        this.log.warn(`no IPv4 address on the secondary interface ${this.secondary}: no DHCP for a laptop there (give it one, e.g. 192.168.77.1/24)`);
        return;
      }
      await this.dhcp.start(addr);
    };
    const next = this.dhcpChain.then(step, step);
    this.dhcpChain = next.catch((e) => this.log.warn(`dnsmasq on ${this.secondary}: ${(e as Error).message}`));
    return next;
  }

  onSecondaryChange(handler: (what: string) => void): () => void {
    return this.watch.subscribe(handler);
  }

  /** Resolves once the secondary watch has its first snapshot (tests). */
  watchReady(): Promise<void> {
    return this.watch.ready();
  }

  async sweep(): Promise<string[]> {
    const gone: string[] = [];
    const mine = new Set(this.ends.flatMap((e) => [e.end.info().iface, e.end.info().bridge ?? ""]));
    const links = await this.ip.links();
    // Bridges first: deleting one frees the secondary interface from it.
    const owned = ownedLinks("master", links).sort((a, b) => Number(b.startsWith("agt-b")) - Number(a.startsWith("agt-b")));
    for (const n of owned) {
      if (mine.has(n)) continue;
      await this.ip.delLink(n);
      gone.push(`interface ${n}`);
    }
    const fw = firewallIfAny(() => this.firewall());
    if (fw && this.ends.length === 0) gone.push(...(await fw.sweep("master")));
    if (!this.dhcp.running) gone.push(...(await this.dhcp.sweep()));
    return gone;
  }

  /** Closes every open end and the monitor (the daemon stopping). */
  async close(): Promise<void> {
    for (const e of [...this.ends]) await e.end.close();
    await this.watch.close();
    await this.dhcpChain;
  }
}
