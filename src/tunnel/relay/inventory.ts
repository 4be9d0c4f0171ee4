// The relay's inventory of onsite devices: what each one last reported and when it was last
// heard from. It holds stored state only, never a Connection: the TLS path tells it "connected",
// "reported", "disconnected", and anything else that hears from a device (a UDP heartbeat, a
// shared presence store) can call `heard`. Ages are monotonic (`clock.now()`), so a wall-clock
// step neither ages a device nor makes it look fresh; `clock.wall()` only stamps what people read.
//
// With a store (./inventory-store.ts) every device ever seen survives a restart: each change is
// written through, and the stored devices are loaded (offline) when the inventory is made.
import { wallOf, systemClock, type Clock } from "../../clock.ts";
import type { DeviceInfo, InventoryBody } from "../../transport/messages.ts";
import { HeartbeatTiming, type HeartbeatPayload } from "../../transport/heartbeat/codec.ts";
import type { DeviceEvent, DeviceEventKind, InventoryStore, StoredDevice } from "./inventory-store.ts";

/**
 * A heartbeat is written to the store when it changes the device's state, else at most this
 * often per device: at 5,000 devices a write per heartbeat would be 200 writes a second for
 * nothing a restart needs to the second.
 */
export const HEARTBEAT_PERSIST_MS = 300_000;
/**
 * A heartbeat read this soon after a device's goodbye may have been sent before it: the
 * receiver reads its socket in batches (every 50 ms), and a datagram may cross the TLS close
 * on the way. It does not make the device "alive".
 */
export const GOODBYE_GRACE_MS = 2_000;

/** Longest stored value of each reported field: the device writes them, the relay bounds them. */
export const FIELD_LIMITS = { hostname: 253, location: 128, agent: 64, uplink: 32 } as const;

export interface DeviceRecord {
  id: string;
  serial: string;
  info: InventoryBody;
  /** Monotonic ms of the last INVENTORY (the uptime was true then). */
  reportedAt: number;
  /** Wall-clock ms the current (or last) connection began. */
  connectedSince: number;
  /** Monotonic ms of the last sign of life recorded here. */
  lastSeen: number;
  address: string;
  /** Connected over the TLS path (as the path last said). */
  connected: boolean;
  /** Wall ms the relay first saw it. */
  firstSeen: number;
  /** Wall ms its certificate expires (null: not known). */
  certExpires: number | null;
  /** The last heartbeat: monotonic `at`, the uplink, the sender's address, what it said. */
  heartbeat: { at: number; via: string; from: string; payload: HeartbeatPayload } | null;
}

/**
 * How a device is, as `agent devices` says it:
 * - online: its TLS connection is up;
 * - alive: no tunnel, but its heartbeats arrive ("tunnel down, alive over wwan0");
 * - lost: heartbeats were arriving and three in a row are missing;
 * - offline: no tunnel and no heartbeat since (a device without heartbeats, or one that said goodbye).
 */
export type DeviceState = "online" | "alive" | "lost" | "offline";

/** The relay's own listing: what DEVICES says, and the stored and heartbeat facts beside it. */
export interface DeviceRow extends DeviceInfo {
  state: DeviceState;
  /** One line for people: "tunnel down, alive over wwan0, last error: …". */
  status: string;
  first_seen: string;
  serial: string;
  cert_expires: string | null;
  heartbeat: { at: string; via: string; from: string; payload: HeartbeatPayload } | null;
  /** The last heartbeat over each uplink since the relay started (uplink → ISO time). */
  heard_over: Record<string, string>;
  /** Two devices with this certificate (issue 17 §6): newcomers refused since, from where. Null: none seen. */
  duplicate: { since: string; last: string; refused: number; addresses: string[] } | null;
}

/** What the relay knows of an id used by two devices at once (src/tunnel/relay/clone.ts), monotonic ms. */
export type DuplicateOf = (id: string) => { since: number; last: number; refused: number; addresses: string[] } | null;

/** The state of a device, from what is known of it. Pure. */
export function deviceState(connected: boolean, hb: { age: number; interval: number; afterDisconnect: boolean } | null, missed: number = HeartbeatTiming.missedForLost): DeviceState {
  if (connected) return "online";
  if (!hb || !hb.afterDisconnect) return "offline";
  return hb.age <= missed * hb.interval ? "alive" : "lost";
}

/** The one-line status. Pure. */
export function statusLine(state: DeviceState, hb: { via: string; err: string | null; ago: string } | null): string {
  const via = hb?.via || "the default route";
  const err = hb?.err ? `, last error: ${hb.err}` : "";
  switch (state) {
    case "online":
      return "online";
    case "alive":
      return `tunnel down, alive over ${via}${err}`;
    case "lost":
      return `lost: no heartbeat for ${hb?.ago ?? "a while"} (last over ${via})${err}`;
    case "offline":
      return "offline";
  }
}

