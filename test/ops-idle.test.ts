// session_idle_timeout's decision, pure (src/tunnel/relay/sessions.ts): a session is idle while it
// is active, has no open stream and nothing touched it for the timeout; deadlines only move later.
import { describe, expect, test } from "bun:test";
import { SessionTable, isIdle, type SessionState } from "../src/tunnel/relay/sessions.ts";

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
