// ClusterDirectory on Redis (issue 16): presence, node heartbeats, and the state the relays share
// (inventory listing, session listing, revocations, a digest of the access policy). Only small
// control values go through Redis; session bytes never do.
//
// Keys and channels (all under `agent:`):
//   agent:presence:<device>  {"device","node","since"}, PX presenceTtl, set by a script that
//                            keeps the newer connection (a later `since` wins);
//   agent:inventory:<node>   hash device → that relay's row of it (persistent: devices stay
//                            listed, offline, after they leave); agent:inventory:nodes the set of
//                            relays that keep one;
//   agent:sessions:<node>    that relay's session list, PX 10 s, rewritten every 2 s;
//   agent:revoked            set of revoked serials (every relay adds what its list holds);
//   channel agent:nodes      heartbeats, one a second from each relay (a `bye` on shutdown);
//   channel agent:presence   "I now hold device D since T": an older holder closes its own;
//   channel agent:revoked    serials just revoked, so every relay closes them at once.
import type { Clock, TimerHandle } from "../clock.ts";
import { systemClock } from "../clock.ts";
import { ClusterUnavailableError, type ClusterDirectory, type PresenceEntry, type RelayNode } from "./directory.ts";
import { ClusterLimits, ClusterTiming, GarbageError, NodeTable, decodeHeartbeat, decodeObject, decodePresence, decodeSerials, encodeHeartbeat, encodePresence, isSerial, mergeRows, onAnnounced } from "./presence.ts";
import type { RedisPort } from "./redis-client.ts";

export interface DirectoryLog {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
}

/** A listing row as the relays share it (a DeviceRow or a SessionInfo, by its id). */
export interface SharedRow {
  id: string;
  [k: string]: unknown;
}

export interface DirectoryHooks {
  /** Another relay holds a newer connection of `device`: this one closes its own. */
  replaced(device: string, reason: string): void;
  /** The serials revoked anywhere in the cluster changed (normalized hex). */
  revoked(serials: ReadonlySet<string>): void;
  /** The wall ms this relay's live connection of `device` began, or null. */
  since(device: string): number | null;
  /** This relay's device rows (each with id, online, last_seen). */
  rows(): SharedRow[];
  /** This relay's sessions (SessionInfo: each with its `session` id). */
  sessions(): { session: string }[];
  /** A digest of this relay's [[access]] rules. */
  accessDigest(): string;
}

export interface RedisDirectoryOptions {
  redis: RedisPort;
  self: RelayNode;
  hooks: DirectoryHooks;
  log: DirectoryLog;
  clock?: Clock;
  /** Wall ms this process started (a restart of the same id is a new boot). */
  boot?: number;
  timing?: Partial<Record<keyof typeof ClusterTiming, number>>;
}

const P = "agent:";
const CH_NODES = `${P}nodes`;
const CH_PRESENCE = `${P}presence`;
const CH_REVOKED = `${P}revoked`;
const K_REVOKED = `${P}revoked`;
const K_INV_NODES = `${P}inventory:nodes`;
const presenceKey = (d: string) => `${P}presence:${d}`;
const inventoryKey = (n: string) => `${P}inventory:${n}`;
const sessionsKey = (n: string) => `${P}sessions:${n}`;

