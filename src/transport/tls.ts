// TLS adapters: a Bun socket as a Link, the relay's listener (mutual TLS 1.3; the peer is
// judged by verifyPeer before a single byte is read or written), and the device's dialer
// (directly or through an HTTP CONNECT proxy).
import type { Socket, TCPSocketListener } from "bun";
import type { Link, LinkHandlers } from "./link.ts";
import { Timing } from "./policy.ts";
import { encodeFrame, encodeReset, FrameType } from "./frame.ts";
import { verifyPeer, type PeerVerdict, type TrustPolicy } from "./auth.ts";
import { certificateIdentity } from "../pki.ts";
import { systemClock, type Clock, type TimerHandle } from "../clock.ts";
import { listenError } from "./listen-error.ts";
import { X509Certificate } from "node:crypto";
import { buildTime } from "../version.ts";

/** TLS 1.3 as Bun wants it (a number: TLS1_3_VERSION). */
const TLS13 = 0x0304;
/**
 * Coalesce queued frame pieces into writes of at most this many bytes. Measured on the relay
 * path (interleaved A/B, `BENCH_PATHS=ours make bench B=transport`) when every batch was a
 * fresh allocation: relay CPU 2.90 s/GB at 16 KiB, 2.88–3.21 at 64 KiB, 3.08–3.73 at 256 KiB.
 * With one reused gather buffer (issue 18) it must hold a header and the largest payload, or
 * the 12-byte header of every full frame goes out as a write (a TLS record) of its own.
 */
const WRITE_BATCH = 128 * 1024;
/** Where small pieces are gathered for one write (see SocketLink.flush); reused, never kept. */
const gather = new Uint8Array(WRITE_BATCH);

export interface TlsMaterial {
  certPem: string;
  keyPem: string;
  caPem: string;
  /** An enrolled device's enroller certificate, sent after its own (leaf + enroller chain). */
  chainPem?: string;
}

interface SocketData {
  link: SocketLink | null;
  /** Called once the handshake is judged; null until then. */
  onHandshake?: (ok: boolean, err: Error | null) => void;
  /** Monotonic instant the socket opened (clock.now()). */
  opened: number;
  source: string;
  /** Counted against the unauthenticated-connection caps until verified or closed. */
  counted?: boolean;
}

export class SocketLink implements Link {
  private handlers: LinkHandlers | null = null;
  private queue: Uint8Array[] = [];
  queued = 0;
  private flushScheduled = false;
  private waitingDrain = false;
  private ended = false;
  private gone = false;
  private earlyData: Uint8Array[] = [];

  constructor(readonly socket: Socket<SocketData>, readonly remoteAddress: string) {
    socket.data.link = this;
    socket.setNoDelay(true);
  }

  setHandlers(h: LinkHandlers): void {
    this.handlers = h;
    for (const c of this.earlyData.splice(0)) h.data(c);
  }

  write(chunk: Uint8Array): void {
    if (this.gone || this.ended) return;
    this.queue.push(chunk);
    this.queued += chunk.length;
    if (!this.flushScheduled && !this.waitingDrain) {
      this.flushScheduled = true;
      queueMicrotask(() => {
        this.flushScheduled = false;
        this.flush();
      });
    }
  }

  private flush(): void {
    while (this.queue.length && !this.gone) {
      let buf: Uint8Array;
      let scratch = false;
      if (this.queue.length === 1 || this.queue[0]!.length >= WRITE_BATCH) {
        buf = this.queue.shift()!;
      } else {
        // Small pieces (a frame header and its payload, WINDOW frames) are gathered into one
        // buffer shared by every link, so they cost one write and no allocation: Bun's write
        // takes what it can synchronously and keeps no reference to it (the rest is copied
        // below before the buffer is reused).
        let size = 0;
        let n = 0;
        while (n < this.queue.length && size + this.queue[n]!.length <= WRITE_BATCH) size += this.queue[n++]!.length;
        let at = 0;
        for (let i = 0; i < n; i++) {
          const c = this.queue[i]!;
          gather.set(c, at);
          at += c.length;
        }
        this.queue.splice(0, n);
        buf = gather.subarray(0, size);
        scratch = true;
      }
      const written = this.socket.write(buf);
      if (written < 0) {
        this.queue = [];
        this.queued = 0;
        return;
      }
      this.queued -= written;
      if (written < buf.length) {
        this.queue.unshift(scratch ? buf.slice(written) : buf.subarray(written));
        this.waitingDrain = true;
        return;
      }
    }
    if (this.queue.length === 0 && this.ended && !this.gone) this.socket.end();
  }

