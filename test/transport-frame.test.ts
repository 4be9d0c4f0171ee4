// The frame codec: round trips whatever the chunking, and every bad header is refused before
// a byte of payload is buffered (a hostile peer cannot make the decoder allocate beyond one
// frame).
import { describe, expect, test } from "bun:test";
import {
  Flag, FrameDecoder, FrameType, HEADER_SIZE, MAX_PAYLOAD, MAX_REASON, ProtocolError, ResetCode,
  decodeJson, decodeReset, encodeFrame, encodeJson, encodeReset, type Frame,
} from "../src/transport/frame.ts";

function header(version: number, type: number, flags: number, stream: number, length: number): Uint8Array {
  const b = new Uint8Array(HEADER_SIZE);
  const v = new DataView(b.buffer);
  v.setUint8(0, version);
  v.setUint8(1, type);
  v.setUint16(2, flags);
  v.setUint32(4, stream);
  v.setUint32(8, length);
  return b;
}

function decodeAll(chunks: Uint8Array[]): Frame[] {
  const out: Frame[] = [];
  const d = new FrameDecoder((f) => out.push({ ...f, payload: f.payload.slice() }));
  for (const c of chunks) d.push(c);
  return out;
}

/**
 * Joins consecutive DATA pieces of one stream back into the frame they came from: the decoder
 * hands stream bytes on as they arrive (FIN only on the last piece), which is the same data.
 */
