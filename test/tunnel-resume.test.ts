// The master's session lifecycle (src/tunnel/master-session.ts) as a table, then the forwarder
// (src/tunnel/master-forwarder.ts) resuming sessions in memory: a real Connection to a scripted relay
// over in-memory links, forwards on an in-memory network, time on a FakeClock. No sockets.
import { afterEach, describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { linkPair } from "../src/transport/link.ts";
import { ErrorCode, Msg } from "../src/transport/messages.ts";
import { Connection, RemoteError, type Stream } from "../src/transport/mux.ts";
import { MemoryNet, type DuplexHandlers } from "../src/tunnel/duplex.ts";
import { streamDuplex } from "../src/tunnel/pipe.ts";
import { MasterSessions, parseForward, type SessionView } from "../src/tunnel/master-forwarder.ts";
import { decide, opening, resumeDelay, SessionTiming, type SessionAction, type SessionEvent, type SessionState } from "../src/tunnel/master-session.ts";
import { waitFor } from "./helpers/wait.ts";

// ---- resume delays ----------------------------------------------------------------------

test.each([
  [0, 50],
  [1, 250],
  [2, 500],
  [3, 1_000],
  [4, SessionTiming.resumeRetry],
  [50, SessionTiming.resumeRetry],
])("resume try %i waits %i ms", (n: number, ms: number) => {
  expect(resumeDelay(n)).toBe(ms);
});

test("the quick tries together stay under one resumeRetry and never shrink", () => {
  const quick = [...SessionTiming.resumeQuick];
  expect(quick.reduce((a, b) => a + b, 0)).toBeLessThan(SessionTiming.resumeRetry);
  expect([...quick].sort((a, b) => a - b)).toEqual(quick);
});

// ---- the state machine ------------------------------------------------------------------

const T = 1_000_000; // "now" of the table rows
const W = SessionTiming.resumeWindow;
const st = (over: Partial<SessionState>): SessionState => ({ phase: "active", since: T - 10_000, reason: "opened", expiresAt: null, resumeUntil: null, tries: 0, ...over });
const resuming = (over: Partial<SessionState> = {}) => st({ phase: "resuming", reason: "site-1 went away", resumeUntil: T + 60_000, tries: 1, ...over });
const closeWith = (reason: string): SessionAction[] => [{ kind: "close", reason }];

describe("decide", () => {
  test.each<[string, SessionState, SessionEvent, Partial<SessionState>, SessionAction[]]>([
    ["opened without a TTL", opening(T - 5), { kind: "opened", ttl: null }, { phase: "active", since: T, reason: "opened", expiresAt: null }, []],
    ["opened with a TTL arms its timer, a little late", opening(T - 5), { kind: "opened", ttl: 60_000 }, { phase: "active", expiresAt: T + 60_000 }, [{ kind: "expire-in", ms: 60_050 }]],
    ["an interruption while opening is not ours yet", opening(T - 5), { kind: "interrupted", reason: "x" }, { phase: "opening" }, []],
    [
      "interrupted: resuming, quick try first",
      st({}),
      { kind: "interrupted", reason: "site-1 went away" },
      { phase: "resuming", since: T, reason: "site-1 went away", resumeUntil: T + W, tries: 1 },
      [{ kind: "log", level: "warn", text: "interrupted (site-1 went away); resuming for up to 300 s" }, { kind: "retry-in", ms: 50 }],
    ],
    ["interrupted again keeps the first window, tries start over", resuming({ tries: 7, resumeUntil: T + 5 }), { kind: "interrupted", reason: "again" }, { phase: "resuming", resumeUntil: T + 5, tries: 1, reason: "again" }, [expect.objectContaining({ kind: "log" }), { kind: "retry-in", ms: 50 }]],
    ["interrupted past the TTL: closed", st({ expiresAt: T }), { kind: "interrupted", reason: "x" }, { phase: "closed", reason: "TTL reached" }, closeWith("TTL reached")],
    ["relay down: resuming, with why", st({}), { kind: "relay-down", reason: "EOF" }, { phase: "resuming", reason: "relay connection lost: EOF" }, [expect.objectContaining({ kind: "log" }), { kind: "retry-in", ms: 50 }]],
    ["relay down while resuming changes nothing", resuming(), { kind: "relay-down", reason: "EOF" }, resuming(), []],
    ["relay up while resuming: try at once", resuming(), { kind: "relay-up" }, resuming(), [{ kind: "retry-in", ms: 0 }]],
    ["relay up while active: nothing", st({}), { kind: "relay-up" }, st({}), []],
    ["retry due with a relay: ask, TTL left", resuming({ expiresAt: T + 30_000 }), { kind: "retry-due", relay: true }, resuming({ expiresAt: T + 30_000 }), [{ kind: "resume", ttl: 30_000 }]],
    ["retry due without a TTL", resuming(), { kind: "retry-due", relay: true }, resuming(), [{ kind: "resume", ttl: null }]],
    ["retry due without a relay: wait for relay up", resuming(), { kind: "retry-due", relay: false }, resuming(), []],
    ["retry due at the window's last instant still asks", resuming({ resumeUntil: T }), { kind: "retry-due", relay: true }, resuming({ resumeUntil: T }), [{ kind: "resume", ttl: null }]],
    ["retry due past the window: closed with the last reason", resuming({ resumeUntil: T - 1 }), { kind: "retry-due", relay: true }, { phase: "closed" }, closeWith("could not resume within 300 s: site-1 went away")],
    ["retry due past the window, even with no relay", resuming({ resumeUntil: T - 1 }), { kind: "retry-due", relay: false }, { phase: "closed" }, closeWith("could not resume within 300 s: site-1 went away")],
    ["retry due with under a second of TTL: closed", resuming({ expiresAt: T + 999 }), { kind: "retry-due", relay: true }, { phase: "closed" }, closeWith("TTL reached")],
    ["retry due on an active session (a stale timer): nothing", st({}), { kind: "retry-due", relay: true }, st({}), []],
    ["resumed", resuming(), { kind: "resumed" }, { phase: "active", since: T, reason: "resumed", resumeUntil: null }, [{ kind: "log", level: "info", text: "resumed" }]],
    ["resumed late, after a close: nothing", st({ phase: "closed", reason: "TTL reached" }), { kind: "resumed" }, { phase: "closed", reason: "TTL reached" }, []],
    ["resumed twice (two tries in flight): the second changes nothing", st({ reason: "resumed" }), { kind: "resumed" }, st({ reason: "resumed" }), []],
    ["a failed try waits by the try count", resuming({ tries: 1 }), { kind: "resume-failed", code: ErrorCode.OFFLINE, message: "site-1 is offline" }, { tries: 2, reason: "resuming: site-1 is offline", since: T - 10_000 }, [{ kind: "retry-in", ms: 250 }]],
    ["quick tries spent: every resumeRetry", resuming({ tries: 4 }), { kind: "resume-failed", code: undefined, message: "timeout" }, { tries: 5 }, [{ kind: "retry-in", ms: 2_000 }]],
    ...[ErrorCode.FORBIDDEN, ErrorCode.REFUSED, ErrorCode.UNKNOWN_DEVICE].map(
      (code) => [`a ${code} answer ends it`, resuming(), { kind: "resume-failed", code, message: "no" }, { phase: "closed", reason: "cannot resume: no" }, closeWith("cannot resume: no")] as [string, SessionState, SessionEvent, Partial<SessionState>, SessionAction[]],
    ),
    ["a failure of a stale try on an active session: nothing", st({}), { kind: "resume-failed", code: ErrorCode.FORBIDDEN, message: "no" }, st({}), []],
    ["final close by the relay", resuming(), { kind: "ended", reason: "TTL of 60 s reached" }, { phase: "closed", since: T }, closeWith("TTL of 60 s reached")],
    ["the TTL timer", st({}), { kind: "ttl" }, { phase: "closed" }, closeWith("TTL reached")],
    ["disconnect", st({}), { kind: "disconnect" }, { phase: "closed" }, closeWith("disconnected by the user")],
    ["shutdown while resuming", resuming(), { kind: "shutdown" }, { phase: "closed" }, closeWith("master shutting down")],
    ["closed stays closed", st({ phase: "closed", reason: "TTL reached" }), { kind: "interrupted", reason: "x" }, { phase: "closed", reason: "TTL reached" }, []],
    ["closing twice closes once", st({ phase: "closed", reason: "TTL reached" }), { kind: "disconnect" }, { reason: "TTL reached" }, []],
  ])("%s", (_name, state, event, want, actions) => {
    const d = decide(state, event, T);
    expect(d.state).toMatchObject(want);
    expect(d.actions).toEqual(actions);
  });

  test("decide never changes the state it is given", () => {
    const s = resuming();
    const copy = { ...s };
    decide(s, { kind: "resume-failed", code: undefined, message: "x" }, T);
    decide(s, { kind: "resumed" }, T);
    expect(s).toEqual(copy);
  });
});

// ---- the forwarder in memory ------------------------------------------------------------

type Answer = (body: Record<string, unknown>) => unknown;

/** The relay's answer to a SESSION_OPEN it accepts: a whole SessionInfo, as the real relay sends. */
const accept: Answer = (b) => ({ session: b.session ?? "s-1", master: "tech-1", onsite: b.onsite, targets: b.targets, opened: "2026-12-01T07:00:00.000Z", expires: b.ttl ? "2026-12-01T08:00:00.000Z" : null });

/** A relay played by the test: answers SESSION_OPEN as `answer` says, echoes stream data. */
class ScriptedRelay {
  conn: Connection | null = null;
  relaySide: Connection | null = null;
  readonly opens: Record<string, unknown>[] = [];
  readonly streams: Stream[] = [];
  answer: Answer = accept;
  private readonly all: Connection[] = [];

  /** A (new) relay connection; the forwarder's setup runs on it as RelayClient would. */
  up(sessions?: MasterSessions): Connection {
    const [a, b] = linkPair();
    const conn = new Connection(a, { side: "dialer" });
    const relay = new Connection(b, {
      side: "acceptor",
      onStream: (s) => {
        this.streams.push(s);
        echo(s);
      },
    });
    relay.handle(Msg.SESSION_OPEN, (body) => {
      this.opens.push(body);
      return this.answer(body);
    });
    relay.handle(Msg.SESSION_END, () => ({}));
    this.all.push(conn, relay);
    this.conn = conn;
    this.relaySide = relay;
    sessions?.setup(conn);
    return conn;
  }

  down(): void {
    this.conn?.close();
    this.conn = null;
  }

  close(): void {
    for (const c of this.all) c.close();
  }
}

/** The far end of a stream: sends back what it gets, then FIN. */
function echo(s: Stream): void {
  s.accept();
  const d = streamDuplex(s);
  d.setHandlers({ data: (c) => d.write(c), drain() {}, end: () => d.end(), close() {} });
  d.resume();
}

const offline = () => {
  throw new RemoteError(ErrorCode.OFFLINE, "site-1 is offline");
};

interface Rig {
  clock: FakeClock;
  net: MemoryNet;
  relay: ScriptedRelay;
  sessions: MasterSessions;
  logs: string[];
  view(): SessionView;
}

const rigs: Rig[] = [];
afterEach(() => {
  for (const r of rigs.splice(0)) {
    r.sessions.close();
    r.relay.close();
  }
});

function rig(): Rig {
  const clock = new FakeClock();
  const net = new MemoryNet();
  const relay = new ScriptedRelay();
  const logs: string[] = [];
  const log = { debug() {}, info: (m: unknown) => logs.push(`info ${m}`), warn: (m: unknown) => logs.push(`warn ${m}`) };
  const sessions = new MasterSessions({ log, relay: () => relay.conn, relayState: () => "down", listener: net, clock });
  relay.up(sessions);
  const r: Rig = { clock, net, relay, sessions, logs, view: () => sessions.list()[0]! };
  rigs.push(r);
  return r;
}

/** The suite's one poll-until (helpers/wait.ts), polling often: in-memory links move on zero-delay timers. */
const until = (cond: () => boolean, what: string, ms = 5_000): Promise<void> => waitFor(cond, ms, what, { every: 0 }).then(() => undefined);

/**
 * Advances the fake clock, then lets a resume try that went out get its answer: the links and
 * the relay's handler run on real zero-delay timers, a round trip is a few of them.
 */
async function step(r: Rig, ms: number): Promise<void> {
  r.clock.advance(ms);
  for (let i = 0; i < 10; i++) await new Promise((res) => setTimeout(res, 0));
}

/** Sends through a forward and reads the echo: the forward carries connections. */
async function roundTrip(r: Rig, text: string): Promise<string> {
  const v = r.view();
  const client = r.net.connect(v.forwards[0]!.bind, v.forwards[0]!.port);
  let got = "";
  const closed = new Promise<Error | null>((res) => client.setHandlers({ data: (c) => (got += new TextDecoder().decode(c)), drain() {}, end() {}, close: res } satisfies DuplexHandlers));
  client.resume();
  client.write(new TextEncoder().encode(text));
  client.end();
  const err = await closed;
  if (err) throw err;
  return got;
}

async function open(r: Rig, ttl: number | null = null): Promise<SessionView> {
  return r.sessions.connect("site-1", [parseForward("0:192.168.1.50:80")], ttl);
}

async function interrupt(r: Rig, reason = "site-1 went away"): Promise<void> {
  r.relay.relaySide!.send(Msg.SESSION_CLOSE, { session: r.view().session, reason, final: false });
  await until(() => r.view().state === "resuming", "resuming");
}

describe("MasterSessions in memory", () => {
  test("a forward carries connections through a stream; data and FIN both ways", async () => {
    const r = rig();
    const v = await open(r);
    expect(v).toMatchObject({ state: "active", onsite: "site-1", forwards: [{ bind: "127.0.0.1", target: "192.168.1.50:80" }] });
    expect(r.net.listening("127.0.0.1", v.forwards[0]!.port)).toBe(true);
    expect(await roundTrip(r, "hello")).toBe("hello");
    expect(await roundTrip(r, "x".repeat(300_000))).toBe("x".repeat(300_000)); // several windows
    expect(r.relay.streams[0]!.open).toEqual({ session: "s-1", target: "192.168.1.50:80" });
    await until(() => r.view().forwards[0]!.active === 0, "the connection counted as done");
    expect(r.view().forwards[0]).toMatchObject({ connections: 2, active: 0 });
  });

  test("disconnect ends the session for both, stops its forward and resets a connection still open", async () => {
    const r = rig();
    const v = await open(r);
    const client = r.net.connect(v.forwards[0]!.bind, v.forwards[0]!.port);
    let got = "";
    const closed = new Promise<Error | null>((res) => client.setHandlers({ data: (c) => (got += new TextDecoder().decode(c)), drain() {}, end() {}, close: res }));
    client.resume();
    client.write(new TextEncoder().encode("ping"));
    await until(() => got === "ping", "the echo");
    const ended = new Promise<Record<string, unknown>>((res) => r.relay.relaySide!.handle(Msg.SESSION_END, (b) => (res(b), {})));
    const after = await r.sessions.disconnect(v.session);
    expect(await ended).toMatchObject({ session: "s-1", reason: "disconnect" });
    expect(after).toMatchObject({ state: "closed", reason: "disconnected by the user" });
    expect((await closed)?.message).toMatch(/listener 127\.0\.0\.1:\d+ closed/);
    expect(r.net.listening("127.0.0.1", v.forwards[0]!.port)).toBe(false);
    await until(() => r.relay.streams[0]!.closed, "the stream reset");
  });

  test("interrupted, the forward refuses connections; quick tries, then it resumes and carries again", async () => {
    const r = rig();
    await open(r);
    r.relay.answer = offline;
    await interrupt(r);
    expect(r.logs).toContain("warn session s-1 interrupted (site-1 went away); resuming for up to 300 s");
    const v = r.view();
    const refused = r.net.connect(v.forwards[0]!.bind, v.forwards[0]!.port);
    const why = await new Promise<Error | null>((res) => refused.setHandlers({ data() {}, drain() {}, end() {}, close: res }));
    expect(why?.message).toMatch(/reset by the peer: session s-1 is resuming \(site-1 went away\)/);

    // Each try waits as resumeDelay says: nothing goes out a millisecond early.
    const tries = r.relay.opens.length;
    for (const [i, delay] of [50, 250, 500, 1_000, 2_000, 2_000].entries()) {
      await step(r, delay - 1);
      expect(r.relay.opens.length).toBe(tries + i);
      await step(r, 1);
      expect(r.relay.opens.length).toBe(tries + i + 1);
      expect(r.relay.opens.at(-1)).toMatchObject({ session: "s-1", onsite: "site-1", targets: ["192.168.1.50:80"], ttl: null });
    }
    expect(r.view()).toMatchObject({ state: "resuming", reason: "resuming: site-1 is offline" });

    r.relay.answer = accept;
    await step(r, 2_000);
    expect(r.view()).toMatchObject({ state: "active", reason: "resumed" });
    expect(r.logs).toContain("info session s-1 to site-1 resumed");
    expect(await roundTrip(r, "again")).toBe("again");
  });

  test("the relay connection lost: no tries without it; the new connection resumes at once", async () => {
    const r = rig();
    await open(r);
    const before = r.relay.opens.length;
    r.relay.down();
    r.sessions.relayDown("connection reset");
    expect(r.view()).toMatchObject({ state: "resuming", reason: "relay connection lost: connection reset" });
    await step(r, 60_000);
    expect(r.relay.opens.length).toBe(before);
    r.relay.up(r.sessions);
    r.sessions.relayUp();
    await step(r, 0);
    await until(() => r.view().state === "active", "resumed");
    expect(r.relay.opens.length).toBe(before + 1);
    expect(await roundTrip(r, "back")).toBe("back");
  });

  test("a relay that stays away past the window: the session ends when it is back", async () => {
    const r = rig();
    await open(r);
    r.relay.down();
    r.sessions.relayDown("EOF");
    await step(r, SessionTiming.resumeWindow + 1);
    r.relay.up(r.sessions);
    r.sessions.relayUp();
    await step(r, 0);
    expect(r.view()).toMatchObject({ state: "closed", reason: "could not resume within 300 s: relay connection lost: EOF" });
    expect(r.net.listening("127.0.0.1", r.view().forwards[0]!.port)).toBe(false);
  });

  test("a refusal for good ends the session and stops its forward", async () => {
    const r = rig();
    await open(r);
    r.relay.answer = () => {
      throw new RemoteError(ErrorCode.FORBIDDEN, "tech-1 may not reach site-1");
    };
    await interrupt(r);
    await step(r, 50);
    expect(r.view()).toMatchObject({ state: "closed", reason: "cannot resume: tech-1 may not reach site-1" });
    expect(r.net.listening("127.0.0.1", r.view().forwards[0]!.port)).toBe(false);
    expect(r.clock.pending).toBe(1); // only the timer that drops it from the list
    await step(r, 10 * 60_000);
    expect(r.sessions.list()).toEqual([]);
  });

  test("the TTL goes on while resuming: a resume asks for what is left, and the end comes on time", async () => {
    const r = rig();
    await open(r, 60_000);
    await step(r, 20_000);
    r.relay.answer = offline;
    await interrupt(r);
    await step(r, 50);
    expect(r.relay.opens.at(-1)).toMatchObject({ ttl: 40_000 - 50 });
    r.relay.answer = accept;
    await step(r, 250);
    expect(r.view().state).toBe("active");
    await step(r, 40_000 - 300 + SessionTiming.expiryGrace - 1);
    expect(r.view().state).toBe("active");
    await step(r, 1);
    expect(r.view()).toMatchObject({ state: "closed", reason: "TTL reached" });
  });

  test("a final SESSION_CLOSE ends it with the relay's reason; disconnect of a closed session is refused", async () => {
    const r = rig();
    const v = await open(r, 60_000);
    r.relay.relaySide!.send(Msg.SESSION_CLOSE, { session: v.session, reason: "TTL of 60 s reached", final: true });
    await until(() => r.view().state === "closed", "closed");
    expect(r.view().reason).toBe("TTL of 60 s reached");
    expect(r.clock.pending).toBe(1); // the expiry timer is gone, the list purge remains
    await expect(r.sessions.disconnect(v.session)).rejects.toThrow(/no session "s-1"/);
  });

  test("a forward that cannot listen is a BAD_REQUEST naming the address, and nothing stays open", async () => {
    const r = rig();
    r.net.listen("127.0.0.1", 9000, () => {});
    const err = await r.sessions.connect("site-1", [parseForward("9001:192.168.1.50:80"), parseForward("9000:192.168.1.50:22")], null).catch((e) => e);
    expect(err).toBeInstanceOf(RemoteError);
    expect(err).toMatchObject({ code: ErrorCode.BAD_REQUEST, message: "cannot listen on 127.0.0.1:9000: address 127.0.0.1:9000 already in use" });
    expect(r.net.listening("127.0.0.1", 9001)).toBe(false);
    expect(r.sessions.list()).toEqual([]);
  });
});

describe("a step of the wall clock changes no duration", () => {
  test.each([
    ["+1 day", 86_400_000],
    ["-1 day", -86_400_000],
  ])("%s: the TTL keeps its length", async (_name, stepMs) => {
    const r = rig();
    const v = await open(r, 60_000);
    expect(Date.parse(v.expires!) - Date.parse(v.opened)).toBe(60_000);
    await step(r, 10_000);
    r.clock.stepWall(stepMs);
    // What people read follows the wall clock; the length does not change.
    const after = r.view();
    expect(Date.parse(after.opened) - Date.parse(v.opened)).toBe(stepMs);
    expect(Date.parse(after.expires!) - Date.parse(after.opened)).toBe(60_000);
    await step(r, 50_000 + SessionTiming.expiryGrace - 1);
    expect(r.view().state).toBe("active");
    await step(r, 1);
    expect(r.view()).toMatchObject({ state: "closed", reason: "TTL reached" });
  });

  test.each([
    ["+1 day", 86_400_000],
    ["-1 day", -86_400_000],
  ])("%s: the resume window is neither cut nor stretched", async (_name, stepMs) => {
    const r = rig();
    await open(r);
    r.relay.answer = offline;
    await interrupt(r);
    r.clock.stepWall(stepMs);
    let elapsed = 0;
    // Tries go on every resumeRetry for the whole window...
    for (const ms of [50, 250, 500, 1_000]) {
      await step(r, ms);
      elapsed += ms;
    }
    while (elapsed + SessionTiming.resumeRetry <= SessionTiming.resumeWindow) {
      await step(r, SessionTiming.resumeRetry);
      elapsed += SessionTiming.resumeRetry;
      if (elapsed === 150_000) r.clock.stepWall(-stepMs * 2); // and a step back the other way
    }
    expect(r.view().state).toBe("resuming");
    const tries = r.relay.opens.length;
    // ...and the first try after it ends the session instead of asking.
    await step(r, SessionTiming.resumeRetry);
    expect(r.relay.opens.length).toBe(tries);
    expect(r.view()).toMatchObject({ state: "closed", reason: "could not resume within 300 s: resuming: site-1 is offline" });
  });
});