  onSocketData(chunk: Uint8Array): void {
    if (this.handlers) this.handlers.data(chunk);
    else this.earlyData.push(chunk);
  }

  onSocketDrain(): void {
    this.waitingDrain = false;
    this.flush();
    if (!this.waitingDrain) this.handlers?.drain();
  }

  onSocketClose(err: Error | null): void {
    if (this.gone) return;
    this.gone = true;
    this.queue = [];
    this.queued = 0;
    this.handlers?.closed(err);
  }

  pause(): void {
    this.socket.pause();
  }
  resume(): void {
    this.socket.resume();
  }
  end(): void {
    if (this.ended || this.gone) return;
    this.ended = true;
    if (this.queue.length === 0 && !this.waitingDrain) this.socket.end();
    // A peer that never reads would keep the socket forever: give the flush a bound.
    setTimeout(() => {
      if (!this.gone) this.socket.terminate();
    }, 5_000).unref?.();
  }
  destroy(): void {
    if (this.gone) return;
    this.socket.terminate();
  }
}

/** The error Bun reports when the client closed the connection in the middle of the handshake. */
export function isPeerGone(err: Error | null | undefined): boolean {
  return /ECONNRESET|disconnected before secure TLS connection/i.test(err?.message ?? "") || (err as { code?: string } | null)?.code === "ECONNRESET";
}

// ---- listener (relay) -----------------------------------------------------------------------

export interface AcceptedPeer {
  /** A SocketLink from listenTls; a NodeTlsLink from listenTlsProxied (./tls-proxied.ts). */
  link: Link;
  verdict: Extract<PeerVerdict, { ok: true }>;
  /** From TCP accept to the verified certificate, on the listener's monotonic clock (metrics). */
  handshakeMs?: number;
}

export interface ListenOptions {
  hostname: string;
  port: number;
  tls: TlsMaterial;
  trust: () => TrustPolicy;
  /** A peer passed verification: hand its link to the relay (which expects a HELLO next). */
  accept(peer: AcceptedPeer): void;
  /** A peer was refused (bad certificate, deadline, cap): for the refusal log. */
  refuse(info: { address: string; reason: string; presented: string | null }): void;
  /** A peer closed before the handshake completed without presenting anything. */
  abandoned?(source: string): void;
  /** Connections admitted before authentication; false (or the reason, as a string) refuses the connection at once. */
  admit(source: string): boolean | string;
  /** Issue 17: the handshake deadline for a connection opening now (shorter while the relay is under pressure). */
  deadlineNow?: () => number;
  release(source: string): void;
  handshakeDeadline?: number;
  /** The handshake deadline runs on its timers; certificates are judged at its wall(). */
  clock?: Clock;
}

export function listenTls(opts: ListenOptions): TCPSocketListener<SocketData> {
  const deadline = opts.handshakeDeadline ?? Timing.handshakeDeadline;
  const clock = opts.clock ?? systemClock;
  try {
    return listenTlsSocket(opts, deadline, clock);
  } catch (e) {
    throw listenError(e, opts.hostname, opts.port);
  }
}

