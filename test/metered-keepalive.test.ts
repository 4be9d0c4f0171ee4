// Issue 13 §8: a device dialing over a metered uplink asks in its HELLO for a longer keepalive,
// and the relay honours it within bounds for that connection (its PING interval and its
// dead-peer timeout); a hostile value is clamped or refused clearly; unmetered stays as before.
// Pure decisions table-tested; then a real RelayServer and RelayClient over in-memory links
// on a fake clock (time moves only by advance()).
import { afterEach, describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { deviceKeepalive, RelayClient } from "../src/transport/client.ts";
import { Flag, FrameDecoder, FrameType, GoAwayCode } from "../src/transport/frame.ts";
import { linkPair, type MemoryLink } from "../src/transport/link.ts";
import { decodeHello, MessageError, Msg } from "../src/transport/messages.ts";
import { Connection, type ConnectionClosed } from "../src/transport/mux.ts";
import { keepaliveRequestFor, negotiateKeepalive, pingDue, RELAY_LEAN, relayKeepalive, Timing } from "../src/transport/policy.ts";
import { judgeHello } from "../src/tunnel/relay/front.ts";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { RefusalCode } from "../src/tunnel/relay/refusals.ts";
import { flush, stepper } from "./helpers/fake-time.ts";

const quiet = { debug() {}, info() {}, warn() {} };
const own = { interval: Timing.keepaliveInterval, timeout: Timing.keepaliveTimeout };

describe("negotiateKeepalive (the relay's decision)", () => {
  test.each([
    ["no request: the relay's own", undefined, own],
    ["metered's 30 s: honoured, timeout three intervals", 30_000, { interval: 30_000, timeout: 90_000 }],
    ["the default asked for: as before", 5_000, own],
    ["7 s: timeout three intervals (21 s, above the 15 s floor)", 7_000, { interval: 7_000, timeout: 21_000 }],
    ["1 ms (hostile): clamped up to 5 s", 1, own],
    ["an hour (hostile): clamped down to 60 s", 3_600_000, { interval: 60_000, timeout: 180_000 }],
    ["the top bound exactly", 60_000, { interval: 60_000, timeout: 180_000 }],
  ])("%s", (_n, request, want) => {
    expect(negotiateKeepalive(request, own)).toEqual(want);
  });

  test("a relay configured with a longer timeout keeps it", () => {
    expect(negotiateKeepalive(10_000, { interval: 5_000, timeout: 45_000 })).toEqual({ interval: 10_000, timeout: 45_000 });
  });

  test.each([
    ["metered", { metered: true }, Timing.meteredKeepaliveInterval],
    ["unmetered", { metered: false }, undefined],
    ["no uplink known", undefined, undefined],
  ])("keepaliveRequestFor: %s", (_n, uplink, want) => {
    expect(keepaliveRequestFor(uplink)).toBe(want);
  });

  test("the device runs what the relay answered, within the same bounds", () => {
    expect(deviceKeepalive(30_000, {})).toEqual({ interval: 30_000, timeout: 90_000 });
    expect(deviceKeepalive(5_000, {})).toEqual(own); // an older relay that ignored the request
    expect(deviceKeepalive(1, {})).toEqual(own);
  });
});

describe("the relay's PINGs on a lean connection", () => {
  test.each([
    ["not lean: every tick", { interval: 5_000, timeout: 15_000 }, 0, 0, true],
    ["lean, heard 10 s ago, own PING 30 s ago", { interval: 30_000, timeout: 90_000, lean: 4 }, 10_000, 30_000, false],
    ["lean, quiet for an interval (the peer's PING is due about now)", { interval: 30_000, timeout: 90_000, lean: 4 }, 30_000, 30_000, false],
    ["lean, quiet for 1.5 intervals (the peer's PING went missing)", { interval: 30_000, timeout: 90_000, lean: 4 }, 45_000, 30_000, true],
    ["lean, own PING almost 4 intervals ago (the timer's tick)", { interval: 30_000, timeout: 90_000, lean: 4 }, 0, 119_500, true],
    ["lean, heard just now, own PING 4 intervals ago (RTT)", { interval: 30_000, timeout: 90_000, lean: 4 }, 0, 120_000, true],
    ["lean, heard just now, own PING 3 intervals ago", { interval: 30_000, timeout: 90_000, lean: 4 }, 0, 90_000, false],
    ["lean, no own PING yet", { interval: 30_000, timeout: 90_000, lean: 4 }, 0, Infinity, true],
  ])("pingDue: %s", (_n, k, quiet, sinceOwn, want) => {
    expect(pingDue(k, quiet, sinceOwn)).toBe(want);
  });

  test("relayKeepalive: lean only for a connection that asked", () => {
    expect(relayKeepalive(undefined, own)).toEqual(own);
    expect(relayKeepalive(30_000, own)).toEqual({ interval: 30_000, timeout: 90_000, lean: RELAY_LEAN });
    expect(relayKeepalive(1, own)).toEqual({ ...own, lean: RELAY_LEAN });
  });
});

describe("HELLO keepalive: decoding and judging", () => {
  const cert = { id: "site-1", role: "onsite", serial: "01" };
  const hello = (keepalive: unknown) => ({ versions: [1], role: "onsite", id: "site-1", agent: "t", keepalive });

  test("absent: no field (an older device); present: kept", () => {
    expect(decodeHello({ versions: [1], role: "onsite", id: "site-1" })).toEqual({ versions: [1], role: "onsite", id: "site-1", agent: "" });
    expect(decodeHello(hello(30_000)).keepalive).toBe(30_000);
  });

  test.each([
    ["zero", 0, "got 0"],
    ["negative", -5_000, "got -5000"],
    ["a fraction", 2.5, "got 2.5"],
    ["a string", "30s", 'got "30s"'],
    ["null", null, "got null"],
    ["beyond a day", 86_400_001, "got 86400001"],
  ])("%s is refused, naming the field", (_n, v, got) => {
    let err: unknown;
    try {
      decodeHello(hello(v));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MessageError);
    expect((err as Error).message).toContain("keepalive");
    expect((err as Error).message).toContain("milliseconds (an integer 1–86400000)");
    expect((err as Error).message).toContain(got);
    const verdict = judgeHello(cert, hello(v));
    expect(verdict.ok).toBe(false);
    if (!verdict.ok) {
      expect(verdict.code).toBe(RefusalCode.PROTOCOL);
      expect(verdict.reason).toContain("keepalive");
    }
  });
});

// ---- a real relay on a fake clock ------------------------------------------------------------

const relays: RelayServer[] = [];
const conns: Connection[] = [];
const clients: RelayClient[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  for (const c of conns.splice(0)) c.close();
  await Promise.all(relays.splice(0).map((r) => r.close()));
});

