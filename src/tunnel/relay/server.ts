// The relay, composed: the front (admission, HELLO, refusals), the inventory of onsite devices,
// the session table and the stream router, each a part of its own, wired here to the control
// messages masters and devices send. It takes authenticated links (it does not own a listener:
// tests hand it pipes), and every duration it keeps runs on the injected clock.
import { type Connection, type ConnectionClosed, RemoteError, type Log } from "../../transport/mux.ts";
import type { Link } from "../../transport/link.ts";
import { GoAwayCode, type Frame } from "../../transport/frame.ts";
import { ErrorCode, MAX_TARGETS, MessageError, Msg, type DeviceInfo, type HelloBody, type NatReply, type NatRequestBody, type SessionInfo, type SessionOfferBody, type SessionOfferReply, type SessionOpenBody, type TunnelModeBody, type TunnelOffer } from "../../transport/messages.ts";
import { handle, on, request, send } from "../../transport/typed.ts";
import { Limits, Timing } from "../../transport/policy.ts";
import { systemClock, wallOf, type Clock, type TimerHandle } from "../../clock.ts";
import { DEFAULT_SESSION_IDLE_TIMEOUT, type AccessRule } from "../../config.ts";
import { decidePairing, mayAskNat, mayReach, natSource, newSessionId } from "../pairing.ts";
import { Front, type FrontOptions, type PeerCert } from "./front.ts";
import type { RefusalSummary } from "./refusal-throttle.ts";
import { Inventory, type DeviceRow, type Liveness } from "./inventory.ts";
import type { DeviceEvent, InventoryStore } from "./inventory-store.ts";
import { HeartbeatReceiver } from "../../transport/heartbeat/receiver.ts";
import { deviceKey } from "../../transport/heartbeat/codec.ts";
import { Router } from "./router.ts";
import { applyExtend, decideExtend } from "./extend.ts";
import { SessionTable, sessionInfo, type SessionRecord } from "./sessions.ts";
import { Registry, type Metrics } from "../../metrics.ts";
import { noEvents, type Events } from "../../events.ts";
import { DIRECTION_LABEL, ROLE_LABEL, RelayMetrics, sessionEndReason } from "./metrics.ts";
import { CloneWatch, ClonePolicy } from "./clone.ts";
import { MemoryRefusalLog, RefusalCode, RefusalLogs, tlsRefusalCode, type Refusal, type RefusalCodeId, type RefusalLog } from "./refusals.ts";

export interface RelayOptions {
  id: string;
  log: Log;
  access: () => readonly AccessRule[];
  /** Every refusal: for the audit log (also written through `log`). */
  onRefusal?: (r: Refusal) => void;
  /** Where refusals go besides the in-memory ring (the audit file, metrics). */
  refusalLog?: RefusalLog;
  helloDeadline?: number;
  keepaliveInterval?: number;
  keepaliveTimeout?: number;
  window?: number;
  /** Time for the HELLO deadline, TTLs, last-seen ages and keepalive; default: the system clock. */
  clock?: Clock;
  /** Makes a fresh session id (default: 8 random base-36 characters). */
  newSessionId?: () => string;
  /** An active session with no open stream and no packet for this long ends (ms); default 1 h. */
  sessionIdleTimeout?: number;
  /** `write_stall_timeout`: a connection whose peer takes none of its queued bytes for this long is closed (default Timing.writeStallTimeout). */
  writeStallTimeout?: number;
  /** Where the relay's metric families are registered (src/metrics.ts); default: a private registry. */
  metrics?: Metrics;
  /** What `agent monitor` streams (src/events.ts); default: nowhere. */
  events?: Events;
  /** Where the inventory is kept across restarts (default: memory only). */
  inventoryStore?: InventoryStore;
  /** Heartbeats: the relay's secret (device keys derive from it) and the UDP port devices send to. */
  heartbeat?: { secret: Uint8Array; port: number };
  /** Issue 17: the front's caps beyond the defaults (pending HELLO counted as unauthenticated, refusal throttle). */
  admission?: Pick<FrontOptions, "throttle" | "unauthenticated" | "maxPending" | "maxPerIdentity">;
  /** Issue 17: the first-redial spread (ms) each WELCOME tells the device, given the fleet's size. */
  redialSpread?: (fleet: number) => number;
  /** Cluster mode (issue 16, src/cluster): where the relay tells and asks the other relays. */
  cluster?: RelayClusterHooks;
}

/** What cluster mode hooks into (all optional; absent: a single relay, as before). */
export interface RelayClusterHooks {
  /** An onsite device's connection was welcomed (`since`: wall ms) or, the current one, ended. */
  onsiteUp?(id: string, since: number): void;
  onsiteDown?(id: string): void;
  /** The DEVICES answer for a master: the local list merged with the other relays'. */
  devices?(local: DeviceInfo[]): Promise<DeviceInfo[]>;
}

/** Who `kick` disconnected. */
export interface Kicked {
  id: string;
  role: "onsite" | "master";
  address: string;
  sessions: number;
}

/** How often the relay looks for devices that time made lost (device_state events). */
const STATE_SWEEP_MS = 5_000;

/** Longest a certificate-expiry timer is armed for at once (setTimeout's limit is ~24.8 days). */
const MAX_TIMER_MS = 86_400_000;

export type Session = SessionRecord<Connection>;

// ---- cluster mode: the hooks the relay-to-relay mesh drives (src/cluster/mesh.ts) ----------

