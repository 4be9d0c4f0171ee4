// When the master tries to resume an interrupted session (src/tunnel/forward.ts): quick tries
// first (the device is usually back by the time the relay reports the interruption, or a dial
// later), then every resumeRetry until the resume window ends.
import { expect, test } from "bun:test";
import { resumeDelay, SessionTiming } from "../src/tunnel/forward.ts";

test.each([
  [0, 50],
  [1, 250],
  [2, 500],
  [3, 1_000],
  [4, SessionTiming.resumeRetry],
  [50, SessionTiming.resumeRetry],
])("resume try %i waits %i ms", (n, ms) => {
  expect(resumeDelay(n)).toBe(ms);
});

test("the quick tries together stay under one resumeRetry and never shrink", () => {
  const quick = [...SessionTiming.resumeQuick];
  expect(quick.reduce((a, b) => a + b, 0)).toBeLessThan(SessionTiming.resumeRetry);
  expect([...quick].sort((a, b) => a - b)).toEqual(quick);
});
