// The master side of sessions: local port forwards (like `ssh -L`) carried as streams through
// the relay to a LAN target behind an onsite device. A session outlives a lost relay
// connection or a briefly offline device: it goes "resuming" and is re-opened with the same
// id when both are back, until its TTL or the resume window runs out.
//
// Data path: a ForwardListener (tcp.ts) hands each local connection over as a Duplex; it is
// piped (pipe.ts) to a stream opened on the relay connection. When a session changes state is
// decided by master-session.ts; this file runs those decisions on its clock and timers.
import { systemClock, wallOf, type Clock, type TimerHandle } from "../clock.ts";
import { RemoteError, type Connection, type Log } from "../transport/mux.ts";
import { ErrorCode, Msg, type SessionInfo } from "../transport/messages.ts";
import { on, request } from "../transport/typed.ts";
import { formatHostPort, parseHostPort, parseIPv4, parsePort } from "../netaddr.ts";
import type { Duplex, ForwardListener, ListeningPort } from "./duplex.ts";
import { carriesConnections, decide, opening, type SessionAction, type SessionEvent, type SessionState } from "./master-session.ts";
import { Pipe, streamDuplex } from "./pipe.ts";
import { tcpListener } from "./tcp.ts";
import type { Cidr } from "../netaddr.ts";
import { MasterTunnel, type TunnelView } from "./master-tunnel.ts";
import { allocateAddressing } from "./packet/addressing.ts";
import { TunnelRefused, type MasterTunnelHost, type TunnelAddressing, type TunnelMode } from "./packet/device.ts";
import { refusingMasterHost } from "./packet/refusing.ts";
import type { SessionOpenBody } from "../transport/messages.ts";
import { MasterUdpForward, type UdpForwardSpec } from "./udp.ts";

export interface ForwardSpec {
  bind: string;
  port: number; // 0: chosen by the system
  target: string; // HOST:PORT on the onsite LAN
}

/**
 * Parses `[BIND:]LPORT:HOST:PORT` (pure). HOST is an IPv4 address or a host name, which the
 * onsite device resolves (as `ssh -L` does on its far side) and judges by the address it
 * gets. IPv6 is not supported yet, and is refused by name.
 */
export function parseForward(text: string): ForwardSpec {
  const bad = (why: string) =>
    new Error(`--forward ${JSON.stringify(text)}: ${why}; expected [BIND:]LPORT:HOST:PORT such as 8080:192.168.1.50:80 or 8080:printer.lan:80 (HOST: an IPv4 address, or a host name the onsite device resolves)`);
  if (text.includes("[") || text.includes("]") || text.split(":").length > 4) throw bad("IPv6 addresses are not supported yet");
  return parseForwardFields(text, bad, "");
}

/**
 * The `[BIND:]LPORT:HOST:PORT` fields of a TCP or UDP forward (pure), after the caller's own
 * IPv6 check; `bad` makes the caller's error, `after` names what the fields follow ("udp:").
 */
export function parseForwardFields(fields: string, bad: (why: string) => Error, after: string): ForwardSpec {
  const parts = fields.split(":");
  if (parts.length !== 3 && parts.length !== 4) throw bad(`${parts.length} field${parts.length === 1 ? "" : "s"}${after} where 3 or 4 are expected`);
  const [bind, lport, host, port] = parts.length === 4 ? (parts as [string, string, string, string]) : (["127.0.0.1", ...parts] as [string, string, string, string]);
  try {
    parseIPv4(bind);
  } catch {
    throw bad(`bind address ${JSON.stringify(bind)} is not an IPv4 address`);
  }
  let lp = 0;
  if (lport !== "0") {
    try {
      lp = parsePort(lport);
    } catch (e) {
      throw bad(`local port: ${(e as Error).message}`);
    }
  }
  let target;
  try {
    target = parseHostPort(`${host}:${port}`, "a target HOST:PORT");
  } catch (e) {
    throw bad((e as Error).message);
  }
  return { bind, port: lp, target: formatHostPort(target) };
}