/** A device another relay holds, reached over a mesh connection to that relay. */
export interface RemoteEnd {
  /** The relay that holds the device (its node id), for reasons and logs. */
  node: string;
  /** The mesh connection to it: the session's `onsiteConn` on this relay. */
  conn: Connection;
  /** Opens the session on that relay (it offers it to the device); answers as the device's offer would. */
  offer(open: SessionOfferBody & { onsite: string; ttl: number | null; address: string }): Promise<SessionOfferReply>;
}

/** Where a device this relay does not hold is looked for (cluster mode only). */
export interface RemoteDevices {
  /** The device's relay, or null when no live relay holds it; throws RemoteError when that cannot be known. */
  route(onsite: string): Promise<RemoteEnd | null>;
}

/** A session opened by a master on another relay: who asked, from where, through which relay. */
export interface MeshOrigin {
  relay: string;
  /** The master's address as its relay sees it. */
  address: string;
}

/** What the mesh (src/cluster/mesh.ts) drives on this relay; nothing else calls these. */
export interface MeshHooks {
  readonly window: number;
  readonly clock: Clock;
  readonly log: Log;
  /** A mesh connection past its handshake: "master" for a link the peer dialed (its masters'
   * streams come in on it), "onsite" for one this relay dialed (streams go out on it, odd ids). */
  attach(conn: Connection, peer: string, as: "master" | "onsite", limit: number): void;
  route(f: Frame, conn: Connection): void;
  /** The mesh connection is gone: its streams are reset and its sessions end (not final). */
  gone(conn: Connection, reason: string): void;
  /** A master on the peer relay opens a session to a device of this relay. */
  open(via: Connection, master: string, req: SessionOpenBody, origin: MeshOrigin): Promise<SessionInfo>;
  /** The peer relay ended session `id` carried on `via` (not told back over `via`). One still
   * being opened is dropped only where `via` is its master end (that relay gave up on it); where
   * `via` is its device end the SESSION_CLOSE is of an earlier session with the same id. */
  end(via: Connection, id: string, reason: string, final: boolean): void;
  /** The active session `id` whose master end is `via`. */
  session(via: Connection, id: string): Session | undefined;
  switchTunnel(s: Session, b: TunnelModeBody): Promise<TunnelOffer>;
  /** NAT_REQUEST of a session whose master is on the peer relay: this relay's policy, the `source` that relay saw. */
  nat(s: Session, b: NatRequestBody, peer: string): Promise<NatReply>;
  record(address: string, presented: string | null, code: RefusalCodeId, reason: string): void;
  /** Cluster mode on (the mesh's router of remote devices) or off (null). */
  setRemote(r: RemoteDevices | null): void;
}

export class RelayServer {
  readonly clock: Clock;
  readonly inventory: Inventory;
  readonly sessions: SessionTable<Connection>;
  private readonly front: Front;
  private readonly router: Router;
  private readonly ring = new MemoryRefusalLog(1000);
  /** The live connection of each onsite device and master, by id. */
  private readonly onsites = new Map<string, Connection>();
  private readonly masters = new Map<string, Connection>();
  private expiryTimer: TimerHandle | null = null;
  private stateSweep: TimerHandle | null = null;
  private idleTimer: TimerHandle | null = null;
  readonly idleTimeout: number;
  readonly metrics: RelayMetrics;
  readonly events: Events;
  /** Connections past their HELLO, with their role: for live counts and byte/frame totals. */
  private readonly welcomed = new Map<Connection, "onsite" | "master">();
  /** Bytes and frames of connections that are gone, by "direction role". */
  private readonly gone = new Map<string, { bytes: number; frames: number }>();
  private closed = false;
  /** Cluster mode: where devices this relay does not hold are found (src/cluster/mesh.ts). */
  private remote: RemoteDevices | null = null;
  /** Judges heartbeat datagrams (a listener in src/roles/relay.ts feeds it); null without a secret. */
  readonly heartbeats: HeartbeatReceiver | null = null;
  private readonly heartbeatKeys = new Map<string, { serial: string; key: Uint8Array }>();
  /** Connections closed at their certificate's expiry. */
  certExpiries = 0;
  /** Onsite ids used by two live devices at once (issue 17 §6). */
  readonly clones = new CloneWatch();
  /** The HELLO `instance` of each onsite connection that sent one (CloneWatch's same-device test). */
  private readonly instances = new WeakMap<Connection, string>();
  private readonly live: Liveness = (id) => {
    const c = this.onsites.get(id);
    return c && !c.closed ? { lastReceived: c.lastHeard, rtt: c.rtt } : null;
  };

