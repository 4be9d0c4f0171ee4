// The relay's session table as a pure state machine: every (state, event) pair, and the table's
// operations driven by hand-fed monotonic times, with strings standing in for connections.
import { describe, expect, test } from "bun:test";
import { SessionTable, nextState, sessionInfo, type SessionEvent, type SessionState, type OpenRequest } from "../src/tunnel/relay/sessions.ts";
import { ErrorCode } from "../src/transport/messages.ts";

describe("nextState", () => {
  const table: [SessionState, SessionEvent, SessionState | null][] = [
    ["open", "offer", "offered"],
    ["open", "accept", null],
    ["open", "refuse", "closed"],
    ["open", "close", "closed"],
    ["open", "expire", null],
    ["offered", "offer", null],
    ["offered", "accept", "active"],
    ["offered", "refuse", "closed"],
    ["offered", "close", "closed"],
    ["offered", "expire", null],
    ["active", "offer", null],
    ["active", "accept", null],
    ["active", "refuse", null],
    ["active", "close", "closed"],
    ["active", "expire", "closed"],
    ["closed", "offer", null],
    ["closed", "accept", null],
    ["closed", "refuse", null],
    ["closed", "close", null],
    ["closed", "expire", null],
  ];
  test.each(table)("%s + %s → %p", (state, event, next) => {
    expect(nextState(state, event)).toBe(next);
  });
  test("the table covers every pair", () => {
    expect(new Set(table.map(([s, e]) => `${s}/${e}`)).size).toBe(4 * 5);
  });
});

function ids(...list: string[]): () => string {
  let i = 0;
  return () => list[i++ % list.length]!;
}

const req = (o: Partial<OpenRequest> = {}): OpenRequest => ({ master: "tech-1", onsite: "site-1", targets: ["10.0.0.5:80"], ttl: null, session: null, ...o });
const ends = { master: "m-conn", onsite: "o-conn" };

function opened(t: SessionTable<string>, r: OpenRequest = req(), now = 1000) {
  const res = t.open(r, ends, now, Date.UTC(2026, 11, 1));
  if (!res.ok) throw new Error(res.message);
  return res;
}

function activate(t: SessionTable<string>, r: OpenRequest = req(), now = 1000) {
  const { session } = opened(t, r, now);
  expect(t.offer(session)).toBe(true);
  expect(t.accept(session)).toBe(true);
  return session;
}

