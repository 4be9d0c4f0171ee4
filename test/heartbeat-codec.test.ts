// The heartbeat datagram, pure: its layout to the byte, the HMAC, the worst case fitting 1200
// bytes, the replay window as a table, the receiver's verdict for every kind of bad datagram
// (and that a stranger's flood leaves no state), and the sender's choice of paths.
import { describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import {
  acceptSeq,
  BOOT_ID_SIZE,
  decodePayload,
  deviceKey,
  DropReason,
  encodeHeartbeat,
  fresh,
  MAC_SIZE,
  MAX_AGE_MS,
  MAX_DATAGRAM,
  PAYLOAD_LIMITS,
  parseHeartbeat,
  verifyMac,
  type HeartbeatPayload,
  type ReplayWindow,
} from "../src/transport/heartbeat/codec.ts";
import { HeartbeatReceiver, type Beat } from "../src/transport/heartbeat/receiver.ts";
import { due, HeartbeatSender, pathsOf, payloadOf, type UplinkView } from "../src/transport/heartbeat/sender.ts";
import { MemoryDatagramNet } from "../src/transport/heartbeat/socket.ts";

const KEY = new Uint8Array(32).fill(9);
const BOOT = new Uint8Array(BOOT_ID_SIZE).fill(1);
const T0 = Date.UTC(2026, 11, 1, 9, 0, 0);
const payload: HeartbeatPayload = { up: 3600, act: "eth0", via: "wwan0", iv: 25_000, tun: "waiting", ul: [{ n: "eth0", s: "down", l: 100, r: null }, { n: "wwan0", s: "up", l: 0, r: 48.2, m: 1 }], err: "connect ECONNREFUSED 10.99.0.1:4443", load: 0.42, disk: 1234 };
const beat = (seq: bigint, o: Partial<{ id: string; sentAt: number; boot: Uint8Array; payload: HeartbeatPayload }> = {}) =>
  encodeHeartbeat({ id: o.id ?? "site-1", boot: o.boot ?? BOOT, seq, sentAt: o.sentAt ?? T0, payload: o.payload ?? payload }, KEY);

describe("layout", () => {
  test("the header is where docs/protocol.md §8 says, and the MAC covers everything before it", () => {
    const d = beat(0x0102030405060708n);
    expect(new TextDecoder().decode(d.subarray(0, 4))).toBe("AGH1");
    expect(d[4]).toBe(6);
    expect(new TextDecoder().decode(d.subarray(5, 11))).toBe("site-1");
    expect([...d.subarray(11, 27)]).toEqual([...BOOT]);
    expect([...d.subarray(27, 35)]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(new DataView(d.buffer).getBigUint64(35)).toBe(BigInt(T0));
    const p = new DataView(d.buffer).getUint16(43);
    expect(d.length).toBe(45 + p + MAC_SIZE);
    const r = parseHeartbeat(d);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.parsed.id).toBe("site-1");
    expect(r.parsed.seq).toBe(0x0102030405060708n);
    expect(verifyMac(r.parsed, KEY)).toBe(true);
    expect(verifyMac(r.parsed, new Uint8Array(32))).toBe(false);
    expect(decodePayload(r.parsed.payload)).toEqual(payload);
  });

  test("the worst case (longest id, every field at its bound, escapes everywhere) fits 1200 bytes and keeps the essentials", () => {
    const nasty = "\u0001".repeat(500); // six bytes each in JSON
    const worst: HeartbeatPayload = {
      up: 2 ** 40,
      act: "x".repeat(100),
      via: "y".repeat(100),
      iv: 25_000,
      tun: "connecting-long-state",
      ul: Array.from({ length: 20 }, (_, i) => ({ n: `${nasty}${i}`, s: nasty, l: 33.3333, r: 123456.789, m: 1 as const })),
      cell: { sig: -113, op: nasty, tech: nasty },
      wifi: { ssid: nasty, sig: -90 },
      err: nasty.repeat(10),
      load: 9999.99,
      disk: 2 ** 40,
    };
    const d = encodeHeartbeat({ id: "d".repeat(63), boot: BOOT, seq: (1n << 64n) - 1n, sentAt: T0, payload: worst }, KEY);
    expect(d.length).toBeLessThanOrEqual(MAX_DATAGRAM);
    const r = parseHeartbeat(d);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    const back = decodePayload(r.parsed.payload)!;
    expect(back.up).toBe(2 ** 40);
    expect(back.act.length).toBeLessThanOrEqual(PAYLOAD_LIMITS.name);
    expect(back.ul.length).toBeLessThanOrEqual(PAYLOAD_LIMITS.uplinks);
    expect(back.iv).toBe(25_000);
  });

  test("a realistic full payload (8 uplinks, cellular, Wi-Fi, a long error) keeps every uplink", () => {
    const full: HeartbeatPayload = {
      ...payload,
      ul: Array.from({ length: 8 }, (_, i) => ({ n: `wwan${i}-abcdefghi`, s: "up", l: 12.5, r: 250.5, m: 1 as const })),
      cell: { sig: 71, op: "Orange F", tech: "lte" },
      wifi: { ssid: "Royal Champagne Guests", sig: -61 },
      err: "the relay refused us: " + "x".repeat(300),
    };
    const d = encodeHeartbeat({ id: "site-royal-champagne-0001", boot: BOOT, seq: 1n, sentAt: T0, payload: full }, KEY);
    expect(d.length).toBeLessThanOrEqual(MAX_DATAGRAM);
    const r = parseHeartbeat(d);
    if (!r.ok) throw new Error("did not parse");
    expect(decodePayload(r.parsed.payload)!.ul).toHaveLength(8);
  });

  test.each([
    ["empty", new Uint8Array(0), DropReason.TRUNCATED],
    ["magic only", new TextEncoder().encode("AGH1"), DropReason.TRUNCATED],
    ["wrong magic", new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"), DropReason.MALFORMED],
    ["id length 0", new Uint8Array([0x41, 0x47, 0x48, 0x31, 0, 1, 2, 3]), DropReason.MALFORMED],
    ["cut in the header", beat(1n).subarray(0, 20), DropReason.TRUNCATED],
    ["cut in the payload", beat(1n).subarray(0, 60), DropReason.TRUNCATED],
    ["cut in the MAC", beat(1n).subarray(0, beat(1n).length - 1), DropReason.TRUNCATED],
    ["bytes after the MAC", new Uint8Array([...beat(1n), 0]), DropReason.MALFORMED],
  ])("%s: %s", (_name, d, reason) => {
    const r = parseHeartbeat(d);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toBe(reason);
  });
});

describe("replay window (pure)", () => {
  const w = (top: bigint, seen: bigint, boot = "a", bootSentAt = 100): ReplayWindow => ({ boot, bootSentAt, top, seen });
  test.each<[string, ReplayWindow | null, string, bigint, number, boolean, Partial<ReplayWindow> | null]>([
    ["first datagram", null, "a", 5n, 100, true, { top: 5n, seen: 1n }],
    ["next in order", w(5n, 1n), "a", 6n, 101, true, { top: 6n, seen: 0b11n }],
    ["a gap", w(5n, 1n), "a", 8n, 101, true, { top: 8n, seen: 0b1001n }],
    ["the same again (replay)", w(5n, 1n), "a", 5n, 101, false, null],
    ["late but in the window, unseen", w(8n, 0b1001n), "a", 6n, 101, true, { top: 8n, seen: 0b1101n }],
    ["late, seen already", w(8n, 0b1101n), "a", 6n, 101, false, null],
    ["63 behind, unseen", w(100n, 1n), "a", 37n, 101, true, { top: 100n }],
    ["64 behind: out of the window", w(100n, 1n), "a", 36n, 101, false, null],
    ["a jump of more than the window", w(5n, 0b111n), "a", 500n, 101, true, { top: 500n, seen: 1n }],
    ["a new boot, newer: starts over", w(900n, 1n, "a", 100), "b", 0n, 200, true, { boot: "b", top: 0n, seen: 1n }],
    ["an older boot replayed: refused", w(3n, 1n, "b", 200), "a", 901n, 150, false, null],
  ])("%s", (_n, win, boot, seq, sentAt, ok, expected) => {
    const r = acceptSeq(win, boot, seq, sentAt);
    expect(r.ok).toBe(ok);
    if (r.ok && expected) expect(r.window).toMatchObject(expected);
  });

  test.each([
    [T0, T0, true],
    [T0 - MAX_AGE_MS, T0, true],
    [T0 - MAX_AGE_MS - 1, T0, false],
    [T0 + MAX_AGE_MS + 1, T0, false],
  ])("fresh(%p at %p) = %p", (sent, now, ok) => expect(fresh(sent, now)).toBe(ok));
});

describe("HeartbeatReceiver", () => {
  function setup(known: Record<string, string> = { "site-1": "01" }) {
    const clock = new FakeClock({ wall: T0 });
    const secret = new Uint8Array(32).fill(3);
    const beats: Beat[] = [];
    const rx = new HeartbeatReceiver({ clock, keyOf: (id) => (known[id] ? deviceKey(secret, id, known[id]!) : null), onBeat: (b) => beats.push(b) });
    const key = deviceKey(secret, "site-1", "01");
    const make = (seq: bigint, o: { sentAt?: number; id?: string; key?: Uint8Array } = {}) => encodeHeartbeat({ id: o.id ?? "site-1", boot: BOOT, seq, sentAt: o.sentAt ?? clock.wall(), payload }, o.key ?? key);
    const from = (data: Uint8Array) => ({ data, address: "203.0.113.9", port: 40000 });
    return { clock, rx, beats, make, from, key };
  }

  test("good, replayed, stale, forged, unknown, truncated: each counted by its reason, only the good one passes", () => {
    const { rx, beats, make, from, clock } = setup();
    const good = make(1n);
    expect(rx.handle(from(good))).toBeNull();
    expect(rx.handle(from(good))).toBe(DropReason.REPLAY);
    expect(rx.handle(from(make(2n, { sentAt: clock.wall() - MAX_AGE_MS - 1000 })))).toBe(DropReason.STALE);
    const forged = make(3n);
    forged[50] = forged[50]! ^ 1;
    expect(rx.handle(from(forged))).toBe(DropReason.FORGED);
    expect(rx.handle(from(make(4n, { key: new Uint8Array(32) })))).toBe(DropReason.FORGED);
    expect(rx.handle(from(make(5n, { id: "stranger" })))).toBe(DropReason.UNKNOWN);
    expect(rx.handle(from(good.subarray(0, 30)))).toBe(DropReason.TRUNCATED);
    expect(rx.handle(from(make(6n)))).toBeNull();
    expect(beats.map((b) => b.seq)).toEqual([1n, 6n]);
    expect(beats[0]!.from).toBe("203.0.113.9:40000");
    expect(beats[0]!.payload.via).toBe("wwan0");
    expect(rx.stats()).toEqual({ received: 8, accepted: 2, tracked: 1, dropped: { truncated: 1, malformed: 0, unknown: 1, forged: 2, stale: 1, replay: 1 } });
  });

  test("a flood from strangers (bounded: 20,000 datagrams, random and well-formed with unknown ids) leaves no state", () => {
    const { rx, make, from, key } = setup();
    expect(rx.handle(from(make(1n)))).toBeNull();
    const tracked = rx.tracked;
    for (let i = 0; i < 10_000; i++) rx.handle({ data: crypto.getRandomValues(new Uint8Array(1 + (i % 1200))), address: `198.51.100.${i % 250}`, port: 1024 + i });
    for (let i = 0; i < 10_000; i++) rx.handle(from(encodeHeartbeat({ id: `x-${i}`, boot: BOOT, seq: BigInt(i), sentAt: T0, payload }, key)));
    expect(rx.tracked).toBe(tracked);
    expect(rx.accepted).toBe(1);
    expect(rx.dropped.unknown).toBe(10_000);
  });
});

describe("sender", () => {
  const view: UplinkView = {
    active: "eth0",
    uplinks: [
      { name: "eth0", kind: "ethernet", metered: false, active: true, health: "up", link: { addrs: ["10.91.1.2/24"] }, probes: { sent: 10, loss: 0.1, latency_ms: 3.2 } },
      { name: "wlan0", kind: "wifi", metered: false, active: false, health: "down", link: { addrs: ["10.91.2.2/24"] }, probes: { sent: 10, loss: 1 } },
      { name: "wwan0", kind: "cellular", metered: true, active: false, health: "up", link: { addrs: ["10.91.3.2/24"] }, probes: { sent: 4, loss: 0, latency_ms: 80 }, modem: { signal: 67, operator: "Orange F", technology: "lte" } },
    ],
  };

  test("paths: every healthy uplink with an address, bound to it; no uplinks: the default route", () => {
    expect(pathsOf(view)).toEqual([
      { uplink: "eth0", source: "10.91.1.2", metered: false, active: true },
      { uplink: "wwan0", source: "10.91.3.2", metered: true, active: false },
    ]);
    expect(pathsOf(undefined)).toEqual([{ uplink: "", metered: false, active: true }]);
  });

  test.each([
    ["never sent", false, true, null, 0, true],
    ["active, an interval ago", false, true, 0, 25_000, true],
    ["active, half an interval ago", false, true, 0, 12_000, false],
    ["metered standby, an interval ago", true, false, 0, 25_000, false],
    ["metered standby, 100 s ago", true, false, 0, 100_000, true],
    ["metered but active: every interval", true, true, 0, 25_000, true],
  ])("due: %s", (_n, metered, active, last, now, expected) => {
    expect(due({ uplink: "u", metered, active }, last, now)).toBe(expected);
  });

  test("payload: uplinks with loss in percent and latency, cellular from the modem, Wi-Fi, the dial error", () => {
    const p = payloadOf({ uplinks: view, wifi: { ssid: "Guests", signal: -60 }, tunnel: "waiting", lastError: "connect ETIMEDOUT", uptime: 99, load: 0.5, diskFreeMiB: 100 }, "wwan0", 25_000);
    expect(p).toEqual({
      up: 99,
      act: "eth0",
      via: "wwan0",
      iv: 25_000,
      tun: "waiting",
      ul: [
        { n: "eth0", s: "up", l: 10, r: 3.2 },
        { n: "wlan0", s: "down", l: 100, r: null },
        { n: "wwan0", s: "up", l: 0, r: 80, m: 1 },
      ],
      cell: { sig: 67, op: "Orange F", tech: "lte" },
      wifi: { ssid: "Guests", sig: -60 },
      err: "connect ETIMEDOUT",
      load: 0.5,
      disk: 100,
    });
  });

  test("over an in-memory network: one datagram per healthy uplink, from its address, each verified by the receiver", async () => {
    const net = new MemoryDatagramNet();
    const clock = new FakeClock({ wall: T0 });
    const secret = new Uint8Array(32).fill(5);
    const key = deviceKey(secret, "site-1", "0a");
    const beats: Beat[] = [];
    const rx = new HeartbeatReceiver({ clock, keyOf: (id) => (id === "site-1" ? key : null), onBeat: (b) => beats.push(b) });
    const relaySock = await net.open({ address: "10.99.0.1", port: 4443 });
    rx.attach(relaySock);
    const tx = new HeartbeatSender({ id: "site-1", host: "10.99.0.1", open: net.open, clock, diagnostics: () => ({ uplinks: view, tunnel: "waiting", lastError: "x", uptime: 1, load: 0, diskFreeMiB: 1 }) });
    tx.setKey({ relay: "relay-1", key, port: 4443 });
    tx.start();
    await tx.tick();
    await Promise.resolve();
    expect(net.sent.map((s) => s.from.split(":")[0]).sort()).toEqual(["10.91.1.2", "10.91.3.2"]);
    await Bun.sleep(0);
    expect(beats.map((b) => b.payload.via).sort()).toEqual(["eth0", "wwan0"]);
    // 25 s later: the active one again, not the metered standby.
    clock.advance(25_000);
    await tx.tick();
    await Bun.sleep(0);
    expect(beats.map((b) => b.payload.via).sort()).toEqual(["eth0", "eth0", "wwan0"]);
    expect(rx.dropped.replay).toBe(0);
    await tx.close();
    expect(net.sockets).toBe(1);
  });
});
