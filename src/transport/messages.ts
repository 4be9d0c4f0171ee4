// The control-message catalogue: every typed message that travels on stream 0 inside a
// CONTROL frame (payload = u16 type id + JSON body). The ids are frozen by
// test/transport-messages.test.ts: never renumber, only add. docs/protocol.md describes each.
//
// Requests carry `rid` (a number unique per connection and direction) and are answered by a
// REPLY with the same `rid`; everything else is one-way.
import { parseCidr, parseHostPort, parseIPv4 } from "../netaddr.ts";
import { DROP_REASONS, type PacketStats } from "./packet.ts";
import type { HeartbeatPayload } from "./heartbeat/codec.ts";

export const PROTOCOL_VERSIONS = [1] as const;

export const Msg = {
  /** device → relay, first frame: {versions, role, id, agent, keepalive?} */
  HELLO: 1,
  /** relay → device, answer to HELLO: {version, relay, address, keepalive} */
  WELCOME: 2,
  /** answer to any request: {rid, ok: true, result} | {rid, ok: false, error, code} */
  REPLY: 3,
  /** onsite → relay, after WELCOME and when it changes: {hostname, location, agent, uptime, uplink} */
  INVENTORY: 10,
  /** master → relay request: the onsite inventory. result: DeviceInfo[] */
  DEVICES: 11,
  /** relay → onsite, after WELCOME: {key, port} — the device's heartbeat key (base64) and UDP port (§8) */
  HEARTBEAT_KEY: 12,
  /** master → relay request: {onsite, targets, ttl?, session?} → SessionInfo */
  SESSION_OPEN: 20,
  /** relay → onsite request: {session, master, targets, expires?} → {warnings?} or error */
  SESSION_OFFER: 21,
  /** either way, one-way: {session, reason, final} (final: will not come back by itself) */
  SESSION_CLOSE: 22,
  /** master → relay request: the master's sessions. result: SessionInfo[] */
  SESSIONS: 23,
  /** master → relay request {session, reason?}: end a session for both sides */
  SESSION_END: 24,
  /** master → relay → onsite request {session, mode, addressing?}: switch a live session's tunnel
   * (the packet stream is replaced, not the session) → TunnelOffer */
  TUNNEL_MODE: 25,
  /** master → relay request {session, ttl}: the session now ends `ttl` ms from now (the relay
   * clamps it to MAX_SESSION_TTL) → SessionInfo (added in 1, compatible; issue 15) */
  SESSION_EXTEND: 26,
  /** relay → onsite, one-way {session, expires}: a session's end moved (after SESSION_EXTEND);
   * an older device ignores it and keeps the end it was offered */
  SESSION_EXPIRES: 27,
  /** master → relay → onsite request: a timed DNAT rule for the session's peer */
  NAT_REQUEST: 30,
  /** relay → relay on the mesh (cluster mode, §9): {master, address, session, onsite, targets, ttl, tunnel?, udp?} → SessionInfo */
  MESH_OPEN: 40,
} as const;
export type MsgType = (typeof Msg)[keyof typeof Msg];

const KNOWN = new Set<number>(Object.values(Msg));
export function isKnownMsg(type: number): type is MsgType {
  return KNOWN.has(type);
}

export function msgName(type: number): string {
  for (const [k, v] of Object.entries(Msg)) if (v === type) return k;
  return `#${type}`;
}

/** Error codes in a failed REPLY, so a CLI can say which problem it was. */
export const ErrorCode = {
  BAD_REQUEST: "bad_request",
  UNKNOWN_DEVICE: "unknown_device",
  OFFLINE: "offline",
  FORBIDDEN: "forbidden",
  REFUSED: "refused",
  NO_SESSION: "no_session",
  VERSION: "version",
  INTERNAL: "internal",
  /** Too many of this peer's requests are unanswered (Limits.maxRequestsInFlight): wait for some. */
  BUSY: "busy",
} as const;
export type ErrorCodeId = (typeof ErrorCode)[keyof typeof ErrorCode];

// ---- service catalogue (issue 15) ---------------------------------------------------------

/** What a service speaks: decides what a GUI offers for it (src/roles/services.ts). */
export const SERVICE_KINDS = ["http", "https", "ssh", "rdp", "vnc", "tcp"] as const;
export type ServiceKind = (typeof SERVICE_KINDS)[number];
/** Most services one device may advertise; longest name and description. */
export const SERVICE_LIMITS = { count: 64, name: 64, description: 200 } as const;

/** A service behind an onsite device: `[[service]]` in its config, advertised in INVENTORY. */
export interface ServiceDecl {
  name: string;
  /** HOST:PORT on the device's LAN. */
  target: string;
  kind: ServiceKind;
  description?: string;
}

/** A device's state as the relay judges it (src/tunnel/relay/inventory.ts deviceState):
 * "alive" is "tunnel down, alive over UPLINK" (its heartbeats arrive, its TLS path does not). */
export type DeviceStateName = "online" | "alive" | "lost" | "offline";

