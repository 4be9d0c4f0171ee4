// Pairing decisions on the relay: may this master open a session to that onsite device, and
// with which targets and TTL. Pure; the relay feeds it the access rules and what it knows.
import type { AccessRule } from "../config.ts";
import { ErrorCode, MAX_SESSION_TTL, MAX_TARGETS, decodeSessionOpen, type ErrorCodeId, type SessionOpenBody } from "../transport/messages.ts";

/** `*` matches any run of characters; everything else literally. */
export function globMatch(pattern: string, id: string): boolean {
  if (!pattern.includes("*")) return pattern === id;
  const parts = pattern.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`^${parts.join(".*")}$`).test(id);
}

/** No rules: every master of the fleet may reach every onsite device (the default). */
export function mayReach(rules: readonly AccessRule[], master: string, onsite: string): boolean {
  if (rules.length === 0) return true;
  return rules.some((r) => r.masters.some((p) => globMatch(p, master)) && r.onsites.some((p) => globMatch(p, onsite)));
}

/**
 * Whether `master` may ask `onsite` for NAT rules: only where an [[access]] rule covering
 * both says `nat = true`. No rules at all (every master reaches every device) still means
 * no NAT: a DNAT rule opens the device's uplink port to the master's public address, and
 * everyone behind that address, so it is granted by name, never by default. Pure.
 */
export function mayAskNat(rules: readonly AccessRule[], master: string, onsite: string): boolean {
  return rules.some((r) => r.nat === true && r.masters.some((p) => globMatch(p, master)) && r.onsites.some((p) => globMatch(p, onsite)));
}

export interface DeviceFacts {
  known: boolean;
  online: boolean;
}

export type PairingDecision = { ok: true } | { ok: false; code: ErrorCodeId; message: string };

export { MAX_SESSION_TTL, MAX_TARGETS };

export function decidePairing(rules: readonly AccessRule[], master: string, onsite: string, device: DeviceFacts): PairingDecision {
  if (!device.known) return { ok: false, code: ErrorCode.UNKNOWN_DEVICE, message: `unknown device ${JSON.stringify(onsite)}: it has never connected to this relay` };
  if (!mayReach(rules, master, onsite)) return { ok: false, code: ErrorCode.FORBIDDEN, message: `${master} is not allowed to reach ${onsite} (relay access policy)` };
  if (!device.online) return { ok: false, code: ErrorCode.OFFLINE, message: `device ${onsite} is offline` };
  return { ok: true };
}

export type SessionRequest = SessionOpenBody;

/** Checks the shape of a SESSION_OPEN body; throws a MessageError naming the field (the catalogue's decoder). */
export function parseSessionRequest(body: Record<string, unknown>): SessionRequest {
  return decodeSessionOpen(body);
}

/** A fresh session id; the relay takes its generator injected (RelayOptions.newSessionId). */
export function newSessionId(random: () => number = Math.random): string {
  let s = "s-";
  for (let i = 0; i < 8; i++) s += Math.floor(random() * 36).toString(36);
  return s;
}

/**
 * The source of a NAT rule a master asks for: its address as the relay's socket reports it.
 * A relay listening on `[::]` (dual stack) sees IPv4 peers as `::ffff:a.b.c.d`; the rule
 * needs the IPv4 address. NAT rules are IPv4-only, so a real IPv6 peer is refused here with
 * the reason rather than by the device's field check. Pure.
 */
export function natSource(remoteAddress: string): { ok: true; source: string } | { ok: false; reason: string } {
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(remoteAddress);
  const v4 = mapped ? mapped[1]! : remoteAddress;
  if (/^\d{1,3}(?:\.\d{1,3}){3}$/.test(v4)) return { ok: true, source: v4 };
  return { ok: false, reason: `NAT rules are IPv4-only and the relay sees this master at ${remoteAddress || "an unknown address"}` };
}