function listenTlsSocket(opts: ListenOptions, deadline: number, clock: Clock): TCPSocketListener<SocketData> {
  return Bun.listen<SocketData>({
    hostname: opts.hostname,
    port: opts.port,
    tls: {
      cert: opts.tls.certPem,
      key: opts.tls.keyPem,
      ca: opts.tls.caPem,
      requestCert: true,
      // We judge the certificate ourselves (verifyPeer) so the refusal can be logged with the
      // reason and the id the stranger presented; Bun completes the handshake either way.
      rejectUnauthorized: false,
      minVersion: TLS13,
    } as Bun.TLSOptions,
    data: { link: null, opened: 0, source: "" },
    socket: {
      open(socket) {
        const source = socket.remoteAddress;
        socket.data = { link: null, opened: clock.now(), source };
        const admitted = opts.admit(source);
        if (admitted !== true) {
          opts.refuse({ address: source, reason: typeof admitted === "string" ? admitted : "too many unauthenticated connections", presented: null });
          socket.terminate();
          return;
        }
        socket.data.counted = true;
        const within = opts.deadlineNow?.() ?? deadline;
        const timer = clock.setTimeout(() => {
          if (!socket.data.link) {
            opts.refuse({ address: source, reason: `no TLS handshake within ${within / 1000} s`, presented: null });
            socket.terminate();
          }
        }, within);
        socket.data.onHandshake = () => clock.clearTimeout(timer);
      },
      handshake(socket, success, authorizationError) {
        socket.data.onHandshake?.(success, authorizationError);
        socket.data.onHandshake = undefined;
        const cert = socket.getPeerCertificate() as { raw?: Uint8Array } | undefined;
        if (!success && !cert?.raw && isPeerGone(authorizationError)) {
          // The peer left before TLS was done and presented nothing: a TCP health check (the
          // uplink manager's probes connect to this port every second) or a dropped link.
          // Nothing was refused, so it is counted, not written to the refusal log.
          opts.abandoned?.(socket.data.source);
          socket.terminate();
          return;
        }
        const verdict = verifyPeer(
          { handshakeOk: success, authorized: socket.authorized, authorizationError: describeTlsError(authorizationError), peerDer: cert?.raw ?? null, protocol: socket.getTLSVersion() },
          opts.trust(),
          new Date(validityInstant(clock.wall(), buildTime()).at), // wall-clock time, never before the build
        );
        if (!verdict.ok) {
          opts.refuse({ address: socket.data.source, reason: verdict.reason, presented: verdict.presented });
          if (verdict.goaway !== undefined) {
            // The peer is one of ours (a revoked device): say why, then close once it is out.
            socket.end(encodeFrame(FrameType.GOAWAY, 0, 0, encodeReset(verdict.goaway, verdict.reason)));
            clock.setTimeout(() => socket.terminate(), 2_000); // a peer that never reads: gone anyway
            return;
          }
          socket.terminate();
          return;
        }
        socket.data.counted = false;
        opts.release(socket.data.source);
        const link = new SocketLink(socket, socket.data.source);
        opts.accept({ link, verdict, handshakeMs: clock.now() - socket.data.opened });
      },
      data(socket, chunk) {
        socket.data.link?.onSocketData(chunk);
      },
      drain(socket) {
        socket.data.link?.onSocketDrain();
      },
      close(socket, err) {
        if (socket.data.counted) opts.release(socket.data.source);
        socket.data.counted = false;
        socket.data.link?.onSocketClose(err ?? null);
      },
      error(socket, err) {
        socket.data.link?.onSocketClose(err);
      },
    },
  });
}

/** OpenSSL's code and text together ("EPROTO: ...:UNSUPPORTED_PROTOCOL"): the code alone can
 * be as vague as EPROTO, the text alone varies between paths. */
function describeTlsError(err: Error | null): string | null {
  if (!err) return null;
  const code = (err as Error & { code?: string }).code;
  if (!code || err.message === code || err.message.includes(code)) return err.message || code || null;
  return err.message ? `${code}: ${err.message}` : code;
}

// ---- dialer (onsite, master) ----------------------------------------------------------------

export interface DialOptions {
  host: string;
  port: number;
  tls: TlsMaterial;
  /** http://[user:pass@]host:port of an HTTP CONNECT proxy. */
  proxy?: URL;
  timeout?: number;
  /** The dial timeout runs on its timers. */
  clock?: Clock;
}

