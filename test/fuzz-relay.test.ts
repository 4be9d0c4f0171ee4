// The relay as a whole against random and mutated control messages and frames from an
// authenticated master and onsite device (issue 17 §8): whatever they send, no exception
// escapes (no unhandled rejection, which would end the relay process), and afterwards the
// relay still serves a fresh connection. In-memory links; fixed seed and bounded count in the
// suite, FUZZ_RUNS / FUZZ_SEED for `make fuzz`.
import { afterAll, expect, test } from "bun:test";
import fc from "fast-check";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { Connection } from "../src/transport/mux.ts";
import { linkPair, type MemoryLink } from "../src/transport/link.ts";
import { FrameType, Flag, encodeFrame, encodeJson } from "../src/transport/frame.ts";
import { Msg, type MsgType } from "../src/transport/messages.ts";
import { request } from "../src/transport/typed.ts";

const RUNS = Math.max(1, Number(process.env.FUZZ_RUNS ?? 200));
const SEED = Number(process.env.FUZZ_SEED ?? 17);
const quiet = { debug() {}, info() {}, warn() {} };

const unhandled: unknown[] = [];
const onUnhandled = (e: unknown) => void unhandled.push(e);
process.on("unhandledRejection", onUnhandled);
const server = new RelayServer({ id: "relay-fuzz", log: quiet, access: () => [{ masters: ["tech-f", "tech-fresh"], onsites: ["site-f"], nat: true }], helloDeadline: 5_000, keepaliveInterval: 60_000 });
afterAll(async () => {
  process.off("unhandledRejection", onUnhandled);
  await server.close();
});

function connect(role: string, id: string): { conn: Connection; link: MemoryLink; welcome: Promise<unknown> } {
  const [link, relayLink] = linkPair("10.0.0.1", "10.9.9.9");
  const conn = new Connection(link, { side: "dialer", onStream: (s) => s.reset(1, "no"), maxControlIn: 16 * 1024 * 1024 });
  conn.handle(Msg.SESSION_OFFER, () => ({}));
  conn.handle(Msg.TUNNEL_MODE, () => ({ mode: "routed", subnets: [], onsite: { iface: "agt-t-1", addresses: [], routes: [] } }));
  conn.handle(Msg.NAT_REQUEST, () => ({ rule: {}, created: true }));
  const welcome = new Promise((r) => conn.on(Msg.WELCOME, r));
  server.accept(relayLink, { id, role, serial: `serial-${id}` });
  conn.send(Msg.HELLO, { versions: [1], role, id, agent: "fuzz" });
  return { conn, link, welcome };
}

const samples: Partial<Record<MsgType, unknown>> = {
  [Msg.INVENTORY]: { hostname: "pi-1", location: "", agent: "agent/1.0", uptime: 3600, uplink: "lte" },
  [Msg.DEVICES]: {},
  [Msg.SESSIONS]: {},
  [Msg.SESSION_OPEN]: { onsite: "site-f", targets: ["10.0.0.5:80"], ttl: 60_000, session: null, udp: ["192.168.1.1:53"], tunnel: { mode: "routed" } },
  [Msg.SESSION_END]: { session: "s-1a2b3c4d", reason: "done" },
  [Msg.TUNNEL_MODE]: { session: "s-1a2b3c4d", mode: "bridged" },
  [Msg.NAT_REQUEST]: { session: "s-1a2b3c4d", proto: "tcp", port: 8080, to: "192.168.1.50:80", ttl: 60_000 },
  [Msg.HELLO]: { versions: [1], role: "master", id: "tech-f", agent: "x" },
  [Msg.SESSION_CLOSE]: { session: "s-1a2b3c4d", reason: "x", final: true },
};
const types = Object.keys(samples).map(Number) as MsgType[];

