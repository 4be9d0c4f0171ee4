// The relay's end of the heartbeat: one UDP socket; every datagram is judged (layout, known
// device, HMAC, age, replay window) and either handed on or counted as dropped by reason. A
// stranger's datagram costs a parse and a map lookup (an HMAC only for a known id) and leaves
// no state behind: windows exist only for devices whose MAC verified.
import { systemClock, type Clock } from "../../clock.ts";
import { acceptSeq, decodePayload, DropReason, DROP_REASONS, fresh, parseHeartbeat, toHex, verifyMac, type DropReasonId, type HeartbeatPayload, type ReplayWindow } from "./codec.ts";
import type { Datagram, DatagramSocket } from "./socket.ts";

export interface Beat {
  id: string;
  payload: HeartbeatPayload;
  /** Where it came from (ip:port). */
  from: string;
  /** Relay's monotonic ms when it arrived. */
  at: number;
  seq: bigint;
  boot: string;
}

export interface ReceiverOptions {
  /** The key of a device, or null when the relay does not know it. */
  keyOf(id: string): Uint8Array | null;
  /** A heartbeat that passed. */
  onBeat(b: Beat): void;
  /** A dropped one (for a debug log; called at most `dropLogPerMinute` times a minute). */
  onDrop?(reason: DropReasonId, d: Datagram, id: string | null): void;
  clock?: Clock;
}

export class HeartbeatReceiver {
  private readonly windows = new Map<string, ReplayWindow>();
  private readonly clock: Clock;
  readonly dropped: Record<DropReasonId, number> = Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<DropReasonId, number>;
  received = 0;
  accepted = 0;

  constructor(private readonly o: ReceiverOptions) {
    this.clock = o.clock ?? systemClock;
  }

  /** Judges one datagram. Returns null when it passed, else why it was dropped. */
  handle(d: Datagram): DropReasonId | null {
    this.received++;
    const why = this.judge(d);
    if (why) {
      this.dropped[why.reason]++;
      this.o.onDrop?.(why.reason, d, why.id);
      return why.reason;
    }
    return null;
  }

  private judge(d: Datagram): { reason: DropReasonId; id: string | null } | null {
    const r = parseHeartbeat(d.data);
    if (!r.ok) return { reason: r.reason, id: null };
    const p = r.parsed;
    const key = this.o.keyOf(p.id);
    if (!key) return { reason: DropReason.UNKNOWN, id: p.id };
    if (!verifyMac(p, key)) return { reason: DropReason.FORGED, id: p.id };
    if (!fresh(p.sentAt, this.clock.wall())) return { reason: DropReason.STALE, id: p.id };
    const boot = toHex(p.boot);
    const w = acceptSeq(this.windows.get(p.id) ?? null, boot, p.seq, p.sentAt);
    if (!w.ok) return { reason: DropReason.REPLAY, id: p.id };
    const payload = decodePayload(p.payload);
    if (!payload) return { reason: DropReason.MALFORMED, id: p.id };
    this.windows.set(p.id, w.window);
    this.accepted++;
    this.o.onBeat({ id: p.id, payload, from: `${d.address}:${d.port}`, at: this.clock.now(), seq: p.seq, boot });
    return null;
  }

  /** A device the relay forgot: its window goes too. */
  forget(id: string): void {
    this.windows.delete(id);
  }

  /** Devices with a window (authenticated senders): bounded by the devices the relay knows. */
  get tracked(): number {
    return this.windows.size;
  }

  /** Listens on a socket until it closes. */
  attach(socket: DatagramSocket): void {
    socket.onMessage((d) => void this.handle(d));
  }

  stats(): { received: number; accepted: number; tracked: number; dropped: Record<DropReasonId, number> } {
    return { received: this.received, accepted: this.accepted, tracked: this.windows.size, dropped: { ...this.dropped } };
  }
}
