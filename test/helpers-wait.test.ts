// test/helpers/wait.ts: the suite's one poll-until.
import { expect, test } from "bun:test";
import { holdsFor, waitFor, withDeadline } from "./helpers/wait.ts";

test("waitFor returns the first truthy value the probe gives", async () => {
  let n = 0;
  expect(await waitFor(() => (++n >= 3 ? `at ${n}` : undefined), 1000, "three calls", { every: 1 })).toBe("at 3");
  expect(n).toBe(3);
});

test("waitFor retries a probe that throws, and names the last error and the detail at the deadline", async () => {
  let calls = 0;
  const probe = () => {
    calls++;
    throw new Error(`not yet ${calls}`);
  };
  const err = await waitFor(probe, 60, () => `the thing after ${calls} calls`, { every: 5, detail: () => "the log tail" }).catch((e: Error) => e);
  expect(err).toBeInstanceOf(Error);
  expect((err as Error).message).toMatch(/^timed out after 60 ms waiting for the thing after \d+ calls \(last error: not yet \d+\)\nthe log tail$/);
  expect(calls).toBeGreaterThan(1);
});

test("waitFor ends at once when abort says so", async () => {
  const t0 = performance.now();
  await expect(waitFor(() => false, 10_000, "never", { abort: () => new Error("the daemon died") })).rejects.toThrow("the daemon died");
  expect(performance.now() - t0).toBeLessThan(5_000);
});

test("waitFor checks one last time at the deadline, so a zero budget still sees a true probe", async () => {
  expect(await waitFor(() => true, 0, "now")).toBe(true);
});

test("holdsFor passes when nothing bad happens for the whole while, and fails at once when it does", async () => {
  await holdsFor(() => false, 30, "never");
  let n = 0;
  const t0 = performance.now();
  await expect(holdsFor(() => ++n === 2, 10_000, "it happened", { every: 1 })).rejects.toThrow("it happened");
  expect(performance.now() - t0).toBeLessThan(5_000);
});

test("withDeadline passes a promise through, or names what it waited for once the time is up", async () => {
  expect(await withDeadline(Promise.resolve(7), 1000, "seven")).toBe(7);
  await expect(withDeadline(new Promise(() => {}), 30, "a ready line")).rejects.toThrow("timed out after 30 ms waiting for a ready line");
});
