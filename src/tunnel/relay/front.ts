// The relay's connection front: what happens between "TLS says this certificate is fine" and
// "this is a device the relay serves". It caps unauthenticated connections (Admission), builds
// the Connection, holds it to the HELLO deadline, judges the HELLO (judgeHello, pure), refuses
// what it will not serve (logged with a bounded reason code) and closes connections whose
// certificate is revoked later. Past the HELLO it hands the connection to the relay's parts.
import { Connection, type ConnectionClosed, type Log } from "../../transport/mux.ts";
import type { Link } from "../../transport/link.ts";
import { GoAwayCode, type Frame } from "../../transport/frame.ts";
import { Msg, PROTOCOL_VERSIONS, decodeHello, msgName, MessageError, type HelloBody } from "../../transport/messages.ts";
import { Limits, Timing, relayKeepalive } from "../../transport/policy.ts";
import type { Clock, TimerHandle } from "../../clock.ts";
import { RefusalCode, refusal, type RefusalCodeId, type RefusalLog } from "./refusals.ts";
import { IdentityCount, MAX_CONNECTIONS_PER_IDENTITY, MAX_PENDING_HELLO } from "./admission.ts";
import { summaryText, type RefusalSummary, type RefusalThrottle } from "./refusal-throttle.ts";

/** What the TLS level established about the peer. */
export interface PeerCert {
  id: string;
  role: string;
  serial: string;
  /** When the certificate expires (the relay closes the connection then). */
  notAfter?: Date;
}

/** A value the peer sent, quoted for a log line and cut short. */
export function brief(v: unknown, quote = true): string {
  const text = quote ? (JSON.stringify(v) ?? String(v)) : String(v);
  return text.length > 80 ? `${text.slice(0, 80)}…` : text;
}

export type HelloVerdict = { ok: true; version: number; hello: HelloBody } | { ok: false; code: RefusalCodeId; reason: string };

/** Is this HELLO acceptable from a peer with this certificate? Pure. */
export function judgeHello(cert: PeerCert, body: unknown, versions: readonly number[] = PROTOCOL_VERSIONS): HelloVerdict {
  let hello: HelloBody;
  try {
    hello = decodeHello(body);
  } catch (e) {
    if (!(e instanceof MessageError)) throw e;
    return { ok: false, code: RefusalCode.PROTOCOL, reason: `HELLO: ${brief(e.message, false)}` };
  }
  const common = hello.versions.filter((v) => versions.includes(v));
  if (common.length === 0) {
    return { ok: false, code: RefusalCode.VERSION, reason: `no common protocol version (relay speaks ${versions.join(", ")}, peer offers ${brief(hello.versions.join(", ") || "none", false)})` };
  }
  if (hello.role !== cert.role) return { ok: false, code: RefusalCode.IDENTITY, reason: `HELLO says role ${brief(hello.role)} but the certificate of ${cert.id} is for role ${cert.role}` };
  if (hello.id !== cert.id) return { ok: false, code: RefusalCode.IDENTITY, reason: `HELLO says id ${brief(hello.id)} but the certificate is for ${cert.id}` };
  return { ok: true, version: Math.max(...common), hello };
}

/**
 * Connections that have not completed TLS + HELLO, in total and per source address: beyond the
 * caps the listener closes new ones at once (Limits.maxUnauthenticated*).
 */
export class Admission {
  private readonly bySource = new Map<string, number>();
  total = 0;

  constructor(private readonly caps: { total: number; perSource: number } = { total: Limits.maxUnauthenticated, perSource: Limits.maxUnauthenticatedPerSource }) {}

  admit(source: string): boolean {
    const n = this.bySource.get(source) ?? 0;
    if (this.total >= this.caps.total || n >= this.caps.perSource) return false;
    this.bySource.set(source, n + 1);
    this.total++;
    return true;
  }

  release(source: string): void {
    const n = this.bySource.get(source) ?? 0;
    if (n <= 1) this.bySource.delete(source);
    else this.bySource.set(source, n - 1);
    this.total = Math.max(0, this.total - 1);
  }
}

