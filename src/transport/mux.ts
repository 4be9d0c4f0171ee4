// A Connection: frames over a Link, typed control messages on stream 0, keepalive, and (for
// endpoints) multiplexed streams with per-stream credit flow control. The relay uses the same
// Connection but routes stream frames itself (`routeFrame`) instead of terminating streams.
import {
  Flag, FrameDecoder, FrameType, GoAwayCode, ProtocolError, ResetCode, MAX_PAYLOAD, HEADER_SIZE, MAX_CONTROL, MAX_CONTROL_MESSAGE,
  encodeHeader, encodeReset, decodeReset, encodeJson, decodeJson, type Frame,
} from "./frame.ts";
import { Msg, isKnownMsg, msgName, ErrorCode } from "./messages.ts";
import type { Link } from "./link.ts";
import { Limits, Timing, pingDue, judgeWrites, writeStallTimeout, type Keepalive, type WriteProgress } from "./policy.ts";
import { PacketSender, isPacketOpen, packetProblem, type PacketLink, type PacketStats } from "./packet.ts";
import { systemClock, wallOf, type Clock, type TimerHandle } from "../clock.ts";

export interface Log {
  debug(...a: unknown[]): void;
  info(...a: unknown[]): void;
  warn(...a: unknown[]): void;
}
const quiet: Log = { debug() {}, info() {}, warn() {} };

/** A REPLY with ok: false, carrying the peer's error code. */
export class RemoteError extends Error {
  override name = "RemoteError";
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

/** Why a stream ended abnormally. */
export class StreamError extends Error {
  override name = "StreamError";
  constructor(readonly code: number, message: string) {
    super(message);
  }
}

/** Why a connection ended. `remote` when the peer said so in a GOAWAY. */
export class ConnectionClosed extends Error {
  override name = "ConnectionClosed";
  constructor(readonly code: number, message: string, readonly remote = false) {
    super(message);
  }
}

export type RequestHandler = (body: Record<string, unknown>, conn: Connection) => unknown | Promise<unknown>;
export type MessageHandler = (body: Record<string, unknown>, conn: Connection) => void;

export interface ConnectionOptions {
  /** The dialer numbers its streams odd, the acceptor even. */
  side: "dialer" | "acceptor";
  log?: Log;
  window?: number;
  keepaliveInterval?: number;
  keepaliveTimeout?: number;
  /** Endpoints: a peer opened a stream (it starts paused; call accept()/resume() or reset()). */
  onStream?: (s: Stream) => void;
  /** Relay: every DATA/WINDOW/RESET frame goes here instead of to local streams. */
  routeFrame?: (f: Frame, conn: Connection) => void;
  /** Every control message that has no handler; default: requests get an error reply. */
  onUnhandled?: (type: number, body: Record<string, unknown>) => void;
  /** Bytes queued towards a peer that does not read before it is closed (Limits.maxQueued). */
  maxQueued?: number;
  /** Largest control message accepted from the peer, in bytes (default: one frame). Devices
   * raise it for the relay's answers; the relay keeps one frame so no peer makes it buffer. */
  maxControlIn?: number;
  /** Called for a protocol error before the connection is closed (for the refusal log). */
  onProtocolError?: (err: Error) => void;
  /** Time for keepalive and request deadlines: every duration is measured on `clock.now()`
   * (monotonic), so a step of the wall clock neither drops the connection nor switches
   * dead-peer detection off. Default: the system clock. */
  clock?: Clock;
  /** Requests from the peer answered at once while this many are unanswered (Limits.maxRequestsInFlight). */
  maxRequestsInFlight?: number;
  /** No write progress for this long closes the connection (Timing.writeStallTimeout; at least
   * the keepalive timeout). Checked at each keepalive tick; 0 turns it off. */
  writeStallTimeout?: number;
}

/** A link's queue beyond this: streams keep their data (and pause their sources) until drain. */
const LINK_HIGH_WATER = 4 * 1024 * 1024;

export class Connection implements PacketLink {
  readonly side: "dialer" | "acceptor";
  readonly log: Log;
  readonly window: number;
  private readonly decoder: FrameDecoder;
  private readonly streams = new Map<number, Stream>();
  private nextId: number;
  private readonly requests = new Map<number, { resolve(v: unknown): void; reject(e: Error): void; timer: TimerHandle; type: number }>();
  private nextRid = 1;
  private readonly handlers = new Map<number, RequestHandler>();
  private readonly listeners = new Map<number, MessageHandler>();
  /** Streams and packet senders waiting for the link to drain. */
  private readonly blocked = new Set<{ flush(): void }>();
  /** Pieces of a control message sent over several frames (Flag.MORE), bounded by maxControlIn. */
  private readonly controlParts: Uint8Array[] = [];
  private controlBytes = 0;
  private keepaliveTimer: TimerHandle | null = null;
  private pingSentAt = new Map<number, number>();
  private pingSeq = 0;
  readonly clock: Clock;
  /** Monotonic instant of the last byte from the peer (clock.now()): what keepalive measures. */
  lastHeard: number;
  /** Round-trip time of the last answered PING, ms. */
  rtt: number | null = null;
  /** Set by the code that authenticated the peer. */
  peer: { id: string; role: string } | null = null;
  closedWith: ConnectionClosed | null = null;
  private closeWaiters: ((e: ConnectionClosed) => void)[] = [];
  bytesIn = 0;
  bytesOut = 0;
  /** Frames decoded from the peer and written to it (for metrics). */
  framesIn = 0;
  framesOut = 0;
  private linkGone!: () => void;
  /** Resolves when the underlying link has closed (after close(): once the GOAWAY is out). */
  readonly linkClosed: Promise<void> = new Promise((r) => (this.linkGone = r));