  constructor(private readonly o: RelayOptions) {
    this.clock = o.clock ?? systemClock;
    this.idleTimeout = o.sessionIdleTimeout ?? DEFAULT_SESSION_IDLE_TIMEOUT;
    const window = o.window ?? Limits.streamWindow;
    this.inventory = new Inventory(this.clock, o.inventoryStore);
    this.inventory.duplicateOf = (id) => this.clones.mark(id, this.clock.now());
    this.inventory.onStoreError = (e) => o.log.warn(`inventory store: ${e.message}; the inventory goes on in memory (said once until a write works again)`, { reason: e.message });
    const hb = o.heartbeat;
    if (hb) {
      this.heartbeats = new HeartbeatReceiver({
        clock: this.clock,
        keyOf: (id) => {
          const rec = this.inventory.get(id);
          if (!rec) return null;
          // Derived once per device and serial (bounded by the inventory; forget drops it).
          const k = this.heartbeatKeys.get(id);
          if (k && k.serial === rec.serial) return k.key;
          const key = deviceKey(hb.secret, id, rec.serial);
          this.heartbeatKeys.set(id, { serial: rec.serial, key });
          return key;
        },
        onBeat: (b) => {
          this.metrics.heartbeatsReceived.inc();
          this.inventory.beat(b.id, b);
        },
        onDrop: (reason) => this.metrics.heartbeatsRejected.inc({ reason }),
      });
    }
    this.sessions = new SessionTable({ maxPerMaster: Limits.maxSessionsPerMaster, newId: o.newSessionId ?? (() => newSessionId()) });
    this.metrics = new RelayMetrics(o.metrics ?? new Registry());
    this.events = o.events ?? noEvents;
    // Issue 15: device_state for the GUI's live fleet page; with heartbeats, time alone makes a
    // device lost, so a sweep looks every few seconds (no formatting unless a state changed).
    this.inventory.onState = (id, state, previous, status) => this.events.publish("device_state", { id, state, previous, status });
    if (this.heartbeats) this.stateSweep = this.clock.setInterval(() => this.inventory.sweepStates(this.live), STATE_SWEEP_MS);
    this.registerLiveMetrics();
    this.mesh = this.meshHooks(window);
    const sinks: RefusalLog[] = [this.ring];
    sinks.push({
      record: (r) => {
        this.metrics.refusals.inc({ reason: r.code });
        this.events.publish("refusal", { address: r.address, presented: r.presented, code: r.code, reason: r.reason });
      },
    });
    if (o.refusalLog) sinks.push(o.refusalLog);
    if (o.onRefusal) sinks.push({ record: o.onRefusal });
    this.router = new Router({
      window,
      session: (id) => this.sessions.active(id),
      refuse: (conn, reason) => this.front.refuse(conn, conn.peer ? `${conn.peer.id} (${conn.peer.role})` : "?", RefusalCode.PROTOCOL, reason),
      streamChanged: (s, opened) => {
        const rec = s as Session;
        if (opened) this.sessions.streamOpened(rec, this.clock.now());
        else {
          this.sessions.streamClosed(rec, this.clock.now());
          if (rec.openStreams === 0) this.armIdle();
        }
      },
      packetDropped: (why) => this.metrics.packetDrops.inc({ reason: why }),
    });
    this.front = new Front({
      clock: this.clock,
      log: o.log,
      refusals: new RefusalLogs(sinks),
      helloDeadline: o.helloDeadline ?? Timing.helloDeadline,
      window,
      keepaliveInterval: o.keepaliveInterval ?? Timing.keepaliveInterval,
      keepaliveTimeout: o.keepaliveTimeout,
      writeStallTimeout: o.writeStallTimeout,
      route: (f, conn) => this.router.route(f, conn),
      welcome: (conn, cert, hello, version) => this.welcome(conn, cert, hello, version),
      gone: (conn, cert, why) => this.onGone(conn, cert, why),
      ...o.admission,
    });
  }

  /** Issue 17: logs the refusals held back per source over the last minute, one line each; returns them. */
  summarizeRefusals(): RefusalSummary[] {
    return this.front.summarizeRefusals();
  }

  /** Cluster mode's hooks (see MeshHooks): the mesh routes, opens and ends sessions through these. */
  readonly mesh: MeshHooks;

  private meshHooks(window: number): MeshHooks {
    return {
      window,
      clock: this.clock,
      log: this.o.log,
      attach: (conn, peer, as, limit) => this.router.attach(conn, { id: peer, role: as }, as === "onsite" && conn.side === "dialer" ? 1 : 2, limit),
      route: (f, conn) => this.router.route(f, conn),
      gone: (conn, reason) => {
        this.router.detach(conn, reason);
        for (const s of this.sessions.boundTo(conn)) {
          if (s.state !== "active") this.sessions.close(s.id, s);
          else this.closeSession(s, reason, false);
        }
      },
      open: (via, master, req, origin) => this.openSession(via, master, req, origin),
      end: (via, id, reason, final) => {
        const s = this.sessions.boundTo(via).find((x) => x.id === id);
        if (!s) return;
        if (s.state === "active") this.closeSession(s, reason, final, via);
        else if (s.masterConn === via) this.sessions.close(s.id, s);
      },
      session: (via, id) => {
        const s = this.sessions.active(id);
        return s && s.masterConn === via ? s : undefined;
      },
      switchTunnel: (s, b) => this.switchTunnel(s, b),
      nat: (s, b, peer) => {
        if (!mayAskNat(this.o.access(), s.master, s.onsite)) {
          const why = `${s.master} may not ask ${s.onsite} for NAT rules (relay access policy: no [[access]] rule covering both has nat = true)`;
          this.front.record(`via relay ${peer}`, s.master, RefusalCode.POLICY, why);
          return Promise.reject(new RemoteError(ErrorCode.FORBIDDEN, why));
        }
        if (b.source === undefined) return Promise.reject(new RemoteError(ErrorCode.BAD_REQUEST, `relay ${peer} sent a NAT_REQUEST without the master's source address`));
        return request(s.onsiteConn, Msg.NAT_REQUEST, { ...b, session: s.id, source: b.source });
      },
      record: (address, presented, code, reason) => this.front.record(address, presented, code, reason),
      setRemote: (r) => {
        this.remote = r;
      },
    };
  }

  /** The last refusals (at most 1000), oldest first. */
  get refusals(): Refusal[] {
    return this.ring.recent();
  }

  // ---- connections ------------------------------------------------------------------------

