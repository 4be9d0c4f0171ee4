// Where the relay's inventory is kept between restarts: every onsite device ever seen (first
// and last seen, last address, last report and heartbeat, certificate serial and expiry) and a
// bounded history of its connects and disconnects. Behind an interface: `MemoryInventoryStore`
// for tests and a relay without a state dir, `SqliteInventoryStore` (bun:sqlite, WAL) in the
// relay's state dir. Times stored here are wall-clock ms: they must mean something after a
// restart, where a monotonic instant does not.
import { Database } from "bun:sqlite";
import type { InventoryBody } from "../../transport/messages.ts";
import type { HeartbeatPayload } from "../../transport/heartbeat/codec.ts";

/** History entries kept per device (the oldest go first). */
export const HISTORY_LIMIT = 100;

export interface StoredHeartbeat {
  /** Wall ms it arrived. */
  at: number;
  /** The uplink it came over (its payload's `via`), and the address:port it came from. */
  via: string;
  from: string;
  payload: HeartbeatPayload;
}

export interface StoredDevice {
  id: string;
  serial: string;
  /** Wall ms. */
  firstSeen: number;
  lastSeen: number;
  connectedSince: number;
  address: string;
  info: InventoryBody;
  /** Wall ms the certificate expires, or null when not known. */
  certExpires: number | null;
  heartbeat: StoredHeartbeat | null;
}

export type DeviceEventKind = "connect" | "disconnect" | "lost" | "alive";

export interface DeviceEvent {
  /** Wall ms. */
  at: number;
  kind: DeviceEventKind;
  address: string;
  reason: string;
}

export interface InventoryStore {
  /** Every stored device. */
  load(): StoredDevice[];
  put(d: StoredDevice): void;
  /** Appends to a device's history, keeping the newest HISTORY_LIMIT. */
  event(id: string, e: DeviceEvent): void;
  /** Oldest first. */
  history(id: string): DeviceEvent[];
  /** Drops a device and its history; false when it was not stored. */
  forget(id: string): boolean;
  /** Runs `fn` as one write (one commit for a device and its event). */
  batch(fn: () => void): void;
  close(): void;
}

const copy = <T>(v: T): T => structuredClone(v);

export class MemoryInventoryStore implements InventoryStore {
  private readonly devices = new Map<string, StoredDevice>();
  private readonly events = new Map<string, DeviceEvent[]>();
  writes = 0;

  constructor(private readonly limit = HISTORY_LIMIT) {}

  load(): StoredDevice[] {
    return [...this.devices.values()].map(copy);
  }
  put(d: StoredDevice): void {
    this.writes++;
    this.devices.set(d.id, copy(d));
  }
  event(id: string, e: DeviceEvent): void {
    this.writes++;
    const list = this.events.get(id) ?? [];
    list.push({ ...e });
    if (list.length > this.limit) list.splice(0, list.length - this.limit);
    this.events.set(id, list);
  }
  history(id: string): DeviceEvent[] {
    return (this.events.get(id) ?? []).map((e) => ({ ...e }));
  }
  forget(id: string): boolean {
    this.events.delete(id);
    return this.devices.delete(id);
  }
  batch(fn: () => void): void {
    fn();
  }
  close(): void {}
}

/** The file in the relay's state dir. */
export const INVENTORY_DB = "inventory.db";

export class SqliteInventoryStore implements InventoryStore {
  private readonly db: Database;
  private readonly q;

