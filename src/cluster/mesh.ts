// The relay-to-relay mesh (issue 16): a session whose master is on this relay and whose device
// is on another is carried one hop, over a mutually authenticated TLS link between the two
// relays. The link is a Connection like any device's, and each relay's Router treats it as one
// more peer: on the relay that dialed it the link stands for the device (streams go out on it
// with odd ids), on the relay that accepted it for the master (its streams come in on it). So
// every hop tracks each stream's credit itself and no hop buffers more than one window, and
// WINDOW frames travel end to end as between a master and a device on one relay.
//
// Links are directed: relay A's masters reach relay B's devices over the link A dialed to B;
// B's masters reach A's devices over the link B dialed to A. One link per ordered pair, dialled
// when a session first needs it, reused by every session after, redialled with backoff when it
// breaks, closed when the directory says the peer is gone. Messages on the link: HELLO/WELCOME
// (role "relay"), MESH_OPEN, SESSION_CLOSE both ways, TUNNEL_MODE and NAT_REQUEST (docs/protocol.md §9).
import type { TCPSocketListener } from "bun";
import { Connection, RemoteError, type Log } from "../transport/mux.ts";
import type { Link } from "../transport/link.ts";
import { GoAwayCode } from "../transport/frame.ts";
import { ErrorCode, Msg, PROTOCOL_VERSIONS, type SessionInfo } from "../transport/messages.ts";
import { handle, on, request, send } from "../transport/typed.ts";
import { Limits, Timing, backoffDelay } from "../transport/policy.ts";
import { dialTls, listenTls, type SocketLink, type TlsMaterial } from "../transport/tls.ts";
import { certificateIdentity, isRevoked, type RevocationList } from "../pki.ts";
import { parseHostPort } from "../netaddr.ts";
import type { TimerHandle } from "../clock.ts";
import type { Metrics } from "../metrics.ts";
import { Admission, judgeHello, type PeerCert } from "../tunnel/relay/front.ts";
import { RefusalCode } from "../tunnel/relay/refusals.ts";
import type { MeshHooks, RemoteEnd } from "../tunnel/relay/server.ts";
import { ClusterUnavailableError, type ClusterDirectory, type RelayNode } from "./directory.ts";

export interface MeshOptions {
  /** The relay's hooks for the mesh: `RelayServer.mesh`. */
  server: { readonly mesh: MeshHooks };
  directory: ClusterDirectory;
  /** HOST:PORT of this relay's mesh listener (`[cluster] mesh`); port 0 picks one (tests). */
  listen: string;
  /** This relay's certificate and key (role relay: serverAuth and clientAuth) and the fleet CA. */
  tls: TlsMaterial;
  /** The relay's revocation list, read at every handshake (a revoked relay is refused both ways). */
  revocations: () => RevocationList;
  log: Log;
  /** Software and version sent in the mesh HELLO. */
  agent?: string;
  /** Deadlines and keepalive of mesh links (ms); defaults: the device connections' own. */
  helloDeadline?: number;
  dialTimeout?: number;
  keepaliveInterval?: number;
  keepaliveTimeout?: number;
  /** How long a MESH_OPEN may take (the far relay offers the session to its device meanwhile). */
  openTimeout?: number;
  /** How long the directory may take to locate a device (ms, default 5 s). */
  locateTimeout?: number;
  /** Jitter of the redial backoff (tests pin it). */
  random?: () => number;
  /** Where the mesh's metric families go (the relay's registry: `server.metrics.registry`). */
  metrics?: Metrics;
}

/** The mesh as a daemon component: `startMesh(...)` binds and hooks in; `close()` undoes both. */
export interface Mesh {
  readonly name: "mesh";
  /** The port the mesh listener is bound to. */
  readonly port: number;
  start(): void;
  /** The revocation list changed (SIGHUP, the file): links of relays now revoked are closed. */
  reload(): void;
  close(): Promise<void>;
  status(): Record<string, unknown>;
  /** The live link this relay dialed to `node` (tests, status), if any. */
  linkTo(node: string): Connection | null;
}

const MESH_OPEN_TIMEOUT = 20_000;
/** How long the directory may take to say where a device is. */
const LOCATE_TIMEOUT = 5_000;
/**
 * Streams one mesh link routes at once: it carries the sessions of every device of the peer
 * that this relay's masters reach, so it gets the connection's whole stream budget rather than
 * a device's maxRoutedStreams, and a queue limit that one window per stream fits into.
 */