  /** A link whose certificate passed verifyPeer; the HELLO must follow within the deadline. */
  accept(link: Link, cert: PeerCert): Connection {
    return this.front.accept(link, cert);
  }

  /** Refusals that happen before a Connection exists (TLS level): the listener reports them. */
  refusedAtTls(address: string, presented: string | null, reason: string, code: RefusalCodeId = tlsRefusalCode(reason)): void {
    this.front.record(address, presented, code, reason);
  }

  private welcome(conn: Connection, cert: PeerCert, hello: HelloBody, version: number): void {
    if (cert.role === "onsite" && this.refusedAsClone(conn, cert, hello.instance)) return;
    this.router.attach(conn, cert);
    const role = cert.role === "onsite" ? "onsite" : "master";
    this.welcomed.set(conn, role);
    this.events.publish("connect", { id: cert.id, role, address: conn.remoteAddress, agent: hello.agent });
    if (cert.role === "onsite") this.registerOnsite(conn, cert, hello.agent);
    else this.registerMaster(conn, cert.id);
    // The fleet is the devices the inventory knows (kept across restarts), or those connected if more.
    const spread = this.o.redialSpread?.(Math.max(this.inventory.size, this.welcomed.size));
    send(conn, Msg.WELCOME, { version, relay: this.o.id, address: conn.remoteAddress, keepalive: conn.keepalive?.interval ?? this.o.keepaliveInterval ?? Timing.keepaliveInterval, ...(spread !== undefined ? { spread } : {}) });
    const hb = this.o.heartbeat;
    if (hb && cert.role === "onsite") send(conn, Msg.HEARTBEAT_KEY, { key: Buffer.from(deviceKey(hb.secret, cert.id, cert.serial)).toString("base64"), port: hb.port });
    this.closeAtExpiry(conn, cert);
  }

  /** A certificate that expires while connected: the connection is closed at its expiry. */
  private closeAtExpiry(conn: Connection, cert: PeerCert): void {
    if (!cert.notAfter) return;
    const at = cert.notAfter.getTime();
    let timer: TimerHandle | null = null;
    const arm = () => {
      const left = at - this.clock.wall();
      if (left <= 0) {
        this.certExpiries++;
        const reason = `certificate ${cert.serial} of ${cert.id} expired at ${cert.notAfter!.toISOString()}`;
        this.front.record(conn.remoteAddress, `${cert.id} (${cert.role})`, RefusalCode.CERTIFICATE, `${reason}; closing its live connection`);
        conn.close(GoAwayCode.REVOKED, reason);
        return;
      }
      // Re-armed at most daily: the wall clock may have stepped meanwhile.
      timer = this.clock.setTimeout(arm, Math.min(left, MAX_TIMER_MS));
    };
    arm();
    void conn.wait().then(() => this.clock.clearTimeout(timer));
  }

  /**
   * Two live devices with one certificate: once the id's connection has been replaced
   * ClonePolicy.replacements times within ClonePolicy.window, the live one stays and the
   * newcomer is closed with GOAWAY DUPLICATE (src/tunnel/relay/clone.ts).
   */
  private refusedAsClone(conn: Connection, cert: PeerCert, instance: string | undefined): boolean {
    const old = this.onsites.get(cert.id);
    const same = instance !== undefined && old !== undefined && this.instances.get(old) === instance;
    const v = this.clones.arrive(cert.id, conn.remoteAddress, old && !old.closed ? old.remoteAddress : null, this.clock.now(), same);
    if (instance !== undefined) this.instances.set(conn, instance);
    if (v.action !== "refuse") return false;
    if (v.first) {
      this.o.log.warn(`${cert.id}: ${ClonePolicy.replacements} replacements within ${ClonePolicy.window / 60_000} min: two devices use this certificate (from ${v.mark.addresses.join(", ")}); keeping the connection from ${old!.remoteAddress}, refusing newcomers; marked duplicated`, { id: cert.id, addresses: v.mark.addresses });
    }
    this.front.record(conn.remoteAddress, `${cert.id} (${cert.role})`, RefusalCode.IDENTITY, v.reason);
    conn.close(GoAwayCode.DUPLICATE, v.reason);
    return true;
  }

  /** A second connection with the same id replaces the first, which hears why. */
  private replace(registry: Map<string, Connection>, id: string, conn: Connection): void {
    const old = registry.get(id);
    if (old && !old.closed) {
      this.o.log.warn(`${id}: a new connection from ${conn.remoteAddress} replaces the one from ${old.remoteAddress}`, { id, address: conn.remoteAddress, previous: old.remoteAddress });
      old.close(GoAwayCode.REPLACED, `replaced by a new connection of ${id} from ${conn.remoteAddress}`);
    }
    registry.set(id, conn);
  }

  private registerOnsite(conn: Connection, cert: PeerCert, agent: string): void {
    this.replace(this.onsites, cert.id, conn);
    const rec = this.inventory.connected(cert.id, { serial: cert.serial, address: conn.remoteAddress, agent, certExpires: cert.notAfter?.getTime() ?? null });
    this.o.cluster?.onsiteUp?.(cert.id, rec.connectedSince);
    this.o.log.info(`onsite ${cert.id} connected from ${conn.remoteAddress}`, { id: cert.id, role: "onsite", address: conn.remoteAddress, agent });
    on(conn, Msg.INVENTORY, (b) => this.inventory.report(cert.id, b), (e) => this.o.log.warn(`${cert.id}: ignoring an INVENTORY that does not decode: ${e.message}`, { id: cert.id, reason: e.message }));
  }

