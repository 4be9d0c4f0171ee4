// The packet channel (issue 11) with memory links: PACKET frames between two real Connections,
// the bounded queue that drops the oldest and never waits, the errors that reset one stream,
// and the relay (RelayServer) routing packet streams with the same bound. Plus the pure parts:
// the /30 allocator, the onsite refusal sentences, the relay's per-kind refusal.
import { afterEach, describe, expect, test } from "bun:test";
import { linkPair, type MemoryLink } from "../src/transport/link.ts";
import { Connection, type Stream, type StreamError } from "../src/transport/mux.ts";
import { FrameType, MAX_CONTROL_MESSAGE, MAX_PAYLOAD, ResetCode, encodeFrame } from "../src/transport/frame.ts";
import { ErrorCode, Msg, type SessionInfo } from "../src/transport/messages.ts";
import { MAX_PACKET, PACKET_QUEUE, PacketSender, decodePacketOpen, type PacketLink } from "../src/transport/packet.ts";
import { Limits } from "../src/transport/policy.ts";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { packetRefusal } from "../src/tunnel/relay/router.ts";
import { allocateAddressing } from "../src/tunnel/packet/addressing.ts";
import { tunnelRefusal } from "../src/tunnel/packet/onsite-tunnels.ts";
import { parseCidr } from "../src/netaddr.ts";
import { gateOnsiteHost } from "../src/tunnel/packet/sweep-gate.ts";
import { MemoryOnsiteTunnelHost } from "../src/tunnel/packet/memory.ts";
import { holdsFor, waitFor } from "./helpers/wait.ts";

const quiet = { debug() {}, info() {}, warn() {} };
const conns: Connection[] = [];
const relays: RelayServer[] = [];
afterEach(async () => {
  for (const c of conns.splice(0)) c.close();
  await Promise.all(relays.splice(0).map((r) => r.close()));
});

function pkt(n: number, tag: number): Uint8Array {
  const p = new Uint8Array(n);
  new DataView(p.buffer).setUint32(0, tag);
  return p;
}
const tag = (p: Uint8Array) => new DataView(p.buffer, p.byteOffset, p.length).getUint32(0);

/** Two endpoints; `b` accepts every stream and collects its packets. */
function pair() {
  const [la, lb] = linkPair();
  const got: Uint8Array[] = [];
  const accepted: Stream[] = [];
  const a = new Connection(la, { side: "dialer" });
  const b = new Connection(lb, {
    side: "acceptor",
    onStream: (s) => {
      accepted.push(s);
      s.onpacket = (p) => got.push(p.slice());
      s.accept();
    },
  });
  conns.push(a, b);
  b.handle(Msg.DEVICES, () => []);
  return { a, b, la, lb, got, accepted };
}