const run = stepper(1_000);
function relay(clock: FakeClock): RelayServer {
  // The relay's defaults: a PING every 5 s, 15 s to a dead peer.
  const r = new RelayServer({ id: "relay-1", log: quiet, access: () => [], clock });
  relays.push(r);
  return r;
}

/** A device that speaks HELLO by hand (no keepalive of its own: only the relay PINGs). */
async function device(r: RelayServer, clock: FakeClock, keepalive?: unknown) {
  const [link, relayLink] = linkPair("10.0.0.1", "10.9.9.9");
  const conn = new Connection(link, { side: "dialer", clock });
  conns.push(conn);
  const welcomed = new Promise<Record<string, unknown>>((resolve) => conn.on(Msg.WELCOME, resolve));
  const atRelay = r.accept(relayLink, { id: "site-1", role: "onsite", serial: "01" });
  const body: Record<string, unknown> = { versions: [1], role: "onsite", id: "site-1", agent: "test/1" };
  if (keepalive !== undefined) body.keepalive = keepalive;
  conn.send(Msg.HELLO, body as never);
  return { conn, link, atRelay, welcomed };
}

/** Instants (from t0) at which the device heard from the relay, over `ms` of fake time. */
async function heardAt(clock: FakeClock, conn: Connection, ms: number): Promise<number[]> {
  const t0 = clock.now();
  const at: number[] = [];
  let last = conn.lastReceived;
  for (let t = 0; t < ms; t += 1_000) {
    clock.advance(1_000);
    await flush();
    if (conn.lastReceived !== last) {
      last = conn.lastReceived;
      at.push(clock.now() - t0);
    }
  }
  return at;
}

