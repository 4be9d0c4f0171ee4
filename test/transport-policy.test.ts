// Reconnect backoff: exponential with full jitter and a cap; reset after a stable connection.
import { expect, test } from "bun:test";
import { Limits, Timing, backoffDelay, nextAttempt } from "../src/transport/policy.ts";

const justBelowOne = 1 - Number.EPSILON;

test.each([
  // attempt, ceiling with base 500 and cap 30 s
  [0, 500],
  [1, 1_000],
  [2, 2_000],
  [5, 16_000],
  [6, 30_000],
  [7, 30_000],
  [40, 30_000],
  [10_000, 30_000],
])("attempt %d waits between 0 and %d ms", (attempt, ceiling) => {
  expect(backoffDelay(attempt, () => 0)).toBe(0);
  expect(backoffDelay(attempt, () => 0.5)).toBe(Math.floor(ceiling / 2));
  const top = backoffDelay(attempt, () => justBelowOne);
  expect(top).toBeLessThan(ceiling);
  expect(top).toBeGreaterThanOrEqual(ceiling - 1);
});

test("base and cap are parameters", () => {
  expect(backoffDelay(3, () => justBelowOne, 100, 10_000)).toBe(799);
  expect(backoffDelay(20, () => justBelowOne, 100, 10_000)).toBe(9_999);
});

test("full jitter: delays spread over the whole range, not bunched at the ceiling", () => {
  let seed = 1;
  const random = () => ((seed = (seed * 48271) % 2147483647) / 2147483647);
  const delays = Array.from({ length: 2000 }, () => backoffDelay(10, random));
  for (const d of delays) {
    expect(d).toBeGreaterThanOrEqual(0);
    expect(d).toBeLessThan(Timing.backoffCap);
  }
  const low = delays.filter((d) => d < Timing.backoffCap / 4).length;
  const high = delays.filter((d) => d >= (Timing.backoffCap * 3) / 4).length;
  expect(low).toBeGreaterThan(300);
  expect(high).toBeGreaterThan(300);
});

test.each([
  [0, null, 1], // the dial failed: keep climbing
  [3, null, 4],
  [3, 1_000, 4], // lived a second: still flapping
  [3, Timing.stableAfter - 1, 4],
  [3, Timing.stableAfter, 0], // stable: start over
  [12, 3_600_000, 0],
])("after attempt %d with a connection that lived %p ms the next attempt is %d", (attempt, lived, next) => {
  expect(nextAttempt(attempt, lived)).toBe(next);
});

test("the stable period is a parameter", () => {
  expect(nextAttempt(5, 500, 500)).toBe(0);
  expect(nextAttempt(5, 499, 500)).toBe(6);
});

// Arithmetic on the constants, not behaviour: the values add up to what the issue promised.
// The keepalive and the deadlines at work are tested in transport-mux and relay-hostile.
test("the timing constants add up to the promises: dead path under a minute, 10 s deadlines, caps ordered", () => {
  // A dead path is detected well under a minute; the deadlines are about 10 s.
  expect(Timing.keepaliveTimeout + Timing.keepaliveInterval).toBeLessThan(60_000);
  expect(Timing.keepaliveInterval).toBeLessThan(Timing.keepaliveTimeout);
  expect(Timing.handshakeDeadline).toBe(10_000);
  expect(Timing.helloDeadline).toBe(10_000);
  expect(Timing.backoffBase).toBeLessThan(Timing.backoffCap);
  expect(Limits.maxUnauthenticatedPerSource).toBeLessThan(Limits.maxUnauthenticated);
});
