// The onsite side of sessions: accept or refuse session offers against the device's allow
// list, and serve each stream by connecting to its LAN target.
//
// Data path: a stream the relay opens is checked against the allow list, its target reached
// through a TargetDialer (tcp.ts), and the two joined by a Pipe (pipe.ts).
import { ResetCode } from "../transport/frame.ts";
import { RemoteError, type Connection, type Log, type Stream } from "../transport/mux.ts";
import { ErrorCode, Msg } from "../transport/messages.ts";
import { handle, on } from "../transport/typed.ts";
import { allowListPermits, formatAllowEntry, parseHostPort, parseIPv4, type AllowEntry } from "../netaddr.ts";
import { systemClock, type Clock } from "../clock.ts";
import type { Duplex, TargetDialer } from "./duplex.ts";
import { Pipe, streamDuplex } from "./pipe.ts";
import { tcpDialer } from "./tcp.ts";
import { lookup } from "node:dns/promises";
import { decodePacketOpen } from "../transport/packet.ts";
import type { SessionOfferReply } from "../transport/messages.ts";
import { tunnelRefusal, type OnsiteTunnels } from "./packet/onsite-tunnels.ts";

/** Serves a UDP forward's packet stream (src/tunnel/udp.ts): the target is already judged. */
export interface UdpStreamServer {
  attach(stream: Stream, session: string, target: { host: string; port: number; text: string }): void;
  closeSession(session: string): void;
}

export type TargetCheck = { ok: true; host: string; port: number } | { ok: false; reason: string };

/**
 * Whether a session may reach `target` (pure). The allow list is by address: a target given
 * by name is judged by the IPv4 address it resolved to (`resolved`, found by the caller), as
 * `ssh -L` resolves on the far side; without one a name is refused.
 */