export const MESH_MAX_STREAMS = Limits.maxStreams;
const meshMaxQueued = (window: number) => MESH_MAX_STREAMS * window + 8 * 1024 * 1024;

/** One outbound link: to one peer relay, dialled when needed and again after it breaks. */
interface Outbound {
  node: RelayNode;
  conn: Connection | null;
  dialing: Promise<Connection> | null;
  attempt: number;
  timer: TimerHandle | null;
  /** Once the directory dropped the node or the mesh closed: no more redials. */
  done: boolean;
  lastError: string | null;
}

/** Binds the mesh listener, and makes the relay look for devices it does not hold on the other relays. */
export function startMesh(o: MeshOptions): Mesh {
  return new MeshNode(o);
}

class MeshNode implements Mesh {
  readonly name = "mesh";
  private readonly hooks: MeshHooks;
  private readonly listener: TCPSocketListener<unknown>;
  private readonly admission = new Admission();
  private readonly out = new Map<string, Outbound>();
  /** Links peers dialed to this relay, by peer id (a newer one replaces the older). */
  private readonly inbound = new Map<string, Connection>();
  private readonly pending = new Set<Connection>();
  /** The certificate serial of each live link's peer (both directions), for revocations. */
  private readonly serials = new Map<Connection, { id: string; serial: string }>();
  private readonly unsubscribe: () => void;
  private closed = false;
  /** Bytes of mesh links that are gone, by direction; dials that failed. */
  private readonly goneBytes = { in: 0, out: 0 };
  private dialFailures = 0;

  constructor(private readonly o: MeshOptions) {
    this.hooks = o.server.mesh;
    const hp = parseHostPort(o.listen, "the mesh listen address HOST:PORT", true);
    this.listener = listenMesh(o.listen, () => listenTls({
      hostname: hp.host,
      port: hp.port,
      tls: o.tls,
      clock: this.hooks.clock,
      trust: () => ({ revocations: o.revocations(), roles: ["relay"] }),
      accept: ({ link, verdict }) => this.accepted(link, verdict),
      refuse: (r) => this.hooks.record(r.address, r.presented, RefusalCode.MESH, `mesh port: ${meshReason(r.reason)}`),
      admit: (source) => this.admission.admit(source),
      release: (source) => this.admission.release(source),
    }) as TCPSocketListener<unknown>);
    this.hooks.setRemote({ route: (onsite) => this.route(onsite) });
    this.unsubscribe = o.directory.onNodes((nodes) => this.nodesChanged(nodes));
    if (o.metrics) this.registerMetrics(o.metrics);
  }

  private registerMetrics(m: Metrics): void {
    const links = () => {
      const out = [...this.out.values()].filter((l) => l.conn && !l.conn.closed).map((l) => l.conn!);
      return { out, in: [...this.inbound.values()] };
    };
    m.collect("agent_relay_mesh_links", "Live relay-to-relay mesh links, by who dialed (out: this relay).", "gauge", () => {
      const l = links();
      return [{ labels: { direction: "out" }, value: l.out.length }, { labels: { direction: "in" }, value: l.in.length }];
    }, { direction: ["in", "out"] });
    m.collect("agent_relay_mesh_bytes_total", "Bytes on relay-to-relay mesh links (frames included), by direction seen from this relay.", "counter", () => {
      const l = links();
      const live = [...l.out, ...l.in];
      return [
        { labels: { direction: "in" }, value: this.goneBytes.in + live.reduce((n, c) => n + c.bytesIn, 0) },
        { labels: { direction: "out" }, value: this.goneBytes.out + live.reduce((n, c) => n + c.bytesOut, 0) },
      ];
    }, { direction: ["in", "out"] });
    m.collect("agent_relay_mesh_dial_failures_total", "Dials of a mesh link that failed (TLS, certificate, handshake).", "counter", () => this.dialFailures);
  }

  get port(): number {
    return this.listener.port;
  }

  start(): void {}

  // ---- the dialing side: this relay's masters reach other relays' devices -----------------

