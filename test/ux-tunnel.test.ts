// Issue 19, what a new user stumbles over in the tunnel: a target that refuses (or does not
// answer) is said on both ends, counted per forward and checked when the session opens; a
// listen failure names its cause and fix; `--forward` says which targets it takes, and a host
// name is resolved on the onsite device and judged by its address. In memory: the real
// RelayServer, SessionServer and MasterSessions over linked Connections, on a MemoryNet.
import { afterEach, describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { linkPair } from "../src/transport/link.ts";
import { Msg, decodeSessionInfo, decodeSessionOfferReply } from "../src/transport/messages.ts";
import { Connection } from "../src/transport/mux.ts";
import { explainListenError } from "../src/transport/listen-error.ts";
import { parseAllowEntry } from "../src/netaddr.ts";
import { MemoryNet, type Duplex, type TargetDialer } from "../src/tunnel/duplex.ts";
import { MasterSessions, openFailure, parseForward } from "../src/tunnel/master-forwarder.ts";
import { SessionServer, checkTarget, connectFailure } from "../src/tunnel/onsite-server.ts";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { waitFor } from "./helpers/wait.ts";

interface Logged {
  lines: string[];
  log: { debug(m: unknown): void; info(m: unknown): void; warn(m: unknown): void };
}
function logger(): Logged {
  const lines: string[] = [];
  const at = (level: string) => (m: unknown) => lines.push(`${level} ${String(m)}`);
  return { lines, log: { debug: at("debug"), info: at("info"), warn: at("warn") } };
}

const cleanup: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

/** The suite's one poll-until (helpers/wait.ts), polling often: in-memory links move on zero-delay timers. */
const until = (cond: () => boolean, what: string, ms = 5_000): Promise<void> => waitFor(cond, ms, what, { every: 1 }).then(() => undefined);

/** A device connected to the relay: its Connection (after WELCOME). */
async function device(relay: RelayServer, role: "onsite" | "master", id: string, onStream?: (s: import("../src/transport/mux.ts").Stream) => void, setup?: (c: Connection) => void): Promise<Connection> {
  const [link, relayLink] = linkPair(role === "master" ? "10.0.0.2" : "10.0.0.3", "10.9.9.9");
  const conn = new Connection(link, { side: "dialer", onStream });
  setup?.(conn);
  const welcome = new Promise((resolve) => conn.on(Msg.WELCOME, resolve));
  relay.accept(relayLink, { id, role, serial: `serial-${id}` });
  conn.send(Msg.HELLO, { versions: [1], role, id, agent: "test/1" });
  await welcome;
  cleanup.push(() => conn.close());
  return conn;
}

interface Rig {
  lan: MemoryNet; // the onsite device's LAN (its dialer)
  local: MemoryNet; // the master's local ports (its listener)
  onsite: SessionServer;
  master: MasterSessions;
  onsiteLog: Logged;
  masterLog: Logged;
  relayLog: Logged;
}

async function rig(opts: { allow?: string[]; resolve?: (name: string) => Promise<string>; dialer?: TargetDialer; clock?: FakeClock; connectTimeout?: number; probeTimeout?: number } = {}): Promise<Rig> {
  const lan = new MemoryNet();
  const local = new MemoryNet();
  const onsiteLog = logger();
  const masterLog = logger();
  const relayLog = logger();
  const relay = new RelayServer({ id: "relay-1", log: relayLog.log, access: () => [], keepaliveInterval: 60_000 });
  cleanup.push(() => relay.close());
  const allow = (opts.allow ?? ["192.168.1.0/24"]).map(parseAllowEntry);
  const onsite = new SessionServer({ id: "site-1", allow: () => allow, log: onsiteLog.log, dialer: opts.dialer ?? lan, resolve: opts.resolve, clock: opts.clock, connectTimeout: opts.connectTimeout, probeTimeout: opts.probeTimeout });
  await device(relay, "onsite", "site-1", (s) => onsite.serve(s), (c) => onsite.setup(c));
  let mconn: Connection | null = null;
  const master = new MasterSessions({ log: masterLog.log, relay: () => mconn, relayState: () => "up", listener: local });
  cleanup.push(() => master.close());
  mconn = await device(relay, "master", "tech-1", undefined, (c) => master.setup(c));
  return { lan, local, onsite, master, onsiteLog, masterLog, relayLog };
}

/** A local client of a forward: resolves with the reason its connection closed (null: clean). */
function clientOf(net: MemoryNet, port: number): Promise<Error | null> {
  const c = net.connect("127.0.0.1", port);
  return new Promise((resolve) => {
    c.setHandlers({ data() {}, drain() {}, end() {}, close: resolve });
    c.resume();
  });
}

const refused = () => Object.assign(new Error("Failed to connect"), { code: "ECONNREFUSED" }); // what Bun.connect rejects with

describe("a target that refuses", () => {
  test("is logged on both ends with ssh's words, counted per forward, and warned of when the session opens", async () => {
    const r = await rig();
    r.lan.failDial.set("192.168.1.50:80", refused());
    const view = await r.master.connect("site-1", [parseForward("8080:192.168.1.50:80")], null);
    // (c) the check at the offer: the master hears at once, in connect's result and its log.
    expect(view.warnings).toEqual(["target 192.168.1.50:80: connect failed: Connection refused"]);
    expect(r.masterLog.lines).toContain(`warn session ${view.session} to site-1: target 192.168.1.50:80: connect failed: Connection refused`);
    expect(r.onsiteLog.lines).toContain(`warn session ${view.session}: target 192.168.1.50:80: connect failed: Connection refused`);

    // (a) each connection: a reset to the client, and a line on both ends.
    const why = await clientOf(r.local, 8080);
    expect(why?.message).toMatch(/connect failed: Connection refused/);
    await until(() => r.master.list()[0]!.forwards[0]!.errors === 1, "the error to be counted");
    expect(r.onsiteLog.lines).toContain(`warn stream to 192.168.1.50:80 for session ${view.session}: connect failed: Connection refused`);
    expect(r.masterLog.lines).toContain("warn forward 127.0.0.1:8080 → 192.168.1.50:80: open failed: connect failed: Connection refused");

    // (b) `agent sessions`: the last error per forward with a count.
    await clientOf(r.local, 8080);
    await until(() => r.master.list()[0]!.forwards[0]!.errors === 2, "the second error");
    expect(r.master.list()[0]!.forwards[0]).toMatchObject({ connections: 2, active: 0, errors: 2, last_error: "connect failed: Connection refused" });
  });

  test("a target that answers gives no warning and no error", async () => {
    const r = await rig();
    r.lan.listen("192.168.1.50", 80, (d) => d.end());
    const view = await r.master.connect("site-1", [parseForward("8080:192.168.1.50:80")], null);
    expect(view.warnings).toEqual([]);
    expect(view.forwards[0]).toMatchObject({ errors: 0, last_error: null });
    // The check connected once and closed at once.
    expect(r.lan.dialed).toEqual(["192.168.1.50:80"]);
  });

  test("a target that does not answer: the stream gives up after the connect timeout and says so", async () => {
    const clock = new FakeClock();
    const never: TargetDialer = { dial: () => new Promise<Duplex>(() => {}) };
    const r = await rig({ dialer: never, clock, connectTimeout: 10_000, probeTimeout: 2_000 });
    const opening = r.master.connect("site-1", [parseForward("8080:192.168.1.77:80")], null);
    await until(() => clock.pending > 0, "the check of the target to start");
    clock.advance(2_000);
    const view = await opening;
    expect(view.warnings).toEqual(["target 192.168.1.77:80: connect failed: no answer within 2 s"]);
    const why = clientOf(r.local, 8080);
    await until(() => clock.pending > 0, "the stream's connect to start");
    clock.advance(10_000);
    expect((await why)?.message).toMatch(/connect failed: no answer within 10 s/);
    await until(() => r.master.list()[0]!.forwards[0]!.errors === 1, "the error to be counted");
    expect(r.master.list()[0]!.forwards[0]!.last_error).toBe("connect failed: no answer within 10 s");
  });
});

describe("the words", () => {
  test.each<[{ code?: string; message?: string }, string]>([
    [{ code: "ECONNREFUSED" }, "connect failed: Connection refused"],
    [{ code: "ETIMEDOUT" }, "connect failed: Connection timed out"],
    [{ code: "EHOSTUNREACH" }, "connect failed: No route to host"],
    [{ code: "ENETUNREACH" }, "connect failed: Network is unreachable"],
    [{ message: "no answer within 10 s" }, "connect failed: no answer within 10 s"],
  ])("connectFailure(%p) = %p", (over, words) => {
    const err = Object.assign(new Error(over.message ?? "Failed to connect"), over.code ? { code: over.code } : {});
    expect(connectFailure(err)).toBe(words);
  });

  test.each([
    ["192.168.1.50:80", "connect failed: Connection refused", "connect failed: Connection refused"],
    ["192.168.1.50:80", "192.168.1.50:80: connect failed: Connection refused", "connect failed: Connection refused"],
    ["192.168.1.50:80", "site-1: target 192.168.1.50:80 is not in the allow list (10.0.0.0/8)", "site-1: target 192.168.1.50:80 is not in the allow list (10.0.0.0/8)"],
  ])("openFailure(%p, %p) = %p", (target, reason, shown) => {
    expect(openFailure(target, reason)).toBe(shown);
  });

  const inUse = Object.assign(new Error("Failed to listen at 127.0.0.1"), { code: "EADDRINUSE" });
  const denied = Object.assign(new Error("Failed to listen at 0.0.0.0"), { code: "EACCES" });
  const noAddr = Object.assign(new Error("Failed to listen at 10.9.9.9"), { code: "EADDRNOTAVAIL" });
  const bare = (host: string) => new Error(`Failed to listen at ${host}`);
  test.each<[string, unknown, string, number, string[] | null, RegExp]>([
    ["port in use", inUse, "127.0.0.1", 8080, null, /^port 8080 is in use \(by another program; pick another port or stop it; `ss -ltnp 'sport = :8080'` shows who\)$/],
    ["a low port without the right", denied, "0.0.0.0", 443, null, /^ports below 1024 need root or CAP_NET_BIND_SERVICE/],
    ["an address the host does not have", noAddr, "10.9.9.9", 8080, null, /^this host has no address 10\.9\.9\.9 \(see `ip -br addr`/],
    ["no code, an address the host lacks", bare("10.9.9.9"), "10.9.9.9", 8080, ["127.0.0.1", "192.168.1.2"], /^this host has no address 10\.9\.9\.9/],
    ["no code, an address the host has", bare("192.168.1.2"), "192.168.1.2", 8080, ["127.0.0.1", "192.168.1.2"], /^Failed to listen at 192\.168\.1\.2$/],
    ["no code, loopback is always there", bare("127.0.0.2"), "127.0.0.2", 8080, ["127.0.0.1"], /^Failed to listen at 127\.0\.0\.2$/],
    ["no code, a name", bare("relay.example"), "relay.example", 443, ["127.0.0.1"], /is "relay\.example" a name of this host\?/],
  ])("explainListenError: %s", (_name, err, host, port, addresses, want) => {
    expect(explainListenError(err, host, port, { addresses })).toMatch(want);
  });
});

describe("targets", () => {
  test.each([
    ["8080:[::1]:80", /IPv6 addresses are not supported yet/],
    ["8080:[fe80::1]:22", /IPv6 addresses are not supported yet/],
    ["[::1]:8080:192.168.1.50:80", /IPv6 addresses are not supported yet/],
    ["8080:fe80::1:22", /IPv6 addresses are not supported yet/],
    ["192.168.1.50:80", /2 fields where 3 or 4 are expected.*an IPv4 address, or a host name the onsite device resolves/],
    ["8080:printer lan:80", /expected a target HOST:PORT/],
  ])("--forward %p is refused, saying what is supported", (text, why) => {
    expect(() => parseForward(text)).toThrow(why);
  });

  test.each([
    ["8080:printer.lan:80", { bind: "127.0.0.1", port: 8080, target: "printer.lan:80" }],
    ["0.0.0.0:8443:nas-1:443", { bind: "0.0.0.0", port: 8443, target: "nas-1:443" }],
  ])("--forward %p takes a host name", (text, spec) => {
    expect(parseForward(text)).toEqual(spec);
  });

  const allow = ["192.168.1.0/24:80"].map(parseAllowEntry);
  test.each([
    ["192.168.1.50:80", undefined, { ok: true, host: "192.168.1.50", port: 80 }],
    ["printer.lan:80", "192.168.1.50", { ok: true, host: "192.168.1.50", port: 80 }],
    ["printer.lan:80", "10.0.0.9", { ok: false, reason: "target printer.lan:80 (10.0.0.9) is not in the allow list (192.168.1.0/24:80)" }],
    ["printer.lan:80", undefined, { ok: false, reason: expect.stringMatching(/host name that was not resolved/) }],
    ["[::1]:80", undefined, { ok: false, reason: expect.stringMatching(/IPv6 targets are not supported yet/) }],
  ])("checkTarget(%p, resolved %p)", (target, resolved, want) => {
    expect(checkTarget(allow, target, resolved)).toEqual(want as never);
  });

  test("a host name is resolved on the onsite device, judged by its address, and served", async () => {
    const asked: string[] = [];
    const names: Record<string, string> = { "printer.lan": "192.168.1.50", "evil.lan": "10.0.0.9" };
    const resolve = async (n: string) => {
      asked.push(n);
      if (!names[n]) throw new Error("getaddrinfo ENOTFOUND");
      return names[n]!;
    };
    const r = await rig({ resolve });
    r.lan.listen("192.168.1.50", 80, (d) => {
      d.setHandlers({ data() {}, drain() {}, end() {}, close() {} });
      d.write(new TextEncoder().encode("hello"));
      d.end();
      d.resume();
    });
    const view = await r.master.connect("site-1", [parseForward("8080:printer.lan:80")], null);
    expect(view.warnings).toEqual([]);
    const c = r.local.connect("127.0.0.1", 8080);
    let got = "";
    const closed = new Promise<Error | null>((res) => c.setHandlers({ data: (b) => (got += new TextDecoder().decode(b)), drain() {}, end: () => c.end(), close: res }));
    c.resume();
    expect(await closed).toBeNull();
    expect(got).toBe("hello");
    expect(r.lan.dialed).toEqual(["192.168.1.50:80", "192.168.1.50:80"]); // the check, then the stream
    expect(asked).toEqual(["printer.lan", "printer.lan"]);

    // A name that resolves outside the allow list is refused with the address; one that does not resolve, with the resolver's reason.
    const outside = await r.master.connect("site-1", [parseForward("8081:evil.lan:80")], null).catch((e: Error) => e);
    expect((outside as Error).message).toMatch(/target evil\.lan:80 \(10\.0\.0\.9\) is not in the allow list/);
    const unknown = await r.master.connect("site-1", [parseForward("8082:nobody.lan:80")], null).catch((e: Error) => e);
    expect((unknown as Error).message).toMatch(/target nobody\.lan:80: cannot resolve nobody\.lan: getaddrinfo ENOTFOUND/);
  });
});

test("a resolver that does not answer: the offer is refused within the resolve timeout, with why", async () => {
  const clock = new FakeClock();
  const r = await rig({ resolve: () => new Promise<string>(() => {}), clock });
  const opening = r.master.connect("site-1", [parseForward("8080:printer.lan:80")], null).catch((e: Error) => e);
  await until(() => clock.pending > 0, "the resolve to start");
  clock.advance(5_000);
  expect(((await opening) as Error).message).toMatch(/target printer\.lan:80: cannot resolve printer\.lan: no answer from the resolver within 5 s/);
  expect(r.local.listening("127.0.0.1", 8080)).toBe(false);
});

describe("the SESSION_OFFER reply's warnings (protocol)", () => {
  test.each([
    [null, {}],
    [{}, {}],
    [{ warnings: [] }, {}],
    [{ warnings: ["target 192.168.1.50:80: connect failed: Connection refused"] }, { warnings: ["target 192.168.1.50:80: connect failed: Connection refused"] }],
  ])("decodeSessionOfferReply(%p)", (v, want) => {
    expect(decodeSessionOfferReply(v)).toEqual(want);
  });

  test("a warnings field that is not strings is refused, naming it", () => {
    expect(() => decodeSessionOfferReply({ warnings: [1] })).toThrow("result.warnings: expected an array of strings");
    expect(() => decodeSessionInfo({ session: "s-1", master: "m", onsite: "o", targets: [], opened: "x", expires: null, warnings: "no" })).toThrow("result.warnings");
  });

  test("SessionInfo carries warnings only when there are some", () => {
    const base = { session: "s-1", master: "m", onsite: "o", targets: ["1.2.3.4:80"], opened: "2026-01-01T00:00:00Z", expires: null };
    expect(decodeSessionInfo(base)).toEqual(base);
    expect(decodeSessionInfo({ ...base, warnings: ["w"] })).toEqual({ ...base, warnings: ["w"] });
  });
});
