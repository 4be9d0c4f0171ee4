// Freezes the wire vocabulary: frame types, flags, reset and goaway codes and the control
// message catalogue. A change here breaks devices in the field running the previous version:
// only add new ids, never renumber (docs/protocol.md says the same).
// The second half: one decoder per message, round trips for every body and reply, rejections
// that name the field, typed request/handle over real Connections, and the doc's numbers.
import { afterEach, describe, expect, test } from "bun:test";
import { Flag, FrameType, GoAwayCode, ResetCode, FRAME_VERSION, HEADER_SIZE, MAX_CONTROL_MESSAGE, MAX_PAYLOAD, MAX_REASON } from "../src/transport/frame.ts";
import {
  ErrorCode, MAX_SESSION_TTL, MAX_TARGETS, MessageError, Msg, PROTOCOL_VERSIONS, decoders, isKnownMsg, msgName, replyDecoders,
  type BodyOf, type MsgType, type ReplyOf, type RequestMsg,
} from "../src/transport/messages.ts";
import { CONTROL_SLACK, Limits, Timing, maxRoutedStreams } from "../src/transport/policy.ts";
import { Connection, RemoteError } from "../src/transport/mux.ts";
import { linkPair } from "../src/transport/link.ts";
import { handle, on, request, send } from "../src/transport/typed.ts";

test("frame format constants", () => {
  expect(FRAME_VERSION).toBe(1);
  expect(HEADER_SIZE).toBe(12);
  expect(MAX_PAYLOAD).toBe(65536);
  expect(PROTOCOL_VERSIONS).toEqual([1]);
});

test("frame type ids are frozen", () => {
  expect({ ...FrameType }).toEqual({ DATA: 0, WINDOW: 1, PING: 2, GOAWAY: 3, RESET: 4, CONTROL: 5, PACKET: 6 });
});

test("flag bits are frozen", () => {
  expect({ ...Flag }).toEqual({ SYN: 1, ACK: 2, FIN: 4, MORE: 8 });
});

test("reset codes are frozen", () => {
  expect({ ...ResetCode }).toEqual({ CANCEL: 0, REFUSED: 1, UNREACHABLE: 2, PROTOCOL: 3, NO_SESSION: 4, INTERNAL: 5 });
});

test("goaway codes are frozen", () => {
  expect({ ...GoAwayCode }).toEqual({ NORMAL: 0, PROTOCOL: 1, REPLACED: 2, REVOKED: 3, KEEPALIVE: 4, SHUTDOWN: 5, INTERNAL: 6, DUPLICATE: 7 });
});

test("control message ids are frozen", () => {
  expect({ ...Msg }).toEqual({
    HELLO: 1,
    WELCOME: 2,
    REPLY: 3,
    INVENTORY: 10,
    DEVICES: 11,
    HEARTBEAT_KEY: 12,
    SESSION_OPEN: 20,
    SESSION_OFFER: 21,
    SESSION_CLOSE: 22,
    SESSIONS: 23,
    SESSION_END: 24,
    TUNNEL_MODE: 25,
    SESSION_EXTEND: 26,
    SESSION_EXPIRES: 27,
    NAT_REQUEST: 30,
    MESH_OPEN: 40,
  });
});

test("reply error codes are frozen (a CLI maps them to messages)", () => {
  expect({ ...ErrorCode }).toEqual({
    BAD_REQUEST: "bad_request",
    UNKNOWN_DEVICE: "unknown_device",
    OFFLINE: "offline",
    FORBIDDEN: "forbidden",
    REFUSED: "refused",
    NO_SESSION: "no_session",
    VERSION: "version",
    INTERNAL: "internal",
    BUSY: "busy",
  });
});

test.each([
  ["FrameType", FrameType as Record<string, number>, 0xff],
  ["ResetCode", ResetCode as Record<string, number>, 0xffffffff],
  ["GoAwayCode", GoAwayCode as Record<string, number>, 0xffffffff],
  ["Msg", Msg as Record<string, number>, 0xffff],
])("%s ids are unique and fit their wire field", (_name, table, max) => {
  const ids = Object.values(table);
  expect(new Set(ids).size).toBe(ids.length);
  for (const id of ids) {
    expect(Number.isInteger(id)).toBe(true);
    expect(id).toBeGreaterThanOrEqual(0);
    expect(id).toBeLessThanOrEqual(max);
  }
});

