// issue 19, "one name per thing": `uplink status` printed "every 1000ms" where the config says
// interval = "1s". Durations are shown in the units the config is written in.
import { expect, test } from "bun:test";
import { defaults } from "../src/config.ts";
import { formatDuration } from "../src/duration.ts";
import { trackingSummary } from "../src/uplink/manager.ts";

test.each([
  [1000, "1s"],
  [500, "500ms"],
  [30 * 60_000, "30m"],
  [8 * 3_600_000, "8h"],
  [7 * 86_400_000, "7d"],
  [90_000, "1m30s"],
  [1500, "1s500ms"],
  [0, "0s"],
])("formatDuration(%p) = %p", (ms, text) => {
  expect(formatDuration(ms)).toBe(text);
});

test("the tracking line of `uplink status` says 1s where the config says 1s", () => {
  const t = defaults().tracking;
  const line = trackingSummary({ interval_ms: t.interval, timeout_ms: t.timeout, down: t.down, up: t.up, count: 1 });
  expect(line).toBe(`every 1s, timeout 1s, down ${t.down}, up ${t.up}`);
  expect(line).not.toContain("1000ms");
  expect(trackingSummary({ interval_ms: 500, timeout_ms: 2000, down: 3, up: 5, count: 2 })).toBe("every 500ms, timeout 2s, down 3, up 5, 2 tries per target");
});
