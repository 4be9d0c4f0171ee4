// Failed authentications per source address, pure (time is passed in). A source that failed
// `burst` times is answered AuthenticationFailed without asking the authenticator until it has
// earned a new try (one per `refillMs`), so tokens cannot be guessed at line rate.

export interface LimiterPolicy {
  burst: number;
  refillMs: number;
  /** Sources remembered at most (the oldest is forgotten first). */
  maxSources: number;
}

export const AUTH_FAILURE_POLICY: LimiterPolicy = { burst: 10, refillMs: 6_000, maxSources: 10_000 };

export class FailureLimiter {
  private readonly tries = new Map<string, { credit: number; at: number }>();
  constructor(private readonly policy: LimiterPolicy = AUTH_FAILURE_POLICY) {}

  private credit(source: string, now: number): number {
    const t = this.tries.get(source);
    if (!t) return this.policy.burst;
    return Math.min(this.policy.burst, t.credit + (now - t.at) / this.policy.refillMs);
  }

  /** May `source` try now? */
  allowed(source: string, now: number): boolean {
    return this.credit(source, now) >= 1;
  }

  /** `source` failed once more. */
  failed(source: string, now: number): void {
    const credit = Math.max(0, this.credit(source, now) - 1);
    this.tries.delete(source);
    this.tries.set(source, { credit, at: now });
    if (this.tries.size > this.policy.maxSources) this.tries.delete(this.tries.keys().next().value!);
  }

  get sources(): number {
    return this.tries.size;
  }
}