/** What the live path knows about a device right now, or null when it has no live connection. */
export type Liveness = (id: string) => { lastReceived: number; rtt: number | null } | null;

export class Inventory {
  private readonly devices = new Map<string, DeviceRecord>();
  /** Monotonic ms each device's heartbeat was last written to the store. */
  private readonly beatSaved = new Map<string, number>();
  /** The last heartbeat over each uplink (monotonic ms), at most 8 uplinks per device. */
  private readonly vias = new Map<string, Map<string, number>>();
  /** Monotonic ms a device said goodbye (its own GOAWAY), or the relay restarted: only a heartbeat after it means "alive". */
  private readonly downAt = new Map<string, number>();
  /** A store write that failed (the inventory goes on in memory; said once per kind). */
  onStoreError: (e: Error) => void = () => {};
  /**
   * A device's state changed (issue 15: the relay publishes `device_state`). Called at once for
   * a connect, a disconnect and a heartbeat that changes it; `sweepStates` finds the changes
   * time makes (alive → lost).
   */
  onState: (id: string, state: DeviceState, previous: DeviceState, status: string) => void = () => {};
  /** The state each device was last said to be in. */
  private readonly lastState = new Map<string, DeviceState>();
  /** Ids marked duplicated (the relay's CloneWatch); rows show the mark. */
  duplicateOf: DuplicateOf = () => null;

  constructor(private readonly clock: Clock = systemClock, private readonly store?: InventoryStore) {
    if (store)
      for (const d of store.load()) {
        const rec = this.fromStored(d);
        this.devices.set(d.id, rec);
        // A stored heartbeat is from before this start: only a new one says the device is alive.
        this.downAt.set(d.id, rec.lastSeen + 1);
        this.lastState.set(d.id, "offline");
      }
  }

  /** Says a change of the device's state (against what was last said), if any. */
  private noteState(rec: DeviceRecord, live?: Liveness): void {
    const state = this.stateOf(rec, live);
    const previous = this.lastState.get(rec.id) ?? "offline";
    if (state === previous && this.lastState.has(rec.id)) return;
    this.lastState.set(rec.id, state);
    if (state === previous) return;
    const hb = rec.heartbeat;
    const ago = hb ? `${Math.max(0, Math.round((this.clock.now() - hb.at) / 1000))} s` : "";
    try {
      this.onState(rec.id, state, previous, statusLine(state, hb ? { via: hb.via, err: hb.payload.err, ago } : null));
    } catch {
      // A listener's failure is its own; the inventory goes on.
    }
  }

  /** Finds the state changes time alone makes (a device whose heartbeats stopped is lost). */
  sweepStates(live?: Liveness): void {
    for (const rec of this.devices.values()) this.noteState(rec, live);
  }

  /** The state of one device (null: unknown). */
  state(id: string, live?: Liveness): DeviceState | null {
    const rec = this.devices.get(id);
    return rec ? this.stateOf(rec, live) : null;
  }

  private mono(wall: number): number {
    return this.clock.now() - (this.clock.wall() - wall);
  }

  private fromStored(d: StoredDevice): DeviceRecord {
    const lastSeen = this.mono(d.lastSeen);
    return {
      id: d.id,
      serial: d.serial,
      info: d.info,
      reportedAt: lastSeen,
      connectedSince: d.connectedSince,
      lastSeen,
      address: d.address,
      connected: false,
      firstSeen: d.firstSeen,
      certExpires: d.certExpires,
      heartbeat: d.heartbeat ? { at: this.mono(d.heartbeat.at), via: d.heartbeat.via, from: d.heartbeat.from, payload: d.heartbeat.payload } : null,
    };
  }

  private toStored(r: DeviceRecord): StoredDevice {
    return {
      id: r.id,
      serial: r.serial,
      firstSeen: r.firstSeen,
      lastSeen: wallOf(this.clock, r.lastSeen),
      connectedSince: r.connectedSince,
      address: r.address,
      info: r.info,
      certExpires: r.certExpires,
      heartbeat: r.heartbeat ? { at: wallOf(this.clock, r.heartbeat.at), via: r.heartbeat.via, from: r.heartbeat.from, payload: r.heartbeat.payload } : null,
    };
  }

  /** A write failed and has not been followed by one that worked (reported once, not per write). */
  private storeFailing = false;

  private save(r: DeviceRecord, ev?: { kind: DeviceEventKind; reason: string }): void {
    if (!this.store) return;
    try {
      const store = this.store;
      store.batch(() => {
        store.put(this.toStored(r));
        if (ev) store.event(r.id, { at: this.clock.wall(), kind: ev.kind, address: r.address, reason: ev.reason });
      });
      this.storeFailing = false;
    } catch (e) {
      if (!this.storeFailing) this.onStoreError(e as Error);
      this.storeFailing = true;
    }
  }