export interface FrontOptions {
  clock: Clock;
  log: Log;
  refusals: RefusalLog;
  helloDeadline: number;
  window: number;
  keepaliveInterval: number;
  keepaliveTimeout?: number;
  /** Closes a connection whose peer stops reading (Connection's writeStallTimeout; default Timing's). */
  writeStallTimeout?: number;
  /** A stream frame of a connection past its HELLO. */
  route(f: Frame, conn: Connection): void;
  /** The HELLO was good: register the peer and its handlers; answer with the WELCOME. */
  welcome(conn: Connection, cert: PeerCert, hello: HelloBody, version: number): void;
  /** A connection that had passed its HELLO has ended. */
  gone(conn: Connection, cert: PeerCert, why: ConnectionClosed): void;
  /** Issue 17: refusals beyond the first few per source a minute are counted, not logged one by one. */
  throttle?: RefusalThrottle;
  /** Issue 17: a connection past TLS stays counted as unauthenticated until its HELLO (false: over the caps, close it). */
  unauthenticated?: { hold(address: string): boolean; release(address: string): void };
  /** Connections waiting for their HELLO, and connections per identity (pending and live). */
  maxPending?: number;
  maxPerIdentity?: number;
}

export class Front {
  /** Authenticated at TLS, HELLO not yet seen; the certificate is kept so a revocation that
   * lands in between still closes them. */
  private readonly pending = new Map<Connection, PeerCert>();
  private readonly live = new Map<Connection, PeerCert>();
  private closed = false;
  private readonly identities: IdentityCount;

  constructor(private readonly o: FrontOptions) {
    this.identities = new IdentityCount(o.maxPerIdentity ?? MAX_CONNECTIONS_PER_IDENTITY);
  }

  /** A link whose certificate passed verifyPeer; the HELLO must follow within the deadline. */
  accept(link: Link, cert: PeerCert): Connection {
    // The refusal log names a peer the way the TLS level does ("CN (OU)"), whatever stage.
    const presented = `${cert.id} (${cert.role})`;
    const { clock } = this.o;
    const conn: Connection = new Connection(link, {
      side: "acceptor",
      log: this.o.log,
      window: this.o.window,
      keepaliveInterval: this.o.keepaliveInterval,
      keepaliveTimeout: this.o.keepaliveTimeout,
      writeStallTimeout: this.o.writeStallTimeout,
      clock,
      routeFrame: (f, c) => {
        if (this.live.has(c)) this.o.route(f, c);
        else this.refuse(c, presented, RefusalCode.PROTOCOL, "stream frames before HELLO");
      },
      onUnhandled: (type) => {
        if (!this.live.has(conn)) this.refuse(conn, presented, RefusalCode.PROTOCOL, `${msgName(type)} before HELLO`);
      },
      onProtocolError: (err) => this.record(conn.remoteAddress, presented, RefusalCode.PROTOCOL, `protocol error: ${err.message}`),
    });
    if (this.closed) {
      conn.close(GoAwayCode.SHUTDOWN, "relay is shutting down");
      return conn;
    }
    // Issue 17: the caps hold for connections with a valid certificate too, until their HELLO.
    if (this.pending.size >= (this.o.maxPending ?? MAX_PENDING_HELLO)) {
      this.refuse(conn, presented, RefusalCode.CAPACITY, `too many unauthenticated connections: ${this.pending.size} past TLS wait for their HELLO (the cap)`);
      return conn;
    }
    if (!this.identities.add(cert.id)) {
      this.refuse(conn, presented, RefusalCode.CAPACITY, `too many connections for ${cert.id}: ${this.identities.of(cert.id)} open (the cap per certificate identity)`);
      return conn;
    }
    const unauth = this.o.unauthenticated;
    let held = false;
    if (unauth) {
      held = unauth.hold(conn.remoteAddress);
      if (!held) {
        this.identities.remove(cert.id);
        this.refuse(conn, presented, RefusalCode.CAPACITY, "too many unauthenticated connections (waiting for their HELLO)");
        return conn;
      }
    }
    const unhold = () => {
      if (held) unauth?.release(conn.remoteAddress);
      held = false;
    };
    this.pending.set(conn, cert);
    const timer: TimerHandle = clock.setTimeout(() => {
      if (this.pending.has(conn)) this.refuse(conn, presented, RefusalCode.DEADLINE, `no HELLO within ${this.o.helloDeadline / 1000} s`);
    }, this.o.helloDeadline);
    conn.on(Msg.HELLO, (b) => {
      clock.clearTimeout(timer);
      unhold();
      this.onHello(conn, cert, b);
    });
    void conn.wait().then((why) => {
      clock.clearTimeout(timer);
      unhold();
      this.identities.remove(cert.id);
      this.pending.delete(conn);
      if (this.live.delete(conn)) this.o.gone(conn, cert, why);
    });
    return conn;
  }

