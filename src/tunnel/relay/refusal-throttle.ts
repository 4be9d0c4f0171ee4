// Refusal logging that a flood cannot turn into the relay's bottleneck (issue 17): per source
// (an IPv4 address, an IPv6 /64; loopback, the relay's own host, excepted) the first few refusals of each minute are logged one by one,
// the rest only counted and said in one summary line per source per minute; and the audit file
// is written in batches, off the refusing path, never one synchronous append per stranger.
// The decisions (RefusalThrottle) are pure, on the instants they are given.
import { appendFile, rename, stat } from "node:fs/promises";
import { appendFileSync } from "node:fs";
import type { Clock, TimerHandle } from "../../clock.ts";
import { isLoopback, sourceKey } from "./admission.ts";
import { hostOf, type Refusal, type RefusalCodeId, type RefusalLog } from "./refusals.ts";

export interface ThrottlePolicy {
  /** Refusals per source logged one by one in each window. */
  perSource: number;
  /** Refusals logged one by one in each window, all sources together. */
  overall: number;
  /** The window (ms). */
  window: number;
  /** Sources counted at once; the refusals of any more are counted under "other sources". */
  maxSources: number;
}

export const DEFAULT_THROTTLE: ThrottlePolicy = { perSource: 5, overall: 200, window: 60_000, maxSources: 10_000 };

/** What was held back from one source over one window. */
export interface RefusalSummary {
  source: string;
  /** Refusals not logged one by one. */
  held: number;
  /** Those, by code. */
  codes: Partial<Record<RefusalCodeId, number>>;
  /** Monotonic start of the window, and its length. */
  since: number;
  window: number;
}

interface Window {
  start: number;
  logged: number;
  held: number;
  codes: Partial<Record<RefusalCodeId, number>>;
}

export const OTHER_SOURCES = "other sources";

export class RefusalThrottle {
  readonly policy: ThrottlePolicy;
  private readonly windows = new Map<string, Window>();
  private overall: { start: number; logged: number } = { start: -Infinity, logged: 0 };
  private readonly loud = new WeakSet<Refusal>();
  private readonly ready: RefusalSummary[] = [];

  constructor(policy: Partial<ThrottlePolicy> = {}) {
    this.policy = { ...DEFAULT_THROTTLE, ...policy };
  }

  /** A refusal at `now`: log it one by one (true), or count it for the summary (false)? */
  note(r: Refusal, now: number): boolean {
    const p = this.policy;
    let key = sourceKey(hostOf(r.address));
    let w = this.windows.get(key);
    if (w && now - w.start >= p.window) {
      this.close(key, w);
      w = undefined;
    }
    if (!w) {
      if (this.windows.size >= p.maxSources) {
        this.due(now);
        if (this.windows.size >= p.maxSources) key = OTHER_SOURCES;
      }
      w = this.windows.get(key);
      if (!w) {
        w = { start: now, logged: 0, held: 0, codes: {} };
        this.windows.set(key, w);
      }
    }
    if (now - this.overall.start >= p.window) this.overall = { start: now, logged: 0 };
    // The relay's own host (loopback: the operator's tools, a local proxy) is logged in full.
    if (isLoopback(key)) {
      this.loud.add(r);
      return true;
    }
    if (key !== OTHER_SOURCES && w.logged < p.perSource && this.overall.logged < p.overall) {
      w.logged++;
      this.overall.logged++;
      this.loud.add(r);
      return true;
    }
    w.held++;
    w.codes[r.code] = (w.codes[r.code] ?? 0) + 1;
    return false;
  }

  /** Was this refusal logged one by one (the audit file writes only those, and the summaries)? */
  wasLoud(r: Refusal): boolean {
    return this.loud.has(r);
  }

  private close(key: string, w: Window): void {
    this.windows.delete(key);
    if (w.held > 0) this.ready.push({ source: key, held: w.held, codes: w.codes, since: w.start, window: this.policy.window });
  }

