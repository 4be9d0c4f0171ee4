// The seam between a session's packet tunnel (the wire: packets over the mux and the relay) and
// the host that carries its packets (a TUN or TAP device, its addresses, routes, firewall rules,
// bridge membership and dnsmasq). The wire side only sees PacketDevice; the host side only sees
// the requests below. Tests hand the wire a memory host (memory.ts) and the host real devices.

/** routed: a TUN device, IP packets (L3). bridged: a TAP device, Ethernet frames (L2). */
export type TunnelMode = "routed" | "bridged";
export const TUNNEL_MODES: readonly TunnelMode[] = ["routed", "bridged"];
/** MTU of each mode's device (issue 11): 1420 leaves room for the relay's framing inside 1500. */
export const TUNNEL_MTU: Readonly<Record<TunnelMode, number>> = { routed: 1420, bridged: 1500 };

/** Parse a mode as a user or a peer wrote it; null when it is none of the two. */
export function parseTunnelMode(s: unknown): TunnelMode | null {
  return s === "routed" || s === "bridged" ? s : null;
}

/**
 * One end's packet device. Packets are whole IP packets (routed) or whole Ethernet frames
 * (bridged), with no extra header (IFF_NO_PI).
 */
export interface PacketDevice {
  /** The interface name, e.g. "agt-t-1a2b3c" (agent-owned names: see the host's sweep). */
  readonly name: string;
  readonly mode: TunnelMode;
  readonly mtu: number;
  /**
   * The handler for each packet read from the device. The device reads at its own pace and
   * never waits for the handler's consumer: whoever cannot keep up drops and counts.
   */
  onPacket(handler: (packet: Uint8Array) => void): void;
  /** Hand one packet to the kernel. False: it was dropped (device queue full or closed). */
  write(packet: Uint8Array): boolean;
  /** Stop reading and release the device. Idempotent. */
  close(): Promise<void>;
}

/** What one end shows in `agent sessions` (interface names, addresses, routes). */
export interface TunnelEndInfo {
  iface: string;
  /** CIDR strings on the device, e.g. ["10.99.0.1/30"]. */
  addresses: string[];
  /** Routes the end added through the device, CIDR strings. */
  routes: string[];
  /** The bridge the device joined (bridged mode), if any. */
  bridge?: string;
}

/** The point-to-point addresses of one routed tunnel, picked by the master from `[tunnel] pool`. */
export interface TunnelAddressing {
  /** e.g. "10.99.0.1/30" on the master's TUN. */
  master: string;
  /** e.g. "10.99.0.2/30" on the onsite device's TUN. */
  onsite: string;
}

export interface OnsiteTunnelRequest {
  session: string;
  mode: TunnelMode;
  /** routed mode only. */
  addressing?: TunnelAddressing;
}

/** An open tunnel end on the onsite device. */
export interface OnsiteTunnelEnd {
  readonly device: PacketDevice;
  /** The subnets this end routes (routed mode: the CIDRs of the allow list); the master routes them. */
  readonly subnets: string[];
  info(): TunnelEndInfo;
  /** Remove everything this end made (device, rules, bridge membership). Idempotent. */
  close(): Promise<void>;
}

/**
 * The onsite device's host. Routed: a TUN device; packets from the tunnel reach only the allow
 * list's subnets (kernel rules), masqueraded into the LAN; TCP MSS clamped. Bridged: a TAP
 * device joined to `[tunnel] lan_bridge`, refused unless `[tunnel] bridged = true`.
 */
export interface OnsiteTunnelHost {
  open(req: OnsiteTunnelRequest): Promise<OnsiteTunnelEnd>;
  /** Remove agent-owned leftovers of earlier runs (recognised by name or tag). Returns what went. */
  sweep(): Promise<string[]>;
}

export interface MasterTunnelRequest {
  session: string;
  mode: TunnelMode;
  /** routed mode: the onsite end's advertised subnets, routed through the TUN. */
  subnets?: readonly string[];
  addressing?: TunnelAddressing;
  /**
   * The address the request came from (a control-socket client over SSH, a GUI browser), when
   * known: bridged mode is refused when it lies in the secondary interface's subnet.
   */
  requester?: string;
}

/** An open tunnel end on the master. */
export interface MasterTunnelEnd {
  readonly device: PacketDevice;
  info(): TunnelEndInfo;
  close(): Promise<void>;
}

/**
 * The master's host. Routed: a TUN device with routes to the onsite subnets, dnsmasq on the
 * secondary interface (`[tunnel] secondary`, `dhcp`), traffic from it masqueraded into the TUN.
 * Bridged: dnsmasq stopped, the secondary interface bridged with a TAP device.
 */
export interface MasterTunnelHost {
  open(req: MasterTunnelRequest): Promise<MasterTunnelEnd>;
  /**
   * Optional: the refusal open(req) would give for a reason known before anything is made
   * (seed 000's bridged rule, the secondary port held by another session), or null. A mode
   * switch asks first, so a refused switch leaves the session's current tunnel as it was.
   */
  precheck?(req: MasterTunnelRequest): Promise<TunnelRefused | null>;
  sweep(): Promise<string[]>;
  /** Calls `handler` with a sentence when the secondary interface appears, goes or is renamed. */
  onSecondaryChange(handler: (what: string) => void): () => void;
}

/** The reason a host refuses an open; the wire passes `message` on to the user. */
export class TunnelRefused extends Error {
  override name = "TunnelRefused";
  constructor(
    readonly code: "not_enabled" | "bridged_not_allowed" | "from_secondary" | "no_device" | "busy" | "invalid",
    message: string,
  ) {
    super(message);
  }
}
