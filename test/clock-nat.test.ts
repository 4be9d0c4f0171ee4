// Wall-clock steps against running NAT rules. The rule (src/nat/service.ts, "Time"): a running
// rule's deadline is monotonic (mono at add + ttl, or mono at load + the time it had left by
// the wall clock at load); the persisted wall-clock expiry (state file, firewall tag) is what a
// restart reads and is written only when the deadline is set. So a step of the wall clock by a
// day, either way, makes no running rule longer or shorter and rewrites nothing.
import { describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { createLogger } from "../src/log.ts";
import { parseAllowEntry, parseIPv4 } from "../src/netaddr.ts";
import { FakeBackend } from "../src/nat/backend.ts";
import { deadlineAtLoad, persistedExpiry } from "../src/nat/plan.ts";
import { parseTag, ruleTag, type NatLimits, type Rule } from "../src/nat/rule.ts";
import { NatService } from "../src/nat/service.ts";
import { MemoryRuleStore } from "../src/nat/store.ts";

const DAY = 24 * 3600_000;
const MIN = 60_000;
const limits: NatLimits = { minTtlMs: 1000, maxTtlMs: 8 * 3_600_000, maxRules: 10, allowAnySource: false, allow: ["192.168.1.0/24"].map(parseAllowEntry) };
const own = [{ addr: parseIPv4("192.168.1.1"), prefix: 24 }];
const req = { src: "203.0.113.7", port: "8080", to: "192.168.1.50:80", ttl: "10m" };

function rig(clock: FakeClock, store = new MemoryRuleStore()) {
  const backend = new FakeBackend();
  const cut: string[] = [];
  const lines: string[] = [];
  const svc = new NatService({
    backend,
    store,
    limits,
    keepOnStop: false,
    ownAddresses: async () => own,
    cutFlows: async (rs) => void cut.push(...rs.map((r) => r.id)),
    log: createLogger({ level: "info", write: (l) => void lines.push(l) }),
    clock,
  });
  return { svc, backend, store, cut, lines };
}

/** Moves monotonic time and lets the expiry (an async apply on the fake backend) finish. */
async function advance(clock: FakeClock, ms: number): Promise<void> {
  clock.advance(ms);
  for (let i = 0; i < 3; i++) await new Promise((r) => setTimeout(r, 0));
}

describe("the pure conversions between running deadlines and persisted expiries", () => {
  test.each([
    // expiresAt, wall, mono → deadline
    [1_000_600_000, 1_000_000_000, 5_000, 605_000], // ten minutes left at load
    [1_000_000_000, 1_000_000_000, 5_000, 5_000], // due now
    [999_000_000, 1_000_000_000, 5_000, -995_000], // overdue (plan() drops these at start)
  ])("deadlineAtLoad(%p, wall %p, mono %p) = %p", (exp, wall, mono, want) => {
    expect(deadlineAtLoad(exp, wall, mono)).toBe(want);
    // And back: the persisted expiry of that deadline, read at the same moment, is the same.
    expect(persistedExpiry(want, wall, mono)).toBe(exp);
  });
  test("after a wall step the same deadline persists as the same time left on the new wall clock", () => {
    const d = deadlineAtLoad(1_000_600_000, 1_000_000_000, 5_000);
    expect(persistedExpiry(d, 1_000_000_000 - DAY, 5_000)).toBe(1_000_600_000 - DAY);
  });
});

describe("running NAT rules under wall-clock steps", () => {
  for (const steps of [[DAY], [-DAY], [DAY, -2 * DAY], [-DAY, 2 * DAY]]) {
    test(`a 10 min rule ends after exactly 10 min of monotonic time (wall steps ${steps.map((s) => s / DAY).join(", ")} day)`, async () => {
      const clock = new FakeClock();
      const { svc, backend, store, cut } = rig(clock);
      await svc.start();
      const wallAtAdd = clock.wall();
      const { rule } = await svc.add(req, "local");
      const persisted = store.rules[0]!.expiresAt;
      expect(persisted).toBe(wallAtAdd + 10 * MIN);
      const tag = parseTag(ruleTag(backend.installed.get(rule.id)!))!.expiresAt;
      let elapsed = 0;
      for (const s of steps) {
        await advance(clock, 2 * MIN);
        elapsed += 2 * MIN;
        clock.stepWall(s);
        // The time left is the time left: not a day more, not a day less (nor expired at once).
        expect(svc.list().map((r) => r.remaining_ms)).toEqual([10 * MIN - elapsed]);
      }
      await advance(clock, 10 * MIN - 2 * MIN * steps.length - 1);
      expect(backend.installed.has(rule.id)).toBe(true);
      expect(svc.list().map((r) => r.remaining_ms)).toEqual([1]);
      // The step rewrote nothing: the state file and the firewall tag say what they said.
      expect(store.rules[0]!.expiresAt).toBe(persisted);
      expect(parseTag(ruleTag(backend.installed.get(rule.id)!))!.expiresAt).toBe(tag);
      await advance(clock, 1);
      expect(backend.installed.size).toBe(0);
      expect(store.rules).toEqual([]);
      expect(cut).toEqual([rule.id]);
      await svc.close();
    });
  }

  for (const step of [DAY, -DAY]) {
    test(`a rule loaded at start keeps the time it had left, across a wall step of ${step > 0 ? "+" : "-"}1 day`, async () => {
      const clock = new FakeClock();
      const store = new MemoryRuleStore();
      const wall = clock.wall();
      const saved: Rule = { id: "abcd0123", proto: "tcp", src: "203.0.113.7/32", port: 8080, toAddr: "192.168.1.50", toPort: 80, ttlMs: 30 * MIN, owner: "local", createdAt: wall - 20 * MIN, expiresAt: wall + 10 * MIN };
      store.rules = [saved];
      const { svc, backend, lines } = rig(clock, store);
      await svc.start();
      expect(lines.join("")).toContain("re-armed rule abcd0123: expires in 600s");
      clock.stepWall(step);
      await advance(clock, 10 * MIN - 1);
      expect(backend.installed.has("abcd0123")).toBe(true);
      expect(store.rules[0]!.expiresAt).toBe(saved.expiresAt);
      await advance(clock, 1);
      expect(backend.installed.size).toBe(0);
      await svc.close();
    });
  }

  test("a monotonic clock with fractions (as performance.now() has) still shows whole seconds and milliseconds left", async () => {
    // mono + 600000 - mono is 600000.0000000002 for this start: a ceil of it said "601s".
    const clock = new FakeClock({ mono: 2_088_714.978_647_413_4 });
    const store = new MemoryRuleStore();
    const wall = clock.wall();
    expect(clock.now() + 10 * MIN - clock.now()).not.toBe(10 * MIN);
    store.rules = [{ id: "abcd0123", proto: "tcp", src: "203.0.113.7/32", port: 8080, toAddr: "192.168.1.50", toPort: 80, ttlMs: 30 * MIN, owner: "local", createdAt: wall - 20 * MIN, expiresAt: wall + 10 * MIN }];
    const { svc, lines } = rig(clock, store);
    await svc.start();
    expect(lines.join("")).toContain("re-armed rule abcd0123: expires in 600s");
    expect(svc.list()[0]!.remaining_ms).toBe(10 * MIN);
    await svc.close();
  });

  test("an extend after a backward step lasts its ttl from then, and persists it on the wall clock of then", async () => {
    const clock = new FakeClock();
    const { svc, backend, store } = rig(clock);
    await svc.start();
    const { rule } = await svc.add(req, "local");
    const created = store.rules[0]!.createdAt;
    await advance(clock, 5 * MIN);
    clock.stepWall(-DAY);
    const again = await svc.add(req, "local");
    expect(again.created).toBe(false);
    expect(again.rule.remaining_ms).toBe(10 * MIN);
    // Persisted for a restart: ten minutes from now on today's (stepped) wall clock.
    expect(store.rules[0]!.expiresAt).toBe(clock.wall() + 10 * MIN);
    expect(store.rules[0]!.createdAt).toBe(created);
    clock.stepWall(2 * DAY);
    await advance(clock, 10 * MIN - 1);
    expect(backend.installed.has(rule.id)).toBe(true);
    await advance(clock, 1);
    expect(backend.installed.size).toBe(0);
    await svc.close();
  });

  test("an extend shorter than the time left changes neither the deadline nor the persisted expiry", async () => {
    const clock = new FakeClock();
    const { svc, store } = rig(clock);
    await svc.start();
    await svc.add({ ...req, ttl: "30m" }, "local");
    const persisted = store.rules[0]!.expiresAt;
    clock.stepWall(DAY);
    await advance(clock, MIN);
    const again = await svc.add(req, "local"); // 10 min < the 29 min left
    expect(again.rule.remaining_ms).toBe(29 * MIN);
    expect(store.rules[0]!.expiresAt).toBe(persisted);
    await svc.close();
  });

  test("status and list order by the running deadline, not by a persisted time a step made stale", async () => {
    const clock = new FakeClock();
    const { svc } = rig(clock);
    await svc.start();
    const long = await svc.add({ ...req, ttl: "20m" }, "local");
    clock.stepWall(DAY);
    // Persisted a day "later" on the stepped wall clock, but due first on the monotonic one.
    const short = await svc.add({ ...req, port: "8081", ttl: "15m" }, "local");
    expect(Date.parse(short.rule.expires)).toBeGreaterThan(Date.parse(long.rule.expires));
    expect(svc.list().map((r) => r.id)).toEqual([short.rule.id, long.rule.id]);
    expect(svc.list().map((r) => r.remaining_ms)).toEqual([15 * MIN, 20 * MIN]);
    expect(svc.status().next_expiry).toBe(short.rule.expires);
    await svc.close();
  });
});
