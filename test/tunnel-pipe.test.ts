// Pipe joins two Duplex ends: over the in-memory pair, over a real mux stream, and over real
// TCP sockets on 127.0.0.1 (the adapters in src/tunnel/tcp.ts). Half-close is carried, a reset
// on one side aborts the other, a frozen reader holds the writer back and loses nothing.
// Then the onsite server reaching its targets through an injected dialer.
import { afterEach, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import type { Socket } from "bun";
import { linkPair } from "../src/transport/link.ts";
import { ResetCode } from "../src/transport/frame.ts";
import { Connection, type Stream, type StreamError } from "../src/transport/mux.ts";
import { Msg } from "../src/transport/messages.ts";
import { duplexPair, MemoryNet, type Duplex, type MemoryDuplex } from "../src/tunnel/duplex.ts";
import { Pipe, streamDuplex } from "../src/tunnel/pipe.ts";
import { SessionServer } from "../src/tunnel/onsite-server.ts";
import { tcpDialer, tcpListener } from "../src/tunnel/tcp.ts";
import { parseAllowEntry } from "../src/netaddr.ts";
import { waitFor } from "./helpers/wait.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Everything one end reads, and how it ended. */
interface Reader {
  text(): string;
  bytes(): number;
  sha(): string;
  ended: boolean;
  closed: Promise<Error | null>;
}

function reader(d: Duplex, opts: { hash?: boolean } = {}): Reader {
  const parts: string[] = [];
  const hash = createHash("sha256");
  let n = 0;
  let resolve!: (e: Error | null) => void;
  const r: Reader = {
    text: () => parts.join(""),
    bytes: () => n,
    sha: () => hash.copy().digest("hex"),
    ended: false,
    closed: new Promise((res) => (resolve = res)),
  };
  d.setHandlers({
    data(c) {
      n += c.length;
      if (opts.hash) hash.update(c);
      else parts.push(dec.decode(c));
    },
    drain() {},
    end() {
      r.ended = true;
    },
    close: (e) => resolve(e),
  });
  d.resume();
  return r;
}

/** The suite's one poll-until (helpers/wait.ts), polling often: in-memory links move on zero-delay timers. */
const until = (cond: () => boolean, what: string, ms = 5_000): Promise<void> => waitFor(cond, ms, what, { every: 1 }).then(() => undefined);

/** Writes `total` pseudo-random bytes with backpressure, then ends; resolves to their sha256. */
async function pump(d: Duplex, total: number): Promise<string> {
  const hash = createHash("sha256");
  let waiting: (() => void) | null = null;
  const prev = { drain: () => waiting?.() };
  (d as { setHandlers(h: unknown): void }).setHandlers({ data() {}, drain: prev.drain, end() {}, close() {} });
  d.resume();
  let seed = 7;
  for (let sent = 0; sent < total; ) {
    const chunk = new Uint8Array(Math.min(48 * 1024 + (sent % 777), total - sent));
    for (let i = 0; i < chunk.length; i += 4096) chunk[i] = seed = (seed * 1103515245 + 12345) & 0xff;
    hash.update(chunk);
    sent += chunk.length;
    if (!d.write(chunk)) await new Promise<void>((res) => (waiting = res));
    waiting = null;
  }
  d.end();
  return hash.digest("hex");
}

/** client ⇄ [a  Pipe  b] ⇄ server, all in memory. */
function memoryChain(highWater = 64 * 1024) {
  const [client, a] = duplexPair(["client", "a"], highWater);
  const [b, server] = duplexPair(["b", "server"], highWater);
  let done!: (e: Error | null) => void;
  const finished = new Promise<Error | null>((res) => (done = res));
  new Pipe(a, b, done);
  return { client, server, a, b, finished };
}

describe("Pipe over the in-memory pair", () => {
  test("data both ways; a FIN is carried while the other direction goes on; both closes clean", async () => {
    const { client, server, finished } = memoryChain();
    const atServer = reader(server);
    const atClient = reader(client);
    client.write(enc.encode("request"));
    client.end();
    await until(() => atServer.ended, "the client's FIN at the server");
    expect(atServer.text()).toBe("request");
    expect(atClient.ended).toBe(false);
    server.write(enc.encode("answer after the FIN"));
    server.end();
    expect(await atClient.closed).toBeNull();
    expect(await atServer.closed).toBeNull();
    expect(atClient.text()).toBe("answer after the FIN");
    expect(await finished).toBeNull();
  });

  test("a reset on one side aborts the other with the reason; never a clean end", async () => {
    const { client, server, finished } = memoryChain();
    const atServer = reader(server);
    const atClient = reader(client);
    client.write(enc.encode("some"));
    await until(() => atServer.text() === "some", "data through");
    server.reset(new Error("target crashed"));
    const why = await atClient.closed;
    expect(why?.message).toContain("target crashed");
    expect(atClient.ended).toBe(false);
    expect((await finished)?.message).toContain("target crashed");
  });

  test("a frozen reader holds the writer back (bounded), then gets every byte in order", async () => {
    const { client, server, a, b } = memoryChain();
    server.setHandlers({ data() {}, drain() {}, end() {}, close() {} }); // frozen: never resumed
    const total = 8 * 1024 * 1024;
    const sent = pump(client, total);
    let finished = false;
    void sent.then(() => (finished = true));
    await Bun.sleep(50);
    // The writer is held back, and the pipe holds nothing itself: what is stuck sits in the
    // two pairs' queues, about a window (plus one chunk) each.
    expect(finished).toBe(false);
    expect(b.queued).toBeLessThan(64 * 1024 + 56 * 1024);
    expect(client.queued).toBeLessThan(64 * 1024 + 56 * 1024);
    expect(a.bytesIn).toBe(b.queued);
    const atServer = reader(server, { hash: true });
    const sha = await sent;
    await until(() => atServer.ended, "all data and the FIN");
    expect(atServer.bytes()).toBe(total);
    expect(atServer.sha()).toBe(sha);
  });
});

describe("Pipe between a TCP connection and a mux stream (the real adapters)", () => {
  const closers: (() => void)[] = [];
  afterEach(() => {
    for (const c of closers.splice(0)) c();
  });

  /**
   * The whole data path minus the relay: a local TCP client → tcpListener → Pipe → stream over a
   * Connection → SessionServer → tcpDialer → a TCP target on 127.0.0.1.
   */
  async function chain(target: (s: Socket<{ fin: boolean }>, chunk: Uint8Array | null) => void) {
    const server = Bun.listen<{ fin: boolean }>({
      hostname: "127.0.0.1",
      port: 0,
      allowHalfOpen: true,
      data: { fin: false },
      socket: {
        open(s) {
          s.data = { fin: false };
        },
        data: (s, c) => target(s, c),
        end(s) {
          s.data.fin = true;
          target(s, null);
        },
      },
    });
    closers.push(() => server.stop(true));
    const [ml, ol] = linkPair();
    const onsite = new SessionServer({ id: "site-1", allow: () => [parseAllowEntry("127.0.0.1/32")], log: { debug() {}, info() {}, warn() {} }, dialer: tcpDialer });
    const oc = new Connection(ol, { side: "acceptor", onStream: (s) => onsite.serve(s) });
    const mc = new Connection(ml, { side: "dialer" });
    closers.push(() => (mc.close(), oc.close()));
    const outcomes: (Error | null)[] = [];
    const fwd = tcpListener.listen("127.0.0.1", 0, (d) => new Pipe(d, streamDuplex(mc.openStream({ session: "s-1", target: `127.0.0.1:${server.port}` })), (e) => outcomes.push(e)));
    closers.push(() => fwd.close());
    return { port: fwd.port, outcomes };
  }

  /**
   * A raw TCP client: what it read, whether it saw FIN, how it closed. Bun reports a FIN that
   * comes after the client's own shutdown as a close without error (and no `end` event), a
   * reset as a close with ECONNRESET.
   */
  async function client(port: number) {
    const got: Uint8Array[] = [];
    const st = { fin: false, closedErr: undefined as Error | null | undefined };
    const socket = await Bun.connect({
      hostname: "127.0.0.1",
      port,
      allowHalfOpen: true,
      socket: {
        data: (_s, c) => void got.push(c),
        end() {
          st.fin = true;
        },
        close(_s, e) {
          st.closedErr = e ?? null;
          if (!e) st.fin = true;
        },
      },
    });
    return { socket, st, text: () => dec.decode(Buffer.concat(got)), bytes: () => got.reduce((n, c) => n + c.length, 0), got };
  }

  test("a FIN from the client reaches the target, whose answer after it still comes back, then its FIN", async () => {
    const { port, outcomes } = await chain((s, c) => {
      if (c) s.write(c); // echo
      else {
        s.write("bye after your FIN\n");
        s.end();
      }
    });
    const c = await client(port);
    c.socket.write("hello\n");
    c.socket.shutdown();
    await until(() => c.st.fin, "the target's FIN at the client");
    expect(c.text()).toBe("hello\nbye after your FIN\n");
    expect(c.st.closedErr ?? null).toBeNull();
    c.socket.end();
    await until(() => outcomes.length === 1, "the pipe done");
    expect(outcomes).toEqual([null]);
  });

  test("a target that resets the connection: the client sees a reset, not a FIN", async () => {
    const { port } = await chain((s, c) => {
      if (c) {
        s.write(c);
        setTimeout(() => s.terminate(), 20);
      }
    });
    const c = await client(port);
    c.socket.write("x");
    await until(() => c.st.closedErr !== undefined, "the client closed");
    expect(c.text()).toBe("x");
    expect(c.st.fin).toBe(false);
    expect(c.st.closedErr?.message).toMatch(/ECONNRESET/);
  });

  test("a target that speaks first (an SSH banner) loses nothing before the pipe is joined", async () => {
    const server = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { open: (s) => void s.write("SSH-2.0-test\r\n"), data() {} } });
    closers.push(() => server.stop(true));
    const d = await tcpDialer.dial("127.0.0.1", server.port);
    await Bun.sleep(30); // the banner has arrived; nobody has set handlers yet
    const r = reader(d);
    await until(() => r.text() === "SSH-2.0-test\r\n", "the banner");
    d.reset(new Error("done"));
    expect((await r.closed)?.message).toBe("done");
  });

  test("a target nobody listens on: the stream is reset UNREACHABLE with the OS's reason", async () => {
    const [ml, ol] = linkPair();
    const onsite = new SessionServer({ id: "site-1", allow: () => [parseAllowEntry("127.0.0.1/32")], log: { debug() {}, info() {}, warn() {} } });
    const oc = new Connection(ol, { side: "acceptor", onStream: (s) => onsite.serve(s) });
    const mc = new Connection(ml, { side: "dialer" });
    closers.push(() => (mc.close(), oc.close()));
    const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const deadPort = probe.port;
    probe.stop(true);
    const s = mc.openStream({ session: "s-1", target: `127.0.0.1:${deadPort}` });
    const err = await new Promise<StreamError | null>((res) => (s.onclose = res));
    expect(err).toMatchObject({ code: ResetCode.UNREACHABLE, message: expect.stringMatching(new RegExp(`^127\\.0\\.0\\.1:${deadPort}: `)) });
  });

  test("16 MB each way arrive intact through TCP ⇄ stream ⇄ TCP (sha256 compared)", async () => {
    const total = 16 * 1024 * 1024;
    const received = createHash("sha256");
    let n = 0;
    let sentSha = "";
    // The target counts and hashes what it gets, and at the client's FIN sends as much back.
    const { port } = await chain((s, c) => {
      if (c) {
        received.update(c);
        n += c.length;
        return;
      }
      const back = new Uint8Array(total);
      for (let i = 0; i < total; i += 997) back[i] = i & 0xff;
      sentSha = createHash("sha256").update(back).digest("hex");
      let at = 0;
      const more = () => {
        while (at < total) {
          const w = s.write(back.subarray(at));
          at += Math.max(0, w);
          if (w <= 0 || at < total) return;
        }
        s.end();
      };
      more();
      const t = setInterval(() => (at < total ? more() : clearInterval(t)), 5);
    });
    const c = await client(port);
    const data = new Uint8Array(total);
    for (let i = 0; i < total; i += 1013) data[i] = (i * 7) & 0xff;
    const wantSha = createHash("sha256").update(data).digest("hex");
    let at = 0;
    while (at < total) {
      const w = c.socket.write(data.subarray(at));
      at += Math.max(0, w);
      if (at < total) await Bun.sleep(1);
    }
    c.socket.shutdown();
    await until(() => c.st.fin, "everything back and the target's FIN", 30_000);
    expect(n).toBe(total);
    expect(received.digest("hex")).toBe(wantSha);
    expect(c.bytes()).toBe(total);
    expect(createHash("sha256").update(Buffer.concat(c.got)).digest("hex")).toBe(sentSha);
    c.socket.end();
  }, 30_000);
});