/** The last heartbeat of a device as the relay shows it (`payload`: the datagram's content). */
export interface DeviceHeartbeatView {
  at: string;
  via: string;
  from: string;
  payload: HeartbeatPayload;
}

export interface DeviceInfo {
  id: string;
  hostname: string;
  location: string;
  address: string;
  agent: string;
  uptime: number; // seconds, as the device reported it at `reported`
  uplink: string;
  online: boolean;
  connected_since: string; // ISO time
  last_seen: string; // ISO time
  rtt_ms: number | null;
  // Added in 1 (compatible; issue 15): what the relay knows beside the report, so a master (and
  // its GUI) sees what `agent devices` on the relay shows. An older relay sends none of them.
  /** online | alive (tunnel down, heartbeats arrive) | lost | offline. */
  state?: DeviceStateName;
  /** One line for people: "tunnel down, alive over wwan0, last error: …". */
  status?: string;
  heartbeat?: DeviceHeartbeatView | null;
  /** The last heartbeat over each uplink since the relay started (uplink → ISO time). */
  heard_over?: Record<string, string>;
  first_seen?: string;
  cert_expires?: string | null;
  /** The services the device advertises (its `[[service]]` tables). */
  services?: ServiceDecl[];
}

export interface SessionInfo {
  session: string;
  master: string;
  onsite: string;
  targets: string[];
  opened: string;
  expires: string | null;
  /**
   * Added in 1 (compatible): what the onsite device found when it checked the targets at the
   * offer (a target that refused or did not answer). Absent when there was nothing to say.
   */
  warnings?: string[];
  /** Added in 1 (compatible): the session's packet tunnel, if it has one. */
  tunnel?: SessionTunnel;
  /** Added in 1 (compatible): the UDP forwards' targets (HOST:PORT), if any. */
  udp?: string[];
}

// ---- packet tunnels (issue 11) ------------------------------------------------------------

/** The two tunnel modes (src/tunnel/packet/device.ts TunnelMode is the same union). */
export type TunnelModeName = "routed" | "bridged";
/** The point-to-point addresses of a routed tunnel, CIDR strings such as "10.99.0.1/30". */
export interface TunnelAddressingBody {
  master: string;
  onsite: string;
}
/** What a session asks of the onsite device: a tunnel in this mode (routed: these addresses). */
export interface TunnelRequestBody {
  mode: TunnelModeName;
  addressing?: TunnelAddressingBody;
}
/** One end's interface as `agent sessions` shows it. */
export interface TunnelEndBody {
  iface: string;
  addresses: string[];
  routes: string[];
  bridge?: string;
}
/** The onsite device's answer to a tunnel request: what it routes and the end it made. */
export interface TunnelOffer {
  mode: TunnelModeName;
  /** The subnets the onsite end routes (its allow list's CIDRs); the master routes them. */
  subnets: string[];
  onsite: TunnelEndBody;
}
/** A session's tunnel as the relay holds it (SessionInfo.tunnel). */
export interface SessionTunnel extends TunnelOffer {
  addressing?: TunnelAddressingBody;
  /** Packets the relay carried (or dropped) towards each side. */
  relay?: { to_onsite: PacketStats; to_master: PacketStats };
}
export interface TunnelModeBody {
  session: string;
  mode: TunnelModeName;
  addressing?: TunnelAddressingBody;
}

// ---- bodies and decoders ------------------------------------------------------------------
//
// One body type and one decoder per message. A decoder takes what JSON.parse gave (the
// connection has already checked it is an object) and returns the typed body, or throws a
// MessageError naming the field and what was expected. Unknown fields are ignored, so a newer
// peer may add fields; a known field of the wrong type is an error, never silently coerced.

/** A control message body that does not have the shape its type requires. */
export class MessageError extends Error {
  override name = "MessageError";
  constructor(
    /** The message type (Msg.*). */
    readonly type: number,
    /** The field, as a path: `targets[2]`, `result[0].id`. */
    readonly field: string,
    /** What the field must be. */
    readonly expected: string,
    detail?: string,
  ) {
    super(`${field}: expected ${expected}${detail ? `, ${detail}` : ""}`);
  }
}

/** Longest session TTL a master may ask for. */
export const MAX_SESSION_TTL = 7 * 86_400_000;
/** Most targets one session may name. */
export const MAX_TARGETS = 64;
/** A session id: `s-` and 4-32 lower-case letters and digits. */
export const SESSION_ID = /^s-[a-z0-9]{4,32}$/;
/** Longest device id (a DNS label). */
export const MAX_DEVICE_ID = 63;

/** The largest keepalive a HELLO may ask for at all (a day); within it, the relay clamps. */
export const MAX_KEEPALIVE_REQUEST = 86_400_000;