describe("PACKET frames between two connections", () => {
  test("packets arrive whole, in order, each way, and are counted", async () => {
    const { a, got, accepted } = pair();
    const s = a.openStream({ session: "s-abcd", packet: "routed" });
    const back: Uint8Array[] = [];
    s.onpacket = (p) => back.push(p.slice());
    const sizes = [1, 40, 1420, 1500, 9000, MAX_PACKET];
    sizes.forEach((n, i) => expect(s.sendPacket(pkt(Math.max(n, 4), i))).toBe(true));
    await waitFor(() => got.length === sizes.length, 5_000, "packets at b");
    expect(got.map((p) => p.length)).toEqual(sizes.map((n) => Math.max(n, 4)));
    expect(got.map(tag)).toEqual(sizes.map((_, i) => i));
    accepted[0]!.sendPacket(pkt(100, 77));
    await waitFor(() => back.length === 1, 5_000, "a packet back at a");
    expect(tag(back[0]!)).toBe(77);
    const st = s.packetStats();
    expect(st).toMatchObject({ packets_out: 6, packets_in: 1, bytes_in: 100 });
    expect(st.bytes_out).toBe(sizes.reduce((x, n) => x + Math.max(n, 4), 0));
    expect(Object.values(st.drops).every((n) => n === 0)).toBe(true);
  });

  test("a peer that does not read: sends never wait, the queue stays bounded, the OLDEST go first and are counted", async () => {
    const { a, lb, got } = pair();
    const s = a.openStream({ session: "s-abcd", packet: "routed" });
    await waitFor(() => s.accepted || true, 100, "");
    lb.pause(); // b stops reading: a's link fills up
    const N = 3000;
    for (let i = 0; i < N; i++) expect(s.sendPacket(pkt(1400, i))).toBe(true); // returns at once, every time
    const q = s.packetSender!.queued;
    expect(q.packets).toBeLessThanOrEqual(PACKET_QUEUE.packets);
    expect(q.bytes).toBeLessThanOrEqual(PACKET_QUEUE.bytes);
    const st = s.packetStats();
    // Everything is either on the link, waiting in the queue, or dropped as queue_full: nothing else.
    expect(st.packets_out + q.packets + st.drops.queue_full).toBe(N);
    expect(st.drops.queue_full).toBeGreaterThan(0);
    expect(st.packets_out * 1412).toBeLessThanOrEqual(Limits.packetLinkHighWater + 1412);
    lb.resume();
    await waitFor(() => got.length === st.packets_out + q.packets, 10_000, "the link and the queue to drain");
    const tags = got.map(tag);
    // First those that went straight out, then the newest that waited: the oldest waiting were dropped.
    expect(tags.slice(0, st.packets_out)).toEqual([...Array(st.packets_out).keys()]);
    expect(tags.slice(st.packets_out)).toEqual([...Array(q.packets).keys()].map((i) => N - q.packets + i));
  });

  test.each([
    ["a zero-length packet", () => encodeFrame(FrameType.PACKET, 0, 1, new Uint8Array(0)), "a zero-length packet on packet stream 1"],
    ["a packet over 65,535 bytes", () => encodeFrame(FrameType.PACKET, 0, 1, new Uint8Array(MAX_PACKET + 1)), `a packet of ${MAX_PACKET + 1} bytes (the limit is ${MAX_PACKET}) on packet stream 1`],
    ["byte data on a packet stream", () => encodeFrame(FrameType.DATA, 0, 1, new Uint8Array(10)), "byte data on a packet stream (packets travel in PACKET frames)"],
  ])("%s resets that stream only (PROTOCOL); the connection stays", async (_name, frame, reason) => {
    const { a, la, accepted } = pair();
    a.openStream({ session: "s-abcd", packet: "bridged" });
    await waitFor(() => accepted.length === 1, 2_000, "the stream at b");
    let err: StreamError | null = null;
    accepted[0]!.onclose = (e) => (err = e);
    la.write(frame());
    await waitFor(() => err !== null, 2_000, "the reset");
    expect(err!.code).toBe(ResetCode.PROTOCOL);
    expect(err!.message).toBe(reason);
    expect(await a.request(Msg.DEVICES, {})).toEqual([]);
    expect(a.closed).toBe(false);
  });

  test("a PACKET frame on a byte stream resets it; sendPacket on one is a programming error", async () => {
    const { a, la, accepted } = pair();
    const s = a.openStream({ session: "s-abcd", target: "10.0.0.5:80" });
    expect(() => s.sendPacket(pkt(10, 1))).toThrow("is not a packet stream");
    await waitFor(() => accepted.length === 1, 2_000, "the stream at b");
    let err: StreamError | null = null;
    accepted[0]!.onclose = (e) => (err = e);
    la.write(encodeFrame(FrameType.PACKET, 0, s.id, pkt(10, 1)));
    await waitFor(() => err !== null, 2_000, "the reset");
    expect(err!.message).toBe("a PACKET frame on a byte stream");
  });

  test("a packet too big to send is dropped here and counted as oversize, never sent", () => {
    const writes: number[] = [];
    const link: PacketLink = { writeFrame: (_t, _f, _s, p) => void writes.push(p!.length), packetRoom: true, block() {} };
    const tx = new PacketSender(link, 1);
    expect(tx.send(new Uint8Array(0))).toBe(false);
    expect(tx.send(new Uint8Array(MAX_PACKET + 1))).toBe(false);
    expect(tx.send(new Uint8Array(MAX_PACKET))).toBe(true);
    expect(writes).toEqual([MAX_PACKET]);
    expect(tx.stats.drops.oversize).toBe(2);
    tx.close();
    expect(tx.send(new Uint8Array(10))).toBe(false);
    expect(tx.stats.drops.closed).toBe(1);
  });

  test("a queue of a small bound drops by bytes too", () => {
    const link = { writeFrame() {}, packetRoom: false, block() {} } as PacketLink;
    const tx = new PacketSender(link, 1, { packets: 100, bytes: 3000 });
    for (let i = 0; i < 5; i++) tx.send(new Uint8Array(1000));
    expect(tx.queued).toEqual({ packets: 3, bytes: 3000 });
    expect(tx.stats.drops.queue_full).toBe(2);
  });
});