export class DialError extends Error {
  override name = "DialError";
}

/** Connects and completes TLS; verifies the relay's certificate (fleet CA, role relay). */
export async function dialTls(opts: DialOptions): Promise<SocketLink> {
  const timeout = opts.timeout ?? Timing.dialTimeout;
  const clock = opts.clock ?? systemClock;
  let timer: TimerHandle | undefined;
  let abandon: (() => void) | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = clock.setTimeout(() => {
      abandon?.();
      reject(new DialError(`no TLS connection to ${opts.host}:${opts.port} within ${timeout / 1000} s`));
    }, timeout);
  });
  try {
    return await Promise.race([dialInner(opts, (f) => (abandon = f)), deadline]);
  } finally {
    clock.clearTimeout(timer);
  }
}

function tlsClientOptions(opts: DialOptions): Bun.TLSOptions {
  const cert = opts.tls.chainPem ? `${opts.tls.certPem.trim()}\n${opts.tls.chainPem.trim()}\n` : opts.tls.certPem;
  return { cert, key: opts.tls.keyPem, ca: opts.tls.caPem, serverName: opts.host, minVersion: TLS13, rejectUnauthorized: false } as Bun.TLSOptions;
}

function dialInner(opts: DialOptions, setAbandon: (f: () => void) => void): Promise<SocketLink> {
  return new Promise<SocketLink>((resolve, reject) => {
    let settled = false;
    const fail = (e: Error) => {
      if (!settled) {
        settled = true;
        reject(e);
      }
    };
    const handlers = {
      handshake(socket: Socket<SocketData>, success: boolean, authorizationError: Error | null) {
        if (settled) {
          socket.terminate();
          return;
        }
        const problem = judgeRelay(socket, success, authorizationError, opts);
        if (problem) {
          fail(new DialError(problem));
          socket.terminate(); // after fail(): terminate runs the close handler at once
          return;
        }
        settled = true;
        resolve(new SocketLink(socket, `${opts.host}:${opts.port}`));
      },
      data(socket: Socket<SocketData>, chunk: Uint8Array) {
        socket.data.link?.onSocketData(chunk);
      },
      drain(socket: Socket<SocketData>) {
        socket.data.link?.onSocketDrain();
      },
      close(socket: Socket<SocketData>, err?: Error) {
        socket.data.link?.onSocketClose(err ?? null);
        fail(new DialError(`connection to ${opts.host}:${opts.port} closed during the TLS handshake${err ? `: ${err.message}` : ""}`));
      },
      error(socket: Socket<SocketData>, err: Error) {
        socket.data.link?.onSocketClose(err);
        fail(new DialError(`TLS to ${opts.host}:${opts.port}: ${err.message}`));
      },
      connectError(_socket: Socket<SocketData>, err: Error) {
        fail(new DialError(`cannot connect to ${opts.host}:${opts.port}: ${err.message}`));
      },
    };
    if (!opts.proxy) {
      Bun.connect<SocketData>({ hostname: opts.host, port: opts.port, tls: tlsClientOptions(opts), data: { link: null, opened: (opts.clock ?? systemClock).now(), source: "" }, socket: handlers })
        .then((s) => setAbandon(() => s.terminate()))
        .catch((e: Error) => fail(new DialError(`cannot connect to ${opts.host}:${opts.port}: ${e.message}`)));
      return;
    }
    connectThroughProxy(opts, handlers, fail, setAbandon);
  });
}