/** Sets the presence of a device unless a newer connection (another relay's) is recorded: 1 set, 0 newer elsewhere. */
const SET_IF_NEWER = `
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, c = pcall(cjson.decode, cur)
  if ok and type(c) == 'table' and c.node ~= ARGV[2] and tonumber(c.since) and tonumber(c.since) > tonumber(ARGV[3]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
return 1`;
/** Deletes a key only while it holds the given value (this relay's own entry). */
const DELETE_IF = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0`;

/** Volatile fields left out when deciding whether a row changed (they move every second). */
const VOLATILE = new Set(["uptime", "last_seen", "rtt_ms", "heartbeat", "heard_over", "status"]);

function stableKey(row: SharedRow): string {
  return JSON.stringify(Object.entries(row).filter(([k]) => !VOLATILE.has(k)));
}

/**
 * Presence claims in flight at once when a relay refreshes (or republishes) every device it
 * holds. All at once, 2,000 devices were 2,000 commands, promises and argument arrays alive
 * together every 6 s: a heap peak the relay kept as RSS (idle memory per device, cluster
 * against single, 1.21x). Bun's client pipelines each batch on one connection.
 */
const CLAIMS_IN_FLIGHT = 64;

/** `fn` over `items`, at most `n` running at once, in order. */
async function inBatches<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += n) await Promise.all(items.slice(i, i + n).map(fn));
}

export class RedisDirectory implements ClusterDirectory {
  readonly self: RelayNode;
  private readonly clock: Clock;
  private readonly table: NodeTable;
  private readonly t: typeof ClusterTiming;
  private readonly listeners = new Set<(nodes: RelayNode[]) => void>();
  /** Devices this relay holds: device → the value it wrote to its presence key. */
  private readonly held = new Map<string, { since: number; value: string }>();
  /** Rows last written to this relay's inventory hash, by id: a 64-bit hash of the stable
   * part (a row's text is ~300 bytes a device, kept for as long as the device is; a hash
   * collision only delays a rewrite to the next full one, rewriteAll). */
  private written = new Map<string, number | bigint>();
  private lastRewrite = -Infinity;
  private lastSessions = "";
  private lastSessionsAt = -Infinity;
  private revoked = new Set<string>();
  /** This relay's own revoked serials (its list file). */
  private own: string[] = [];
  private readonly timers: TimerHandle[] = [];
  private readonly boot: number;
  private closed = false;
  private snapshotting = false;
  /** Values from Redis refused as garbage, in total. */
  garbage = 0;
  private readonly warned = new Map<string, number>();
  private disagreementSaid = new Set<string>();

  constructor(private readonly o: RedisDirectoryOptions) {
    this.self = o.self;
    this.clock = o.clock ?? systemClock;
    this.t = { ...ClusterTiming, ...o.timing } as typeof ClusterTiming;
    this.table = new NodeTable(this.clock, o.self, this.t.deadAfter);
    this.boot = o.boot ?? this.clock.wall();
    this.table.pause();
  }

  // ---- ClusterDirectory --------------------------------------------------------------------

  async locate(device: string): Promise<RelayNode | null> {
    if (this.held.has(device)) return this.self;
    let raw: unknown;
    try {
      raw = await this.o.redis.cmd("GET", [presenceKey(device)]);
    } catch (e) {
      if (e instanceof ClusterUnavailableError) throw e;
      throw new ClusterUnavailableError((e as Error).message);
    }
    if (raw === null) return null;
    let p: PresenceEntry;
    try {
      p = decodePresence(raw);
    } catch (e) {
      this.refused(e as Error);
      return null;
    }
    if (p.device !== device) {
      this.refused(new GarbageError("a presence entry", `key of ${device} names ${p.device}`));
      return null;
    }
    return this.table.get(p.node);
  }

  nodes(): RelayNode[] {
    return this.table.nodes();
  }

  onNodes(listener: (nodes: RelayNode[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Redis answers now (else cross-relay opens are refused). */
  get available(): boolean {
    return this.o.redis.up;
  }

  // ---- life ---------------------------------------------------------------------------------

  start(): void {
    const r = this.o.redis;
    r.subscribe([CH_NODES, CH_PRESENCE, CH_REVOKED], (m, ch) => this.onMessage(m, ch));
    r.onState((up, why) => {
      if (this.closed) return;
      if (up) {
        this.table.resume();
        this.o.log.info(`cluster: Redis reachable; publishing ${this.held.size} device(s) held here and catching up`);
        void this.catchUp();
      } else {
        this.table.pause();
        this.warn("down", `cluster: Redis unreachable (${why}); sessions whose two ends are on this relay go on, sessions to devices on other relays are refused until it is back (check [cluster] redis: host, port, password, rediss:// and redis_ca)`);
      }
    });
    r.start();
    const every = (ms: number, fn: () => void) => this.timers.push(this.clock.setInterval(fn, ms));
    every(this.t.heartbeat, () => void this.beat());
    every(Math.max(100, Math.floor(this.t.heartbeat / 2)), () => this.sweep());
    every(this.t.presenceRefresh, () => void this.refreshPresence());
    every(this.t.snapshot, () => void this.snapshot());
    every(30_000, () => void this.readRevoked());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const t of this.timers) this.clock.clearInterval(t);
    // Said on the way out: the others drop this relay now, not in deadAfter.
    if (this.o.redis.up) {
      await Promise.allSettled([
        this.o.redis.cmd("PUBLISH", [CH_NODES, encodeHeartbeat({ id: this.self.id, mesh: this.self.mesh, boot: this.boot, access: this.o.hooks.accessDigest(), bye: true })]),
        ...[...this.held].map(([d, h]) => this.o.redis.cmd("EVAL", [DELETE_IF, "1", presenceKey(d), h.value])),
      ]);
    }
    this.o.redis.close();
  }

  // ---- presence -----------------------------------------------------------------------------

  /** This relay welcomed `device` (wall ms `since`): record and announce it. */
  connected(device: string, since: number): void {
    const value = encodePresence({ device, node: this.self.id, since });
    this.held.set(device, { since, value });
    void this.claim(device, true);
  }

  /** This relay's connection of `device` ended. */
  disconnected(device: string): void {
    const h = this.held.get(device);
    if (!h) return;
    this.held.delete(device);
    this.o.redis.cmd("EVAL", [DELETE_IF, "1", presenceKey(device), h.value]).catch(() => {
      /* the TTL clears it */
    });
  }

  /** Writes the presence key (unless a newer connection is recorded) and, if asked, announces it. */
  private async claim(device: string, announce: boolean): Promise<void> {
    const h = this.held.get(device);
    if (!h) return;
    try {
      const set = await this.o.redis.cmd("EVAL", [SET_IF_NEWER, "1", presenceKey(device), h.value, this.self.id, String(h.since), String(this.t.presenceTtl)]);
      if (set === 0) {
        // A newer connection of it is on another relay: that one is the device now.
        if (this.held.get(device) === h) this.yieldDevice(device, "another relay holds a newer connection of it");
        return;
      }
      if (announce) await this.o.redis.cmd("PUBLISH", [CH_PRESENCE, h.value]);
    } catch {
      /* Redis away: catchUp() claims everything again when it returns */
    }
  }

  private yieldDevice(device: string, why: string): void {
    this.held.delete(device);
    this.o.hooks.replaced(device, `replaced: ${device} connected to another relay more recently (${why})`);
  }

  private async refreshPresence(): Promise<void> {
    if (!this.o.redis.up) return;
    await inBatches([...this.held.keys()], CLAIMS_IN_FLIGHT, (d) => this.claim(d, false));
  }

  private async catchUp(): Promise<void> {
    await inBatches([...this.held.keys()], CLAIMS_IN_FLIGHT, (d) => this.claim(d, true));
    this.written.clear();
    this.lastSessions = "";
    await this.beat();
    await this.snapshot();
    if (this.own.length) await this.publishRevoked(this.own).catch(() => {});
    await this.readRevoked();
  }

  // ---- heartbeats ---------------------------------------------------------------------------

  private async beat(): Promise<void> {
    if (!this.o.redis.up || this.closed) return;
    try {
      await this.o.redis.cmd("PUBLISH", [CH_NODES, encodeHeartbeat({ id: this.self.id, mesh: this.self.mesh, boot: this.boot, access: this.o.hooks.accessDigest() })]);
    } catch {
      /* said by the link's state change */
    }
  }

  private sweep(): void {
    const dead = this.table.sweep();
    if (dead.length === 0) return;
    this.o.log.warn(`cluster: relay(s) ${dead.join(", ")} not heard for ${this.t.deadAfter / 1000} s: their devices are gone until they connect again`, { dead });
    this.notify();
  }

  private notify(): void {
    const nodes = this.table.nodes();
    for (const l of this.listeners) {
      try {
        l(nodes);
      } catch (e) {
        this.o.log.warn(`cluster: a node listener failed: ${(e as Error).message}`);
      }
    }
  }

  private onMessage(message: string, channel: string): void {
    try {
      if (channel === CH_NODES) {
        const h = decodeHeartbeat(message);
        if (this.table.heard(h)) {
          this.o.log.info(h.bye ? `cluster: relay ${h.id} left` : `cluster: relay ${h.id} is up (mesh ${h.mesh})`, { node: h.id });
          this.notify();
        }
        const mine = this.o.hooks.accessDigest();
        const key = `${h.id}:${h.access}`;
        if (!h.bye && h.id !== this.self.id && h.access !== mine && !this.disagreementSaid.has(key)) {
          this.disagreementSaid.add(key);
          this.o.log.warn(`cluster: relay ${h.id} has different [[access]] rules from this relay: give every relay the same rules, or a master may reach a device from one relay and not from another`, { node: h.id });
        }
      } else if (channel === CH_PRESENCE) {
        const theirs = decodePresence(message);
        const h = this.held.get(theirs.device);
        const since = h ? (this.o.hooks.since(theirs.device) ?? h.since) : null;
        const verdict = onAnnounced(since === null ? null : { device: theirs.device, node: this.self.id, since }, theirs);
        if (verdict === "yield") this.yieldDevice(theirs.device, `relay ${theirs.node} since ${new Date(theirs.since).toISOString()}`);
        else if (verdict === "keep") void this.claim(theirs.device, true);
      } else if (channel === CH_REVOKED) {
        const { serials } = decodeSerials(message);
        this.addRevoked(serials);
      }
    } catch (e) {
      this.refused(e as Error);
    }
  }

  // ---- revocations --------------------------------------------------------------------------

  /** This relay's revocation list (normalized serials): added to the cluster's, and announced. */
  async publishRevoked(serials: readonly string[]): Promise<void> {
    const fresh = serials.filter(isSerial);
    // Kept: published again whenever Redis comes back (it may have come back empty, or never been reached).
    this.own = fresh;
    this.addRevoked(fresh);
    if (fresh.length === 0) return;
    for (let i = 0; i < fresh.length; i += 1000) await this.o.redis.cmd("SADD", [K_REVOKED, ...fresh.slice(i, i + 1000)]);
    await this.o.redis.cmd("PUBLISH", [CH_REVOKED, JSON.stringify({ node: this.self.id, serials: fresh.slice(0, ClusterLimits.serials) })]);
  }

  private addRevoked(serials: readonly string[]): void {
    let changed = false;
    for (const s of serials) {
      if (this.revoked.has(s) || this.revoked.size >= ClusterLimits.serials) continue;
      this.revoked.add(s);
      changed = true;
    }
    if (changed) this.o.hooks.revoked(this.revoked);
  }

  private async readRevoked(): Promise<void> {
    if (!this.o.redis.up) return;
    try {
      const n = await this.o.redis.cmd("SCARD", [K_REVOKED]);
      if (typeof n !== "number" || n > ClusterLimits.serials) throw new GarbageError("the revoked set", `${String(n).slice(0, 20)} members, more than the ${ClusterLimits.serials} allowed`);
      const all = await this.o.redis.cmd("SMEMBERS", [K_REVOKED]);
      if (!Array.isArray(all)) throw new GarbageError("the revoked set", "not a list");
      this.addRevoked(all.filter(isSerial));
      if (all.length !== all.filter(isSerial).length) throw new GarbageError("the revoked set", "members that are not serials (ignored)");
    } catch (e) {
      if (!(e instanceof ClusterUnavailableError)) this.refused(e as Error);
    }
  }

  get revokedSerials(): ReadonlySet<string> {
    return this.revoked;
  }

  // ---- snapshots: inventory and sessions ----------------------------------------------------

  private async snapshot(): Promise<void> {
    if (!this.o.redis.up || this.snapshotting || this.closed) return;
    this.snapshotting = true;
    try {
      await this.writeInventory();
      await this.writeSessions();
    } catch {
      // Rewritten whole once Redis answers again.
      this.written.clear();
      this.lastSessions = "";
    } finally {
      this.snapshotting = false;
    }
  }

  private async writeInventory(): Promise<void> {
    const now = this.clock.now();
    const all = now - this.lastRewrite >= this.t.rewriteAll;
    const rows = this.o.hooks.rows();
    const seen = new Set<string>();
    const changed: string[] = [];
    const next = new Map(this.written);
    for (const row of rows) {
      seen.add(row.id);
      const key = Bun.hash(stableKey(row));
      if (!all && this.written.get(row.id) === key) continue;
      const text = JSON.stringify(row);
      if (text.length > ClusterLimits.row) continue;
      changed.push(row.id, text);
      next.set(row.id, key);
    }
    const gone = [...this.written.keys()].filter((id) => !seen.has(id));
    if (this.written.size === 0 || all) await this.o.redis.cmd("SADD", [K_INV_NODES, this.self.id]);
    for (let i = 0; i < changed.length; i += 1000) await this.o.redis.cmd("HSET", [inventoryKey(this.self.id), ...changed.slice(i, i + 1000)]);
    if (gone.length) await this.o.redis.cmd("HDEL", [inventoryKey(this.self.id), ...gone]);
    for (const id of gone) next.delete(id);
    this.written = next;
    if (all) this.lastRewrite = now;
  }

  private async writeSessions(): Promise<void> {
    const now = this.clock.now();
    const text = JSON.stringify({ node: this.self.id, sessions: this.o.hooks.sessions() });
    if (text === this.lastSessions && now - this.lastSessionsAt < 5_000) return;
    if (text.length > ClusterLimits.sessions) return;
    await this.o.redis.cmd("SET", [sessionsKey(this.self.id), text, "PX", "10000"]);
    this.lastSessions = text;
    this.lastSessionsAt = now;
  }

  /**
   * The whole fleet's devices: this relay's rows and every other relay's, one row per device
   * (online wins, else the latest seen), each naming its relay. A relay that is not alive has
   * none online. With Redis away: this relay's own, and `partial` says so.
   */
  async fleetRows<T extends SharedRow>(local: T[]): Promise<{ rows: (T & { relay: string })[]; partial: string | null }> {
    const mine = local.map((r) => ({ ...r, relay: this.self.id }));
    let nodes: unknown;
    try {
      nodes = await this.o.redis.cmd("SMEMBERS", [K_INV_NODES]);
    } catch (e) {
      return { rows: mine, partial: (e as Error).message };
    }
    if (!Array.isArray(nodes)) return { rows: mine, partial: "the relays' set is not a list" };
    const lists: (T & { relay: string })[][] = [mine];
    const others = nodes.filter((n): n is string => typeof n === "string" && n !== this.self.id).slice(0, ClusterLimits.nodes);
    const answers = await Promise.allSettled(others.map((n) => this.o.redis.cmd("HGETALL", [inventoryKey(n)])));
    answers.forEach((a, i) => {
      const node = others[i]!;
      if (a.status === "rejected") return;
      const rows = this.decodeRows(node, a.value);
      const live = this.table.isLive(node);
      lists.push(rows.map((r) => ({ ...(r as T), relay: node, ...(live ? {} : { online: false, state: r.state === "online" ? "offline" : r.state, status: r.status === "online" ? `offline (relay ${node} is gone)` : r.status }) })));
    });
    const failed = answers.find((a) => a.status === "rejected") as PromiseRejectedResult | undefined;
    return { rows: mergeRows(lists as unknown as (T & { relay: string; online: boolean; last_seen: string })[][]), partial: failed ? String((failed.reason as Error).message) : null };
  }

  private decodeRows(node: string, value: unknown): SharedRow[] {
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      this.refused(new GarbageError(`the inventory of ${node}`, "not a hash"));
      return [];
    }
    const out: SharedRow[] = [];
    for (const [id, text] of Object.entries(value as Record<string, unknown>).slice(0, ClusterLimits.rows)) {
      try {
        const r = decodeObject(`a row of ${node}'s inventory`, text, ClusterLimits.row);
        if (r.id !== id || typeof r.online !== "boolean" || typeof r.last_seen !== "string") throw new GarbageError(`a row of ${node}'s inventory`, `the row of ${JSON.stringify(id).slice(0, 70)} lacks id, online or last_seen`);
        out.push(r as SharedRow);
      } catch (e) {
        this.refused(e as Error);
      }
    }
    return out;
  }

  /** The whole fleet's sessions (by their `session` id): this relay's and those of every live relay, each naming its relay. */
  async fleetSessions<T extends { session: string }>(local: T[]): Promise<{ sessions: (T & { relay: string })[]; partial: string | null }> {
    const out = new Map<string, T & { relay: string }>(local.map((s) => [s.session, { ...s, relay: this.self.id }]));
    const others = this.table.nodes().filter((n) => n.id !== this.self.id);
    let partial: string | null = this.o.redis.up ? null : "Redis unreachable";
    const answers = await Promise.allSettled(others.map((n) => this.o.redis.cmd("GET", [sessionsKey(n.id)])));
    answers.forEach((a, i) => {
      const node = others[i]!.id;
      if (a.status === "rejected") {
        partial = (a.reason as Error).message;
        return;
      }
      if (a.value === null) return;
      try {
        const o = decodeObject(`the sessions of ${node}`, a.value, ClusterLimits.sessions);
        if (o.node !== node || !Array.isArray(o.sessions)) throw new GarbageError(`the sessions of ${node}`, "not {node, sessions}");
        for (const s of o.sessions as unknown[]) {
          const id = (s as { session?: unknown } | null)?.session;
          if (typeof id !== "string" || id.length > 64) throw new GarbageError(`the sessions of ${node}`, "a session without an id");
          if (!out.has(id)) out.set(id, { ...(s as T), relay: node });
        }
      } catch (e) {
        this.refused(e as Error);
      }
    });
    return { sessions: [...out.values()], partial };
  }

  // ---- status and warnings ------------------------------------------------------------------

  status(): Record<string, unknown> {
    return {
      node: this.self.id,
      mesh: this.self.mesh,
      redis: this.o.redis.up ? "up" : "unreachable",
      relays: this.table.nodes().map((n) => n.id),
      held: this.held.size,
      revoked: this.revoked.size,
      refused_values: this.garbage,
      access_differs: this.table.disagreeing(this.o.hooks.accessDigest()),
    };
  }

  private refused(e: Error): void {
    this.garbage++;
    this.warn(e instanceof GarbageError ? e.message.slice(0, 60) : "error", `cluster: ${e.message}`);
  }

  /** A warning said at most once a minute per kind. */
  private warn(kind: string, msg: string): void {
    const now = this.clock.now();
    const last = this.warned.get(kind);
    if (last !== undefined && now - last < 60_000) return;
    this.warned.set(kind, now);
    this.o.log.warn(msg);
  }
}
