// The uplink benchmark's computed mwan3 and keepalive figures (bench/lib/mwan3.ts): the model
// table-tested, so the README's computed figures can be checked against it.
import { describe, expect, test } from "bun:test";
import { keepaliveClose, mwan3Defaults, mwan3Detect } from "../bench/lib/mwan3.ts";

describe("mwan3Detect (computed, not measured)", () => {
  const one = mwan3Defaults(1);
  test.each([
    // kind, targets, k, n, ms: wait + 5 rounds × targets × 4 s + 4 intervals of 10 s
    ["blackhole", 1, 0, 20, 250 + 20_000 + 40_000],
    ["blackhole", 1, 9, 20, 4_750 + 20_000 + 40_000], // the median of 20 cuts: 64.75 s
    ["blackhole", 1, 19, 20, 9_750 + 20_000 + 40_000],
    ["blackhole", 3, 0, 1, 5_000 + 60_000 + 40_000], // each failed round pings every target in turn
    ["link", 1, 0, 20, 0], // netifd's ifdown hotplug: at once
    ["link", 3, 19, 20, 0],
  ] as const)("%s, %d target(s), cut %d of %d → %d ms", (kind, targets, k, n, want) => {
    expect(mwan3Detect({ ...one, targets }, kind, k, n)).toBe(want);
  });

  test("defaults: interval 10 s, down 5, timeout 4 s, count 1", () => {
    expect(mwan3Defaults(2)).toEqual({ interval: 10_000, down: 5, timeout: 4_000, count: 1, targets: 2 });
  });

  test("count pings per target each wait the timeout", () => {
    expect(mwan3Detect({ ...one, count: 2 }, "blackhole", 0, 1)).toBe(5_000 + 40_000 + 40_000);
  });
});

test.each([
  [0, 20, 15_125],
  [9, 20, 17_375],
  [19, 20, 19_875],
])("keepaliveClose: cut %d of %d → %d ms (15 s without a frame, checked every 5 s)", (k, n, want) => {
  expect(keepaliveClose({ timeout: 15_000, interval: 5_000 }, k, n)).toBe(want);
});
