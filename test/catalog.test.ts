// Issue 15's backend, below the processes: the [[service]] config, the catalogue a master
// builds (merge and what to open per kind), the relay keeping a device's services (memory and
// sqlite) and returning them with its state in DEVICES, SESSION_EXTEND on a fake clock, the
// device_state events, the master's session events and extend, and the status card's parsers.
import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FakeClock } from "../src/clock.ts";
import { ConfigError, resolveConfig, serviceProblems } from "../src/config.ts";
import { EventBus, type AgentEvent } from "../src/events.ts";
import { fillOffer, mergeCatalogue, serviceOffer } from "../src/roles/services.ts";
import { parseLeases, parseRouteGet, secondaryView } from "../src/roles/master-host.ts";
import { formatServices } from "../src/cli/services.ts";
import { GOODBYE_GRACE_MS, Inventory } from "../src/tunnel/relay/inventory.ts";
import { SqliteInventoryStore } from "../src/tunnel/relay/inventory-store.ts";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { decideExtend } from "../src/tunnel/relay/extend.ts";
import { decide, opening } from "../src/tunnel/master-session.ts";
import { MasterSessions } from "../src/tunnel/master-forwarder.ts";
import { Connection, RemoteError } from "../src/transport/mux.ts";
import { linkPair } from "../src/transport/link.ts";
import { MAX_CONTROL_MESSAGE } from "../src/transport/frame.ts";
import { ErrorCode, MAX_SESSION_TTL, Msg, type DeviceInfo, type SessionCloseBody, type SessionExpiresBody } from "../src/transport/messages.ts";
import type { HeartbeatPayload } from "../src/transport/heartbeat/codec.ts";
import { on, request } from "../src/transport/typed.ts";
import { waitFor } from "./helpers/wait.ts";

const quiet = { debug() {}, info() {}, warn() {} };
const file = (raw: Record<string, unknown>) => [{ origin: { kind: "file" as const, path: "/etc/agent/agent.toml" }, raw }];

describe("[[service]] in the config", () => {
  test("an onsite device's services are read as written, description optional", () => {
    const cfg = resolveConfig(file({ role: "onsite", service: [{ name: "Router web UI", target: "192.168.1.1:80", kind: "http" }, { name: "NAS", target: "nas.lan:22", kind: "ssh", description: "backups" }] }));
    expect(cfg.service).toEqual([
      { name: "Router web UI", target: "192.168.1.1:80", kind: "http" },
      { name: "NAS", target: "nas.lan:22", kind: "ssh", description: "backups" },
    ]);
  });
  test("none by default", () => expect(resolveConfig(file({ role: "onsite" })).service).toEqual([]));
  test("a master's entries name their device", () => {
    expect(resolveConfig(file({ role: "master", service: [{ device: "site-1", name: "Printer", target: "192.168.1.9:631", kind: "https" }] })).service[0]!.device).toBe("site-1");
  });
  test.each([
    [[{ name: "a", target: "10.0.0.1:80", kind: "http" }, { name: "a", target: "10.0.0.1:81", kind: "http" }], "onsite", 'service[1].name: service "a" is listed twice'],
    [[{ name: "a", target: "10.0.0.1:80", kind: "http", device: "site-1" }, { name: "a", target: "10.0.0.1:80", kind: "http", device: "site-2" }], "master", null],
    [[{ name: "a", target: "10.0.0.1:80", kind: "http", device: "site-1" }], "onsite", "service[0].device: an onsite device advertises its own services"],
    [[{ name: "a", target: "10.0.0.1:80", kind: "http" }], "master", "service[0].device: missing"],
  ] as const)("%j on %s: %s", (services, role, problem) => {
    const found = serviceProblems(services as never, role).map((p) => `${p.key}: ${p.message}`);
    if (problem === null) expect(found).toEqual([]);
    else expect(found.join("\n")).toContain(problem);
  });
  test("more than 64 are refused", () => {
    const many = Array.from({ length: 65 }, (_, i) => ({ name: `s${i}`, target: "10.0.0.1:80", kind: "tcp" }));
    expect(() => resolveConfig(file({ role: "onsite", service: many }))).toThrow(ConfigError);
    expect(() => resolveConfig(file({ role: "onsite", service: many }))).toThrow("65 services; at most 64");
  });
});

