// A master's timed-access grants (issue 15, seed 001): the session-bound DNAT rules it asked
// its sessions' onsite devices for, as the devices answered them, so that `agent nat list` on
// the master, any browser and a reloaded page see the same list, and `agent nat del ID` (or the
// page's "Revoke") removes one early. Kept in the master's memory: a rule lives no longer than
// its session, and a master that restarts has lost its sessions too. Expiry runs on the
// monotonic clock from the remaining time the device reported; a grant stays listed as
// "expired" for EXPIRED_KEPT_MS, so a page sees it end rather than vanish.
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { AddResult, RuleView } from "../nat/service.ts";

export const EXPIRED_KEPT_MS = 30_000;
/** Grants kept at most (the oldest forgotten first); a device caps its own rules per session too. */
export const MAX_GRANTS = 1000;

/** One grant as `nat list` on a master shows it: the device's rule, the device, live or expired. */
export interface GrantView extends RuleView {
  onsite: string;
  /** What it is for, as the page that asked named it (a service's name), or "". */
  label: string;
  state: "active" | "expired";
}

interface Grant {
  rule: RuleView;
  onsite: string;
  label: string;
  /** Monotonic deadline (clock.now()). */
  until: number;
}

export class MasterGrants {
  private readonly grants = new Map<string, Grant>();
  constructor(private readonly clock: Clock = systemClock) {}

  /** Records what the device answered to a NAT request of `session` (a repeated rule moves its expiry). */
  add(onsite: string, res: AddResult, label = ""): void {
    const r = res?.rule;
    if (!r || typeof r.id !== "string") return;
    const prev = this.grants.get(r.id);
    this.grants.delete(r.id);
    this.grants.set(r.id, { rule: r, onsite, label: label || (prev?.label ?? ""), until: this.clock.now() + Math.max(0, Number(r.remaining_ms) || 0) });
    while (this.grants.size > MAX_GRANTS) this.grants.delete(this.grants.keys().next().value!);
  }

  get(id: string): (Grant & { id: string }) | undefined {
    const g = this.grants.get(id);
    return g ? { ...g, id } : undefined;
  }

  remove(id: string): boolean {
    return this.grants.delete(id);
  }

  /** Drops the grants of sessions no longer open (`open`: the live session ids). */
  keepSessions(open: ReadonlySet<string>): void {
    for (const [id, g] of this.grants) if (!open.has(g.rule.owner)) this.grants.delete(id);
  }

  /** What changes when the list does (for the GUI's "changed" push): ids, live or expired. */
  digest(): string {
    const now = this.clock.now();
    return [...this.grants].map(([id, g]) => `${id}:${g.until}:${g.until - now > 0 ? "a" : "e"}`).join(",");
  }

  /** The grants now, newest expiry last; `wallNow` (ms) only to write `expires` as the device would. */
  list(wallNow: number): GrantView[] {
    const now = this.clock.now();
    const out: GrantView[] = [];
    for (const [id, g] of this.grants) {
      const left = g.until - now;
      if (left <= -EXPIRED_KEPT_MS) {
        this.grants.delete(id);
        continue;
      }
      out.push({ ...g.rule, onsite: g.onsite, label: g.label, remaining_ms: Math.max(0, left), expires: new Date(wallNow + left).toISOString(), state: left > 0 ? "active" : "expired" });
    }
    return out.sort((a, b) => a.remaining_ms - b.remaining_ms || a.id.localeCompare(b.id));
  }
}