interface Forward {
  spec: ForwardSpec;
  listener: ListeningPort;
  port: number;
  connections: number;
  active: number;
  /** Connections whose stream failed to open (the target refused, did not answer, …). */
  errors: number;
  lastError: string | null;
}

interface MasterSession {
  id: string;
  onsite: string;
  forwards: Forward[];
  /** Monotonic ms. */
  opened: number;
  st: SessionState;
  retryTimer: TimerHandle | null;
  expiryTimer: TimerHandle | null;
  /** What the onsite device said of the targets when the session was (re)offered. */
  warnings: string[];
  /** The session's packet tunnel, if it has one. */
  tunnel: MasterTunnel | null;
  /** UDP forwards, each with its packet stream. */
  udp: MasterUdpForward[];
}

/** What a session carries besides TCP forwards. */
export interface ConnectExtras {
  tunnel?: TunnelMode;
  /** The address the request came from (an SSH client), for the bridged-mode safety rule. */
  requester?: string;
  /** UDP forwards (`udp:[BIND:]LPORT:HOST:PORT`). */
  udp?: UdpForwardSpec[];
}

export interface SessionView {
  session: string;
  onsite: string;
  state: "active" | "resuming" | "closed";
  since: string;
  reason: string;
  opened: string;
  expires: string | null;
  /** What the onsite device found checking the targets at the offer (a target that refuses…). */
  warnings?: string[];
  /** `errors`: connections whose stream could not be opened; `last_error`: the latest reason. */
  /** UDP forwards have `proto: "udp"`; their `connections` are flows (client addresses), `active` the live ones. */
  forwards: { bind: string; port: number; target: string; connections: number; active: number; errors?: number; last_error?: string | null; proto?: "udp"; datagrams_out?: number; datagrams_in?: number; dropped?: number }[];
  /** The packet tunnel: mode, both ends' interfaces, addresses and routes, packets, drops. */
  tunnel?: TunnelView;
}

export interface MasterSessionsOptions {
  log: Log;
  /** The live relay connection, or null. */
  relay: () => Connection | null;
  relayState: () => string;
  /** Where the forwards listen; default: local TCP ports. */
  listener?: ForwardListener;
  /** TTL and resume timers (monotonic); default: the system clock. */
  clock?: Clock;
  /** Where tunnel ends are made; default: a host that refuses (no TUN/TAP support composed in). */
  tunnelHost?: MasterTunnelHost;
  /** `[tunnel] pool`: each routed tunnel gets a /30 of it. */
  tunnelPool?: Cidr;
  /** A session changed phase (opening → active, active → resuming → active, → closed): the master's events (issue 15). */
  onPhase?: (view: SessionView, from: string, to: string) => void;
}

/** Closed sessions stay listed this long, so `agent sessions` can say why they ended. */
const KEEP_CLOSED_MS = 10 * 60_000;

export class MasterSessions {
  private readonly sessions = new Map<string, MasterSession>();
  private readonly clock: Clock;
  private readonly listener: ForwardListener;
  private readonly tunnelHost: MasterTunnelHost;

  constructor(private readonly o: MasterSessionsOptions) {
    this.clock = o.clock ?? systemClock;
    this.listener = o.listener ?? tcpListener;
    this.tunnelHost = o.tunnelHost ?? refusingMasterHost();
  }

  /** A /30 of the pool that no other live tunnel holds. */
  private allocate(): TunnelAddressing {
    const pool = this.o.tunnelPool ?? { network: 0x0a630000, prefix: 16 };
    const used = [...this.sessions.values()].filter((x) => x.st.phase !== "closed" && x.tunnel?.addressing).map((x) => x.tunnel!.addressing!);
    const a = allocateAddressing(pool, used);
    if (!a.ok) throw new RemoteError(ErrorCode.REFUSED, a.reason);
    return a.addressing;
  }

  /** The SESSION_OPEN body of a session (new or resuming). */
  private openBody(s: MasterSession, ttl: number | null, session: string | null): SessionOpenBody {
    const body: SessionOpenBody = { onsite: s.onsite, targets: s.forwards.map((f) => f.spec.target), ttl, session };
    if (s.tunnel) body.tunnel = { mode: s.tunnel.mode, ...(s.tunnel.mode === "routed" && s.tunnel.addressing ? { addressing: s.tunnel.addressing } : {}) };
    if (s.udp.length) body.udp = s.udp.map((u) => u.spec.target);
    return body;
  }

