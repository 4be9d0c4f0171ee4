// In-memory tunnel hosts for tests: they speak the real OnsiteTunnelHost / MasterTunnelHost
// interfaces with PacketDevices that live in memory. A test injects packets as if the kernel had
// routed them into the device (`inject`) and reads what the tunnel wrote to it (`written`). The
// refusals follow the host contract (device.ts): bridged needs `bridged`, from_secondary when
// the requester lies in the secondary subnet, busy when the device limit is reached.
import { cidrContains, parseCidr, parseIPv4 } from "../../netaddr.ts";
import {
  TUNNEL_MTU,
  TunnelRefused,
  type MasterTunnelEnd,
  type MasterTunnelHost,
  type MasterTunnelRequest,
  type OnsiteTunnelEnd,
  type OnsiteTunnelHost,
  type OnsiteTunnelRequest,
  type PacketDevice,
  type TunnelEndInfo,
  type TunnelMode,
} from "./device.ts";

export class MemoryPacketDevice implements PacketDevice {
  readonly mtu: number;
  private handler: ((p: Uint8Array) => void) | null = null;
  /** Packets the tunnel handed to the "kernel", oldest first (bounded by `capacity`). */
  readonly written: Uint8Array[] = [];
  closed = false;
  private waiters: (() => void)[] = [];

  constructor(
    readonly name: string,
    readonly mode: TunnelMode,
    /** How many written packets it holds before write() says false (a full device queue). */
    readonly capacity = 10_000,
  ) {
    this.mtu = TUNNEL_MTU[mode];
  }

  onPacket(handler: (packet: Uint8Array) => void): void {
    this.handler = handler;
  }

  /** As if the kernel routed `packet` into the device: the reader hands it on. False when closed or nobody reads. */
  inject(packet: Uint8Array): boolean {
    if (this.closed || !this.handler) return false;
    this.handler(packet);
    return true;
  }

  write(packet: Uint8Array): boolean {
    if (this.closed || this.written.length >= this.capacity) return false;
    // A frame bigger than the device takes (MTU plus an Ethernet header for TAP) is refused, as the kernel does.
    if (packet.length > this.mtu + (this.mode === "bridged" ? 18 : 0)) return false;
    this.written.push(packet.slice());
    for (const w of this.waiters.splice(0)) w();
    return true;
  }

  /** Removes and returns what was written so far. */
  take(): Uint8Array[] {
    return this.written.splice(0);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.handler = null;
  }
}

let seq = 0;
const nextName = (mode: TunnelMode) => `agt-${mode === "routed" ? "t" : "p"}-m${(++seq).toString(36)}`;

export interface MemoryOnsiteOptions {
  /** What the end advertises (a routed end's subnets); default ["192.168.1.0/24"]. */
  subnets?: string[];
  lanBridge?: string;
  /** Fail every open with this refusal (a host without /dev/net/tun …). */
  refuse?: TunnelRefused;
}

/** An onsite end as the memory host made it; the test reaches its device through `ends`. */
export class MemoryOnsiteEnd implements OnsiteTunnelEnd {
  closed = false;
  constructor(
    readonly req: OnsiteTunnelRequest,
    readonly device: MemoryPacketDevice,
    readonly subnets: string[],
    private readonly bridge: string | undefined,
  ) {}
  info(): TunnelEndInfo {
    return {
      iface: this.device.name,
      addresses: this.req.addressing ? [this.req.addressing.onsite] : [],
      routes: [],
      ...(this.bridge ? { bridge: this.bridge } : {}),
    };
  }
  async close(): Promise<void> {
    this.closed = true;
    await this.device.close();
  }
}

export class MemoryOnsiteTunnelHost implements OnsiteTunnelHost {
  /** Every end opened, in order (closed ones included). */
  readonly ends: MemoryOnsiteEnd[] = [];
  constructor(private readonly o: MemoryOnsiteOptions = {}) {}

  async open(req: OnsiteTunnelRequest): Promise<MemoryOnsiteEnd> {
    if (this.o.refuse) throw this.o.refuse;
    if (req.mode === "routed" && !req.addressing) throw new TunnelRefused("invalid", "a routed tunnel needs its addressing");
    const end = new MemoryOnsiteEnd(req, new MemoryPacketDevice(nextName(req.mode), req.mode), req.mode === "routed" ? [...(this.o.subnets ?? ["192.168.1.0/24"])] : [], req.mode === "bridged" ? (this.o.lanBridge ?? "br-lan") : undefined);
    this.ends.push(end);
    return end;
  }

  /** The open ends (what a real host would still have on the system). */
  get open_(): MemoryOnsiteEnd[] {
    return this.ends.filter((e) => !e.closed);
  }

  async sweep(): Promise<string[]> {
    return [];
  }
}

export interface MemoryMasterOptions {
  /** The secondary interface's subnet: a bridged request from inside it is refused. */
  secondarySubnet?: string;
  secondary?: string;
  refuse?: TunnelRefused;
}

export class MemoryMasterEnd implements MasterTunnelEnd {
  closed = false;
  constructor(
    readonly req: MasterTunnelRequest,
    readonly device: MemoryPacketDevice,
    private readonly secondary: string,
  ) {}
  info(): TunnelEndInfo {
    return {
      iface: this.device.name,
      addresses: this.req.addressing ? [this.req.addressing.master] : [],
      routes: this.req.mode === "routed" ? [...(this.req.subnets ?? [])] : [],
      ...(this.req.mode === "bridged" ? { bridge: `agt-br-${this.secondary}` } : {}),
    };
  }
  async close(): Promise<void> {
    this.closed = true;
    await this.device.close();
  }
}

export class MemoryMasterTunnelHost implements MasterTunnelHost {
  readonly ends: MemoryMasterEnd[] = [];
  private readonly changeHandlers = new Set<(what: string) => void>();
  constructor(private readonly o: MemoryMasterOptions = {}) {}

  async open(req: MasterTunnelRequest): Promise<MemoryMasterEnd> {
    if (this.o.refuse) throw this.o.refuse;
    const secondary = this.o.secondary ?? "eth1";
    if (req.mode === "bridged" && req.requester && this.o.secondarySubnet) {
      let inside = false;
      try {
        inside = cidrContains(parseCidr(this.o.secondarySubnet), parseIPv4(req.requester));
      } catch {
        inside = false;
      }
      if (inside) throw new TunnelRefused("from_secondary", `refusing to bridge ${secondary}: this request comes from ${req.requester}, on ${secondary} itself (${this.o.secondarySubnet}); bridging would cut that connection. Ask from another interface.`);
    }
    const end = new MemoryMasterEnd(req, new MemoryPacketDevice(nextName(req.mode), req.mode), secondary);
    this.ends.push(end);
    return end;
  }

  get open_(): MemoryMasterEnd[] {
    return this.ends.filter((e) => !e.closed);
  }

  async sweep(): Promise<string[]> {
    return [];
  }

  onSecondaryChange(handler: (what: string) => void): () => void {
    this.changeHandlers.add(handler);
    return () => this.changeHandlers.delete(handler);
  }

  /** As if the netlink monitor saw the secondary interface change. */
  secondaryChanged(what: string): void {
    for (const h of this.changeHandlers) h(what);
  }
}