describe("what the catalogue offers per kind", () => {
  test.each([
    ["http", "tab", "http://127.0.0.1:{port}/", null],
    ["https", "tab", "https://127.0.0.1:{port}/", null],
    ["ssh", "command", "ssh://127.0.0.1:{port}", "ssh -p {port} -o HostKeyAlias=site-1-192.168.1.5 127.0.0.1"],
    ["rdp", "url", "rdp://full%20address=s:127.0.0.1:{port}", "xfreerdp /v:127.0.0.1:{port}"],
    ["vnc", "url", "vnc://127.0.0.1:{port}", "vncviewer 127.0.0.1::{port}"],
    ["tcp", "forward", null, null],
  ] as const)("%s: %s", (kind, action, url, command) => {
    expect(serviceOffer(kind, "192.168.1.5:3389", "site-1")).toEqual({ action, forward: "0:192.168.1.5:3389", url, command });
  });
  test("filled with the forward's local port", () => {
    expect(fillOffer(serviceOffer("ssh", "nas.lan:22", "site-1"), 40022)).toEqual({ action: "command", forward: "40022:nas.lan:22", url: "ssh://127.0.0.1:40022", command: "ssh -p 40022 -o HostKeyAlias=site-1-nas.lan 127.0.0.1" });
  });
});

const dev = (id: string, extra: Partial<DeviceInfo> = {}): DeviceInfo => ({ id, hostname: "pi", location: `Loc ${id}`, address: "203.0.113.1", agent: "agent/1", uptime: 1, uplink: "eth0", online: true, connected_since: "2026-12-01T08:00:00.000Z", last_seen: "2026-12-01T08:00:00.000Z", rtt_ms: 3, ...extra });

describe("the merged catalogue", () => {
  const devices = [dev("site-2", { services: [{ name: "Router", target: "192.168.2.1:443", kind: "https" }] }), dev("site-1", { online: false, services: [{ name: "Cam", target: "192.168.1.7:554", kind: "tcp", description: "door" }] })];
  const own = [
    { device: "site-1", name: "Admin ssh", target: "192.168.1.2:22", kind: "ssh" as const },
    { device: "site-9", name: "Gone", target: "10.0.0.1:80", kind: "http" as const },
  ];
  test("device entries and the master's, by device then source then name, with location and online", () => {
    const list = mergeCatalogue(devices, own);
    expect(list.map((s) => [s.device, s.source, s.name, s.location, s.online])).toEqual([
      ["site-1", "device", "Cam", "Loc site-1", false],
      ["site-1", "master", "Admin ssh", "Loc site-1", false],
      ["site-2", "device", "Router", "Loc site-2", true],
      ["site-9", "master", "Gone", "", false],
    ]);
    expect(list[0]!.description).toBe("door");
    expect(list[2]!.offer.action).toBe("tab");
  });
  test("one device's only", () => {
    expect(mergeCatalogue(devices, own, "site-1").map((s) => s.name)).toEqual(["Cam", "Admin ssh"]);
    expect(mergeCatalogue(devices, own, "site-3")).toEqual([]);
  });
  test("the CLI's table names the offline device and what to open", () => {
    const text = formatServices(mergeCatalogue(devices, own));
    expect(text).toContain("site-1 (offline)");
    expect(text).toContain("ssh -p {port} -o HostKeyAlias=site-1-192.168.1.2 127.0.0.1");
    expect(text).toContain("https://127.0.0.1:{port}/");
    expect(formatServices([], "site-3")).toContain('no services listed for site-3');
  });
});

