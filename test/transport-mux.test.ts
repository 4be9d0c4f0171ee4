// Connection and Stream over an in-memory link pair: streams, half-close, reset with a
// reason, per-stream credit (a paused reader holds its peer to one window and does not stall
// the other streams), control requests, keepalive and GOAWAY.
import { afterEach, describe, expect, test } from "bun:test";
import { Connection, RemoteError, StreamError, type Stream } from "../src/transport/mux.ts";
import { linkPair, type MemoryLink } from "../src/transport/link.ts";
import { Flag, FrameDecoder, FrameType, GoAwayCode, MAX_CONTROL_MESSAGE, MAX_PAYLOAD, ResetCode, decodeReset, encodeFrame, encodeJson, type Frame } from "../src/transport/frame.ts";
import { ErrorCode, Msg } from "../src/transport/messages.ts";
import { Limits } from "../src/transport/policy.ts";
import { holdsFor, waitFor } from "./helpers/wait.ts";

const open: Connection[] = [];
afterEach(() => {
  for (const c of open.splice(0)) c.close();
});

function pair(opts: { onStream?: (s: Stream) => void; window?: number; keepaliveInterval?: number; keepaliveTimeout?: number } = {}) {
  const [a, b] = linkPair();
  const dialer = new Connection(a, { side: "dialer", window: opts.window, keepaliveInterval: opts.keepaliveInterval, keepaliveTimeout: opts.keepaliveTimeout });
  const acceptor = new Connection(b, { side: "acceptor", onStream: opts.onStream, window: opts.window, keepaliveInterval: opts.keepaliveInterval, keepaliveTimeout: opts.keepaliveTimeout });
  open.push(dialer, acceptor);
  return { dialer, acceptor, a, b };
}

/** Collects a stream's data and its end. */
function sink(s: Stream) {
  const chunks: Uint8Array[] = [];
  const r = { bytes: 0, ended: false, closed: false as boolean, error: null as StreamError | null, text: () => Buffer.concat(chunks).toString() };
  s.ondata = (c) => {
    chunks.push(c.slice());
    r.bytes += c.length;
  };
  s.onend = () => (r.ended = true);
  s.onclose = (e) => {
    r.closed = true;
    r.error = e;
  };
  return r;
}

const bytes = (n: number, fill = 7) => new Uint8Array(n).fill(fill);

/** Writes `total` bytes in 16 KiB pieces, honouring write() = false and ondrain. */
function pump(s: Stream, total: number, fill = 1): { sent: () => number } {
  let sent = 0;
  const more = () => {
    while (sent < total) {
      const n = Math.min(16 * 1024, total - sent);
      sent += n;
      if (!s.write(bytes(n, fill))) return;
    }
    s.end();
  };
  s.ondrain = more;
  more();
  return { sent: () => sent };
}