export interface HelloBody {
  /** Protocol versions the device speaks; an absent list offers none. */
  versions: number[];
  role: string;
  id: string;
  /** Software and version, e.g. "agent/1.2.0"; may be empty. */
  agent: string;
  /** The keepalive interval the device asks for on this connection, ms (added in 1, compatible:
   * an older relay ignores it and its WELCOME says its own). Sent when the device dials over a
   * metered uplink; the relay clamps it to its bounds (src/transport/policy.ts). */
  keepalive?: number;
  /** A random id the device process picked at start (added in 1, compatible: an older relay
   * ignores it). A connection that replaces one with the same instance is that device
   * redialling (it moved uplinks), never a second device with the same certificate. */
  instance?: string;
}
export interface WelcomeBody {
  version: number;
  relay: string;
  /** The device's address as the relay sees it. */
  address: string;
  /** The relay's keepalive interval, ms. */
  keepalive: number;
  /** Issue 17: the window (ms) over which this device spreads its first redial when the
   * connection is lost (a relay restart must not bring the whole fleet back in one instant);
   * it grows with the fleet the relay serves. Absent from an older relay. */
  spread?: number;
}
export type ReplyBody = { rid: number; ok: true; result: unknown } | { rid: number; ok: false; code: string; error: string };
export interface InventoryBody {
  hostname: string;
  location: string;
  agent: string;
  /** Seconds since the device booted, when it sent this. */
  uptime: number;
  uplink: string;
  /** Added in 1 (compatible; issue 15): the device's `[[service]]` tables. An older relay ignores it. */
  services?: ServiceDecl[];
}
/** The device's heartbeat key, handed out inside TLS (added in 1, compatible: an older device ignores it). */
export interface HeartbeatKeyBody {
  /** 32 bytes, base64. */
  key: string;
  /** The relay's UDP port for heartbeats. */
  port: number;
}
/** DEVICES and SESSIONS take an empty request body. */
export type EmptyBody = Record<string, never>;
export interface SessionOpenBody {
  onsite: string;
  /** HOST:PORT strings, without repeats (the decoder drops repeats). */
  targets: string[];
  /** ms; null: no TTL. */
  ttl: number | null;
  /** Re-open this session id (a master resuming); null: the relay picks one. */
  session: string | null;
  /** A packet tunnel for the session (then `targets` may be empty). */
  tunnel?: TunnelRequestBody;
  /** UDP forwards' targets, HOST:PORT (then `targets` may be empty). */
  udp?: string[];
}
export interface SessionOfferBody {
  session: string;
  master: string;
  targets: string[];
  /** ISO time, or null for no TTL. */
  expires: string | null;
  tunnel?: TunnelRequestBody;
  udp?: string[];
}
/** The onsite device's answer to SESSION_OFFER: it accepts; `warnings` about its targets, if any. */
export interface SessionOfferReply {
  warnings?: string[];
  /** When the offer asked for a tunnel: the end the device made. */
  tunnel?: TunnelOffer;
}
export interface SessionCloseBody {
  session: string;
  reason: string;
  /** True: the session will not come back by itself (TTL, ended); false: a side went away. */
  final: boolean;
}
export interface SessionEndBody {
  session: string;
  reason: string | null;
}
/** SESSION_EXTEND: the session ends `ttl` ms from now (≥ 1 s; the relay clamps to MAX_SESSION_TTL). */
export interface SessionExtendBody {
  session: string;
  ttl: number;
}
/** SESSION_EXPIRES: the session's end as the relay now holds it (ISO time). */
export interface SessionExpiresBody {
  session: string;
  expires: string;
}
/**
 * A timed DNAT rule for a session's peer. The master sends every field but `source`; the relay
 * fills `source` in (the master's IPv4 address as its socket reports it) and forwards the rest
 * unchanged. The onsite device judges the values (src/nat/rule.ts); the shape is checked here.
 */
export interface NatRequestBody {
  session: string;
  /** "tcp" (default) or "udp". */
  proto?: string;
  /** The port on the device's uplink, "1"-"65535" (a number is accepted). */
  port?: string | number;
  /** The LAN target "IPv4:PORT". */
  to?: string;
  /** How long the rule lives: a duration such as "30s", "15m", "2h" (ms as a number accepted). */
  ttl?: string | number;
  /** Only packets arriving on this interface. */
  iface?: string;
  /** Set by the relay; whatever a master sends here is replaced. */
  source?: string;
  /** Instead of adding: remove this rule id now, if it is this session's (a master revoking a grant early). */
  revoke?: string;
}
/** The onsite device's answer to NAT_REQUEST: the rule it added (src/nat/service.ts AddResult). */
export type NatReply = Record<string, unknown>;

// ---- field readers ----------------------------------------------------------------------------

type Obj = Record<string, unknown>;

