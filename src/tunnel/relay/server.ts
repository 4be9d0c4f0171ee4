// The relay, composed: the front (admission, HELLO, refusals), the inventory of onsite devices,
// the session table and the stream router, each a part of its own, wired here to the control
// messages masters and devices send. It takes authenticated links (it does not own a listener:
// tests hand it pipes), and every duration it keeps runs on the injected clock.
import { type Connection, type ConnectionClosed, RemoteError, type Log } from "../../transport/mux.ts";
import type { Link } from "../../transport/link.ts";
import { GoAwayCode } from "../../transport/frame.ts";
import { ErrorCode, MAX_TARGETS, MessageError, Msg, type DeviceInfo, type HelloBody, type SessionInfo, type SessionOfferBody, type SessionOpenBody } from "../../transport/messages.ts";
import { handle, on, request, send } from "../../transport/typed.ts";
import { Limits, Timing } from "../../transport/policy.ts";
import { systemClock, wallOf, type Clock, type TimerHandle } from "../../clock.ts";
import type { AccessRule } from "../../config.ts";
import { decidePairing, mayReach, natSource, newSessionId } from "../pairing.ts";
import { Front, type PeerCert } from "./front.ts";
import { Inventory, type Liveness } from "./inventory.ts";
import { Router } from "./router.ts";
import { SessionTable, sessionInfo, type SessionRecord } from "./sessions.ts";
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
}