// ---- the relay ---------------------------------------------------------------------------

interface Dev {
  conn: Connection;
  link: MemoryLink;
  relayLink: MemoryLink;
  streams: Stream[];
}

function device(r: RelayServer, role: string, id: string, offer?: (b: Record<string, unknown>) => unknown): Promise<Dev> {
  const [link, relayLink] = linkPair();
  const streams: Stream[] = [];
  const conn = new Connection(link, { side: "dialer", onStream: (s) => streams.push(s), maxControlIn: MAX_CONTROL_MESSAGE });
  conns.push(conn);
  conn.handle(Msg.SESSION_OFFER, (b) => offer?.(b) ?? {});
  conn.handle(Msg.TUNNEL_MODE, (b) => ({ mode: b.mode, subnets: [], onsite: { iface: "agt-p-1", addresses: [], routes: [] } }));
  const welcome = new Promise((resolve) => conn.on(Msg.WELCOME, resolve));
  r.accept(relayLink, { id, role, serial: `serial-${id}` });
  conn.send(Msg.HELLO, { versions: [1], role, id, agent: "test/1" });
  return welcome.then(() => ({ conn, link, relayLink, streams }));
}

const tunnelOffer = (b: Record<string, unknown>) =>
  b.tunnel ? { tunnel: { mode: (b.tunnel as { mode: string }).mode, subnets: ["192.168.1.0/24"], onsite: { iface: "agt-t-1", addresses: ["10.99.0.2/30"], routes: [] } } } : {};

async function relayed(open: Record<string, unknown> = { onsite: "site-1", targets: [], tunnel: { mode: "routed", addressing: { master: "10.99.0.1/30", onsite: "10.99.0.2/30" } }, udp: ["192.168.1.1:53"] }) {
  const r = new RelayServer({ id: "relay-1", log: quiet, access: () => [], keepaliveInterval: 60_000 });
  relays.push(r);
  const onsite = await device(r, "onsite", "site-1", tunnelOffer);
  const master = await device(r, "master", "tech-1");
  const info = (await master.conn.request(Msg.SESSION_OPEN, open)) as SessionInfo;
  return { r, onsite, master, info };
}

function resetOf(s: Stream): Promise<StreamError | null> {
  return new Promise((resolve) => (s.onclose = resolve));
}