  /** Each UDP forward's packet stream, on a fresh (or resumed) session. */
  private openUdpStreams(s: MasterSession, conn: Connection): void {
    for (const u of s.udp) {
      try {
        u.attach(conn.openStream({ session: s.id, packet: "udp", target: u.spec.target }));
      } catch (e) {
        this.o.log.warn(`session ${s.id}: UDP forward to ${u.spec.target}: ${(e as Error).message}`);
      }
    }
  }

  setup(conn: Connection): void {
    on(conn, Msg.SESSION_CLOSE, (b) => {
      const s = this.sessions.get(b.session);
      if (!s) return;
      const reason = b.reason || "closed by the relay";
      this.apply(s, b.final ? { kind: "ended", reason } : { kind: "interrupted", reason });
    });
  }

  /** The relay connection is (back) up: re-open what was interrupted. */
  relayUp(): void {
    for (const s of this.sessions.values()) this.apply(s, { kind: "relay-up" });
  }

  /** The relay connection went away: every active session waits for it. */
  relayDown(reason: string): void {
    for (const s of this.sessions.values()) this.apply(s, { kind: "relay-down", reason });
  }

  async connect(onsite: string, specs: ForwardSpec[], ttl: number | null, extras: ConnectExtras = {}): Promise<SessionView> {
    const conn = this.o.relay();
    if (!conn) throw new RemoteError(ErrorCode.OFFLINE, `not connected to the relay (${this.o.relayState()}); see \`agent status\``);
    const forwards: Forward[] = [];
    const udp: MasterUdpForward[] = [];
    const closeAll = () => {
      for (const f of forwards) f.listener.close();
      for (const u of udp) u.close();
    };
    try {
      for (const spec of specs) forwards.push(this.listen(spec));
      for (const spec of extras.udp ?? []) {
        const u = new MasterUdpForward(spec, this.o.log, this.clock);
        udp.push(u);
        try {
          await u.listen();
        } catch (e) {
          throw new RemoteError(ErrorCode.BAD_REQUEST, `cannot listen on udp ${spec.bind}:${spec.port}: ${(e as Error).message}`);
        }
      }
    } catch (e) {
      closeAll();
      throw e;
    }
    const now = this.clock.now();
    const s: MasterSession = { id: "", onsite, forwards, opened: now, st: opening(now), retryTimer: null, expiryTimer: null, warnings: [], tunnel: null, udp };
    let info: SessionInfo;
    try {
      if (extras.tunnel) s.tunnel = new MasterTunnel(this.tunnelHost, this.o.log, extras.tunnel, extras.tunnel === "routed" ? this.allocate() : null, extras.requester, this.clock);
      info = await request(conn, Msg.SESSION_OPEN, this.openBody(s, ttl, null));
    } catch (e) {
      closeAll();
      throw e;
    }
    s.id = info.session;
    s.warnings = info.warnings ?? [];
    if (s.tunnel) {
      // The onsite end is made; ours follows. A refusal here (bridging from the secondary
      // interface, no TUN device) ends the session: it was asked for its tunnel.
      try {
        if (!info.tunnel) throw new Error(`the relay's answer has no tunnel (is the relay older than this master?)`);
        await s.tunnel.up(conn, s.id, info.tunnel);
      } catch (e) {
        await s.tunnel.close("the master could not open its end");
        closeAll();
        await request(conn, Msg.SESSION_END, { session: s.id, reason: "the master could not open its tunnel end" }).catch(() => undefined);
        if (e instanceof TunnelRefused) throw new RemoteError(e.code === "from_secondary" || e.code === "invalid" ? ErrorCode.BAD_REQUEST : ErrorCode.REFUSED, e.message);
        throw e;
      }
    }
    this.sessions.set(s.id, s);
    this.openUdpStreams(s, conn);
    // The TTL runs on this side's monotonic clock from the asked length; the relay's wall-clock
    // `expires` only tells whether there is one (or its length, had none been asked).
    const left = info.expires ? (ttl ?? Math.max(0, Date.parse(info.expires) - this.clock.wall())) : null;
    this.apply(s, { kind: "opened", ttl: left });
    const carries = [...forwards.map((f) => `${f.spec.bind}:${f.port} → ${f.spec.target}`), ...udp.map((u) => `udp ${u.spec.bind}:${u.port} → ${u.spec.target}`), ...(s.tunnel ? [`${s.tunnel.mode} tunnel`] : [])];
    this.o.log.info(`session ${s.id} to ${onsite}: ${carries.join(", ")}`);
    for (const w of s.warnings) this.o.log.warn(`session ${s.id} to ${onsite}: ${w}`);
    return this.view(s);
  }

