// The proxy: each connection's life (JSON-RPC until authenticated, alone until its partner
// comes, then a raw byte pipe), its four timers on the injected clock, pairing through the
// pure PairingTable, and the counters the monitor and `agent status` show. It owns no
// listener: listen.ts hands it connections (NymeaConn), tests hand it in-memory ones.
import { randomUUID } from "node:crypto";
import type { Clock, TimerHandle } from "../../clock.ts";
import type { Authenticator } from "./auth.ts";
import { FailureLimiter, type LimiterPolicy } from "./limiter.ts";
import { PairingTable } from "./pairing.ts";
import {
  authenticateLine,
  errorLine,
  Framer,
  helloLine,
  introspectLine,
  KILL,
  parseRequest,
  parseUuid,
  tunnelEstablishedLine,
  type AuthError,
} from "./protocol.ts";

/**
 * Connections from one address that have not authenticated yet, at most. Upstream has no cap;
 * its inactive timer restarts on every chunk, so a client dripping a byte every few seconds
 * stays for hours: this bounds how many such one address can hold. Pairing lasts milliseconds,
 * so many apps behind one NAT stay far below it.
 */
export const MAX_UNAUTHENTICATED_PER_SOURCE = 64;

/** Upstream's defaults (ms). */
export const NYMEA_TIMEOUTS = { inactive: 8_000, alone: 8_000, authentication: 8_000, jsonrpc: 10_000 };
export type NymeaTimeouts = typeof NYMEA_TIMEOUTS;

/** One client connection, as a transport adapter (listen.ts) presents it. */
export interface NymeaConn {
  readonly transport: "tcp" | "ws";
  /** The peer's address (no port), for rate limiting and the monitor. */
  readonly address: string;
  /** A server message (pre-tunnel), written whole: TCP bytes, or one WS text frame. */
  send(line: string): void;
  /** Tunnel bytes from the partner. false: queued, stop the partner until `drain`. */
  forward(data: Uint8Array | string): boolean;
  /** Stop / restart reading from this connection (backpressure from the partner). */
  pause(): void;
  resume(): void;
  /** Close: TCP plainly, WS with 1011 and `reason`. Idempotent. */
  kill(reason: string): void;
}

/** What the adapter calls on the server for one connection. */
export interface NymeaConnEvents {
  /** Bytes from the client: TCP chunks as bytes, WS text messages as strings. */
  data(chunk: Uint8Array | string): void;
  /** The connection can take more (after forward() returned false). */
  drain(): void;
  /** The connection is gone (either side closed it). */
  closed(): void;
}

type State = "connected" | "authenticated" | "tunnel" | "dead";

const byteLength = (d: Uint8Array | string) => (typeof d === "string" ? Buffer.byteLength(d, "utf8") : d.byteLength);

class Client {
  readonly id = randomUUID();
  state: State = "connected";
  readonly framer = new Framer();
  readonly since: number;
  inactive: TimerHandle | null = null;
  alone: TimerHandle | null = null;
  rpc: TimerHandle | null = null;
  authAbort: AbortController | null = null;
  authenticating = false;
  name = "";
  uuid = "";
  userName = "";
  peer: Client | null = null;
  rx = 0;
  tx = 0;
  /** Our writes to the peer are waiting: the peer paused us. */
  pausedByPeer = false;
  constructor(readonly conn: NymeaConn, wall: number) {
    this.since = wall;
  }
}

export interface NymeaServerOptions {
  name: string;
  authenticator: () => Authenticator;
  clock: Clock;
  timeouts?: Partial<NymeaTimeouts>;
  limiter?: LimiterPolicy;
  /** Default MAX_UNAUTHENTICATED_PER_SOURCE. */
  maxUnauthenticatedPerSource?: number;
  log?: { info(m: string): void; debug(m: string): void; warn(m: string): void };
}