describe("the relay honours the request per connection", () => {
  test("a metered HELLO (30 s): WELCOME says 30 s, the relay PINGs at most every 30 s, not every 5 s", async () => {
    const clock = new FakeClock();
    const r = relay(clock);
    const d = await device(r, clock, 30_000);
    expect((await d.welcomed).keepalive).toBe(30_000);
    expect(d.atRelay.keepalive).toEqual({ interval: 30_000, timeout: 90_000, lean: RELAY_LEAN });
    // This device PINGs not at all: the lean relay PINGs at its first tick, and again whenever
    // it heard nothing (the ACK to its last PING) for 1.5 intervals.
    expect(await heardAt(clock, d.conn, 155_000)).toEqual([30_000, 90_000, 150_000]);
  });

  test("a metered device that PINGs every 30 s itself: the relay answers, and PINGs only every 4th interval", async () => {
    const clock = new FakeClock();
    const r = relay(clock);
    const d = await device(r, clock, 30_000);
    await d.welcomed;
    d.conn.startKeepalive({ interval: 30_000, timeout: 90_000 });
    const t0 = clock.now();
    const pings: number[] = []; // the relay's own PINGs, from t0
    const acks: number[] = []; // its answers to the device's
    const dec = new FrameDecoder((f) => {
      if (f.type !== FrameType.PING) return;
      ((f.flags & Flag.ACK) ? acks : pings).push(clock.now() - t0);
    });
    const relayEnd = (d.link as MemoryLink).peer!;
    const write = relayEnd.write.bind(relayEnd);
    relayEnd.write = (chunk) => {
      dec.push(chunk);
      write(chunk);
    };
    await run(clock, 365_000);
    expect(d.atRelay.closed).toBe(false);
    expect(acks).toEqual([30_000, 60_000, 90_000, 120_000, 150_000, 180_000, 210_000, 240_000, 270_000, 300_000, 330_000, 360_000]);
    // Before: a PING every 5 s (73 in this time); now one in 4 intervals (the first at its first tick).
    expect(pings.length).toBeGreaterThanOrEqual(3);
    expect(pings.length).toBeLessThanOrEqual(4);
    for (let i = 1; i < pings.length; i++) expect(pings[i]! - pings[i - 1]!).toBe(120_000);
  });

  test("no request (unmetered, or an older device): as today, a PING every 5 s", async () => {
    const clock = new FakeClock();
    const r = relay(clock);
    const d = await device(r, clock);
    expect((await d.welcomed).keepalive).toBe(5_000);
    expect(d.atRelay.keepalive).toEqual(own);
    expect(await heardAt(clock, d.conn, 21_000)).toEqual([5_000, 10_000, 15_000, 20_000]);
  });

  test("two devices on one relay: each connection has its own", async () => {
    const clock = new FakeClock();
    const r = relay(clock);
    const metered = await device(r, clock, 30_000);
    await metered.welcomed;
    const [link, relayLink] = linkPair("10.0.0.1", "10.9.9.8");
    const other = new Connection(link, { side: "dialer" });
    conns.push(other);
    const welcomed = new Promise<Record<string, unknown>>((resolve) => other.on(Msg.WELCOME, resolve));
    const atRelay = r.accept(relayLink, { id: "tech-1", role: "master", serial: "02" });
    other.send(Msg.HELLO, { versions: [1], role: "master", id: "tech-1", agent: "t" });
    expect((await welcomed).keepalive).toBe(5_000);
    expect([metered.atRelay.keepalive, atRelay.keepalive]).toEqual([{ interval: 30_000, timeout: 90_000, lean: RELAY_LEAN }, own]);
  });

  test("the dead-peer timeout follows: a silent metered device is closed after 90 s of silence, not 15 s", async () => {
    const clock = new FakeClock();
    const r = relay(clock);
    const d = await device(r, clock, 30_000);
    await d.welcomed;
    (d.link as MemoryLink).peer = null; // from now on the device's bytes go nowhere
    let closed: ConnectionClosed | null = null;
    void d.atRelay.wait().then((w) => (closed = w));
    await run(clock, 89_000);
    expect(closed).toBeNull(); // the default 15 s would have closed it at 20 s
    await run(clock, 31_000);
    expect(closed).not.toBeNull();
    expect(closed!.code).toBe(GoAwayCode.KEEPALIVE);
    expect(closed!.message).toContain("keepalive timeout");
  });

  test.each([
    ["1 ms is clamped up to the relay's 5 s", 1, 5_000],
    ["a day is clamped down to 60 s", 86_400_000, 60_000],
  ])("hostile: %s", async (_n, ask, want) => {
    const clock = new FakeClock();
    const r = relay(clock);
    const d = await device(r, clock, ask);
    expect((await d.welcomed).keepalive).toBe(want);
    expect(d.atRelay.keepalive!.interval).toBe(want);
  });

  test("hostile: a malformed value is refused at the HELLO, with the reason in the refusal log", async () => {
    const clock = new FakeClock();
    const r = relay(clock);
    const d = await device(r, clock, -1);
    const why = await d.conn.wait();
    expect(why.remote).toBe(true);
    expect(why.message).toContain("keepalive");
    expect(r.refusals.at(-1)?.reason).toContain("HELLO: keepalive");
    expect(d.atRelay.keepalive).toBeNull();
  });
});

