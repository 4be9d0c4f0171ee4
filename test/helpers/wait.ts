// The one poll-until of the test suite. A test that waits for something another process or
// a timer will do (a log line, a file, a socket, a report) polls for it with a deadline here
// instead of sleeping and hoping, or checking once and assuming it is already there.
//
// The deadline is measured on the monotonic clock (performance.now()), so a wall-clock step
// during a test neither cuts the wait short nor stretches it.

export interface WaitOptions {
  /** Poll interval, ms (default 20). */
  every?: number;
  /** More context for the timeout message (a log tail, the last report), read at the timeout. */
  detail?: () => string;
  /** Checked every round: an error returned here ends the wait at once (the daemon died). */
  abort?: () => Error | undefined;
}

/** A value that counts as "not yet". */
type NotYet = false | undefined | null | 0 | "";

/**
 * Calls `probe` every `every` ms until it returns a truthy value, and returns that value.
 * A probe that throws counts as "not yet" (a daemon still starting, a file half written); at
 * the deadline the error names `what`, the last thrown error and `detail()`. `what` may be a
 * function, read at the deadline, to show the state the wait gave up on.
 */
export async function waitFor<T>(probe: () => T | Promise<T>, ms: number, what: string | (() => string), opts: WaitOptions = {}): Promise<Exclude<T, NotYet>> {
  const every = opts.every ?? 20;
  const end = performance.now() + ms;
  let last: unknown;
  for (;;) {
    const stop = opts.abort?.();
    if (stop) throw stop;
    try {
      const v = await probe();
      if (v) return v as Exclude<T, NotYet>;
    } catch (e) {
      last = e;
    }
    if (performance.now() >= end) break;
    await Bun.sleep(Math.max(0, Math.min(every, end - performance.now())));
  }
  const name = typeof what === "function" ? what() : what;
  const err = last === undefined ? "" : ` (last error: ${last instanceof Error ? last.message : String(last)})`;
  const more = opts.detail ? `\n${opts.detail()}` : "";
  throw new Error(`timed out after ${ms} ms waiting for ${name}${err}${more}`, last === undefined ? undefined : { cause: last });
}

/** `p`, or an error naming `what` once `ms` pass first (for a child's "ready" line, say). */
export async function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)));
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Holds for `ms`: resolves after `ms` if `bad` never became truthy, throws at once when it does.
 * For "nothing happens for a while" (no switch, no growth), where the while is the claim.
 */
export async function holdsFor(bad: () => unknown | Promise<unknown>, ms: number, what: string | (() => string), opts: WaitOptions = {}): Promise<void> {
  const every = opts.every ?? 20;
  const end = performance.now() + ms;
  for (;;) {
    if (await bad()) {
      const name = typeof what === "function" ? what() : what;
      throw new Error(`${name}${opts.detail ? `\n${opts.detail()}` : ""}`);
    }
    if (performance.now() >= end) return;
    await Bun.sleep(Math.max(0, Math.min(every, end - performance.now())));
  }
}
