// The relay's heart: it takes authenticated links (it does not own a listener: tests hand it
// pipes), checks the HELLO, keeps the inventory of onsite devices, pairs masters with onsite
// devices and routes the session's stream frames between the two connections, rewriting
// stream ids and enforcing each stream's credit so no peer can make it buffer without bound.
import { Connection, ConnectionClosed, RemoteError, type Log } from "../transport/mux.ts";
import type { Link } from "../transport/link.ts";
import { Flag, FrameType, GoAwayCode, MAX_REASON, ResetCode, decodeJson, encodeJson, encodeReset, type Frame } from "../transport/frame.ts";
import { ErrorCode, Msg, PROTOCOL_VERSIONS, msgName, type DeviceInfo, type SessionInfo } from "../transport/messages.ts";
import { Limits, Timing, maxRoutedStreams } from "../transport/policy.ts";
import type { AccessRule } from "../config.ts";
import { decidePairing, mayReach, natSource, newSessionId, parseSessionRequest } from "./pairing.ts";

export interface RelayOptions {
  id: string;
  log: Log;
  access: () => readonly AccessRule[];
  /** Every refusal: for the audit log (also written through `log`). */
  onRefusal?: (r: Refusal) => void;
  helloDeadline?: number;
  keepaliveInterval?: number;
  keepaliveTimeout?: number;
  window?: number;
}

export interface Refusal {
  time: string;
  address: string;
  presented: string | null;
  reason: string;
}

interface Device {
  id: string;
  conn: Connection | null;
  serial: string;
  info: { hostname: string; location: string; agent: string; uptime: number; uplink: string };
  reportedAt: number;
  connectedSince: number;
  lastSeen: number;
  address: string;
}

interface Session {
  id: string;
  master: string;
  onsite: string;
  masterConn: Connection;
  onsiteConn: Connection;
  targets: Set<string>;
  opened: number;
  expires: number | null;
  timer: ReturnType<typeof setTimeout> | null;
  streams: number;
}

/** One direction of a routed stream: frames arriving on `conn` with id `sid`. */
interface Route {
  conn: Connection;
  sid: number;
  peer: Route;
  session: Session;
  /** Bytes this side may still send towards the peer (the peer's window, tracked here). */
  credit: number;
  fin: boolean;
}

interface PeerState {
  id: string;
  role: string;
  serial: string;
  nextStreamId: number;
  routes: Map<number, Route>;
}

/** A value the peer sent, quoted for a log line and cut short. */
function brief(v: unknown, quote = true): string {
  const text = quote ? (JSON.stringify(v) ?? String(v)) : String(v);
  return text.length > 80 ? `${text.slice(0, 80)}…` : text;
}

export class RelayServer {
  private readonly devices = new Map<string, Device>();
  private readonly masters = new Map<string, Connection>();
  private readonly sessions = new Map<string, Session>();
  private readonly peers = new Map<Connection, PeerState>();
  /** Authenticated at TLS, HELLO not yet seen; the certificate is kept so a revocation that
   * lands in between still closes them. */
  private readonly pendingHello = new Map<Connection, { id: string; role: string; serial: string }>();
  readonly refusals: Refusal[] = [];
  private closed = false;

  constructor(private readonly o: RelayOptions) {}

  // ---- connections ------------------------------------------------------------------------

  /** A link whose certificate passed verifyPeer; the HELLO must follow within the deadline. */
  accept(link: Link, cert: { id: string; role: string; serial: string }): Connection {
    // The refusal log names a peer the way the TLS level does ("CN (OU)"), whatever stage.
    const presented = `${cert.id} (${cert.role})`;
    const conn: Connection = new Connection(link, {
      side: "acceptor",
      log: this.o.log,
      window: this.o.window,
      keepaliveInterval: this.o.keepaliveInterval,
      keepaliveTimeout: this.o.keepaliveTimeout,
      routeFrame: (f, c) => this.route(f, c, presented),
      onUnhandled: (type) => {
        if (!this.peers.has(conn)) this.refuse(conn, presented, `${msgName(type)} before HELLO`, GoAwayCode.PROTOCOL);
      },
      onProtocolError: (err) => this.recordRefusal(conn.remoteAddress, presented, `protocol error: ${err.message}`),
    });
    if (this.closed) {
      conn.close(GoAwayCode.SHUTDOWN, "relay is shutting down");
      return conn;
    }
    this.pendingHello.set(conn, cert);
    const timer = setTimeout(() => {
      if (this.pendingHello.has(conn)) this.refuse(conn, presented, `no HELLO within ${(this.o.helloDeadline ?? Timing.helloDeadline) / 1000} s`, GoAwayCode.PROTOCOL);
    }, this.o.helloDeadline ?? Timing.helloDeadline);
    conn.on(Msg.HELLO, (b) => {
      clearTimeout(timer);
      this.onHello(conn, cert, b);
    });
    void conn.wait().then((why) => {
      clearTimeout(timer);
      this.pendingHello.delete(conn);
      this.onGone(conn, why);
    });
    return conn;
  }