  constructor(readonly link: Link, private readonly opts: ConnectionOptions) {
    this.side = opts.side;
    this.log = opts.log ?? quiet;
    this.window = opts.window ?? Limits.streamWindow;
    this.nextId = opts.side === "dialer" ? 1 : 2;
    this.clock = opts.clock ?? systemClock;
    this.lastHeard = this.clock.now();
    this.decoder = new FrameDecoder((f) => this.onFrame(f));
    link.setHandlers({
      data: (chunk) => this.onData(chunk),
      drain: () => this.onDrain(),
      closed: (err) => {
        this.teardown(new ConnectionClosed(GoAwayCode.NORMAL, err ? `connection lost: ${err.message}` : "connection closed by peer"));
        this.linkGone();
      },
    });
  }

  get remoteAddress(): string {
    return this.link.remoteAddress;
  }
  get closed(): boolean {
    return this.closedWith !== null;
  }
  get streamCount(): number {
    return this.streams.size;
  }
  /** Wall-clock time (epoch ms) of the last byte from the peer: a "last seen" people read. */
  get lastReceived(): number {
    return wallOf(this.clock, this.lastHeard);
  }

  /** Resolves when the connection is closed (never rejects). */
  wait(): Promise<ConnectionClosed> {
    if (this.closedWith) return Promise.resolve(this.closedWith);
    return new Promise((r) => this.closeWaiters.push(r));
  }

  /** The keepalive this connection runs (once started): PING interval and dead-peer timeout, ms. */
  keepalive: Keepalive | null = null;

  /** PINGs from now on; `k` (negotiated for this connection, issue 13 §8) overrides the options. */
  startKeepalive(k?: Keepalive): void {
    const interval = k?.interval ?? this.opts.keepaliveInterval ?? Timing.keepaliveInterval;
    const timeout = k?.timeout ?? this.opts.keepaliveTimeout ?? Timing.keepaliveTimeout;
    if (this.keepaliveTimer) return;
    this.keepalive = k?.lean ? { interval, timeout, lean: k.lean } : { interval, timeout };
    this.keepaliveTimer = this.clock.setInterval(() => this.routineKeepalive(timeout), interval);
  }

  /** Monotonic instant of this side's last PING (null: none yet). */
  private lastOwnPing: number | null = null;