/** One thing a peer sends: a control message (valid, mutated, random) or a raw frame. */
const action = fc.oneof(
  fc.record({ kind: fc.constant("msg" as const), type: fc.oneof(fc.constantFrom(...types), fc.integer({ min: 0, max: 40 })), body: fc.oneof(fc.constant(null), fc.jsonValue({ maxDepth: 2 })), rid: fc.option(fc.nat({ max: 1000 })), mutate: fc.tuple(fc.string({ maxLength: 12 }), fc.jsonValue({ maxDepth: 2 })) }),
  fc.record({ kind: fc.constant("frame" as const), type: fc.integer({ min: 0, max: 6 }), flags: fc.constantFrom(0, Flag.SYN, Flag.FIN, Flag.ACK, Flag.SYN | Flag.FIN), stream: fc.integer({ min: 0, max: 9 }), payload: fc.uint8Array({ maxLength: 80 }), value: fc.nat() }),
  fc.record({ kind: fc.constant("open" as const), target: fc.constantFrom("10.0.0.5:80", "x", ""), useSession: fc.boolean() }),
);

let sessionId = "s-1a2b3c4d";

type Action = typeof action extends fc.Arbitrary<infer T> ? T : never;

function perform(conn: Connection, a: Action): void {
  if (conn.closed) return;
  if (a.kind === "msg") {
    const base = samples[a.type as MsgType];
    let body: Record<string, unknown> = a.body !== null && typeof a.body === "object" && !Array.isArray(a.body) ? (a.body as Record<string, unknown>) : { ...((base as object) ?? {}) };
    if (a.mutate[0]) body = { ...body, [a.mutate[0]]: a.mutate[1] };
    if (a.rid !== null) body.rid = a.rid;
    if (typeof body.session === "string" && body.session === "s-1a2b3c4d") body.session = sessionId;
    const json = encodeJson(body);
    const p = new Uint8Array(2 + json.length);
    new DataView(p.buffer).setUint16(0, a.type);
    p.set(json, 2);
    conn.link.write(encodeFrame(FrameType.CONTROL, 0, 0, p));
  } else if (a.kind === "frame") {
    conn.link.write(encodeFrame(a.type, a.flags, a.stream, a.type === FrameType.WINDOW || a.type === FrameType.PING ? undefined : a.payload, a.type === FrameType.WINDOW || a.type === FrameType.PING ? a.value : undefined));
  } else {
    try {
      const s = conn.openStream({ session: a.useSession ? sessionId : "s-none", target: a.target });
      s.write(new Uint8Array(100));
      s.end();
    } catch {}
  }
}

const settle = async () => {
  for (let i = 0; i < 4; i++) await new Promise((r) => setTimeout(r, 0));
};

test("fuzz: random and mutated messages and frames from a master and a device never throw out of the relay, and it still serves", async () => {
  const site = connect("onsite", "site-f");
  await site.welcome;
  let master = connect("master", "tech-f");
  await master.welcome;
  try {
    const s = await request(master.conn, Msg.SESSION_OPEN, { onsite: "site-f", targets: ["10.0.0.5:80"], ttl: null, session: null });
    sessionId = s.session;
  } catch {}
  let onsite = site;
  await fc.assert(
    fc.asyncProperty(fc.array(fc.tuple(fc.boolean(), action), { minLength: 1, maxLength: 12 }), async (acts) => {
      for (const [fromMaster, a] of acts) perform(fromMaster ? master.conn : onsite.conn, a);
      await settle();
      // A peer the relay closed (a protocol error) comes back for the next run.
      if (master.conn.closed) {
        master = connect("master", "tech-f");
        await Promise.race([master.welcome, Bun.sleep(2000)]);
      }
      if (onsite.conn.closed) {
        onsite = connect("onsite", "site-f");
        await Promise.race([onsite.welcome, Bun.sleep(2000)]);
      }
      if (unhandled.length) throw new Error(`unhandled rejection: ${String((unhandled[0] as Error)?.stack ?? unhandled[0])}`);
    }),
    { seed: SEED, numRuns: Math.max(20, Math.floor(RUNS / 2)) },
  );
  await settle();
  expect(unhandled).toEqual([]);
  // Still serving: a fresh master is welcomed and answered.
  const fresh = connect("master", "tech-fresh");
  await fresh.welcome;
  expect(Array.isArray(await request(fresh.conn, Msg.DEVICES, {}))).toBe(true);
  for (const c of [fresh.conn, master.conn, onsite.conn]) c.close();
}, Math.max(30_000, RUNS * 200));