class Reader {
  constructor(
    readonly type: number,
    readonly o: Obj,
    readonly path = "",
  ) {}
  at(k: string): string {
    return this.path ? `${this.path}.${k}` : k;
  }
  fail(k: string, expected: string, v?: unknown): never {
    throw new MessageError(this.type, this.at(k), expected, v === undefined ? "got nothing" : `got ${describe(v)}`);
  }
  str(k: string, max = Infinity): string {
    const v = this.o[k];
    if (typeof v !== "string" || v.length > max) this.fail(k, max === Infinity ? "a string" : `a string of at most ${max} characters`, v);
    return v;
  }
  optStr(k: string, dflt: string): string {
    return this.o[k] === undefined ? dflt : this.str(k);
  }
  num(k: string, check: (n: number) => boolean = Number.isFinite, what = "a number"): number {
    const v = this.o[k];
    if (typeof v !== "number" || !check(v)) this.fail(k, what, v);
    return v;
  }
  bool(k: string): boolean {
    const v = this.o[k];
    if (typeof v !== "boolean") this.fail(k, "true or false", v);
    return v;
  }
  strs(k: string, what = "an array of strings"): string[] {
    const v = this.o[k];
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) this.fail(k, what, v);
    return v as string[];
  }
  nullable<T>(k: string, read: () => T): T | null {
    return this.o[k] === undefined || this.o[k] === null ? null : read();
  }
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return v.length > 40 ? `a string of ${v.length} characters` : JSON.stringify(v);
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return typeof v === "object" ? "an object" : typeof v;
}

function object(type: number, v: unknown, path = ""): Reader {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new MessageError(type, path || "body", "a JSON object", `got ${describe(v)}`);
  return new Reader(type, v as Obj, path);
}

function list<T>(type: number, v: unknown, path: string, each: (r: Reader) => T): T[] {
  if (!Array.isArray(v)) throw new MessageError(type, path, "an array", `got ${describe(v)}`);
  return v.map((x, i) => each(object(type, x, `${path}[${i}]`)));
}

const isIso = (s: string) => !Number.isNaN(Date.parse(s));
const isCount = (n: number) => Number.isInteger(n) && n >= 0;

// ---- one decoder per message --------------------------------------------------------------

export function decodeHello(body: unknown): HelloBody {
  const r = object(Msg.HELLO, body);
  const versions = r.o.versions === undefined ? [] : r.o.versions;
  if (!Array.isArray(versions) || versions.some((v) => !Number.isInteger(v) || v < 1 || v > 0xffff)) {
    r.fail("versions", "an array of protocol version numbers", versions);
  }
  const hello: HelloBody = { versions: versions as number[], role: r.str("role"), id: r.str("id"), agent: r.optStr("agent", "") };
  if (r.o.keepalive !== undefined) hello.keepalive = r.num("keepalive", (n) => Number.isInteger(n) && n >= 1 && n <= MAX_KEEPALIVE_REQUEST, `milliseconds (an integer 1–${MAX_KEEPALIVE_REQUEST})`);
  if (r.o.instance !== undefined) {
    const instance = r.str("instance", 64);
    if (!/^[A-Za-z0-9_-]+$/.test(instance)) r.fail("instance", "1-64 letters, digits, '-' or '_'", instance);
    hello.instance = instance;
  }
  return hello;
}

export function decodeWelcome(body: unknown): WelcomeBody {
  const r = object(Msg.WELCOME, body);
  return {
    version: r.num("version", (n) => Number.isInteger(n) && n >= 1, "a protocol version number"),
    relay: r.str("relay"),
    address: r.str("address"),
    keepalive: r.num("keepalive", (n) => isCount(n) && n > 0, "milliseconds"),
    ...(r.o.spread !== undefined ? { spread: r.num("spread", (n) => isCount(n) && n <= MAX_REDIAL_SPREAD, `milliseconds (0–${MAX_REDIAL_SPREAD})`) } : {}),
  };
}

/** The longest first-redial spread a WELCOME may ask for (ms): beyond, a device waits too long after a blip. */
export const MAX_REDIAL_SPREAD = 120_000;

export function decodeReply(body: unknown): ReplyBody {
  const r = object(Msg.REPLY, body);
  const rid = r.num("rid", isCount, "a request id");
  if (r.bool("ok")) return { rid, ok: true, result: r.o.result ?? null };
  return { rid, ok: false, code: r.str("code"), error: r.str("error") };
}

export function decodeInventory(body: unknown): InventoryBody {
  const r = object(Msg.INVENTORY, body);
  const out: InventoryBody = {
    hostname: r.str("hostname"),
    location: r.str("location"),
    agent: r.str("agent"),
    uptime: r.num("uptime", (n) => Number.isFinite(n) && n >= 0, "seconds (a number ≥ 0)"),
    uplink: r.str("uplink"),
  };
  const services = servicesOf(r);
  if (services) out.services = services;
  return out;
}

/** The optional `services` list (INVENTORY, DeviceInfo): absent or null is none. */
function servicesOf(r: Reader): ServiceDecl[] | undefined {
  const v = r.o.services;
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.length > SERVICE_LIMITS.count) r.fail("services", `an array of at most ${SERVICE_LIMITS.count} services`, v);
  return (v as unknown[]).map((x, i) => {
    const e = object(r.type, x, r.at(`services[${i}]`));
    const name = e.str("name", SERVICE_LIMITS.name);
    if (name.trim() === "") e.fail("name", "a name that is not empty", name);
    const target = e.str("target", 261);
    checkTarget(r.type, e.at("target"), target);
    const kind = e.o.kind;
    if (typeof kind !== "string" || !(SERVICE_KINDS as readonly string[]).includes(kind)) e.fail("kind", `one of ${SERVICE_KINDS.join(", ")}`, kind);
    const out: ServiceDecl = { name, target, kind: kind as ServiceKind };
    if (e.o.description !== undefined && e.o.description !== null) out.description = e.str("description", SERVICE_LIMITS.description);
    return out;
  });
}

