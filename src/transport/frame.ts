// The frame format that multiplexes streams inside one TLS connection (docs/protocol.md).
//
// Every frame is a 12-byte header and a payload:
//
//   0       1       2               4                               8                              12
//   +-------+-------+---------------+-------------------------------+-------------------------------+
//   |version| type  |    flags      |           stream id           |            length             |
//   +-------+-------+---------------+-------------------------------+-------------------------------+
//   all big-endian; `length` is the payload length, except WINDOW where it is the credit delta
//   and PING where it is an opaque value (no payload follows).
//
// The decoder checks version, type and length against the limits before it allocates or waits
// for a payload, so a hostile peer cannot make us buffer more than MAX_PAYLOAD per frame.

export const FRAME_VERSION = 1;
export const HEADER_SIZE = 12;
/** Largest payload of one DATA/CONTROL/RESET frame. Writers split bigger chunks. */
export const MAX_PAYLOAD = 64 * 1024;
/** Largest control message (u16 type + JSON) one CONTROL frame carries. A longer message is
 * sent as several CONTROL frames, MORE set on all but the last; a receiver accepts that only
 * up to the limit it chose (the relay: one frame, so a peer cannot make it buffer more). */
export const MAX_CONTROL = MAX_PAYLOAD;
/** Largest control message a sender will split over frames (a DEVICES answer for a big fleet). */
export const MAX_CONTROL_MESSAGE = 16 * 1024 * 1024;

/** Frame types. Frozen: a test pins these numbers; never renumber, only add. */
export const FrameType = {
  /** Stream bytes. SYN opens a stream (payload = open header JSON), FIN half-closes. */
  DATA: 0,
  /** Credit for a stream: `length` is the number of bytes the sender may now send more. */
  WINDOW: 1,
  /** Keepalive; `length` is an opaque value echoed back with the ACK flag. Stream 0 only. */
  PING: 2,
  /** The sender is closing the connection; payload = u32 GoAwayCode + UTF-8 reason. Stream 0 only. */
  GOAWAY: 3,
  /** Abort a stream; payload = u32 ResetCode + UTF-8 reason. */
  RESET: 4,
  /** A typed control message on stream 0: payload = u16 message type + JSON body. */
  CONTROL: 5,
  /**
   * One whole packet (an IP packet, an Ethernet frame, a UDP datagram with its flow id) on a
   * packet stream: `length` is the packet's length, 1..MAX_PACKET. Outside credit: a full queue
   * drops packets, it never waits (src/transport/packet.ts). No flags.
   */
  PACKET: 6,
} as const;
export type FrameTypeId = (typeof FrameType)[keyof typeof FrameType];
const MAX_TYPE = 6;

/** MORE: CONTROL only; the control message continues in the next CONTROL frame. */
export const Flag = { SYN: 1, ACK: 2, FIN: 4, MORE: 8 } as const;

/** Why a stream was reset. Frozen like the frame types. */
export const ResetCode = {
  CANCEL: 0, // the local end gave up (its client went away)
  REFUSED: 1, // the target is not allowed (allow list, policy)
  UNREACHABLE: 2, // the target could not be connected
  PROTOCOL: 3, // the peer broke the protocol on this stream (credit overrun, bad open header)
  NO_SESSION: 4, // the session of this stream does not exist (or ended)
  INTERNAL: 5,
} as const;
export type ResetCodeId = (typeof ResetCode)[keyof typeof ResetCode];

/** Why a connection was closed. Frozen. */
export const GoAwayCode = {
  NORMAL: 0,
  PROTOCOL: 1,
  REPLACED: 2, // another connection with the same id took over
  REVOKED: 3,
  KEEPALIVE: 4,
  SHUTDOWN: 5,
  INTERNAL: 6,
  DUPLICATE: 7, // another device is connected with this certificate (a clone): back off
} as const;

export interface Frame {
  type: FrameTypeId;
  flags: number;
  stream: number;
  /** Credit delta (WINDOW), opaque value (PING, GOAWAY), else payload length. */
  length: number;
  payload: Uint8Array;
}

export class ProtocolError extends Error {
  override name = "ProtocolError";
}

const EMPTY = new Uint8Array(0);