  private routineKeepalive(timeout: number): void {
    if (this.closed) return;
    const quietFor = this.clock.now() - this.lastHeard;
    if (quietFor > timeout) {
      this.close(GoAwayCode.KEEPALIVE, `no frame from the peer for ${Math.round(quietFor / 1000)} s (keepalive timeout)`);
      return;
    }
    // A silent peer is dead (above); one that talks but takes nothing is stalled.
    if (this.writeStalled()) return;
    const now = this.clock.now();
    if (this.keepalive && !pingDue(this.keepalive, quietFor, this.lastOwnPing === null ? Infinity : now - this.lastOwnPing)) return;
    this.lastOwnPing = now;
    const seq = (this.pingSeq = (this.pingSeq + 1) >>> 0);
    this.pingSentAt.set(seq, now);
    if (this.pingSentAt.size > 8) this.pingSentAt.delete(this.pingSentAt.keys().next().value!);
    this.writeFrame(FrameType.PING, 0, 0, undefined, seq);
  }

  // ---- write progress (issue 17 §5) --------------------------------------------------------

  private writes: WriteProgress | null = null;
  /** Requests of the peer being answered now (their handlers have not finished). */
  requestsInFlight = 0;

  /** Closes a connection whose peer has taken none of the bytes waiting for it for too long. */
  private writeStalled(): boolean {
    const base = this.opts.writeStallTimeout ?? Timing.writeStallTimeout;
    if (base <= 0) return false;
    const now = this.clock.now();
    const queued = this.link.queued;
    const flushed = this.bytesOut - queued;
    const v = judgeWrites(this.writes ?? { flushed, at: now }, queued, flushed, now, writeStallTimeout(this.keepalive, base));
    this.writes = v.progress;
    if (v.stalledFor === null) return false;
    const why = `peer is not reading: no write progress for ${Math.round(v.stalledFor / 1000)} s with ${queued} bytes queued (write stall timeout)`;
    this.log.warn(why);
    this.close(GoAwayCode.KEEPALIVE, why);
    return true;
  }

  // ---- control messages -------------------------------------------------------------------

  /** Registers the answer to a request type; the return value (or thrown error) is the REPLY. */
  handle(type: number, fn: RequestHandler): this {
    this.handlers.set(type, fn);
    return this;
  }
  /** Registers a listener for a one-way message type. */
  on(type: number, fn: MessageHandler): this {
    this.listeners.set(type, fn);
    return this;
  }

  send(type: number, body: Record<string, unknown>): void {
    if (this.closed) return;
    const json = encodeJson(body);
    if (json.length + 2 > MAX_CONTROL_MESSAGE) throw new RangeError(`control message ${msgName(type)} of ${json.length} bytes is too big`);
    const payload = new Uint8Array(2 + json.length);
    new DataView(payload.buffer).setUint16(0, type);
    payload.set(json, 2);
    // Frames of one message go out back to back (writeFrame is synchronous), so the receiver
    // never sees two messages' pieces interleaved.
    for (let at = 0; at < payload.length; at += MAX_CONTROL) {
      const end = Math.min(at + MAX_CONTROL, payload.length);
      this.writeFrame(FrameType.CONTROL, end < payload.length ? Flag.MORE : 0, 0, payload.subarray(at, end));
    }
  }