describe("the relay keeps a device's services", () => {
  let dir = "";
  afterEach(() => dir && rmSync(dir, { recursive: true, force: true }));
  const body = { hostname: "pi", location: "Hall", agent: "agent/1", uptime: 5, uplink: "eth0", services: [{ name: "Router", target: "192.168.1.1:80", kind: "http" as const }] };

  test("in memory: listed while online and after it went offline; a report without services clears them", () => {
    const inv = new Inventory(new FakeClock());
    inv.connected("site-1", { serial: "1", address: "203.0.113.1", agent: "a" });
    inv.report("site-1", body);
    expect(inv.list()[0]!.services).toEqual(body.services);
    inv.disconnected("site-1");
    expect(inv.rows()[0]!.services).toEqual(body.services);
    inv.connected("site-1", { serial: "1", address: "203.0.113.1", agent: "a" });
    inv.report("site-1", { ...body, services: undefined });
    expect(inv.list()[0]!.services).toBeUndefined();
  });

  test("across a restart (sqlite)", () => {
    dir = mkdtempSync(join(tmpdir(), "agent-catalog-"));
    const path = join(dir, "inventory.db");
    const a = new Inventory(new FakeClock(), new SqliteInventoryStore(path));
    a.connected("site-1", { serial: "1", address: "203.0.113.1", agent: "a" });
    a.report("site-1", body);
    a.disconnected("site-1");
    const b = new Inventory(new FakeClock(), new SqliteInventoryStore(path));
    expect(b.rows()[0]).toMatchObject({ id: "site-1", online: false, state: "offline", services: body.services });
  });
});

// ---- the relay, on a fake clock, through in-memory links -----------------------------------

const relays: RelayServer[] = [];
const conns: Connection[] = [];
afterEach(async () => {
  for (const c of conns.splice(0)) c.close();
  await Promise.all(relays.splice(0).map((r) => r.close()));
});

function relay(clock: FakeClock, events: EventBus, heartbeat = false): RelayServer {
  const r = new RelayServer({ id: "relay-1", log: quiet, access: () => [], clock, events, helloDeadline: 10_000, keepaliveInterval: 3_600_000, newSessionId: () => "s-fixed1", ...(heartbeat ? { heartbeat: { secret: new Uint8Array(32).fill(1), port: 9 } } : {}) });
  relays.push(r);
  return r;
}

async function peer(r: RelayServer, role: string, id: string) {
  const [link, relayLink] = linkPair("10.0.0.1", "10.9.9.9");
  const conn = new Connection(link, { side: "dialer", maxControlIn: MAX_CONTROL_MESSAGE });
  conns.push(conn);
  const closes: SessionCloseBody[] = [];
  const expires: SessionExpiresBody[] = [];
  on(conn, Msg.SESSION_CLOSE, (b) => closes.push(b));
  on(conn, Msg.SESSION_EXPIRES, (b) => expires.push(b));
  conn.handle(Msg.SESSION_OFFER, () => ({}));
  const welcomed = new Promise((resolve) => conn.on(Msg.WELCOME, resolve));
  r.accept(relayLink, { id, role, serial: `serial-${id}` });
  conn.send(Msg.HELLO, { versions: [1], role, id, agent: "test/1" });
  await welcomed;
  return { conn, closes, expires };
}

function recorder(bus: EventBus) {
  const seen: AgentEvent[] = [];
  bus.subscribe((e) => seen.push(e));
  return seen;
}

describe("DEVICES to a master carries the relay's rows and the services", () => {
  test("state, status, first_seen and services reach the master decoded", async () => {
    const clock = new FakeClock();
    const r = relay(clock, new EventBus(clock));
    const onsite = await peer(r, "onsite", "site-1");
    const master = await peer(r, "master", "tech-1");
    onsite.conn.send(Msg.INVENTORY, { hostname: "pi", location: "Hall", agent: "a", uptime: 1, uplink: "eth0", services: [{ name: "Router", target: "192.168.1.1:80", kind: "http" }] });
    await waitFor(() => r.deviceList()[0]?.services !== undefined, 2000, "the INVENTORY");
    const list = await request(master.conn, Msg.DEVICES, {});
    expect(list).toHaveLength(1);
    expect(list[0]).toMatchObject({ id: "site-1", location: "Hall", state: "online", status: "online", heartbeat: null, cert_expires: null, services: [{ name: "Router", target: "192.168.1.1:80", kind: "http" }] });
    expect(typeof list[0]!.first_seen).toBe("string");
  });
});