describe("the relay routes packet streams", () => {
  test("a session's tunnel: the onsite device's end is in the answer, packets cross both ways, the relay counts them", async () => {
    const { r, onsite, master, info } = await relayed();
    expect(info.tunnel).toMatchObject({ mode: "routed", subnets: ["192.168.1.0/24"], addressing: { master: "10.99.0.1/30", onsite: "10.99.0.2/30" }, onsite: { iface: "agt-t-1" } });
    expect(info.udp).toEqual(["192.168.1.1:53"]);
    const s = master.conn.openStream({ session: info.session, packet: "routed" });
    await waitFor(() => onsite.streams.length === 1, 2_000, "the packet stream at the onsite device");
    const far = onsite.streams[0]!;
    expect(far.open).toEqual({ session: info.session, packet: "routed", master: "tech-1" });
    const atOnsite: number[] = [];
    const atMaster: number[] = [];
    far.onpacket = (p) => atOnsite.push(tag(p));
    s.onpacket = (p) => atMaster.push(tag(p));
    far.accept();
    for (let i = 0; i < 50; i++) s.sendPacket(pkt(1420, i));
    for (let i = 0; i < 20; i++) far.sendPacket(pkt(100, 1000 + i));
    await waitFor(() => atOnsite.length === 50 && atMaster.length === 20, 5_000, "packets both ways");
    expect(atOnsite).toEqual([...Array(50).keys()]);
    expect(atMaster[19]).toBe(1019);
    const t = r.sessionList()[0]!.tunnel!;
    expect(t.relay!.to_onsite).toMatchObject({ packets_in: 50, packets_out: 50, bytes_out: 50 * 1420 });
    expect(t.relay!.to_master).toMatchObject({ packets_in: 20, packets_out: 20, bytes_out: 2000 });
  });

  test("a device that does not read: the relay keeps its bound, drops the oldest, counts, and keeps the connection", async () => {
    const { r, onsite, master, info } = await relayed();
    const s = master.conn.openStream({ session: info.session, packet: "routed" });
    await waitFor(() => onsite.streams.length === 1, 2_000, "the packet stream at the onsite device");
    const got: number[] = [];
    onsite.streams[0]!.onpacket = (p) => got.push(tag(p));
    onsite.link.pause(); // the device stops reading what the relay sends
    const N = 3000;
    // In batches the master's own queue absorbs, so the congestion is the relay's.
    for (let i = 0; i < N; i += 200) {
      for (let j = i; j < i + 200; j++) s.sendPacket(pkt(1400, j));
      await waitFor(() => s.packetSender!.queued.packets === 0, 5_000, "the master's queue to drain");
    }
    expect(s.packetStats().drops.queue_full).toBe(0);
    const stats = () => r.sessionList()[0]!.tunnel!.relay!.to_onsite;
    // The master's own queue may drop too (it wrote 4 MB in one go): the relay gets what it sent.
    await waitFor(() => s.packetSender!.queued.packets === 0 && stats().packets_in === s.packetStats().packets_out, 10_000, "the relay to take every packet the master sent");
    const st = stats();
    expect(st.packets_in).toBe(N);
    expect(st.drops.queue_full).toBeGreaterThan(0);
    expect(st.packets_out + st.drops.queue_full).toBeLessThanOrEqual(st.packets_in);
    expect(onsite.relayLink.queued).toBeLessThan(Limits.packetLinkHighWater + 2 * 1412);
    onsite.link.resume();
    await waitFor(() => got.length === st.packets_in - st.drops.queue_full, 10_000, "what the relay kept to arrive");
    expect(got.slice(-10)).toEqual([...Array(10).keys()].map((i) => N - 10 + i)); // the newest made it
    expect(onsite.conn.closed || master.conn.closed).toBe(false);
  });

  test.each([
    ["no such session", { session: "s-nope", packet: "routed" }, ResetCode.NO_SESSION, 'no session "s-nope"'],
    ["no session at all", { packet: "routed" }, ResetCode.PROTOCOL, "packet stream: session: expected a session id"],
    ["a hostile kind", { session: "SESSION", packet: "rm -rf /" }, ResetCode.PROTOCOL, 'packet stream: packet: expected "routed", "bridged" or "udp", got "rm -rf /"'],
    ["another mode than the session's", { session: "SESSION", packet: "bridged" }, ResetCode.REFUSED, "'s tunnel is routed, not bridged"],
    ["a UDP target outside the session", { session: "SESSION", packet: "udp", target: "192.168.1.9:53" }, ResetCode.REFUSED, 'UDP target "192.168.1.9:53" is not part of session'],
  ])("a packet stream with %s is refused", async (_name, open, code, reason) => {
    const { master, onsite, info } = await relayed();
    const o = { ...open } as Record<string, unknown>;
    if (o.session === "SESSION") o.session = info.session;
    const err = await resetOf(master.conn.openStream(o));
    expect(err!.code).toBe(code);
    expect(err!.message).toContain(reason);
    expect(onsite.streams).toEqual([]);
  });

  test("a session without a tunnel refuses tunnel packet streams and TUNNEL_MODE", async () => {
    const { master, info } = await relayed({ onsite: "site-1", targets: ["10.0.0.5:80"] });
    expect(info.tunnel).toBeUndefined();
    const err = await resetOf(master.conn.openStream({ session: info.session, packet: "routed" }));
    expect(err!.message).toContain("has no tunnel (open one with agent connect --tunnel routed|bridged)");
    await expect(master.conn.request(Msg.TUNNEL_MODE, { session: info.session, mode: "bridged" })).rejects.toMatchObject({ code: ErrorCode.BAD_REQUEST, message: expect.stringContaining("has no tunnel") });
    await expect(master.conn.request(Msg.TUNNEL_MODE, { session: info.session, mode: "sideways" })).rejects.toMatchObject({ code: ErrorCode.BAD_REQUEST, message: 'mode: expected "routed" or "bridged", got "sideways"' });
  });

  test.each([
    ["zero-length", new Uint8Array(0), "sent a zero-length packet"],
    ["oversized", new Uint8Array(MAX_PACKET + 1), `sent a packet of ${MAX_PACKET + 1} bytes`],
  ])("a %s packet resets the route on both sides; the connections stay", async (_name, payload, reason) => {
    const { master, onsite, info } = await relayed();
    const s = master.conn.openStream({ session: info.session, packet: "routed" });
    await waitFor(() => onsite.streams.length === 1, 2_000, "the packet stream at the onsite device");
    const near = resetOf(s);
    const far = resetOf(onsite.streams[0]!);
    expect(payload.length).toBeLessThanOrEqual(MAX_PAYLOAD);
    master.link.write(encodeFrame(FrameType.PACKET, 0, s.id, payload));
    for (const e of [await near, await far]) {
      expect(e!.code).toBe(ResetCode.PROTOCOL);
      expect(e!.message).toContain(reason);
    }
    expect(master.conn.closed || onsite.conn.closed).toBe(false);
  });

  test("TUNNEL_MODE resets the old packet stream; the new mode's stream is routed, the old mode's refused", async () => {
    const { master, onsite, info, r } = await relayed();
    const old = master.conn.openStream({ session: info.session, packet: "routed" });
    await waitFor(() => onsite.streams.length === 1, 2_000, "the first packet stream");
    const gone = resetOf(old);
    const offer = await master.conn.request(Msg.TUNNEL_MODE, { session: info.session, mode: "bridged" });
    expect(offer).toMatchObject({ mode: "bridged" });
    expect((await gone)!.message).toContain("switched to bridged");
    expect(r.sessionList()[0]!.tunnel!.mode).toBe("bridged");
    expect((await resetOf(master.conn.openStream({ session: info.session, packet: "routed" })))!.message).toContain("is bridged, not routed");
    master.conn.openStream({ session: info.session, packet: "bridged" });
    await waitFor(() => onsite.streams.length === 2, 2_000, "the bridged packet stream");
    expect(onsite.streams[1]!.open.packet).toBe("bridged");
  });

  test("the session's end resets its packet streams", async () => {
    const { master, onsite, info } = await relayed();
    const s = master.conn.openStream({ session: info.session, packet: "routed" });
    await waitFor(() => onsite.streams.length === 1, 2_000, "the packet stream");
    const far = resetOf(onsite.streams[0]!);
    const near = resetOf(s);
    await master.conn.request(Msg.SESSION_END, { session: info.session });
    for (const e of [await near, await far]) expect(e!.code).toBe(ResetCode.NO_SESSION);
  });
});

