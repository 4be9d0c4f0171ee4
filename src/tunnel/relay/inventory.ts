// The relay's inventory of onsite devices: what each one last reported and when it was last
// heard from. It holds stored state only, never a Connection: the TLS path tells it "connected",
// "reported", "disconnected", and anything else that hears from a device (a UDP heartbeat, a
// shared presence store) can call `heard`. Ages are monotonic (`clock.now()`), so a wall-clock
// step neither ages a device nor makes it look fresh; `clock.wall()` only stamps what people read.
import { wallOf, systemClock, type Clock } from "../../clock.ts";
import type { DeviceInfo, InventoryBody } from "../../transport/messages.ts";

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
}

/** What the live path knows about a device right now, or null when it has no live connection. */
export type Liveness = (id: string) => { lastReceived: number; rtt: number | null } | null;

export class Inventory {
  private readonly devices = new Map<string, DeviceRecord>();

  constructor(private readonly clock: Clock = systemClock) {}

  /** A device said HELLO from `address`. Its last report is kept; the agent comes from the HELLO. */
  connected(id: string, o: { serial: string; address: string; agent: string }): DeviceRecord {
    const old = this.devices.get(id);
    const now = this.clock.now();
    const info = old ? { ...old.info } : { hostname: "", location: "", agent: "", uptime: 0, uplink: "" };
    info.agent = o.agent.slice(0, FIELD_LIMITS.agent);
    const rec: DeviceRecord = { id, serial: o.serial, info, reportedAt: now, connectedSince: this.clock.wall(), lastSeen: now, address: o.address, connected: true };
    this.devices.set(id, rec);
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
    };
    rec.reportedAt = this.heard(id) ?? rec.reportedAt;
  }

  /** A sign of life at monotonic `at` (default now). Returns the time recorded, or null if unknown. */
  heard(id: string, at: number = this.clock.now()): number | null {
    const rec = this.devices.get(id);
    if (!rec) return null;
    rec.lastSeen = Math.max(rec.lastSeen, at);
    return at;
  }

  /** The device's connection ended. */
  disconnected(id: string, lastReceived?: number): void {
    const rec = this.devices.get(id);
    if (!rec) return;
    rec.connected = false;
    this.heard(id, lastReceived ?? this.clock.now());
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
