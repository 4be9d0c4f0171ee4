// The relay's inventory kept across restarts: both stores (memory, bun:sqlite) behave the same
// (devices, bounded history, forget); an Inventory made again on the same store lists every
// device offline with its history; the device states (online, alive, lost, offline) as a table;
// and a RelayServer on in-memory links: HEARTBEAT_KEY after WELCOME, heartbeats that make a
// device "tunnel down, alive over …", the connection of a certificate that expires closed at
// its expiry with GOAWAY REVOKED.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FakeClock } from "../src/clock.ts";
import { deviceKey, encodeHeartbeat, type HeartbeatPayload } from "../src/transport/heartbeat/codec.ts";
import { linkPair } from "../src/transport/link.ts";
import { Connection } from "../src/transport/mux.ts";
import { GoAwayCode } from "../src/transport/frame.ts";
import { Msg } from "../src/transport/messages.ts";
import { deviceState, GOODBYE_GRACE_MS, Inventory, statusLine } from "../src/tunnel/relay/inventory.ts";
import { HISTORY_LIMIT, MemoryInventoryStore, SqliteInventoryStore, type InventoryStore, type StoredDevice } from "../src/tunnel/relay/inventory-store.ts";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { RefusalCode, type Refusal } from "../src/tunnel/relay/refusals.ts";
import { filterDevices, expiringSoon, formatFleet } from "../src/cli/devices.ts";
import { groupRefusals, hostOf, refusal } from "../src/tunnel/relay/refusals.ts";