export function checkTarget(allow: readonly AllowEntry[], target: string, resolved?: string): TargetCheck {
  let hp;
  try {
    hp = parseHostPort(target, "a target HOST:PORT");
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
  if (hp.host.includes(":")) return { ok: false, reason: `target ${target}: IPv6 targets are not supported yet (give an IPv4 address or a host name)` };
  const named = !isIPv4Literal(hp.host);
  const host = named ? resolved : hp.host;
  if (host === undefined) return { ok: false, reason: `target ${target} is a host name that was not resolved (the allow list is by address)` };
  let addr: number;
  try {
    addr = parseIPv4(host);
  } catch {
    return { ok: false, reason: `target ${target} is not an IPv4 address (the allow list is by address)` };
  }
  const shown = named ? `${target} (${host})` : target;
  if (!allowListPermits([...allow], addr, hp.port)) {
    return { ok: false, reason: `target ${shown} is not in the allow list (${allow.map(formatAllowEntry).join(", ") || "empty"})` };
  }
  return { ok: true, host, port: hp.port };
}

const isIPv4Literal = (h: string) => /^[\d.]+$/.test(h);

/** The words for a failed connect, like ssh's "connect failed: Connection refused" (pure). */
export function connectFailure(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  const words: Record<string, string> = {
    ECONNREFUSED: "Connection refused",
    ETIMEDOUT: "Connection timed out",
    EHOSTUNREACH: "No route to host",
    ENETUNREACH: "Network is unreachable",
    ECONNRESET: "Connection reset by peer",
    EADDRNOTAVAIL: "Cannot assign requested address",
  };
  const text = typeof code === "string" && words[code] ? words[code] : err instanceof Error ? err.message : String(err);
  return `connect failed: ${text}`;
}

/** Resolves a target's host name to one IPv4 address (rejects with the resolver's reason). */
export type TargetResolver = (name: string) => Promise<string>;

/** The system resolver (getaddrinfo, as ssh uses), IPv4 only. */
export const systemResolver: TargetResolver = async (name) => (await lookup(name, { family: 4 })).address;

/** How long a stream's connect to its target may take before it counts as "no answer". */
export const CONNECT_TIMEOUT_MS = 10_000;
/** How long a target's name may take to resolve (the offer must be answered within the relay's request timeout). */
export const RESOLVE_TIMEOUT_MS = 5_000;
/** How long the check of a target at SESSION_OFFER waits for it. */
export const PROBE_TIMEOUT_MS = 2_000;

export interface ServeOptions {
  id: string;
  allow: () => readonly AllowEntry[];
  log: Log;
  /** Extra requests a role serves on the relay connection (e.g. NAT requests). */
  extra?: (conn: Connection) => void;
  onSessionClosed?: (session: string, reason: string) => void;
  /** How streams reach their targets; default: TCP connections. */
  dialer?: TargetDialer;
  /** For the `opened` timestamps people read and the connect deadlines; default: the system clock. */
  clock?: Clock;
  /** Resolves targets given by name; default: the system resolver. */
  resolve?: TargetResolver;
  /** A stream's connect to its target; default CONNECT_TIMEOUT_MS. */
  connectTimeout?: number;
  /** The check of each target when a session is offered; default PROBE_TIMEOUT_MS; 0: no check. */
  probeTimeout?: number;
  /** Packet tunnels (absent: every tunnel is refused as not enabled). */
  tunnels?: OnsiteTunnels;
  /** UDP forwards' packet streams (absent: refused). */
  udp?: UdpStreamServer;
}

/**
 * What a NAT request inside a session is bound to (src/nat/session.ts reads it): the
 * session's targets as this device resolved them, its end, and its master's other sessions.
 */
export interface SessionNatBinding {
  session: string;
  master: string;
  /** "IPv4:PORT" of each target, a name as the address it resolved to at the offer. */
  endpoints: string[];
  /** Wall-clock ms the relay ends the session at; null: no end. */
  endsAt: number | null;
  /** The sessions of the same master on this device, this one included. */
  masterSessions: string[];
}

export class SessionServer {
  /** `opened` and `endsAt` are wall-clock ms (shown to people; the relay's word for the end). */
  readonly sessions = new Map<string, { master: string; targets: string[]; opened: number; streams: number; endpoints?: string[]; endsAt?: number | null; udp?: string[]; tunnel?: boolean }>();
  streamsServed = 0;
  private readonly dialer: TargetDialer;
  private readonly clock: Clock;
  private readonly resolve: TargetResolver;

  constructor(private readonly o: ServeOptions) {
    this.dialer = o.dialer ?? tcpDialer;
    this.clock = o.clock ?? systemClock;
    this.resolve = o.resolve ?? systemResolver;
  }

  /** Registers the handlers on a fresh relay connection. */
  setup(conn: Connection): void {
    handle(conn, Msg.SESSION_OFFER, async (b) => {
      const { session, targets } = b;
      // A tunnel this device's config does not allow is refused before anything is checked or made.
      if (b.tunnel) {
        const no = this.o.tunnels ? this.o.tunnels.refusal(b.tunnel.mode) : tunnelRefusal(this.o.id, { enabled: false, bridged: false }, b.tunnel.mode);
        if (no) throw new RemoteError(ErrorCode.REFUSED, no);
      }
      const udp = b.udp ?? [];
      const checks = await Promise.all(targets.map((t) => this.check(t)));
      const udpChecks = await Promise.all(udp.map((t) => this.check(t)));
      const refused = [...checks, ...udpChecks.map((c) => (c.ok ? c : { ok: false as const, reason: `UDP ${c.reason}` }))].filter((c): c is { ok: false; reason: string } => !c.ok);
      if (refused.length) throw new RemoteError(ErrorCode.REFUSED, refused.map((r) => r.reason).join("; "));
      if (udp.length && !this.o.udp) throw new RemoteError(ErrorCode.REFUSED, `${this.o.id}: this device serves no UDP forwards`);
      const endpoints = (checks as { host: string; port: number }[]).map((c) => `${c.host}:${c.port}`);
      const endsAt = b.expires === null ? null : Date.parse(b.expires);
      this.sessions.set(session, { master: b.master, targets, opened: this.clock.wall(), streams: 0, endpoints, endsAt: Number.isFinite(endsAt) ? endsAt : null, ...(udp.length ? { udp } : {}), ...(b.tunnel ? { tunnel: true } : {}) });
      const reply: SessionOfferReply = {};
      if (b.tunnel) {
        try {
          reply.tunnel = await this.o.tunnels!.open(session, b.tunnel);
        } catch (e) {
          this.sessions.delete(session);
          await this.o.tunnels!.close(session, "the tunnel could not be opened");
          throw e;
        }
      }
      const carries = [...targets, ...udp.map((t) => `udp ${t}`), ...(b.tunnel ? [`${b.tunnel.mode} tunnel`] : [])];
      this.o.log.info(`session ${session} from ${b.master} accepted: ${carries.join(", ")}`);
      const warnings = await this.probe(targets, checks as { ok: true; host: string; port: number }[]);
      for (const w of warnings) this.o.log.warn(`session ${session}: ${w}`);
      if (warnings.length) reply.warnings = warnings;
      return reply;
    });
    handle(conn, Msg.TUNNEL_MODE, async (b) => {
      if (!this.sessions.has(b.session)) throw new RemoteError(ErrorCode.NO_SESSION, `no session ${JSON.stringify(b.session)} on ${this.o.id}`);
      if (!this.o.tunnels) throw new RemoteError(ErrorCode.REFUSED, tunnelRefusal(this.o.id, { enabled: false, bridged: false }, b.mode)!);
      return this.o.tunnels.switch(b.session, { mode: b.mode, ...(b.addressing ? { addressing: b.addressing } : {}) });
    });
    // Issue 15: a master extended the session; NAT rules are then bounded by the new end.
    on(conn, Msg.SESSION_EXPIRES, (b) => {
      const s = this.sessions.get(b.session);
      if (s) s.endsAt = Date.parse(b.expires);
    });
    on(conn, Msg.SESSION_CLOSE, (b) => {
      if (this.sessions.delete(b.session)) this.o.log.info(`session ${b.session} closed: ${b.reason}`);
      this.endPackets(b.session, b.reason);
      this.o.onSessionClosed?.(b.session, b.reason);
    });
    this.o.extra?.(conn);
  }

  /** A NAT request's binding to its session; undefined when this device does not serve it. */
  natBinding(session: string): SessionNatBinding | undefined {
    const s = this.sessions.get(session);
    if (!s) return undefined;
    const masterSessions = [...this.sessions].filter(([, x]) => x.master === s.master).map(([id]) => id);
    return { session, master: s.master, endpoints: s.endpoints ?? [], endsAt: s.endsAt ?? null, masterSessions };
  }

  /** A target judged against the allow list, a name by the address it resolves to (an address at once). */
  private check(target: string): TargetCheck | Promise<TargetCheck> {
    let host: string;
    try {
      host = parseHostPort(target, "a target HOST:PORT").host;
    } catch {
      return checkTarget(this.o.allow(), target);
    }
    if (host.includes(":") || isIPv4Literal(host)) return checkTarget(this.o.allow(), target);
    return this.resolveWithin(host, RESOLVE_TIMEOUT_MS).then(
      (resolved) => checkTarget(this.o.allow(), target, resolved),
      (e: Error): TargetCheck => ({ ok: false, reason: `target ${target}: cannot resolve ${host}: ${e.message}` }),
    );
  }

  private resolveWithin(name: string, ms: number): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => reject(new Error(`no answer from the resolver within ${ms / 1000} s`)), ms);
      this.resolve(name).then(
        (addr) => {
          this.clock.clearTimeout(timer);
          resolve(addr);
        },
        (err: unknown) => {
          this.clock.clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  /**
   * Tries a connection to each target, closing it at once, so a master hears at once of a
   * target that refuses or does not answer (the session opens anyway: the target may come up).
   */
  private async probe(targets: readonly string[], checks: readonly { host: string; port: number }[]): Promise<string[]> {
    const ms = this.o.probeTimeout ?? PROBE_TIMEOUT_MS;
    if (ms <= 0) return [];
    const results = await Promise.all(
      checks.map((c, i) =>
        this.dialWithin(c.host, c.port, ms).then(
          (d) => {
            d.reset(new Error("target check done"));
            return null;
          },
          (err: unknown) => `target ${targets[i]}: ${connectFailure(err)}`,
        ),
      ),
    );
    return results.filter((w): w is string => w !== null);
  }

  /** A dial that gives up after `ms` ("no answer"); a connection that comes later is reset. */
  private dialWithin(host: string, port: number, ms: number): Promise<Duplex> {
    return new Promise<Duplex>((resolve, reject) => {
      let settled = false;
      const timer = this.clock.setTimeout(() => {
        if (settled) return;
        settled = true;
        reject(new Error(`no answer within ${ms / 1000} s`));
      }, ms);
      let dial: Promise<Duplex>;
      try {
        dial = this.dialer.dial(host, port);
      } catch (e) {
        dial = Promise.reject(e);
      }
      dial.then(
        (d) => {
          this.clock.clearTimeout(timer);
          if (settled) d.reset(new Error("the target answered after the connect deadline"));
          else {
            settled = true;
            resolve(d);
          }
        },
        (err: unknown) => {
          this.clock.clearTimeout(timer);
          if (settled) return;
          settled = true;
          reject(err);
        },
      );
    });
  }

  /**
   * The relay connection is gone: the relay ended every session it carried (it closes them
   * when a side disconnects) but could not say so over the dead connection. A master that
   * resumes offers the session again over the next connection.
   */
  endAll(reason: string): void {
    const ended = [...this.sessions.keys()];
    this.sessions.clear();
    for (const session of ended) {
      this.o.log.info(`session ${session} ended: ${reason}`);
      this.endPackets(session, reason);
      this.o.onSessionClosed?.(session, reason);
    }
  }

  /** A session's tunnel end and UDP flows go with it. */
  private endPackets(session: string, reason: string): void {
    this.o.udp?.closeSession(session);
    if (this.o.tunnels) void this.o.tunnels.close(session, reason).catch((e: Error) => this.o.log.warn(`session ${session}: closing its tunnel: ${e.message}`));
  }

  /** A packet stream the relay opened: a session's tunnel, or one of its UDP forwards. */
  private servePackets(stream: Stream): void {
    const open = decodePacketOpen(stream.open);
    if (typeof open === "string") {
      stream.reset(ResetCode.PROTOCOL, `${this.o.id}: ${open}`);
      return;
    }
    if (!this.sessions.has(open.session)) {
      stream.reset(ResetCode.NO_SESSION, `${this.o.id}: no session ${JSON.stringify(open.session)}`);
      return;
    }
    if (open.packet !== "udp") {
      if (!this.o.tunnels) stream.reset(ResetCode.REFUSED, tunnelRefusal(this.o.id, { enabled: false, bridged: false }, open.packet)!);
      else this.o.tunnels.attach(stream, open.session, open.packet);
      return;
    }
    const target = open.target!;
    const info = this.sessions.get(open.session)!;
    if (!info.udp?.includes(target) || !this.o.udp) {
      stream.reset(ResetCode.REFUSED, `${this.o.id}: UDP target ${target} is not part of session ${open.session}`);
      return;
    }
    const udp = this.o.udp;
    const check = this.check(target);
    const go = (c: TargetCheck) => {
      if (stream.closed) return;
      if (!c.ok) {
        this.o.log.warn(`refused a UDP stream of session ${open.session}: ${c.reason}`);
        stream.reset(ResetCode.REFUSED, `${this.o.id}: ${c.reason}`);
        return;
      }
      info.streams++;
      this.streamsServed++;
      udp.attach(stream, open.session, { host: c.host, port: c.port, text: target });
    };
    if (check instanceof Promise) void check.then(go);
    else go(check);
  }

  /** A stream the relay opened for a session: connect to its target. */
  serve(stream: Stream): void {
    if (stream.packets) {
      this.servePackets(stream);
      return;
    }
    const target = String(stream.open.target ?? "");
    const session = String(stream.open.session ?? "");
    const check = this.check(target);
    if (check instanceof Promise) void check.then((c) => this.dialFor(stream, target, session, c));
    else this.dialFor(stream, target, session, check);
  }

  private dialFor(stream: Stream, target: string, session: string, check: TargetCheck): void {
    if (stream.closed) return;
    if (!check.ok) {
      this.o.log.warn(`refused a stream of session ${session}: ${check.reason}`);
      stream.reset(ResetCode.REFUSED, `${this.o.id}: ${check.reason}`);
      return;
    }
    const info = this.sessions.get(session);
    if (info) info.streams++;
    this.streamsServed++;
    this.dialWithin(check.host, check.port, this.o.connectTimeout ?? CONNECT_TIMEOUT_MS).then(
      (conn) => {
        // The stream may have been reset (or its connection lost) while the target answered.
        if (stream.closed) {
          conn.reset(new Error("the stream ended before the target answered"));
          return;
        }
        stream.accept();
        new Pipe(conn, streamDuplex(stream));
      },
      (err: unknown) => {
        if (stream.closed) return;
        const why = connectFailure(err);
        this.o.log.warn(`stream to ${target} for session ${session}: ${why}`);
        stream.reset(ResetCode.UNREACHABLE, `${target}: ${why}`);
      },
    );
  }
}