// ---- pure parts ----------------------------------------------------------------------------

describe("the /30 allocator", () => {
  const a = (m: string) => ({ master: m, onsite: "" });
  test.each([
    ["an empty pool's first block", "10.99.0.0/16", [], { master: "10.99.0.1/30", onsite: "10.99.0.2/30" }],
    ["the next free block", "10.99.0.0/16", ["10.99.0.1/30", "10.99.0.5/30"], { master: "10.99.0.9/30", onsite: "10.99.0.10/30" }],
    ["a hole left by an ended tunnel", "10.99.0.0/16", ["10.99.0.1/30", "10.99.0.9/30"], { master: "10.99.0.5/30", onsite: "10.99.0.6/30" }],
    ["a /30 pool: one tunnel", "192.168.200.4/30", [], { master: "192.168.200.5/30", onsite: "192.168.200.6/30" }],
    ["addresses outside the pool are not in the way", "10.99.0.0/29", ["172.16.0.1/30"], { master: "10.99.0.1/30", onsite: "10.99.0.2/30" }],
  ])("%s", (_name, pool, used, want) => {
    expect(allocateAddressing(parseCidr(pool), used.map(a))).toEqual({ ok: true, addressing: want });
  });
  test.each([
    ["used up", "10.99.0.0/29", ["10.99.0.1/30", "10.99.0.5/30"], "[tunnel] pool 10.99.0.0/29 is used up: all 2 tunnel addresses are taken; end a tunnel session or give a larger pool"],
    ["too small", "10.99.0.0/31", [], "[tunnel] pool 10.99.0.0/31 is too small: a tunnel takes a /30, so the pool must be a /30 or larger"],
  ])("%s", (_name, pool, used, reason) => {
    expect(allocateAddressing(parseCidr(pool), used.map(a))).toEqual({ ok: false, reason });
  });
});