  /** A device said HELLO from `address`. Its last report is kept; the agent comes from the HELLO. */
  connected(id: string, o: { serial: string; address: string; agent: string; certExpires?: number | null }): DeviceRecord {
    const old = this.devices.get(id);
    const now = this.clock.now();
    const info = old ? { ...old.info } : { hostname: "", location: "", agent: "", uptime: 0, uplink: "" };
    info.agent = o.agent.slice(0, FIELD_LIMITS.agent);
    const rec: DeviceRecord = {
      id,
      serial: o.serial,
      info,
      reportedAt: now,
      connectedSince: this.clock.wall(),
      lastSeen: now,
      address: o.address,
      connected: true,
      firstSeen: old?.firstSeen ?? this.clock.wall(),
      certExpires: o.certExpires ?? (old?.serial === o.serial ? old.certExpires : null),
      heartbeat: old?.heartbeat ?? null,
    };
    this.devices.set(id, rec);
    this.downAt.delete(id);
    this.noteState(rec);
    this.save(rec, { kind: "connect", reason: `from ${o.address}${o.agent ? ` (${o.agent.slice(0, FIELD_LIMITS.agent)})` : ""}` });
    return rec;
  }

  /** An INVENTORY arrived. */
  report(id: string, b: InventoryBody): void {
    const rec = this.devices.get(id);
    if (!rec) return;
    rec.info = {
      hostname: b.hostname.slice(0, FIELD_LIMITS.hostname),
      location: b.location.slice(0, FIELD_LIMITS.location),
      agent: b.agent.slice(0, FIELD_LIMITS.agent) || rec.info.agent,
      uptime: Math.max(0, Math.floor(b.uptime)),
      uplink: b.uplink.slice(0, FIELD_LIMITS.uplink),
      // Issue 15: the device's [[service]] tables (bounded by the decoder); kept across restarts.
      ...(b.services?.length ? { services: b.services } : {}),
    };
    rec.reportedAt = this.heard(id) ?? rec.reportedAt;
    this.save(rec);
  }

  /** A heartbeat that passed the receiver's checks (src/transport/heartbeat/receiver.ts). */
  beat(id: string, b: { at: number; from: string; payload: HeartbeatPayload }): boolean {
    const rec = this.devices.get(id);
    if (!rec) return false;
    const before = this.stateOf(rec);
    rec.heartbeat = { at: b.at, via: b.payload.via, from: b.from, payload: b.payload };
    const vias = this.vias.get(id) ?? new Map<string, number>();
    vias.delete(b.payload.via);
    vias.set(b.payload.via, b.at);
    if (vias.size > 8) vias.delete(vias.keys().next().value!);
    this.vias.set(id, vias);
    this.heard(id, b.at);
    const after = this.stateOf(rec);
    if (before !== after) this.noteState(rec);
    const saved = this.beatSaved.get(id);
    if (before !== after || saved === undefined || b.at - saved >= HEARTBEAT_PERSIST_MS) {
      this.beatSaved.set(id, b.at);
      this.save(rec, before !== after && after === "alive" ? { kind: "alive", reason: `heartbeat over ${b.payload.via || "the default route"} from ${b.from}${b.payload.err ? `; last error: ${b.payload.err}` : ""}` } : undefined);
    }
    return true;
  }

  /** A sign of life at monotonic `at` (default now). Returns the time recorded, or null if unknown. */
  heard(id: string, at: number = this.clock.now()): number | null {
    const rec = this.devices.get(id);
    if (!rec) return null;
    rec.lastSeen = Math.max(rec.lastSeen, at);
    return at;
  }

  /**
   * The device's connection ended (why, for its history). `goodbye`: the device closed it
   * itself (a shutdown), so heartbeats sent before do not make it "alive".
   */
  disconnected(id: string, lastReceived?: number, reason = "disconnected", goodbye = false): void {
    const rec = this.devices.get(id);
    if (!rec) return;
    rec.connected = false;
    if (goodbye) this.downAt.set(id, this.clock.now() + GOODBYE_GRACE_MS);
    else this.downAt.delete(id);
    this.heard(id, lastReceived ?? this.clock.now());
    this.noteState(rec);
    this.save(rec, { kind: "disconnect", reason });
  }

  /** Drops a device (and its stored history). False when it is not known. */
  forget(id: string): boolean {
    const had = this.devices.delete(id);
    this.downAt.delete(id);
    this.lastState.delete(id);
    this.vias.delete(id);
    this.beatSaved.delete(id);
    let stored = false;
    try {
      stored = this.store?.forget(id) ?? false;
    } catch (e) {
      this.onStoreError(e as Error);
    }
    return had || stored;
  }

