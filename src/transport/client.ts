// The device side of a relay connection: dial (TLS, maybe through a proxy), HELLO, wait for
// WELCOME, keep it alive, and when it ends dial again with exponential backoff and full
// jitter. The very first attempt retries the same way: a device may boot before its network.
import { Connection, ConnectionClosed, type Log, type Stream } from "./mux.ts";
import type { Link } from "./link.ts";
import { Msg, PROTOCOL_VERSIONS } from "./messages.ts";
import { on, send } from "./typed.ts";
import { GoAwayCode, MAX_CONTROL_MESSAGE } from "./frame.ts";
import { Timing, backoffDelay, negotiateKeepalive, nextAttempt } from "./policy.ts";
import { systemClock, wallOf, type Clock } from "../clock.ts";

export interface Welcome {
  version: number;
  relay: string;
  address: string;
  /** The keepalive interval the relay runs on this connection, ms. */
  keepalive?: number;
  /** Issue 17: the window (ms) the first redial after losing this relay is spread over. */
  spread?: number;
}

export interface RelayClientOptions {
  role: "onsite" | "master";
  id: string;
  agent: string;
  /** Opens a Link to the relay (TLS dial in production, a pipe in tests). */
  dial: () => Promise<Link>;
  /** Streams the relay opens towards this device (onsite: session streams). */
  onStream?: (s: Stream) => void;
  /** Registers the role's handlers on a fresh connection, before HELLO goes out. */
  setup: (conn: Connection) => void;
  /** The connection is authenticated and ready. */
  onUp?: (conn: Connection, welcome: Welcome) => void;
  /** It ended (the reason is logged too). */
  onDown?: (why: Error) => void;
  log: Log;
  random?: () => number;
  keepaliveInterval?: number;
  keepaliveTimeout?: number;
  /** Asked at each dial: the keepalive interval to request in the HELLO (ms), or undefined for
   * the relay's default. The onsite role asks for a longer one over a metered uplink. */
  keepaliveRequest?: () => number | undefined;
  /** Target for the log messages ("relay.example.net:443"). */
  describe: string;
  /** Backoff, "stable after", the WELCOME deadline and the connection's keepalive run on its
   * monotonic `now()`; `wall()` only turns instants into the times `status()` shows. */
  clock?: Clock;
}

export type ClientState = "connecting" | "up" | "waiting" | "closed";

/** The relay closed us with GOAWAY REVOKED (at the handshake, or later): only a new certificate helps. */
export class RevokedError extends Error {
  override name = "RevokedError";
}

/** The relay closed us with GOAWAY DUPLICATE: another device is connected with this certificate (a clone). */
export class DuplicateError extends Error {
  override name = "DuplicateError";
}

/**
 * The wait before the next dial. Pure. A revoked device waits the backoff's maximum every time:
 * redialling every few seconds would only fill the relay's refusal log.
 */
export function retryDelay(attempt: number, revoked: boolean, random: () => number = Math.random): number {
  return revoked ? Timing.backoffCap : backoffDelay(attempt - 1, random);
}

/**
 * The wait before the first dial after a connection that was up ended (issue 17): uniform over
 * the relay's spread window (WELCOME `spread`, which grows with its fleet) or the backoff's
 * ceiling, whichever is longer, so a relay restart does not bring every device back in the same
 * 250 ms. Without a spread (an older relay) or revoked: `retryDelay`. Pure.
 */
export function redialDelay(attempt: number, revoked: boolean, spread: number | undefined, random: () => number = Math.random): number {
  if (revoked || spread === undefined) return retryDelay(attempt, revoked, random);
  const ceiling = Math.min(Timing.backoffCap, Timing.backoffBase * 2 ** Math.min(Math.max(attempt - 1, -1), 30));
  return Math.floor(random() * Math.max(spread, ceiling));
}

/** The device's keepalive after asking for one: the relay's answer, within the bounds. Pure. */
export function deviceKeepalive(answered: number, own: { keepaliveInterval?: number; keepaliveTimeout?: number }): { interval: number; timeout: number } {
  return negotiateKeepalive(answered, { interval: own.keepaliveInterval ?? Timing.keepaliveInterval, timeout: own.keepaliveTimeout ?? Timing.keepaliveTimeout });
}