describe("SessionTable", () => {
  test("open → offered → active: only an active session is listed and routable", () => {
    const t = new SessionTable<string>({ maxPerMaster: 10, newId: ids("s-aaaa") });
    const { session: s, replaced } = opened(t);
    expect(replaced).toBeNull();
    expect(s).toMatchObject({ id: "s-aaaa", state: "open", master: "tech-1", onsite: "site-1", masterConn: "m-conn", onsiteConn: "o-conn" });
    expect(t.list()).toEqual([]);
    expect(t.offer(s)).toBe(true);
    expect(t.active("s-aaaa")).toBeUndefined();
    expect(t.accept(s)).toBe(true);
    expect(t.active("s-aaaa")).toBe(s);
    expect(t.list()).toEqual([s]);
    // No event can move an active session back.
    expect(t.accept(s)).toBe(false);
    expect(t.offer(s)).toBe(false);
  });

  test("a refused offer closes the record; accepting it later fails", () => {
    const t = new SessionTable<string>({ maxPerMaster: 10, newId: ids("s-aaaa") });
    const { session: s } = opened(t);
    t.offer(s);
    expect(t.refuse(s)).toBe(true);
    expect(s.state).toBe("closed");
    expect(t.accept(s)).toBe(false);
    expect(t.size).toBe(0);
  });

  test("a fresh id that collides is drawn again; a requested one is kept", () => {
    const t = new SessionTable<string>({ maxPerMaster: 10, newId: ids("s-aaaa", "s-aaaa", "s-bbbb") });
    expect(opened(t).session.id).toBe("s-aaaa");
    expect(opened(t).session.id).toBe("s-bbbb");
    expect(opened(t, req({ session: "s-cccc" })).session.id).toBe("s-cccc");
  });

  test("a generator that only collides is an error, not a hang", () => {
    const t = new SessionTable<string>({ maxPerMaster: 10, newId: ids("s-aaaa") });
    opened(t);
    expect(t.open(req(), ends, 0, 0)).toEqual({ ok: false, code: ErrorCode.INTERNAL, message: "no free session id after 100 tries" });
  });

  test("re-opening its own id closes the old record and returns it; another master's id is taken", () => {
    const t = new SessionTable<string>({ maxPerMaster: 10, newId: ids("s-aaaa") });
    const old = activate(t);
    const again = opened(t, req({ session: "s-aaaa", targets: ["10.0.0.6:22"] }));
    expect(again.replaced).toBe(old);
    expect(old.state).toBe("closed");
    expect(again.session).toMatchObject({ id: "s-aaaa", state: "open", targets: ["10.0.0.6:22"] });
    expect(t.open(req({ master: "tech-2", session: "s-aaaa" }), ends, 2000, 0)).toEqual({ ok: false, code: ErrorCode.BAD_REQUEST, message: "session id s-aaaa is taken" });
  });

  test.each([
    ["under the limit", 2, null, true],
    ["at the limit", 3, null, false],
    ["at the limit, re-opening one of its own", 3, "s-0", true],
  ])("admits: %s", (_name, held, reopen, ok) => {
    let n = 0;
    const t = new SessionTable<string>({ maxPerMaster: 3, newId: () => `s-${n++}` });
    for (let i = 0; i < held; i++) opened(t);
    opened(t, req({ master: "tech-2" })); // another master's sessions do not count
    const verdict = t.admits("tech-1", reopen);
    expect(verdict.ok).toBe(ok);
    if (!verdict.ok) expect(verdict).toEqual({ ok: false, code: ErrorCode.REFUSED, message: "tech-1 already has 3 sessions (limit 3); end some with agent disconnect" });
  });

  test("TTL: expiry is the monotonic open time plus the TTL, and only active sessions expire", () => {
    let n = 0;
    const t = new SessionTable<string>({ maxPerMaster: 10, newId: () => `s-${n++}` });
    const a = activate(t, req({ ttl: 60_000 }), 1_000);
    const b = activate(t, req({ ttl: 5_000 }), 2_000);
    activate(t, req({ ttl: null }), 3_000);
    const pending = opened(t, req({ ttl: 1_000 }), 1_000).session; // never accepted
    expect([a.expiresAt, b.expiresAt, pending.expiresAt]).toEqual([61_000, 7_000, 2_000]);
    expect(t.nextExpiry()).toBe(7_000);
    expect(t.expire(6_999)).toEqual([]);
    expect(t.expire(7_000)).toEqual([b]);
    expect(b.state).toBe("closed");
    expect(t.nextExpiry()).toBe(61_000);
    expect(t.expire(1_000_000)).toEqual([a]);
    expect(t.nextExpiry()).toBeNull();
    expect(pending.state).toBe("open");
  });

  test("boundTo finds every live record of a connection, either side, any state", () => {
    let n = 0;
    const t = new SessionTable<string>({ maxPerMaster: 10, newId: () => `s-${n++}` });
    const a = activate(t);
    const b = t.open(req(), { master: "m2", onsite: "o-conn" }, 0, 0);
    const c = t.open(req(), { master: "m2", onsite: "o2" }, 0, 0);
    if (!b.ok || !c.ok) throw new Error("open");
    expect(t.boundTo("o-conn")).toEqual([a, b.session]);
    expect(t.boundTo("m2")).toEqual([b.session, c.session]);
    t.close(a.id);
    expect(t.boundTo("m-conn")).toEqual([]);
  });

  test("close by id only closes the record it names", () => {
    const t = new SessionTable<string>({ maxPerMaster: 10, newId: ids("s-aaaa") });
    const old = activate(t);
    const fresh = opened(t, req({ session: "s-aaaa" })).session;
    expect(t.close("s-aaaa", old)).toBeNull(); // the old record is gone already
    expect(t.close("s-aaaa")).toBe(fresh);
    expect(t.close("s-aaaa")).toBeNull();
  });
});

test("sessionInfo puts the monotonic expiry on the current wall clock", () => {
  const t = new SessionTable<string>({ maxPerMaster: 10, newId: ids("s-aaaa", "s-bbbb") });
  const opensAt = Date.UTC(2026, 11, 1, 8, 0, 0);
  const r = t.open(req({ ttl: 60_000 }), ends, 5_000, opensAt);
  if (!r.ok) throw new Error(r.message);
  // 10 s later on the monotonic clock, the wall clock says 08:00:10.
  expect(sessionInfo(r.session, 15_000, opensAt + 10_000)).toEqual({
    session: "s-aaaa",
    master: "tech-1",
    onsite: "site-1",
    targets: ["10.0.0.5:80"],
    opened: "2026-12-01T08:00:00.000Z",
    expires: "2026-12-01T08:01:00.000Z",
  });
  expect(sessionInfo(activate(t, req(), 0), 0, opensAt).expires).toBeNull();
});