export function decodeHeartbeatKey(body: unknown): HeartbeatKeyBody {
  const r = object(Msg.HEARTBEAT_KEY, body);
  const key = r.str("key", 64);
  if (!/^[A-Za-z0-9+/]{43}=$/.test(key)) r.fail("key", "32 bytes in base64", key);
  return { key, port: r.num("port", (n) => Number.isInteger(n) && n >= 1 && n <= 65535, "a UDP port") };
}

export function decodeEmpty(type: number): (body: unknown) => EmptyBody {
  return (body) => {
    object(type, body);
    return {};
  };
}

/** One HOST:PORT target, checked the way every other HOST:PORT is (src/netaddr.ts). */
function checkTarget(type: number, field: string, t: string): void {
  try {
    parseHostPort(t, "HOST:PORT");
  } catch (e) {
    // parseHostPort says "expected HOST:PORT such as …, got …" (or names a bad port or address).
    const text = (e as Error).message;
    throw new MessageError(type, field, text.startsWith("expected ") ? text.slice("expected ".length) : `HOST:PORT (${text})`);
  }
}

export function decodeSessionOpen(body: unknown): SessionOpenBody {
  const T = Msg.SESSION_OPEN;
  const r = object(T, body);
  const onsite = r.o.onsite;
  if (typeof onsite !== "string" || onsite.length === 0 || onsite.length > MAX_DEVICE_ID) throw new MessageError(T, "onsite", "a device id");
  const tunnel = tunnelRequestOf(r, "tunnel");
  const udp = udpTargetsOf(r);
  const targets = r.o.targets;
  // A session carries something: TCP targets, UDP targets or a tunnel.
  const min = tunnel || udp?.length ? 0 : 1;
  if (!Array.isArray(targets) || targets.length < min || targets.length + (udp?.length ?? 0) > MAX_TARGETS) throw new MessageError(T, "targets", `${min}-${MAX_TARGETS} HOST:PORT strings`);
  targets.forEach((t, i) => {
    if (typeof t !== "string") throw new MessageError(T, "targets", "HOST:PORT strings");
    checkTarget(T, `targets[${i}]`, t);
  });
  const ttl = r.o.ttl ?? null;
  if (ttl !== null && (typeof ttl !== "number" || !Number.isInteger(ttl) || ttl < 1000 || ttl > MAX_SESSION_TTL)) {
    throw new MessageError(T, "ttl", `milliseconds between 1 s and ${MAX_SESSION_TTL / 86_400_000} days`);
  }
  const session = r.o.session ?? null;
  if (session !== null && (typeof session !== "string" || !SESSION_ID.test(session))) throw new MessageError(T, "session", "an id such as s-1a2b3c4d");
  const out: SessionOpenBody = { onsite, targets: [...new Set(targets as string[])], ttl: ttl as number | null, session: session as string | null };
  if (tunnel) out.tunnel = tunnel;
  if (udp) out.udp = udp;
  return out;
}

const TUNNEL_MODE_NAMES: readonly string[] = ["routed", "bridged"];

/** A tunnel mode as a peer wrote it: anything else is refused, quoted (cut) in the error. */
function tunnelModeOf(r: Reader, k: string): TunnelModeName {
  const v = r.o[k];
  if (typeof v !== "string" || !TUNNEL_MODE_NAMES.includes(v)) r.fail(k, `"routed" or "bridged"`, v);
  return v as TunnelModeName;
}

/** A point-to-point address with its prefix, "10.99.0.1/30" (host bits may be set). */
function addressOf(r: Reader, k: string): string {
  const v = r.o[k];
  const ok = typeof v === "string" && /^[\d.]+\/(\d|[12]\d|3[0-2])$/.test(v) && (() => {
    try {
      parseIPv4(v.slice(0, v.indexOf("/")));
      return true;
    } catch {
      return false;
    }
  })();
  if (!ok) r.fail(k, "an IPv4 address with prefix such as 10.99.0.1/30", v);
  return v as string;
}

function addressingOf(r: Reader, k: string): TunnelAddressingBody | undefined {
  if (r.o[k] === undefined || r.o[k] === null) return undefined;
  const a = object(r.type, r.o[k], r.at(k));
  return { master: addressOf(a, "master"), onsite: addressOf(a, "onsite") };
}

function tunnelRequestOf(r: Reader, k: string): TunnelRequestBody | undefined {
  if (r.o[k] === undefined || r.o[k] === null) return undefined;
  const t = object(r.type, r.o[k], r.at(k));
  const out: TunnelRequestBody = { mode: tunnelModeOf(t, "mode") };
  const addressing = addressingOf(t, "addressing");
  if (addressing) out.addressing = addressing;
  return out;
}