test("the catalogue lookup knows exactly the listed messages", () => {
  for (const [name, id] of Object.entries(Msg)) {
    expect(isKnownMsg(id)).toBe(true);
    expect(msgName(id)).toBe(name);
  }
  const known = new Set<number>(Object.values(Msg));
  for (let id = 0; id <= 0xffff; id++) if (!known.has(id)) expect(isKnownMsg(id)).toBe(false);
  expect(msgName(999)).toBe("#999");
});

test("docs/protocol.md documents every frame type, message and error code with its id", async () => {
  const doc = await Bun.file(new URL("../docs/protocol.md", import.meta.url)).text();
  for (const [name, id] of Object.entries(FrameType)) expect(doc).toMatch(new RegExp(`\\|\\s*${id}\\s*\\|\\s*${name}\\s*\\|`));
  for (const [name, id] of Object.entries(Msg)) expect(doc).toMatch(new RegExp(`\\|\\s*${id}\\s*\\|\\s*${name}\\s*\\|`));
  for (const [name, id] of Object.entries(ResetCode)) expect(doc).toContain(`${id} ${name}`);
  for (const [name, id] of Object.entries(GoAwayCode)) expect(doc).toContain(`${id} ${name}`);
  for (const [name, bit] of Object.entries(Flag)) expect(doc).toContain(`\`${name} = ${bit}\``);
  for (const code of Object.values(ErrorCode)) expect(doc).toContain(`\`${code}\``);
});

// ---- bodies ---------------------------------------------------------------------------------

const device = { id: "site-1", hostname: "pi-1", location: "Royal Champagne", address: "198.51.100.7", agent: "agent/1.0", uptime: 100, uplink: "wifi", online: true, connected_since: "2026-12-01T08:00:00.000Z", last_seen: "2026-12-01T08:05:00.000Z", rtt_ms: 12 };
const session = { session: "s-1a2b3c4d", master: "tech-1", onsite: "site-1", targets: ["10.0.0.5:80", "nas.lan:443"], opened: "2026-12-01T08:00:00.000Z", expires: null };

