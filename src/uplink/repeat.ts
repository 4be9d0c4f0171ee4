// A pure rate limit for a message that repeats (a retry that keeps failing the same way): the
// first occurrence is logged, then at most one line per `everyMs` carrying how many times it
// repeated in between. A different message, or reset(), starts over.

export interface RepeatState {
  key: string;
  /** Monotonic instant of the last line logged. */
  lastLogged: number;
  /** Occurrences since that line, not logged. */
  suppressed: number;
}

export type RepeatVerdict = { log: false } | { log: true; repeated: number };

export function noteRepeat(s: RepeatState | undefined, key: string, now: number, everyMs: number): { state: RepeatState; verdict: RepeatVerdict } {
  if (!s || s.key !== key) return { state: { key, lastLogged: now, suppressed: 0 }, verdict: { log: true, repeated: 0 } };
  if (now - s.lastLogged >= everyMs) return { state: { key, lastLogged: now, suppressed: 0 }, verdict: { log: true, repeated: s.suppressed } };
  return { state: { ...s, suppressed: s.suppressed + 1 }, verdict: { log: false } };
}

/** The stateful wrapper: one message stream. */
export class RepeatLimiter {
  private s: RepeatState | undefined;
  /** Occurrences since the first one of the current run (for the line that ends it). */
  private run = 0;
  constructor(readonly everyMs: number) {}

  note(key: string, now: number): RepeatVerdict {
    if (this.s?.key !== key) this.run = 0;
    this.run++;
    const d = noteRepeat(this.s, key, now, this.everyMs);
    this.s = d.state;
    return d.verdict;
  }

  /** Ends the run; returns how many times it occurred (0: there was none). */
  reset(): number {
    const n = this.run;
    this.s = undefined;
    this.run = 0;
    return n;
  }
}

/** " (repeated 5 times since the last report)" or "". */
export function repeatedSuffix(v: RepeatVerdict, everyMs: number, fmt: (ms: number) => string): string {
  return v.log && v.repeated > 0 ? ` (repeated ${v.repeated} time${v.repeated > 1 ? "s" : ""} in the last ${fmt(everyMs)})` : "";
}
