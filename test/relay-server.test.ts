// RelayServer driven through in-memory links, with real Connections on the device side: the
// HELLO rules, deadlines, replacement, the pairing policy, session teardown and stream routing
// with credit enforcement (a frozen reader cannot make the relay buffer beyond one window).
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { RefusalCode, type Refusal } from "../src/tunnel/relay/refusals.ts";
import { Connection, RemoteError, type Stream, type StreamError } from "../src/transport/mux.ts";
import { linkPair, type MemoryLink } from "../src/transport/link.ts";
import { Flag, FrameType, GoAwayCode, MAX_CONTROL_MESSAGE, MAX_PAYLOAD, ResetCode, encodeFrame, encodeJson } from "../src/transport/frame.ts";
import { ErrorCode, Msg, type SessionInfo } from "../src/transport/messages.ts";
import type { AccessRule } from "../src/config.ts";
import { Limits, maxRoutedStreams } from "../src/transport/policy.ts";
import { waitFor } from "./helpers/cli.ts";

// A few cases move tens of megabytes through in-memory links; give a busy CI machine room.
setDefaultTimeout(20_000);

const WINDOW = 64 * 1024;
const quiet = { debug() {}, info() {}, warn() {} };

interface Relay {
  server: RelayServer;
  refusals: Refusal[];
  warnings: string[];
  rules: AccessRule[];
  window: number;
}

const relays: RelayServer[] = [];
const conns: Connection[] = [];
afterEach(async () => {
  for (const c of conns.splice(0)) c.close();
  await Promise.all(relays.splice(0).map((r) => r.close()));
});

function relay(opts: { helloDeadline?: number; rules?: AccessRule[]; window?: number } = {}): Relay {
  const refusals: Refusal[] = [];
  const warnings: string[] = [];
  const rules = opts.rules ?? [];
  const server = new RelayServer({
    id: "relay-1",
    log: { ...quiet, warn: (m: unknown) => warnings.push(String(m)) },
    access: () => rules,
    onRefusal: (r) => refusals.push(r),
    helloDeadline: opts.helloDeadline ?? 5_000,
    window: opts.window ?? WINDOW,
    keepaliveInterval: 60_000,
  });
  relays.push(server);
  return { server, refusals, warnings, rules, window: opts.window ?? WINDOW };
}

interface Device {
  conn: Connection;
  link: MemoryLink;
  relayLink: MemoryLink;
  /** The relay's end of the connection: its wait() resolves after the relay has seen it close. */
  relayConn: Connection;
  streams: Stream[];
  closes: Record<string, unknown>[];
  welcome: Promise<Record<string, unknown>>;
}

/** A device whose certificate says (role, id), connected to the relay from `address`. */
function connect(r: Relay, role: string, id: string, opts: { address?: string; hello?: Record<string, unknown> | null } = {}): Device {
  const [link, relayLink] = linkPair(opts.address ?? "10.0.0.1", "10.9.9.9");
  const streams: Stream[] = [];
  const closes: Record<string, unknown>[] = [];
  // As RelayClient builds it: answers from the relay may span several frames.
  const conn = new Connection(link, { side: "dialer", window: r.window, onStream: (s) => streams.push(s), maxControlIn: MAX_CONTROL_MESSAGE });
  conns.push(conn);
  conn.on(Msg.SESSION_CLOSE, (b) => closes.push(b));
  conn.handle(Msg.SESSION_OFFER, () => ({}));
  const welcome = new Promise<Record<string, unknown>>((resolve) => conn.on(Msg.WELCOME, resolve));
  const relayConn = r.server.accept(relayLink, { id, role, serial: `serial-${id}` });
  if (opts.hello !== null) conn.send(Msg.HELLO, opts.hello ?? { versions: [1], role, id, agent: "test/1" });
  return { conn, link, relayLink, relayConn, streams, closes, welcome };
}

async function online(r: Relay, role: string, id: string, address?: string): Promise<Device> {
  const d = connect(r, role, id, { address });
  await d.welcome;
  return d;
}

async function refusedWith(d: Device, reason: RegExp): Promise<void> {
  const why = await d.conn.wait();
  expect(why.remote).toBe(true);
  expect(why.code).toBe(GoAwayCode.PROTOCOL);
  expect(why.message).toMatch(reason);
}