  request(type: number, body: Record<string, unknown>, timeoutMs: number = Timing.requestTimeout): Promise<unknown> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const rid = this.nextRid++;
    return new Promise((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        this.requests.delete(rid);
        reject(new RemoteError(ErrorCode.INTERNAL, `${msgName(type)}: no answer within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.requests.set(rid, { resolve, reject, timer, type });
      this.send(type, { ...body, rid });
    });
  }

  private onControl(payload: Uint8Array): void {
    if (payload.length < 2) throw new ProtocolError("control frame shorter than its type field");
    const type = new DataView(payload.buffer, payload.byteOffset, 2).getUint16(0);
    const body = decodeJson(payload.subarray(2), `control message ${msgName(type)}`);
    if (typeof body !== "object" || body === null || Array.isArray(body)) throw new ProtocolError(`control message ${msgName(type)} is not a JSON object`);
    const b = body as Record<string, unknown>;
    if (type === Msg.REPLY) {
      const rid = b.rid;
      const pending = typeof rid === "number" ? this.requests.get(rid) : undefined;
      if (!pending) return; // late answer to a request that timed out
      this.requests.delete(rid as number);
      this.clock.clearTimeout(pending.timer);
      if (b.ok === true) pending.resolve(b.result);
      else pending.reject(new RemoteError(typeof b.code === "string" ? b.code : ErrorCode.INTERNAL, typeof b.error === "string" ? b.error : "request failed"));
      return;
    }
    if (!isKnownMsg(type)) {
      // Unknown message types are answered (if a request) and otherwise ignored: a newer peer
      // may send messages this version does not know. The connection stays up.
      this.log.debug(`ignoring unknown control message type ${type}`);
      if (typeof b.rid === "number") this.send(Msg.REPLY, { rid: b.rid, ok: false, code: ErrorCode.BAD_REQUEST, error: `unknown message type ${type}` });
      return;
    }
    const handler = this.handlers.get(type);
    if (handler && typeof b.rid === "number") {
      const rid = b.rid;
      const cap = this.opts.maxRequestsInFlight ?? Limits.maxRequestsInFlight;
      if (this.requestsInFlight >= cap) {
        this.send(Msg.REPLY, { rid, ok: false, code: ErrorCode.BUSY, error: `${this.requestsInFlight} requests of yours are unanswered on this connection (limit ${cap}); wait for their answers` });
        return;
      }
      this.requestsInFlight++;
      Promise.resolve()
        .then(() => handler(b, this))
        .finally(() => this.requestsInFlight--)
        .then(
          (result) => {
            // A result too big for one control frame must become an error REPLY: thrown here
            // it would be an unhandled rejection, which ends the whole process (the relay).
            try {
              this.send(Msg.REPLY, { rid, ok: true, result: result ?? null });
            } catch (err) {
              this.send(Msg.REPLY, { rid, ok: false, code: ErrorCode.INTERNAL, error: `the answer to ${msgName(type)} is too big to send: ${(err as Error).message}` });
            }
          },
          (err: unknown) => {
            const code = err instanceof RemoteError ? err.code : ErrorCode.INTERNAL;
            this.send(Msg.REPLY, { rid, ok: false, code, error: (err instanceof Error ? err.message : String(err)).slice(0, 1024) });
          },
        );
      return;
    }
    const listener = this.listeners.get(type);
    if (listener) {
      listener(b, this);
      return;
    }
    this.opts.onUnhandled?.(type, b);
    if (typeof b.rid === "number") this.send(Msg.REPLY, { rid: b.rid, ok: false, code: ErrorCode.BAD_REQUEST, error: `${msgName(type)} is not served here` });
  }

  // ---- frames -----------------------------------------------------------------------------

  private onData(chunk: Uint8Array): void {
    if (this.closed) return;
    this.lastHeard = this.clock.now();
    this.bytesIn += chunk.length;
    try {
      this.decoder.push(chunk);
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      this.opts.onProtocolError?.(e);
      this.close(GoAwayCode.PROTOCOL, `protocol error: ${e.message}`);
    }
  }

  private onFrame(f: Frame): void {
    if (this.closed) return;
    this.framesIn++;
    switch (f.type) {
      case FrameType.CONTROL: {
        const limit = this.opts.maxControlIn ?? MAX_CONTROL;
        if (f.flags & Flag.MORE || this.controlParts.length) {
          this.controlBytes += f.payload.length;
          if (this.controlBytes > limit) throw new ProtocolError(`control message of more than ${limit} bytes (the limit here)`);
          this.controlParts.push(f.payload.slice());
          if (f.flags & Flag.MORE) return;
          const whole = new Uint8Array(this.controlBytes);
          let at = 0;
          for (const p of this.controlParts.splice(0)) {
            whole.set(p, at);
            at += p.length;
          }
          this.controlBytes = 0;
          this.onControl(whole);
          return;
        }
        this.onControl(f.payload);
        return;
      }
      case FrameType.PING:
        if (f.flags & Flag.ACK) {
          const sent = this.pingSentAt.get(f.length);
          if (sent !== undefined) {
            this.rtt = this.clock.now() - sent;
            this.pingSentAt.delete(f.length);
          }
        } else {
          this.writeFrame(FrameType.PING, Flag.ACK, 0, undefined, f.length);
        }
        return;
      case FrameType.GOAWAY: {
        const { code, reason } = decodeReset(f.payload);
        this.teardown(new ConnectionClosed(code, reason, true));
        this.link.end();
        return;
      }
    }
    if (this.opts.routeFrame) {
      this.opts.routeFrame(f, this);
      return;
    }
    this.onStreamFrame(f);
  }

  private onStreamFrame(f: Frame): void {
    let s = this.streams.get(f.stream);
    if (f.type === FrameType.DATA && f.flags & Flag.SYN) {
      if (s) throw new ProtocolError(`stream ${f.stream} opened twice`);
      const theirs = this.side === "dialer" ? 0 : 1; // parity of ids the peer may open
      if (f.stream % 2 !== theirs) throw new ProtocolError(`stream id ${f.stream} has the wrong parity for the peer`);
      let open: unknown;
      try {
        open = decodeJson(f.payload, "stream open header");
      } catch (err) {
        this.writeFrame(FrameType.RESET, 0, f.stream, encodeReset(ResetCode.PROTOCOL, (err as Error).message));
        return;
      }
      if (typeof open !== "object" || open === null || Array.isArray(open)) {
        this.writeFrame(FrameType.RESET, 0, f.stream, encodeReset(ResetCode.PROTOCOL, "stream open header is not a JSON object"));
        return;
      }
      if (this.streams.size >= Limits.maxStreams || !this.opts.onStream) {
        this.writeFrame(FrameType.RESET, 0, f.stream, encodeReset(ResetCode.REFUSED, this.opts.onStream ? `too many streams (limit ${Limits.maxStreams})` : "this end accepts no streams"));
        return;
      }
      s = new Stream(this, f.stream, open as Record<string, unknown>);
      this.streams.set(f.stream, s);
      if (f.flags & Flag.FIN) s.receiveFin();
      this.opts.onStream(s);
      return;
    }
    if (!s) {
      // Frames for a stream that has ended (the peer had not seen our RESET yet): harmless.
      if (f.type === FrameType.DATA && !(f.flags & Flag.FIN) && f.length > 0) {
        this.writeFrame(FrameType.RESET, 0, f.stream, encodeReset(ResetCode.CANCEL, "stream is closed"));
      }
      return;
    }
    if (f.type === FrameType.PACKET) s.receivePacket(f.payload);
    else if (f.type === FrameType.DATA) s.receiveData(f.payload, (f.flags & Flag.FIN) !== 0);
    else if (f.type === FrameType.WINDOW) s.receiveWindow(f.length, (f.flags & Flag.ACK) !== 0);
    else if (f.type === FrameType.RESET) {
      const { code, reason } = decodeReset(f.payload);
      s.receiveReset(code, reason);
    }
  }

  /** Writes one frame as one buffer (header + payload), so it is one write and one record. */
  writeFrame(type: number, flags: number, stream: number, payload?: Uint8Array, value?: number): void {
    if (this.closed) return;
    const len = payload ? payload.length : 0;
    // Header and payload go to the link as two pieces: the link coalesces queued pieces into
    // one write (one TLS record), so the payload is copied once per hop, not twice. Holding
    // the payload view is safe: Bun hands every data event a buffer of its own.
    const head = new Uint8Array(HEADER_SIZE);
    encodeHeader(head, 0, type, flags, stream, value ?? len);
    this.bytesOut += HEADER_SIZE + len;
    this.framesOut++;
    this.link.write(head);
    if (payload && len) this.link.write(payload);
    // Not for the GOAWAY itself: close() writes one, which would land here again, forever.
    if (type !== FrameType.GOAWAY && this.link.queued > (this.opts.maxQueued ?? Limits.maxQueued)) {
      this.close(GoAwayCode.PROTOCOL, `peer is not reading (${this.link.queued} bytes queued)`);
    }
  }

  /** True when the link has room; streams hold their data back otherwise. */
  get writable(): boolean {
    return this.link.queued < LINK_HIGH_WATER;
  }
  /** True while packets may go straight to the link (Limits.packetLinkHighWater). */
  get packetRoom(): boolean {
    return this.link.queued < Limits.packetLinkHighWater;
  }
  /** Credit granted beyond the window, over all streams (bounded by CREDIT_GROWTH_BUDGET). */
  private creditGrown = 0;
  /** Up to `want` bytes of credit growth for a stream, what the budget has left. */
  growCredit(want: number): number {
    const n = Math.max(0, Math.min(want, CREDIT_GROWTH_BUDGET - this.creditGrown));
    this.creditGrown += n;
    return n;
  }

  /** A stream (or packet sender) that could not send because the link was full waits for drain. */
  block(s: { flush(): void }): void {
    this.blocked.add(s);
  }

  private onDrain(): void {
    if (this.blocked.size === 0) return;
    const waiting = [...this.blocked];
    this.blocked.clear();
    for (const s of waiting) s.flush();
  }

  // ---- streams ----------------------------------------------------------------------------

  /** Opens a stream; `open` is the open header the peer (or relay) reads. */
  openStream(open: Record<string, unknown>): Stream {
    if (this.closedWith) throw this.closedWith;
    if (this.streams.size >= Limits.maxStreams) throw new StreamError(ResetCode.REFUSED, `too many streams (limit ${Limits.maxStreams})`);
    const id = this.nextId;
    this.nextId += 2;
    const s = new Stream(this, id, open);
    s.accepted = false;
    this.streams.set(id, s);
    const header = encodeJson(open);
    if (header.length > MAX_PAYLOAD) throw new RangeError("stream open header too big");
    this.writeFrame(FrameType.DATA, Flag.SYN, id, header);
    return s;
  }

  forget(s: Stream): void {
    if (this.streams.get(s.id) === s) this.creditGrown -= s.grownBy;
    this.streams.delete(s.id);
    this.blocked.delete(s);
    if (s.packetSender) this.blocked.delete(s.packetSender);
  }

  // ---- closing ----------------------------------------------------------------------------

  /** close(), then wait (bounded) until the GOAWAY has left. */
  async closeAndWait(code: number, reason: string, maxMs = 1000): Promise<void> {
    this.close(code, reason);
    let timer: TimerHandle | undefined;
    await Promise.race([this.linkClosed, new Promise((r) => (timer = this.clock.setTimeout(() => r(undefined), maxMs)))]);
    this.clock.clearTimeout(timer); // a pending timer would keep a stopping process alive for maxMs
  }

  /** Sends GOAWAY with the reason, flushes, closes. Idempotent. */
  close(code: number = GoAwayCode.NORMAL, reason = "closing"): void {
    if (this.closed) return;
    this.writeFrame(FrameType.GOAWAY, 0, 0, encodeReset(code, reason));
    this.teardown(new ConnectionClosed(code, reason));
    this.link.end();
  }

  private teardown(why: ConnectionClosed): void {
    if (this.closedWith) return;
    this.closedWith = why;
    if (this.keepaliveTimer) this.clock.clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
    for (const r of this.requests.values()) {
      this.clock.clearTimeout(r.timer);
      r.reject(why);
    }
    this.requests.clear();
    for (const s of [...this.streams.values()]) s.abort(new StreamError(ResetCode.CANCEL, `connection closed: ${why.message}`));
    this.streams.clear();
    for (const w of this.closeWaiters.splice(0)) w(why);
  }
}

/**
 * Largest credit a receiving stream grants once its consumer keeps up, and the growth beyond
 * the window all streams of one connection may have together. What a peer (the relay) may
 * have to queue towards this side is then at most streams x window + the budget, within the
 * slack maxRoutedStreams keeps under maxQueued. Wire format unchanged: growth is WINDOW
 * deltas larger than what was consumed, which every version's sender and relay count as
 * credit. Issue 18: the 256 KiB window was what a single stream waited on.
 */
const STREAM_WINDOW_MAX = 1024 * 1024;
const CREDIT_GROWTH_BUDGET = 4 * 1024 * 1024;

/** Below this much unsent data a stream asks its source for more. */
const STREAM_HIGH_WATER = 128 * 1024;

/**
 * One multiplexed stream. Incoming data is delivered through `ondata` only while resumed;
 * credit goes back to the peer as the consumer takes data, so a consumer that stops (pause)
 * stops the peer after one window, without slowing other streams.
 */
export class Stream {
  ondata: ((chunk: Uint8Array) => void) | null = null;
  onend: (() => void) | null = null;
  ondrain: (() => void) | null = null;
  onaccept: (() => void) | null = null;
  onclose: ((err: StreamError | null) => void) | null = null;
  /** Packet streams: each packet from the peer (delivered at once, whether paused or not). */
  onpacket: ((packet: Uint8Array) => void) | null = null;

  accepted = true;
  /** A packet stream (its open header has `packet`): PACKET frames only, outside credit. */
  readonly packets: boolean;
  /** Packet streams: the bounded queue towards the peer. */
  readonly packetSender: PacketSender | null;
  private packetsIn = 0;
  private packetBytesIn = 0;
  /** Packets that arrived before a handler was set (counted as `no_stream` drops). */
  private packetsUnhandled = 0;
  private sendCredit: number;
  private sendQueue: Uint8Array[] = [];
  private sendQueued = 0;
  private finQueued = false;
  private finSent = false;
  private remoteFin = false;
  private endDelivered = false;
  private recvAvail: number;
  /** The credit this side grants its peer: the connection's window, grown (see deliver). */
  private recvWindow: number;
  private unacked = 0;
  private recvQueue: Uint8Array[] = [];
  private paused = true;
  private done = false;
  bytesIn = 0;
  bytesOut = 0;

  constructor(readonly conn: Connection, readonly id: number, readonly open: Record<string, unknown>) {
    this.sendCredit = conn.window;
    this.recvAvail = conn.window;
    this.recvWindow = conn.window;
    this.packets = isPacketOpen(open);
    this.packetSender = this.packets ? new PacketSender(conn, id) : null;
  }

  /** Packet streams: sends one packet, or drops it (counted) when the queue is full. Never waits. */
  sendPacket(packet: Uint8Array): boolean {
    if (!this.packetSender) throw new Error(`stream ${this.id} is not a packet stream`);
    return this.packetSender.send(packet);
  }

  /** Packet streams: what went each way and what was dropped (a copy). */
  packetStats(): PacketStats {
    const out = this.packetSender!.stats;
    return {
      packets_out: out.packets_out,
      bytes_out: out.bytes_out,
      packets_in: this.packetsIn,
      bytes_in: this.packetBytesIn,
      drops: { ...out.drops, no_stream: out.drops.no_stream + this.packetsUnhandled },
    };
  }

  receivePacket(payload: Uint8Array): void {
    if (this.done) return;
    if (!this.packets) {
      this.reset(ResetCode.PROTOCOL, "a PACKET frame on a byte stream");
      return;
    }
    const problem = packetProblem(payload.length);
    if (problem) {
      this.reset(ResetCode.PROTOCOL, `${problem} on packet stream ${this.id}`);
      return;
    }
    this.packetsIn++;
    this.packetBytesIn += payload.length;
    if (this.onpacket) this.onpacket(payload);
    else this.packetsUnhandled++;
  }

  get closed(): boolean {
    return this.done;
  }

  /** Acceptor: confirm the stream (the opener's `onaccept` fires). */
  accept(): void {
    if (this.done) return;
    this.conn.writeFrame(FrameType.WINDOW, Flag.ACK, this.id, undefined, 0);
  }

  /** Queues data; false when the caller should wait for `ondrain` before writing more. */
  write(data: Uint8Array): boolean {
    if (this.done || this.finQueued) return false;
    if (data.length) {
      this.sendQueue.push(data);
      this.sendQueued += data.length;
    }
    this.flush();
    return this.sendQueued < STREAM_HIGH_WATER;
  }

  /** Half-close: no more data from this side (after what is queued). */
  end(): void {
    if (this.done || this.finQueued) return;
    this.finQueued = true;
    this.flush();
  }

  flush(): void {
    if (this.done) return;
    const wasHigh = this.sendQueued >= STREAM_HIGH_WATER;
    while (this.sendQueued > 0 && this.sendCredit > 0) {
      if (!this.conn.writable) {
        this.conn.block(this);
        break;
      }
      const head = this.sendQueue[0]!;
      const n = Math.min(head.length, this.sendCredit, MAX_PAYLOAD);
      const piece = n === head.length ? head : head.subarray(0, n);
      if (n === head.length) this.sendQueue.shift();
      else this.sendQueue[0] = head.subarray(n);
      this.sendQueued -= n;
      this.sendCredit -= n;
      this.bytesOut += n;
      const fin = this.finQueued && this.sendQueued === 0;
      this.conn.writeFrame(FrameType.DATA, fin ? Flag.FIN : 0, this.id, piece);
      if (fin) this.finSent = true;
    }
    if (this.finQueued && !this.finSent && this.sendQueued === 0) {
      this.finSent = true;
      this.conn.writeFrame(FrameType.DATA, Flag.FIN, this.id);
    }
    if (wasHigh && this.sendQueued < STREAM_HIGH_WATER) this.ondrain?.();
    this.maybeDone();
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (this.done) return;
    this.paused = false;
    while (!this.paused && this.recvQueue.length) {
      const c = this.recvQueue.shift()!;
      this.deliver(c);
      if (this.done) return;
    }
    if (!this.paused && this.remoteFin && !this.endDelivered) {
      this.endDelivered = true;
      this.onend?.();
      this.maybeDone();
    }
  }

  /** Abort with a reason the peer will see. */
  reset(code: number, reason: string): void {
    if (this.done) return;
    this.conn.writeFrame(FrameType.RESET, 0, this.id, encodeReset(code, reason));
    this.abort(new StreamError(code, reason));
  }

  abort(err: StreamError | null): void {
    if (this.done) return;
    this.done = true;
    this.packetSender?.close();
    this.sendQueue = [];
    this.recvQueue = [];
    this.conn.forget(this);
    this.onclose?.(err);
  }

  receiveData(payload: Uint8Array, fin: boolean): void {
    if (this.done) return;
    if (this.packets && payload.length) {
      this.reset(ResetCode.PROTOCOL, "byte data on a packet stream (packets travel in PACKET frames)");
      return;
    }
    if (payload.length > this.recvAvail) {
      this.reset(ResetCode.PROTOCOL, `peer sent ${payload.length} bytes with ${this.recvAvail} bytes of credit`);
      return;
    }
    if (this.remoteFin && payload.length) {
      this.reset(ResetCode.PROTOCOL, "data after FIN");
      return;
    }
    this.recvAvail -= payload.length;
    if (payload.length) {
      if (this.paused || this.recvQueue.length) this.recvQueue.push(payload.slice());
      else this.deliver(payload);
    }
    if (fin) this.receiveFin();
  }

  receiveFin(): void {
    this.remoteFin = true;
    if (!this.paused && this.recvQueue.length === 0 && !this.endDelivered) {
      this.endDelivered = true;
      this.onend?.();
      this.maybeDone();
    }
  }

  private deliver(chunk: Uint8Array): void {
    this.bytesIn += chunk.length;
    this.ondata?.(chunk);
    // Credit goes back once a quarter window has been consumed: few WINDOW frames, and the
    // sender never idles waiting for credit on a fast path.
    this.unacked += chunk.length;
    if (this.unacked >= this.recvWindow / 4 && !this.done) {
      // A consumer that keeps up earns its sender a larger window (up to STREAM_WINDOW_MAX,
      // within the connection's CREDIT_GROWTH_BUDGET): the first window was the bottleneck on
      // a fast path, the sender idling for credit. A reader that stops never grows it.
      const grow = this.conn.growCredit(Math.min(this.conn.window, STREAM_WINDOW_MAX - this.recvWindow));
      this.recvWindow += grow;
      const delta = this.unacked + grow;
      this.recvAvail += delta;
      this.conn.writeFrame(FrameType.WINDOW, 0, this.id, undefined, delta);
      this.unacked = 0;
    }
  }

  receiveWindow(delta: number, ack: boolean): void {
    if (this.done) return;
    if (ack && !this.accepted) {
      this.accepted = true;
      this.onaccept?.();
    }
    if (delta > 0) {
      if (this.sendCredit + delta > 2 ** 31) {
        this.reset(ResetCode.PROTOCOL, "credit overflow");
        return;
      }
      this.sendCredit += delta;
      this.flush();
    }
  }

  receiveReset(code: number, reason: string): void {
    this.abort(new StreamError(code, reason));
  }

  /** Credit this stream grants beyond the connection's window. */
  get grownBy(): number {
    return this.recvWindow - this.conn.window;
  }

  private maybeDone(): void {
    if (!this.done && this.finSent && this.endDelivered) {
      this.done = true;
      this.conn.forget(this);
      this.onclose?.(null);
    }
  }
}
