// Cluster presence, the pure part: which relays are alive (from their heartbeats on pub/sub),
// which of two connections of one device wins, and the checks every value read back from Redis
// passes before the relay believes it. No I/O here: ./redis-directory.ts feeds it.
//
// Liveness is driven by node heartbeats, never by key expiry: a relay publishes one every
// HEARTBEAT_MS, and one not heard for DEAD_AFTER_MS is dead, so its devices are known gone within
// seconds. The presence keys' TTL is only the backstop that lets Redis forget them.
import type { Clock } from "../clock.ts";
import type { PresenceEntry, RelayNode } from "./directory.ts";

export const ClusterTiming = {
  /** A relay publishes its heartbeat this often (ms). */
  heartbeat: 1_000,
  /** A relay not heard for this long is dead (ms): three and a half beats. */
  deadAfter: 3_500,
  /** Presence keys expire after this (ms) unless refreshed... */
  presenceTtl: 20_000,
  /** ...which each relay does this often for the devices it holds (ms): a third of the TTL. */
  presenceRefresh: 6_000,
  /** The relay's inventory and session snapshot go to Redis at most this often (ms). */
  snapshot: 2_000,
  /** Every inventory row is rewritten at least this often, changed or not (ms). */
  rewriteAll: 60_000,
  /** A Redis command not answered within this is a failure (ms). */
  command: 1_500,
  /** Redis redials after a loss: backoff from this... (ms) */
  redialBase: 200,
  /** ...up to this (ms). */
  redialCap: 5_000,
} as const;

/** Bounds on what the relay accepts from Redis: anything beyond is refused, not parsed. */
export const ClusterLimits = {
  /** One presence value, one heartbeat or one pub/sub message. */
  message: 4_096,
  /** One inventory row. */
  row: 16_384,
  /** One relay's session snapshot. */
  sessions: 4 * 1024 * 1024,
  /** Rows read from one relay's inventory hash. */
  rows: 100_000,
  /** Serials in one revocation message or the shared set. */
  serials: 100_000,
  /** Relays in the cluster. */
  nodes: 256,
} as const;

const ID = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const HOSTPORT = /^[A-Za-z0-9.:[\]-]{1,260}:\d{1,5}$/;
const SERIAL = /^[0-9a-f]{1,64}$/;

/** A value from Redis that the relay will not believe: oversized, not JSON, or the wrong shape. */
export class GarbageError extends Error {
  override name = "GarbageError";
  constructor(what: string, why: string) {
    super(`refused ${what} from Redis: ${why}`);
  }
}

function parse(what: string, text: unknown, limit: number): Record<string, unknown> {
  if (typeof text !== "string") throw new GarbageError(what, `expected text, got ${text === null ? "null" : typeof text}`);
  if (text.length > limit) throw new GarbageError(what, `${text.length} bytes, more than the ${limit} allowed`);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new GarbageError(what, `not JSON: ${JSON.stringify(text.slice(0, 40))}`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw new GarbageError(what, "not a JSON object");
  return v as Record<string, unknown>;
}

function id(what: string, v: unknown, field: string): string {
  if (typeof v !== "string" || !ID.test(v)) throw new GarbageError(what, `${field} is not an id: ${JSON.stringify(v)?.slice(0, 70)}`);
  return v;
}

function time(what: string, v: unknown, field: string): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) throw new GarbageError(what, `${field} is not a time in ms: ${JSON.stringify(v)?.slice(0, 40)}`);
  return v;
}

/** A node's heartbeat as published. */
export interface Heartbeat {
  id: string;
  mesh: string;
  /** Wall ms the relay process started: a new boot of the same id is a restart. */
  boot: number;
  /** A digest of its [[access]] rules: relays whose digests differ are said to disagree. */
  access: string;
  /** Set on the last message of a relay that is shutting down. */
  bye?: boolean;
}

export function encodeHeartbeat(h: Heartbeat): string {
  return JSON.stringify(h);
}

export function decodeHeartbeat(text: unknown): Heartbeat {
  const w = "a heartbeat";
  const o = parse(w, text, ClusterLimits.message);
  const mesh = o.mesh;
  if (typeof mesh !== "string" || !HOSTPORT.test(mesh)) throw new GarbageError(w, `mesh is not HOST:PORT: ${JSON.stringify(mesh)?.slice(0, 70)}`);
  const access = o.access;
  if (typeof access !== "string" || access.length > 128) throw new GarbageError(w, "access is not a digest");
  return { id: id(w, o.id, "id"), mesh, boot: time(w, o.boot, "boot"), access, ...(o.bye === true ? { bye: true } : {}) };
}

export function encodePresence(p: PresenceEntry): string {
  return JSON.stringify({ device: p.device, node: p.node, since: p.since });
}