  private recordRefusal(address: string, presented: string | null, reason: string): void {
    // Reasons quote what the peer sent; a log line must not grow with it.
    const r: Refusal = { time: new Date().toISOString(), address, presented, reason: reason.slice(0, MAX_REASON) };
    this.refusals.push(r);
    if (this.refusals.length > 1000) this.refusals.shift();
    this.o.log.warn(`refused ${presented ?? "(no certificate)"} from ${address}: ${r.reason}`);
    this.o.onRefusal?.(r);
  }

  /** Logs and closes a connection the relay will not serve. */
  private refuse(conn: Connection, presented: string, reason: string, code: number): void {
    this.recordRefusal(conn.remoteAddress, presented, reason);
    this.pendingHello.delete(conn);
    conn.close(code, reason);
  }

  /** Refusals that happen before a Connection exists (TLS level): the listener reports them. */
  refusedAtTls(address: string, presented: string | null, reason: string): void {
    this.recordRefusal(address, presented, reason);
  }

  private onHello(conn: Connection, cert: { id: string; role: string; serial: string }, b: Record<string, unknown>): void {
    const presented = `${cert.id} (${cert.role})`;
    if (!this.pendingHello.has(conn)) {
      conn.close(GoAwayCode.PROTOCOL, "second HELLO");
      return;
    }
    const versions = Array.isArray(b.versions) ? b.versions.filter((v): v is number => typeof v === "number") : [];
    const common = versions.filter((v) => (PROTOCOL_VERSIONS as readonly number[]).includes(v));
    if (common.length === 0) {
      this.refuse(conn, presented, `no common protocol version (relay speaks ${PROTOCOL_VERSIONS.join(", ")}, peer offers ${brief(versions.join(", ") || "none", false)})`, GoAwayCode.PROTOCOL);
      return;
    }
    if (b.role !== cert.role) {
      this.refuse(conn, presented, `HELLO says role ${brief(b.role)} but the certificate of ${cert.id} is for role ${cert.role}`, GoAwayCode.PROTOCOL);
      return;
    }
    if (b.id !== cert.id) {
      this.refuse(conn, presented, `HELLO says id ${brief(b.id)} but the certificate is for ${cert.id}`, GoAwayCode.PROTOCOL);
      return;
    }
    this.pendingHello.delete(conn);
    conn.peer = { id: cert.id, role: cert.role };
    this.peers.set(conn, { id: cert.id, role: cert.role, serial: cert.serial, nextStreamId: 2, routes: new Map() });
    const agent = typeof b.agent === "string" ? b.agent.slice(0, 64) : "";
    if (cert.role === "onsite") this.registerOnsite(conn, cert, agent);
    else this.registerMaster(conn, cert.id);
    conn.send(Msg.WELCOME, { version: Math.max(...common), relay: this.o.id, address: conn.remoteAddress, keepalive: this.o.keepaliveInterval ?? Timing.keepaliveInterval });
    conn.startKeepalive();
  }

  private registerOnsite(conn: Connection, cert: { id: string; serial: string }, agent: string): void {
    const old = this.devices.get(cert.id);
    if (old?.conn && !old.conn.closed) {
      this.o.log.warn(`${cert.id}: a new connection from ${conn.remoteAddress} replaces the one from ${old.address}`);
      old.conn.close(GoAwayCode.REPLACED, `replaced by a new connection of ${cert.id} from ${conn.remoteAddress}`);
    }
    const now = Date.now();
    const dev: Device = {
      id: cert.id,
      conn,
      serial: cert.serial,
      info: old?.info ?? { hostname: "", location: "", agent, uptime: 0, uplink: "" },
      reportedAt: now,
      connectedSince: now,
      lastSeen: now,
      address: conn.remoteAddress,
    };
    dev.info.agent = agent;
    this.devices.set(cert.id, dev);
    this.o.log.info(`onsite ${cert.id} connected from ${conn.remoteAddress}`);
    conn.on(Msg.INVENTORY, (b) => {
      const str = (v: unknown, max: number) => (typeof v === "string" ? v.slice(0, max) : "");
      dev.info = {
        hostname: str(b.hostname, 253),
        location: str(b.location, 128),
        agent: str(b.agent, 64) || dev.info.agent,
        uptime: typeof b.uptime === "number" && Number.isFinite(b.uptime) ? Math.max(0, Math.floor(b.uptime)) : 0,
        uplink: str(b.uplink, 32),
      };
      dev.reportedAt = Date.now();
    });
  }