/** A sample body of every message, in the shape its decoder returns. */
const bodies: { [M in MsgType]: BodyOf<M>[] } = {
  [Msg.HELLO]: [{ versions: [1], role: "onsite", id: "site-1", agent: "agent/1.0" }],
  [Msg.WELCOME]: [{ version: 1, relay: "relay-1", address: "198.51.100.7", keepalive: 5000 }],
  [Msg.REPLY]: [
    { rid: 7, ok: true, result: [device] },
    { rid: 8, ok: false, code: ErrorCode.OFFLINE, error: "device site-1 is offline" },
  ],
  [Msg.INVENTORY]: [
    { hostname: "pi-1", location: "", agent: "agent/1.0", uptime: 3600, uplink: "lte" },
    { hostname: "pi-1", location: "", agent: "agent/1.0", uptime: 3600, uplink: "lte", services: [{ name: "Router web UI", target: "192.168.1.1:80", kind: "http" }, { name: "NAS", target: "nas.lan:22", kind: "ssh", description: "the backup box" }] },
  ],
  [Msg.DEVICES]: [{}],
  [Msg.HEARTBEAT_KEY]: [{ key: Buffer.alloc(32, 7).toString("base64"), port: 4443 }],
  [Msg.SESSION_OPEN]: [
    { onsite: "site-1", targets: ["10.0.0.5:80"], ttl: null, session: null },
    { onsite: "site-1", targets: ["10.0.0.5:80", "[2001:db8::1]:22"], ttl: 3_600_000, session: "s-1a2b3c4d" },
    { onsite: "site-1", targets: [], ttl: null, session: null, tunnel: { mode: "routed", addressing: { master: "10.99.0.1/30", onsite: "10.99.0.2/30" } } },
    { onsite: "site-1", targets: [], ttl: null, session: null, tunnel: { mode: "bridged" }, udp: ["192.168.1.1:53"] },
  ],
  [Msg.SESSION_OFFER]: [
    { session: "s-1a2b3c4d", master: "tech-1", targets: ["10.0.0.5:80"], expires: "2026-12-01T09:00:00.000Z" },
    { session: "s-1a2b3c4d", master: "tech-1", targets: ["10.0.0.5:80"], expires: null },
    { session: "s-1a2b3c4d", master: "tech-1", targets: [], expires: null, tunnel: { mode: "routed", addressing: { master: "10.99.0.1/30", onsite: "10.99.0.2/30" } }, udp: ["192.168.1.1:53"] },
  ],
  [Msg.SESSION_CLOSE]: [{ session: "s-1a2b3c4d", reason: "TTL of 60 s reached", final: true }],
  [Msg.SESSIONS]: [{}],
  [Msg.SESSION_END]: [
    { session: "s-1a2b3c4d", reason: "done" },
    { session: "s-1a2b3c4d", reason: null },
  ],
  [Msg.TUNNEL_MODE]: [
    { session: "s-1a2b3c4d", mode: "bridged" },
    { session: "s-1a2b3c4d", mode: "routed", addressing: { master: "10.99.0.5/30", onsite: "10.99.0.6/30" } },
  ],
  [Msg.SESSION_EXTEND]: [{ session: "s-1a2b3c4d", ttl: 1_800_000 }],
  [Msg.SESSION_EXPIRES]: [{ session: "s-1a2b3c4d", expires: "2026-12-01T09:30:00.000Z" }],
  [Msg.NAT_REQUEST]: [
    { session: "s-1a2b3c4d", proto: "udp", port: "8080", to: "192.168.1.50:80", ttl: "15m", iface: "eth0" },
    { session: "s-1a2b3c4d", port: 8080, to: "192.168.1.50:80", ttl: 60_000, source: "203.0.113.7" },
  ],
  [Msg.MESH_OPEN]: [
    { onsite: "site-1", targets: ["10.0.0.5:80"], ttl: 60_000, session: "s-1a2b3c4d", master: "tech-1", address: "203.0.113.7:50312" },
    { onsite: "site-1", targets: [], ttl: null, session: "s-1a2b3c4d", tunnel: { mode: "routed", addressing: { master: "10.99.0.1/30", onsite: "10.99.0.2/30" } }, udp: ["192.168.1.1:53"], master: "tech-1", address: "[2001:db8::7]:443" },
  ],
};

const replies: { [M in RequestMsg]: ReplyOf<M>[] } = {
  [Msg.DEVICES]: [
    [device, { ...device, id: "site-2", online: false, rtt_ms: null }],
    [],
    [
      {
        ...device,
        online: false,
        rtt_ms: null,
        state: "alive",
        status: "tunnel down, alive over wwan0",
        heartbeat: { at: "2026-12-01T08:05:00.000Z", via: "wwan0", from: "198.51.100.9:4000", payload: { iv: 25 } as never },
        heard_over: { wwan0: "2026-12-01T08:05:00.000Z" },
        first_seen: "2026-11-01T08:00:00.000Z",
        cert_expires: null,
        services: [{ name: "Router web UI", target: "192.168.1.1:80", kind: "https", description: "admin" }],
      },
    ],
  ],
  [Msg.SESSION_OPEN]: [session, { ...session, expires: "2026-12-01T09:00:00.000Z" }],
  [Msg.SESSION_OFFER]: [{}, { warnings: ["w"], tunnel: { mode: "routed", subnets: ["192.168.1.0/24"], onsite: { iface: "agt-t-1", addresses: ["10.99.0.2/30"], routes: [] } } }],
  [Msg.SESSIONS]: [[session, { ...session, targets: [], udp: ["192.168.1.1:53"], tunnel: { mode: "routed", subnets: ["192.168.1.0/24"], onsite: { iface: "agt-t-1", addresses: ["10.99.0.2/30"], routes: [] }, addressing: { master: "10.99.0.1/30", onsite: "10.99.0.2/30" }, relay: { to_onsite: { packets_out: 3, bytes_out: 300, packets_in: 3, bytes_in: 300, drops: { queue_full: 1, oversize: 0, closed: 0, no_stream: 0, device: 0 } }, to_master: { packets_out: 0, bytes_out: 0, packets_in: 0, bytes_in: 0, drops: { queue_full: 0, oversize: 0, closed: 0, no_stream: 0, device: 0 } } } } }], []],
  [Msg.SESSION_END]: [{}],
  [Msg.TUNNEL_MODE]: [{ mode: "bridged", subnets: [], onsite: { iface: "agt-p-1", addresses: [], routes: [], bridge: "br-lan" } }],
  [Msg.SESSION_EXTEND]: [{ ...session, expires: "2026-12-01T09:30:00.000Z" }],
  [Msg.NAT_REQUEST]: [{ rule: { id: "r1", proto: "tcp", port: 8080 }, created: true }],
  [Msg.MESH_OPEN]: [session],
};