const dir = mkdtempSync(join(tmpdir(), "agent-inv-store-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const START = Date.UTC(2026, 11, 1, 8, 0, 0);
const quiet = { debug() {}, info() {}, warn() {} };

const stores: [string, () => InventoryStore][] = [
  ["memory", () => new MemoryInventoryStore(5)],
  ["sqlite", () => new SqliteInventoryStore(join(dir, `inv-${Math.random().toString(36).slice(2)}.db`), 5)],
];

const dev = (id: string, o: Partial<StoredDevice> = {}): StoredDevice => ({
  id,
  serial: "0a",
  firstSeen: START,
  lastSeen: START + 1000,
  connectedSince: START,
  address: "192.0.2.1",
  info: { hostname: "pi", location: "Royal Champagne", agent: "1.0", uptime: 5, uplink: "eth0" },
  certExpires: START + 86_400_000,
  heartbeat: null,
  ...o,
});

describe.each(stores)("%s store", (_name, make) => {
  test("put, load, update; history bounded and oldest first; forget drops both", () => {
    const s = make();
    s.put(dev("site-1"));
    s.put(dev("site-2"));
    s.put(dev("site-1", { address: "192.0.2.9", lastSeen: START + 5000 }));
    const all = s.load().sort((a, b) => a.id.localeCompare(b.id));
    expect(all.map((d) => [d.id, d.address, d.lastSeen, d.firstSeen])).toEqual([
      ["site-1", "192.0.2.9", START + 5000, START],
      ["site-2", "192.0.2.1", START + 1000, START],
    ]);
    expect(all[0]!.info.location).toBe("Royal Champagne");
    for (let i = 0; i < 8; i++) s.event("site-1", { at: START + i, kind: i % 2 ? "disconnect" : "connect", address: "a", reason: `r${i}` });
    s.event("site-2", { at: START, kind: "connect", address: "b", reason: "x" });
    expect(s.history("site-1").map((e) => e.reason)).toEqual(["r3", "r4", "r5", "r6", "r7"]);
    expect(s.forget("site-1")).toBe(true);
    expect(s.forget("site-1")).toBe(false);
    expect(s.history("site-1")).toEqual([]);
    expect(s.load().map((d) => d.id)).toEqual(["site-2"]);
    expect(s.history("site-2")).toHaveLength(1);
    s.close();
  });
});

test("the sqlite store survives its process's handle: reopened, it has every device and its history", () => {
  const file = join(dir, "reopen.db");
  const a = new SqliteInventoryStore(file);
  a.put(dev("site-1", { heartbeat: { at: START, via: "wwan0", from: "203.0.113.1:5000", payload: { up: 1, act: "eth0", via: "wwan0", iv: 25000, tun: "waiting", ul: [], err: "x", load: 0, disk: 1 } } }));
  a.event("site-1", { at: START, kind: "connect", address: "192.0.2.1", reason: "from 192.0.2.1" });
  a.close();
  const b = new SqliteInventoryStore(file);
  expect(b.load()[0]!.heartbeat?.via).toBe("wwan0");
  expect(b.history("site-1")).toEqual([{ at: START, kind: "connect", address: "192.0.2.1", reason: "from 192.0.2.1" }]);
  expect(HISTORY_LIMIT).toBe(100);
  b.close();
});

describe("device state (pure)", () => {
  test.each([
    ["connected", true, null, "online"],
    ["connected, heartbeats too", true, { age: 1000, interval: 25_000, afterDisconnect: true }, "online"],
    ["no tunnel, a heartbeat 10 s ago", false, { age: 10_000, interval: 25_000, afterDisconnect: true }, "alive"],
    ["no tunnel, 3 intervals ago: still alive", false, { age: 75_000, interval: 25_000, afterDisconnect: true }, "alive"],
    ["no tunnel, three missed", false, { age: 75_001, interval: 25_000, afterDisconnect: true }, "lost"],
    ["no tunnel, never a heartbeat", false, null, "offline"],
    ["no tunnel, said goodbye after its last heartbeat", false, { age: 1000, interval: 25_000, afterDisconnect: false }, "offline"],
  ] as const)("%s → %s", (_n, connected, hb, expected) => expect(deviceState(connected, hb)).toBe(expected));

  test("status lines", () => {
    expect(statusLine("alive", { via: "wwan0", err: "connect ETIMEDOUT", ago: "3 s" })).toBe("tunnel down, alive over wwan0, last error: connect ETIMEDOUT");
    expect(statusLine("lost", { via: "eth0", err: null, ago: "80 s" })).toBe("lost: no heartbeat for 80 s (last over eth0)");
  });
});

describe("Inventory over a store", () => {
  test("made again on the same store (a restart), every device is listed offline with its history and first-seen", () => {
    const store = new MemoryInventoryStore();
    const clock = new FakeClock({ wall: START });
    const a = new Inventory(clock, store);
    a.connected("site-1", { serial: "0a", address: "192.0.2.1", agent: "1.0", certExpires: START + 10 * 86_400_000 });
    a.report("site-1", { hostname: "pi-1", location: "Royal Champagne", agent: "1.0", uptime: 100, uplink: "eth0" });
    clock.advance(60_000);
    a.disconnected("site-1", undefined, "connection lost: ECONNRESET");
    clock.advance(3_600_000);
    const b = new Inventory(clock, store);
    const [row] = b.rows();
    expect(row).toMatchObject({ id: "site-1", online: false, state: "offline", hostname: "pi-1", first_seen: new Date(START).toISOString(), serial: "0a", cert_expires: new Date(START + 10 * 86_400_000).toISOString() });
    expect(row!.last_seen).toBe(new Date(START + 60_000).toISOString());
    expect(b.history("site-1").map((e) => [e.kind, e.reason])).toEqual([
      ["connect", "from 192.0.2.1 (1.0)"],
      ["disconnect", "connection lost: ECONNRESET"],
    ]);
    expect(b.forget("site-1")).toBe(true);
    expect(new Inventory(clock, store).size).toBe(0);
  });
});

test("a store that fails (a full disk) is reported once, and the inventory goes on in memory", () => {
  const broken = new MemoryInventoryStore();
  let fail = true;
  broken.put = () => {
    if (fail) throw new Error("SQLITE_FULL: database or disk is full");
  };
  const errors: string[] = [];
  const inv = new Inventory(new FakeClock({ wall: START }), broken);
  inv.onStoreError = (e) => errors.push(e.message);
  inv.connected("site-1", { serial: "0a", address: "192.0.2.1", agent: "1.0" });
  inv.disconnected("site-1", undefined, "gone");
  inv.connected("site-1", { serial: "0a", address: "192.0.2.1", agent: "1.0" });
  expect(errors).toEqual(["SQLITE_FULL: database or disk is full"]);
  expect(inv.rows()[0]!.state).toBe("online");
  fail = false;
  inv.disconnected("site-1", undefined, "gone");
  fail = true;
  inv.connected("site-1", { serial: "0a", address: "192.0.2.1", agent: "1.0" });
  expect(errors).toHaveLength(2); // failing again after a write that worked: said again
});

describe("RelayServer with heartbeats and certificate expiry", () => {
  const secret = new Uint8Array(32).fill(7);
  function setup() {
    const clock = new FakeClock({ wall: START });
    const refusals: Refusal[] = [];
    const store = new MemoryInventoryStore();
    const server = new RelayServer({ id: "relay-1", log: quiet, access: () => [], clock, onRefusal: (r) => refusals.push(r), keepaliveInterval: 3_600_000, keepaliveTimeout: 7_200_000, inventoryStore: store, heartbeat: { secret, port: 4443 } });
    const connect = (id: string, notAfter: Date) => {
      const [link, relayLink] = linkPair("10.0.0.1", "10.9.9.9");
      const conn = new Connection(link, { side: "dialer", clock, keepaliveInterval: 3_600_000, keepaliveTimeout: 7_200_000 });
      const key = new Promise<Record<string, unknown>>((resolve) => conn.on(Msg.HEARTBEAT_KEY, resolve));
      server.accept(relayLink, { id, role: "onsite", serial: "0a", notAfter });
      conn.send(Msg.HELLO, { versions: [1], role: "onsite", id, agent: "t/1" });
      return { conn, key };
    };
    return { clock, refusals, server, connect, store };
  }

  test("HEARTBEAT_KEY follows WELCOME with the derived key; heartbeats after a disconnect make the device 'tunnel down, alive over wwan0'", async () => {
    const { clock, server, connect } = setup();
    const d = connect("site-1", new Date(START + 365 * 86_400_000));
    const k = await d.key;
    const key = deviceKey(secret, "site-1", "0a");
    expect(k).toEqual({ key: Buffer.from(key).toString("base64"), port: 4443 });
    d.conn.close(0, "test: cut");
    await new Promise((r) => setTimeout(r, 10));
    expect(server.deviceRows()[0]!.state).toBe("offline");
    // The device closed the connection itself: a heartbeat read within the grace may predate that.
    clock.advance(GOODBYE_GRACE_MS);
    const payload: HeartbeatPayload = { up: 10, act: "eth0", via: "wwan0", iv: 25_000, tun: "waiting", ul: [{ n: "eth0", s: "down", l: 100, r: null }, { n: "wwan0", s: "up", l: 0, r: 50, m: 1 }], err: "connect ETIMEDOUT", load: 0.1, disk: 500 };
    const boot = new Uint8Array(16).fill(2);
    server.heartbeats!.handle({ data: encodeHeartbeat({ id: "site-1", boot, seq: 0n, sentAt: clock.wall(), payload }, key), address: "203.0.113.5", port: 6000 });
    let row = server.deviceRows()[0]!;
    expect(row.state).toBe("alive");
    expect(row.status).toBe("tunnel down, alive over wwan0, last error: connect ETIMEDOUT");
    expect(row.heartbeat).toMatchObject({ via: "wwan0", from: "203.0.113.5:6000" });
    expect(formatFleet([row], START + 1000)).toContain("site-1: tunnel down, alive over wwan0, last error: connect ETIMEDOUT\n  uplinks: eth0 down loss 100%, wwan0 up loss 0% 50ms");
    clock.advance(75_001);
    row = server.deviceRows()[0]!;
    expect(row.state).toBe("lost");
    expect(server.deviceHistory("site-1")!.map((e) => e.kind)).toEqual(["connect", "disconnect", "alive"]);
    await server.close();
  });

  test("a certificate that expires while connected is closed at its expiry: GOAWAY REVOKED with the reason, and a refusal", async () => {
    const { clock, server, connect, refusals } = setup();
    const d = connect("site-2", new Date(START + 90_000));
    await d.key;
    clock.advance(89_000);
    expect(d.conn.closed).toBe(false);
    clock.advance(1_000);
    const why = await d.conn.wait();
    expect(why.remote).toBe(true);
    expect(why.code).toBe(GoAwayCode.REVOKED);
    expect(why.message).toContain("certificate 0a of site-2 expired at 2026-12-01T08:01:30.000Z");
    expect(refusals.at(-1)).toMatchObject({ code: RefusalCode.CERTIFICATE, presented: "site-2 (onsite)" });
    expect(server.certExpiries).toBe(1);
    await server.close();
  });
});

describe("listing helpers (pure)", () => {
  const row = (id: string, o: Record<string, unknown>) => ({ id, hostname: "", location: "", address: "a", agent: "", uptime: 0, uplink: "", online: false, connected_since: "", last_seen: new Date(START).toISOString(), rtt_ms: null, state: "offline", status: "offline", first_seen: "", serial: "0a", cert_expires: null, heartbeat: null, ...o }) as never;
  test("filters: default hides devices not heard since the relay started (unless their heartbeats say something)", () => {
    const list = [row("old", {}), row("alive", { state: "alive" }), row("new", { online: true, state: "online", last_seen: new Date(START + 5000).toISOString() })];
    expect(filterDevices(list, "default", START + 1000).map((d: { id: string }) => d.id)).toEqual(["alive", "new"]);
    expect(filterDevices(list, "all", START + 1000)).toHaveLength(3);
    expect(filterDevices(list, "offline", START + 1000).map((d: { id: string }) => d.id)).toEqual(["old", "alive"]);
  });
  test("certificates expiring within 30 days, soonest first; expired ones too", () => {
    const day = 86_400_000;
    const list = [row("a", { cert_expires: new Date(START + 40 * day).toISOString() }), row("b", { cert_expires: new Date(START + 29 * day).toISOString() }), row("c", { cert_expires: new Date(START - day).toISOString() })];
    expect(expiringSoon(list, START).map((d) => d.id)).toEqual(["c", "b"]);
    expect(formatFleet(list, START, "relay", "all")).toContain("certificate of b (serial 0a) expires");
  });
  test("refusals grouped by presented id and address (port dropped), with counts by code, since a time", () => {
    const t = (s: number) => new Date(START + s * 1000).toISOString();
    const list = [
      refusal(t(1), "198.51.100.7:50000", "site-9 (onsite)", RefusalCode.REVOKED, "certificate 0b is revoked"),
      refusal(t(2), "198.51.100.7:50001", "site-9 (onsite)", RefusalCode.REVOKED, "certificate 0b is revoked"),
      refusal(t(3), "203.0.113.1:4000", null, RefusalCode.NO_CERTIFICATE, "no client certificate"),
      refusal(t(4), "198.51.100.7:50002", "site-9 (onsite)", RefusalCode.CERTIFICATE, "expired"),
    ];
    expect(groupRefusals(list)).toEqual([
      { presented: "site-9 (onsite)", address: "198.51.100.7", count: 3, codes: { revoked: 2, certificate: 1 }, first: t(1), last: t(4), reason: "expired" },
      { presented: null, address: "203.0.113.1", count: 1, codes: { no_certificate: 1 }, first: t(3), last: t(3), reason: "no client certificate" },
    ]);
    expect(groupRefusals(list, START + 3500).map((g) => g.count)).toEqual([1]);
    expect(hostOf("[2001:db8::1]:443")).toBe("2001:db8::1");
    expect(hostOf("10.0.0.1")).toBe("10.0.0.1");
  });
});