function udpTargetsOf(r: Reader): string[] | undefined {
  if (r.o.udp === undefined || r.o.udp === null) return undefined;
  const v = r.o.udp;
  if (!Array.isArray(v) || v.length > MAX_TARGETS || v.some((x) => typeof x !== "string")) throw new MessageError(r.type, r.at("udp"), `0-${MAX_TARGETS} HOST:PORT strings`);
  (v as string[]).forEach((t, i) => checkTarget(r.type, r.at(`udp[${i}]`), t));
  return [...new Set(v as string[])];
}

function cidrsOf(r: Reader, k: string): string[] {
  const v = r.strs(k, "an array of CIDR strings");
  v.forEach((c, i) => {
    try {
      parseCidr(c);
    } catch (e) {
      throw new MessageError(r.type, r.at(`${k}[${i}]`), "a CIDR such as 192.168.1.0/24", (e as Error).message);
    }
  });
  return v;
}

function tunnelEndOf(r: Reader): TunnelEndBody {
  const out: TunnelEndBody = { iface: r.str("iface", 15), addresses: r.strs("addresses"), routes: r.strs("routes") };
  if (r.o.bridge !== undefined && r.o.bridge !== null) out.bridge = r.str("bridge", 15);
  return out;
}

function tunnelOfferOf(r: Reader): TunnelOffer {
  return { mode: tunnelModeOf(r, "mode"), subnets: cidrsOf(r, "subnets"), onsite: tunnelEndOf(object(r.type, r.o.onsite, r.at("onsite"))) };
}

function packetStatsOf(r: Reader): PacketStats {
  const d = object(r.type, r.o.drops, r.at("drops"));
  const drops = {} as PacketStats["drops"];
  for (const reason of DROP_REASONS) drops[reason] = d.o[reason] === undefined ? 0 : d.num(reason, isCount, "a count");
  return { packets_out: r.num("packets_out", isCount, "a count"), bytes_out: r.num("bytes_out", isCount, "a count"), packets_in: r.num("packets_in", isCount, "a count"), bytes_in: r.num("bytes_in", isCount, "a count"), drops };
}

function sessionTunnelOf(r: Reader): SessionTunnel {
  const out: SessionTunnel = tunnelOfferOf(r);
  const addressing = addressingOf(r, "addressing");
  if (addressing) out.addressing = addressing;
  if (r.o.relay !== undefined && r.o.relay !== null) {
    const rel = object(r.type, r.o.relay, r.at("relay"));
    out.relay = { to_onsite: packetStatsOf(object(r.type, rel.o.to_onsite, rel.at("to_onsite"))), to_master: packetStatsOf(object(r.type, rel.o.to_master, rel.at("to_master"))) };
  }
  return out;
}

export function decodeTunnelMode(body: unknown): TunnelModeBody {
  const r = object(Msg.TUNNEL_MODE, body);
  const out: TunnelModeBody = { session: r.str("session"), mode: tunnelModeOf(r, "mode") };
  const addressing = addressingOf(r, "addressing");
  if (addressing) out.addressing = addressing;
  return out;
}

export const decodeTunnelOffer = (v: unknown): TunnelOffer => tunnelOfferOf(object(Msg.TUNNEL_MODE, v, "result"));

export function decodeSessionOffer(body: unknown): SessionOfferBody {
  const r = object(Msg.SESSION_OFFER, body);
  const out: SessionOfferBody = {
    session: r.str("session"),
    master: r.str("master"),
    targets: r.strs("targets", "an array of HOST:PORT strings"),
    expires: r.nullable("expires", () => {
      const s = r.str("expires");
      if (!isIso(s)) r.fail("expires", "an ISO time or null", s);
      return s;
    }),
  };
  const tunnel = tunnelRequestOf(r, "tunnel");
  if (tunnel) out.tunnel = tunnel;
  const udp = udpTargetsOf(r);
  if (udp) out.udp = udp;
  return out;
}

export function decodeSessionClose(body: unknown): SessionCloseBody {
  const r = object(Msg.SESSION_CLOSE, body);
  return { session: r.str("session"), reason: r.str("reason"), final: r.bool("final") };
}

/** A session opened by a master on another relay (§9): SESSION_OPEN's fields, its master and address, and the id its relay gave it. */
export interface MeshOpenBody extends SessionOpenBody {
  session: string;
  /** The master's id, as its relay authenticated it. */
  master: string;
  /** The master's address as its relay sees it. */
  address: string;
}

export function decodeMeshOpen(body: unknown): MeshOpenBody {
  const T = Msg.MESH_OPEN;
  let open: SessionOpenBody;
  try {
    open = decodeSessionOpen(body);
  } catch (e) {
    // The same field and words, under this message's type.
    if (e instanceof MessageError) throw Object.assign(new MessageError(T, e.field, e.expected), { message: e.message });
    throw e;
  }
  const r = object(T, body);
  const master = r.o.master;
  if (typeof master !== "string" || master.length === 0 || master.length > MAX_DEVICE_ID) throw new MessageError(T, "master", "a device id");
  if (open.session === null) throw new MessageError(T, "session", "an id such as s-1a2b3c4d");
  const address = r.str("address");
  if (address.length > 64) throw new MessageError(T, "address", "an address of at most 64 characters");
  return { ...open, session: open.session, master, address };
}