const wire = (v: unknown) => JSON.parse(JSON.stringify(v));

describe("every message has a body type, a decoder and samples", () => {
  test("the catalogue's decoders cover exactly the messages", () => {
    expect(Object.keys(decoders).map(Number).sort((a, b) => a - b)).toEqual(Object.values(Msg).slice().sort((a, b) => a - b));
    expect(Object.keys(bodies).map(Number).sort((a, b) => a - b)).toEqual(Object.values(Msg).slice().sort((a, b) => a - b));
  });

  test.each(Object.values(Msg).flatMap((id) => (bodies[id] as unknown[]).map((b, i) => [`${msgName(id)} #${i + 1}`, id, b] as const)))("%s: encode → decode is the same body", (_name, id, body) => {
    expect(decoders[id](wire(body)) as unknown).toEqual(body);
  });

  test.each(Object.entries(replies).flatMap(([id, list]) => (list as unknown[]).map((r, i) => [`${msgName(Number(id))} #${i + 1}`, Number(id) as RequestMsg, r] as const)))("%s reply: encode → decode is the same result", (_name, id, result) => {
    expect(replyDecoders[id](wire(result)) as unknown).toEqual(result);
  });

  test("fields a newer peer adds are ignored, absent optional ones get their default", () => {
    expect(decoders[Msg.HELLO]({ versions: [1, 2], role: "master", id: "tech-1", colour: "blue" })).toEqual({ versions: [1, 2], role: "master", id: "tech-1", agent: "" });
    expect(decoders[Msg.SESSION_OPEN]({ onsite: "site-1", targets: ["10.0.0.5:80", "10.0.0.5:80"], rid: 4 })).toEqual({ onsite: "site-1", targets: ["10.0.0.5:80"], ttl: null, session: null });
    expect(decoders[Msg.NAT_REQUEST]({ session: "s-1a2b3c4d", rid: 3, extra: { a: 1 } })).toEqual({ session: "s-1a2b3c4d" });
    expect(replyDecoders[Msg.SESSION_END](null)).toEqual({});
  });
});