  constructor(readonly file: string, private readonly limit = HISTORY_LIMIT) {
    this.db = new Database(file, { create: true, strict: true });
    // WAL: a reader (or a crash) never sees half a write; NORMAL: no fsync per commit, a
    // power cut loses at most the last moments, never the file.
    this.db.exec("PRAGMA journal_mode = WAL");
    this.db.exec("PRAGMA synchronous = NORMAL");
    this.db.exec("PRAGMA busy_timeout = 2000");
    this.db.exec(`CREATE TABLE IF NOT EXISTS device (
      id TEXT PRIMARY KEY, serial TEXT NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
      connected_since INTEGER NOT NULL, address TEXT NOT NULL, info TEXT NOT NULL, cert_expires INTEGER, heartbeat TEXT)`);
    this.db.exec(`CREATE TABLE IF NOT EXISTS event (
      seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, at INTEGER NOT NULL, kind TEXT NOT NULL, address TEXT NOT NULL, reason TEXT NOT NULL)`);
    this.db.exec("CREATE INDEX IF NOT EXISTS event_by_id ON event (id, seq)");
    this.q = {
      all: this.db.query<{ id: string; serial: string; first_seen: number; last_seen: number; connected_since: number; address: string; info: string; cert_expires: number | null; heartbeat: string | null }, []>("SELECT * FROM device"),
      put: this.db.query(`INSERT INTO device (id, serial, first_seen, last_seen, connected_since, address, info, cert_expires, heartbeat)
        VALUES ($id, $serial, $first_seen, $last_seen, $connected_since, $address, $info, $cert_expires, $heartbeat)
        ON CONFLICT(id) DO UPDATE SET serial = excluded.serial, last_seen = excluded.last_seen, connected_since = excluded.connected_since,
          address = excluded.address, info = excluded.info, cert_expires = excluded.cert_expires, heartbeat = excluded.heartbeat`),
      event: this.db.query("INSERT INTO event (id, at, kind, address, reason) VALUES ($id, $at, $kind, $address, $reason)"),
      trim: this.db.query("DELETE FROM event WHERE id = $id AND seq <= (SELECT seq FROM event WHERE id = $id ORDER BY seq DESC LIMIT 1 OFFSET $keep)"),
      history: this.db.query<{ at: number; kind: DeviceEventKind; address: string; reason: string }, { id: string }>("SELECT at, kind, address, reason FROM event WHERE id = $id ORDER BY seq"),
      forget: this.db.query("DELETE FROM device WHERE id = $id"),
      forgetEvents: this.db.query("DELETE FROM event WHERE id = $id"),
    };
  }

  load(): StoredDevice[] {
    return this.q.all.all().map((r) => ({
      id: r.id,
      serial: r.serial,
      firstSeen: r.first_seen,
      lastSeen: r.last_seen,
      connectedSince: r.connected_since,
      address: r.address,
      info: JSON.parse(r.info) as InventoryBody,
      certExpires: r.cert_expires,
      heartbeat: r.heartbeat ? (JSON.parse(r.heartbeat) as StoredHeartbeat) : null,
    }));
  }

  put(d: StoredDevice): void {
    this.q.put.run({
      id: d.id,
      serial: d.serial,
      first_seen: Math.floor(d.firstSeen),
      last_seen: Math.floor(d.lastSeen),
      connected_since: Math.floor(d.connectedSince),
      address: d.address,
      info: JSON.stringify(d.info),
      cert_expires: d.certExpires === null ? null : Math.floor(d.certExpires),
      heartbeat: d.heartbeat ? JSON.stringify(d.heartbeat) : null,
    });
  }

  event(id: string, e: DeviceEvent): void {
    this.db.transaction(() => {
      this.q.event.run({ id, at: Math.floor(e.at), kind: e.kind, address: e.address, reason: e.reason });
      this.q.trim.run({ id, keep: this.limit });
    })();
  }

  history(id: string): DeviceEvent[] {
    return this.q.history.all({ id }).map((r) => ({ ...r }));
  }

  forget(id: string): boolean {
    return this.db.transaction(() => {
      this.q.forgetEvents.run({ id });
      return this.q.forget.run({ id }).changes > 0;
    })();
  }

  /** Runs `fn` in one transaction (a device and its event, or an import of many: one commit). */
  batch(fn: () => void): void {
    this.db.transaction(fn)();
  }

  close(): void {
    this.db.close();
  }
}