  async disconnect(id: string): Promise<SessionView> {
    const s = this.sessions.get(id);
    if (!s || s.st.phase === "closed") throw new RemoteError(ErrorCode.NO_SESSION, `no session ${JSON.stringify(id)}; see \`agent sessions\``);
    const conn = this.o.relay();
    if (conn) await request(conn, Msg.SESSION_END, { session: id, reason: "disconnect" }).catch(() => undefined);
    this.apply(s, { kind: "disconnect" });
    return this.view(s);
  }

  /**
   * `agent sessions extend` (issue 15): the relay moves the session's end (clamping it), then
   * this side's TTL timer follows the end the relay answered.
   */
  async extend(id: string, ttl: number): Promise<SessionView> {
    const s = this.sessions.get(id);
    if (!s || s.st.phase === "closed") throw new RemoteError(ErrorCode.NO_SESSION, `no session ${JSON.stringify(id)}; see \`agent sessions\``);
    const conn = this.o.relay();
    if (!conn) throw new RemoteError(ErrorCode.OFFLINE, `not connected to the relay (${this.o.relayState()}); see \`agent status\``);
    const info = await request(conn, Msg.SESSION_EXTEND, { session: id, ttl });
    const left = info.expires ? Math.max(0, Date.parse(info.expires) - this.clock.wall()) : ttl;
    this.apply(s, { kind: "extended", ttl: left });
    this.o.log.info(`session ${id} to ${s.onsite}: extended, ends ${info.expires}`);
    return this.view(s);
  }

  /** Switches of one session run one after the other (two at once would race on the ends). */
  private readonly switching = new Map<string, Promise<unknown>>();

  /** `agent tunnel mode`: the onsite end switches first (its config may refuse), then ours. */
  switchMode(id: string, mode: TunnelMode, requester?: string): Promise<SessionView> {
    const before = this.switching.get(id) ?? Promise.resolve();
    const run = before.catch(() => undefined).then(() => this.switchNow(id, mode, requester));
    const tail = run.catch(() => undefined);
    this.switching.set(id, tail);
    void tail.then(() => {
      if (this.switching.get(id) === tail) this.switching.delete(id);
    });
    return run;
  }