  private onHello(conn: Connection, cert: PeerCert, body: unknown): void {
    if (!this.pending.has(conn)) {
      conn.close(GoAwayCode.PROTOCOL, "second HELLO");
      return;
    }
    const verdict = judgeHello(cert, body);
    if (!verdict.ok) {
      this.refuse(conn, `${cert.id} (${cert.role})`, verdict.code, verdict.reason);
      return;
    }
    this.pending.delete(conn);
    this.live.set(conn, cert);
    conn.peer = { id: cert.id, role: cert.role };
    // The device's keepalive request (a metered uplink's longer interval), within bounds, for
    // this connection's PINGs and dead-peer timeout, lean as the device PINGs itself; started
    // first so the WELCOME can say it.
    conn.startKeepalive(relayKeepalive(verdict.hello.keepalive, { interval: this.o.keepaliveInterval, timeout: this.o.keepaliveTimeout ?? Timing.keepaliveTimeout }));
    this.o.welcome(conn, cert, verdict.hello, verdict.version);
  }

  /** Writes a refusal to the logs (and the operator's log). */
  record(address: string, presented: string | null, code: RefusalCodeId, reason: string): void {
    const r = refusal(new Date(this.o.clock.wall()).toISOString(), address, presented, code, reason);
    if (!this.o.throttle || this.o.throttle.note(r, this.o.clock.now())) this.o.log.warn(`refused ${presented ?? "(no certificate)"} from ${address}: ${r.reason}`, { id: presented, address, code, reason: r.reason });
    this.o.refusals.record(r);
  }

  /** Logs and closes a connection the relay will not serve. */
  refuse(conn: Connection, presented: string, code: RefusalCodeId, reason: string): void {
    this.record(conn.remoteAddress, presented, code, reason);
    this.pending.delete(conn);
    conn.close(GoAwayCode.PROTOCOL, reason);
  }

  /** Closes live connections (and ones still before their HELLO) whose serial is now revoked. */
  enforceRevocations(isRevoked: (serial: string) => boolean): number {
    let n = 0;
    for (const [conn, p] of [...this.live, ...this.pending]) {
      if (isRevoked(p.serial)) {
        n++;
        this.record(conn.remoteAddress, `${p.id} (${p.role})`, RefusalCode.REVOKED, `certificate ${p.serial} was revoked; closing its live connection`);
        conn.close(GoAwayCode.REVOKED, `certificate ${p.serial} of ${p.id} is revoked`);
      }
    }
    return n;
  }

  /** Issue 17: the summary lines of refusals held back (one per source per minute); returns them for the audit file. */
  summarizeRefusals(): RefusalSummary[] {
    const t = this.o.throttle;
    if (!t) return [];
    const due = t.due(this.o.clock.now());
    for (const s of due) this.o.log.warn(summaryText(s, t.policy.perSource), { address: s.source, held: s.held, codes: s.codes });
    return due;
  }

  get pendingHello(): number {
    return this.pending.size;
  }

  /** Turns new connections away and closes every one (GOAWAY SHUTDOWN), waiting for them to leave. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.live.keys(), ...this.pending.keys()].map((c) => c.closeAndWait(GoAwayCode.SHUTDOWN, "relay is shutting down")));
  }
}