  private async route(onsite: string): Promise<RemoteEnd | null> {
    let node: RelayNode | null;
    try {
      node = await this.locate(onsite);
    } catch (e) {
      // Whatever went wrong (the store unreachable, slow, or an answer it refused), the open is
      // refused as retryable: the master's resume tries again.
      const why = e instanceof ClusterUnavailableError ? e.message : `the cluster store failed: ${(e as Error).message}`;
      throw new RemoteError(ErrorCode.OFFLINE, `cannot look for device ${onsite} on the other relays: ${why}; sessions whose two ends this relay holds go on`);
    }
    if (!node || node.id === this.o.directory.self.id) return null;
    let conn: Connection;
    try {
      conn = await this.connect(node);
    } catch (e) {
      throw new RemoteError(ErrorCode.OFFLINE, `device ${onsite} is on relay ${node.id}, which this relay cannot reach over the mesh (${node.mesh}): ${(e as Error).message}`);
    }
    const timeout = this.o.openTimeout ?? MESH_OPEN_TIMEOUT;
    return {
      node: node.id,
      conn,
      offer: async (x) => {
        const body = { master: x.master, address: x.address, session: x.session, onsite: x.onsite, targets: x.targets, ttl: x.ttl, ...(x.tunnel ? { tunnel: x.tunnel } : {}), ...(x.udp ? { udp: x.udp } : {}) };
        return offerAnswer(await request(conn, Msg.MESH_OPEN, body, timeout));
      },
    };
  }

  /** The directory's answer, within the lookup deadline. */
  private locate(onsite: string): Promise<RelayNode | null> {
    const ms = this.o.locateTimeout ?? LOCATE_TIMEOUT;
    const clock = this.hooks.clock;
    let timer: TimerHandle | null = null;
    const late = new Promise<never>((_, reject) => (timer = clock.setTimeout(() => reject(new ClusterUnavailableError(`no answer within ${ms / 1000} s`)), ms)));
    return Promise.race([this.o.directory.locate(onsite), late]).finally(() => clock.clearTimeout(timer));
  }

  /** The live link to `node`, dialled now if there is none. */
  private connect(node: RelayNode): Promise<Connection> {
    if (this.closed) return Promise.reject(new Error("the mesh is shutting down"));
    let l = this.out.get(node.id);
    if (l && l.node.mesh !== node.mesh) {
      // The relay came back on another address: the old link goes.
      this.drop(l, `relay ${node.id} moved to ${node.mesh}`);
      l = undefined;
    }
    if (!l) {
      l = { node, conn: null, dialing: null, attempt: 0, timer: null, done: false, lastError: null };
      this.out.set(node.id, l);
    }
    if (l.conn && !l.conn.closed) return Promise.resolve(l.conn);
    if (l.dialing) return l.dialing;
    // A session needs it now: no waiting out a redial's backoff.
    this.hooks.clock.clearTimeout(l.timer);
    l.timer = null;
    return this.dial(l);
  }

  private dial(l: Outbound): Promise<Connection> {
    const p = this.handshake(l.node).then(
      (conn) => {
        l.dialing = null;
        if (l.done || this.closed) {
          conn.close(GoAwayCode.NORMAL, "the link is no longer needed");
          throw new Error(`relay ${l.node.id} left the cluster`);
        }
        l.conn = conn;
        l.attempt = 0;
        l.lastError = null;
        this.o.log.info(`mesh: link to relay ${l.node.id} at ${l.node.mesh} is up`, { node: l.node.id, mesh: l.node.mesh });
        void conn.wait().then((why) => {
          const reason = `mesh link to relay ${l.node.id} lost: ${why.message}`;
          this.hooks.gone(conn, reason);
          if (l.conn === conn) l.conn = null;
          if (l.done || this.closed) return;
          this.o.log.warn(`${reason}; dialling it again`, { node: l.node.id, reason: why.message });
          this.redial(l);
        });
        return conn;
      },
      (e: Error) => {
        l.dialing = null;
        this.dialFailures++;
        // Said once per cause, not at every redial of a streak.
        const repeated = l.lastError === e.message;
        l.lastError = e.message;
        if (!l.done && !this.closed) {
          if (!repeated) this.o.log.warn(`mesh: cannot reach relay ${l.node.id} at ${l.node.mesh}: ${e.message}; dialling again with backoff`, { node: l.node.id, reason: e.message });
          this.redial(l);
        }
        throw e;
      },
    );
    l.dialing = p;
    // Nobody may be waiting on a redial: its failure is logged above, not unhandled.
    p.catch(() => {});
    return p;
  }