  /** The stored history of connects and disconnects, oldest first ([] without a store). */
  history(id: string): DeviceEvent[] {
    return this.store?.history(id) ?? [];
  }

  private stateOf(rec: DeviceRecord, live?: Liveness): DeviceState {
    const connected = rec.connected && (live ? live(rec.id) !== null : true);
    const hb = rec.heartbeat;
    const down = this.downAt.get(rec.id);
    return deviceState(connected, hb ? { age: this.clock.now() - hb.at, interval: hb.payload.iv, afterDisconnect: down === undefined || hb.at >= down } : null);
  }

  /** The relay's own listing (`agent devices` on the relay): DEVICES plus state, heartbeat, certificate. */
  rows(live?: Liveness): DeviceRow[] {
    const base = new Map(this.list(live).map((d) => [d.id, d]));
    const now = this.clock.now();
    return [...base.values()].map((d) => {
      const rec = this.devices.get(d.id)!;
      const state = this.stateOf(rec, live);
      const hb = rec.heartbeat;
      const ago = hb ? `${Math.max(0, Math.round((now - hb.at) / 1000))} s` : "";
      const dup = this.duplicateOf(d.id);
      const status = statusLine(state, hb ? { via: hb.via, err: hb.payload.err, ago } : null);
      return {
        ...d,
        state,
        status: dup ? `${status}; DUPLICATE: two devices use this certificate, ${dup.refused} connection${dup.refused === 1 ? "" : "s"} refused (from ${dup.addresses.join(", ")}); give each device its own bundle` : status,
        first_seen: new Date(rec.firstSeen).toISOString(),
        serial: rec.serial,
        cert_expires: rec.certExpires === null ? null : new Date(rec.certExpires).toISOString(),
        heartbeat: hb ? { at: new Date(wallOf(this.clock, hb.at)).toISOString(), via: hb.via, from: hb.from, payload: hb.payload } : null,
        heard_over: Object.fromEntries([...(this.vias.get(d.id) ?? [])].map(([v, at]) => [v, new Date(wallOf(this.clock, at)).toISOString()])),
        duplicate: dup ? { since: new Date(wallOf(this.clock, dup.since)).toISOString(), last: new Date(wallOf(this.clock, dup.last)).toISOString(), refused: dup.refused, addresses: [...dup.addresses] } : null,
      };
    });
  }

  get(id: string): DeviceRecord | undefined {
    return this.devices.get(id);
  }
  has(id: string): boolean {
    return this.devices.has(id);
  }
  get size(): number {
    return this.devices.size;
  }

  /** Milliseconds since the device was last heard from (monotonic), or null if unknown. */
  age(id: string, live?: Liveness): number | null {
    const rec = this.devices.get(id);
    if (!rec) return null;
    const l = rec.connected ? live?.(id) : null;
    return this.clock.now() - Math.max(rec.lastSeen, l?.lastReceived ?? -Infinity);
  }

  /** Ids of devices not heard from for more than `maxAge` ms, by id. */
  stale(maxAge: number, live?: Liveness): string[] {
    return [...this.devices.keys()].filter((id) => this.age(id, live)! > maxAge).sort();
  }

  /** Online: connected as far as the path said, and (if asked) with a live connection now. */
  online(id: string, live?: Liveness): boolean {
    const rec = this.devices.get(id);
    return !!rec?.connected && (live ? live(id) !== null : true);
  }

  /** The DEVICES answer, by id. */
  list(live?: Liveness): DeviceInfo[] {
    const now = this.clock.now();
    return [...this.devices.values()]
      .map((d) => {
        const l = d.connected ? (live ? live(d.id) : { lastReceived: d.lastSeen, rtt: null }) : null;
        const online = l !== null;
        const lastSeen = online ? Math.max(d.lastSeen, l.lastReceived) : d.lastSeen;
        return {
          id: d.id,
          hostname: d.info.hostname,
          location: d.info.location,
          address: d.address,
          agent: d.info.agent,
          uptime: online ? d.info.uptime + Math.floor((now - d.reportedAt) / 1000) : d.info.uptime,
          uplink: d.info.uplink,
          online,
          connected_since: new Date(d.connectedSince).toISOString(),
          last_seen: new Date(wallOf(this.clock, lastSeen)).toISOString(),
          rtt_ms: online ? l.rtt : null,
          ...(d.info.services?.length ? { services: d.info.services } : {}),
        };
      })
      .sort((a, b) => a.id.localeCompare(b.id));
  }

  /** Devices known / online. */
  counts(live?: Liveness): { known: number; online: number } {
    let online = 0;
    for (const id of this.devices.keys()) if (this.online(id, live)) online++;
    return { known: this.devices.size, online };
  }
}