export interface NymeaStats {
  clients: number;
  authenticated: number;
  tunnels: number;
  total_clients: number;
  total_tunnels: number;
  /** Tunnel bytes carried, both directions. */
  total_traffic: number;
  refused_auth: number;
  rate_limited: number;
  /** Connections closed at once: their address already held too many unauthenticated ones. */
  over_source_cap: number;
  killed: Record<string, number>;
}

export class NymeaServer {
  private readonly clients = new Map<string, Client>();
  private readonly table = new PairingTable();
  private readonly limiter: FailureLimiter;
  private readonly timeouts: NymeaTimeouts;
  private notificationId = 0;
  private totalClients = 0;
  private totalTunnels = 0;
  private totalTraffic = 0;
  private refusedAuth = 0;
  private rateLimited = 0;
  private overSourceCap = 0;
  /** Unauthenticated connections per address. */
  private readonly unauthenticated = new Map<string, number>();
  private readonly killed: Record<string, number> = {};
  /** Tunnel start times (wall ms) by the first client's id. */
  private readonly tunnelSince = new Map<string, number>();

  constructor(private readonly opts: NymeaServerOptions) {
    this.timeouts = { ...NYMEA_TIMEOUTS, ...opts.timeouts };
    this.limiter = new FailureLimiter(opts.limiter);
  }

  get name(): string {
    return this.opts.name;
  }

  accept(conn: NymeaConn): NymeaConnEvents {
    const c = new Client(conn, this.opts.clock.wall());
    this.clients.set(c.id, c);
    this.totalClients++;
    const held = this.unauthenticated.get(conn.address) ?? 0;
    this.unauthenticated.set(conn.address, held + 1);
    if (held >= (this.opts.maxUnauthenticatedPerSource ?? MAX_UNAUTHENTICATED_PER_SOURCE)) {
      this.overSourceCap++;
      this.kill(c, KILL.sourceCap);
    } else this.armInactive(c);
    return {
      data: (chunk) => this.onData(c, chunk),
      drain: () => this.onDrain(c),
      closed: () => this.gone(c),
    };
  }

  private armInactive(c: Client): void {
    const clock = this.opts.clock;
    clock.clearTimeout(c.inactive);
    c.inactive = clock.setTimeout(() => this.kill(c, KILL.inactive), this.timeouts.inactive);
  }

  private onData(c: Client, chunk: Uint8Array | string): void {
    if (c.state === "dead") return;
    if (c.state === "tunnel") {
      const n = byteLength(chunk);
      c.rx += n;
      this.totalTraffic += n;
      const peer = c.peer!;
      peer.tx += n;
      if (!peer.conn.forward(chunk) && !c.pausedByPeer) {
        c.pausedByPeer = true;
        c.conn.pause();
      }
      return;
    }
    c.rx += byteLength(chunk);
    if (c.state === "authenticated") return this.kill(c, KILL.dataBeforeTunnel);
    this.armInactive(c);
    const bytes = typeof chunk === "string" ? Buffer.from(chunk, "utf8").toString("latin1") : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString("latin1");
    const packets = c.framer.push(bytes);
    if (packets === "violation") return this.kill(c, KILL.bufferViolation);
    for (const p of packets) {
      if (c.state !== "connected") {
        // A request after a successful Authenticate: data before the tunnel.
        if (c.state === "authenticated") this.kill(c, KILL.dataBeforeTunnel);
        return;
      }
      this.onPacket(c, p);
    }
  }

  private onPacket(c: Client, packet: string): void {
    const req = parseRequest(packet);
    switch (req.kind) {
      case "error":
        c.conn.send(req.line);
        return this.kill(c, KILL.rpcError);
      case "hello":
        return c.conn.send(helloLine(req.id, this.opts.name));
      case "introspect":
        return c.conn.send(introspectLine(req.id));
      case "authenticate":
        return void this.authenticate(c, req.id, req.params);
    }
  }

