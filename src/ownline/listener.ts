// The ownline listener: a TLS server (TLS 1.2 or 1.3, no client certificate, as ownline's
// Gen 1 service) that takes one message per connection from the known server's address,
// answers OK or FAIL and closes. A daemon Component (src/roles/daemon.ts) by shape.
//
// Bounds: a message larger than MAX_MESSAGE_BYTES, or not whole within read_timeout of the
// connection's start (TLS handshake included), gets FAIL; at most MAX_CONNECTIONS are open at
// once (more are cut at once). A peer other than known_server gets FAIL right after the
// handshake, and nothing it sends is read.
import { readFileSync, statSync } from "node:fs";
import type { Socket, TCPSocketListener } from "bun";
import type { OwnlineConfig } from "../config.ts";
import { RuntimeError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { formatHostPort, formatIPv4, parseIPv4 } from "../netaddr.ts";
import { systemClock, type Clock, type TimerHandle } from "../clock.ts";
import { answer, deriveKey, messageState, MAX_MESSAGE_BYTES, REPLY_FAIL, type OwnlineNat } from "./protocol.ts";

/** Connections open at once, for the known server and, apart, for all others. */
export const MAX_CONNECTIONS = 16;
/** How long a connection may stay open after its reply before it is cut. */
export const LINGER_MS = 2_000;
const TLS12 = 0x0303;

interface Conn {
  peer: string;
  buf: string;
  timer?: TimerHandle;
  /** Answered (or being answered): further bytes are ignored. */
  done: boolean;
  /** Which pool it is counted in until it closes: the known server's, or strangers'. */
  counted?: "known" | "stranger";
}

export interface OwnlineListenerOptions {
  config: OwnlineConfig;
  /** The device's certificate and key (PEM), used unless the config names cert_file/key_file. */
  tls: { certPem: string; keyPem: string };
  nat: OwnlineNat;
  log: Logger;
  clock?: Clock;
}

/** The peer's IPv4 address from Bun's remoteAddress (a dual-stack socket maps it). */
export function peerIPv4(remote: string): number | undefined {
  const v4 = remote.startsWith("::ffff:") ? remote.slice(7) : remote;
  try {
    return parseIPv4(v4);
  } catch {
    return undefined;
  }
}

/**
 * Reads a secret file: refused when missing, empty, or readable by group or others (the
 * `chmod` that fixes it is in the hint). One trailing newline (`echo … > file`) is not part
 * of the secret.
 */
export function readSecretFile(path: string, what: string): string {
  let mode: number;
  let text: string;
  try {
    mode = statSync(path).mode;
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new RuntimeError(`[ownline] ${what} ${path}: ${(e as Error).message}`, `write ownline's ${what.replace(/_file$/, "")} into it (mode 0600)`, { cause: e });
  }
  if ((mode & 0o077) !== 0) throw new RuntimeError(`[ownline] ${what} ${path} is readable by others (mode ${(mode & 0o777).toString(8).padStart(4, "0")})`, `chmod 600 ${path}`);
  const secret = text.replace(/\r?\n$/, "");
  if (secret.length === 0) throw new RuntimeError(`[ownline] ${what} ${path} is empty`, `write ownline's ${what.replace(/_file$/, "")} into it (mode 0600)`);
  return secret;
}

/** How often a line about strangers (a wrong source address, too many connections) is logged per address. */
export const STRANGER_LOG_EVERY_MS = 60_000;

/**
 * Refusals a stranger can cause at will are logged once per address per `everyMs`, the next
 * line saying how many were left out. Addresses tracked are bounded (the oldest forgotten).
 */
export class PeerLogLimiter {
  private readonly last = new Map<string, { at: number; quiet: number }>();
  constructor(
    private readonly clock: Clock,
    private readonly everyMs = STRANGER_LOG_EVERY_MS,
    private readonly maxPeers = 1024,
  ) {}

  /** undefined: stay quiet; else how many lines for `peer` were left out since the last one. */
  take(peer: string): number | undefined {
    const now = this.clock.now();
    const e = this.last.get(peer);
    if (e && now - e.at < this.everyMs) {
      e.quiet++;
      return undefined;
    }
    this.last.delete(peer);
    if (this.last.size >= this.maxPeers) this.last.delete(this.last.keys().next().value!);
    this.last.set(peer, { at: now, quiet: 0 });
    return e?.quiet ?? 0;
  }
}

const quietSuffix = (n: number) => (n > 0 ? ` (${n} more like it in the last minute not logged)` : "");

export class OwnlineListener {
  readonly name = "ownline";
  private listener: TCPSocketListener<Conn> | undefined;
  private unavailable: string | undefined = "not started";
  private readonly open = { known: 0, stranger: 0 };
  private readonly counts = { ok: 0, fail: 0, refused_peer: 0, cut: 0 };
  private readonly clock: Clock;
  private readonly known: number;
  private readonly strangers: PeerLogLimiter;

  constructor(private readonly o: OwnlineListenerOptions) {
    this.clock = o.clock ?? systemClock;
    this.known = o.config.known_server;
    this.strangers = new PeerLogLimiter(this.clock);
  }

  /** Starts listening. A problem (key file, port in use) is logged and shown in status; the daemon goes on. */
  start(): void {
    try {
      this.listen();
      this.unavailable = undefined;
    } catch (e) {
      const hint = (e as { hint?: string }).hint;
      this.unavailable = (e as Error).message + (hint ? `; fix: ${hint}` : "");
      this.o.log.error(`ownline listener unavailable: ${this.unavailable}`);
    }
  }

  private listen(): void {
    const cfg = this.o.config;
    const keys = { aes: deriveKey(readSecretFile(cfg.aes_key_file, "aes_key_file")), api: readSecretFile(cfg.api_key_file, "api_key_file") };
    const read = (p: string, what: string) => {
      try {
        return readFileSync(p, "utf8");
      } catch (e) {
        throw new RuntimeError(`[ownline] ${what} ${p}: ${(e as Error).message}`, "name a PEM file, or leave cert_file and key_file out to use the device's bundle", { cause: e });
      }
    };
    const cert = cfg.cert_file ? read(cfg.cert_file, "cert_file") : this.o.tls.certPem;
    const key = cfg.key_file ? read(cfg.key_file, "key_file") : this.o.tls.keyPem;
    const self = this;
    const log = this.o.log;
    const timeout = cfg.read_timeout;
    const finish = (s: Socket<Conn>, reply: string) => {
      s.data.done = true;
      this.clock.clearTimeout(s.data.timer);
      s.write(reply);
      s.end();
      // The peer closes its side after the reply; one that does not is cut, freeing its place.
      s.data.timer = this.clock.setTimeout(() => s.terminate(), LINGER_MS);
    };
    const respond = (s: Socket<Conn>) => {
      s.data.done = true;
      this.clock.clearTimeout(s.data.timer);
      void answer(s.data.buf, keys, this.o.nat).then((out) => {
        const fields = out.action ? { action: out.action } : {};
        if (out.reply === REPLY_FAIL) {
          this.counts.fail++;
          log.warn(`ownline: FAIL to ${s.data.peer}: ${out.detail}`, fields);
        } else {
          this.counts.ok++;
          log.info(`ownline: OK to ${s.data.peer}: ${out.detail}`, fields);
        }
        finish(s, out.reply);
      });
    };
    try {
      this.listener = Bun.listen<Conn>({
        hostname: cfg.listen.host,
        port: cfg.listen.port,
        tls: { cert, key, minVersion: TLS12 } as Bun.TLSOptions,
        // A client may shut down its sending side after the message: the reply still goes back.
        allowHalfOpen: true,
        data: { peer: "", buf: "", done: false },
        socket: {
          open(s) {
            s.data = { peer: s.remoteAddress, buf: "", done: false };
            // Strangers have a pool of their own: they cannot crowd out the known server.
            const pool = peerIPv4(s.data.peer) === self.known ? "known" : "stranger";
            if (self.open[pool] >= MAX_CONNECTIONS) {
              self.counts.cut++;
              const quiet = self.strangers.take(`cut ${s.data.peer}`);
              if (quiet !== undefined) log.warn(`ownline: cut a connection from ${s.data.peer}: ${MAX_CONNECTIONS} already open${quietSuffix(quiet)}`);
              s.terminate();
              return;
            }
            self.open[pool]++;
            s.data.counted = pool;
            s.data.timer = self.clock.setTimeout(() => {
              if (s.data.done) return;
              self.counts.fail++;
              log.warn(`ownline: FAIL to ${s.data.peer}: no whole message within ${timeout / 1000}s (${s.data.buf.length} bytes)`);
              finish(s, REPLY_FAIL);
            }, timeout);
          },
          handshake(s, success) {
            if (s.data.done || !s.data.counted) return;
            if (!success) {
              // No certificate is asked of the client, so this is a failed handshake.
              return;
            }
            if (peerIPv4(s.data.peer) !== self.known) {
              self.counts.refused_peer++;
              const quiet = self.strangers.take(s.data.peer);
              if (quiet !== undefined) log.warn(`ownline: FAIL to ${s.data.peer}: only the known server ${formatIPv4(self.known)} may send requests${quietSuffix(quiet)}`);
              finish(s, REPLY_FAIL);
            }
          },
          data(s, chunk) {
            if (s.data.done) return;
            if (peerIPv4(s.data.peer) !== self.known) return; // answered at the handshake
            s.data.buf += chunk.toString("latin1");
            if (s.data.buf.length > MAX_MESSAGE_BYTES) {
              self.counts.fail++;
              log.warn(`ownline: FAIL to ${s.data.peer}: message over ${MAX_MESSAGE_BYTES} bytes`);
              finish(s, REPLY_FAIL);
              return;
            }
            // An invalid message is answered at once (answer() says why); a partial one waits.
            if (messageState(s.data.buf) === "partial") return;
            respond(s);
          },
          end(s) {
            // The client sent all it will (upstream reads one recv() and no more): judge what came.
            if (!s.data.done && peerIPv4(s.data.peer) === self.known) respond(s);
          },
          close(s) {
            self.clock.clearTimeout(s.data?.timer);
            if (s.data?.counted) {
              self.open[s.data.counted]--;
              s.data.counted = undefined;
            }
          },
          error(s, err) {
            log.debug(`ownline connection from ${s.data?.peer}: ${err.message}`);
          },
        },
      });
    } catch (e) {
      throw new RuntimeError(`[ownline] cannot listen on ${formatHostPort(cfg.listen)}: ${(e as Error).message}`, "pick a free port in [ownline] listen", { cause: e });
    }
    log.info(`ownline listening on ${cfg.listen.host}:${this.listener.port} for ${formatIPv4(this.known)}`);
  }

  status(): Record<string, unknown> {
    if (this.unavailable) return { unavailable: this.unavailable };
    return { listen: `${this.o.config.listen.host}:${this.listener!.port}`, known_server: formatIPv4(this.known), open: this.open.known + this.open.stranger, ...this.counts };
  }

  close(): void {
    this.listener?.stop(true);
    this.listener = undefined;
    this.unavailable = "stopped";
  }
}