export function decodePresence(text: unknown): PresenceEntry {
  const w = "a presence entry";
  const o = parse(w, text, ClusterLimits.message);
  return { device: id(w, o.device, "device"), node: id(w, o.node, "node"), since: time(w, o.since, "since") };
}

/** Serials a relay published as revoked (normalized lowercase hex). */
export function decodeSerials(text: unknown): { node: string; serials: string[] } {
  const w = "a revocation message";
  const o = parse(w, text, ClusterLimits.serials * 70);
  const s = o.serials;
  if (!Array.isArray(s) || s.length > ClusterLimits.serials) throw new GarbageError(w, "serials is not a bounded list");
  for (const x of s) if (typeof x !== "string" || !SERIAL.test(x)) throw new GarbageError(w, `not a serial: ${JSON.stringify(x)?.slice(0, 70)}`);
  return { node: id(w, o.node, "node"), serials: s as string[] };
}

export function isSerial(s: unknown): s is string {
  return typeof s === "string" && SERIAL.test(s);
}

/** A JSON object read from Redis (an inventory row, a session snapshot), bounded and parsed. */
export function decodeObject(what: string, text: unknown, limit: number): Record<string, unknown> {
  return parse(what, text, limit);
}

/**
 * Which of two connections of one device is the one to keep: the newer (later `since`); on a
 * tie the larger node id, so both relays reach the same answer. Pure.
 */
export function newer(a: PresenceEntry, b: PresenceEntry): PresenceEntry {
  if (a.since !== b.since) return a.since > b.since ? a : b;
  return a.node >= b.node ? a : b;
}

/**
 * What a relay holding `mine` does on hearing `theirs` announced by another relay: close its own
 * connection ("yield") when theirs wins, else nothing (the other relay hears ours and yields). Pure.
 */
export function onAnnounced(mine: PresenceEntry | null, theirs: PresenceEntry): "yield" | "keep" | "none" {
  if (!mine || mine.device !== theirs.device || mine.node === theirs.node) return "none";
  return newer(mine, theirs) === theirs ? "yield" : "keep";
}

/**
 * The live relays, from the heartbeats heard. `heard` on each heartbeat, `sweep` on a timer:
 * it returns what changed. While the relay cannot reach Redis it hears nobody, itself included:
 * `pause` stops declaring deaths then, and `resume` gives everyone a fresh deadline.
 */
export class NodeTable {
  private readonly last = new Map<string, { node: RelayNode; at: number; boot: number; access: string }>();
  private paused = false;

  constructor(private readonly clock: Clock, readonly self: RelayNode, private readonly deadAfter: number = ClusterTiming.deadAfter) {}

  /** A heartbeat arrived. Returns true when the set of live relays changed (a new or returning relay). */
  heard(h: Heartbeat): boolean {
    if (h.id === this.self.id) return false;
    const had = this.last.get(h.id);
    if (h.bye) return this.last.delete(h.id);
    if (!had && this.last.size >= ClusterLimits.nodes) return false;
    this.last.set(h.id, { node: { id: h.id, mesh: h.mesh }, at: this.clock.now(), boot: h.boot, access: h.access });
    return !had || had.node.mesh !== h.mesh || had.boot !== h.boot;
  }

  /** Relays not heard for `deadAfter`: removed and returned (none while paused). */
  sweep(): string[] {
    if (this.paused) return [];
    const now = this.clock.now();
    const dead: string[] = [];
    for (const [id, e] of this.last) if (now - e.at > this.deadAfter) dead.push(id);
    for (const id of dead) this.last.delete(id);
    return dead;
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    const now = this.clock.now();
    for (const e of this.last.values()) e.at = now;
  }

  isLive(id: string): boolean {
    return id === this.self.id || this.last.has(id);
  }

  get(id: string): RelayNode | null {
    return id === this.self.id ? this.self : (this.last.get(id)?.node ?? null);
  }

  /** Live relays, this one first, then by id. */
  nodes(): RelayNode[] {
    return [this.self, ...[...this.last.values()].map((e) => e.node).sort((a, b) => a.id.localeCompare(b.id))];
  }

  /** Relays whose access digest differs from `mine`. */
  disagreeing(mine: string): string[] {
    return [...this.last].filter(([, e]) => e.access !== mine).map(([id]) => id).sort();
  }
}

/** One device as several relays list it: the online row wins, else the one seen last. Pure. */
export function mergeRows<T extends { id: string; online: boolean; last_seen: string }>(lists: readonly T[][]): T[] {
  const best = new Map<string, T>();
  for (const list of lists)
    for (const row of list) {
      const had = best.get(row.id);
      if (!had || (row.online && !had.online) || (row.online === had.online && row.last_seen > had.last_seen)) best.set(row.id, row);
    }
  return [...best.values()].sort((a, b) => a.id.localeCompare(b.id));
}