  private async authenticate(c: Client, id: number, p: { uuid: string; name: string; token: string; nonce: string }): Promise<void> {
    const clock = this.opts.clock;
    if (c.authenticating) {
      // Upstream would start a second authentication; one per connection is enough.
      c.conn.send(errorLine(id, "Authentication already in progress"));
      return this.kill(c, KILL.authFailed);
    }
    c.authenticating = true;
    c.name = p.name;
    c.uuid = parseUuid(p.uuid);
    c.rpc = clock.setTimeout(() => {
      c.conn.send(errorLine(id, "Command timed out"));
      this.kill(c, KILL.rpcTimeout);
    }, this.timeouts.jsonrpc);
    let outcome: AuthError;
    if (!this.limiter.allowed(c.conn.address, clock.now())) {
      this.rateLimited++;
      outcome = "AuthenticationErrorAuthenticationFailed";
    } else {
      outcome = await this.ask(c, p.token);
    }
    clock.clearTimeout(c.rpc);
    c.rpc = null;
    if (c.state !== "connected") return; // killed meanwhile (timeout, inactive, closed)
    if (outcome !== "AuthenticationErrorNoError") {
      if (outcome === "AuthenticationErrorAuthenticationFailed") this.limiter.failed(c.conn.address, clock.now());
      this.refusedAuth++;
      c.conn.send(authenticateLine(id, outcome));
      return this.kill(c, KILL.authFailed);
    }
    const auth = this.opts.authenticator();
    c.userName = auth.kind === "dummy" ? "dummy@example.com" : "";
    const decision = this.table.offer({ id: c.id, token: p.token, nonce: p.nonce, uuid: c.uuid });
    switch (decision.kind) {
      case "tunnel-exists":
        return this.kill(c, KILL.tunnelExists);
      case "duplicate-uuid": {
        const w = this.clients.get(decision.peer);
        if (w) this.kill(w, KILL.duplicateUuid);
        return this.kill(c, KILL.loop);
      }
      case "wait":
        clock.clearTimeout(c.inactive);
        c.inactive = null;
        this.leftUnauthenticated(c);
        c.state = "authenticated";
        c.conn.send(authenticateLine(id, outcome));
        c.alone = clock.setTimeout(() => this.kill(c, KILL.alone), this.timeouts.alone);
        return;
      case "pair": {
        const w = this.clients.get(decision.peer)!;
        clock.clearTimeout(c.inactive);
        clock.clearTimeout(w.alone);
        c.inactive = w.alone = null;
        this.leftUnauthenticated(c);
        c.state = w.state = "tunnel";
        c.peer = w;
        w.peer = c;
        this.totalTunnels++;
        this.tunnelSince.set(w.id, clock.wall());
        c.conn.send(authenticateLine(id, outcome));
        // Each learns who the other is; after this, nothing the relay writes is its own.
        w.conn.send(tunnelEstablishedLine(this.notificationId++, { name: c.name, uuid: c.uuid }));
        c.conn.send(tunnelEstablishedLine(this.notificationId++, { name: w.name, uuid: w.uuid }));
        this.opts.log?.debug(`nymea tunnel ${w.conn.address} (${w.name}) ↔ ${c.conn.address} (${c.name})`);
        return;
      }
    }
  }

  /** The authenticator's answer, or Timeout after authentication_timeout. */
  private ask(c: Client, token: string): Promise<AuthError> {
    const clock = this.opts.clock;
    const ac = new AbortController();
    c.authAbort = ac;
    return new Promise<AuthError>((resolve) => {
      const t = clock.setTimeout(() => {
        ac.abort();
        resolve("AuthenticationErrorTimeout");
      }, this.timeouts.authentication);
      let auth: Authenticator;
      try {
        auth = this.opts.authenticator();
      } catch {
        clock.clearTimeout(t);
        return resolve("AuthenticationErrorProxyError");
      }
      auth.authenticate({ token, address: c.conn.address }, ac.signal).then(
        (r) => {
          clock.clearTimeout(t);
          resolve(r);
        },
        () => {
          clock.clearTimeout(t);
          resolve(ac.signal.aborted ? "AuthenticationErrorTimeout" : "AuthenticationErrorProxyError");
        },
      );
    }).finally(() => {
      c.authAbort = null;
    });
  }