describe("HELLO", () => {
  test("a good HELLO is welcomed with the version, the relay id and the address it sees", async () => {
    const r = relay();
    const d = await online(r, "onsite", "site-1", "198.51.100.7");
    expect(await d.welcome).toMatchObject({ version: 1, relay: "relay-1", address: "198.51.100.7" });
    expect(r.server.deviceList()).toMatchObject([{ id: "site-1", online: true, address: "198.51.100.7", agent: "test/1" }]);
    expect(r.refusals).toEqual([]);
  });

  test.each([
    ["a role other than the certificate's", { versions: [1], role: "onsite", id: "tech-1" }, RefusalCode.IDENTITY, /^HELLO says role "onsite" but the certificate of tech-1 is for role master$/],
    ["an id other than the certificate's", { versions: [1], role: "master", id: "tech-2" }, RefusalCode.IDENTITY, /^HELLO says id "tech-2" but the certificate is for tech-1$/],
    ["no common protocol version", { versions: [2, 3], role: "master", id: "tech-1" }, RefusalCode.VERSION, /^no common protocol version \(relay speaks 1, peer offers 2, 3\)$/],
    ["no versions at all", { role: "master", id: "tech-1" }, RefusalCode.VERSION, /peer offers none/],
    ["a role that is not a string", { versions: [1], role: 7, id: "tech-1" }, RefusalCode.PROTOCOL, /^HELLO: role: expected a string, got 7$/],
    ["versions that are not numbers", { versions: ["1"], role: "master", id: "tech-1" }, RefusalCode.PROTOCOL, /^HELLO: versions: expected an array of protocol version numbers, got an array$/],
  ])("%s is refused, logged with the presented id and address", async (_name, hello, code, reason) => {
    const r = relay();
    const d = connect(r, "master", "tech-1", { address: "203.0.113.9", hello });
    await refusedWith(d, reason);
    expect(r.refusals).toEqual([{ time: expect.any(String), address: "203.0.113.9", presented: "tech-1 (master)", code, reason: expect.stringMatching(reason) }]);
    expect(r.warnings.join("\n")).toContain("refused tech-1 (master) from 203.0.113.9: ");
    expect(r.server.stats()).toMatchObject({ masters: 0, pending_hello: 0 });
  });

  test("a request before the HELLO is refused", async () => {
    const r = relay();
    const d = connect(r, "master", "tech-1", { hello: null });
    const answer = d.conn.request(Msg.DEVICES, {}).catch((e: Error) => e.message);
    await refusedWith(d, /^DEVICES before HELLO$/);
    expect(await answer).toBe("DEVICES before HELLO");
    expect(r.refusals.map((x) => x.reason)).toEqual(["DEVICES before HELLO"]);
  });

  test("stream frames before the HELLO are refused", async () => {
    const r = relay();
    const d = connect(r, "master", "tech-1", { hello: null });
    d.link.write(encodeFrame(FrameType.DATA, Flag.SYN, 1, encodeJson({ session: "s-abcd", target: "10.0.0.5:80" })));
    await refusedWith(d, /^stream frames before HELLO$/);
    expect(r.refusals).toMatchObject([{ presented: "tech-1 (master)", reason: "stream frames before HELLO" }]);
  });

  test("a bad frame before the HELLO is a logged protocol error", async () => {
    const r = relay();
    const d = connect(r, "onsite", "site-7", { hello: null });
    const h = encodeFrame(FrameType.DATA, 0, 1);
    h[1] = 0x77;
    d.link.write(h);
    await refusedWith(d, /unknown frame type 119/);
    expect(r.refusals).toMatchObject([{ presented: "site-7 (onsite)", reason: "protocol error: unknown frame type 119" }]);
  });

  test("silence after the handshake is closed at the HELLO deadline", async () => {
    const r = relay({ helloDeadline: 50 });
    const d = connect(r, "onsite", "site-1", { hello: null });
    await refusedWith(d, /^no HELLO within 0.05 s$/);
    expect(r.refusals).toMatchObject([{ presented: "site-1 (onsite)", reason: "no HELLO within 0.05 s" }]);
    expect(r.server.stats().pending_hello).toBe(0);
  });

  test("a second HELLO on the same connection closes it", async () => {
    const r = relay();
    const d = await online(r, "onsite", "site-1");
    d.conn.send(Msg.HELLO, { versions: [1], role: "onsite", id: "site-1" });
    await refusedWith(d, /^second HELLO$/);
  });
});