  private registerMaster(conn: Connection, id: string): void {
    this.replace(this.masters, id, conn);
    this.o.log.info(`master ${id} connected from ${conn.remoteAddress}`, { id, role: "master", address: conn.remoteAddress });
    const mine = (session: string): Session => {
      const s = this.sessions.active(session);
      if (!s || s.master !== id) throw new RemoteError(ErrorCode.NO_SESSION, `no session ${JSON.stringify(session)} of ${id}`);
      return s;
    };
    // Issue 15: the relay's own rows (state, heartbeat, services), so a master sees what `agent devices` here shows;
    // in cluster mode (issue 16) merged with the other relays' devices.
    handle(conn, Msg.DEVICES, async () => {
      const local = this.deviceRows();
      const all = this.o.cluster?.devices ? await this.o.cluster.devices(local) : local;
      return all.filter((d) => mayReach(this.o.access(), id, d.id));
    });
    handle(conn, Msg.SESSIONS, () => this.sessionList().filter((s) => s.master === id));
    handle(conn, Msg.SESSION_OPEN, (b) => this.openSession(conn, id, b));
    handle(conn, Msg.TUNNEL_MODE, (b) => this.switchTunnel(mine(b.session), b));
    handle(conn, Msg.SESSION_EXTEND, (b) => this.extendSession(mine(b.session), b.ttl));
    handle(conn, Msg.SESSION_END, (b) => {
      this.closeSession(mine(b.session), `ended by ${id}${b.reason !== null ? `: ${b.reason.slice(0, 200)}` : ""}`, true);
      return {};
    });
    handle(conn, Msg.NAT_REQUEST, async (b) => {
      const s = mine(b.session);
      if (!mayAskNat(this.o.access(), id, s.onsite)) {
        const why = `${id} may not ask ${s.onsite} for NAT rules (relay access policy: no [[access]] rule covering both has nat = true)`;
        this.front.record(conn.remoteAddress, id, RefusalCode.POLICY, why);
        throw new RemoteError(ErrorCode.FORBIDDEN, why);
      }
      // The rule's source is the master's public address as the relay sees it: the peer of
      // the session, never something the master claims.
      const peer = natSource(conn.remoteAddress);
      if (!peer.ok) throw new RemoteError(ErrorCode.BAD_REQUEST, peer.reason);
      return request(s.onsiteConn, Msg.NAT_REQUEST, { ...b, session: s.id, source: peer.source });
    });
  }

  /** TUNNEL_MODE of a session: the device switches, the old packet stream goes. */
  private async switchTunnel(s: Session, b: TunnelModeBody): Promise<TunnelOffer> {
    if (!s.tunnel) throw new RemoteError(ErrorCode.BAD_REQUEST, `session ${s.id} has no tunnel; open one with agent connect ${s.onsite} --tunnel routed|bridged`);
    let offer;
    try {
      offer = await request(s.onsiteConn, Msg.TUNNEL_MODE, b);
    } catch (e) {
      if (e instanceof RemoteError) throw new RemoteError(e.code === ErrorCode.INTERNAL ? ErrorCode.REFUSED : e.code, `${s.onsite} refused: ${e.message}`);
      throw new RemoteError(ErrorCode.INTERNAL, `${s.onsite} did not switch the tunnel: ${(e as Error).message}`);
    }
    // The old packet stream goes; the master opens one of the new mode.
    this.router.dropTunnelStreams(s, `tunnel of session ${s.id} switched to ${offer.mode}`);
    s.tunnel = { ...offer, ...(b.addressing ? { addressing: b.addressing } : {}) };
    this.o.log.info(`session ${s.id}: tunnel switched to ${offer.mode}`, { session: s.id, mode: offer.mode });
    this.events.publish("session_mode", { session: s.id, master: s.master, onsite: s.onsite, mode: offer.mode });
    return offer;
  }

  private onGone(conn: Connection, cert: PeerCert, why: ConnectionClosed): void {
    this.router.detach(conn, `${cert.id} disconnected`);
    const role = this.welcomed.get(conn);
    if (role) {
      this.welcomed.delete(conn);
      this.addGone(`in ${role}`, conn.bytesIn, conn.framesIn);
      this.addGone(`out ${role}`, conn.bytesOut, conn.framesOut);
      this.events.publish("disconnect", { id: cert.id, role, address: conn.remoteAddress, reason: why.message });
    }
    for (const s of this.sessions.boundTo(conn)) {
      // One still being offered just goes; its opener finds it gone and answers OFFLINE.
      if (s.state !== "active") this.sessions.close(s.id, s);
      else if (s.masterConn === conn) this.closeSession(s, `master ${cert.id} disconnected: ${why.message}`, false);
      else this.closeSession(s, `onsite ${cert.id} went offline: ${why.message}`, false);
    }
    if (cert.role === "onsite") {
      if (this.onsites.get(cert.id) === conn) {
        this.onsites.delete(cert.id);
        this.inventory.disconnected(cert.id, undefined, why.message, why.remote);
        this.o.cluster?.onsiteDown?.(cert.id);
        this.o.log.info(`onsite ${cert.id} disconnected: ${why.message}`, { id: cert.id, role: "onsite", address: conn.remoteAddress, reason: why.message });
      }
    } else if (this.masters.get(cert.id) === conn) {
      this.masters.delete(cert.id);
      this.o.log.info(`master ${cert.id} disconnected: ${why.message}`, { id: cert.id, role: "master", address: conn.remoteAddress, reason: why.message });
    }
  }

  // ---- inventory and sessions -------------------------------------------------------------

