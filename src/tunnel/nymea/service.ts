// The nymea proxy as one part of the relay: the authenticator [nymea] names, the server, its
// listeners (each optional; one that cannot bind is reported and the others run, as upstream),
// the monitor socket, SIGHUP (tokens file), status counters. roles/relay.ts only starts it.
import { readFileSync } from "node:fs";
import type { Server, TCPSocketListener } from "bun";
import type { Clock } from "../../clock.ts";
import type { NymeaConfig } from "../../config.ts";
import type { Logger } from "../../log.ts";
import { formatHostPort } from "../../netaddr.ts";
import { explainListenError } from "../../transport/listen-error.ts";
import { DummyAuthenticator, HttpAuthenticator, TokensFileAuthenticator, type Authenticator } from "./auth.ts";
import { listenNymeaTcp, listenNymeaWs, type NymeaTls } from "./listen.ts";
import { NymeaMonitor } from "./monitor.ts";
import { NymeaServer } from "./server.ts";

export class NymeaService {
  readonly server: NymeaServer;
  private readonly auth: Authenticator;
  private tcp: TCPSocketListener<unknown> | null = null;
  private ws: Server<unknown> | null = null;
  private monitor: NymeaMonitor | null = null;
  private readonly errors: Record<string, string> = {};

  constructor(private readonly cfg: NymeaConfig, private readonly relayTls: NymeaTls, private readonly log: Logger, private readonly clock: Clock) {
    this.auth = cfg.dummy ? new DummyAuthenticator() : cfg.authorizer ? new HttpAuthenticator(cfg.authorizer.href, (w) => log.warn(w)) : new TokensFileAuthenticator(cfg.tokens!);
    this.server = new NymeaServer({
      name: cfg.name,
      authenticator: () => this.auth,
      clock,
      log,
      timeouts: { inactive: cfg.inactive_timeout, alone: cfg.alone_timeout, authentication: cfg.authentication_timeout, jsonrpc: cfg.jsonrpc_timeout },
    });
  }

  private tls(): NymeaTls | undefined {
    if (this.cfg.plain) return undefined;
    if (this.cfg.certificate === undefined) return this.relayTls;
    const read = (what: string, p: string) => {
      try {
        return readFileSync(p, "utf8");
      } catch (e) {
        throw new Error(`cannot read the nymea ${what} ${p}: ${(e as Error).message}`, { cause: e });
      }
    };
    return { cert: read("certificate", this.cfg.certificate), key: read("key", this.cfg.key!) };
  }

  start(): void {
    const tls = this.tls();
    const what = tls ? "TLS" : "plain";
    if (this.auth.kind === "dummy") this.log.warn("nymea: dummy authenticator: every token is accepted (loopback only)");
    if (this.auth instanceof TokensFileAuthenticator) this.log.info(`nymea: ${this.auth.count} token(s) from ${this.auth.path}`);
    if (this.cfg.tcp) {
      const { host, port } = this.cfg.tcp;
      try {
        this.tcp = listenNymeaTcp({ hostname: host, port, tls, server: this.server }) as TCPSocketListener<unknown>;
        this.log.info(`nymea: ${what} TCP on ${host}:${this.tcp.port}`);
      } catch (e) {
        this.errors.tcp = explainListenError(e, host, port);
        this.log.error(`nymea: cannot listen on ${formatHostPort(this.cfg.tcp)} (TCP): ${this.errors.tcp}; the other transports run`);
      }
    }
    if (this.cfg.ws) {
      const { host, port } = this.cfg.ws;
      try {
        this.ws = listenNymeaWs({ hostname: host, port, tls, server: this.server }) as Server<unknown>;
        this.log.info(`nymea: ${what} WebSocket on ${host}:${this.ws.port}`);
      } catch (e) {
        this.errors.ws = explainListenError(e, host, port);
        this.log.error(`nymea: cannot listen on ${formatHostPort(this.cfg.ws)} (WebSocket): ${this.errors.ws}; the other transports run`);
      }
    }
    if (this.cfg.monitor) {
      try {
        this.monitor = new NymeaMonitor(this.cfg.monitor, this.server, this.clock);
        this.monitor.start();
      } catch (e) {
        this.monitor = null;
        this.errors.monitor = (e as Error).message;
        this.log.error(`nymea: cannot open the monitor socket ${this.cfg.monitor}: ${this.errors.monitor}`);
      }
    }
  }

  /** SIGHUP: the tokens file again (a bad read keeps the old tokens). */
  reload(): void {
    if (!(this.auth instanceof TokensFileAuthenticator)) return;
    try {
      const n = this.auth.reload();
      this.log.info(`SIGHUP: nymea tokens ${this.auth.path}: ${n} token(s)`);
    } catch (e) {
      this.log.error(`SIGHUP: ${(e as Error).message}; keeping the previous tokens`);
    }
  }

  status(): Record<string, unknown> {
    const addr = (hp: { host: string } | undefined, port: number | undefined) => (hp && port !== undefined ? `${hp.host}:${port}` : null);
    return {
      tcp: addr(this.cfg.tcp, this.tcp?.port),
      ws: addr(this.cfg.ws, this.ws?.port),
      tls: !this.cfg.plain,
      monitor: this.monitor ? this.cfg.monitor : null,
      monitors: this.monitor?.count ?? 0,
      authenticator: this.auth.kind,
      ...(Object.keys(this.errors).length ? { errors: { ...this.errors } } : {}),
      ...this.server.stats(),
    };
  }

  close(): void {
    this.monitor?.close();
    this.monitor = null;
    this.server.close();
    this.tcp?.stop(true);
    this.tcp = null;
    this.ws?.stop(true);
    this.ws = null;
  }
}
