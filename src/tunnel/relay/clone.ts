// Two live devices with one certificate (a cloned SD card) on one relay (issue 17 §6). Each
// connection of an id replaces the one before, so two clones evict each other for ever, each
// eviction ending the other's sessions. The relay notices the flapping (ClonePolicy.replacements
// replacements of one id within ClonePolicy.window), keeps the connection it has, and refuses
// the newcomer with GOAWAY DUPLICATE, which the device logs and backs off on (the backoff's
// maximum). The id is marked duplicated (shown by `agent devices` on the relay) for as long as
// newcomers keep coming, and ClonePolicy.hold after the last.
//
// Same relay only: duplicates across relays (cluster mode) are src/cluster's. Pure decisions,
// one small state holder, no I/O, monotonic ms given by the caller.

export const ClonePolicy = {
  /** Replacements of one id's live connection within `window` that mean two devices, not one redialling. */
  replacements: 4,
  window: 5 * 60_000,
  /** The mark (and the refusals) last this long after the last newcomer. */
  hold: 10 * 60_000,
  /** Addresses remembered per duplicated id (the last ones seen). */
  addresses: 4,
} as const;

/** Is this flapping: at least `n` of `times` (monotonic ms) within `window` before `now`? Pure. */
export function flapping(times: readonly number[], now: number, n: number = ClonePolicy.replacements, window: number = ClonePolicy.window): boolean {
  let recent = 0;
  for (const t of times) if (now - t < window && t <= now) recent++;
  return recent >= n;
}

/** The times still inside the window (what is worth keeping). Pure. */
export function recentTimes(times: readonly number[], now: number, window: number = ClonePolicy.window): number[] {
  return times.filter((t) => now - t < window && t <= now);
}

/** A duplicated id, as the relay shows it. */
export interface DuplicateMark {
  /** Monotonic ms the flapping was noticed, and of the last newcomer. */
  since: number;
  last: number;
  /** Newcomers refused since. */
  refused: number;
  /** Addresses the id came from (the latest last), at most ClonePolicy.addresses. */
  addresses: string[];
}

export type CloneVerdict =
  /** No live connection of this id: take it. */
  | { action: "accept" }
  /** A live one that the newcomer replaces (a device redialling). */
  | { action: "replace" }
  /** Two devices with one certificate: keep the live one, refuse this one. */
  | { action: "refuse"; reason: string; mark: DuplicateMark; first: boolean };

/** What the relay knows of each id's replacements and of the ids marked duplicated. */
export class CloneWatch {
  private readonly replacements = new Map<string, number[]>();
  private readonly marks = new Map<string, DuplicateMark>();

  constructor(private readonly policy: { replacements: number; window: number; hold: number; addresses: number } = ClonePolicy) {}

  /**
   * A connection of `id` from `address` passed its HELLO at monotonic `now`; `live` is the
   * address of the id's live connection, or null when there is none; `sameInstance`: both
   * HELLOs carried the same `instance` (the same device process).
   */
  arrive(id: string, address: string, live: string | null, now: number, sameInstance = false): CloneVerdict {
    const mark = this.mark(id, now);
    if (live === null) return { action: "accept" };
    // The live connection's own process dialling again (its HELLO's `instance` is the same):
    // one device that moved (a new uplink, a path that died silently), however often.
    if (sameInstance) return { action: "replace" };
    const times = recentTimes(this.replacements.get(id) ?? [], now, this.policy.window);
    times.push(now);
    this.replacements.set(id, times);
    if (!mark && !flapping(times, now, this.policy.replacements, this.policy.window)) return { action: "replace" };
    const m = mark ?? { since: now, last: now, refused: 0, addresses: [] };
    const first = !mark;
    m.last = now;
    m.refused++;
    for (const a of [live, address]) {
      const i = m.addresses.indexOf(a);
      if (i >= 0) m.addresses.splice(i, 1);
      m.addresses.push(a);
    }
    m.addresses.splice(0, Math.max(0, m.addresses.length - this.policy.addresses));
    this.marks.set(id, m);
    const reason = `another device is connected with the certificate of ${id} (from ${live}): two devices share one certificate (a cloned SD card?); the connection that was there first stays, issue this one its own bundle (agent pki issue)`;
    return { action: "refuse", reason, mark: { ...m, addresses: [...m.addresses] }, first };
  }

  /** The id's mark at `now`, or null (a mark ends `hold` after its last newcomer). */
  mark(id: string, now: number): DuplicateMark | null {
    const m = this.marks.get(id);
    if (!m) return null;
    if (now - m.last >= this.policy.hold) {
      this.marks.delete(id);
      this.replacements.delete(id);
      return null;
    }
    return m;
  }

  /** Forgets an id (the operator forgot the device). */
  forget(id: string): void {
    this.marks.delete(id);
    this.replacements.delete(id);
  }

  /** Ids with replacements remembered (bounded by the ids that flap; pruned on each arrival). */
  get tracked(): number {
    return this.replacements.size;
  }
}