  deviceList(): DeviceInfo[] {
    return this.inventory.list(this.live);
  }

  /** The relay's own listing: DEVICES plus state, heartbeat and certificate (`agent devices` on the relay). */
  deviceRows(): DeviceRow[] {
    return this.inventory.rows(this.live);
  }

  /** The UDP port devices are told to send heartbeats to (known once the listener is bound). */
  setHeartbeatPort(port: number): void {
    if (this.o.heartbeat) this.o.heartbeat = { ...this.o.heartbeat, port };
  }

  /** Forgets an offline device and its history. */
  forgetDevice(id: string): "forgotten" | "online" | "unknown" {
    if (this.inventory.online(id, this.live)) return "online";
    const done = this.inventory.forget(id);
    this.clones.forget(id);
    this.heartbeats?.forget(id);
    this.heartbeatKeys.delete(id);
    return done ? "forgotten" : "unknown";
  }

  deviceHistory(id: string): DeviceEvent[] | null {
    return this.inventory.has(id) ? this.inventory.history(id) : null;
  }

  sessionList(): SessionInfo[] {
    const now = this.clock.now();
    const wall = this.clock.wall();
    return this.sessions.list().map((s) => sessionInfo(s, now, wall));
  }

  /** `origin`: opened by a master on another relay, over the mesh connection `masterConn` (one hop: never routed on). */
  private async openSession(masterConn: Connection, master: string, req: SessionOpenBody, origin?: MeshOrigin): Promise<SessionInfo> {
    const admitted = this.sessions.admits(master, req.session);
    if (!admitted.ok) throw new RemoteError(admitted.code, admitted.message);
    const online = this.inventory.online(req.onsite, this.live);
    // Cluster mode: a device this relay does not hold may be on another (src/cluster/mesh.ts).
    const remote = !online && !origin && this.remote ? await this.remote.route(req.onsite) : null;
    // A resumed session's device is known to the cluster even if this relay never saw it: "offline", so the master tries again.
    const known = this.inventory.has(req.onsite) || (this.remote !== null && req.session !== null);
    const decision = decidePairing(this.o.access(), master, req.onsite, remote ? { known: true, online: true } : { known, online });
    const from = origin ? `${origin.address} via relay ${origin.relay}` : masterConn.remoteAddress;
    if (!decision.ok) {
      if (decision.code === ErrorCode.FORBIDDEN) this.front.record(from, master, RefusalCode.POLICY, decision.message);
      throw new RemoteError(decision.code, decision.message);
    }
    const onsiteConn = remote ? remote.conn : this.onsites.get(req.onsite)!;
    const opened = this.sessions.open({ master, ...req }, { master: masterConn, onsite: onsiteConn }, this.clock.now(), this.clock.wall());
    if (!opened.ok) throw new RemoteError(opened.code, opened.message);
    if (opened.replaced) this.closed_(opened.replaced, "re-opened", false);
    const s = opened.session;
    this.sessions.offer(s);
    let warnings: string[] | undefined;
    try {
      const expires = s.expiresAt === null ? null : new Date(wallOf(this.clock, s.expiresAt)).toISOString();
      const offer: SessionOfferBody = { session: s.id, master, targets: s.targets, expires };
      if (s.tunnelRequest) offer.tunnel = s.tunnelRequest;
      if (s.udp) offer.udp = s.udp;
      const answer = remote ? await remote.offer({ ...offer, onsite: req.onsite, ttl: req.ttl, address: masterConn.remoteAddress }) : await request(onsiteConn, Msg.SESSION_OFFER, offer);
      warnings = answer.warnings;
      if (s.tunnelRequest) {
        if (!answer.tunnel) throw new MessageError(Msg.SESSION_OFFER, "result.tunnel", "the tunnel end the device made", "got nothing (is its agent older than this relay?)");
        s.tunnel = { ...answer.tunnel, ...(s.tunnelRequest.addressing ? { addressing: s.tunnelRequest.addressing } : {}) };
      }
    } catch (e) {
      this.sessions.refuse(s);
      if (remote) this.tellRemote(remote.conn, s.id, "the session did not open on this relay");
      if (e instanceof RemoteError && remote) throw new RemoteError(e.code, `relay ${remote.node}: ${e.message}`);
      if (e instanceof RemoteError) throw new RemoteError(e.code === ErrorCode.INTERNAL ? ErrorCode.REFUSED : e.code, `${req.onsite} refused the session: ${e.message}`);
      if (e instanceof MessageError) throw new RemoteError(ErrorCode.INTERNAL, `${req.onsite} answered the offer with a bad result: ${e.message}`);
      throw new RemoteError(ErrorCode.OFFLINE, `device ${req.onsite} went offline while opening the session`);
    }
    if (masterConn.closed || onsiteConn.closed || !this.sessions.accept(s)) {
      this.sessions.refuse(s);
      if (remote) this.tellRemote(remote.conn, s.id, "a side disconnected while opening the session");
      throw new RemoteError(ErrorCode.OFFLINE, "a side disconnected while opening the session");
    }
    this.armExpiry();
    this.sessions.touch(s, this.clock.now());
    this.armIdle();
    this.metrics.sessionsOpened.inc();
    this.events.publish("session_open", { session: s.id, master, onsite: req.onsite, targets: s.targets, ttl_ms: s.ttl ?? null });
    const carries = [...s.targets, ...(s.udp ?? []).map((t) => `udp ${t}`), ...(s.tunnel ? [`${s.tunnel.mode} tunnel`] : [])];
    const hop = origin ? ` from ${from}` : remote ? ` via relay ${remote.node}` : "";
    this.o.log.info(`session ${s.id}: ${master} → ${req.onsite}${hop} (${carries.join(", ")})${s.ttl ? `, TTL ${Math.round(s.ttl / 1000)} s` : ""}`, { session: s.id, master, onsite: req.onsite, targets: s.targets, ttl_ms: s.ttl ?? null, ...(origin ? { via: origin.relay } : remote ? { relay: remote.node } : {}) });
    const info = sessionInfo(s, this.clock.now(), this.clock.wall());
    // What the device found checking the targets goes to the master with the answer.
    if (warnings?.length) {
      info.warnings = warnings.slice(0, MAX_TARGETS).map((w) => w.slice(0, 500));
      this.o.log.info(`session ${s.id}: ${req.onsite} warns: ${info.warnings.join("; ")}`, { session: s.id, onsite: req.onsite, warnings: info.warnings });
    }
    return info;
  }