describe("a malformed body is refused with the field and what it must be", () => {
  test.each([
    [Msg.HELLO, [1], "body: expected a JSON object, got an array"],
    [Msg.HELLO, { versions: [1], id: "x" }, "role: expected a string, got nothing"],
    [Msg.HELLO, { versions: [0], role: "master", id: "x" }, "versions: expected an array of protocol version numbers, got an array"],
    [Msg.WELCOME, { version: 1, relay: "r", address: "a", keepalive: -1 }, "keepalive: expected milliseconds, got -1"],
    [Msg.WELCOME, { version: "1", relay: "r", address: "a", keepalive: 5000 }, 'version: expected a protocol version number, got "1"'],
    [Msg.REPLY, { rid: 1 }, "ok: expected true or false, got nothing"],
    [Msg.REPLY, { rid: 1, ok: false, error: "x" }, "code: expected a string, got nothing"],
    [Msg.INVENTORY, { hostname: "pi", location: "", agent: "a", uptime: -5, uplink: "" }, "uptime: expected seconds (a number ≥ 0), got -5"],
    [Msg.INVENTORY, { hostname: 7, location: "", agent: "a", uptime: 1, uplink: "" }, "hostname: expected a string, got 7"],
    [Msg.INVENTORY, { hostname: "pi", location: "", agent: "a", uptime: 1, uplink: "", services: [{ name: "x", target: "10.0.0.1:80", kind: "gopher" }] }, 'services[0].kind: expected one of http, https, ssh, rdp, vnc, tcp, got "gopher"'],
    [Msg.INVENTORY, { hostname: "pi", location: "", agent: "a", uptime: 1, uplink: "", services: [{ name: "x", target: "nowhere", kind: "ssh" }] }, 'services[0].target: expected HOST:PORT such as relay.example.net:443, got "nowhere"'],
    [Msg.INVENTORY, { hostname: "pi", location: "", agent: "a", uptime: 1, uplink: "", services: [{ name: " ", target: "10.0.0.1:22", kind: "ssh" }] }, 'services[0].name: expected a name that is not empty, got " "'],
    [Msg.SESSION_EXTEND, { session: "s-1a2b3c4d", ttl: 999 }, "ttl: expected milliseconds (an integer of at least 1000), got 999"],
    [Msg.SESSION_EXPIRES, { session: "s-1a2b3c4d", expires: "soon" }, 'expires: expected an ISO time, got "soon"'],
    [Msg.DEVICES, null, "body: expected a JSON object, got null"],
    [Msg.SESSION_OPEN, { targets: ["10.0.0.5:80"] }, "onsite: expected a device id"],
    [Msg.SESSION_OPEN, { onsite: "site-1", targets: [] }, `targets: expected 1-${MAX_TARGETS} HOST:PORT strings`],
    [Msg.SESSION_OPEN, { onsite: "site-1", targets: Array(MAX_TARGETS + 1).fill("10.0.0.5:80") }, `targets: expected 1-${MAX_TARGETS} HOST:PORT strings`],
    [Msg.SESSION_OPEN, { onsite: "site-1", targets: [80] }, "targets: expected HOST:PORT strings"],
    [Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80", "nonsense"] }, 'targets[1]: expected HOST:PORT such as relay.example.net:443, got "nonsense"'],
    [Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"], ttl: 999 }, "ttl: expected milliseconds between 1 s and 7 days"],
    [Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"], ttl: MAX_SESSION_TTL + 1 }, "ttl: expected milliseconds between 1 s and 7 days"],
    [Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"], session: "S-UPPER" }, "session: expected an id such as s-1a2b3c4d"],
    [Msg.SESSION_OPEN, { onsite: "site-1", targets: [], tunnel: { mode: "rm -rf /" } }, 'tunnel.mode: expected "routed" or "bridged", got "rm -rf /"'],
    [Msg.SESSION_OPEN, { onsite: "site-1", targets: [], tunnel: { mode: "x".repeat(5000) } }, 'tunnel.mode: expected "routed" or "bridged", got a string of 5000 characters'],
    [Msg.SESSION_OPEN, { onsite: "site-1", targets: [], tunnel: "routed" }, 'tunnel: expected a JSON object, got "routed"'],
    [Msg.SESSION_OPEN, { onsite: "site-1", targets: [], tunnel: { mode: "routed", addressing: { master: "10.99.0.1", onsite: "10.99.0.2/30" } } }, 'tunnel.addressing.master: expected an IPv4 address with prefix such as 10.99.0.1/30, got "10.99.0.1"'],
    [Msg.SESSION_OPEN, { onsite: "site-1", targets: [], udp: ["nonsense"] }, 'udp[0]: expected HOST:PORT such as relay.example.net:443, got "nonsense"'],
    [Msg.TUNNEL_MODE, { session: "s-1", mode: "ROUTED" }, 'mode: expected "routed" or "bridged", got "ROUTED"'],
    [Msg.TUNNEL_MODE, { session: "s-1", mode: null }, 'mode: expected "routed" or "bridged", got null'],
    [Msg.SESSION_OFFER, { session: "s-1", master: "m", targets: ["x:1"], expires: "soon" }, 'expires: expected an ISO time or null, got "soon"'],
    [Msg.SESSION_OFFER, { session: "s-1", master: "m", targets: "x:1", expires: null }, 'targets: expected an array of HOST:PORT strings, got "x:1"'],
    [Msg.SESSION_CLOSE, { session: "s-1", reason: "x", final: "yes" }, 'final: expected true or false, got "yes"'],
    [Msg.SESSION_END, { session: 5 }, "session: expected a string, got 5"],
    [Msg.SESSION_END, { session: "s-1", reason: {} }, "reason: expected a string, got an object"],
    [Msg.NAT_REQUEST, { proto: "tcp" }, "session: expected a string, got nothing"],
    [Msg.NAT_REQUEST, { session: "s-1", port: -1 }, "port: expected a port number (string or number), got -1"],
    [Msg.NAT_REQUEST, { session: "s-1", to: ["192.168.1.50:80"] }, "to: expected a string, got an array"],
    [Msg.NAT_REQUEST, { session: "s-1", ttl: true }, 'ttl: expected a duration such as "15m" (or milliseconds), got true'],
  ] as [MsgType, unknown, string][])("%p %j", (id, body, message) => {
    let err: unknown;
    try {
      decoders[id](body);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MessageError);
    expect((err as MessageError).message).toBe(message);
    expect((err as MessageError).type).toBe(id);
    expect(message.startsWith(`${(err as MessageError).field}: expected ${(err as MessageError).expected}`)).toBe(true);
  });

  test.each([
    [Msg.DEVICES, [{ ...device, online: "yes" }], 'result[0].online: expected true or false, got "yes"'],
    [Msg.DEVICES, { devices: [] }, "result: expected an array, got an object"],
    [Msg.SESSIONS, [{ ...session, targets: [1] }], "result[0].targets: expected an array of strings, got an array"],
    [Msg.SESSION_OPEN, "s-1", 'result: expected a JSON object, got "s-1"'],
    [Msg.NAT_REQUEST, null, "result: expected a JSON object, got null"],
  ] as [RequestMsg, unknown, string][])("a %p reply of the wrong shape: %j", (id, result, message) => {
    expect(() => replyDecoders[id](result)).toThrow(message);
  });
});

describe("typed request / handle / on / send", () => {
  const conns: Connection[] = [];
  afterEach(() => {
    for (const c of conns.splice(0)) c.close();
  });
  function pair() {
    const [a, b] = linkPair();
    const dialer = new Connection(a, { side: "dialer" });
    const acceptor = new Connection(b, { side: "acceptor" });
    conns.push(dialer, acceptor);
    return { dialer, acceptor };
  }

  test("the handler sees the decoded body, the caller the decoded result", async () => {
    const { dialer, acceptor } = pair();
    const seen: unknown[] = [];
    handle(acceptor, Msg.SESSION_OPEN, (b) => {
      seen.push(b);
      return { ...session, targets: b.targets, onsite: b.onsite };
    });
    const info = await request(dialer, Msg.SESSION_OPEN, { onsite: "site-2", targets: ["10.0.0.5:80"], ttl: null, session: null });
    expect(info).toEqual({ ...session, targets: ["10.0.0.5:80"], onsite: "site-2" });
    expect(seen).toEqual([{ onsite: "site-2", targets: ["10.0.0.5:80"], ttl: null, session: null }]);
  });

  test("a body that does not decode is answered bad_request with the decoder's message; the handler never runs", async () => {
    const { dialer, acceptor } = pair();
    let ran = false;
    handle(acceptor, Msg.SESSION_END, () => {
      ran = true;
      return {};
    });
    const err = (await dialer.request(Msg.SESSION_END, { session: 42 }).catch((e: unknown) => e)) as RemoteError;
    expect(err).toBeInstanceOf(RemoteError);
    expect({ code: err.code, message: err.message }).toEqual({ code: ErrorCode.BAD_REQUEST, message: "session: expected a string, got 42" });
    expect(ran).toBe(false);
    expect(acceptor.closed).toBe(false);
  });

  test("a result of the wrong shape fails the request with a MessageError", async () => {
    const { dialer, acceptor } = pair();
    acceptor.handle(Msg.DEVICES, () => [{ id: 1 }]);
    const err = await request(dialer, Msg.DEVICES, {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MessageError);
    expect((err as Error).message).toBe("result[0].id: expected a string, got 1");
  });

  test("a one-way message that does not decode goes to onBad and the connection stays up", async () => {
    const { dialer, acceptor } = pair();
    const good: unknown[] = [];
    const bad: string[] = [];
    on(acceptor, Msg.SESSION_CLOSE, (b) => good.push(b), (e) => bad.push(e.message));
    dialer.send(Msg.SESSION_CLOSE, { session: "s-1", reason: "x" });
    send(dialer, Msg.SESSION_CLOSE, { session: "s-1", reason: "bye", final: false });
    const until = Date.now() + 2000;
    while (good.length === 0 && Date.now() < until) await Bun.sleep(1);
    expect(bad).toEqual(["final: expected true or false, got nothing"]);
    expect(good).toEqual([{ session: "s-1", reason: "bye", final: false }]);
    expect(acceptor.closed || dialer.closed).toBe(false);
  });
});

test("docs/protocol.md quotes the limits and timings the code has", async () => {
  const doc = (await Bun.file(new URL("../docs/protocol.md", import.meta.url)).text()).replace(/\s+/g, " ");
  const s = (ms: number) => `${ms / 1000} s`;
  const n = (x: number) => x.toLocaleString("en-US");
  const mib = (b: number) => `${b / 1024 / 1024} MiB`;
  const quotes = [
    `TLS handshake ${s(Timing.handshakeDeadline)}`,
    `HELLO ${s(Timing.helloDeadline)} after it`,
    `At most ${Limits.maxUnauthenticated} connections may be unauthenticated at once, ${Limits.maxUnauthenticatedPerSource} per source address`,
    `${HEADER_SIZE}-byte header`,
    `at most **${n(MAX_PAYLOAD)} bytes** (\`MAX_PAYLOAD\`)`,
    `at most ${n(MAX_REASON)} characters (\`MAX_REASON\`)`,
    `≤ ${n(MAX_REASON)} characters`,
    `at most ${n(MAX_REASON * 3)} bytes of UTF-8`,
    `${n(Limits.streamWindow)} bytes (\`streamWindow\`)`,
    `At most ${n(Limits.maxStreams)} streams per connection (\`maxStreams\`)`,
    `more than ${mib(Limits.maxQueued)} pile up unread is closed (\`maxQueued\`)`,
    `(${mib(Limits.maxQueued)} − ${mib(CONTROL_SLACK)}) / window = ${maxRoutedStreams()} streams`,
    `at most ${Limits.maxSessionsPerMaster} sessions (\`maxSessionsPerMaster\`)`,
    `messages of up to ${mib(MAX_CONTROL_MESSAGE)} from the relay (\`MAX_CONTROL_MESSAGE\``,
    `within ${s(Timing.requestTimeout)} (\`requestTimeout\`)`,
    `1-${MAX_TARGETS} targets (\`MAX_TARGETS\`)`,
    `from 1 s to ${MAX_SESSION_TTL / 86_400_000} days (\`MAX_SESSION_TTL\`)`,
    `a PING every ${s(Timing.keepaliveInterval)} (\`keepaliveInterval\`)`,
    `for ${s(Timing.keepaliveTimeout)} (\`keepaliveTimeout\`)`,
    `noticed within ${Timing.keepaliveTimeout / 1000}–${(Timing.keepaliveTimeout + Timing.keepaliveInterval) / 1000} s`,
    `[0, min(${s(Timing.backoffCap)}, ${s(Timing.backoffBase)} · 2ⁿ)]`,
    `lived ${s(Timing.stableAfter)} or more resets the backoff`,
    `{versions: [${PROTOCOL_VERSIONS.join(", ")}], role, id, agent}`,
  ];
  const missing = quotes.filter((q) => !doc.includes(q));
  expect(missing).toEqual([]);
});