describe("SessionServer through an injected dialer (in memory)", () => {
  const quiet = { debug() {}, info() {}, warn() {} };
  const allow = [parseAllowEntry("192.168.1.0/24")];

  function rig() {
    const net = new MemoryNet();
    const server = new SessionServer({ id: "site-1", allow: () => allow, log: quiet, dialer: net });
    const [ml, ol] = linkPair();
    const oc = new Connection(ol, { side: "acceptor", onStream: (s) => server.serve(s) });
    server.setup(oc);
    const mc = new Connection(ml, { side: "dialer" });
    return { net, server, mc, oc, close: () => (mc.close(), oc.close()) };
  }

  const closedWith = (s: Stream) => new Promise<StreamError | null>((res) => (s.onclose = res));

  test("a stream reaches its target through the dialer, carries data and FIN both ways", async () => {
    const r = rig();
    try {
      let atTarget: ReturnType<typeof reader> | null = null;
      let targetEnd: MemoryDuplex | null = null;
      r.net.listen("192.168.1.50", 80, (d) => {
        targetEnd = d as MemoryDuplex;
        atTarget = reader(d);
      });
      const s = r.mc.openStream({ session: "s-1", target: "192.168.1.50:80" });
      const d = streamDuplex(s);
      const atMaster = reader(d);
      d.write(enc.encode("GET /"));
      d.end();
      await until(() => atTarget?.ended === true, "the FIN at the target");
      expect(atTarget!.text()).toBe("GET /");
      targetEnd!.write(enc.encode("200 OK"));
      targetEnd!.end();
      expect(await atMaster.closed).toBeNull();
      expect(atMaster.text()).toBe("200 OK");
      expect(s.accepted).toBe(true);
      expect(r.net.dialed).toEqual(["192.168.1.50:80"]);
      expect(r.server.streamsServed).toBe(1);
    } finally {
      r.close();
    }
  });

  test("a target outside the allow list is refused without dialing", async () => {
    const r = rig();
    try {
      const s = r.mc.openStream({ session: "s-1", target: "10.0.0.5:22" });
      expect(await closedWith(s)).toMatchObject({ code: ResetCode.REFUSED, message: expect.stringMatching(/^site-1: target 10\.0\.0\.5:22 is not in the allow list/) });
      expect(r.net.dialed).toEqual([]);
    } finally {
      r.close();
    }
  });

  test("a dial that fails resets the stream UNREACHABLE with the dialer's reason", async () => {
    const r = rig();
    try {
      r.net.failDial.set("192.168.1.50:443", new Error("connect ETIMEDOUT"));
      const s = r.mc.openStream({ session: "s-1", target: "192.168.1.50:443" });
      expect(await closedWith(s)).toMatchObject({ code: ResetCode.UNREACHABLE, message: "192.168.1.50:443: connect failed: connect ETIMEDOUT" });
      const t = r.mc.openStream({ session: "s-1", target: "192.168.1.51:80" }); // nobody listens
      expect(await closedWith(t)).toMatchObject({ code: ResetCode.UNREACHABLE, message: "192.168.1.51:80: connect failed: Connection refused" });
    } finally {
      r.close();
    }
  });

  test("a stream reset while the dial is under way: the target connection is reset, not piped", async () => {
    const r = rig();
    try {
      let target: Reader | null = null;
      r.net.listen("192.168.1.50", 80, (d) => (target = reader(d)));
      const s = r.mc.openStream({ session: "s-1", target: "192.168.1.50:80" });
      s.reset(ResetCode.CANCEL, "user gave up");
      await until(() => target !== null, "the dial to finish");
      expect((await target!.closed)?.message).toMatch(/the stream ended before the target answered/);
    } finally {
      r.close();
    }
  });

  test("sessions are offered and closed; `opened` is a wall-clock timestamp", async () => {
    const r = rig();
    try {
      const before = Date.now();
      await r.mc.request(Msg.SESSION_OFFER, { session: "s-9", master: "tech-1", targets: ["192.168.1.50:80"] });
      const info = r.server.sessions.get("s-9")!;
      expect(info).toMatchObject({ master: "tech-1", targets: ["192.168.1.50:80"], streams: 0 });
      expect(info.opened).toBeGreaterThanOrEqual(before);
      expect(info.opened).toBeLessThanOrEqual(Date.now());
    } finally {
      r.close();
    }
  });
});