  /** The link broke or a dial failed: again after the backoff, while the peer is in the directory. */
  private redial(l: Outbound): void {
    if (l.timer !== null || l.done || this.closed) return;
    const wait = backoffDelay(l.attempt++, this.o.random);
    l.timer = this.hooks.clock.setTimeout(() => {
      l.timer = null;
      if (l.done || this.closed || l.dialing || (l.conn && !l.conn.closed)) return;
      void this.dial(l).catch(() => {});
    }, wait);
  }

  /** TLS to the peer's mesh address, its certificate checked against the node id, HELLO, WELCOME. */
  private async handshake(node: RelayNode): Promise<Connection> {
    const hp = parseHostPort(node.mesh, "its mesh address HOST:PORT");
    const link = await dialTls({ host: hp.host, port: hp.port, tls: this.o.tls, timeout: this.o.dialTimeout, clock: this.hooks.clock });
    const judged = this.judgeDialed(link, node);
    if (typeof judged === "string") {
      link.destroy();
      throw new Error(judged);
    }
    const conn = this.connection(link, "dialer");
    const deadline = this.o.helloDeadline ?? Timing.helloDeadline;
    const welcome = new Promise<void>((resolve, reject) => {
      const timer = this.hooks.clock.setTimeout(() => reject(new Error(`no WELCOME within ${deadline / 1000} s`)), deadline);
      on(conn, Msg.WELCOME, () => {
        this.hooks.clock.clearTimeout(timer);
        resolve();
      });
      void conn.wait().then((why) => {
        this.hooks.clock.clearTimeout(timer);
        reject(new Error(`it closed the link: ${why.message}`));
      });
    });
    send(conn, Msg.HELLO, { versions: [...PROTOCOL_VERSIONS], role: "relay", id: this.o.directory.self.id, agent: this.o.agent ?? "" });
    try {
      await welcome;
    } catch (e) {
      conn.close(GoAwayCode.PROTOCOL, (e as Error).message);
      throw e;
    }
    conn.peer = { id: node.id, role: "relay" };
    this.track(conn, node.id, judged.serial, judged.notAfter);
    conn.startKeepalive();
    this.hooks.attach(conn, node.id, "onsite", MESH_MAX_STREAMS);
    // The far relay ended a session (its device went, a TTL, its operator): so does this one.
    on(conn, Msg.SESSION_CLOSE, (b) => this.hooks.end(conn, b.session, b.reason, b.final));
    return conn;
  }

  /** The dialed relay is the node the directory named, with a certificate that is not revoked. */
  private judgeDialed(link: SocketLink, node: RelayNode): string | { serial: string; notAfter: Date } {
    const raw = (link.socket.getPeerCertificate() as { raw?: Uint8Array } | undefined)?.raw;
    if (!raw) return "it presented no certificate";
    try {
      const ident = certificateIdentity(raw);
      if (ident.id !== node.id) return `the relay at ${node.mesh} is ${ident.id}, not ${node.id}`;
      if (isRevoked(this.o.revocations(), ident.serial)) return `its certificate ${ident.serial} is revoked`;
      return { serial: ident.serial, notAfter: ident.notAfter };
    } catch (e) {
      return `its certificate has no valid identity: ${(e as Error).message}`;
    }
  }

  /** A live link: its peer's serial for revocations, and closed when the peer's certificate expires. */
  private track(conn: Connection, id: string, serial: string, notAfter?: Date): void {
    this.serials.set(conn, { id, serial });
    const clock = this.hooks.clock;
    let timer: TimerHandle | null = null;
    const arm = () => {
      const left = notAfter!.getTime() - clock.wall();
      if (left > 0) {
        // Re-armed at most daily: the wall clock may step meanwhile, and setTimeout's range is ~24.8 days.
        timer = clock.setTimeout(arm, Math.min(left, 86_400_000));
        return;
      }
      const reason = `certificate ${serial} of relay ${id} expired at ${notAfter!.toISOString()}`;
      this.hooks.record(conn.remoteAddress, `${id} (relay)`, RefusalCode.CERTIFICATE, `${reason}; closing its mesh link`);
      conn.close(GoAwayCode.REVOKED, reason);
    };
    if (notAfter) arm();
    void conn.wait().then(() => {
      clock.clearTimeout(timer);
      this.serials.delete(conn);
      this.goneBytes.in += conn.bytesIn;
      this.goneBytes.out += conn.bytesOut;
    });
  }