  private registerMaster(conn: Connection, id: string): void {
    const old = this.masters.get(id);
    if (old && !old.closed) {
      this.o.log.warn(`${id}: a new connection from ${conn.remoteAddress} replaces the one from ${old.remoteAddress}`);
      old.close(GoAwayCode.REPLACED, `replaced by a new connection of ${id} from ${conn.remoteAddress}`);
    }
    this.masters.set(id, conn);
    this.o.log.info(`master ${id} connected from ${conn.remoteAddress}`);
    conn.handle(Msg.DEVICES, () => this.deviceList().filter((d) => mayReach(this.o.access(), id, d.id)));
    conn.handle(Msg.SESSIONS, () => this.sessionList().filter((s) => s.master === id));
    conn.handle(Msg.SESSION_OPEN, (b) => this.openSession(conn, id, b));
    conn.handle(Msg.SESSION_END, (b) => {
      const s = typeof b.session === "string" ? this.sessions.get(b.session) : undefined;
      if (!s || s.master !== id) throw new RemoteError(ErrorCode.NO_SESSION, `no session ${JSON.stringify(b.session)} of ${id}`);
      this.closeSession(s, `ended by ${id}${typeof b.reason === "string" ? `: ${b.reason.slice(0, 200)}` : ""}`, true);
      return {};
    });
    conn.handle(Msg.NAT_REQUEST, async (b) => {
      const s = typeof b.session === "string" ? this.sessions.get(b.session) : undefined;
      if (!s || s.master !== id) throw new RemoteError(ErrorCode.NO_SESSION, `no session ${JSON.stringify(b.session)} of ${id}`);
      // The rule's source is the master's public address as the relay sees it: the peer of
      // the session, never something the master claims.
      const peer = natSource(conn.remoteAddress);
      if (!peer.ok) throw new RemoteError(ErrorCode.BAD_REQUEST, peer.reason);
      return s.onsiteConn.request(Msg.NAT_REQUEST, { ...b, session: s.id, source: peer.source });
    });
  }

  private onGone(conn: Connection, why: ConnectionClosed): void {
    const peer = this.peers.get(conn);
    if (!peer) return;
    this.peers.delete(conn);
    for (const r of [...peer.routes.values()]) this.dropRoute(r, ResetCode.CANCEL, `${peer.id} disconnected`);
    for (const s of [...this.sessions.values()]) {
      if (s.masterConn === conn) this.closeSession(s, `master ${peer.id} disconnected: ${why.message}`, false);
      else if (s.onsiteConn === conn) this.closeSession(s, `onsite ${peer.id} went offline: ${why.message}`, false);
    }
    if (peer.role === "onsite") {
      const dev = this.devices.get(peer.id);
      if (dev && dev.conn === conn) {
        dev.conn = null;
        dev.lastSeen = Date.now();
        this.o.log.info(`onsite ${peer.id} disconnected: ${why.message}`);
      }
    } else if (this.masters.get(peer.id) === conn) {
      this.masters.delete(peer.id);
      this.o.log.info(`master ${peer.id} disconnected: ${why.message}`);
    }
  }

  // ---- inventory and sessions -------------------------------------------------------------