describe("inventory", () => {
  test("a second connection with the same id replaces the first, which hears why", async () => {
    const r = relay();
    const first = await online(r, "onsite", "site-1", "192.0.2.1");
    first.conn.send(Msg.INVENTORY, { hostname: "pi-1", location: "Royal Champagne", agent: "1.0", uptime: 100, uplink: "wifi" });
    await waitFor(() => r.server.deviceList()[0]?.hostname === "pi-1", 1_000, "the inventory");
    const second = await online(r, "onsite", "site-1", "192.0.2.2");
    const why = await first.conn.wait();
    expect(why.code).toBe(GoAwayCode.REPLACED);
    expect(why.message).toBe("replaced by a new connection of site-1 from 192.0.2.2");
    expect(r.warnings.join("\n")).toContain("site-1: a new connection from 192.0.2.2 replaces the one from 192.0.2.1");
    expect(second.conn.closed).toBe(false);
    await first.relayConn.wait();
    const list = r.server.deviceList();
    expect(list).toHaveLength(1);
    // Still online after the old connection's close arrived; the inventory is kept.
    expect(list[0]).toMatchObject({ id: "site-1", online: true, address: "192.0.2.2", hostname: "pi-1", location: "Royal Champagne" });
  });

  test("a master reconnecting replaces its old connection too", async () => {
    const r = relay();
    const first = await online(r, "master", "tech-1");
    await online(r, "master", "tech-1");
    expect((await first.conn.wait()).code).toBe(GoAwayCode.REPLACED);
    await first.relayConn.wait();
    expect(r.server.stats().masters).toBe(1);
  });

  test("DEVICES of a fleet bigger than one frame reaches the master whole", async () => {
    const r = relay();
    for (let i = 0; i < 600; i++) {
      const d = await online(r, "onsite", `site-${String(i).padStart(3, "0")}`);
      d.conn.send(Msg.INVENTORY, { hostname: `h${i}-${"x".repeat(100)}`, location: "Royal Champagne", agent: "1.0", uptime: i, uplink: "lte" });
    }
    const m = await online(r, "master", "tech-1");
    await waitFor(() => r.server.deviceList().filter((d) => d.hostname.startsWith("h")).length === 600, 5_000, "600 inventories");
    const list = (await m.conn.request(Msg.DEVICES, {})) as { id: string; hostname: string }[];
    expect(list).toHaveLength(600);
    expect(JSON.stringify(list).length).toBeGreaterThan(MAX_PAYLOAD);
    expect(list[599]).toMatchObject({ id: "site-599", hostname: `h599-${"x".repeat(100)}` });
  });

  test.each([
    ["before", false],
    ["after", true],
  ])("a control message spread over several frames %s the HELLO is a protocol error at the relay", async (_when, helloFirst) => {
    const r = relay();
    const d = helloFirst ? await online(r, "onsite", "site-1") : connect(r, "onsite", "site-1", { hello: null });
    d.conn.send(Msg.INVENTORY, { hostname: "h".repeat(MAX_PAYLOAD) });
    await refusedWith(d, new RegExp(`^protocol error: control message of more than ${MAX_PAYLOAD} bytes \\(the limit here\\)$`));
    expect(r.refusals).toMatchObject([{ presented: "site-1 (onsite)", reason: `protocol error: control message of more than ${MAX_PAYLOAD} bytes (the limit here)` }]);
  });

  test("a device that goes away is offline with its last-seen time", async () => {
    const r = relay();
    const d = await online(r, "onsite", "site-1");
    d.conn.close();
    await waitFor(() => r.server.deviceList()[0]?.online === false, 1_000, "offline");
    expect(r.server.deviceList()[0]).toMatchObject({ id: "site-1", online: false, rtt_ms: null });
  });
});