describe("SESSION_EXTEND", () => {
  test("moves the relay's end (the TTL then fires at the new end), tells the device, publishes session_extend", async () => {
    const clock = new FakeClock();
    const bus = new EventBus(clock);
    const seen = recorder(bus);
    const r = relay(clock, bus);
    const onsite = await peer(r, "onsite", "site-1");
    const master = await peer(r, "master", "tech-1");
    await request(master.conn, Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"], ttl: 60_000, session: null });
    clock.advance(50_000);
    const info = await request(master.conn, Msg.SESSION_EXTEND, { session: "s-fixed1", ttl: 120_000 });
    expect(Date.parse(info.expires!) - clock.wall()).toBe(120_000);
    await waitFor(() => onsite.expires.length === 1, 2000, "SESSION_EXPIRES at the device");
    expect(onsite.expires[0]).toEqual({ session: "s-fixed1", expires: info.expires! });
    expect(seen.find((e) => e.type === "session_extend")).toMatchObject({ session: "s-fixed1", master: "tech-1", onsite: "site-1", expires: info.expires, clamped: false });
    clock.advance(60_000); // past the old end
    expect(r.sessionList().map((s) => s.session)).toEqual(["s-fixed1"]);
    clock.advance(60_000);
    expect(r.sessionList()).toEqual([]);
    await waitFor(() => master.closes.length === 1, 2000, "SESSION_CLOSE");
    expect(master.closes[0]!.reason).toBe("TTL of 170 s reached");
  });

  test("a TTL past the longest is clamped; another master's session and one without a TTL are refused", async () => {
    const clock = new FakeClock();
    const r = relay(clock, new EventBus(clock));
    await peer(r, "onsite", "site-1");
    const master = await peer(r, "master", "tech-1");
    const other = await peer(r, "master", "tech-2");
    await request(master.conn, Msg.SESSION_OPEN, { onsite: "site-1", targets: ["10.0.0.5:80"], ttl: 60_000, session: null });
    const info = await request(master.conn, Msg.SESSION_EXTEND, { session: "s-fixed1", ttl: MAX_SESSION_TTL * 3 });
    expect(Date.parse(info.expires!) - clock.wall()).toBe(MAX_SESSION_TTL);
    const err = (await request(other.conn, Msg.SESSION_EXTEND, { session: "s-fixed1", ttl: 60_000 }).catch((e: RemoteError) => e)) as RemoteError;
    expect(err.code).toBe(ErrorCode.NO_SESSION);
    expect(decideExtend({ id: "s-x", state: "active", expiresAt: null }, 60_000, 0)).toMatchObject({ ok: false, code: ErrorCode.BAD_REQUEST });
    expect(decideExtend({ id: "s-x", state: "offered", expiresAt: 5 }, 60_000, 0)).toMatchObject({ ok: false, code: ErrorCode.NO_SESSION });
  });
});

describe("device_state events on the relay", () => {
  const payload: HeartbeatPayload = { up: 1, act: "eth0", via: "wwan0", iv: 1000, tun: "waiting", ul: [], err: "connect ECONNREFUSED", load: 0, disk: 1 };
  test("online at HELLO, offline at the disconnect; a heartbeat makes it alive, silence lost (found by the sweep)", async () => {
    const clock = new FakeClock();
    const bus = new EventBus(clock);
    const seen = recorder(bus);
    const r = relay(clock, bus, true);
    const onsite = await peer(r, "onsite", "site-1");
    const states = () => seen.filter((e) => e.type === "device_state").map((e) => [e.id, e.previous, e.state]);
    expect(states()).toEqual([["site-1", "offline", "online"]]);
    onsite.conn.close();
    await waitFor(() => states().length === 2, 2000, "the disconnect");
    expect(states()[1]).toEqual(["site-1", "online", "offline"]);
    // A heartbeat within the goodbye's grace may predate it: it does not make the device alive.
    r.inventory.beat("site-1", { at: clock.now(), from: "198.51.100.2:4000", payload });
    expect(states()).toHaveLength(2);
    clock.advance(GOODBYE_GRACE_MS);
    r.inventory.beat("site-1", { at: clock.now(), from: "198.51.100.2:4000", payload });
    expect(states()[2]).toEqual(["site-1", "offline", "alive"]);
    expect(seen.filter((e) => e.type === "device_state")[2]!.status).toBe("tunnel down, alive over wwan0, last error: connect ECONNREFUSED");
    clock.advance(3 * 1000 + 1);
    expect(states()).toHaveLength(3); // nothing until the sweep looks
    clock.advance(5_000);
    expect(states()[3]).toEqual(["site-1", "alive", "lost"]);
    clock.advance(20_000);
    expect(states()).toHaveLength(4); // said once
  });
});

describe("the master's side of extend and its session events", () => {
  test("the state machine's 'extended' moves the end and re-arms the timer", () => {
    const opened = decide(opening(0), { kind: "opened", ttl: 60_000 }, 0).state;
    const d = decide(opened, { kind: "extended", ttl: 600_000 }, 30_000);
    expect(d.state.expiresAt).toBe(630_000);
    expect(d.actions).toEqual([{ kind: "expire-in", ms: expect.any(Number) }]);
    expect((d.actions[0] as { ms: number }).ms).toBeGreaterThanOrEqual(600_000);
    expect(decide(opening(0), { kind: "extended", ttl: 1000 }, 0).actions).toEqual([]);
  });

  test("MasterSessions: extend asks the relay, its end follows the answer; phases go to onPhase", async () => {
    const clock = new FakeClock();
    const r = relay(clock, new EventBus(clock));
    await peer(r, "onsite", "site-1");
    const master = await peer(r, "master", "tech-1");
    const phases: [string, string, string][] = [];
    const sessions = new MasterSessions({ log: quiet, relay: () => master.conn, relayState: () => "up", clock, onPhase: (v, from, to) => phases.push([v.session, from, to]) });
    sessions.setup(master.conn);
    try {
      const v = await sessions.connect("site-1", [{ bind: "127.0.0.1", port: 0, target: "10.0.0.5:80" }], 60_000);
      expect(phases).toEqual([["s-fixed1", "opening", "active"]]);
      const before = Date.parse(v.expires!);
      const after = await sessions.extend(v.session, 3_600_000);
      expect(Date.parse(after.expires!) - before).toBeGreaterThan(3_000_000);
      expect(Date.parse(r.sessionList()[0]!.expires!) - clock.wall()).toBe(3_600_000);
      await sessions.disconnect(v.session);
      expect(phases.at(-1)).toEqual(["s-fixed1", "active", "closed"]);
      await expect(sessions.extend(v.session, 60_000)).rejects.toThrow("no session");
    } finally {
      sessions.close();
    }
  });
});

describe("the status card's host facts", () => {
  test("the route to the relay", () => {
    expect(parseRouteGet('[{"dst":"203.0.113.5","gateway":"192.168.1.1","dev":"eth0","prefsrc":"192.168.1.20","flags":[],"uid":0,"cache":[]}]')).toEqual({ iface: "eth0", address: "192.168.1.20", gateway: "192.168.1.1" });
    expect(parseRouteGet('[{"dst":"127.0.0.1","dev":"lo","prefsrc":"127.0.0.1"}]')).toEqual({ iface: "lo", address: "127.0.0.1", gateway: null });
    expect(parseRouteGet("[]")).toBeNull();
  });
  test("dnsmasq's leases", () => {
    expect(parseLeases("1764582000 aa:bb:cc:dd:ee:ff 192.168.77.50 laptop 01:aa:bb:cc:dd:ee:ff\n0 11:22:33:44:55:66 192.168.77.51 * *\ngarbage\n")).toEqual([
      { mac: "aa:bb:cc:dd:ee:ff", address: "192.168.77.50", hostname: "laptop", expires: "2025-12-01T09:40:00.000Z" },
      { mac: "11:22:33:44:55:66", address: "192.168.77.51", hostname: "", expires: null },
    ]);
  });
  test("the secondary interface: absent, up with an address, in a bridge", () => {
    expect(secondaryView("eth1", null, null, [])).toEqual({ iface: "eth1", present: false, up: false, addresses: [], bridge: null, leases: [] });
    const link = '[{"ifname":"eth1","flags":["BROADCAST","UP","LOWER_UP"],"operstate":"UP","master":"agt-br0"}]';
    const addr = '[{"ifname":"eth1","addr_info":[{"family":"inet","local":"192.168.77.1","prefixlen":24}]}]';
    expect(secondaryView("eth1", link, addr, [])).toEqual({ iface: "eth1", present: true, up: true, addresses: ["192.168.77.1/24"], bridge: "agt-br0", leases: [] });
    expect(secondaryView("eth1", '[{"ifname":"eth1","flags":["NO-CARRIER","UP"],"operstate":"DOWN"}]', "[]", []).up).toBe(false);
  });
});