  /** SESSION_EXTEND: the session ends `ttl` ms from now (clamped); the onsite device hears the new end. */
  extendSession(s: Session, ttl: number): SessionInfo {
    const d = decideExtend(s, ttl, this.clock.now());
    if (!d.ok) throw new RemoteError(d.code, d.message);
    applyExtend(s, d.expiresAt);
    this.armExpiry();
    const info = sessionInfo(s, this.clock.now(), this.clock.wall());
    if (!s.onsiteConn.closed) send(s.onsiteConn, Msg.SESSION_EXPIRES, { session: s.id, expires: info.expires! });
    this.events.publish("session_extend", { session: s.id, master: s.master, onsite: s.onsite, expires: info.expires, clamped: d.clamped });
    this.o.log.info(`session ${s.id}: extended, now ends ${info.expires}${d.clamped ? " (clamped to the longest TTL)" : ""}`, { session: s.id, expires: info.expires });
    return info;
  }

  /** The relay holding the device of a session that did not open here ends its half too. */
  private tellRemote(conn: Connection, session: string, reason: string): void {
    if (!conn.closed) send(conn, Msg.SESSION_CLOSE, { session, reason, final: true });
  }

  /** Ends a session: both sides hear why (but `told`, which said so); its streams are reset. */
  closeSession(s: Session, reason: string, final: boolean, told?: Connection): void {
    if (!this.sessions.close(s.id, s)) return;
    this.closed_(s, reason, final, told);
    this.armExpiry();
  }

  /** The effects of a session that the table has closed. */
  private closed_(s: Session, reason: string, final: boolean, told?: Connection): void {
    this.router.dropSession(s, `session ended: ${reason}`);
    const label = sessionEndReason(reason);
    this.metrics.sessionsClosed.inc({ reason: label });
    this.events.publish("session_close", { session: s.id, master: s.master, onsite: s.onsite, reason, why: label, final });
    // No session left that could go idle: no timer left behind either.
    if (this.idleTimer !== null && this.sessions.nextIdle(this.idleTimeout) === null) {
      this.clock.clearTimeout(this.idleTimer);
      this.idleTimer = null;
    }
    for (const conn of [s.masterConn, s.onsiteConn]) if (!conn.closed && conn !== told) send(conn, Msg.SESSION_CLOSE, { session: s.id, reason, final });
    this.o.log.info(`session ${s.id} closed: ${reason}`, { session: s.id, reason });
  }

  /** One timer, for the earliest TTL: monotonic, so a wall-clock step moves no TTL. */
  private armExpiry(): void {
    this.clock.clearTimeout(this.expiryTimer);
    this.expiryTimer = null;
    const next = this.sessions.nextExpiry();
    if (next === null || this.closed) return;
    this.expiryTimer = this.clock.setTimeout(() => {
      this.expiryTimer = null;
      for (const s of this.sessions.expire(this.clock.now())) this.closed_(s, `TTL of ${Math.round(s.ttl! / 1000)} s reached`, true);
      this.armExpiry();
    }, Math.max(0, next - this.clock.now()));
  }

  /**
   * The hook for traffic that is not a routed stream (packets, datagrams): call it with the
   * session's id whenever something of it moves, so session_idle_timeout does not end it.
   */
  touchSession(id: string): void {
    const s = this.sessions.active(id);
    if (s) this.sessions.touch(s, this.clock.now());
  }

  /**
   * One timer for the first session that could go idle. Deadlines only move later (a touch,
   * a stream), so a pending timer is never too late: when it fires, the sweep closes what is
   * idle and arms again for the next.
   */
  private armIdle(): void {
    if (this.idleTimer !== null || this.closed) return;
    const next = this.sessions.nextIdle(this.idleTimeout);
    if (next === null) return;
    this.idleTimer = this.clock.setTimeout(() => {
      this.idleTimer = null;
      const secs = Math.round(this.idleTimeout / 1000);
      for (const s of this.sessions.idle(this.clock.now(), this.idleTimeout)) this.closed_(s, `idle for ${secs} s (no stream and no packet; session_idle_timeout)`, true);
      this.armIdle();
    }, Math.max(0, next - this.clock.now()));
  }

  // ---- admin actions (agent kick, agent sessions end) ---------------------------------------