describe("pairing policy", () => {
  const rules: AccessRule[] = [{ masters: ["tech-*"], onsites: ["site-1"] }];

  test.each([
    ["site-9", ErrorCode.UNKNOWN_DEVICE, /^unknown device "site-9": it has never connected to this relay$/],
    ["site-2", ErrorCode.FORBIDDEN, /^tech-1 is not allowed to reach site-2 \(relay access policy\)$/],
    ["site-1", ErrorCode.OFFLINE, /^device site-1 is offline$/],
  ])("a session to %s is refused with %s", async (onsite, code, message) => {
    const r = relay({ rules });
    const s1 = await online(r, "onsite", "site-1");
    await online(r, "onsite", "site-2");
    s1.conn.close();
    await waitFor(() => r.server.deviceList().find((d) => d.id === "site-1")?.online === false, 1_000, "site-1 offline");
    const m = await online(r, "master", "tech-1");
    const err = (await m.conn.request(Msg.SESSION_OPEN, { onsite, targets: ["10.0.0.5:80"] }).catch((e: RemoteError) => e)) as RemoteError;
    expect(err).toBeInstanceOf(RemoteError);
    expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
    // Only a policy refusal is an audit event; an unknown or offline device is not.
    expect(r.refusals.map((x) => x.reason)).toEqual(code === ErrorCode.FORBIDDEN ? [err.message] : []);
  });

  test("a master outside the rules is forbidden, and sees only the devices it may reach", async () => {
    const r = relay({ rules });
    await online(r, "onsite", "site-1");
    await online(r, "onsite", "site-2");
    const ops = await online(r, "master", "ops-1");
    const tech = await online(r, "master", "tech-1");
    expect((await ops.conn.request(Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"] }).catch((e: RemoteError) => e.code))).toBe(ErrorCode.FORBIDDEN);
    expect(await ops.conn.request(Msg.DEVICES, {})).toEqual([]);
    expect(((await tech.conn.request(Msg.DEVICES, {})) as { id: string }[]).map((d) => d.id)).toEqual(["site-1"]);
    const s = (await tech.conn.request(Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"] })) as SessionInfo;
    expect(s).toMatchObject({ master: "tech-1", onsite: "site-1", targets: ["10.0.0.5:80"], expires: null });
  });

  test("no rules: every master of the fleet may reach every device", async () => {
    const r = relay();
    await online(r, "onsite", "site-2");
    const m = await online(r, "master", "anyone");
    expect(await m.conn.request(Msg.SESSION_OPEN, { onsite: "site-2", targets: ["10.0.0.5:80"] })).toMatchObject({ onsite: "site-2" });
  });

  test.each([
    ["no targets", { onsite: "site-1", targets: [] }, /^targets: expected 1-64 HOST:PORT strings$/],
    ["a target that is not HOST:PORT", { onsite: "site-1", targets: ["nonsense"] }, /target/],
    ["a TTL under a second", { onsite: "site-1", targets: ["10.0.0.5:80"], ttl: 5 }, /^ttl: expected milliseconds between 1 s and 7 days$/],
    ["no device id", { targets: ["10.0.0.5:80"] }, /^onsite: expected a device id$/],
  ])("a SESSION_OPEN with %s is a BAD_REQUEST that says what is wrong", async (_name, body, message) => {
    const r = relay();
    await online(r, "onsite", "site-1");
    const m = await online(r, "master", "tech-1");
    const err = (await m.conn.request(Msg.SESSION_OPEN, body).catch((e: RemoteError) => e)) as RemoteError;
    expect(err.code).toBe(ErrorCode.BAD_REQUEST);
    expect(err.message).toMatch(message);
    expect(m.conn.closed).toBe(false);
  });
});

async function session(r: Relay, opts: { ttl?: number; targets?: string[] } = {}) {
  const onsite = await online(r, "onsite", "site-1");
  const master = await online(r, "master", "tech-1");
  const info = (await master.conn.request(Msg.SESSION_OPEN, { onsite: "site-1", targets: opts.targets ?? ["10.0.0.5:80"], ...(opts.ttl ? { ttl: opts.ttl } : {}) })) as SessionInfo;
  return { onsite, master, info };
}

describe("sessions", () => {
  test("the TTL ends a session, with the reason to both sides, and resets its streams", async () => {
    const r = relay();
    const { onsite, master, info } = await session(r, { ttl: 1_000 });
    expect(info.expires).not.toBeNull();
    const s = master.conn.openStream({ session: info.session, target: "10.0.0.5:80" });
    let err: StreamError | null = null;
    s.onclose = (e) => (err = e);
    await waitFor(() => master.closes.length === 1 && onsite.closes.length === 1, 3_000, "SESSION_CLOSE on both sides");
    for (const d of [master, onsite]) expect(d.closes[0]).toEqual({ session: info.session, reason: "TTL of 1 s reached", final: true });
    await waitFor(() => err !== null, 1_000, "the stream to be reset");
    expect(err!.code).toBe(ResetCode.NO_SESSION);
    expect(err!.message).toBe("session ended: TTL of 1 s reached");
    expect(r.server.sessionList()).toEqual([]);
  });

  test("an onsite device going away ends its sessions, and the master hears why", async () => {
    const r = relay();
    const { onsite, master, info } = await session(r);
    onsite.conn.close(GoAwayCode.SHUTDOWN, "rebooting");
    await waitFor(() => master.closes.length === 1, 1_000, "SESSION_CLOSE to the master");
    expect(master.closes[0]).toEqual({ session: info.session, reason: "onsite site-1 went offline: rebooting", final: false });
    expect(r.server.sessionList()).toEqual([]);
  });

  test("a master going away ends its sessions, and the onsite device hears why", async () => {
    const r = relay();
    const { onsite, master, info } = await session(r);
    master.conn.close(GoAwayCode.NORMAL, "bye");
    await waitFor(() => onsite.closes.length === 1, 1_000, "SESSION_CLOSE to the onsite device");
    expect(onsite.closes[0]).toEqual({ session: info.session, reason: "master tech-1 disconnected: bye", final: false });
  });

  test("a peer leaving with a huge GOAWAY reason cannot break the relay's SESSION_CLOSE to the other side", async () => {
    const r = relay();
    const { onsite, master, info } = await session(r);
    // The largest GOAWAY a frame can carry: a u32 code and 65,532 bytes of reason.
    const payload = new Uint8Array(MAX_PAYLOAD);
    payload.fill(0x7a, 4);
    master.link.write(encodeFrame(FrameType.GOAWAY, 0, 0, payload));
    await waitFor(() => onsite.closes.length === 1, 1_000, "SESSION_CLOSE to the onsite device");
    const reason = String(onsite.closes[0]!.reason);
    expect(reason).toStartWith("master tech-1 disconnected: zzz");
    expect(reason.length).toBe("master tech-1 disconnected: ".length + 1024);
    expect(onsite.closes[0]!.session).toBe(info.session);
    // The relay goes on serving.
    expect(onsite.conn.closed).toBe(false);
    const again = await online(r, "master", "tech-1");
    expect(await again.conn.request(Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"] })).toMatchObject({ master: "tech-1" });
  });

  test("one master cannot open sessions without end; ending one makes room", async () => {
    const r = relay();
    await online(r, "onsite", "site-1");
    const m = await online(r, "master", "tech-1");
    const opened: SessionInfo[] = [];
    for (let i = 0; i < Limits.maxSessionsPerMaster; i++) opened.push((await m.conn.request(Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"] })) as SessionInfo);
    const err = (await m.conn.request(Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"] }).catch((e: RemoteError) => e)) as RemoteError;
    expect(err.code).toBe(ErrorCode.REFUSED);
    expect(err.message).toBe(`tech-1 already has ${Limits.maxSessionsPerMaster} sessions (limit ${Limits.maxSessionsPerMaster}); end some with agent disconnect`);
    // Another master is not affected, and re-opening an existing id is not a new session.
    const other = await online(r, "master", "tech-2");
    expect(await other.conn.request(Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"] })).toMatchObject({ master: "tech-2" });
    expect(await m.conn.request(Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"], session: opened[0]!.session })).toMatchObject({ session: opened[0]!.session });
    await m.conn.request(Msg.SESSION_END, { session: opened[1]!.session });
    expect(await m.conn.request(Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"] })).toMatchObject({ master: "tech-1" });
  });

  test("SESSION_END by the master ends it for both", async () => {
    const r = relay();
    const { onsite, master, info } = await session(r);
    await master.conn.request(Msg.SESSION_END, { session: info.session, reason: "done" });
    await waitFor(() => onsite.closes.length === 1, 1_000, "SESSION_CLOSE to the onsite device");
    expect(onsite.closes[0]).toEqual({ session: info.session, reason: "ended by tech-1: done", final: true });
    const err = (await master.conn.request(Msg.SESSION_END, { session: info.session }).catch((e: RemoteError) => e)) as RemoteError;
    expect(err.code).toBe(ErrorCode.NO_SESSION);
  });
});

function collect(s: Stream) {
  const r = { bytes: 0, ended: false, error: null as StreamError | null, closed: false, text: "" };
  s.ondata = (c) => {
    r.bytes += c.length;
    if (r.text.length < 100) r.text += new TextDecoder().decode(c);
  };
  s.onend = () => (r.ended = true);
  s.onclose = (e) => {
    r.closed = true;
    r.error = e;
  };
  return r;
}

describe("stream routing", () => {
  test("a master's stream reaches the onsite device with the session, target and master; data and FIN both ways", async () => {
    const r = relay();
    const { onsite, master, info } = await session(r);
    const s = master.conn.openStream({ session: info.session, target: "10.0.0.5:80" });
    const m = collect(s);
    s.resume();
    s.write(new TextEncoder().encode("GET /"));
    s.end();
    await waitFor(() => onsite.streams.length === 1, 1_000, "the stream at the onsite device");
    const o = onsite.streams[0]!;
    expect(o.open).toEqual({ session: info.session, target: "10.0.0.5:80", master: "tech-1" });
    const oc = collect(o);
    o.accept();
    o.resume();
    await waitFor(() => oc.ended, 1_000, "the request and its FIN");
    expect(oc.text).toBe("GET /");
    o.write(new TextEncoder().encode("200 OK"));
    o.end();
    await waitFor(() => m.closed && oc.closed, 1_000, "both ends closed");
    expect(m.text).toBe("200 OK");
    expect(m.error).toBeNull();
    expect(r.server.stats().streams).toBe(0);
  });

  test("a reset travels through the relay with its reason", async () => {
    const r = relay();
    const { onsite, master, info } = await session(r);
    const m = collect(master.conn.openStream({ session: info.session, target: "10.0.0.5:80" }));
    await waitFor(() => onsite.streams.length === 1, 1_000, "the stream at the onsite device");
    onsite.streams[0]!.reset(ResetCode.UNREACHABLE, "connect 10.0.0.5:80: connection refused");
    await waitFor(() => m.closed, 1_000, "the reset at the master");
    expect({ code: m.error!.code, message: m.error!.message }).toEqual({ code: ResetCode.UNREACHABLE, message: "connect 10.0.0.5:80: connection refused" });
    // The relay forgot the route before it passed the reset on, so nothing to wait for.
    expect(r.server.stats().streams).toBe(0);
  });

  test.each([
    ["to a session that does not exist", (_s: string) => ({ session: "s-nope1234", target: "10.0.0.5:80" }), ResetCode.NO_SESSION, /^no session "s-nope1234"$/],
    ["without a session", (_s: string) => ({ target: "10.0.0.5:80" }), ResetCode.NO_SESSION, /^no session undefined$/],
    ["to a target outside the session", (s: string) => ({ session: s, target: "10.0.0.6:22" }), ResetCode.REFUSED, /^target "10.0.0.6:22" is not part of session s-/],
  ])("a stream %s is reset without reaching the device", async (_name, header, code, reason) => {
    const r = relay();
    const { onsite, master, info } = await session(r);
    const m = collect(master.conn.openStream(header(info.session)));
    await waitFor(() => m.closed, 1_000, "the reset");
    expect(m.error!.code).toBe(code);
    expect(m.error!.message).toMatch(reason);
    expect(onsite.streams).toEqual([]);
  });

  test("an onsite device may not open streams", async () => {
    const r = relay();
    const { onsite, master, info } = await session(r);
    const o = collect(onsite.conn.openStream({ session: info.session, target: "10.0.0.5:80" }));
    await waitFor(() => o.closed, 1_000, "the reset");
    expect({ code: o.error!.code, message: o.error!.message }).toEqual({ code: ResetCode.REFUSED, message: "only a master opens streams" });
    expect(master.streams).toEqual([]);
  });

  test("a peer sending past its credit gets the stream reset on both sides, and the session goes on", async () => {
    const r = relay();
    const { onsite, master, info } = await session(r);
    const s = master.conn.openStream({ session: info.session, target: "10.0.0.5:80" });
    const m = collect(s);
    await waitFor(() => onsite.streams.length === 1, 1_000, "the stream at the onsite device");
    const o = collect(onsite.streams[0]!);
    // Bypass the master's own flow control: one window, then one byte more, on the raw link.
    master.link.write(encodeFrame(FrameType.DATA, 0, s.id, new Uint8Array(MAX_PAYLOAD)));
    master.link.write(encodeFrame(FrameType.DATA, 0, s.id, new Uint8Array(1)));
    await waitFor(() => m.closed && o.closed, 1_000, "both ends reset");
    for (const x of [m, o]) expect({ code: x.error!.code, message: x.error!.message }).toEqual({ code: ResetCode.PROTOCOL, message: "tech-1 sent past its credit" });
    expect(r.server.stats().streams).toBe(0);
    // The connections and the session survive one bad stream.
    expect(master.conn.closed || onsite.conn.closed).toBe(false);
    const s2 = master.conn.openStream({ session: info.session, target: "10.0.0.5:80" });
    const again = collect(s2);
    s2.resume();
    await waitFor(() => onsite.streams.length === 2, 1_000, "a new stream");
    onsite.streams[1]!.write(new TextEncoder().encode("ok"));
    await waitFor(() => again.text === "ok", 1_000, "data on the new stream");
  });

  test("a master cannot use or end another master's session", async () => {
    const r = relay();
    const { onsite, info } = await session(r);
    const intruder = await online(r, "master", "tech-2");
    const m = collect(intruder.conn.openStream({ session: info.session, target: "10.0.0.5:80" }));
    await waitFor(() => m.closed, 1_000, "the reset");
    expect(m.error!.code).toBe(ResetCode.NO_SESSION);
    expect(onsite.streams).toEqual([]);
    const err = (await intruder.conn.request(Msg.SESSION_END, { session: info.session }).catch((e: RemoteError) => e)) as RemoteError;
    expect(err.code).toBe(ErrorCode.NO_SESSION);
    expect(r.server.sessionList()).toHaveLength(1);
    expect(await intruder.conn.request(Msg.SESSIONS, {})).toEqual([]);
    // Nor take its id over by opening a session with it.
    const taken = (await intruder.conn.request(Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"], session: info.session }).catch((e: RemoteError) => e)) as RemoteError;
    expect(taken.code).toBe(ErrorCode.BAD_REQUEST);
    expect(taken.message).toBe(`session id ${info.session} is taken`);
  });

  test("a frozen master reader holds the relay to one window for that stream, and other sessions keep flowing", async () => {
    const r = relay();
    const { onsite, master, info } = await session(r);
    // A second master with its own session to the same device.
    const other = await online(r, "master", "tech-2");
    const info2 = (await other.conn.request(Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"] })) as SessionInfo;

    const frozen = master.conn.openStream({ session: info.session, target: "10.0.0.5:80" });
    const live = other.conn.openStream({ session: info2.session, target: "10.0.0.5:80" });
    const liveSink = collect(live);
    live.resume();
    await waitFor(() => onsite.streams.length === 2, 1_000, "both streams at the device");
    // The master stops reading its socket altogether (its stream was never resumed either).
    master.link.pause();
    const toFrozen = onsite.streams.find((s) => s.open.session === info.session)!;
    const toLive = onsite.streams.find((s) => s.open.session === info2.session)!;
    const total = 4 * 1024 * 1024;
    const pumpTo = (s: Stream) => {
      let sent = 0;
      const more = () => {
        while (sent < total) {
          sent += 16 * 1024;
          if (!s.write(new Uint8Array(16 * 1024))) return;
        }
        s.end();
      };
      s.ondrain = more;
      more();
    };
    pumpTo(toFrozen);
    pumpTo(toLive);
    await waitFor(() => liveSink.ended, 10_000, "the other session's stream to finish");
    expect(liveSink.bytes).toBe(total);
    // What the relay holds for the frozen master: one window of data plus frame headers.
    const relayToMaster = master.relayLink.queued;
    expect(relayToMaster).toBeGreaterThan(0);
    expect(relayToMaster).toBeLessThanOrEqual(WINDOW + 64 * 16);
    expect(toFrozen.bytesOut).toBe(WINDOW);
    expect(frozen.closed).toBe(false);
  });
});

test("many busy streams towards a device on a slow uplink cannot get it disconnected", async () => {
  const r = relay({ window: Limits.streamWindow });
  const { onsite, master, info } = await session(r);
  const limit = maxRoutedStreams(Limits.streamWindow);
  expect(limit).toBeLessThan(Limits.maxStreams);
  onsite.link.pause(); // the device reads nothing for a while
  const results = Array.from({ length: limit + 20 }, () => {
    const s = master.conn.openStream({ session: info.session, target: "10.0.0.5:80" });
    const c = collect(s);
    s.write(new Uint8Array(Limits.streamWindow)); // each stream sends exactly its credit
    return c;
  });
  await waitFor(() => results.filter((c) => c.closed).length === 20, 5_000, "the streams beyond the limit to be refused");
  for (const c of results.filter((x) => x.closed)) expect(c.error!.message).toBe(`too many streams on one connection (limit ${limit})`);
  // Every admitted stream's window ends up queued for the device, and the relay keeps it connected.
  await waitFor(() => onsite.relayLink.queued > limit * Limits.streamWindow, 10_000, "every admitted window to reach the relay");
  expect(onsite.relayLink.queued).toBeLessThan(Limits.maxQueued);
  expect(r.server.deviceList()[0]!.online).toBe(true);
  onsite.link.resume();
  await waitFor(() => onsite.streams.length === limit, 5_000, "the device to catch up");
  expect(onsite.conn.closed).toBe(false);
});

describe("revocation and shutdown", () => {
  test("enforceRevocations closes live connections of revoked serials, logged", async () => {
    const r = relay();
    const a = await online(r, "onsite", "site-1");
    const b = await online(r, "onsite", "site-2");
    expect(r.server.enforceRevocations((serial) => serial === "serial-site-2")).toBe(1);
    const why = await b.conn.wait();
    expect({ code: why.code, message: why.message }).toEqual({ code: GoAwayCode.REVOKED, message: "certificate serial-site-2 of site-2 is revoked" });
    expect(a.conn.closed).toBe(false);
    expect(r.refusals).toMatchObject([{ presented: "site-2 (onsite)", reason: "certificate serial-site-2 was revoked; closing its live connection" }]);
  });

  test("a connection that passed TLS before the revocation but has not said HELLO yet is closed too", async () => {
    const r = relay();
    const pending = connect(r, "onsite", "site-5", { hello: null });
    expect(r.server.enforceRevocations((serial) => serial === "serial-site-5")).toBe(1);
    // Its HELLO, had it come now, must not register a revoked device.
    pending.conn.send(Msg.HELLO, { versions: [1], role: "onsite", id: "site-5" });
    const why = await pending.conn.wait();
    expect({ code: why.code, message: why.message }).toEqual({ code: GoAwayCode.REVOKED, message: "certificate serial-site-5 of site-5 is revoked" });
    // The relay closed its end at once, so that HELLO can never be read.
    expect(pending.relayConn.closed).toBe(true);
    expect(r.server.deviceList()).toEqual([]);
    expect(r.refusals).toMatchObject([{ presented: "site-5 (onsite)", reason: "certificate serial-site-5 was revoked; closing its live connection" }]);
  });

  test("close() tells every peer, including one that has not said HELLO", async () => {
    const r = relay();
    const { onsite, master } = await session(r);
    const pending = connect(r, "onsite", "site-3", { hello: null });
    await r.server.close();
    for (const d of [onsite, master, pending]) {
      const why = await d.conn.wait();
      expect({ code: why.code, message: why.message }).toEqual({ code: GoAwayCode.SHUTDOWN, message: "relay is shutting down" });
    }
    expect(master.closes).toMatchObject([{ reason: "relay is shutting down", final: false }]);
    // A connection after close() is turned away at once.
    const late = connect(r, "onsite", "site-4", { hello: null });
    expect((await late.conn.wait()).message).toBe("relay is shutting down");
  });
});
