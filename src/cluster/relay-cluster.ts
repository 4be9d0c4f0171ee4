// Cluster mode composed for one relay (issue 16): the RedisDirectory, the relay's hooks into it
// (presence on connect and disconnect, a newer connection elsewhere closes the one here, the
// fleet's listings, cross-relay opens), and the revocations every relay shares. src/roles/relay.ts
// makes one when `[cluster]` is set; without it none of this is loaded.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { AccessRule, ClusterConfig } from "../config.ts";
import { redactRedisUrl } from "../config.ts";
import type { DeviceInfo, SessionInfo } from "../transport/messages.ts";
import type { RelayClusterHooks, RelayServer } from "../tunnel/relay/server.ts";
import type { DeviceRow } from "../tunnel/relay/inventory.ts";
import { ClusterUnavailableError, type RelayNode } from "./directory.ts";
import { BunRedis, type RedisPort } from "./redis-client.ts";
import { RedisDirectory, type DirectoryLog, type SharedRow } from "./redis-directory.ts";
import type { ClusterTiming } from "./presence.ts";

/** A digest of [[access]] rules: relays compare theirs in the heartbeats. Pure. */
export function accessDigest(rules: readonly AccessRule[]): string {
  return createHash("sha256").update(JSON.stringify(rules)).digest("hex").slice(0, 16);
}

export interface RelayClusterOptions {
  cfg: ClusterConfig;
  /** The node id: [cluster] node, else the relay certificate's id. */
  id: string;
  log: DirectoryLog;
  access: () => readonly AccessRule[];
  clock?: Clock;
  /** Tests: a Redis stand-in, shorter timings. */
  redis?: RedisPort;
  timing?: Partial<Record<keyof typeof ClusterTiming, number>>;
}

export class RelayCluster {
  readonly directory: RedisDirectory;
  readonly self: RelayNode;
  private server: RelayServer | null = null;
  private onRevoked: (serials: ReadonlySet<string>) => void = () => {};
  private readonly redis: RedisPort;

  /** What the RelayServer calls (RelayOptions.cluster). */
  readonly hooks: RelayClusterHooks = {
    onsiteUp: (id, since) => this.directory.connected(id, since),
    onsiteDown: (id) => this.directory.disconnected(id),
    devices: async (local) => (await this.directory.fleetRows(local as unknown as SharedRow[])).rows.map(deviceInfo),
  };

  constructor(private readonly o: RelayClusterOptions) {
    this.self = { id: o.cfg.node ?? o.id, mesh: `${o.cfg.mesh.host.includes(":") ? `[${o.cfg.mesh.host}]` : o.cfg.mesh.host}:${o.cfg.mesh.port}` };
    this.redis = o.redis ?? new BunRedis({ url: o.cfg.redis.href, clock: o.clock, ca: o.cfg.redis_ca === undefined ? undefined : readCa(o.cfg.redis_ca) });
    this.directory = new RedisDirectory({
      redis: this.redis,
      self: this.self,
      log: o.log,
      clock: o.clock ?? systemClock,
      timing: o.timing,
      hooks: {
        replaced: (device, reason) => this.server?.replacedElsewhere(device, reason),
        revoked: (serials) => this.onRevoked(serials),
        since: (device) => this.server?.onsiteSince(device) ?? null,
        rows: () => (this.server?.deviceRows() ?? []) as unknown as SharedRow[],
        sessions: () => this.server?.sessionList() ?? [],
        accessDigest: () => accessDigest(this.o.access()),
      },
    });
  }

  /** The server the hooks act on, and what to do when the cluster's revoked serials change. */
  attach(server: RelayServer, onRevoked: (serials: ReadonlySet<string>) => void): void {
    this.server = server;
    this.onRevoked = onRevoked;
  }

  start(): void {
    this.o.log.info(`cluster: relay ${this.self.id}, Redis ${redactRedisUrl(this.o.cfg.redis)}, mesh ${this.self.mesh}`);
    this.directory.start();
  }

  async close(): Promise<void> {
    await this.directory.close();
  }

  /** This relay's revocation list joins the cluster's (the others close those serials too). */
  publishRevoked(serials: Iterable<string>): void {
    this.directory.publishRevoked([...serials]).catch((e) => {
      if (!(e instanceof ClusterUnavailableError)) this.o.log.warn(`cluster: cannot share the revocation list: ${(e as Error).message}`);
    });
  }

  /** `agent devices` on this relay: the fleet's rows. */
  async devices(): Promise<DeviceRow[]> {
    const local = this.server?.deviceRows() ?? [];
    const { rows, partial } = await this.directory.fleetRows(local as unknown as SharedRow[]);
    if (partial) this.o.log.warn(`cluster: listing this relay's devices only: ${partial}`);
    return rows as unknown as DeviceRow[];
  }

  /** `agent sessions` on this relay: the fleet's sessions. */
  async sessions(): Promise<SessionInfo[]> {
    const { sessions, partial } = await this.directory.fleetSessions(this.server?.sessionList() ?? []);
    if (partial) this.o.log.warn(`cluster: listing only the sessions that could be read: ${partial}`);
    return sessions;
  }

  status(): Record<string, unknown> {
    return { redis_url: redactRedisUrl(this.o.cfg.redis), ...this.directory.status() };
  }
}

/** The CA file of [cluster] redis_ca, or a clear error. */
function readCa(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new Error(`[cluster] redis_ca: cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (!text.includes("-----BEGIN CERTIFICATE-----")) throw new Error(`[cluster] redis_ca: ${path} holds no PEM certificate`);
  return text;
}

/** A fleet row as a master sees it (DEVICES): the DeviceInfo fields and the relay. */
function deviceInfo(r: SharedRow): DeviceInfo {
  // Rows of other relays came through Redis: every field is checked again here.
  const text = (v: unknown) => (typeof v === "string" ? v.slice(0, 300) : "");
  const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) && v >= 0 ? Math.floor(v) : 0);
  return {
    id: r.id,
    hostname: text(r.hostname),
    location: text(r.location),
    address: text(r.address),
    agent: text(r.agent),
    uptime: num(r.uptime),
    uplink: text(r.uplink),
    online: r.online === true,
    connected_since: text(r.connected_since),
    last_seen: text(r.last_seen),
    rtt_ms: typeof r.rtt_ms === "number" && Number.isFinite(r.rtt_ms) ? r.rtt_ms : null,
  };
}
