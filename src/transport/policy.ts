// Timing and size policies of the transport, named in one place (STYLE 8). The protocol
// document quotes these; change them here and there together.

export const Timing = {
  /** A PING goes out this often on an otherwise quiet connection. */
  keepaliveInterval: 5_000,
  /** No frame at all for this long: the path is dead, close and redial. Well under a minute. */
  keepaliveTimeout: 15_000,
  /** What a device dialing over a metered uplink asks for in its HELLO (issue 13 §8): a PING
   * each way every 30 s instead of 5 s, a sixth of the keepalive bytes on a billed link. */
  meteredKeepaliveInterval: 30_000,
  /** The relay honours a HELLO's keepalive request within these bounds (ms): no device makes it
   * ping faster than the default, nor go deaf to a dead peer for more than 3 minutes. */
  keepaliveRequestMin: 5_000,
  keepaliveRequestMax: 60_000,
  /** TLS handshake must complete within this (relay side). */
  handshakeDeadline: 10_000,
  /** The HELLO must arrive within this after the handshake (relay side). */
  helloDeadline: 10_000,
  /** A control request gets its REPLY within this, else it fails. */
  requestTimeout: 15_000,
  /** Reconnect backoff: first ceiling, cap, and how long a connection must have lived to
   * count as stable (which resets the backoff). */
  backoffBase: 500,
  backoffCap: 30_000,
  stableAfter: 60_000,
  /** How long the dialer waits for TCP connect + TLS handshake + WELCOME. */
  dialTimeout: 15_000,
  /** A UDP forward's flow (one client address:port) with no datagram either way for this long is
   * forgotten, and its socket on the onsite device closed: 60 s, as conntrack's default for a
   * UDP stream that has seen replies is 120 s and an unreplied one 30 s. */
  udpFlowIdle: 60_000,
  /** A connection with bytes waiting for the peer and none of them taken for this long is closed
   * (issue 17 §5): the peer has stopped reading, though it may still send (PINGs keep the
   * keepalive happy). Longer than the keepalive timeout, so a dead path is still the
   * keepalive's to report; a connection whose negotiated keepalive is longer gets that. */
  writeStallTimeout: 20_000,
} as const;

export const Limits = {
  /** Initial per-stream credit in each direction (bytes). */
  streamWindow: 256 * 1024,
  /** Concurrent streams one connection may have open. */
  maxStreams: 1024,
  /** A peer that lets this much pile up unsent towards it is not reading: close it. Bounds
   * the relay's memory per connection whatever the peer does. */
  maxQueued: 64 * 1024 * 1024,
  /** Connections that have not completed TLS + HELLO, in total and per source address. */
  maxUnauthenticated: 512,
  maxUnauthenticatedPerSource: 32,
  /** Sessions one master may hold open at the relay: each costs the relay and the device
   * memory, so one master must not be able to open them without end. */
  maxSessionsPerMaster: 256,
  /** The queue of one packet stream towards a peer (each end and each relay direction): at
   * most this many packets and bytes wait; beyond, the oldest is dropped (src/transport/packet.ts).
   * 256 full-size routed packets are 363 KB, ~30 ms at 100 Mbit/s: enough to ride out a burst,
   * short enough that a TCP flow inside the tunnel sees its drops while they still matter. */
  packetQueuePackets: 256,
  packetQueueBytes: 512 * 1024,
  /** Packets go straight to the link while it holds less than this; then they queue (above). */
  packetLinkHighWater: 1024 * 1024,
  /** Flows (client addresses) one UDP forward carries at once; a new one beyond is dropped. */
  udpFlowsPerForward: 1024,
  /** Requests one peer may have unanswered at once on one connection (issue 17 §4); one more is
   * answered at once with error `busy`. Each costs the answering side memory and often a
   * request of its own to a third party (SESSION_OPEN → SESSION_OFFER). */
  maxRequestsInFlight: 64,
} as const;

/** Room kept under Limits.maxQueued for what credit does not cover (control answers, headers). */
export const CONTROL_SLACK = 8 * 1024 * 1024;

/**
 * Streams the relay routes over one connection. Each may have a full window in flight towards
 * the connection, and the relay closes a connection with more than maxQueued waiting for it:
 * so routes × window must stay under that, or a master with many busy streams would get a
 * device on a slow uplink disconnected while everyone kept to their credit.
 */
export function maxRoutedStreams(window: number = Limits.streamWindow, maxQueued: number = Limits.maxQueued): number {
  return Math.max(1, Math.min(Limits.maxStreams, Math.floor((maxQueued - CONTROL_SLACK) / window)));
}

/**
 * Exponential backoff with full jitter (AWS architecture blog's "Full Jitter"): the delay
 * before attempt n (0-based) is uniform in [0, min(cap, base·2^n)]. `random` is injected so
 * tests can pin it.
 */