  reload(): void {
    const list = this.o.revocations();
    for (const [conn, p] of [...this.serials]) {
      if (!isRevoked(list, p.serial)) continue;
      const reason = `certificate ${p.serial} of relay ${p.id} is revoked`;
      this.hooks.record(conn.remoteAddress, `${p.id} (relay)`, RefusalCode.REVOKED, `${reason}; closing its mesh link`);
      conn.close(GoAwayCode.REVOKED, reason);
    }
  }

  private connection(link: Link, side: "dialer" | "acceptor", live?: () => boolean): Connection {
    const presented = () => `${conn.peer?.id ?? "?"} (relay)`;
    const conn: Connection = new Connection(link, {
      side,
      log: this.o.log,
      window: this.hooks.window,
      clock: this.hooks.clock,
      keepaliveInterval: this.o.keepaliveInterval,
      keepaliveTimeout: this.o.keepaliveTimeout,
      maxQueued: meshMaxQueued(this.hooks.window),
      routeFrame: (f, c) => {
        if (!live || live()) this.hooks.route(f, c);
        else this.refuse(c, presented(), "stream frames before HELLO");
      },
      onUnhandled: (type) => {
        if (live && !live()) this.refuse(conn, presented(), `control message ${type} before HELLO`);
      },
      onProtocolError: (err) => this.hooks.record(conn.remoteAddress, presented(), RefusalCode.MESH, `mesh link: protocol error: ${err.message}`),
    });
    return conn;
  }

  private refuse(conn: Connection, presented: string, reason: string): void {
    this.hooks.record(conn.remoteAddress, presented, RefusalCode.MESH, `mesh port: ${reason}`);
    this.pending.delete(conn);
    conn.close(GoAwayCode.PROTOCOL, reason);
  }

  /** The directory's view of the live relays changed: links to relays no longer in it close. */
  private nodesChanged(nodes: RelayNode[]): void {
    const live = new Map(nodes.map((n) => [n.id, n]));
    for (const l of [...this.out.values()]) {
      const now = live.get(l.node.id);
      if (!now) this.drop(l, `relay ${l.node.id} left the cluster`);
      else if (now.mesh !== l.node.mesh) this.drop(l, `relay ${l.node.id} moved to ${now.mesh}`);
    }
    for (const [id, conn] of [...this.inbound]) if (!live.has(id)) conn.close(GoAwayCode.NORMAL, `relay ${id} left the cluster`);
  }

  private drop(l: Outbound, reason: string): void {
    l.done = true;
    this.hooks.clock.clearTimeout(l.timer);
    l.timer = null;
    if (this.out.get(l.node.id) === l) this.out.delete(l.node.id);
    if (l.conn && !l.conn.closed) {
      this.o.log.info(`mesh: closing the link to relay ${l.node.id}: ${reason}`, { node: l.node.id, reason });
      l.conn.close(GoAwayCode.NORMAL, reason);
    }
  }

  // ---- the accepting side: other relays' masters reach this relay's devices ---------------

  private accepted(link: Link, cert: PeerCert): void {
    if (this.closed) {
      link.destroy();
      return;
    }
    let welcomed = false;
    const conn = this.connection(link, "acceptor", () => welcomed);
    this.pending.add(conn);
    const presented = `${cert.id} (${cert.role})`;
    const deadline = this.o.helloDeadline ?? Timing.helloDeadline;
    const timer = this.hooks.clock.setTimeout(() => {
      if (!welcomed) this.refuse(conn, presented, `no HELLO within ${deadline / 1000} s`);
    }, deadline);
    conn.on(Msg.HELLO, (body) => {
      this.hooks.clock.clearTimeout(timer);
      if (welcomed || !this.pending.has(conn)) return this.refuse(conn, presented, "second HELLO");
      const verdict = judgeHello(cert, body);
      if (!verdict.ok) return this.refuse(conn, presented, verdict.reason);
      this.pending.delete(conn);
      welcomed = true;
      conn.peer = { id: cert.id, role: "relay" };
      this.track(conn, cert.id, cert.serial, cert.notAfter);
      this.welcome(conn, cert.id, verdict.version);
    });
    void conn.wait().then((why) => {
      this.hooks.clock.clearTimeout(timer);
      this.pending.delete(conn);
      if (!welcomed) return;
      this.hooks.gone(conn, `mesh link from relay ${cert.id} lost: ${why.message}`);
      if (this.inbound.get(cert.id) === conn) this.inbound.delete(cert.id);
    });
  }