  private onDrain(c: Client): void {
    // c can take more: the partner that c paused may read again.
    const peer = c.peer;
    if (peer && peer.pausedByPeer && peer.state === "tunnel") {
      peer.pausedByPeer = false;
      peer.conn.resume();
    }
  }

  private kill(c: Client, reason: string): void {
    if (c.state === "dead") return;
    this.killed[reason] = (this.killed[reason] ?? 0) + 1;
    this.opts.log?.debug(`nymea client ${c.conn.address} (${c.conn.transport}) closed: ${reason}`);
    this.gone(c);
    c.conn.kill(reason);
  }

  private leftUnauthenticated(c: Client): void {
    const n = (this.unauthenticated.get(c.conn.address) ?? 1) - 1;
    if (n > 0) this.unauthenticated.set(c.conn.address, n);
    else this.unauthenticated.delete(c.conn.address);
  }

  /** Forgets `c` (closed by either side) and closes its tunnel partner. */
  private gone(c: Client): void {
    if (c.state === "dead") return;
    if (c.state === "connected") this.leftUnauthenticated(c);
    const clock = this.opts.clock;
    c.state = "dead";
    clock.clearTimeout(c.inactive);
    clock.clearTimeout(c.alone);
    clock.clearTimeout(c.rpc);
    c.authAbort?.abort();
    this.clients.delete(c.id);
    const peerId = this.table.remove(c.id);
    if (peerId) {
      this.tunnelSince.delete(peerId);
      this.tunnelSince.delete(c.id);
      const peer = this.clients.get(peerId);
      if (peer) this.kill(peer, KILL.partnerGone);
    }
  }

  stats(): NymeaStats {
    let authenticated = 0;
    for (const c of this.clients.values()) if (c.state === "authenticated") authenticated++;
    return {
      clients: this.clients.size,
      authenticated,
      tunnels: this.table.tunnelCount,
      total_clients: this.totalClients,
      total_tunnels: this.totalTunnels,
      total_traffic: this.totalTraffic,
      refused_auth: this.refusedAuth,
      rate_limited: this.rateLimited,
      over_source_cap: this.overSourceCap,
      killed: { ...this.killed },
    };
  }

  /** Upstream's monitor "proxyStatistic" document, without "troughput" (the monitor knows the last second). */
  statistic(): Record<string, unknown> {
    const clients = [...this.clients.values()].map((c) => ({
      address: c.conn.address,
      authenticated: c.state === "authenticated" || c.state === "tunnel",
      id: `{${c.id}}`,
      name: c.name,
      rxDataCount: c.rx,
      timestamp: Math.floor(c.since / 1000),
      tunnelConnected: c.state === "tunnel",
      txDataCount: c.tx,
      userName: c.userName,
      uuid: c.uuid,
    }));
    const tunnels = this.table.tunnelList().map(([a, b]) => ({
      clientOne: `{${a}}`,
      clientTwo: `{${b}}`,
      timestamp: Math.floor((this.tunnelSince.get(a) ?? this.opts.clock.wall()) / 1000),
    }));
    return {
      clientCount: this.clients.size,
      clients,
      total: { totalClientCount: this.totalClients, totalTunnelCount: this.totalTunnels, totalTraffic: this.totalTraffic },
      tunnelCount: this.table.tunnelCount,
      tunnels,
    };
  }

  get traffic(): number {
    return this.totalTraffic;
  }

  /** Closes every connection. */
  close(): void {
    for (const c of [...this.clients.values()]) this.kill(c, KILL.shutdown);
  }
}
