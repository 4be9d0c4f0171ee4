// The NAT rule model and its validation. Pure: a request as a person or a peer typed it goes
// in, a complete Rule or a FieldError naming the offending field comes out. Nothing is
// resolved, looked up or run here; the caller passes the limits, the LAN allow list and the
// device's own addresses.
import { formatDuration, parseDuration } from "../duration.ts";
import {
  allowListPermits,
  cidrContains,
  formatCidr,
  formatIPv4,
  maskOf,
  parseCidr,
  parseIPv4,
  parsePort,
  type AllowEntry,
  type Cidr,
} from "../netaddr.ts";

export const PROTOCOLS = ["tcp", "udp"] as const;
export type Proto = (typeof PROTOCOLS)[number];

/**
 * An active (or formerly active) forward. Times are wall-clock epoch milliseconds: what the
 * state file and the firewall tag hold and a restart reads. While the daemon runs, a rule
 * ends at its monotonic running deadline instead (src/nat/service.ts, "Time").
 */
export interface Rule {
  /** 8 lowercase hex digits; also the tag in the firewall comment. */
  id: string;
  proto: Proto;
  /** Source CIDR, normalised ("203.0.113.7/32"). */
  src: string;
  /** Inbound interface, when the rule is limited to one. */
  iface?: string;
  /** The port the peer connects to on the device. */
  port: number;
  /** LAN target address (dotted quad) and port. */
  toAddr: string;
  toPort: number;
  ttlMs: number;
  /** "local" for the CLI and the control socket, a session id for a master's request. */
  owner: string;
  createdAt: number;
  expiresAt: number;
}

/** What a caller asks for: strings as typed (numbers are accepted for ports from JSON). */
export interface NatRequest {
  proto?: unknown;
  src?: unknown;
  iface?: unknown;
  port?: unknown;
  /** "HOST:PORT", HOST being an IPv4 address (names are refused). */
  to?: unknown;
  /** A duration such as "30s", "15m", "2h". */
  ttl?: unknown;
}

export interface NatLimits {
  minTtlMs: number;
  maxTtlMs: number;
  maxRules: number;
  allowAnySource: boolean;
  /** The onsite LAN allow list (config `allow`). */
  allow: AllowEntry[];
}

/** One of the device's own interface addresses with its prefix (for subnet broadcasts). */
export interface OwnAddress {
  addr: number;
  prefix: number;
}

export type NatField = "proto" | "src" | "iface" | "port" | "to" | "ttl" | "owner" | "rules";