  /** The summaries of windows that ended by `now` with something held back (each said once). */
  due(now: number): RefusalSummary[] {
    for (const [k, w] of this.windows) if (now - w.start >= this.policy.window) this.close(k, w);
    return this.ready.splice(0);
  }

  /** Sources with an open window. */
  get tracked(): number {
    return this.windows.size;
  }
}

/** The line a summary is said in. Pure. */
export function summaryText(s: RefusalSummary, perSource: number): string {
  const codes = Object.entries(s.codes)
    .sort((a, b) => b[1] - a[1])
    .map(([c, n]) => `${c} ${n}`)
    .join(", ");
  const who = s.source === OTHER_SOURCES ? "other sources (too many to count one by one)" : s.source;
  return `refused ${s.held} more connection(s) from ${who} in ${Math.round(s.window / 1000)} s beyond the first ${perSource} logged (${codes})`;
}

/**
 * The audit file (JSON lines, one old generation past `maxBytes`), written in batches: a
 * refusal is queued and the queue appended at most every `everyMs` by one asynchronous write.
 * At most `maxQueued` lines wait; beyond, they are counted and the count written with the next
 * batch. Writes that fail are reported to `onError` (the caller rate-limits) and dropped.
 * With a throttle, only the refusals it logged one by one are written (the rest are in the
 * summaries, `summary()`).
 */
export class BatchedRefusalFile implements RefusalLog {
  private queue: string[] = [];
  private lost = 0;
  private timer: TimerHandle | null = null;
  private writing: Promise<void> = Promise.resolve();
  private lastError = -Infinity;

  constructor(
    readonly file: string,
    private readonly o: { clock: Clock; throttle?: RefusalThrottle; maxBytes?: number; everyMs?: number; maxQueued?: number; onError?: (e: Error) => void },
  ) {}

  record(r: Refusal): void {
    if (this.o.throttle && !this.o.throttle.wasLoud(r)) return;
    this.push(JSON.stringify(r));
  }

  /** A summary of refusals held back, as one record (code: the commonest). */
  summary(s: RefusalSummary, perSource: number, time: string): void {
    const top = Object.entries(s.codes).sort((a, b) => b[1] - a[1])[0]?.[0] ?? "capacity";
    this.push(JSON.stringify({ time, address: s.source, presented: null, code: top, reason: summaryText(s, perSource), count: s.held }));
  }

  private push(line: string): void {
    if (this.queue.length >= (this.o.maxQueued ?? 10_000)) {
      this.lost++;
      return;
    }
    this.queue.push(line);
    this.timer ??= this.o.clock.setTimeout(() => {
      this.timer = null;
      void this.flush();
    }, this.o.everyMs ?? 250);
  }

  private take(): string {
    const lines = this.queue.splice(0);
    if (this.lost) {
      lines.push(JSON.stringify({ time: new Date(this.o.clock.wall()).toISOString(), address: "", presented: null, code: "capacity", reason: `${this.lost} refusal line(s) not written: the queue of this file was full`, count: this.lost }));
      this.lost = 0;
    }
    return lines.length ? lines.join("\n") + "\n" : "";
  }

  /** Writes what is queued (the writes are chained: one at a time, in order). */
  flush(): Promise<void> {
    const text = this.take();
    if (!text) return this.writing;
    this.writing = this.writing.then(async () => {
      try {
        try {
          if ((await stat(this.file)).size > (this.o.maxBytes ?? 10 * 1024 * 1024)) await rename(this.file, this.file + ".1");
        } catch {
          /* no file yet */
        }
        await appendFile(this.file, text, { mode: 0o600 });
      } catch (e) {
        const now = this.o.clock.now();
        if (now - this.lastError >= 60_000) {
          this.lastError = now;
          this.o.onError?.(e as Error);
        }
      }
    });
    return this.writing;
  }

  /** At shutdown: what is queued, written before the process goes. */
  closeSync(): void {
    this.o.clock.clearTimeout(this.timer);
    this.timer = null;
    const text = this.take();
    if (!text) return;
    try {
      appendFileSync(this.file, text, { mode: 0o600 });
    } catch (e) {
      this.o.onError?.(e as Error);
    }
  }
}