describe("streams", () => {
  test("open, accept, data both ways, half-close each way", async () => {
    let server: Stream | null = null;
    let serverSink: ReturnType<typeof sink> | null = null;
    const { dialer } = pair({
      onStream: (s) => {
        server = s;
        serverSink = sink(s);
        s.accept();
        s.resume();
      },
    });
    const s = dialer.openStream({ target: "10.0.0.5:80" });
    let accepted = false;
    s.onaccept = () => (accepted = true);
    const client = sink(s);
    s.resume();
    s.write(new TextEncoder().encode("ping"));
    s.end();
    await waitFor(() => serverSink?.ended === true, 2_000, "the acceptor to see data and FIN");
    expect(accepted).toBe(true);
    expect(server!.open).toEqual({ target: "10.0.0.5:80" });
    expect(serverSink!.text()).toBe("ping");
    // Half-closed: the other direction still flows.
    expect(server!.closed).toBe(false);
    server!.write(new TextEncoder().encode("pong"));
    server!.end();
    await waitFor(() => client.closed && serverSink!.closed, 2_000, "both ends to close");
    expect(client.text()).toBe("pong");
    expect(client.ended).toBe(true);
    expect(client.error).toBeNull();
    expect(serverSink!.error).toBeNull();
    expect(dialer.streamCount).toBe(0);
  });

  test("reset carries its code and reason to the other end", async () => {
    const { dialer } = pair({ onStream: (s) => s.reset(ResetCode.REFUSED, "10.0.0.5:22 is not in the allow list") });
    const client = sink(dialer.openStream({ target: "10.0.0.5:22" }));
    await waitFor(() => client.closed, 2_000, "the reset");
    expect(client.error).toBeInstanceOf(StreamError);
    expect(client.error!.code).toBe(ResetCode.REFUSED);
    expect(client.error!.message).toBe("10.0.0.5:22 is not in the allow list");
  });

  test("a connection that accepts no streams refuses them with a reason", async () => {
    const { acceptor } = pair(); // the dialer has no onStream
    const s = sink(acceptor.openStream({}));
    await waitFor(() => s.closed, 2_000, "the refusal");
    expect(s.error!.code).toBe(ResetCode.REFUSED);
    expect(s.error!.message).toBe("this end accepts no streams");
  });

  test("closing the connection ends its streams with the reason", async () => {
    let accepted = 0;
    const { dialer, acceptor } = pair({
      onStream: (s) => {
        s.accept();
        accepted++;
      },
    });
    const s = sink(dialer.openStream({}));
    await waitFor(() => accepted === 1, 2_000, "the stream to reach the acceptor");
    acceptor.close(GoAwayCode.SHUTDOWN, "relay is shutting down");
    const why = await dialer.wait();
    expect({ code: why.code, message: why.message, remote: why.remote }).toEqual({ code: GoAwayCode.SHUTDOWN, message: "relay is shutting down", remote: true });
    expect(s.closed).toBe(true);
    expect(s.error!.message).toContain("relay is shutting down");
  });
});

describe("flow control", () => {
  test("a paused reader holds its sender to one window and does not stall another stream", async () => {
    const streams: Stream[] = [];
    const sinks: ReturnType<typeof sink>[] = [];
    const { dialer, acceptor } = pair({
      onStream: (s) => {
        streams.push(s);
        sinks.push(sink(s));
        s.accept();
        // The first stream's reader never reads; the second reads everything.
        if (s.open.name === "fast") s.resume();
      },
    });
    const slow = dialer.openStream({ name: "slow" });
    const fast = dialer.openStream({ name: "fast" });
    const slowPump = pump(slow, 8 * 1024 * 1024, 1);
    pump(fast, 4 * 1024 * 1024, 2);
    const fastSink = () => sinks[streams.findIndex((s) => s.open.name === "fast")];
    await waitFor(() => fastSink()?.ended === true, 10_000, "the fast stream to finish");
    expect(fastSink()!.bytes).toBe(4 * 1024 * 1024);
    // The slow stream's sender stopped after exactly one window of credit...
    expect(slow.bytesOut).toBe(Limits.streamWindow);
    // ...and was told to stop writing: it holds what it wrote before write() said false.
    expect(slowPump.sent()).toBeLessThan(Limits.streamWindow + 256 * 1024);
    const slowSink = sinks[streams.findIndex((s) => s.open.name === "slow")]!;
    expect(slowSink.bytes).toBe(0);
    expect(acceptor.bytesIn).toBeLessThan(4 * 1024 * 1024 + Limits.streamWindow + 64 * 1024);
    // Reading again releases the rest.
    streams.find((s) => s.open.name === "slow")!.resume();
    await waitFor(() => slowSink.ended, 10_000, "the slow stream to finish once read");
    expect(slowSink.bytes).toBe(8 * 1024 * 1024);
  });

  test("the window is a parameter", async () => {
    const window = 64 * 1024;
    const { dialer } = pair({ window, onStream: (s) => s.accept() });
    const s = dialer.openStream({});
    pump(s, 1024 * 1024);
    await waitFor(() => s.bytesOut >= window, 2_000, "the sender to use its window");
    // ...and not a byte more while nobody reads (the pump keeps trying meanwhile).
    await holdsFor(() => s.bytesOut > window, 50, () => `the sender went past its window: ${s.bytesOut} > ${window}`);
    expect(s.bytesOut).toBe(window);
  });
});

/** A hand-driven peer: raw frames out, decoded frames in. */
function rawPeer(link: MemoryLink) {
  const frames: Frame[] = [];
  const dec = new FrameDecoder((f) => frames.push({ ...f, payload: f.payload.slice() }));
  let closed = false;
  link.setHandlers({ data: (c) => dec.push(c), drain() {}, closed: () => (closed = true) });
  return { frames, send: (b: Uint8Array) => link.write(b), closed: () => closed };
}