/** Types whose `length` is a value, not a payload length. */
function hasPayload(type: number): boolean {
  return type === FrameType.DATA || type === FrameType.RESET || type === FrameType.CONTROL || type === FrameType.GOAWAY || type === FrameType.PACKET;
}

export function encodeHeader(target: Uint8Array, offset: number, type: number, flags: number, stream: number, length: number): void {
  // Byte by byte rather than through a DataView: no object per frame on the hot path.
  target[offset] = FRAME_VERSION;
  target[offset + 1] = type;
  target[offset + 2] = flags >>> 8;
  target[offset + 3] = flags;
  target[offset + 4] = stream >>> 24;
  target[offset + 5] = stream >>> 16;
  target[offset + 6] = stream >>> 8;
  target[offset + 7] = stream;
  target[offset + 8] = length >>> 24;
  target[offset + 9] = length >>> 16;
  target[offset + 10] = length >>> 8;
  target[offset + 11] = length;
}

/** One frame as one buffer (header and payload together: one TLS record, one write). */
export function encodeFrame(type: number, flags: number, stream: number, payload: Uint8Array = EMPTY, value?: number): Uint8Array {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`frame payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  encodeHeader(out, 0, type, flags, stream, value ?? payload.length);
  if (payload.length) out.set(payload, HEADER_SIZE);
  return out;
}

/**
 * Incremental decoder: feed it the chunks a socket delivers, it calls `onFrame` for every
 * complete frame. Payloads are views into the delivered chunk when a frame lies inside one
 * chunk (no copy), and assembled only when a frame straddles chunks. Throws ProtocolError on
 * a bad header; the caller closes the connection (the stream of the frame is unknowable).
 */
export class FrameDecoder {
  private head = new Uint8Array(HEADER_SIZE);
  private headLen = 0;
  private pending: { type: FrameTypeId; flags: number; stream: number; length: number } | null = null;
  private body: Uint8Array | null = null;
  /** The pending frame is DATA being handed on piece by piece (see push). */
  private streaming = false;
  private bodyLen = 0;

  constructor(private readonly onFrame: (f: Frame) => void) {}

  push(chunk: Uint8Array): void {
    let pos = 0;
    const n = chunk.length;
    while (pos < n) {
      if (!this.pending) {
        // Fast path: a whole header in the chunk.
        if (this.headLen === 0 && n - pos >= HEADER_SIZE) {
          this.pending = parseHeader(chunk, pos);
          pos += HEADER_SIZE;
        } else {
          const take = Math.min(HEADER_SIZE - this.headLen, n - pos);
          this.head.set(chunk.subarray(pos, pos + take), this.headLen);
          this.headLen += take;
          pos += take;
          if (this.headLen < HEADER_SIZE) return;
          this.pending = parseHeader(this.head, 0);
          this.headLen = 0;
        }
        const p = this.pending;
        if (!hasPayload(p.type) || p.length === 0) {
          this.pending = null;
          this.onFrame({ ...p, payload: EMPTY });
          continue;
        }
        if (n - pos >= p.length) {
          const payload = chunk.subarray(pos, pos + p.length);
          pos += p.length;
          this.pending = null;
          this.onFrame({ ...p, payload });
          continue;
        }
        if (p.type === FrameType.DATA && !(p.flags & Flag.SYN)) {
          // Stream bytes need no assembling: hand on what has arrived as a DATA frame of its
          // own (FIN only on the last piece). A 64 KiB frame spread over several TLS records
          // then costs no copy here, on the relay or at an endpoint.
          this.streaming = true;
        } else {
          this.body = new Uint8Array(p.length);
          this.bodyLen = 0;
        }
      }
      const p = this.pending!;
      if (this.streaming) {
        const take = Math.min(p.length, n - pos);
        const last = take === p.length;
        const payload = chunk.subarray(pos, pos + take);
        pos += take;
        p.length -= take;
        if (last) {
          this.pending = null;
          this.streaming = false;
        }
        this.onFrame({ type: p.type, flags: last ? p.flags : p.flags & ~Flag.FIN, stream: p.stream, length: take, payload });
        continue;
      }
      const body = this.body!;
      const take = Math.min(p.length - this.bodyLen, n - pos);
      body.set(chunk.subarray(pos, pos + take), this.bodyLen);
      this.bodyLen += take;
      pos += take;
      if (this.bodyLen === p.length) {
        this.pending = null;
        this.body = null;
        this.onFrame({ ...p, payload: body });
      }
    }
  }

  /** Bytes held for an incomplete frame (bounded by HEADER_SIZE + MAX_PAYLOAD). */
  get buffered(): number {
    return this.headLen + (this.body ? this.bodyLen : 0);
  }
}

function parseHeader(b: Uint8Array, at: number): { type: FrameTypeId; flags: number; stream: number; length: number } {
  const version = b[at]!;
  if (version !== FRAME_VERSION) throw new ProtocolError(`unsupported frame version ${version} (this agent speaks ${FRAME_VERSION})`);
  const type = b[at + 1]!;
  if (type > MAX_TYPE) throw new ProtocolError(`unknown frame type ${type}`);
  const flags = (b[at + 2]! << 8) | b[at + 3]!;
  if (flags & ~(Flag.SYN | Flag.ACK | Flag.FIN | Flag.MORE)) throw new ProtocolError(`unknown frame flags 0x${flags.toString(16)}`);
  if (flags & Flag.MORE && type !== FrameType.CONTROL) throw new ProtocolError(`flag MORE on frame type ${type}; only CONTROL frames continue`);
  const stream = ((b[at + 4]! << 24) | (b[at + 5]! << 16) | (b[at + 6]! << 8) | b[at + 7]!) >>> 0;
  const length = ((b[at + 8]! << 24) | (b[at + 9]! << 16) | (b[at + 10]! << 8) | b[at + 11]!) >>> 0;
  if (hasPayload(type) && length > MAX_PAYLOAD) throw new ProtocolError(`frame of ${length} bytes exceeds the limit of ${MAX_PAYLOAD}`);
  if ((type === FrameType.PING || type === FrameType.GOAWAY || type === FrameType.CONTROL) && stream !== 0) {
    throw new ProtocolError(`frame type ${type} on stream ${stream}; it belongs on stream 0`);
  }
  if (type === FrameType.PACKET && flags !== 0) throw new ProtocolError(`flags 0x${flags.toString(16)} on a PACKET frame, which takes none`);
  if ((type === FrameType.DATA || type === FrameType.WINDOW || type === FrameType.RESET || type === FrameType.PACKET) && stream === 0) {
    throw new ProtocolError(`frame type ${type} on stream 0, which carries only control frames`);
  }
  return { type: type as FrameTypeId, flags, stream, length };
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

/** Longest reason kept from a RESET or GOAWAY, in characters, both ways. */
export const MAX_REASON = 1024;

/** RESET and GOAWAY payloads: u32 code + UTF-8 reason (at most MAX_REASON characters). */
export function encodeReset(code: number, reason: string): Uint8Array {
  const text = textEncoder.encode(reason.slice(0, MAX_REASON));
  const out = new Uint8Array(4 + text.length);
  new DataView(out.buffer).setUint32(0, code);
  out.set(text, 4);
  return out;
}

export function decodeReset(payload: Uint8Array): { code: number; reason: string } {
  if (payload.length < 4) return { code: ResetCode.INTERNAL, reason: "reset without a reason" };
  const code = new DataView(payload.buffer, payload.byteOffset, payload.length).getUint32(0);
  let reason: string;
  try {
    // A peer may send up to a frame of reason; it ends up in logs and in messages the relay
    // passes on (SESSION_CLOSE), which must still fit in one control frame.
    reason = textDecoder.decode(payload.subarray(4)).slice(0, MAX_REASON);
  } catch {
    reason = "(reason not UTF-8)";
  }
  return { code, reason };
}

export function encodeJson(value: unknown): Uint8Array {
  return textEncoder.encode(JSON.stringify(value));
}

export function decodeJson(payload: Uint8Array, what: string): unknown {
  let text: string;
  try {
    text = textDecoder.decode(payload);
  } catch {
    throw new ProtocolError(`${what} is not UTF-8`);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new ProtocolError(`${what} is not JSON`);
  }
}
