// session_idle_timeout's decision, pure (src/tunnel/relay/sessions.ts): a session is idle while it
// is active, has no open stream and nothing touched it for the timeout; deadlines only move later.
import { afterEach, describe, expect, test } from "bun:test";
import { SessionTable, isIdle, type SessionState } from "../src/tunnel/relay/sessions.ts";
import { FakeClock } from "../src/clock.ts";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { Connection } from "../src/transport/mux.ts";
import { linkPair } from "../src/transport/link.ts";
import { MAX_CONTROL_MESSAGE } from "../src/transport/frame.ts";
import { Msg, type SessionCloseBody } from "../src/transport/messages.ts";
import { on, request } from "../src/transport/typed.ts";
import { Registry } from "../src/metrics.ts";
import { waitFor } from "./helpers/wait.ts";

describe("isIdle", () => {
  const T = 10_000;
  test.each<[string, SessionState, number, number, number, boolean]>([
    // name, state, open streams, last activity, now, idle?
    ["active, no stream, quiet for the timeout", "active", 0, 0, T, true],
    ["active, no stream, quiet for less", "active", 0, 0, T - 1, false],
    ["active with an open stream, quiet for ages", "active", 1, 0, 100 * T, false],
    ["still offered", "offered", 0, 0, 100 * T, false],
    ["touched lately", "active", 0, 5_000, T + 4_999, false],
  ])("%s", (_name, state, openStreams, lastActivity, now, want) => {
    expect(isIdle({ state, openStreams, lastActivity }, now, T)).toBe(want);
  });
});

describe("SessionTable idleness", () => {
  function table() {
    let n = 0;
    return new SessionTable<string>({ maxPerMaster: 10, newId: () => `s${++n}` });
  }
  function active(t: SessionTable<string>, now: number) {
    const r = t.open({ master: "m", onsite: "o", targets: ["10.0.0.1:80"], ttl: null, session: null }, { master: "M", onsite: "O" }, now, now);
    if (!r.ok) throw new Error(r.message);
    t.offer(r.session);
    t.accept(r.session);
    return r.session;
  }

  test("streams hold a session; closing the last one starts the idle clock", () => {
    const t = table();
    const s = active(t, 0);
    expect(t.nextIdle(1000)).toBe(1000);
    t.streamOpened(s, 500);
    expect(t.nextIdle(1000)).toBeNull();
    expect(t.idle(10_000, 1000)).toEqual([]);
    t.streamClosed(s, 20_000);
    expect(t.nextIdle(1000)).toBe(21_000);
    expect(t.idle(20_999, 1000)).toEqual([]);
    expect(t.idle(21_000, 1000).map((x) => x.id)).toEqual([s.id]);
    expect(t.active(s.id)).toBeUndefined();
  });

  test("touch (a packet) moves the deadline later, never earlier", () => {
    const t = table();
    const s = active(t, 0);
    t.touch(s, 800);
    expect(t.nextIdle(1000)).toBe(1800);
    t.touch(s, 100); // an older timestamp arriving late changes nothing
    expect(t.nextIdle(1000)).toBe(1800);
    expect(t.idle(1799, 1000)).toEqual([]);
    expect(t.idle(1800, 1000)).toHaveLength(1);
  });

  test("a close that did not match a stream open never makes the count negative", () => {
    const t = table();
    const s = active(t, 0);
    t.streamClosed(s, 1);
    expect(s.openStreams).toBe(0);
    t.streamOpened(s, 2);
    expect(s.openStreams).toBe(1);
  });
});

// The relay's idle sweep on a fake clock over in-memory links: exact, without waiting.
const quiet = { debug() {}, info() {}, warn() {} };
const open: { relays: RelayServer[]; conns: Connection[] } = { relays: [], conns: [] };
afterEach(async () => {
  for (const c of open.conns.splice(0)) c.close();
  await Promise.all(open.relays.splice(0).map((r) => r.close()));
});

describe("RelayServer: session_idle_timeout", () => {
  async function setup(idle: number) {
    const clock = new FakeClock();
    const metrics = new Registry();
    let n = 0;
    const r = new RelayServer({ id: "relay-1", log: quiet, access: () => [], clock, keepaliveInterval: 3_600_000, sessionIdleTimeout: idle, metrics, newSessionId: () => `s${++n}` });
    open.relays.push(r);
    const device = async (role: string, id: string) => {
      const [link, relayLink] = linkPair("10.0.0.1", "10.9.9.9");
      const conn = new Connection(link, { side: "dialer", maxControlIn: MAX_CONTROL_MESSAGE });
      open.conns.push(conn);
      const closes: SessionCloseBody[] = [];
      on(conn, Msg.SESSION_CLOSE, (b) => closes.push(b));
      conn.handle(Msg.SESSION_OFFER, () => ({}));
      const welcomed = new Promise((resolve) => conn.on(Msg.WELCOME, resolve));
      r.accept(relayLink, { id, role, serial: `serial-${id}` });
      conn.send(Msg.HELLO, { versions: [1], role, id, agent: "test/1" });
      await welcomed;
      return { conn, closes };
    };
    const onsite = await device("onsite", "site-1");
    const master = await device("master", "tech-1");
    return { clock, r, onsite, master, metrics };
  }

  test("a session untouched for the timeout ends, final, with the reason on both sides, and is counted", async () => {
    const { clock, r, onsite, master, metrics } = await setup(60_000);
    await request(master.conn, Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"], ttl: null, session: null });
    clock.advance(59_999);
    expect(r.sessionList()).toHaveLength(1);
    clock.advance(1);
    expect(r.sessionList()).toEqual([]);
    const closed = { session: "s1", reason: "idle for 60 s (no stream and no packet; session_idle_timeout)", final: true };
    await waitFor(() => master.closes.length === 1 && onsite.closes.length === 1, 2_000, "SESSION_CLOSE on both sides");
    expect([master.closes, onsite.closes]).toEqual([[closed], [closed]]);
    expect(metrics.render()).toContain('agent_relay_sessions_closed_total{reason="idle"} 1\n');
  });

  test("touchSession (a packet) pushes the end back; the sweep re-arms for the new deadline", async () => {
    const { clock, r, master } = await setup(60_000);
    await request(master.conn, Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"], ttl: null, session: null });
    clock.advance(50_000);
    r.touchSession("s1");
    clock.advance(10_000); // the first deadline passes: the sweep finds it touched
    expect(r.sessionList()).toHaveLength(1);
    clock.advance(49_999);
    expect(r.sessionList()).toHaveLength(1);
    clock.advance(1);
    expect(r.sessionList()).toEqual([]);
  });
});
