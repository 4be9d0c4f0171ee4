// Agent-owned names of what a tunnel end makes on the host: interfaces, nft tables, iptables
// chains, dnsmasq files. Each is derived purely from the session id (and the role and kind),
// so a host can find and remove its leftovers after a kill -9 by name alone, never by a
// guess, and scripts/leaks.ts can flag any that a test left behind.
//
//   agt-<kind><8 hex>    interface, ≤ 15 bytes (IFNAMSIZ): kind t/p = onsite TUN/TAP,
//                        m/q = master TUN/TAP, b = master bridge
//   agent_tun_<o|m><8 hex>   nft table (one per tunnel end, deleted as a whole)
//   AGT-TUN-<o|m><8 hex>     iptables chains of the fallback backend (with a -F/-N/-X suffix)
import { createHash } from "node:crypto";

export type EndRole = "onsite" | "master";
export type DeviceKind = "tun" | "tap" | "bridge";

const KIND_LETTER: Record<EndRole, Partial<Record<DeviceKind, string>>> = {
  onsite: { tun: "t", tap: "p" },
  master: { tun: "m", tap: "q", bridge: "b" },
};

/** 8 hex digits of SHA-256 of the session id: stable, short, and any string maps to a legal name. */
export function sessionTag(session: string): string {
  return createHash("sha256").update(session, "utf8").digest("hex").slice(0, 8);
}

/** The interface name one end uses for one session, e.g. `agt-t1a2b3c4d`. */
export function deviceName(role: EndRole, kind: DeviceKind, session: string): string {
  const k = KIND_LETTER[role][kind];
  if (!k) throw new Error(`the ${role} end makes no ${kind} device`);
  return `agt-${k}${sessionTag(session)}`;
}

/** The nft table (family inet) of one end's rules, e.g. `agent_tun_o1a2b3c4d`. */
export function tableName(role: EndRole, session: string): string {
  return `agent_tun_${role[0]}${sessionTag(session)}`;
}

/** The iptables chain prefix of one end's fallback rules, e.g. `AGT-TUN-o1a2b3c4d`. */
export function chainPrefix(role: EndRole, session: string): string {
  return `AGT-TUN-${role[0]}${sessionTag(session)}`;
}

const IFACE_RE: Record<EndRole, RegExp> = { onsite: /^agt-[tp][0-9a-f]{8}$/, master: /^agt-[mqb][0-9a-f]{8}$/ };
const TABLE_RE: Record<EndRole, RegExp> = { onsite: /^agent_tun_o[0-9a-f]{8}$/, master: /^agent_tun_m[0-9a-f]{8}$/ };
const CHAIN_RE: Record<EndRole, RegExp> = { onsite: /^AGT-TUN-o[0-9a-f]{8}(-[A-Z]+)?$/, master: /^AGT-TUN-m[0-9a-f]{8}(-[A-Z]+)?$/ };

/** Whether an interface name is one this role's tunnel ends make (what a sweep removes). */
export const isOwnedInterface = (role: EndRole, name: string) => IFACE_RE[role].test(name);
export const isOwnedTable = (role: EndRole, name: string) => TABLE_RE[role].test(name);
export const isOwnedChain = (role: EndRole, name: string) => CHAIN_RE[role].test(name);

/** Any role's names (scripts/leaks.ts): interfaces, nft tables, iptables chains. */
export const ANY_OWNED_INTERFACE = /^agt-[tpmqb][0-9a-f]{8}$/;
export const ANY_OWNED_TABLE = /^agent_tun_[om][0-9a-f]{8}$/;
