import { describe, expect, test } from "bun:test";
import { FakeClock, systemClock, wallOf } from "../src/clock.ts";

describe("FakeClock", () => {
  test("advance runs due timers in due order at their time; stepWall runs none", () => {
    const c = new FakeClock({ mono: 0, wall: 1_000_000 });
    const seen: string[] = [];
    c.setTimeout(() => seen.push(`b@${c.now()}`), 20);
    c.setTimeout(() => seen.push(`a@${c.now()}`), 10);
    const iv = c.setInterval(() => seen.push(`i@${c.now()}`), 15);
    c.stepWall(86_400_000);
    expect(seen).toEqual([]);
    c.advance(31);
    expect(seen).toEqual(["a@10", "i@15", "b@20", "i@30"]);
    c.clearInterval(iv);
    c.advance(100);
    expect(seen.length).toBe(4);
    expect(c.pending).toBe(0);
    expect(c.wall()).toBe(1_000_000 + 86_400_000 + 131);
  });

  test("a timer cleared before it is due never runs", () => {
    const c = new FakeClock();
    let ran = false;
    const t = c.setTimeout(() => (ran = true), 5);
    c.clearTimeout(t);
    c.advance(10);
    expect(ran).toBe(false);
  });

  test("wallOf maps a monotonic instant to the wall clock of now", () => {
    const c = new FakeClock({ mono: 500, wall: 10_000 });
    expect(wallOf(c, 600)).toBe(10_100);
    c.stepWall(-5_000);
    expect(wallOf(c, 600)).toBe(5_100);
  });

  test("the system clock's now() does not go backwards", () => {
    let last = systemClock.now();
    for (let i = 0; i < 1000; i++) {
      const n = systemClock.now();
      expect(n).toBeGreaterThanOrEqual(last);
      last = n;
    }
  });
});