/** A request refused because of one field. The message is meant for a person. */
export class FieldError extends Error {
  override readonly name = "FieldError";
  constructor(
    readonly field: NatField,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

/** What validation yields before an id and times are given. */
export type RuleSpec = Pick<Rule, "proto" | "src" | "iface" | "port" | "toAddr" | "toPort" | "ttlMs">;

// Anything a shell, a firewall command line or a log line could misread: refused by name
// before any parser sees the value, so the message says why rather than "expected …".
const CONTROL = /[\u0000-\u001f\u007f]/;
const SHELL = /[;&|`$(){}<>\\'"*?!#~\s[\]]/;
const IFACE = /^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,14}$/;
const MAX_FIELD = 64;

function text(field: NatField, v: unknown, what: string): string {
  let s: string;
  if (typeof v === "string") s = v;
  else if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0 && (field === "port" || field === "ttl")) s = String(v);
  else if (v === undefined || v === null) throw new FieldError(field, `missing; expected ${what}`);
  else throw new FieldError(field, `expected ${what} as a string, got ${typeof v}`);
  if (s.length === 0) throw new FieldError(field, `empty; expected ${what}`);
  if (s.length > MAX_FIELD) throw new FieldError(field, `longer than ${MAX_FIELD} characters; expected ${what}`);
  if (CONTROL.test(s)) throw new FieldError(field, `contains a control character (newline, tab, NUL...); expected ${what}`);
  if (SHELL.test(s)) throw new FieldError(field, `contains a space or shell character ${JSON.stringify(s.match(SHELL)![0])}; expected ${what}`);
  return s;
}

const LOOPBACK = parseCidr("127.0.0.0/8");
const LINK_LOCAL = parseCidr("169.254.0.0/16");
const MULTICAST = parseCidr("224.0.0.0/4");
const RESERVED = parseCidr("240.0.0.0/4");
const THIS_NET = parseCidr("0.0.0.0/8");
const BROADCAST = 0xffffffff;

/**
 * Why `addr` may never be a forward target, or undefined when it may (allow list aside).
 * `subnets` are the LAN's subnets as the allow list names them: their network and broadcast
 * addresses are refused too, also where the device has no address of its own in them.
 */
export function forbiddenTarget(addr: number, own: readonly OwnAddress[], subnets: readonly Cidr[] = []): string | undefined {
  if (addr === BROADCAST) return "is the broadcast address";
  if (cidrContains(LOOPBACK, addr)) return "is a loopback address";
  if (cidrContains(LINK_LOCAL, addr)) return "is a link-local address";
  if (cidrContains(MULTICAST, addr)) return "is a multicast address";
  if (cidrContains(RESERVED, addr) || cidrContains(THIS_NET, addr)) return "is a reserved address";
  for (const o of own) {
    if (o.addr === addr) return "is one of this device's own addresses";
    if (o.prefix <= 30) {
      const net = (o.addr & maskOf(o.prefix)) >>> 0;
      const bcast = (net | ~maskOf(o.prefix)) >>> 0;
      if (addr === bcast) return `is the broadcast address of ${formatIPv4(net)}/${o.prefix}`;
      if (addr === net) return `is the network address of ${formatIPv4(net)}/${o.prefix}`;
    }
  }
  // /31 and /32 entries have no network or broadcast address (RFC 3021; one host).
  for (const c of subnets) {
    if (c.prefix > 30 || c.prefix === 0 || !cidrContains(c, addr)) continue;
    const bcast = (c.network | ~maskOf(c.prefix)) >>> 0;
    if (addr === bcast) return `is the broadcast address of ${formatCidr(c)} (a subnet of the allow list)`;
    if (addr === c.network) return `is the network address of ${formatCidr(c)} (a subnet of the allow list)`;
  }
  return undefined;
}

/** Checks every field of a request; throws FieldError for the first bad one. */
export function validateRequest(req: NatRequest, limits: NatLimits, own: readonly OwnAddress[]): RuleSpec {
  if (req === null || typeof req !== "object") throw new FieldError("src", "the request must be an object");
  const proto = req.proto === undefined ? "tcp" : text("proto", req.proto, "tcp or udp");
  if (!(PROTOCOLS as readonly string[]).includes(proto)) throw new FieldError("proto", `expected tcp or udp, got ${JSON.stringify(proto)}`);

  const srcText = text("src", req.src, "an IPv4 address or CIDR such as 203.0.113.7 or 203.0.113.0/24");
  let src: Cidr;
  try {
    src = parseCidr(srcText);
  } catch (e) {
    throw new FieldError("src", (e as Error).message);
  }
  if (src.prefix === 0 && !limits.allowAnySource) {
    throw new FieldError("src", "0.0.0.0/0 would open the port to every address; name the peer's address, or set nat.allow_any_source = true");
  }
  if (src.prefix > 0 && (cidrContains(MULTICAST, src.network) || src.network === BROADCAST)) {
    throw new FieldError("src", `${formatCidr(src)} is not a unicast source`);
  }

  let iface: string | undefined;
  if (req.iface !== undefined && req.iface !== null && req.iface !== "") {
    iface = text("iface", req.iface, "an interface name such as eth0");
    if (!IFACE.test(iface)) throw new FieldError("iface", `expected an interface name of at most 15 letters, digits, '_', '.', '-', got ${JSON.stringify(iface)}`);
  }

  const portText = text("port", req.port, "a port number 1-65535");
  let port: number;
  try {
    port = parsePort(portText);
  } catch (e) {
    throw new FieldError("port", (e as Error).message);
  }

  const toText = text("to", req.to, "a LAN target HOST:PORT such as 192.168.1.50:80");
  const colon = toText.lastIndexOf(":");
  if (colon <= 0) throw new FieldError("to", `expected a LAN target IPv4:PORT such as 192.168.1.50:80, got ${JSON.stringify(toText)}`);
  let toAddrN: number;
  let toPort: number;
  try {
    toAddrN = parseIPv4(toText.slice(0, colon));
  } catch {
    throw new FieldError("to", `expected an IPv4 address (host names are not resolved) such as 192.168.1.50:80, got ${JSON.stringify(toText)}`);
  }
  try {
    toPort = parsePort(toText.slice(colon + 1));
  } catch (e) {
    throw new FieldError("to", (e as Error).message);
  }
  const toAddr = formatIPv4(toAddrN);
  const why = forbiddenTarget(toAddrN, own, limits.allow.map((e) => e.cidr));
  if (why) throw new FieldError("to", `${toAddr} ${why}; a forward must lead to a device on the LAN`);
  if (!allowListPermits(limits.allow, toAddrN, toPort)) {
    throw new FieldError("to", `${toAddr}:${toPort} is outside the LAN allow list; that list is the onsite device's own (\`allow\` in its config file, or --allow of its daemon), not an option of this command`);
  }

  const ttlText = text("ttl", req.ttl, "a duration such as 30s, 15m or 2h");
  let ttlMs: number;
  try {
    ttlMs = parseDuration(ttlText);
  } catch (e) {
    throw new FieldError("ttl", (e as Error).message);
  }
  if (ttlMs < limits.minTtlMs) throw new FieldError("ttl", `${ttlText} is shorter than nat.min_ttl (${formatDuration(limits.minTtlMs)})`);
  if (ttlMs > limits.maxTtlMs) throw new FieldError("ttl", `${ttlText} is longer than nat.max_ttl (${formatDuration(limits.maxTtlMs)})`);

  const spec: RuleSpec = { proto: proto as Proto, src: formatCidr(src), port, toAddr, toPort, ttlMs };
  if (iface !== undefined) spec.iface = iface;
  return spec;
}

/**
 * Why `iface` cannot be a rule's incoming interface on this device, or undefined when it can:
 * a rule on a name the device lacks would never match, silently.
 */
export function unknownIface(iface: string, present: readonly string[]): string | undefined {
  if (present.includes(iface)) return undefined;
  const shown = present.filter((n) => n !== "lo").sort();
  return `no interface ${JSON.stringify(iface)} on this device; present: ${shown.join(", ") || "none"} (or leave --iface out to match every interface)`;
}

/** Two requests for the same forward (same proto, source, interface, port and target). */
export function sameForward(a: RuleSpec, b: RuleSpec): boolean {
  return a.proto === b.proto && a.src === b.src && (a.iface ?? "") === (b.iface ?? "") && a.port === b.port && a.toAddr === b.toAddr && a.toPort === b.toPort;
}

function cidrsOverlap(a: string, b: string): boolean {
  const x = parseCidr(a);
  const y = parseCidr(b);
  return cidrContains(x, y.network) || cidrContains(y, x.network);
}

/**
 * A different forward that would catch the same packets (same proto and public port, the
 * same or no interface, overlapping sources): the first rule would win silently, so refuse.
 */
export function conflictsWith(a: RuleSpec, b: RuleSpec): boolean {
  if (sameForward(a, b)) return false;
  if (a.proto !== b.proto || a.port !== b.port) return false;
  if (a.iface !== undefined && b.iface !== undefined && a.iface !== b.iface) return false;
  return cidrsOverlap(a.src, b.src);
}

export type AddDecision =
  | { kind: "new"; rule: Rule }
  | { kind: "extend"; rule: Rule }
  | { kind: "refuse"; error: FieldError };

/**
 * Decides what an add does against the active rules: a new rule, the same rule with its
 * expiry extended (identical requests are idempotent), or a refusal (conflict, cap).
 */
export function decideAdd(spec: RuleSpec, owner: string, active: readonly Rule[], now: number, newId: () => string, maxRules: number): AddDecision {
  const same = active.find((r) => sameForward(r, spec) && r.expiresAt > now);
  if (same) {
    const expiresAt = Math.max(same.expiresAt, now + spec.ttlMs);
    return { kind: "extend", rule: { ...same, ttlMs: spec.ttlMs, expiresAt } };
  }
  const clash = active.find((r) => r.expiresAt > now && conflictsWith(r, spec));
  if (clash) {
    return {
      kind: "refuse",
      error: new FieldError("port", `${spec.proto} port ${spec.port} from ${clash.src} is already forwarded to ${clash.toAddr}:${clash.toPort} by rule ${clash.id}; delete it first`),
    };
  }
  const live = active.filter((r) => r.expiresAt > now).length;
  if (live >= maxRules) {
    return { kind: "refuse", error: new FieldError("rules", `${live} rules are active, the cap is nat.max_rules = ${maxRules}; delete some first`) };
  }
  const rule: Rule = { id: newId(), ...spec, owner, createdAt: now, expiresAt: now + spec.ttlMs };
  return { kind: "new", rule };
}

export const ID_PATTERN = /^[0-9a-f]{8}$/;

export function newRuleId(): string {
  const b = crypto.getRandomValues(new Uint8Array(4));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Firewall comment carried by each rule: "agent-nat id=ID exp=EPOCH_SECONDS". */
export const TAG_PREFIX = "agent-nat";

/**
 * The comment of a rule's end guard: the drop that stops the rule's established flows once
 * the kernel's clock passes its expiry (src/nat/iptables.ts, nft.ts). A prefix of its own, so
 * a tag count (`agent-nat id=`) sees one DNAT and one accept per rule, as before.
 */
export const END_TAG_PREFIX = "agent-nat-end";

/** The second the kernel ends a rule at: its expiry rounded up, as the tag says. Pure. */
export function kernelExpiryS(r: Pick<Rule, "expiresAt">): number {
  return Math.ceil(r.expiresAt / 1000);
}

export function ruleTag(r: Pick<Rule, "id" | "expiresAt">, prefix: string = TAG_PREFIX): string {
  return `${prefix} id=${r.id} exp=${kernelExpiryS(r)}`;
}

/** Reads a tag back; undefined for anything that is not ours (or has another prefix). */
export function parseTag(comment: string, prefix: string = TAG_PREFIX): { id: string; expiresAt: number } | undefined {
  if (!comment.startsWith(`${prefix} `)) return undefined;
  const m = /^id=([0-9a-f]{8}) exp=(\d{1,12})$/.exec(comment.slice(prefix.length + 1));
  if (!m) return undefined;
  return { id: m[1]!, expiresAt: Number(m[2]) * 1000 };
}

/** Seed 001's request: {ip_src, port_dst, ip_dst_lan, port_dst_lan, rule_timeout (minutes), action}. */
export interface SeedRequest {
  action: "add" | "del";
  request: NatRequest;
}

export function fromSeedRequest(o: Record<string, unknown>): SeedRequest {
  const action = o.action;
  if (action !== "add" && action !== "del") throw new FieldError("rules", `action: expected "add" or "del", got ${JSON.stringify(action)}`);
  const known = new Set(["ip_src", "port_dst", "ip_dst_lan", "port_dst_lan", "rule_timeout", "action", "api_key", "proto"]);
  const unknown = Object.keys(o).filter((k) => !known.has(k));
  if (unknown.length) throw new FieldError("rules", `unknown field ${JSON.stringify(unknown[0])}; seed requests carry ip_src, port_dst, ip_dst_lan, port_dst_lan, rule_timeout, action`);
  const num = (v: unknown) => (typeof v === "number" && Number.isSafeInteger(v) ? String(v) : v);
  const host = o.ip_dst_lan;
  const port = num(o.port_dst_lan);
  const to = typeof host === "string" && (typeof port === "string" || typeof port === "number") ? `${host}:${port}` : undefined;
  if (to === undefined && action === "add") {
    throw new FieldError("to", "ip_dst_lan (a string) and port_dst_lan are required");
  }
  let ttl: unknown = o.rule_timeout;
  if (typeof ttl === "number") {
    if (!Number.isSafeInteger(ttl) || ttl <= 0) throw new FieldError("ttl", `rule_timeout: expected whole minutes > 0, got ${ttl}`);
    ttl = `${ttl}m`;
  } else if (typeof ttl === "string" && /^[1-9]\d{0,5}$/.test(ttl)) {
    ttl = `${ttl}m`;
  } else if (action === "add") {
    throw new FieldError("ttl", `rule_timeout: expected whole minutes > 0, got ${JSON.stringify(ttl)}`);
  }
  return { action, request: { proto: o.proto, src: o.ip_src, port: num(o.port_dst), to, ttl } };
}