export class RelayClient {
  private conn: Connection | null = null;
  private stopped = false;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private redialNow = false;
  /** Abandons the dial (or HELLO/WELCOME exchange) in flight; set while connectOnce runs. */
  private abandonDial: ((why: Error) => void) | null = null;
  private readonly clock: Clock;
  /** Sent in every HELLO: the relay tells this device redialling from a clone of its certificate. */
  readonly instance = crypto.randomUUID().replaceAll("-", "").slice(0, 16);
  state: ClientState = "connecting";
  /** Monotonic instant (clock.now()) the state last changed. */
  since: number;
  attempt = 0;
  lastError: string | null = null;
  /** Monotonic instant of the next dial while waiting. */
  nextRetryAt: number | null = null;
  welcome: Welcome | null = null;
  connects = 0;

  constructor(private readonly o: RelayClientOptions) {
    this.clock = o.clock ?? systemClock;
    this.since = this.clock.now();
  }

  get connection(): Connection | null {
    return this.conn && !this.conn.closed && this.state === "up" ? this.conn : null;
  }

  start(): void {
    this.loop ??= this.routineConnect();
  }

  /** Drops the current connection (if any) and dials again at once: the path changed. */
  redial(reason: string): void {
    if (this.stopped) return;
    this.o.log.info(`redialing the relay now: ${reason}`);
    this.redialNow = true;
    this.attempt = 0;
    if (this.conn && !this.conn.closed) this.conn.close(0, `redial: ${reason}`);
    // A dial in flight may be stuck on the old path (its SYNs into a black hole) until the
    // dial timeout: drop it so the next one takes the new path now.
    this.abandonDial?.(new Error(`dial abandoned to redial: ${reason}`));
    this.wake?.();
  }

  async close(): Promise<void> {
    this.stopped = true;
    const closing = this.conn?.closeAndWait(5, `${this.o.id} is shutting down`);
    this.abandonDial?.(new Error("stopped")); // else shutdown waits for a hanging dial's timeout
    this.wake?.();
    await closing;
    await this.loop;
    this.state = "closed";
  }

  status(): Record<string, unknown> {
    return {
      relay: this.o.describe,
      state: this.state,
      since: new Date(wallOf(this.clock, this.since)).toISOString(),
      attempt: this.attempt,
      connects: this.connects,
      last_error: this.lastError,
      next_retry: this.nextRetryAt !== null ? new Date(wallOf(this.clock, this.nextRetryAt)).toISOString() : null,
      rtt_ms: this.conn?.rtt ?? null,
      keepalive_ms: this.conn?.keepalive?.interval ?? null,
    };
  }

  private setState(s: ClientState): void {
    if (this.state !== s) {
      this.state = s;
      this.since = this.clock.now();
      for (const fn of this.watchers) fn(s, this.lastError);
    }
  }

  private readonly watchers: ((state: ClientState, lastError: string | null) => void)[] = [];
  /** Calls `fn` at each state change, with the last error (for events and metrics). */
  watch(fn: (state: ClientState, lastError: string | null) => void): void {
    this.watchers.push(fn);
  }

  private async routineConnect(): Promise<void> {
    while (!this.stopped) {
      this.setState("connecting");
      let lived: number | null = null;
      let revoked = false;
      let duplicate = false;
      try {
        const conn = await this.connectOnce();
        this.conn = conn;
        const upAt = this.clock.now();
        this.setState("up");
        this.connects++;
        this.lastError = null;
        const why = await conn.wait();
        lived = this.clock.now() - upAt;
        this.conn = null;
        if (this.stopped) break;
        this.lastError = why.message;
        revoked = why.remote && why.code === GoAwayCode.REVOKED;
        duplicate = why.remote && why.code === GoAwayCode.DUPLICATE;
        this.o.log.warn(`relay connection lost: ${why.message}`);
        this.o.onDown?.(why);
      } catch (err) {
        if (this.stopped) break;
        const msg = err instanceof Error ? err.message : String(err);
        revoked = err instanceof RevokedError;
        duplicate = err instanceof DuplicateError;
        if (msg !== this.lastError) this.o.log.warn(`cannot reach the relay ${this.o.describe}: ${msg}`);
        else this.o.log.debug(`still cannot reach the relay: ${msg}`);
        this.lastError = msg;
      }
      if (this.stopped) break;
      this.attempt = nextAttempt(this.attempt, lived);
      const delay = this.redialNow ? 0 : lived !== null ? redialDelay(this.attempt, revoked || duplicate, this.welcome?.spread, this.o.random) : retryDelay(this.attempt, revoked || duplicate, this.o.random);
      if (duplicate) this.o.log.warn(`the relay refused this device as a duplicate: another device is connected with the same certificate (a cloned SD card?); dialling again only every ${Timing.backoffCap / 1000} s; give each device its own bundle (\`agent pki issue\`)`);
      if (revoked) this.o.log.warn(`the relay revoked this device's certificate (or it expired): dialling again only every ${Timing.backoffCap / 1000} s; issue a new bundle (\`agent pki issue --force\`)`);
      this.redialNow = false;
      this.setState("waiting");
      this.nextRetryAt = this.clock.now() + delay;
      await new Promise<void>((resolve) => {
        const t = this.clock.setTimeout(resolve, delay);
        this.wake = () => {
          this.clock.clearTimeout(t);
          resolve();
        };
      });
      this.wake = null;
      this.nextRetryAt = null;
    }
    this.setState("closed");
  }

