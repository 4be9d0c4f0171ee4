// Driving a FakeClock in tests whose parts hand work over on real zero-delay timers (the
// in-memory links, async effects): time moves in steps, and between steps what those timers
// started is let finish.
import type { FakeClock } from "../../src/clock.ts";

/** Lets the in-memory links deliver (they hand bytes over on real zero-delay timers). */
export async function flush(): Promise<void> {
  for (let i = 0; i < 3; i++) await new Promise((r) => setTimeout(r, 0));
}

/** Moves monotonic time by `ms` in steps of `step`, flushing between steps. */
export async function advanceInSteps(clock: FakeClock, ms: number, step: number): Promise<void> {
  for (let t = 0; t < ms; t += step) {
    clock.advance(Math.min(step, ms - t));
    await flush();
  }
}

/** A `run(clock, ms, step?)` whose step defaults to `defaultStep` (each test file picks the grain its timers need). */
export function stepper(defaultStep: number): (clock: FakeClock, ms: number, step?: number) => Promise<void> {
  return (clock, ms, step = defaultStep) => advanceInSteps(clock, ms, step);
}
