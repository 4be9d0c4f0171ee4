import { expect, test } from "bun:test";
import { formatDuration, parseDuration } from "../src/duration.ts";

test.each([
  ["500ms", 500],
  ["10s", 10_000],
  ["30m", 1_800_000],
  ["8h", 28_800_000],
  ["7d", 604_800_000],
  ["1h30m", 5_400_000],
  ["0s", 0],
] as const)("parses %s", (text, ms) => {
  expect(parseDuration(text)).toBe(ms);
  expect(parseDuration(formatDuration(ms))).toBe(ms);
});

test.each(["", "10", "s", "10 s", "-5s", "1.5h", "10sec", "1h 30m", "10S", "9".repeat(40) + "d"])("refuses %p", (text) => {
  expect(() => parseDuration(text)).toThrow();
});

test("formats compactly", () => {
  expect(formatDuration(5_400_000)).toBe("1h30m");
  expect(formatDuration(250)).toBe("250ms");
});