  private async connectOnce(): Promise<Connection> {
    const abandoned = new Promise<never>((_, reject) => (this.abandonDial = reject));
    abandoned.catch(() => {}); // only ever raced
    try {
      return await this.dialAndGreet(abandoned);
    } finally {
      this.abandonDial = null;
    }
  }

  private async dialAndGreet(abandoned: Promise<never>): Promise<Connection> {
    const dialing = this.o.dial();
    let link: Link;
    try {
      link = await Promise.race([dialing, abandoned]);
    } catch (e) {
      // An abandoned dial that completes later is closed at once.
      void dialing.then((l) => l.destroy(), () => {});
      throw e;
    }
    if (this.stopped) {
      link.destroy();
      throw new Error("stopped");
    }
    const conn = new Connection(link, {
      side: "dialer",
      log: this.o.log,
      keepaliveInterval: this.o.keepaliveInterval,
      keepaliveTimeout: this.o.keepaliveTimeout,
      onStream: this.o.onStream,
      clock: this.clock,
      // The relay (authenticated) may answer with more than a frame: DEVICES of a big fleet.
      maxControlIn: MAX_CONTROL_MESSAGE,
    });
    this.o.setup(conn);
    const request = this.o.keepaliveRequest?.();
    const greeting = new Promise<Welcome>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => {
        conn.close(1, "no WELCOME in time");
        reject(new Error(`the relay did not answer HELLO within ${Timing.helloDeadline / 1000} s`));
      }, Timing.helloDeadline);
      on(
        conn,
        Msg.WELCOME,
        (b) => {
          this.clock.clearTimeout(timer);
          resolve({ version: b.version, relay: b.relay, address: b.address, keepalive: b.keepalive, ...(b.spread !== undefined ? { spread: b.spread } : {}) });
        },
        (err) => {
          this.clock.clearTimeout(timer);
          conn.close(1, "malformed WELCOME");
          reject(new Error(`the relay's WELCOME is malformed: ${err.message}`));
        },
      );
      void conn.wait().then((why: ConnectionClosed) => {
        this.clock.clearTimeout(timer);
        const text = why.remote ? `the relay refused us: ${why.message}` : why.message;
        reject(why.remote && why.code === GoAwayCode.REVOKED ? new RevokedError(text) : why.remote && why.code === GoAwayCode.DUPLICATE ? new DuplicateError(text) : new Error(text));
      });
      const hello: { versions: number[]; role: string; id: string; agent: string; keepalive?: number; instance: string } = { versions: [...PROTOCOL_VERSIONS], role: this.o.role, id: this.o.id, agent: this.o.agent, instance: this.instance };
      if (request !== undefined) hello.keepalive = request;
      send(conn, Msg.HELLO, hello);
    });
    let welcome: Welcome;
    try {
      welcome = await Promise.race([greeting, abandoned]);
    } catch (e) {
      greeting.catch(() => {});
      conn.close(0, (e as Error).message);
      throw e;
    }
    this.welcome = welcome;
    conn.peer = { id: welcome.relay, role: "relay" };
    // Asked for a keepalive: run the one the relay's WELCOME says it runs (an older relay's is
    // its own default), with a timeout of at least three of its PINGs.
    conn.startKeepalive(request === undefined ? undefined : deviceKeepalive(welcome.keepalive ?? request, this.o));
    this.o.log.info(`connected to relay ${welcome.relay} at ${this.o.describe} (protocol v${welcome.version}, seen as ${welcome.address})`);
    this.o.onUp?.(conn, welcome);
    return conn;
  }
}