export type Session = SessionRecord<Connection>;

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
  private closed = false;
  private readonly live: Liveness = (id) => {
    const c = this.onsites.get(id);
    return c && !c.closed ? { lastReceived: c.lastHeard, rtt: c.rtt } : null;
  };

  constructor(private readonly o: RelayOptions) {
    this.clock = o.clock ?? systemClock;
    const window = o.window ?? Limits.streamWindow;
    this.inventory = new Inventory(this.clock);
    this.sessions = new SessionTable({ maxPerMaster: Limits.maxSessionsPerMaster, newId: o.newSessionId ?? (() => newSessionId()) });
    const sinks: RefusalLog[] = [this.ring];
    if (o.refusalLog) sinks.push(o.refusalLog);
    if (o.onRefusal) sinks.push({ record: o.onRefusal });
    this.router = new Router({
      window,
      session: (id) => this.sessions.active(id),
      refuse: (conn, reason) => this.front.refuse(conn, conn.peer ? `${conn.peer.id} (${conn.peer.role})` : "?", RefusalCode.PROTOCOL, reason),
    });
    this.front = new Front({
      clock: this.clock,
      log: o.log,
      refusals: new RefusalLogs(sinks),
      helloDeadline: o.helloDeadline ?? Timing.helloDeadline,
      window,
      keepaliveInterval: o.keepaliveInterval ?? Timing.keepaliveInterval,
      keepaliveTimeout: o.keepaliveTimeout,
      route: (f, conn) => this.router.route(f, conn),
      welcome: (conn, cert, hello, version) => this.welcome(conn, cert, hello, version),
      gone: (conn, cert, why) => this.onGone(conn, cert, why),
    });
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
    this.router.attach(conn, cert);
    if (cert.role === "onsite") this.registerOnsite(conn, cert, hello.agent);
    else this.registerMaster(conn, cert.id);
    send(conn, Msg.WELCOME, { version, relay: this.o.id, address: conn.remoteAddress, keepalive: this.o.keepaliveInterval ?? Timing.keepaliveInterval });
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
    this.inventory.connected(cert.id, { serial: cert.serial, address: conn.remoteAddress, agent });
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
    handle(conn, Msg.DEVICES, () => this.deviceList().filter((d) => mayReach(this.o.access(), id, d.id)));
    handle(conn, Msg.SESSIONS, () => this.sessionList().filter((s) => s.master === id));
    handle(conn, Msg.SESSION_OPEN, (b) => this.openSession(conn, id, b));
    handle(conn, Msg.TUNNEL_MODE, async (b) => {
      const s = mine(b.session);
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
      return offer;
    });
    handle(conn, Msg.SESSION_END, (b) => {
      this.closeSession(mine(b.session), `ended by ${id}${b.reason !== null ? `: ${b.reason.slice(0, 200)}` : ""}`, true);
      return {};
    });
    handle(conn, Msg.NAT_REQUEST, async (b) => {
      const s = mine(b.session);
      // The rule's source is the master's public address as the relay sees it: the peer of
      // the session, never something the master claims.
      const peer = natSource(conn.remoteAddress);
      if (!peer.ok) throw new RemoteError(ErrorCode.BAD_REQUEST, peer.reason);
      return request(s.onsiteConn, Msg.NAT_REQUEST, { ...b, session: s.id, source: peer.source });
    });
  }

  private onGone(conn: Connection, cert: PeerCert, why: ConnectionClosed): void {
    this.router.detach(conn, `${cert.id} disconnected`);
    for (const s of this.sessions.boundTo(conn)) {
      // One still being offered just goes; its opener finds it gone and answers OFFLINE.
      if (s.state !== "active") this.sessions.close(s.id, s);
      else if (s.masterConn === conn) this.closeSession(s, `master ${cert.id} disconnected: ${why.message}`, false);
      else this.closeSession(s, `onsite ${cert.id} went offline: ${why.message}`, false);
    }
    if (cert.role === "onsite") {
      if (this.onsites.get(cert.id) === conn) {
        this.onsites.delete(cert.id);
        this.inventory.disconnected(cert.id);
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

  sessionList(): SessionInfo[] {
    const now = this.clock.now();
    const wall = this.clock.wall();
    return this.sessions.list().map((s) => sessionInfo(s, now, wall));
  }

  private async openSession(masterConn: Connection, master: string, req: SessionOpenBody): Promise<SessionInfo> {
    const admitted = this.sessions.admits(master, req.session);
    if (!admitted.ok) throw new RemoteError(admitted.code, admitted.message);
    const decision = decidePairing(this.o.access(), master, req.onsite, { known: this.inventory.has(req.onsite), online: this.inventory.online(req.onsite, this.live) });
    if (!decision.ok) {
      if (decision.code === ErrorCode.FORBIDDEN) this.front.record(masterConn.remoteAddress, master, RefusalCode.POLICY, decision.message);
      throw new RemoteError(decision.code, decision.message);
    }
    const onsiteConn = this.onsites.get(req.onsite)!;
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
      const answer = await request(onsiteConn, Msg.SESSION_OFFER, offer);
      warnings = answer.warnings;
      if (s.tunnelRequest) {
        if (!answer.tunnel) throw new MessageError(Msg.SESSION_OFFER, "result.tunnel", "the tunnel end the device made", "got nothing (is its agent older than this relay?)");
        s.tunnel = { ...answer.tunnel, ...(s.tunnelRequest.addressing ? { addressing: s.tunnelRequest.addressing } : {}) };
      }
    } catch (e) {
      this.sessions.refuse(s);
      if (e instanceof RemoteError) throw new RemoteError(e.code === ErrorCode.INTERNAL ? ErrorCode.REFUSED : e.code, `${req.onsite} refused the session: ${e.message}`);
      if (e instanceof MessageError) throw new RemoteError(ErrorCode.INTERNAL, `${req.onsite} answered the offer with a bad result: ${e.message}`);
      throw new RemoteError(ErrorCode.OFFLINE, `device ${req.onsite} went offline while opening the session`);
    }
    if (masterConn.closed || onsiteConn.closed || !this.sessions.accept(s)) {
      this.sessions.refuse(s);
      throw new RemoteError(ErrorCode.OFFLINE, "a side disconnected while opening the session");
    }
    this.armExpiry();
    const carries = [...s.targets, ...(s.udp ?? []).map((t) => `udp ${t}`), ...(s.tunnel ? [`${s.tunnel.mode} tunnel`] : [])];
    this.o.log.info(`session ${s.id}: ${master} → ${req.onsite} (${carries.join(", ")})${s.ttl ? `, TTL ${Math.round(s.ttl / 1000)} s` : ""}`, { session: s.id, master, onsite: req.onsite, targets: s.targets, ttl_ms: s.ttl ?? null });
    const info = sessionInfo(s, this.clock.now(), this.clock.wall());
    // What the device found checking the targets goes to the master with the answer.
    if (warnings?.length) {
      info.warnings = warnings.slice(0, MAX_TARGETS).map((w) => w.slice(0, 500));
      this.o.log.info(`session ${s.id}: ${req.onsite} warns: ${info.warnings.join("; ")}`, { session: s.id, onsite: req.onsite, warnings: info.warnings });
    }
    return info;
  }

  /** Ends a session: both sides hear why; its streams are reset. */
  closeSession(s: Session, reason: string, final: boolean): void {
    if (!this.sessions.close(s.id, s)) return;
    this.closed_(s, reason, final);
    this.armExpiry();
  }

  /** The effects of a session that the table has closed. */
  private closed_(s: Session, reason: string, final: boolean): void {
    this.router.dropSession(s, `session ended: ${reason}`);
    for (const conn of [s.masterConn, s.onsiteConn]) if (!conn.closed) send(conn, Msg.SESSION_CLOSE, { session: s.id, reason, final });
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
    await this.front.close();
  }
}