  private async switchNow(id: string, mode: TunnelMode, requester?: string): Promise<SessionView> {
    const s = this.sessions.get(id);
    if (!s || s.st.phase === "closed") throw new RemoteError(ErrorCode.NO_SESSION, `no session ${JSON.stringify(id)}; see \`agent sessions\``);
    if (!s.tunnel) throw new RemoteError(ErrorCode.BAD_REQUEST, `session ${id} has no tunnel; open one with agent connect ${s.onsite} --tunnel ${mode}`);
    const conn = this.o.relay();
    if (!conn || !carriesConnections(s.st)) throw new RemoteError(ErrorCode.OFFLINE, `session ${id} is ${s.st.phase} (${s.st.reason}); switch it once it is active again`);
    const t = s.tunnel;
    if (t.mode === mode && t.view().state === "up") return this.view(s);
    if (mode === "routed" && !t.addressing) t.addressing = this.allocate();
    t.setRequester(requester);
    // A refusal known before anything changes (bridging from the secondary port) leaves the
    // current tunnel up instead of tearing it down for an end that cannot be made.
    const pre = await this.tunnelHost.precheck?.({ session: id, mode, ...(requester ? { requester } : {}) });
    if (pre) throw new RemoteError(pre.code === "from_secondary" || pre.code === "invalid" ? ErrorCode.BAD_REQUEST : ErrorCode.REFUSED, pre.message);
    const offer = await request(conn, Msg.TUNNEL_MODE, { session: id, mode, ...(mode === "routed" && t.addressing ? { addressing: t.addressing } : {}) });
    await t.takeDown(`switching to ${mode}`);
    try {
      await t.up(conn, id, offer);
    } catch (e) {
      this.o.log.warn(`session ${id}: the ${mode} tunnel's master end did not open: ${(e as Error).message}`);
      // The onsite end has switched already; say how to get a working tunnel back.
      const back = `the tunnel is down; \`agent tunnel mode ${id} ${mode === "routed" ? "bridged" : "routed"}\` brings it back`;
      if (e instanceof TunnelRefused) throw new RemoteError(e.code === "from_secondary" || e.code === "invalid" ? ErrorCode.BAD_REQUEST : ErrorCode.REFUSED, `${e.message} (${back})`);
      throw new RemoteError(ErrorCode.INTERNAL, `${(e as Error).message} (${back})`);
    }
    this.o.log.info(`session ${id}: tunnel switched to ${mode}`);
    return this.view(s);
  }

  list(): SessionView[] {
    return [...this.sessions.values()].map((s) => this.view(s));
  }

  close(): void {
    for (const s of this.sessions.values()) this.apply(s, { kind: "shutdown" });
  }

  /** Resolves once every session's tunnel end is gone (devices, rules, dnsmasq): a stopping daemon waits for it. */
  async tunnelsClosed(reason = "the master is stopping"): Promise<void> {
    await Promise.all([...this.sessions.values()].map((s) => s.tunnel?.close(reason)));
  }

  private listen(spec: ForwardSpec): Forward {
    const fwd = { spec, connections: 0, active: 0, errors: 0, lastError: null } as Forward;
    try {
      fwd.listener = this.listener.listen(spec.bind, spec.port, (d) => this.accept(fwd, d));
    } catch (e) {
      throw new RemoteError(ErrorCode.BAD_REQUEST, `cannot listen on ${spec.bind}:${spec.port}: ${(e as Error).message}`);
    }
    fwd.port = fwd.listener.port;
    return fwd;
  }

  private accept(fwd: Forward, client: Duplex): void {
    const s = [...this.sessions.values()].find((x) => x.forwards.includes(fwd));
    const conn = this.o.relay();
    if (!s || !carriesConnections(s.st) || !conn) {
      const why = s ? `session ${s.id} is ${s.st.phase} (${s.st.reason})` : "session is not open yet";
      this.o.log.warn(`refusing a connection on ${fwd.spec.bind}:${fwd.port}: ${why}`);
      client.reset(new Error(why));
      return;
    }
    fwd.connections++;
    fwd.active++;
    let stream;
    try {
      stream = conn.openStream({ session: s.id, target: fwd.spec.target });
    } catch (e) {
      fwd.active--;
      this.o.log.warn(`cannot open a stream for ${fwd.spec.target}: ${(e as Error).message}`);
      client.reset(e as Error);
      return;
    }
    new Pipe(client, streamDuplex(stream), (err) => {
      fwd.active--;
      if (!err) return;
      const name = `forward ${fwd.spec.bind}:${fwd.port} → ${fwd.spec.target}`;
      if (stream.accepted) {
        this.o.log.debug(`${name} ended: ${err.message}`);
        return;
      }
      // Never opened: the onsite device (or the relay) said why in the stream's RESET, like
      // ssh -L's "open failed: connect failed: Connection refused".
      const why = openFailure(fwd.spec.target, err.message);
      fwd.errors++;
      fwd.lastError = why;
      this.o.log.warn(`${name}: open failed: ${why}`);
    });
  }