  deviceList(): DeviceInfo[] {
    const now = Date.now();
    return [...this.devices.values()]
      .map((d) => {
        const online = d.conn !== null && !d.conn.closed;
        const lastSeen = online ? Math.max(d.lastSeen, d.conn!.lastReceived) : d.lastSeen;
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
          last_seen: new Date(lastSeen).toISOString(),
          rtt_ms: online ? d.conn!.rtt : null,
        };
      })
      .sort((a, b) => a.id.localeCompare(b.id));
  }

  sessionList(): SessionInfo[] {
    return [...this.sessions.values()].map((s) => ({
      session: s.id,
      master: s.master,
      onsite: s.onsite,
      targets: [...s.targets],
      opened: new Date(s.opened).toISOString(),
      expires: s.expires ? new Date(s.expires).toISOString() : null,
    }));
  }

  private async openSession(masterConn: Connection, master: string, body: Record<string, unknown>): Promise<SessionInfo> {
    let req;
    try {
      req = parseSessionRequest(body);
    } catch (e) {
      throw new RemoteError(ErrorCode.BAD_REQUEST, (e as Error).message);
    }
    let mine = 0;
    for (const s of this.sessions.values()) if (s.master === master && s.id !== req.session) mine++;
    if (mine >= Limits.maxSessionsPerMaster) {
      throw new RemoteError(ErrorCode.REFUSED, `${master} already has ${mine} sessions (limit ${Limits.maxSessionsPerMaster}); end some with agent disconnect`);
    }
    const dev = this.devices.get(req.onsite);
    const decision = decidePairing(this.o.access(), master, req.onsite, { known: dev !== undefined, online: dev?.conn != null && !dev.conn.closed });
    if (!decision.ok) {
      if (decision.code === ErrorCode.FORBIDDEN) this.recordRefusal(masterConn.remoteAddress, master, decision.message);
      throw new RemoteError(decision.code, decision.message);
    }
    let id = req.session ?? newSessionId();
    const existing = this.sessions.get(id);
    if (existing) {
      if (existing.master !== master) throw new RemoteError(ErrorCode.BAD_REQUEST, `session id ${id} is taken`);
      this.closeSession(existing, "re-opened", false);
    }
    while (!req.session && this.sessions.has(id)) id = newSessionId();
    const onsiteConn = dev!.conn!;
    const expires = req.ttl ? Date.now() + req.ttl : null;
    try {
      await onsiteConn.request(Msg.SESSION_OFFER, { session: id, master, targets: req.targets, expires: expires ? new Date(expires).toISOString() : null });
    } catch (e) {
      if (e instanceof RemoteError) throw new RemoteError(e.code === ErrorCode.INTERNAL ? ErrorCode.REFUSED : e.code, `${req.onsite} refused the session: ${e.message}`);
      throw new RemoteError(ErrorCode.OFFLINE, `device ${req.onsite} went offline while opening the session`);
    }
    if (masterConn.closed || onsiteConn.closed) throw new RemoteError(ErrorCode.OFFLINE, "a side disconnected while opening the session");
    const s: Session = { id, master, onsite: req.onsite, masterConn, onsiteConn, targets: new Set(req.targets), opened: Date.now(), expires, timer: null, streams: 0 };
    if (req.ttl) s.timer = setTimeout(() => this.closeSession(s, `TTL of ${Math.round(req.ttl! / 1000)} s reached`, true), req.ttl);
    this.sessions.set(id, s);
    this.o.log.info(`session ${id}: ${master} → ${req.onsite} (${req.targets.join(", ")})${req.ttl ? `, TTL ${Math.round(req.ttl / 1000)} s` : ""}`);
    return this.sessionList().find((x) => x.session === id)!;
  }

  /** Ends a session: both sides hear why; its streams are reset. */
  closeSession(s: Session, reason: string, final: boolean): void {
    if (this.sessions.get(s.id) !== s) return;
    this.sessions.delete(s.id);
    if (s.timer) clearTimeout(s.timer);
    for (const conn of [s.masterConn, s.onsiteConn]) {
      const peer = this.peers.get(conn);
      if (peer) for (const r of [...peer.routes.values()]) if (r.session === s) this.dropRoute(r, ResetCode.NO_SESSION, `session ended: ${reason}`);
      if (!conn.closed) conn.send(Msg.SESSION_CLOSE, { session: s.id, reason, final });
    }
    this.o.log.info(`session ${s.id} closed: ${reason}`);
  }

  // ---- stream routing ---------------------------------------------------------------------

  private route(f: Frame, conn: Connection, presented: string): void {
    const peer = this.peers.get(conn);
    if (!peer) {
      this.refuse(conn, presented, "stream frames before HELLO", GoAwayCode.PROTOCOL);
      return;
    }
    if (f.type === FrameType.DATA && f.flags & Flag.SYN) {
      this.openRoute(conn, peer, f);
      return;
    }
    const r = peer.routes.get(f.stream);
    if (!r) return; // a stream that has just been reset; its late frames are harmless
    if (f.type === FrameType.DATA) {
      if (f.payload.length > r.credit) {
        this.dropRoute(r, ResetCode.PROTOCOL, `${peer.id} sent past its credit`);
        return;
      }
      r.credit -= f.payload.length;
      const fin = (f.flags & Flag.FIN) !== 0;
      r.peer.conn.writeFrame(FrameType.DATA, fin ? Flag.FIN : 0, r.peer.sid, f.payload);
      if (fin) {
        r.fin = true;
        if (r.peer.fin) this.forgetRoute(r);
      }
    } else if (f.type === FrameType.WINDOW) {
      // Credit for data flowing the other way (peer → this side).
      r.peer.credit += f.length;
      r.peer.conn.writeFrame(FrameType.WINDOW, f.flags & Flag.ACK, r.peer.sid, undefined, f.length);
    } else if (f.type === FrameType.RESET) {
      r.peer.conn.writeFrame(FrameType.RESET, 0, r.peer.sid, f.payload);
      this.forgetRoute(r);
    }
  }

  private openRoute(conn: Connection, peer: PeerState, f: Frame): void {
    const reset = (code: number, reason: string) => conn.writeFrame(FrameType.RESET, 0, f.stream, encodeReset(code, reason));
    if (peer.role !== "master") return reset(ResetCode.REFUSED, "only a master opens streams");
    if (peer.routes.has(f.stream) || f.stream % 2 !== 1) {
      this.refuse(conn, `${peer.id} (${peer.role})`, `bad stream id ${f.stream}`, GoAwayCode.PROTOCOL);
      return;
    }
    let open: Record<string, unknown>;
    try {
      const v = decodeJson(f.payload, "stream open header");
      if (typeof v !== "object" || v === null) throw new Error("stream open header is not an object");
      open = v as Record<string, unknown>;
    } catch (e) {
      return reset(ResetCode.PROTOCOL, (e as Error).message);
    }
    const s = typeof open.session === "string" ? this.sessions.get(open.session) : undefined;
    if (!s || s.masterConn !== conn) return reset(ResetCode.NO_SESSION, `no session ${JSON.stringify(open.session)}`);
    if (typeof open.target !== "string" || !s.targets.has(open.target)) return reset(ResetCode.REFUSED, `target ${JSON.stringify(open.target)} is not part of session ${s.id}`);
    const other = this.peers.get(s.onsiteConn);
    if (!other) return reset(ResetCode.NO_SESSION, "the onsite device is gone");
    const window = this.o.window ?? Limits.streamWindow;
    const limit = maxRoutedStreams(window);
    if (peer.routes.size >= limit || other.routes.size >= limit) return reset(ResetCode.REFUSED, `too many streams on one connection (limit ${limit})`);
    const sid = other.nextStreamId;
    other.nextStreamId += 2;
    const a: Route = { conn, sid: f.stream, session: s, credit: window, fin: false, peer: null as unknown as Route };
    const b: Route = { conn: s.onsiteConn, sid, session: s, credit: window, fin: false, peer: a };
    a.peer = b;
    peer.routes.set(f.stream, a);
    other.routes.set(sid, b);
    s.streams++;
    const fin = (f.flags & Flag.FIN) !== 0;
    s.onsiteConn.writeFrame(FrameType.DATA, Flag.SYN | (fin ? Flag.FIN : 0), sid, encodeJson({ session: s.id, target: open.target, master: s.master }));
    if (fin) a.fin = true;
  }

  private forgetRoute(r: Route): void {
    this.peers.get(r.conn)?.routes.delete(r.sid);
    this.peers.get(r.peer.conn)?.routes.delete(r.peer.sid);
  }

  private dropRoute(r: Route, code: number, reason: string): void {
    const payload = encodeReset(code, reason);
    r.conn.writeFrame(FrameType.RESET, 0, r.sid, payload);
    r.peer.conn.writeFrame(FrameType.RESET, 0, r.peer.sid, payload);
    this.forgetRoute(r);
  }

  // ---- revocation and shutdown ------------------------------------------------------------

  /** Closes live connections whose certificate serial is now revoked. */
  enforceRevocations(isRevoked: (serial: string) => boolean): number {
    let n = 0;
    for (const [conn, p] of [...this.peers, ...this.pendingHello]) {
      if (isRevoked(p.serial)) {
        n++;
        this.recordRefusal(conn.remoteAddress, `${p.id} (${p.role})`, `certificate ${p.serial} was revoked; closing its live connection`);
        conn.close(GoAwayCode.REVOKED, `certificate ${p.serial} of ${p.id} is revoked`);
      }
    }
    return n;
  }

  stats(): Record<string, number> {
    let routes = 0;
    for (const p of this.peers.values()) routes += p.routes.size;
    const online = [...this.devices.values()].filter((d) => d.conn && !d.conn.closed).length;
    return { onsite_online: online, onsite_known: this.devices.size, masters: this.masters.size, sessions: this.sessions.size, streams: routes / 2, pending_hello: this.pendingHello.size };
  }

  /** Tells everyone why, and waits (at most a second) for the GOAWAYs to leave. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of [...this.sessions.values()]) this.closeSession(s, "relay is shutting down", false);
    await Promise.all([...this.peers.keys(), ...this.pendingHello.keys()].map((c) => c.closeAndWait(GoAwayCode.SHUTDOWN, "relay is shutting down")));
  }
}
