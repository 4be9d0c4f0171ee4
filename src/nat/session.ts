// What binds a master's NAT request to its session. Pure: the session's facts come in (its
// targets as the onsite device resolved them, its end, its master's other sessions), a
// refusal naming the field, or the request's TTL capped to the session's end, comes out.
//
// A master's rule is plain DNAT for its public address: everyone behind that address gets
// the opening. So it reaches no further than the session already does (one of its targets),
// lasts no longer than the session, and a master cannot pile up rules (per-session and
// per-master caps beside the device-wide nat.max_rules).
import { formatDuration } from "../duration.ts";
import { FieldError, type Rule, type RuleSpec } from "./rule.ts";

/** The session a request came in (structurally src/tunnel/onsite-server.ts SessionNatBinding). */
export interface SessionBinding {
  session: string;
  master: string;
  /** "IPv4:PORT" of each of the session's targets. */
  endpoints: readonly string[];
  /** Wall-clock ms the session ends at; null: it has no end. */
  endsAt: number | null;
  /** The sessions of the same master on this device, this one included. */
  masterSessions: readonly string[];
}

export interface SessionCaps {
  /** nat.max_rules_per_session */
  perSession: number;
  /** nat.max_rules_per_master */
  perMaster: number;
}

/**
 * Checks a validated request against its session and caps its TTL to the session's end
 * (`wall`: the wall clock now). Returns the spec to use and, when capped, a note saying so.
 */
export function bindToSession(spec: RuleSpec, b: SessionBinding, wall: number): { spec: RuleSpec; capped?: string } {
  const target = `${spec.toAddr}:${spec.toPort}`;
  if (!b.endpoints.includes(target)) {
    const list = b.endpoints.length ? b.endpoints.join(", ") : "none";
    throw new FieldError("to", `${target} is not one of session ${b.session}'s targets (${list}); a master's rule may lead only where its session does`);
  }
  if (b.endsAt === null) return { spec };
  const left = Math.floor(b.endsAt - wall);
  if (left < 1000) throw new FieldError("ttl", `session ${b.session} ends ${left <= 0 ? "now" : "within a second"}; no rule can outlive it`);
  if (spec.ttlMs <= left) return { spec };
  return {
    spec: { ...spec, ttlMs: left },
    capped: `ttl ${formatDuration(spec.ttlMs)} capped to ${formatDuration(Math.floor(left / 1000) * 1000)}: the rule ends with session ${b.session} (${new Date(b.endsAt).toISOString()})`,
  };
}

/**
 * Refuses a NEW rule (an extend adds none) past the session's or the master's cap. `live`
 * are the active rules; a rule's owner is its session id.
 */
export function checkSessionCaps(b: SessionBinding, live: readonly Pick<Rule, "owner">[], caps: SessionCaps): void {
  const inSession = live.filter((r) => r.owner === b.session).length;
  if (inSession >= caps.perSession) {
    throw new FieldError("rules", `session ${b.session} holds ${inSession} NAT rule(s), the cap is nat.max_rules_per_session = ${caps.perSession}; let one expire or end the session first`);
  }
  const mine = new Set(b.masterSessions);
  const ofMaster = live.filter((r) => mine.has(r.owner)).length;
  if (ofMaster >= caps.perMaster) {
    throw new FieldError("rules", `master ${b.master} holds ${ofMaster} NAT rule(s) on this device, the cap is nat.max_rules_per_master = ${caps.perMaster}; let one expire or end a session first`);
  }
}