describe("who refuses what", () => {
  test.each([
    [{ enabled: false, bridged: true }, "routed", "site-1: packet tunnels are off on this device; set [tunnel] enabled = true in its config to allow them"],
    [{ enabled: true, bridged: false }, "bridged", "site-1: bridged tunnels are not allowed on this device (one exposes its whole LAN segment); set [tunnel] bridged = true in its config to allow them"],
    [{ enabled: true, bridged: false }, "routed", null],
    [{ enabled: true, bridged: true }, "bridged", null],
  ] as const)("onsite %j, %s: %p", (policy, mode, want) => {
    expect(tunnelRefusal("site-1", policy, mode)).toBe(want);
  });

  test.each([
    [{ id: "s-1", tunnel: { mode: "routed" } }, "routed", undefined, null],
    [{ id: "s-1" }, "bridged", undefined, "session s-1 has no tunnel (open one with agent connect --tunnel routed|bridged)"],
    [{ id: "s-1", tunnel: { mode: "routed" } }, "bridged", undefined, "session s-1's tunnel is routed, not bridged"],
    [{ id: "s-1", udp: ["10.0.0.1:53"] }, "udp", "10.0.0.1:53", null],
    [{ id: "s-1", udp: ["10.0.0.1:53"] }, "udp", "10.0.0.1:54", 'UDP target "10.0.0.1:54" is not part of session s-1'],
  ] as const)("relay %j %s %s: %p", (s, kind, target, want) => {
    expect(packetRefusal(s, kind, target)).toBe(want);
  });

  test.each([
    [{ session: "s-1", packet: "routed" }, { session: "s-1", packet: "routed" }],
    [{ session: "s-1", packet: "udp", target: "10.0.0.1:53", extra: 1 }, { session: "s-1", packet: "udp", target: "10.0.0.1:53" }],
    [{ session: "s-1", packet: 7 }, "packet stream: packet: expected \"routed\", \"bridged\" or \"udp\", got number"],
    [{ session: "s-1", packet: "x".repeat(1000) }, `packet stream: packet: expected "routed", "bridged" or "udp", got "${"x".repeat(40)}"`],
    [{ session: "s-1", packet: "udp" }, "packet stream: target: expected the UDP forward's HOST:PORT"],
  ])("open header %j", (open, want) => {
    expect(decodePacketOpen(open as Record<string, unknown>)).toEqual(want as never);
  });
});

test("a tunnel opened while the start-up sweep runs waits for it (the sweep cannot remove it as a leftover)", async () => {
  const mem = new MemoryOnsiteTunnelHost();
  let finish!: (v: string[]) => void;
  const events: string[] = [];
  const slow = { open: async (r: Parameters<typeof mem.open>[0]) => (events.push("open"), mem.open(r)), sweep: () => new Promise<string[]>((r) => (finish = (v) => (events.push("swept"), r(v)))) };
  const gated = gateOnsiteHost(slow);
  const swept = gated.sweep();
  const opened = gated.open({ session: "s-1", mode: "bridged" });
  await holdsFor(() => events.length > 0, 100, "an open before the sweep finished");
  finish(["agt-t-old"]);
  expect(await swept).toEqual(["agt-t-old"]);
  await opened;
  expect(events).toEqual(["swept", "open"]);
});

test("the gated master host passes precheck through (a refused bridged switch is known before anything changes)", async () => {
  const { gateMasterHost } = await import("../src/tunnel/packet/sweep-gate.ts");
  const { TunnelRefused } = await import("../src/tunnel/packet/device.ts");
  const refused = new TunnelRefused("from_secondary", "asked from eth1's subnet");
  const base = { open: async () => { throw new Error("not here"); }, sweep: async () => [], onSecondaryChange: () => () => {} };
  const seen: string[] = [];
  const gated = gateMasterHost({ ...base, precheck: async (r) => (seen.push(r.mode), r.mode === "bridged" ? refused : null) });
  expect(await gated.precheck!({ session: "s-1", mode: "bridged", requester: "192.168.77.150" })).toBe(refused);
  expect(await gated.precheck!({ session: "s-1", mode: "routed" })).toBeNull();
  expect(seen).toEqual(["bridged", "routed"]);
  expect(gateMasterHost(base).precheck).toBeUndefined();
});