describe("RelayClient asks when told to, and runs what the relay answered", () => {
  function client(clock: FakeClock, r: RelayServer | null, request: () => number | undefined, seenKeepalive = 5_000) {
    const c = new RelayClient({
      role: "onsite",
      id: "site-1",
      agent: "test",
      describe: "relay:443",
      clock,
      keepaliveRequest: request,
      dial: async () => {
        const [dialer, acceptor] = linkPair("10.0.0.1", "10.9.9.9");
        if (r) r.accept(acceptor, { id: "site-1", role: "onsite", serial: "01" });
        else {
          // An older relay: ignores the request, answers with its own keepalive.
          const old = new Connection(acceptor, { side: "acceptor", clock });
          conns.push(old);
          old.on(Msg.HELLO, () => old.send(Msg.WELCOME, { version: 1, relay: "relay-old", address: "10.9.9.9", keepalive: seenKeepalive }));
        }
        return dialer;
      },
      setup: () => {},
      log: quiet,
    });
    clients.push(c);
    c.start();
    return c;
  }
  async function up(clock: FakeClock, c: RelayClient) {
    for (let i = 0; i < 200 && c.state !== "up"; i++) await flush();
    expect(c.state).toBe("up");
  }

  test("metered: 30 s on both ends; the status shows it", async () => {
    const clock = new FakeClock();
    const r = relay(clock);
    const c = client(clock, r, () => 30_000);
    await up(clock, c);
    expect(c.welcome?.keepalive).toBe(30_000);
    expect(c.connection!.keepalive).toEqual({ interval: 30_000, timeout: 90_000 });
    expect(c.status().keepalive_ms).toBe(30_000);
  });

  test("unmetered (no request): the options, as before", async () => {
    const clock = new FakeClock();
    const r = relay(clock);
    const c = client(clock, r, () => undefined);
    await up(clock, c);
    expect(c.connection!.keepalive).toEqual(own);
  });

  test("an older relay that ignores the request: the device follows its 5 s", async () => {
    const clock = new FakeClock();
    const c = client(clock, null, () => 30_000);
    await up(clock, c);
    expect(c.connection!.keepalive).toEqual(own);
  });

  test("asked at each dial: a redial after the uplink turned metered asks anew", async () => {
    const clock = new FakeClock();
    const r = relay(clock);
    let metered = false;
    const c = client(clock, r, () => keepaliveRequestFor({ metered }));
    await up(clock, c);
    expect(c.connection!.keepalive!.interval).toBe(5_000);
    metered = true;
    const first = c.connection!;
    c.redial("uplink wwan0: eth0 is down");
    for (let i = 0; i < 200 && (c.connection === null || c.connection === first); i++) {
      clock.advance(100); // whatever wait the loop takes before the redial, on the fake clock
      await flush();
    }
    expect(c.connection!.keepalive!.interval).toBe(30_000);
  });
});

test("docs/protocol.md quotes the metered keepalive's figures the code has", async () => {
  const doc = (await Bun.file(new URL("../docs/protocol.md", import.meta.url)).text()).replace(/\s+/g, " ");
  const s = (ms: number) => `${ms / 1000} s`;
  const quotes = [
    `(\`meteredKeepaliveInterval\`, ${s(Timing.meteredKeepaliveInterval)}`,
    `clamps the request to ${Timing.keepaliveRequestMin / 1000}–${s(Timing.keepaliveRequestMax)} (\`keepaliveRequestMin\`/\`Max\`)`,
    `(${s(Timing.meteredKeepaliveInterval)}: ${s(negotiateKeepalive(Timing.meteredKeepaliveInterval).timeout)}`,
    `an integer 1–86400000`,
  ];
  expect(quotes.filter((q) => !doc.includes(q))).toEqual([]);
  // The decoder's bound is the one quoted.
  expect(() => decodeHello({ versions: [1], role: "onsite", id: "x", keepalive: 86_400_000 })).not.toThrow();
});
