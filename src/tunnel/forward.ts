// The master side of sessions: local port forwards (like `ssh -L`) carried as streams through
// the relay to a LAN target behind an onsite device. A session outlives a lost relay
// connection or a briefly offline device: it goes "resuming" and is re-opened with the same
// id when both are back, until its TTL or the resume window runs out.
import type { Socket, TCPSocketListener } from "bun";
import { RemoteError, type Connection, type Log } from "../transport/mux.ts";
import { ErrorCode, Msg, type SessionInfo } from "../transport/messages.ts";
import { formatHostPort, parseHostPort, parseIPv4, parsePort } from "../netaddr.ts";
import { Pipe, pipeSocketHandlers, type PipeData } from "./pipe.ts";

export interface ForwardSpec {
  bind: string;
  port: number; // 0: chosen by the system
  target: string; // HOST:PORT on the onsite LAN
}

/** Parses `[BIND:]LPORT:HOST:PORT` (pure). */
export function parseForward(text: string): ForwardSpec {
  const bad = (why: string) => new Error(`--forward ${JSON.stringify(text)}: ${why}; expected [BIND:]LPORT:HOST:PORT such as 8080:192.168.1.50:80`);
  const parts = text.split(":");
  if (parts.length !== 3 && parts.length !== 4) throw bad("wrong number of fields");
  const [bind, lport, host, port] = parts.length === 4 ? (parts as [string, string, string, string]) : (["127.0.0.1", ...parts] as [string, string, string, string]);
  try {
    parseIPv4(bind);
  } catch {
    throw bad(`bind address ${JSON.stringify(bind)} is not an IPv4 address`);
  }
  let lp: number;
  if (lport === "0") lp = 0;
  else {
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

export const SessionTiming = {
  /** How long a session whose relay or device went away keeps trying to come back. */
  resumeWindow: 5 * 60_000,
  /** How often it tries while the relay connection is up, once the quick tries are spent. */
  resumeRetry: 2_000,
  /**
   * The first tries after the relay said a side went away. An onsite device that re-dials over
   * a new uplink replaces its old connection at the relay, and the relay announces the
   * interruption then, with the device already back: a try at once succeeds. When the device
   * closed its old connection itself (its old path still worked) the announcement comes a
   * dial earlier, so a few quick tries follow. Waiting a full resumeRetry kept the forward
   * dead ~2 s longer than the tunnel.
   */
  resumeQuick: [50, 250, 500, 1_000],
} as const;

/** Delay before resume try `n` (0-based) of an interrupted session (pure). */
export function resumeDelay(n: number): number {
  return SessionTiming.resumeQuick[n] ?? SessionTiming.resumeRetry;
}

type SessionState = "active" | "resuming" | "closed";

interface Forward {
  spec: ForwardSpec;
  listener: TCPSocketListener<PipeData>;
  port: number;
  connections: number;
  active: number;
}

interface MasterSession {
  id: string;
  onsite: string;
  forwards: Forward[];
  ttl: number | null;
  expiresAt: number | null;
  opened: number;
  state: SessionState;
  since: number;
  reason: string;
  resumeUntil: number | null;
  /** Resume tries since the interruption (for resumeDelay). */
  tries: number;
  retryTimer: ReturnType<typeof setTimeout> | null;
  expiryTimer: ReturnType<typeof setTimeout> | null;
}

export interface SessionView {
  session: string;
  onsite: string;
  state: SessionState;
  since: string;
  reason: string;
  opened: string;
  expires: string | null;
  forwards: { bind: string; port: number; target: string; connections: number; active: number }[];
}

export interface MasterSessionsOptions {
  log: Log;
  /** The live relay connection, or null. */
  relay: () => Connection | null;
  relayState: () => string;
}

export class MasterSessions {
  private readonly sessions = new Map<string, MasterSession>();

  constructor(private readonly o: MasterSessionsOptions) {}

  setup(conn: Connection): void {
    conn.on(Msg.SESSION_CLOSE, (b) => {
      const s = typeof b.session === "string" ? this.sessions.get(b.session) : undefined;
      if (!s || s.state === "closed") return;
      const reason = String(b.reason ?? "closed by the relay");
      if (b.final === true) this.finish(s, reason);
      else this.suspend(s, reason);
    });
  }

  /** The relay connection is (back) up: re-open what was interrupted. */
  relayUp(): void {
    for (const s of this.sessions.values()) if (s.state === "resuming") this.scheduleResume(s, 0);
  }

  /** The relay connection went away: every active session waits for it. */
  relayDown(reason: string): void {
    for (const s of this.sessions.values()) if (s.state === "active") this.suspend(s, `relay connection lost: ${reason}`);
  }

  async connect(onsite: string, specs: ForwardSpec[], ttl: number | null): Promise<SessionView> {
    const conn = this.o.relay();
    if (!conn) throw new RemoteError(ErrorCode.OFFLINE, `not connected to the relay (${this.o.relayState()}); see \`agent status\``);
    const forwards: Forward[] = [];
    try {
      for (const spec of specs) forwards.push(this.listen(spec));
    } catch (e) {
      for (const f of forwards) f.listener.stop(true);
      throw e;
    }
    const s: MasterSession = {
      id: "",
      onsite,
      forwards,
      ttl,
      expiresAt: null,
      opened: Date.now(),
      state: "resuming",
      since: Date.now(),
      reason: "opening",
      resumeUntil: null,
      tries: 0,
      retryTimer: null,
      expiryTimer: null,
    };
    let info: SessionInfo;
    try {
      info = (await conn.request(Msg.SESSION_OPEN, { onsite, targets: specs.map((x) => x.target), ttl })) as SessionInfo;
    } catch (e) {
      for (const f of forwards) f.listener.stop(true);
      throw e;
    }
    s.id = info.session;
    s.expiresAt = info.expires ? Date.parse(info.expires) : null;
    if (s.expiresAt) s.expiryTimer = setTimeout(() => this.finish(s, "TTL reached"), Math.max(0, s.expiresAt - Date.now()) + 50);
    this.sessions.set(s.id, s);
    this.setState(s, "active", "opened");
    this.o.log.info(`session ${s.id} to ${onsite}: ${forwards.map((f) => `${f.spec.bind}:${f.port} → ${f.spec.target}`).join(", ")}`);
    return this.view(s);
  }

  async disconnect(id: string): Promise<SessionView> {
    const s = this.sessions.get(id);
    if (!s || s.state === "closed") throw new RemoteError(ErrorCode.NO_SESSION, `no session ${JSON.stringify(id)}; see \`agent sessions\``);
    const conn = this.o.relay();
    if (conn) await conn.request(Msg.SESSION_END, { session: id, reason: "disconnect" }).catch(() => undefined);
    this.finish(s, "disconnected by the user");
    return this.view(s);
  }

  list(): SessionView[] {
    return [...this.sessions.values()].map((s) => this.view(s));
  }

  close(): void {
    for (const s of this.sessions.values()) this.finish(s, "master shutting down");
  }

  private listen(spec: ForwardSpec): Forward {
    const fwd = { spec, connections: 0, active: 0 } as Forward;
    const sessions = this;
    try {
      fwd.listener = Bun.listen<PipeData>({
        hostname: spec.bind,
        port: spec.port,
        allowHalfOpen: true,
        exclusive: true,
        data: { pipe: null },
        socket: {
          ...pipeSocketHandlers,
          open(socket) {
            sessions.accept(fwd, socket);
          },
        },
      });
    } catch (e) {
      throw new RemoteError(ErrorCode.BAD_REQUEST, `cannot listen on ${spec.bind}:${spec.port}: ${(e as Error).message}`);
    }
    fwd.port = fwd.listener.port;
    return fwd;
  }

  private accept(fwd: Forward, socket: Socket<PipeData>): void {
    const s = [...this.sessions.values()].find((x) => x.forwards.includes(fwd));
    const conn = this.o.relay();
    if (!s || s.state !== "active" || !conn) {
      this.o.log.warn(`refusing a connection on ${fwd.spec.bind}:${fwd.port}: session ${s ? `${s.id} is ${s.state} (${s.reason})` : "is not open yet"}`);
      socket.terminate();
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
      socket.terminate();
      return;
    }
    new Pipe(socket, stream, (err) => {
      fwd.active--;
      if (err) this.o.log.debug(`forward ${fwd.port} → ${fwd.spec.target} ended: ${err.message}`);
    });
  }

  private setState(s: MasterSession, state: SessionState, reason: string): void {
    s.state = state;
    s.since = Date.now();
    s.reason = reason;
  }

  private suspend(s: MasterSession, reason: string): void {
    if (s.state === "closed") return;
    if (s.expiresAt && Date.now() >= s.expiresAt) return this.finish(s, "TTL reached");
    this.setState(s, "resuming", reason);
    s.resumeUntil ??= Date.now() + SessionTiming.resumeWindow;
    this.o.log.warn(`session ${s.id} interrupted (${reason}); resuming for up to ${SessionTiming.resumeWindow / 1000} s`);
    s.tries = 0;
    this.scheduleResume(s, resumeDelay(s.tries++));
  }

  private scheduleResume(s: MasterSession, delay: number): void {
    if (s.retryTimer) clearTimeout(s.retryTimer);
    s.retryTimer = setTimeout(() => void this.tryResume(s), delay);
  }

  private async tryResume(s: MasterSession): Promise<void> {
    s.retryTimer = null;
    if (s.state !== "resuming") return;
    if (s.resumeUntil && Date.now() > s.resumeUntil) return this.finish(s, `could not resume within ${SessionTiming.resumeWindow / 1000} s: ${s.reason}`);
    const conn = this.o.relay();
    if (!conn) return; // relayUp() will call again
    const ttl = s.expiresAt ? s.expiresAt - Date.now() : null;
    if (ttl !== null && ttl < 1000) return this.finish(s, "TTL reached");
    try {
      await conn.request(Msg.SESSION_OPEN, { onsite: s.onsite, targets: s.forwards.map((f) => f.spec.target), ttl, session: s.id });
      if (s.state !== "resuming") return;
      s.resumeUntil = null;
      this.setState(s, "active", "resumed");
      this.o.log.info(`session ${s.id} to ${s.onsite} resumed`);
    } catch (e) {
      if (e instanceof RemoteError && (e.code === ErrorCode.FORBIDDEN || e.code === ErrorCode.REFUSED || e.code === ErrorCode.UNKNOWN_DEVICE)) {
        return this.finish(s, `cannot resume: ${e.message}`);
      }
      s.reason = `resuming: ${(e as Error).message}`;
      this.scheduleResume(s, resumeDelay(s.tries++));
    }
  }

  private finish(s: MasterSession, reason: string): void {
    if (s.state === "closed") return;
    this.setState(s, "closed", reason);
    if (s.retryTimer) clearTimeout(s.retryTimer);
    if (s.expiryTimer) clearTimeout(s.expiryTimer);
    for (const f of s.forwards) f.listener.stop(true);
    this.o.log.info(`session ${s.id} closed: ${reason}`);
    // Keep closed sessions listed for a while so `agent sessions` can say why they ended.
    setTimeout(() => {
      if (this.sessions.get(s.id) === s) this.sessions.delete(s.id);
    }, 10 * 60_000).unref?.();
  }

  private view(s: MasterSession): SessionView {
    return {
      session: s.id,
      onsite: s.onsite,
      state: s.state,
      since: new Date(s.since).toISOString(),
      reason: s.reason,
      opened: new Date(s.opened).toISOString(),
      expires: s.expiresAt ? new Date(s.expiresAt).toISOString() : null,
      forwards: s.forwards.map((f) => ({ bind: f.spec.bind, port: f.port, target: f.spec.target, connections: f.connections, active: f.active })),
    };
  }
}