describe("a peer that breaks the rules", () => {
  function acceptorWithRawPeer(window = 64 * 1024) {
    const [a, b] = linkPair();
    const accepted: Stream[] = [];
    const errors: Error[] = [];
    const conn = new Connection(b, { side: "acceptor", window, onStream: (s) => (accepted.push(s), s.accept()), onProtocolError: (e) => errors.push(e) });
    open.push(conn);
    return { conn, peer: rawPeer(a), accepted, errors };
  }

  test("data past the stream's credit resets that stream with PROTOCOL, and only that stream", async () => {
    const { conn, peer, accepted } = acceptorWithRawPeer(64 * 1024);
    peer.send(encodeFrame(FrameType.DATA, Flag.SYN, 1, encodeJson({ n: 1 })));
    peer.send(encodeFrame(FrameType.DATA, Flag.SYN, 3, encodeJson({ n: 3 })));
    await waitFor(() => accepted.length === 2, 1_000, "two streams");
    const [victim, other] = accepted.map(sink);
    peer.send(encodeFrame(FrameType.DATA, 0, 1, bytes(MAX_PAYLOAD)));
    peer.send(encodeFrame(FrameType.DATA, 0, 1, bytes(1))); // one byte beyond 64 KiB of credit
    peer.send(encodeFrame(FrameType.DATA, 0, 3, bytes(100)));
    await waitFor(() => victim!.closed, 1_000, "the overrunning stream to be reset");
    expect(victim!.error!.code).toBe(ResetCode.PROTOCOL);
    const reset = peer.frames.find((f) => f.type === FrameType.RESET && f.stream === 1);
    expect(reset).toBeDefined();
    expect(decodeReset(reset!.payload)).toEqual({ code: ResetCode.PROTOCOL, reason: "peer sent 1 bytes with 0 bytes of credit" });
    expect(other!.closed).toBe(false);
    expect(conn.closed).toBe(false);
  });

  test("data after FIN resets the stream", async () => {
    const { peer, accepted } = acceptorWithRawPeer();
    peer.send(encodeFrame(FrameType.DATA, Flag.SYN | Flag.FIN, 1, encodeJson({})));
    await waitFor(() => accepted.length === 1, 1_000, "the stream");
    const s = sink(accepted[0]!);
    peer.send(encodeFrame(FrameType.DATA, 0, 1, bytes(5)));
    await waitFor(() => s.closed, 1_000, "the reset");
    expect(s.error!.code).toBe(ResetCode.PROTOCOL);
    expect(s.error!.message).toBe("data after FIN");
  });

  test("a bad open header resets the stream, the connection stays", async () => {
    const { conn, peer, accepted } = acceptorWithRawPeer();
    peer.send(encodeFrame(FrameType.DATA, Flag.SYN, 1, new TextEncoder().encode("[1,2]")));
    peer.send(encodeFrame(FrameType.DATA, Flag.SYN, 3, new TextEncoder().encode("{oops")));
    await waitFor(() => peer.frames.filter((f) => f.type === FrameType.RESET).length === 2, 1_000, "two resets");
    expect(peer.frames.filter((f) => f.type === FrameType.RESET).map((f) => decodeReset(f.payload))).toEqual([
      { code: ResetCode.PROTOCOL, reason: "stream open header is not a JSON object" },
      { code: ResetCode.PROTOCOL, reason: "stream open header is not JSON" },
    ]);
    expect(accepted).toEqual([]);
    expect(conn.closed).toBe(false);
  });

  test.each([
    ["an oversized frame", (() => {
      const h = encodeFrame(FrameType.DATA, 0, 1, bytes(0));
      new DataView(h.buffer).setUint32(8, MAX_PAYLOAD + 1);
      return h;
    })(), /frame of 65537 bytes exceeds the limit/],
    ["an unknown frame type", (() => {
      const h = encodeFrame(FrameType.DATA, 0, 1, bytes(0));
      h[1] = 9;
      return h;
    })(), /unknown frame type 9/],
    ["a stream opened twice", concatFrames(encodeFrame(FrameType.DATA, Flag.SYN, 1, encodeJson({})), encodeFrame(FrameType.DATA, Flag.SYN, 1, encodeJson({}))), /stream 1 opened twice/],
    ["a stream id of the wrong parity", encodeFrame(FrameType.DATA, Flag.SYN, 2, encodeJson({})), /wrong parity/],
    ["a control message that is not JSON", encodeFrame(FrameType.CONTROL, 0, 0, new Uint8Array([0, 1, 0x7b])), /is not JSON/],
    ["a control frame without a type", encodeFrame(FrameType.CONTROL, 0, 0, new Uint8Array([0])), /shorter than its type field/],
  ])("%s closes the connection with GOAWAY PROTOCOL and the reason", async (_name, wire, reason) => {
    const { conn, peer, errors } = acceptorWithRawPeer();
    peer.send(wire);
    const why = await conn.wait();
    expect(why.code).toBe(GoAwayCode.PROTOCOL);
    expect(why.message).toMatch(reason);
    expect(errors.map((e) => e.message).join()).toMatch(reason);
    await waitFor(() => peer.frames.some((f) => f.type === FrameType.GOAWAY), 1_000, "the GOAWAY");
    const goaway = decodeReset(peer.frames.find((f) => f.type === FrameType.GOAWAY)!.payload);
    expect(goaway.code).toBe(GoAwayCode.PROTOCOL);
    expect(goaway.reason).toMatch(reason);
  });
});