export function decodeSessionEnd(body: unknown): SessionEndBody {
  const r = object(Msg.SESSION_END, body);
  return { session: r.str("session"), reason: r.nullable("reason", () => r.str("reason")) };
}

export function decodeSessionExtend(body: unknown): SessionExtendBody {
  const r = object(Msg.SESSION_EXTEND, body);
  const session = r.str("session", 64);
  // Any length of at least a second: the relay clamps, rather than refusing a long one.
  const ttl = r.num("ttl", (n) => Number.isInteger(n) && n >= 1000 && n <= Number.MAX_SAFE_INTEGER, "milliseconds (an integer of at least 1000)");
  return { session, ttl };
}

export function decodeSessionExpires(body: unknown): SessionExpiresBody {
  const r = object(Msg.SESSION_EXPIRES, body);
  const session = r.str("session", 64);
  const expires = r.str("expires", 40);
  if (!isIso(expires)) r.fail("expires", "an ISO time", expires);
  return { session, expires };
}

export function decodeNatRequest(body: unknown): NatRequestBody {
  const r = object(Msg.NAT_REQUEST, body);
  const out: NatRequestBody = { session: r.str("session") };
  const strOrNum = (k: "port" | "ttl", what: string) => {
    const v = r.o[k];
    if (v === undefined) return;
    if (typeof v !== "string" && (typeof v !== "number" || !isCount(v))) r.fail(k, what, v);
    out[k] = v as string | number;
  };
  for (const k of ["proto", "to", "iface", "source", "revoke"] as const) if (r.o[k] !== undefined) out[k] = r.str(k);
  strOrNum("port", "a port number (string or number)");
  strOrNum("ttl", "a duration such as \"15m\" (or milliseconds)");
  return out;
}

function deviceInfo(r: Reader): DeviceInfo {
  return {
    id: r.str("id"),
    hostname: r.str("hostname"),
    location: r.str("location"),
    address: r.str("address"),
    agent: r.str("agent"),
    uptime: r.num("uptime", (n) => Number.isFinite(n) && n >= 0, "seconds"),
    uplink: r.str("uplink"),
    online: r.bool("online"),
    connected_since: r.str("connected_since"),
    last_seen: r.str("last_seen"),
    rtt_ms: r.nullable("rtt_ms", () => r.num("rtt_ms")),
    ...deviceExtras(r),
  };
}

const DEVICE_STATES: readonly string[] = ["online", "alive", "lost", "offline"];

/** DeviceInfo's optional fields (issue 15), each checked when present. */
function deviceExtras(r: Reader): Partial<DeviceInfo> {
  const out: Partial<DeviceInfo> = {};
  const o = r.o;
  if (o.state !== undefined) {
    if (typeof o.state !== "string" || !DEVICE_STATES.includes(o.state)) r.fail("state", "online, alive, lost or offline", o.state);
    out.state = o.state as DeviceStateName;
  }
  if (o.status !== undefined) out.status = r.str("status");
  if (o.heartbeat !== undefined) {
    out.heartbeat = r.nullable("heartbeat", () => {
      const h = object(r.type, o.heartbeat, r.at("heartbeat"));
      const payload = object(r.type, h.o.payload, h.at("payload"));
      return { at: h.str("at"), via: h.str("via"), from: h.str("from"), payload: payload.o as unknown as HeartbeatPayload };
    });
  }
  if (o.heard_over !== undefined) {
    const h = object(r.type, o.heard_over, r.at("heard_over"));
    out.heard_over = Object.fromEntries(Object.keys(h.o).map((k) => [k, h.str(k)]));
  }
  if (o.first_seen !== undefined) out.first_seen = r.str("first_seen");
  if (o.cert_expires !== undefined) out.cert_expires = r.nullable("cert_expires", () => r.str("cert_expires"));
  const services = servicesOf(r);
  if (services) out.services = services;
  return out;
}

function sessionInfo(r: Reader): SessionInfo {
  const info: SessionInfo = {
    session: r.str("session"),
    master: r.str("master"),
    onsite: r.str("onsite"),
    targets: r.strs("targets"),
    opened: r.str("opened"),
    expires: r.nullable("expires", () => r.str("expires")),
  };
  const warnings = warningsOf(r);
  if (warnings) info.warnings = warnings;
  if (r.o.tunnel !== undefined && r.o.tunnel !== null) info.tunnel = sessionTunnelOf(object(r.type, r.o.tunnel, r.at("tunnel")));
  if (r.o.udp !== undefined && r.o.udp !== null) info.udp = r.strs("udp");
  return info;
}

/** The optional `warnings` field: an array of strings (absent or null: none). */
function warningsOf(r: Reader): string[] | undefined {
  const w = r.nullable("warnings", () => r.strs("warnings"));
  return w && w.length ? w : undefined;
}

export function decodeSessionOfferReply(v: unknown): SessionOfferReply {
  // A handler that returns nothing answers null: "accepted, nothing to say".
  if (v === null || v === undefined) return {};
  const r = object(Msg.SESSION_OFFER, v, "result");
  const warnings = warningsOf(r);
  const out: SessionOfferReply = warnings ? { warnings } : {};
  if (r.o.tunnel !== undefined && r.o.tunnel !== null) out.tunnel = tunnelOfferOf(object(r.type, r.o.tunnel, r.at("tunnel")));
  return out;
}

