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
import type { TargetDialer } from "./duplex.ts";
import { Pipe, streamDuplex } from "./pipe.ts";
import { tcpDialer } from "./tcp.ts";

export type TargetCheck = { ok: true; host: string; port: number } | { ok: false; reason: string };

/** Whether a session may reach `target` (pure). Targets are IPv4 literals: the allow list is by address. */
export function checkTarget(allow: readonly AllowEntry[], target: string): TargetCheck {
  let hp;
  try {
    hp = parseHostPort(target, "a target HOST:PORT");
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
  let addr: number;
  try {
    addr = parseIPv4(hp.host);
  } catch {
    return { ok: false, reason: `target ${target} is not an IPv4 address (the allow list is by address)` };
  }
  if (!allowListPermits([...allow], addr, hp.port)) {
    return { ok: false, reason: `target ${target} is not in the allow list (${allow.map(formatAllowEntry).join(", ") || "empty"})` };
  }
  return { ok: true, host: hp.host, port: hp.port };
}

export interface ServeOptions {
  id: string;
  allow: () => readonly AllowEntry[];
  log: Log;
  /** Extra requests a role serves on the relay connection (e.g. NAT requests). */
  extra?: (conn: Connection) => void;
  onSessionClosed?: (session: string, reason: string) => void;
  /** How streams reach their targets; default: TCP connections. */
  dialer?: TargetDialer;
  /** For the `opened` timestamps people read; default: the system clock. */
  clock?: Clock;
}

export class SessionServer {
  /** `opened` is wall-clock ms (shown to people). */
  readonly sessions = new Map<string, { master: string; targets: string[]; opened: number; streams: number }>();
  streamsServed = 0;
  private readonly dialer: TargetDialer;
  private readonly clock: Clock;

  constructor(private readonly o: ServeOptions) {
    this.dialer = o.dialer ?? tcpDialer;
    this.clock = o.clock ?? systemClock;
  }

  /** Registers the handlers on a fresh relay connection. */
  setup(conn: Connection): void {
    handle(conn, Msg.SESSION_OFFER, (b) => {
      const { session, targets } = b;
      const refused = targets.map((t) => checkTarget(this.o.allow(), t)).filter((c): c is { ok: false; reason: string } => !c.ok);
      if (refused.length) throw new RemoteError(ErrorCode.REFUSED, refused.map((r) => r.reason).join("; "));
      this.sessions.set(session, { master: b.master, targets, opened: this.clock.wall(), streams: 0 });
      this.o.log.info(`session ${session} from ${b.master} accepted: ${targets.join(", ")}`);
      return {};
    });
    on(conn, Msg.SESSION_CLOSE, (b) => {
      if (this.sessions.delete(b.session)) this.o.log.info(`session ${b.session} closed: ${b.reason}`);
      this.o.onSessionClosed?.(b.session, b.reason);
    });
    this.o.extra?.(conn);
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
      this.o.onSessionClosed?.(session, reason);
    }
  }

  /** A stream the relay opened for a session: connect to its target. */
  serve(stream: Stream): void {
    const target = String(stream.open.target ?? "");
    const session = String(stream.open.session ?? "");
    const check = checkTarget(this.o.allow(), target);
    if (!check.ok) {
      this.o.log.warn(`refused a stream of session ${session}: ${check.reason}`);
      stream.reset(ResetCode.REFUSED, `${this.o.id}: ${check.reason}`);
      return;
    }
    const info = this.sessions.get(session);
    if (info) info.streams++;
    this.streamsServed++;
    const unreachable = (err: Error) => stream.reset(ResetCode.UNREACHABLE, `${target}: ${err.message}`);
    let dial;
    try {
      dial = this.dialer.dial(check.host, check.port);
    } catch (e) {
      unreachable(e as Error);
      return;
    }
    dial.then(
      (conn) => {
        // The stream may have been reset (or its connection lost) while the target answered.
        if (stream.closed) {
          conn.reset(new Error("the stream ended before the target answered"));
          return;
        }
        stream.accept();
        new Pipe(conn, streamDuplex(stream));
      },
      (err: Error) => unreachable(err), // a no-op on a stream already closed
    );
  }
}