function joinPieces(frames: Frame[]): Frame[] {
  const out: Frame[] = [];
  for (const f of frames) {
    const prev = out.at(-1);
    const continues = prev && prev.type === FrameType.DATA && f.type === FrameType.DATA && prev.stream === f.stream && !(prev.flags & (Flag.FIN | Flag.SYN)) && !(f.flags & Flag.SYN) && prev.length < MAX_PAYLOAD && f.length > 0;
    if (continues) {
      const payload = concat([prev.payload, f.payload]);
      out[out.length - 1] = { ...prev, flags: f.flags, length: payload.length, payload };
    } else out.push(f);
  }
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function sample(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

describe("encodeFrame", () => {
  test("writes the documented 12-byte big-endian header", () => {
    const f = encodeFrame(FrameType.DATA, Flag.SYN | Flag.FIN, 0x01020304, new Uint8Array([9, 8, 7]));
    expect([...f]).toEqual([1, 0, 0, 5, 1, 2, 3, 4, 0, 0, 0, 3, 9, 8, 7]);
  });

  test("WINDOW and PING carry a value in the length field and no payload", () => {
    expect([...encodeFrame(FrameType.WINDOW, 0, 7, undefined, 65536)]).toEqual([1, 1, 0, 0, 0, 0, 0, 7, 0, 1, 0, 0]);
    expect([...encodeFrame(FrameType.PING, Flag.ACK, 0, undefined, 0xdeadbeef)]).toEqual([1, 2, 0, 2, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
  });

  test("refuses a payload above MAX_PAYLOAD", () => {
    expect(() => encodeFrame(FrameType.DATA, 0, 1, new Uint8Array(MAX_PAYLOAD + 1))).toThrow(/exceeds/);
    expect(encodeFrame(FrameType.DATA, 0, 1, new Uint8Array(MAX_PAYLOAD)).length).toBe(HEADER_SIZE + MAX_PAYLOAD);
  });
});

describe("FrameDecoder", () => {
  const frames = [
    encodeFrame(FrameType.CONTROL, 0, 0, sample(40, 1)),
    encodeFrame(FrameType.DATA, Flag.SYN, 1, encodeJson({ session: "s-abcd", target: "10.0.0.5:80" })),
    encodeFrame(FrameType.DATA, 0, 1, sample(MAX_PAYLOAD, 2)),
    encodeFrame(FrameType.WINDOW, Flag.ACK, 1, undefined, 1234),
    encodeFrame(FrameType.PING, 0, 0, undefined, 77),
    encodeFrame(FrameType.DATA, Flag.FIN, 3),
    encodeFrame(FrameType.RESET, 0, 5, encodeReset(ResetCode.REFUSED, "no")),
    encodeFrame(FrameType.GOAWAY, 0, 0, encodeReset(2, "bye")),
  ];
  const wire = concat(frames);
  const expected = decodeAll([wire]);

  test("decodes a whole buffer into the frames that were encoded", () => {
    expect(expected.map((f) => [f.type, f.flags, f.stream, f.length, f.payload.length])).toEqual([
      [FrameType.CONTROL, 0, 0, 40, 40],
      [FrameType.DATA, Flag.SYN, 1, expected[1]!.payload.length, expected[1]!.payload.length],
      [FrameType.DATA, 0, 1, MAX_PAYLOAD, MAX_PAYLOAD],
      [FrameType.WINDOW, Flag.ACK, 1, 1234, 0],
      [FrameType.PING, 0, 0, 77, 0],
      [FrameType.DATA, Flag.FIN, 3, 0, 0],
      [FrameType.RESET, 0, 5, 6, 6],
      [FrameType.GOAWAY, 0, 0, 7, 7],
    ]);
    expect(expected[2]!.payload).toEqual(sample(MAX_PAYLOAD, 2));
  });

  test.each([1, 2, 5, 11, 12, 13, 1000, 65_547])("gives the same frames when the bytes arrive in chunks of %d", (size) => {
    const chunks: Uint8Array[] = [];
    for (let at = 0; at < wire.length; at += size) chunks.push(wire.slice(at, at + size));
    const got = decodeAll(chunks);
    // Stream bytes come out as soon as they arrive, never more than one chunk delivered: a
    // piece is cut from a single chunk, not held back to be joined with the next one...
    const pieces = got.filter((f) => f.type === FrameType.DATA && !(f.flags & Flag.SYN));
    expect(pieces.length).toBeGreaterThan(0);
    for (const f of pieces) expect(f.length).toBeLessThanOrEqual(Math.min(size, MAX_PAYLOAD));
    // ...and joined up they are exactly the frames that were sent; other types arrive whole.
    expect(joinPieces(got)).toEqual(expected);
  });

  test("a DATA frame split over chunks is handed on in pieces, FIN only on the last", () => {
    const f = encodeFrame(FrameType.DATA, Flag.FIN, 7, sample(1000, 4));
    const got = decodeAll([f.slice(0, HEADER_SIZE + 300), f.slice(HEADER_SIZE + 300, HEADER_SIZE + 700), f.slice(HEADER_SIZE + 700)]);
    expect(got.map((x) => [x.type, x.flags, x.stream, x.payload.length])).toEqual([
      [FrameType.DATA, 0, 7, 300],
      [FrameType.DATA, 0, 7, 400],
      [FrameType.DATA, Flag.FIN, 7, 300],
    ]);
    expect(concat(got.map((x) => x.payload))).toEqual(sample(1000, 4));
  });

  test("buffers at most one header plus one payload for an incomplete frame", () => {
    const d = new FrameDecoder(() => {});
    const big = encodeFrame(FrameType.CONTROL, 0, 0, sample(MAX_PAYLOAD, 3));
    d.push(big.subarray(0, 5));
    expect(d.buffered).toBe(5);
    d.push(big.subarray(5, HEADER_SIZE + 100));
    expect(d.buffered).toBe(100);
    d.push(big.subarray(HEADER_SIZE + 100));
    expect(d.buffered).toBe(0);
    // Stream bytes are not held at all: they are handed on as they come.
    const data = encodeFrame(FrameType.DATA, 0, 1, sample(MAX_PAYLOAD, 3));
    d.push(data.subarray(0, HEADER_SIZE + 100));
    expect(d.buffered).toBe(0);
  });

  test.each([
    ["an unknown version", header(2, FrameType.DATA, 0, 1, 0), /unsupported frame version 2/],
    ["an unknown frame type", header(1, 7, 0, 1, 0), /unknown frame type 7/],
    ["PACKET on stream 0", header(1, FrameType.PACKET, 0, 0, 10), /stream 0/],
    ["PACKET with a flag", header(1, FrameType.PACKET, Flag.FIN, 1, 10), /on a PACKET frame, which takes none/],
    ["an oversized PACKET frame", header(1, FrameType.PACKET, 0, 1, MAX_PAYLOAD + 1), /exceeds the limit/],
    ["frame type 255", header(1, 255, 0, 1, 0), /unknown frame type 255/],
    ["unknown flags", header(1, FrameType.DATA, 0x10, 1, 0), /unknown frame flags 0x10/],
    ["MORE on a DATA frame", header(1, FrameType.DATA, Flag.MORE, 1, 0), /flag MORE on frame type 0; only CONTROL frames continue/],
    ["MORE on a WINDOW frame", header(1, FrameType.WINDOW, Flag.MORE, 1, 0), /flag MORE on frame type 1/],
    ["an oversized DATA frame", header(1, FrameType.DATA, 0, 1, MAX_PAYLOAD + 1), /exceeds the limit/],
    ["a 4 GiB CONTROL frame", header(1, FrameType.CONTROL, 0, 0, 0xffffffff), /exceeds the limit/],
    ["an oversized RESET frame", header(1, FrameType.RESET, 0, 1, MAX_PAYLOAD + 1), /exceeds the limit/],
    ["an oversized GOAWAY frame", header(1, FrameType.GOAWAY, 0, 0, MAX_PAYLOAD + 1), /exceeds the limit/],
    ["PING on a stream", header(1, FrameType.PING, 0, 3, 0), /belongs on stream 0/],
    ["CONTROL on a stream", header(1, FrameType.CONTROL, 0, 3, 0), /belongs on stream 0/],
    ["GOAWAY on a stream", header(1, FrameType.GOAWAY, 0, 3, 0), /belongs on stream 0/],
    ["DATA on stream 0", header(1, FrameType.DATA, 0, 0, 0), /stream 0/],
    ["WINDOW on stream 0", header(1, FrameType.WINDOW, 0, 0, 5), /stream 0/],
    ["RESET on stream 0", header(1, FrameType.RESET, 0, 0, 0), /stream 0/],
  ])("refuses %s from the header alone", (_name, bad, message) => {
    const seen: Frame[] = [];
    const d = new FrameDecoder((f) => seen.push(f));
    // Only the header arrives: the refusal must not wait for (or allocate) the payload.
    expect(() => d.push(bad)).toThrow(ProtocolError);
    expect(() => new FrameDecoder(() => {}).push(bad)).toThrow(message);
    expect(seen).toEqual([]);
    expect(d.buffered).toBe(0);
  });

  test("a header split over chunks is judged once it is complete", () => {
    const d = new FrameDecoder(() => {});
    const bad = header(1, 9, 0, 1, 0);
    d.push(bad.subarray(0, 1));
    expect(() => d.push(bad.subarray(1))).toThrow(/unknown frame type 9/);
  });

  test("WINDOW length is a value, not a payload: a 4 GiB credit does not wait for bytes", () => {
    const out = decodeAll([header(1, FrameType.WINDOW, 0, 1, 0xffffffff), encodeFrame(FrameType.PING, 0, 0, undefined, 1)]);
    expect(out.map((f) => [f.type, f.length, f.payload.length])).toEqual([
      [FrameType.WINDOW, 0xffffffff, 0],
      [FrameType.PING, 1, 0],
    ]);
  });
});

describe("reset payloads and JSON bodies", () => {
  test("code and reason round trip", () => {
    expect(decodeReset(encodeReset(ResetCode.UNREACHABLE, "connect 10.0.0.5:80: refused"))).toEqual({ code: ResetCode.UNREACHABLE, reason: "connect 10.0.0.5:80: refused" });
  });
  test("a reason is cut at 1024 characters", () => {
    expect(decodeReset(encodeReset(1, "x".repeat(5000))).reason.length).toBe(1024);
  });
  test("a short or non-UTF-8 payload still decodes to something an operator can read", () => {
    expect(decodeReset(new Uint8Array([0, 1]))).toEqual({ code: ResetCode.INTERNAL, reason: "reset without a reason" });
    expect(decodeReset(new Uint8Array([0, 0, 0, 3, 0xff, 0xfe]))).toEqual({ code: 3, reason: "(reason not UTF-8)" });
  });
  test("decodeJson names what was bad", () => {
    expect(decodeJson(encodeJson({ a: 1 }), "x")).toEqual({ a: 1 });
    expect(() => decodeJson(new Uint8Array([0xff]), "the HELLO")).toThrow("the HELLO is not UTF-8");
    expect(() => decodeJson(new TextEncoder().encode("{nope"), "the HELLO")).toThrow("the HELLO is not JSON");
  });
});

test("a peer's reason is cut to MAX_REASON characters on the way in too", () => {
  const payload = new Uint8Array(MAX_PAYLOAD);
  payload.fill(0x61, 4);
  expect(decodeReset(payload).reason).toBe("a".repeat(MAX_REASON));
});
