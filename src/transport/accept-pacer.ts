// Pacing what a listener takes on: a token bucket (new TLS handshakes per second, in total and
// per source), and the accept pause a listener takes when the process is out of descriptors.
// Pure: every decision takes the monotonic instant it is made at.

/**
 * A token bucket: `rate` tokens a second, at most `burst` saved up. `take(now)` spends one if
 * there is one. Starts full.
 */
export class TokenBucket {
  private tokens: number;
  private at: number | null = null;

  constructor(readonly rate: number, readonly burst: number) {
    if (!(rate > 0) || !(burst >= 1)) throw new Error(`a token bucket needs rate > 0 and burst ≥ 1 (got ${rate}/s, burst ${burst})`);
    this.tokens = burst;
  }

  private refill(now: number): void {
    if (this.at !== null && now > this.at) this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) * this.rate) / 1000);
    if (this.at === null || now > this.at) this.at = now;
  }

  take(now: number): boolean {
    this.refill(now);
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Tokens there at `now` (fractional). */
  level(now: number): number {
    this.refill(now);
    return this.tokens;
  }

  /** Full again at `now`: nothing is lost by forgetting this bucket. */
  full(now: number): boolean {
    return this.level(now) >= this.burst;
  }

  /** Milliseconds until one token is there (0 if there is one). */
  wait(now: number): number {
    this.refill(now);
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) * 1000) / this.rate);
  }
}

/**
 * How long a listener stops accepting after it ran out of descriptors for the `n`th time in a
 * row (1-based): 50 ms, doubling, at most 2 s. Out of descriptors, every accept fails at once
 * and the listening socket stays readable: a loop that keeps trying spins a core for nothing.
 * Pure.
 */
export function acceptPause(n: number, base = 50, cap = 2_000): number {
  return Math.min(cap, base * 2 ** Math.max(0, Math.min(n - 1, 20)));
}

/**
 * Is the process out of descriptors, or so close that an accept would fail? `open` is the
 * count of descriptors in use, `limit` the soft limit, `reserve` what is kept for everything
 * else (the control socket, the state files, a log rotation). Pure.
 */
export function descriptorsOut(open: number, limit: number, reserve: number): boolean {
  return open >= limit - reserve;
}

/** The shortest and longest first-redial spread a relay tells its devices (ms). */
export const SPREAD_MIN = 250;
export const SPREAD_MAX = 60_000;

/**
 * The window a relay's devices spread their first redial over after losing it (WELCOME
 * `spread`): as long as the relay needs to take the whole fleet back at its accept rate, so a
 * restart brings the fleet back at about that rate instead of all within 250 ms; 250 ms at the
 * least (what a small fleet had before), a minute at the most. Pure.
 */
export function redialSpread(fleet: number, acceptRate: number): number {
  if (!(acceptRate > 0)) return SPREAD_MIN;
  return Math.min(SPREAD_MAX, Math.max(SPREAD_MIN, Math.ceil((Math.max(0, fleet) * 1000) / acceptRate)));
}