function concatFrames(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

describe("control messages", () => {
  test("a request gets its handler's result; a thrown RemoteError keeps its code", async () => {
    const { dialer, acceptor } = pair();
    acceptor.handle(Msg.DEVICES, (b) => [{ id: "site-1", asked: b.filter }]);
    acceptor.handle(Msg.SESSION_OPEN, () => {
      throw new RemoteError(ErrorCode.OFFLINE, "device site-1 is offline");
    });
    expect(await dialer.request(Msg.DEVICES, { filter: "x" })).toEqual([{ id: "site-1", asked: "x" }]);
    const err = await dialer.request(Msg.SESSION_OPEN, {}).catch((e: RemoteError) => e);
    expect(err).toBeInstanceOf(RemoteError);
    expect({ code: (err as RemoteError).code, message: (err as RemoteError).message }).toEqual({ code: ErrorCode.OFFLINE, message: "device site-1 is offline" });
  });

  test("a request nobody serves, or of an unknown type, gets BAD_REQUEST and the connection stays", async () => {
    const { dialer, acceptor } = pair();
    const a = await dialer.request(Msg.SESSIONS, {}).catch((e: RemoteError) => e);
    expect(a).toMatchObject({ code: ErrorCode.BAD_REQUEST, message: "SESSIONS is not served here" });
    const b = await dialer.request(999, {}).catch((e: RemoteError) => e);
    expect(b).toMatchObject({ code: ErrorCode.BAD_REQUEST, message: "unknown message type 999" });
    expect(dialer.closed || acceptor.closed).toBe(false);
  });

  test("a request without an answer times out with a message naming it", async () => {
    const { dialer, acceptor } = pair();
    acceptor.handle(Msg.NAT_REQUEST, () => new Promise(() => {}));
    const err = await dialer.request(Msg.NAT_REQUEST, {}, 50).catch((e: Error) => e);
    expect(err).toMatchObject({ code: ErrorCode.INTERNAL, message: "NAT_REQUEST: no answer within 0.05 s" });
    expect(dialer.closed).toBe(false);
  });

  test("an answer bigger than a frame travels in several CONTROL frames to a peer that accepts it", async () => {
    const [a, b] = linkPair();
    const master = new Connection(a, { side: "dialer", maxControlIn: MAX_CONTROL_MESSAGE });
    const relay = new Connection(b, { side: "acceptor" });
    open.push(master, relay);
    const fleet = Array.from({ length: 5000 }, (_, i) => ({ id: `site-${i}`, hostname: `host-${i}.example.net`, location: "Royal Champagne" }));
    relay.handle(Msg.DEVICES, () => fleet);
    const frames: number[] = [];
    const write = b.write.bind(b);
    b.write = (chunk: Uint8Array) => {
      if (chunk[1] === FrameType.CONTROL) frames.push(chunk[3]!);
      write(chunk);
    };
    expect(await master.request(Msg.DEVICES, {})).toEqual(fleet);
    expect(frames.length).toBeGreaterThan(3);
    expect(frames.slice(0, -1).every((flags) => flags === Flag.MORE)).toBe(true);
    expect(frames.at(-1)).toBe(0);
  });

  test("a peer that sends a control message over several frames is closed when it passes this end's limit", async () => {
    const { dialer, acceptor } = pair(); // the acceptor keeps the default: one frame
    acceptor.handle(Msg.DEVICES, () => []);
    void dialer.request(Msg.DEVICES, { pad: "p".repeat(MAX_PAYLOAD) }).catch(() => {});
    const why = await acceptor.wait();
    expect(why.code).toBe(GoAwayCode.PROTOCOL);
    expect(why.message).toBe(`protocol error: control message of more than ${MAX_PAYLOAD} bytes (the limit here)`);
  });

  test("an answer too big even for several frames becomes an error reply; nothing is thrown and the connection stays", async () => {
    const { dialer, acceptor } = pair();
    acceptor.handle(Msg.DEVICES, () => Array.from({ length: 17 }, () => "h".repeat(1024 * 1024)));
    acceptor.handle(Msg.SESSIONS, () => {
      throw new Error("x".repeat(100_000));
    });
    const err = (await dialer.request(Msg.DEVICES, {}).catch((e: RemoteError) => e)) as RemoteError;
    expect(err).toBeInstanceOf(RemoteError);
    expect(err.code).toBe(ErrorCode.INTERNAL);
    expect(err.message).toMatch(/^the answer to DEVICES is too big to send: control message REPLY of \d+ bytes is too big$/);
    const err2 = (await dialer.request(Msg.SESSIONS, {}).catch((e: RemoteError) => e)) as RemoteError;
    expect(err2.message).toBe("x".repeat(1024));
    acceptor.handle(Msg.DEVICES, () => []);
    expect(await dialer.request(Msg.DEVICES, {})).toEqual([]);
    expect(dialer.closed || acceptor.closed).toBe(false);
  });

  test("pending requests fail with the reason when the connection closes", async () => {
    const { dialer, acceptor } = pair();
    let asked = false;
    acceptor.handle(Msg.DEVICES, () => {
      asked = true;
      return new Promise(() => {});
    });
    const p = dialer.request(Msg.DEVICES, {}).catch((e: Error) => e);
    await waitFor(() => asked, 2_000, "the request to reach the acceptor");
    acceptor.close(GoAwayCode.REPLACED, "replaced by a new connection");
    expect((await p as Error).message).toBe("replaced by a new connection");
  });
});

describe("a peer that does not read", () => {
  test("is closed once too much is queued towards it, with the reason and without an exception", async () => {
    const [a, b] = linkPair();
    const writer = new Connection(a, { side: "dialer", maxQueued: 1024 * 1024 });
    const reader = new Connection(b, { side: "acceptor" });
    open.push(writer, reader);
    b.pause(); // the reader's socket is never read
    for (let i = 0; i < 40 && !writer.closed; i++) writer.send(Msg.INVENTORY, { pad: "p".repeat(60_000) });
    expect(writer.closed).toBe(true);
    expect(writer.closedWith!.code).toBe(GoAwayCode.PROTOCOL);
    expect(writer.closedWith!.message).toMatch(/^peer is not reading \(\d+ bytes queued\)$/);
  });
});

describe("keepalive", () => {
  test("PINGs measure the round trip; a frozen peer is closed for keepalive", async () => {
    const { dialer, acceptor, a } = pair({ keepaliveInterval: 10, keepaliveTimeout: 80 });
    dialer.startKeepalive();
    await waitFor(() => dialer.rtt !== null, 1_000, "a PING answered");
    expect(dialer.closed).toBe(false);
    // Freeze what the dialer receives: the acceptor's answers no longer arrive.
    a.pause();
    const why = await dialer.wait();
    expect(why.code).toBe(GoAwayCode.KEEPALIVE);
    expect(why.message).toMatch(/keepalive timeout/);
    expect(why.remote).toBe(false);
    await waitFor(() => acceptor.closed, 1_000, "the acceptor to see the link go");
  });
});