/** Checks the relay's certificate: trusted by the fleet CA, valid now, role relay, right name. */
function judgeRelay(socket: Socket<SocketData>, success: boolean, err: Error | null, opts: DialOptions): string | null {
  const host = opts.host;
  const cert = socket.getPeerCertificate() as { raw?: Uint8Array } | undefined;
  if (!success || !socket.authorized) {
    const mismatch = nameMismatch(socket, err, host);
    if (mismatch) return mismatch;
    // TLS judged the dates with the system clock, which on a device without an RTC may be
    // years behind: judge them again, never earlier than the build (everything else too,
    // since TLS stopped at the first error).
    const notYet = /NOT[ _]YET[ _]VALID/i.test(`${(err as { code?: string } | null)?.code ?? ""} ${err?.message ?? ""}`);
    if (!(success && notYet && cert?.raw)) {
      const why = err?.message ?? "handshake failed";
      return `the relay's certificate was refused (${why}); is ${host} a relay of this fleet, and is the bundle's CA the fleet's?`;
    }
    const again = verifyRelayChain(cert.raw, opts.tls.caPem, host, (opts.clock ?? systemClock).wall(), buildTime());
    if (again) return again;
  }
  if (!cert?.raw) return "the relay presented no certificate";
  try {
    const ident = certificateIdentity(cert.raw);
    if (ident.role !== "relay") return `the peer at ${host} has a ${ident.role} certificate (${ident.id}), not a relay's`;
  } catch (e) {
    return `the relay's certificate has no valid identity: ${(e as Error).message}`;
  }
  return null;
}

// ---- certificate validity without an RTC ----------------------------------------------------

/**
 * The instant certificates are judged at: the wall clock, but never earlier than the build
 * (a clock before the build is not set: a Pi boots in 1970 until NTP answers). Pure.
 */
export function validityInstant(wall: number, build: number | undefined): { at: number; clockNotSet: boolean } {
  return build !== undefined && wall < build ? { at: build, clockNotSet: true } : { at: wall, clockNotSet: false };
}

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");

/**
 * Why a certificate valid from `notBefore` to `notAfter` (epoch ms) is not valid at the
 * validity instant, or null. With the clock not set the reason says so, in words that do not
 * change from one dial to the next (the dialer logs a repeated error once). Pure.
 */
export function judgeCertTime(what: string, notBefore: number, notAfter: number, wall: number, build: number | undefined): string | null {
  const v = validityInstant(wall, build);
  if (v.at >= notBefore && v.at <= notAfter) return null;
  if (v.clockNotSet) {
    return `clock not set: this device's clock is earlier than this agent's build (${iso(build!)}), and ${what} is valid only from ${iso(notBefore)} to ${iso(notAfter)}; waiting for the clock (NTP) to be set`;
  }
  return v.at < notBefore ? `${what} is not yet valid (valid from ${iso(notBefore)}); is this device's clock right?` : `${what} expired on ${iso(notAfter)}`;
}

/**
 * The relay's certificate checked by hand, as TLS would with the validity instant for its
 * clock: issued and signed by the fleet CA, both valid at that instant, for `host`.
 */
export function verifyRelayChain(der: Uint8Array, caPem: string, host: string, wall: number, build: number | undefined): string | null {
  let leaf: X509Certificate;
  let ca: X509Certificate;
  try {
    leaf = new X509Certificate(der);
    ca = new X509Certificate(caPem);
  } catch (e) {
    return `the relay's certificate could not be read: ${(e as Error).message}`;
  }
  if (!leaf.checkIssued(ca) || !leaf.verify(ca.publicKey)) return `the relay's certificate was not issued by this fleet's CA; is ${host} a relay of this fleet?`;
  const named = /^\d+\.\d+\.\d+\.\d+$|:/.test(host) ? leaf.checkIP(host) : leaf.checkHost(host, { wildcards: false });
  if (!named) return `the relay's certificate is not for ${host}`;
  return (
    judgeCertTime("the fleet CA", Date.parse(ca.validFrom), Date.parse(ca.validTo), wall, build) ??
    judgeCertTime("the relay's certificate", Date.parse(leaf.validFrom), Date.parse(leaf.validTo), wall, build)
  );
}

/**
 * The refusal of a relay certificate that does not name the host dialed, in the words a user
 * can act on: the names it has (Node's text lists only those of the dialed kind) and the two
 * fixes. Null for any other refusal.
 */
