// The relay on a fake clock, over in-memory links: its durations (HELLO deadline, session TTL,
// device ages) run on the monotonic clock, so stepping the wall clock by a day either way (NTP
// on a Pi without RTC, a date set by hand) makes no TTL longer or shorter and no device stale.
import { afterEach, describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { Connection } from "../src/transport/mux.ts";
import { linkPair } from "../src/transport/link.ts";
import { GoAwayCode, MAX_CONTROL_MESSAGE } from "../src/transport/frame.ts";
import { Msg, type SessionCloseBody } from "../src/transport/messages.ts";
import { request, on } from "../src/transport/typed.ts";
import { waitFor } from "./helpers/cli.ts";

const DAY = 86_400_000;
const quiet = { debug() {}, info() {}, warn() {} };
const relays: RelayServer[] = [];
const conns: Connection[] = [];
afterEach(async () => {
  for (const c of conns.splice(0)) c.close();
  await Promise.all(relays.splice(0).map((r) => r.close()));
});

function relay(clock: FakeClock): RelayServer {
  const r = new RelayServer({ id: "relay-1", log: quiet, access: () => [], clock, helloDeadline: 10_000, keepaliveInterval: 3_600_000, newSessionId: () => "s-fixed1" });
  relays.push(r);
  return r;
}

async function device(r: RelayServer, role: string, id: string, hello = true) {
  const [link, relayLink] = linkPair("10.0.0.1", "10.9.9.9");
  const conn = new Connection(link, { side: "dialer", maxControlIn: MAX_CONTROL_MESSAGE });
  conns.push(conn);
  const closes: SessionCloseBody[] = [];
  on(conn, Msg.SESSION_CLOSE, (b) => closes.push(b));
  conn.handle(Msg.SESSION_OFFER, () => ({}));
  const welcomed = new Promise((resolve) => conn.on(Msg.WELCOME, resolve));
  r.accept(relayLink, { id, role, serial: `serial-${id}` });
  if (hello) {
    conn.send(Msg.HELLO, { versions: [1], role, id, agent: "test/1" });
    await welcomed;
  }
  return { conn, closes };
}

describe.each([
  ["+1 day", DAY],
  ["-1 day", -DAY],
])("a wall-clock step of %s", (_name, step) => {
  test("makes no session TTL longer or shorter", async () => {
    const clock = new FakeClock();
    const r = relay(clock);
    const onsite = await device(r, "onsite", "site-1");
    const master = await device(r, "master", "tech-1");
    // The relay's two connections keep their keepalive timers on this clock; the TTL adds one,
    // session_idle_timeout another.
    const keepalives = clock.pending;
    const info = await request(master.conn, Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"], ttl: 60_000, session: null });
    expect(clock.pending).toBe(keepalives + 2);
    expect(Date.parse(info.expires!) - clock.wall()).toBe(60_000);
    clock.advance(30_000);
    clock.stepWall(step);
    // What people read follows the new wall clock; the time left does not change.
    expect(Date.parse(r.sessionList()[0]!.expires!) - clock.wall()).toBe(30_000);
    clock.advance(29_999);
    expect(r.sessionList().map((s) => s.session)).toEqual(["s-fixed1"]);
    clock.advance(1);
    expect(r.sessionList()).toEqual([]);
    const closed = { session: "s-fixed1", reason: "TTL of 60 s reached", final: true };
    await waitFor(() => master.closes.length === 1 && onsite.closes.length === 1, 2_000, "SESSION_CLOSE on both sides");
    expect([master.closes, onsite.closes]).toEqual([[closed], [closed]]);
    expect(clock.pending).toBe(keepalives);
  });

  test("declares no device stale and changes no uptime", async () => {
    const clock = new FakeClock();
    const r = relay(clock);
    const onsite = await device(r, "onsite", "site-1");
    onsite.conn.send(Msg.INVENTORY, { hostname: "pi-1", location: "", agent: "test/1", uptime: 100, uplink: "lte" });
    await waitFor(() => r.deviceList()[0]?.hostname === "pi-1", 2_000, "the inventory");
    clock.advance(5_000);
    const before = { stale: r.inventory.stale(10_000), age: r.inventory.age("site-1"), uptime: r.deviceList()[0]!.uptime };
    clock.stepWall(step);
    expect({ stale: r.inventory.stale(10_000), age: r.inventory.age("site-1"), uptime: r.deviceList()[0]!.uptime }).toEqual(before);
    expect(before).toEqual({ stale: [], age: 5_000, uptime: 105 });
    expect(r.deviceList()[0]!.online).toBe(true);
  });

  test("neither fires nor delays the HELLO deadline", async () => {
    const clock = new FakeClock();
    const r = relay(clock);
    const d = await device(r, "onsite", "site-1", false);
    clock.stepWall(step);
    clock.advance(9_999);
    expect(r.stats().pending_hello).toBe(1);
    clock.advance(1);
    const why = await d.conn.wait();
    expect({ code: why.code, message: why.message }).toEqual({ code: GoAwayCode.PROTOCOL, message: "no HELLO within 10 s" });
    expect(r.refusals).toMatchObject([{ code: "deadline", reason: "no HELLO within 10 s", time: new Date(clock.wall()).toISOString() }]);
  });
});