  private welcome(conn: Connection, peer: string, version: number): void {
    const old = this.inbound.get(peer);
    if (old && !old.closed) old.close(GoAwayCode.REPLACED, `replaced by a new mesh link from relay ${peer} (${conn.remoteAddress})`);
    this.inbound.set(peer, conn);
    conn.startKeepalive();
    this.hooks.attach(conn, peer, "master", MESH_MAX_STREAMS);
    handle(conn, Msg.MESH_OPEN, (b) => {
      const { master, address, ...req } = b;
      return this.hooks.open(conn, master, req, { relay: peer, address });
    });
    on(conn, Msg.SESSION_CLOSE, (b) => this.hooks.end(conn, b.session, `ended on relay ${peer}: ${b.reason}`, b.final));
    handle(conn, Msg.TUNNEL_MODE, (b) => {
      const s = this.hooks.session(conn, b.session);
      if (!s) throw new RemoteError(ErrorCode.NO_SESSION, `no session ${JSON.stringify(b.session)} from relay ${peer}`);
      return this.hooks.switchTunnel(s, b);
    });
    handle(conn, Msg.NAT_REQUEST, (b) => {
      const s = this.hooks.session(conn, b.session);
      if (!s) throw new RemoteError(ErrorCode.NO_SESSION, `no session ${JSON.stringify(b.session)} from relay ${peer}`);
      return this.hooks.nat(s, b, peer);
    });
    send(conn, Msg.WELCOME, { version, relay: this.o.directory.self.id, address: conn.remoteAddress, keepalive: conn.keepalive?.interval ?? Timing.keepaliveInterval });
    this.o.log.info(`mesh: relay ${peer} linked in from ${conn.remoteAddress}`, { node: peer, address: conn.remoteAddress });
  }

  // ---- component ---------------------------------------------------------------------------

  linkTo(node: string): Connection | null {
    const c = this.out.get(node)?.conn;
    return c && !c.closed ? c : null;
  }

  status(): Record<string, unknown> {
    return {
      port: this.port,
      out: [...this.out.values()].map((l) => ({ node: l.node.id, mesh: l.node.mesh, up: !!l.conn && !l.conn.closed, ...(l.lastError ? { last_error: l.lastError } : {}) })),
      in: [...this.inbound.entries()].map(([node, c]) => ({ node, address: c.remoteAddress })),
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe();
    this.hooks.setRemote(null);
    this.listener.stop(true);
    const conns: Connection[] = [...this.inbound.values(), ...this.pending];
    for (const l of this.out.values()) {
      l.done = true;
      this.hooks.clock.clearTimeout(l.timer);
      if (l.conn) conns.push(l.conn);
    }
    this.out.clear();
    await Promise.all(conns.map((c) => c.closeAndWait(GoAwayCode.SHUTDOWN, "relay is shutting down")));
  }
}

function listenMesh(address: string, listen: () => TCPSocketListener<unknown>): TCPSocketListener<unknown> {
  try {
    return listen();
  } catch (e) {
    throw new Error(`cannot listen for the relay-to-relay mesh on ${address}: ${(e as Error).message}`, { cause: e });
  }
}

/** The far relay's SessionInfo as the device's offer answer would be (what openSession takes). Pure. */
export function offerAnswer(info: SessionInfo): { warnings?: string[]; tunnel?: { mode: "routed" | "bridged"; subnets: string[]; onsite: NonNullable<SessionInfo["tunnel"]>["onsite"] } } {
  const out: ReturnType<typeof offerAnswer> = {};
  if (info.warnings?.length) out.warnings = info.warnings;
  if (info.tunnel) out.tunnel = { mode: info.tunnel.mode, subnets: info.tunnel.subnets, onsite: info.tunnel.onsite };
  return out;
}

/** A refusal of the TLS level in the mesh's words: a device certificate is not "connecting as a device" here. Pure. */
export function meshReason(reason: string): string {
  const m = /^a (\S+) certificate cannot connect as a device/.exec(reason);
  return m ? `a ${m[1]} certificate (only relay certificates of this fleet may link in)` : reason;
}