function nameMismatch(socket: Socket<SocketData>, err: Error | null, host: string): string | null {
  const code = (err as { code?: string } | null)?.code;
  if (code !== "ERR_TLS_CERT_ALTNAME_INVALID" && !/does not match certificate's altnames/.test(err?.message ?? "")) return null;
  const cert = socket.getPeerCertificate() as { subjectaltname?: string } | undefined;
  const names = (cert?.subjectaltname ?? "")
    .split(/,\s*/)
    .filter((n) => /^(DNS|IP Address):/.test(n)) // not the agent:// identity URI
    .map((n) => n.replace(/^(DNS|IP Address):/, "").trim())
    .filter(Boolean);
  const has = names.length ? names.join(", ") : "no host names";
  const dialBy = names.length ? `dial it by a name it has (--relay ${names[0]}:PORT), or ` : "";
  return `the relay's certificate was refused (it is for ${has}, not ${host}); is ${host} a relay of this fleet? ${dialBy}issue the relay a certificate for ${host}: \`agent pki issue --role relay --host ${host} ...\` (--host repeats, one per name devices dial)`;
}

function connectThroughProxy(
  opts: DialOptions,
  tlsHandlers: Record<string, unknown>,
  fail: (e: Error) => void,
  setAbandon: (f: () => void) => void,
): void {
  const proxy = opts.proxy!;
  const proxyPort = Number(proxy.port || 80);
  let response = "";
  let upgraded = false;
  const target = `${opts.host.includes(":") ? `[${opts.host}]` : opts.host}:${opts.port}`;
  Bun.connect<SocketData>({
    hostname: proxy.hostname,
    port: proxyPort,
    data: { link: null, opened: (opts.clock ?? systemClock).now(), source: "" },
    socket: {
      open(socket) {
        let req = `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n`;
        if (proxy.username) {
          const cred = `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`;
          req += `Proxy-Authorization: Basic ${Buffer.from(cred).toString("base64")}\r\n`;
        }
        socket.write(req + "\r\n");
      },
      data(socket, chunk) {
        if (upgraded) return;
        response += Buffer.from(chunk).toString("latin1");
        if (response.length > 16 * 1024) {
          fail(new DialError(`proxy ${proxy.host} sent an oversized answer to CONNECT`));
          socket.terminate(); // after fail(): terminate runs the close handler at once
          return;
        }
        const end = response.indexOf("\r\n\r\n");
        if (end < 0) return;
        const status = /^HTTP\/1\.[01] (\d{3})([^\r\n]*)/.exec(response);
        if (!status || status[1] !== "200") {
          const line = response.slice(0, response.indexOf("\r\n"));
          fail(new DialError(status?.[1] === "407" ? `proxy ${proxy.host} wants authentication (${line}); give it as http://user:pass@host:port` : `proxy ${proxy.host} refused CONNECT ${target}: ${line}`));
          socket.terminate();
          return;
        }
        if (end + 4 < response.length) {
          fail(new DialError(`proxy ${proxy.host} sent data before the TLS handshake`));
          socket.terminate(); // after fail(): terminate runs the close handler at once
          return;
        }
        upgraded = true;
        const [, tls] = socket.upgradeTLS<SocketData>({ tls: tlsClientOptions(opts), data: { link: null, opened: (opts.clock ?? systemClock).now(), source: "" }, socket: tlsHandlers as never });
        setAbandon(() => tls.terminate());
      },
      close() {
        if (!upgraded) fail(new DialError(`proxy ${proxy.host} closed the connection before answering CONNECT`));
      },
      error(_s, err) {
        if (!upgraded) fail(new DialError(`proxy ${proxy.host}: ${err.message}`));
      },
      connectError(_s, err) {
        fail(new DialError(`cannot connect to proxy ${proxy.host}: ${err.message}`));
      },
    },
  })
    .then((s) => setAbandon(() => s.terminate()))
    .catch((e: Error) => fail(new DialError(`cannot connect to proxy ${proxy.host}: ${e.message}`)));
}