  /**
   * Closes the live connection(s) of `id` (an onsite device or a master) with a GOAWAY that
   * says why; its sessions end as for any disconnect. The device dials again after its
   * backoff: a kick drops a connection, revocation keeps a device out. Empty if none is live.
   */
  kick(id: string, reason: string | null): Kicked[] {
    const out: Kicked[] = [];
    const why = `kicked by the relay operator${reason ? `: ${reason.slice(0, 200)}` : ""}`;
    for (const [role, registry] of [["onsite", this.onsites], ["master", this.masters]] as const) {
      const conn = registry.get(id);
      if (!conn || conn.closed) continue;
      out.push({ id, role, address: conn.remoteAddress, sessions: this.sessions.boundTo(conn).length });
      this.metrics.kicks.inc();
      this.events.publish("kick", { id, role, address: conn.remoteAddress, reason: why });
      this.o.log.warn(`${role} ${id} from ${conn.remoteAddress}: ${why}`, { id, role, address: conn.remoteAddress, reason: why });
      conn.close(GoAwayCode.NORMAL, why);
    }
    return out;
  }

  /**
   * Cluster mode: the device connected to another relay more recently, so this relay closes its
   * own connection of it (REPLACED). False when none is live here.
   */
  replacedElsewhere(id: string, reason: string): boolean {
    const conn = this.onsites.get(id);
    if (!conn || conn.closed) return false;
    this.o.log.warn(`${id} from ${conn.remoteAddress}: ${reason}`, { id, address: conn.remoteAddress, reason });
    conn.close(GoAwayCode.REPLACED, reason);
    return true;
  }

  /** The wall ms the live connection of onsite `id` began, or null when none is live here. */
  onsiteSince(id: string): number | null {
    const conn = this.onsites.get(id);
    return conn && !conn.closed ? (this.inventory.get(id)?.connectedSince ?? null) : null;
  }

  /** Ends an active session on the operator's word (final: the master does not resume it). */
  endSession(id: string, reason: string | null): SessionInfo | null {
    const s = this.sessions.active(id);
    if (!s) return null;
    const info = sessionInfo(s, this.clock.now(), this.clock.wall());
    this.closeSession(s, `ended by the relay operator${reason ? `: ${reason.slice(0, 200)}` : ""}`, true);
    return info;
  }

  // ---- metrics -----------------------------------------------------------------------------

  private addGone(key: string, bytes: number, frames: number): void {
    const g = this.gone.get(key) ?? { bytes: 0, frames: 0 };
    g.bytes += bytes;
    g.frames += frames;
    this.gone.set(key, g);
  }

  /** Totals of every connection that passed its HELLO: those gone plus the live ones. */
  private totals(what: "bytes" | "frames") {
    const sum = new Map<string, number>();
    for (const [k, g] of this.gone) sum.set(k, g[what]);
    for (const [c, role] of this.welcomed) {
      sum.set(`in ${role}`, (sum.get(`in ${role}`) ?? 0) + (what === "bytes" ? c.bytesIn : c.framesIn));
      sum.set(`out ${role}`, (sum.get(`out ${role}`) ?? 0) + (what === "bytes" ? c.bytesOut : c.framesOut));
    }
    return DIRECTION_LABEL.flatMap((direction) => ROLE_LABEL.map((role) => ({ labels: { direction, role }, value: sum.get(`${direction} ${role}`) ?? 0 })));
  }

  /** Live counts, read at scrape time from the parts that keep them. */
  private registerLiveMetrics(): void {
    const r = this.metrics.registry;
    const byRole = () => ROLE_LABEL.map((role) => ({ labels: { role }, value: [...this.welcomed.values()].filter((x) => x === role).length }));
    r.collect("agent_relay_connections", "Device connections past their HELLO, by role.", "gauge", byRole, { role: ROLE_LABEL });
    r.collect("agent_relay_connections_pending_hello", "Connections past TLS whose HELLO has not come yet.", "gauge", () => this.front.pendingHello);
    r.collect("agent_relay_devices_known", "Onsite devices the inventory knows.", "gauge", () => this.inventory.counts(this.live).known);
    r.collect("agent_relay_devices_online", "Onsite devices online.", "gauge", () => this.inventory.counts(this.live).online);
    r.collect("agent_relay_sessions", "Active sessions.", "gauge", () => this.sessions.list().length);
    r.collect("agent_relay_streams", "Streams routed right now.", "gauge", () => this.router.streams);
    r.collect("agent_relay_bytes_total", "Bytes of device connections (frames included), by direction seen from the relay and peer role.", "counter", () => this.totals("bytes"), { direction: DIRECTION_LABEL, role: ROLE_LABEL });
    r.collect("agent_relay_frames_total", "Frames of device connections, by direction seen from the relay and peer role.", "counter", () => this.totals("frames"), { direction: DIRECTION_LABEL, role: ROLE_LABEL });
  }

  // ---- revocation and shutdown ------------------------------------------------------------

  /** Closes live connections whose certificate serial is now revoked. */
  enforceRevocations(isRevoked: (serial: string) => boolean): number {
    return this.front.enforceRevocations(isRevoked);
  }

  stats(): Record<string, number> {
    const devices = this.inventory.counts(this.live);
    return { onsite_online: devices.online, onsite_known: devices.known, masters: this.masters.size, sessions: this.sessions.list().length, streams: this.router.streams, pending_hello: this.front.pendingHello };
  }

  /** Tells everyone why, and waits (at most a second) for the GOAWAYs to leave. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.sessions.list()) this.closeSession(s, "relay is shutting down", false);
    this.clock.clearTimeout(this.expiryTimer);
    this.expiryTimer = null;
    this.clock.clearTimeout(this.idleTimer);
    this.idleTimer = null;
    this.clock.clearInterval(this.stateSweep);
    this.stateSweep = null;
    await this.front.close();
  }
}
