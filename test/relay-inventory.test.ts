// The relay's inventory on a fake clock: stored state without any Connection, fed by the TLS
// path (connected / report / disconnected) and by anything else that hears a device (`heard`,
// what a UDP heartbeat will call). Ages and uptimes follow the monotonic clock only.
import { describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { FIELD_LIMITS, Inventory, type Liveness } from "../src/tunnel/relay/inventory.ts";

const START = Date.UTC(2026, 11, 1, 8, 0, 0);
const report = { hostname: "pi-1", location: "Royal Champagne", agent: "agent/1.0", uptime: 100, uplink: "wifi" };

function setup() {
  const clock = new FakeClock({ wall: START });
  const inv = new Inventory(clock);
  inv.connected("site-1", { serial: "01", address: "192.0.2.1", agent: "agent/0.9" });
  return { clock, inv };
}

describe("Inventory", () => {
  test("a connected device is listed online with what it reported, its uptime running on", () => {
    const { clock, inv } = setup();
    inv.report("site-1", report);
    clock.advance(30_000);
    expect(inv.list()).toEqual([
      {
        id: "site-1",
        hostname: "pi-1",
        location: "Royal Champagne",
        address: "192.0.2.1",
        agent: "agent/1.0",
        uptime: 130,
        uplink: "wifi",
        online: true,
        connected_since: "2026-12-01T08:00:00.000Z",
        last_seen: "2026-12-01T08:00:00.000Z",
        rtt_ms: null,
      },
    ]);
    expect(inv.counts()).toEqual({ known: 1, online: 1 });
  });

  test("reported fields are cut to their limits; an empty agent keeps the HELLO's", () => {
    const { inv } = setup();
    inv.report("site-1", { hostname: "h".repeat(1000), location: "l".repeat(1000), agent: "", uptime: 12.7, uplink: "u".repeat(100) });
    const d = inv.list()[0]!;
    expect([d.hostname.length, d.location.length, d.uplink.length]).toEqual([FIELD_LIMITS.hostname, FIELD_LIMITS.location, FIELD_LIMITS.uplink]);
    expect(d.agent).toBe("agent/0.9");
    expect(d.uptime).toBe(12);
  });

  test("a disconnected device stays known, offline, with the uptime it last had and its last-seen time", () => {
    const { clock, inv } = setup();
    inv.report("site-1", report);
    clock.advance(10_000);
    inv.disconnected("site-1");
    clock.advance(3_600_000);
    expect(inv.list()[0]).toMatchObject({ online: false, uptime: 100, last_seen: "2026-12-01T08:00:10.000Z", rtt_ms: null });
    expect(inv.age("site-1")).toBe(3_600_000);
    expect(inv.counts()).toEqual({ known: 1, online: 0 });
  });

  test("reconnecting keeps the last report and takes the new address and agent", () => {
    const { clock, inv } = setup();
    inv.report("site-1", report);
    inv.disconnected("site-1");
    clock.advance(60_000);
    inv.connected("site-1", { serial: "02", address: "192.0.2.2", agent: "agent/1.1" });
    expect(inv.list()[0]).toMatchObject({ online: true, address: "192.0.2.2", agent: "agent/1.1", hostname: "pi-1", connected_since: "2026-12-01T08:01:00.000Z" });
    expect(inv.get("site-1")!.serial).toBe("02");
  });

  test("heard() from outside the TLS path (a heartbeat) keeps a device fresh; it never moves last-seen back", () => {
    const { clock, inv } = setup();
    clock.advance(50_000);
    expect(inv.stale(30_000)).toEqual(["site-1"]);
    inv.heard("site-1");
    expect(inv.stale(30_000)).toEqual([]);
    inv.heard("site-1", clock.now() - 40_000);
    expect(inv.age("site-1")).toBe(0);
    expect(inv.heard("nobody")).toBeNull();
    expect(inv.age("nobody")).toBeNull();
  });

  test("the live path's answer decides online and adds its last frame and RTT", () => {
    const { clock, inv } = setup();
    clock.advance(20_000);
    const alive: Liveness = () => ({ lastReceived: clock.now() - 1_000, rtt: 12 });
    expect(inv.list(alive)[0]).toMatchObject({ online: true, rtt_ms: 12, last_seen: "2026-12-01T08:00:19.000Z" });
    expect(inv.age("site-1", alive)).toBe(1_000);
    // Connected as far as the path said, but its connection has just closed: offline already.
    expect(inv.list(() => null)[0]).toMatchObject({ online: false, rtt_ms: null });
    expect(inv.online("site-1", () => null)).toBe(false);
    expect(inv.counts(() => null)).toEqual({ known: 1, online: 0 });
  });

  test.each([
    ["+1 day", 86_400_000],
    ["-1 day", -86_400_000],
  ])("a wall-clock step of %s ages no device and makes none look fresh", (_name, step) => {
    const { clock, inv } = setup();
    inv.report("site-1", report);
    inv.connected("site-2", { serial: "03", address: "192.0.2.3", agent: "a" });
    clock.advance(20_000);
    inv.heard("site-2");
    const before = { stale: inv.stale(10_000), ages: [inv.age("site-1"), inv.age("site-2")], uptime: inv.list()[0]!.uptime };
    clock.stepWall(step);
    expect({ stale: inv.stale(10_000), ages: [inv.age("site-1"), inv.age("site-2")], uptime: inv.list()[0]!.uptime }).toEqual(before);
    expect(before.stale).toEqual(["site-1"]);
    // What people read moves with the wall clock; the ages behind it do not.
    expect(Date.parse(inv.list()[1]!.last_seen)).toBe(clock.wall());
  });
});
