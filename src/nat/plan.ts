// The reconciliation decision: given the rules the agent wants (from memory or the state
// file), the tagged rules the firewall holds now and the time, what must go and what must
// come. Pure; used at start-up (crash recovery), on every expiry and by tests.
import type { Rule } from "./rule.ts";

/** A rule as read back from the firewall: its tag only. */
export interface InstalledRule {
  id: string;
  expiresAt: number;
}

export interface Plan {
  /** The agent's rules after the plan: exactly what the firewall must hold. */
  desired: Rule[];
  /** Wanted but not in the firewall (lost, or never applied before a crash). */
  add: Rule[];
  /** In the firewall and wanted, but its tag carries another expiry (extended). */
  retag: Rule[];
  /** In the firewall, no longer wanted: expired ones and orphans. */
  remove: InstalledRule[];
  /** Wanted rules whose time is up: dropped from the state, their flows to be cut. */
  expired: Rule[];
  /** Tagged rules the state does not know (a lost state file, a hand-added rule). */
  orphans: InstalledRule[];
  /** Unexpired wanted rules whose owner is gone (a session of the previous run): removed
   * like expired ones, their flows cut. */
  ownerless: Rule[];
  /** Earliest expiry among the desired rules, for the next timer; undefined when none. */
  nextExpiry: number | undefined;
}

/** A rule expires at its expiry instant: `expiresAt <= now` means gone. */
export function isExpired(r: Pick<Rule, "expiresAt">, now: number): boolean {
  return r.expiresAt <= now;
}

/**
 * `ownerAlive`: whether a rule's owner still exists. At start no session does: a session
 * ends when the onsite device's relay connection does, and a resumed one asks again.
 */
export function plan(wanted: readonly Rule[], installed: readonly InstalledRule[], now: number, ownerAlive: (owner: string) => boolean = () => true): Plan {
  const expired = wanted.filter((r) => isExpired(r, now));
  const ownerless = wanted.filter((r) => !isExpired(r, now) && !ownerAlive(r.owner));
  const desired = wanted.filter((r) => !isExpired(r, now) && ownerAlive(r.owner));
  const desiredIds = new Set(desired.map((r) => r.id));
  const wantedIds = new Set(wanted.map((r) => r.id));
  const inFirewall = new Map(installed.map((i) => [i.id, i]));
  const add = desired.filter((r) => !inFirewall.has(r.id));
  const retag = desired.filter((r) => {
    const i = inFirewall.get(r.id);
    return i !== undefined && Math.ceil(r.expiresAt / 1000) * 1000 !== i.expiresAt;
  });
  const remove = installed.filter((i) => !desiredIds.has(i.id));
  const orphans = installed.filter((i) => !wantedIds.has(i.id));
  const nextExpiry = desired.length ? Math.min(...desired.map((r) => r.expiresAt)) : undefined;
  return { desired, add, retag, remove, expired, orphans, ownerless, nextExpiry };
}

/** True when the firewall already matches: nothing to add, retag or remove. */
export function isNoop(p: Plan): boolean {
  return p.add.length === 0 && p.retag.length === 0 && p.remove.length === 0;
}

/**
 * The running deadline (monotonic, clock.now()) of a rule read from the state file at a moment
 * whose clocks read `wall` and `mono`: it keeps exactly the time it had left by the wall clock
 * then, and from there on no wall step moves it.
 */
export function deadlineAtLoad(expiresAt: number, wall: number, mono: number): number {
  return mono + (expiresAt - wall);
}

/** The persisted (wall-clock) expiry written for a running deadline set at (`wall`, `mono`),
 * in whole milliseconds as the state file has always kept them. */
export function persistedExpiry(deadline: number, wall: number, mono: number): number {
  return Math.round(wall + (deadline - mono));
}
