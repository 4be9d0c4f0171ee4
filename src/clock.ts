// Time, injected. Every duration (keepalive, deadlines, backoff, TTL timers, hold-downs) is
// measured on the monotonic clock `now()`, which never jumps; the wall clock `wall()` is only
// for what people read (timestamps, log lines) and for expiries persisted across restarts.
// A Raspberry Pi has no RTC: its wall clock jumps at every boot when NTP catches up, and a
// duration computed from Date.now() then drops connections or stretches DNAT rules.
//
// `FakeClock` steps both clocks by hand and runs the timers that fall due, in order, so a
// test can show that a step of the wall clock by a day changes no duration.

export type TimerHandle = { readonly __timer: unique symbol } | ReturnType<typeof setTimeout>;

export interface Clock {
  /** Monotonic milliseconds (arbitrary origin). For every duration. */
  now(): number;
  /** Wall-clock milliseconds since the epoch. For timestamps and persisted expiries only. */
  wall(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(t: TimerHandle | null | undefined): void;
  setInterval(fn: () => void, ms: number): TimerHandle;
  clearInterval(t: TimerHandle | null | undefined): void;
}

/** The process's clocks: `performance.now()` is monotonic in Bun (and Node). */
export const systemClock: Clock = {
  now: () => performance.now(),
  wall: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (t) => {
    if (t != null) clearTimeout(t as ReturnType<typeof setTimeout>);
  },
  setInterval: (fn, ms) => setInterval(fn, ms),
  clearInterval: (t) => {
    if (t != null) clearInterval(t as ReturnType<typeof setInterval>);
  },
};

/** Wall-clock ISO time of a monotonic instant (for a "since" or "expires" people read). */
export function wallOf(clock: Clock, mono: number): number {
  return clock.wall() + (mono - clock.now());
}

interface FakeTimer {
  id: number;
  due: number;
  every: number | null;
  fn: () => void;
}

/**
 * A clock for tests: time moves only when the test says so. `advance(ms)` moves both clocks and
 * runs every timer due on the way (in due order, at its due time); `stepWall(ms)` moves only the
 * wall clock, as NTP or a user setting the date would, and runs nothing.
 */
export class FakeClock implements Clock {
  private mono: number;
  private wallOffset: number;
  private timers = new Map<number, FakeTimer>();
  private nextId = 1;

  constructor(start: { mono?: number; wall?: number } = {}) {
    this.mono = start.mono ?? 1_000_000;
    this.wallOffset = (start.wall ?? Date.UTC(2026, 11, 1, 7, 0, 0)) - this.mono;
  }

  now(): number {
    return this.mono;
  }
  wall(): number {
    return this.mono + this.wallOffset;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    return this.add(fn, ms, null);
  }
  setInterval(fn: () => void, ms: number): TimerHandle {
    return this.add(fn, ms, Math.max(1, ms));
  }
  clearTimeout(t: TimerHandle | null | undefined): void {
    if (t != null) this.timers.delete(t as unknown as number);
  }
  clearInterval(t: TimerHandle | null | undefined): void {
    this.clearTimeout(t);
  }

  private add(fn: () => void, ms: number, every: number | null): TimerHandle {
    const id = this.nextId++;
    this.timers.set(id, { id, due: this.mono + Math.max(0, ms), every, fn });
    return id as unknown as TimerHandle;
  }

  /** Timers still pending (for "nothing left behind" checks). */
  get pending(): number {
    return this.timers.size;
  }

  /** Moves both clocks forward by `ms`, running each timer that falls due at its time. */
  advance(ms: number): void {
    const end = this.mono + ms;
    for (;;) {
      let next: FakeTimer | null = null;
      for (const t of this.timers.values()) if (t.due <= end && (!next || t.due < next.due || (t.due === next.due && t.id < next.id))) next = t;
      if (!next) break;
      this.mono = Math.max(this.mono, next.due);
      if (next.every === null) this.timers.delete(next.id);
      else next.due += next.every;
      next.fn();
    }
    this.mono = end;
  }

  /** Moves the wall clock alone (an NTP step, a date set by hand): no timer runs. */
  stepWall(ms: number): void {
    this.wallOffset += ms;
  }

  /** Runs pending microtasks between steps: `await clock.settle()` after an advance. */
  async settle(): Promise<void> {
    for (let i = 0; i < 5; i++) await Promise.resolve();
  }
}