/** Results of the requests: what the REPLY's `result` carries. */
export const decodeDevicesReply = (v: unknown): DeviceInfo[] => list(Msg.DEVICES, v, "result", deviceInfo);
export const decodeSessionsReply = (v: unknown): SessionInfo[] => list(Msg.SESSIONS, v, "result", sessionInfo);
export const decodeSessionInfo = (v: unknown): SessionInfo => sessionInfo(object(Msg.SESSION_OPEN, v, "result"));
export const decodeNatReply = (v: unknown): NatReply => object(Msg.NAT_REQUEST, v, "result").o;
function emptyReply(type: number) {
  // A handler that returns nothing answers null: both mean "done".
  return (v: unknown): EmptyBody => (v === null || v === undefined ? {} : decodeEmpty(type)(v));
}

/**
 * The catalogue as types: for each message, its body and (for requests) the result of its
 * REPLY. `typed.ts` builds request/handle/send on it.
 */
export interface Catalogue {
  [Msg.HELLO]: { body: HelloBody };
  [Msg.WELCOME]: { body: WelcomeBody };
  [Msg.REPLY]: { body: ReplyBody };
  [Msg.INVENTORY]: { body: InventoryBody };
  [Msg.DEVICES]: { body: EmptyBody; reply: DeviceInfo[] };
  [Msg.HEARTBEAT_KEY]: { body: HeartbeatKeyBody };
  [Msg.SESSION_OPEN]: { body: SessionOpenBody; reply: SessionInfo };
  [Msg.SESSION_OFFER]: { body: SessionOfferBody; reply: SessionOfferReply };
  [Msg.SESSION_CLOSE]: { body: SessionCloseBody };
  [Msg.SESSIONS]: { body: EmptyBody; reply: SessionInfo[] };
  [Msg.SESSION_END]: { body: SessionEndBody; reply: EmptyBody };
  [Msg.TUNNEL_MODE]: { body: TunnelModeBody; reply: TunnelOffer };
  [Msg.SESSION_EXTEND]: { body: SessionExtendBody; reply: SessionInfo };
  [Msg.SESSION_EXPIRES]: { body: SessionExpiresBody };
  [Msg.NAT_REQUEST]: { body: NatRequestBody; reply: NatReply };
  [Msg.MESH_OPEN]: { body: MeshOpenBody; reply: SessionInfo };
}
export type BodyOf<M extends MsgType> = Catalogue[M]["body"];
export type RequestMsg = { [M in MsgType]: Catalogue[M] extends { reply: unknown } ? M : never }[MsgType];
export type OneWayMsg = Exclude<MsgType, RequestMsg | typeof Msg.REPLY>;
export type ReplyOf<M extends RequestMsg> = Catalogue[M] extends { reply: infer R } ? R : never;

/** The decoder of each message's body. */
export const decoders: { [M in MsgType]: (body: unknown) => BodyOf<M> } = {
  [Msg.HELLO]: decodeHello,
  [Msg.WELCOME]: decodeWelcome,
  [Msg.REPLY]: decodeReply,
  [Msg.INVENTORY]: decodeInventory,
  [Msg.DEVICES]: decodeEmpty(Msg.DEVICES),
  [Msg.HEARTBEAT_KEY]: decodeHeartbeatKey,
  [Msg.SESSION_OPEN]: decodeSessionOpen,
  [Msg.SESSION_OFFER]: decodeSessionOffer,
  [Msg.SESSION_CLOSE]: decodeSessionClose,
  [Msg.SESSIONS]: decodeEmpty(Msg.SESSIONS),
  [Msg.SESSION_END]: decodeSessionEnd,
  [Msg.TUNNEL_MODE]: decodeTunnelMode,
  [Msg.SESSION_EXTEND]: decodeSessionExtend,
  [Msg.SESSION_EXPIRES]: decodeSessionExpires,
  [Msg.NAT_REQUEST]: decodeNatRequest,
  [Msg.MESH_OPEN]: decodeMeshOpen,
};

/** The decoder of each request's result. */
export const replyDecoders: { [M in RequestMsg]: (result: unknown) => ReplyOf<M> } = {
  [Msg.DEVICES]: decodeDevicesReply,
  [Msg.SESSION_OPEN]: decodeSessionInfo,
  [Msg.SESSION_OFFER]: decodeSessionOfferReply,
  [Msg.SESSIONS]: decodeSessionsReply,
  [Msg.SESSION_END]: emptyReply(Msg.SESSION_END),
  [Msg.TUNNEL_MODE]: decodeTunnelOffer,
  [Msg.SESSION_EXTEND]: (v) => sessionInfo(object(Msg.SESSION_EXTEND, v, "result")),
  [Msg.NAT_REQUEST]: decodeNatReply,
  [Msg.MESH_OPEN]: decodeSessionInfo,
};
