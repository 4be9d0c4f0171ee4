// The packet channel: whole packets (IP packets of a routed tunnel, Ethernet frames of a
// bridged one, UDP datagrams of a UDP forward) on a stream of their own, one PACKET frame each
// (docs/protocol.md §3a). Packets travel outside the streams' credit: a TCP connection inside
// the tunnel does its own flow control, and a second one underneath (credit that stops the TUN
// reader until the far end returns it) is the TCP-in-TCP meltdown. So the queue towards a peer
// is bounded in packets and bytes, and when it is full the OLDEST packet is dropped (head drop:
// the packets that waited longest are the least useful, and the TCP flow inside learns of the
// congestion one queue sooner than with tail drop). Every drop is counted by its reason.
//
// The same sender runs on the endpoints (a Stream's packets) and on the relay (each direction of
// a routed packet stream), so both hold the same bound.
import { FrameType } from "./frame.ts";
import { Limits } from "./policy.ts";

/** Largest packet: an IPv4/IPv6 datagram's own limit. A bigger PACKET frame is a protocol error. */
export const MAX_PACKET = 65_535;

/** Why a packet was dropped. A bounded set: `agent sessions` shows a count per reason. */
export const DROP_REASONS = ["queue_full", "oversize", "closed", "no_stream", "device"] as const;
export type DropReason = (typeof DROP_REASONS)[number];

export type DropCounts = Record<DropReason, number>;
export function noDrops(): DropCounts {
  return { queue_full: 0, oversize: 0, closed: 0, no_stream: 0, device: 0 };
}

/** The traffic of one packet stream end (or one relay direction pair). */
export interface PacketStats {
  packets_out: number;
  bytes_out: number;
  packets_in: number;
  bytes_in: number;
  drops: DropCounts;
}

export function noPacketStats(): PacketStats {
  return { packets_out: 0, bytes_out: 0, packets_in: 0, bytes_in: 0, drops: noDrops() };
}

/** Adds `b` into `a` (pure over plain objects; returns `a`). */
export function addPacketStats(a: PacketStats, b: PacketStats): PacketStats {
  a.packets_out += b.packets_out;
  a.bytes_out += b.bytes_out;
  a.packets_in += b.packets_in;
  a.bytes_in += b.bytes_in;
  for (const r of DROP_REASONS) a.drops[r] += b.drops[r];
  return a;
}

/** The bound of one queue towards a peer. */
export interface QueueBound {
  packets: number;
  bytes: number;
}
export const PACKET_QUEUE: QueueBound = { packets: Limits.packetQueuePackets, bytes: Limits.packetQueueBytes };

/** Where a sender writes: a Connection (the endpoint's or the relay's side towards the peer). */
export interface PacketLink {
  writeFrame(type: number, flags: number, stream: number, payload?: Uint8Array): void;
  /** True while the link's queue is short enough for another packet. */
  readonly packetRoom: boolean;
  /** Call `f.flush()` once the link has drained. */
  block(f: { flush(): void }): void;
}

/** Checks one packet's size: null when it may travel, else why not (zero-length, oversized). */
export function packetProblem(length: number): string | null {
  if (length === 0) return "a zero-length packet";
  if (length > MAX_PACKET) return `a packet of ${length} bytes (the limit is ${MAX_PACKET})`;
  return null;
}

/**
 * The queue of one direction of one packet stream: writes straight to the link while it has
 * room, queues (bounded) while it has not, drops the oldest when full. Never blocks the caller.
 */
export class PacketSender {
  private queue: Uint8Array[] = [];
  private queuedBytes = 0;
  private closed = false;
  constructor(
    private readonly link: PacketLink,
    private readonly stream: number,
    private readonly bound: QueueBound = PACKET_QUEUE,
    /** Where this sender counts (`_out` and drops; `_in` is the receiver's): several senders may share one. */
    readonly stats: PacketStats = noPacketStats(),
  ) {}

  /** Packets waiting for the link now (for tests and `sessions`). */
  get queued(): { packets: number; bytes: number } {
    return { packets: this.queue.length, bytes: this.queuedBytes };
  }

  /** Sends or queues one packet. False: it was dropped (and counted). */
  send(packet: Uint8Array): boolean {
    if (this.closed) return this.drop("closed");
    if (packetProblem(packet.length)) return this.drop("oversize");
    if (this.queue.length === 0 && this.link.packetRoom) {
      this.write(packet);
      return true;
    }
    if (packet.length > this.bound.bytes) return this.drop("oversize");
    while (this.queue.length && (this.queue.length >= this.bound.packets || this.queuedBytes + packet.length > this.bound.bytes)) {
      const old = this.queue.shift()!;
      this.queuedBytes -= old.length;
      this.stats.drops.queue_full++;
    }
    // The caller's buffer may be reused once we return (a device reader's): keep a copy.
    this.queue.push(packet.slice());
    this.queuedBytes += packet.length;
    if (this.queue.length === 1) this.link.block(this);
    return true;
  }

  /** The link drained: send what fits. */
  flush(): void {
    if (this.closed) return;
    while (this.queue.length && this.link.packetRoom) {
      const p = this.queue.shift()!;
      this.queuedBytes -= p.length;
      this.write(p);
    }
    if (this.queue.length) this.link.block(this);
  }

  /** The stream ended: what waits is dropped (counted as `closed`), later sends too. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stats.drops.closed += this.queue.length;
    this.queue = [];
    this.queuedBytes = 0;
  }

  private write(p: Uint8Array): void {
    this.stats.packets_out++;
    this.stats.bytes_out += p.length;
    this.link.writeFrame(FrameType.PACKET, 0, this.stream, p);
  }

  private drop(why: DropReason): false {
    this.stats.drops[why]++;
    return false;
  }
}

// ---- the open header of a packet stream ---------------------------------------------------

/** What a packet stream carries: a routed or bridged tunnel, or the datagrams of a UDP forward. */
export const PACKET_KINDS = ["routed", "bridged", "udp"] as const;
export type PacketKind = (typeof PACKET_KINDS)[number];

/**
 * A packet stream's open header: `{session, packet: "routed"|"bridged"|"udp", target?}`
 * (`target`: the UDP forward's HOST:PORT). The relay adds `master` towards the onsite device.
 */
export interface PacketOpen {
  session: string;
  packet: PacketKind;
  target?: string;
}

/** Whether an open header asks for a packet stream (it has a `packet` field at all). */
export function isPacketOpen(open: Record<string, unknown>): boolean {
  return open.packet !== undefined;
}

/** Decodes a packet stream's open header, or says what is wrong with it (for the RESET). */
export function decodePacketOpen(open: Record<string, unknown>): PacketOpen | string {
  const kind = open.packet;
  if (typeof kind !== "string" || !(PACKET_KINDS as readonly string[]).includes(kind)) {
    const shown = typeof kind === "string" ? JSON.stringify(kind.slice(0, 40)) : kind === null ? "null" : typeof kind;
    return `packet stream: packet: expected "routed", "bridged" or "udp", got ${shown}`;
  }
  if (typeof open.session !== "string" || open.session.length === 0 || open.session.length > 64) return "packet stream: session: expected a session id";
  if (kind === "udp") {
    if (typeof open.target !== "string" || open.target.length === 0 || open.target.length > 300) return "packet stream: target: expected the UDP forward's HOST:PORT";
    return { session: open.session, packet: "udp", target: open.target };
  }
  return { session: open.session, packet: kind as PacketKind };
}
