// The setup page's brake on guessing: after each failed login the next one waits longer.
// One counter for the whole page, not one per client address: an AP client picks its own
// address, so a per-address count is a per-guess count. Pure: the page feeds it the
// monotonic clock's instants and sleeps for what it says.

/** The first failure's delay; each further failure doubles it. */
export const LOGIN_DELAY_BASE_MS = 500;
/** The longest delay: a person who mistyped a few times waits at most this long. */
export const LOGIN_DELAY_MAX_MS = 30_000;
/** Failures this long ago are forgotten (as is everything after a good login). */
export const LOGIN_FORGET_MS = 15 * 60_000;

export interface LoginThrottle {
  /** Failed logins in a row (since the last good one, within LOGIN_FORGET_MS of each other). */
  failures: number;
  /** Monotonic instant of the last failure. */
  lastFailure: number;
  /** No login is checked before this monotonic instant. */
  until: number;
}

export const initialThrottle = (): LoginThrottle => ({ failures: 0, lastFailure: -Infinity, until: -Infinity });

/** The delay after the `failures`th failure in a row: 0.5 s, 1 s, 2 s, … at most 30 s. */
export function loginDelay(failures: number): number {
  if (failures <= 0) return 0;
  return Math.min(LOGIN_DELAY_MAX_MS, LOGIN_DELAY_BASE_MS * 2 ** Math.min(failures - 1, 30));
}

/** Whether a login may be checked at `now`; if not, how long until it may. */
export function loginGate(s: LoginThrottle, now: number): { check: true } | { check: false; retryAfterMs: number } {
  return now >= s.until ? { check: true } : { check: false, retryAfterMs: Math.ceil(s.until - now) };
}

/**
 * The state after a checked login at `now`, and how long the answer waits: a good login
 * answers at once and clears the count; a failure answers only after its delay, and no other
 * login is checked before then.
 */
export function afterLogin(s: LoginThrottle, ok: boolean, now: number): { state: LoginThrottle; delayMs: number } {
  if (ok) return { state: initialThrottle(), delayMs: 0 };
  const failures = now - s.lastFailure > LOGIN_FORGET_MS ? 1 : s.failures + 1;
  const delayMs = loginDelay(failures);
  return { state: { failures, lastFailure: now, until: now + delayMs }, delayMs };
}
