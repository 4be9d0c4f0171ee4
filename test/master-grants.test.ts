// A master's timed-access grants (src/roles/master-grants.ts) on a fake clock: what the device
// answered is listed with its time left, shown expired for EXPIRED_KEPT_MS, then dropped; a
// repeated rule moves its expiry and keeps its label; a closed session's grants go; the digest
// moves when the list does. And how `agent nat list` prints them on a master.
import { describe, expect, test } from "bun:test";
import { formatNatListing } from "../src/cli/nat.ts";
import { FakeClock } from "../src/clock.ts";
import type { RuleView } from "../src/nat/service.ts";
import { EXPIRED_KEPT_MS, MasterGrants } from "../src/roles/master-grants.ts";

const rule = (id: string, owner: string, remaining_ms: number, port = 8443): RuleView => ({ id, proto: "tcp", src: "198.51.100.7/32", port, to: "192.168.1.10:443", owner, created: "2026-12-01T10:00:00.000Z", expires: "2026-12-01T10:10:00.000Z", remaining_ms });
const WALL = Date.parse("2026-12-01T10:00:00.000Z");

describe("MasterGrants", () => {
  test("active, then expired for a while, then gone", () => {
    const clock = new FakeClock();
    const g = new MasterGrants(clock);
    g.add("site-1", { rule: rule("r1", "s-1", 60_000), created: true }, "Router web UI");
    const d0 = g.digest();
    expect(g.list(WALL)).toEqual([{ ...rule("r1", "s-1", 60_000), onsite: "site-1", label: "Router web UI", state: "active", expires: "2026-12-01T10:01:00.000Z" }]);
    clock.advance(59_000);
    expect(g.list(WALL)[0]).toMatchObject({ state: "active", remaining_ms: 1000 });
    expect(g.digest()).toBe(d0);
    clock.advance(1000);
    expect(g.list(WALL)[0]).toMatchObject({ state: "expired", remaining_ms: 0 });
    expect(g.digest()).not.toBe(d0);
    clock.advance(EXPIRED_KEPT_MS - 1);
    expect(g.list(WALL)).toHaveLength(1);
    clock.advance(1);
    expect(g.list(WALL)).toEqual([]);
    expect(g.digest()).toBe("");
  });

  test("a repeated rule moves its expiry and keeps its label; revoke and closed sessions remove", () => {
    const clock = new FakeClock();
    const g = new MasterGrants(clock);
    g.add("site-1", { rule: rule("r1", "s-1", 10_000), created: true }, "Router web UI");
    g.add("site-1", { rule: rule("r1", "s-1", 90_000), created: false });
    g.add("site-2", { rule: rule("r2", "s-2", 20_000, 8444), created: true });
    expect(g.list(WALL).map((x) => [x.id, x.remaining_ms, x.label])).toEqual([["r2", 20_000, ""], ["r1", 90_000, "Router web UI"]]);
    expect(g.get("r1")?.onsite).toBe("site-1");
    expect(g.remove("r1")).toBe(true);
    expect(g.remove("r1")).toBe(false);
    g.keepSessions(new Set(["s-1"]));
    expect(g.list(WALL)).toEqual([]);
  });

  test("a reply without a rule is not a grant", () => {
    const g = new MasterGrants(new FakeClock());
    g.add("site-1", {} as never);
    expect(g.list(WALL)).toEqual([]);
  });

  test("agent nat list on a master prints the grants", () => {
    const g = new MasterGrants(new FakeClock());
    expect(formatNatListing({ backend: "master", now: "", rules: [] })).toContain("no timed-access grants on this master");
    g.add("site-1", { rule: rule("r1", "s-1", 600_000), created: true }, "Router web UI");
    const out = formatNatListing({ backend: "master", now: "", rules: g.list(WALL) });
    expect(out).toMatch(/^ID\s+DEVICE\s+PROTO\s+SOURCE\s+PORT\s+TO\s+LEFT\s+SESSION\s+FOR/);
    expect(out).toContain("r1");
    expect(out).toContain("site-1");
    expect(out).toContain("Router web UI");
    expect(out).toContain("10m");
  });
});