  /** Runs the state machine for one event and carries out what it decided. */
  private apply(s: MasterSession, e: SessionEvent): void {
    const from = s.st.phase;
    const { state, actions } = decide(s.st, e, this.clock.now());
    s.st = state;
    for (const a of actions) this.run(s, a);
    if (from !== state.phase && this.o.onPhase) {
      try {
        this.o.onPhase(this.view(s), from, state.phase);
      } catch {
        // A listener's failure is its own.
      }
    }
  }

  private run(s: MasterSession, a: SessionAction): void {
    switch (a.kind) {
      case "retry-in":
        this.clock.clearTimeout(s.retryTimer);
        s.retryTimer = this.clock.setTimeout(() => this.expiredRetry(s), a.ms);
        return;
      case "expire-in":
        this.clock.clearTimeout(s.expiryTimer);
        s.expiryTimer = this.clock.setTimeout(() => this.apply(s, { kind: "ttl" }), a.ms);
        return;
      case "resume":
        void this.resume(s, a.ttl);
        return;
      case "log":
        this.o.log[a.level](`session ${s.id}${a.level === "info" ? ` to ${s.onsite}` : ""} ${a.text}`);
        return;
      case "close":
        this.clock.clearTimeout(s.retryTimer);
        this.clock.clearTimeout(s.expiryTimer);
        s.retryTimer = s.expiryTimer = null;
        for (const f of s.forwards) f.listener.close();
        if (s.tunnel) void s.tunnel.close(a.reason);
        for (const u of s.udp) u.close();
        this.o.log.info(`session ${s.id} closed: ${a.reason}`);
        unref(
          this.clock.setTimeout(() => {
            if (this.sessions.get(s.id) === s) this.sessions.delete(s.id);
          }, KEEP_CLOSED_MS),
        );
        return;
    }
  }

  private expiredRetry(s: MasterSession): void {
    s.retryTimer = null;
    this.apply(s, { kind: "retry-due", relay: this.o.relay() !== null });
  }

  private async resume(s: MasterSession, ttl: number | null): Promise<void> {
    const conn = this.o.relay();
    if (!conn) return; // relay-up asks again
    try {
      const info = await request(conn, Msg.SESSION_OPEN, this.openBody(s, ttl, s.id));
      s.warnings = info.warnings ?? [];
      this.apply(s, { kind: "resumed" });
      this.openUdpStreams(s, conn);
      if (s.tunnel && info.tunnel) await s.tunnel.up(conn, s.id, info.tunnel).catch((e: Error) => this.o.log.warn(`session ${s.id}: the tunnel did not come back: ${e.message}`));
      for (const w of s.warnings) this.o.log.warn(`session ${s.id} to ${s.onsite}: ${w}`);
    } catch (e) {
      this.apply(s, { kind: "resume-failed", code: e instanceof RemoteError ? e.code : undefined, message: (e as Error).message });
    }
  }

  private view(s: MasterSession): SessionView {
    const st = s.st;
    const iso = (mono: number) => new Date(wallOf(this.clock, mono)).toISOString();
    return {
      session: s.id,
      onsite: s.onsite,
      state: st.phase === "opening" ? "resuming" : st.phase,
      since: iso(st.since),
      reason: st.reason,
      opened: iso(s.opened),
      expires: st.expiresAt !== null ? iso(st.expiresAt) : null,
      warnings: [...s.warnings],
      forwards: [
        ...s.forwards.map((f) => ({ bind: f.spec.bind, port: f.port, target: f.spec.target, connections: f.connections, active: f.active, errors: f.errors, last_error: f.lastError })),
        ...s.udp.map((u) => u.view()),
      ],
      ...(s.tunnel ? { tunnel: s.tunnel.view() } : {}),
    };
  }
}

/**
 * The reason a stream did not open, from its RESET's text: the onsite device says
 * "TARGET: connect failed: …", which is shown without repeating the target (pure).
 */
export function openFailure(target: string, reason: string): string {
  return reason.startsWith(`${target}: `) ? reason.slice(target.length + 2) : reason;
}

/** A closed session's purge timer must not keep a stopping master alive. */
function unref(t: TimerHandle): void {
  (t as { unref?: () => void }).unref?.();
}