export function backoffDelay(attempt: number, random: () => number = Math.random, base: number = Timing.backoffBase, cap: number = Timing.backoffCap): number {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * The attempt counter after a connection ends: a connection that lived `stableAfter` or more
 * starts over from 0; a short-lived one keeps climbing.
 */
export function nextAttempt(attempt: number, livedMs: number | null, stableAfter: number = Timing.stableAfter): number {
  if (livedMs !== null && livedMs >= stableAfter) return 0;
  return attempt + 1;
}

/** The keepalive of one connection: the PING interval and the dead-peer timeout, ms. */
export interface Keepalive {
  interval: number;
  timeout: number;
  /** Lean: the peer PINGs at the interval itself, so this side PINGs only when nothing came
   * from it for 1.5 intervals, or every `lean`-th interval anyway (its own RTT stays fresh).
   * Absent: a PING every interval. */
  lean?: number;
}

/** The relay's own PINGs on a lean connection (a metered device's): every 4th interval. */
export const RELAY_LEAN = 4;

/**
 * A connection's keepalive, given the peer's request (HELLO `keepalive`, absent: none) and this
 * side's own setting. Pure. No request: the own setting, as before. A request: clamped to
 * [keepaliveRequestMin, keepaliveRequestMax], and the timeout stays at least three intervals
 * (as 15 s is to 5 s), so three PINGs may go unanswered before the path counts as dead.
 */
export function negotiateKeepalive(
  request: number | undefined,
  own: Keepalive = { interval: Timing.keepaliveInterval, timeout: Timing.keepaliveTimeout },
  bounds: { min: number; max: number } = { min: Timing.keepaliveRequestMin, max: Timing.keepaliveRequestMax },
): Keepalive {
  if (request === undefined) return own;
  const interval = Math.min(bounds.max, Math.max(bounds.min, Math.floor(request)));
  return { interval, timeout: Math.max(own.timeout, 3 * interval) };
}

/** What a device asks for in its HELLO when it dials over an uplink: on a metered one the
 * longer interval, else nothing (the relay's default). Pure. */
export function keepaliveRequestFor(uplink: { metered: boolean } | undefined): number | undefined {
  return uplink?.metered ? Timing.meteredKeepaliveInterval : undefined;
}

/**
 * The relay's keepalive for a connection whose HELLO asked for one (a metered device, which
 * PINGs at that interval itself): the negotiated one, lean (its ACKs answer the device, and
 * a PING of its own only when the device fell quiet, or every RELAY_LEAN intervals for the
 * RTT). No request: its own, as before. Pure.
 */
export function relayKeepalive(request: number | undefined, own: Keepalive): Keepalive {
  if (request === undefined) return own;
  return { ...negotiateKeepalive(request, own), lean: RELAY_LEAN };
}

/** Does this keepalive tick send a PING? `quietFor`: since the peer's last frame; `sinceOwn`:
 * since this side's last PING (Infinity: none yet). Pure. */
export function pingDue(k: Keepalive, quietFor: number, sinceOwn: number): boolean {
  if (!k.lean) return true;
  // The peer's PINGs come every interval, in about the same phase as these ticks (both timers
  // start at the WELCOME): quiet for half an interval more than that means one went missing.
  // Own PINGs: a little early rather than a tick late, as the timer fires every interval.
  const slack = Math.min(1_000, k.interval / 10);
  return quietFor >= 1.5 * k.interval || sinceOwn >= k.lean * k.interval - slack;
}

/** What a connection remembers of its writes between keepalive ticks. */
export interface WriteProgress {
  /** Bytes the link had handed on (written minus queued) at `at`. */
  flushed: number;
  /** Monotonic ms of the last progress: the queue empty, or bytes taken since the last look. */
  at: number;
}

/**
 * Has the peer stopped reading? Judged at each keepalive tick from the link's queue (`queued`)
 * and the bytes it has handed on so far (`flushed`). Pure. No bytes waiting, or some taken
 * since the last look, is progress; otherwise the connection is stalled once `timeout` ms have
 * passed since the last progress (`stalledFor`, else null).
 */
export function judgeWrites(prev: WriteProgress, queued: number, flushed: number, now: number, timeout: number): { progress: WriteProgress; stalledFor: number | null } {
  if (queued <= 0 || flushed > prev.flushed) return { progress: { flushed, at: now }, stalledFor: null };
  const stalledFor = now - prev.at;
  return { progress: prev, stalledFor: stalledFor >= timeout ? stalledFor : null };
}

/** The write-stall timeout of a connection with keepalive `k`: never shorter than its dead-peer timeout. Pure. */
export function writeStallTimeout(k: { timeout: number } | null, base: number = Timing.writeStallTimeout): number {
  return Math.max(base, k?.timeout ?? 0);
}
