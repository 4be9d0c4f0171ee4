// The relay's link to Redis: a thin adapter on Bun's built-in RedisClient (RESP3, pub/sub),
// two connections (commands, and one in subscriber mode), redialled with a capped backoff for as
// long as the relay runs. Bun's own reconnect gives up after a number of tries and queues
// commands while down; here nothing is queued: a command while Redis is away, or one not
// answered within ClusterTiming.command, fails at once with ClusterUnavailableError, so the relay
// refuses what needs the cluster and goes on with what it holds itself.
import { RedisClient } from "bun";
import { systemClock, type Clock, type TimerHandle } from "../clock.ts";
import { ClusterUnavailableError } from "./directory.ts";
import { ClusterTiming } from "./presence.ts";

/** What the directory needs of Redis; `MemoryRedis`-style fakes may stand in. */
export interface RedisPort {
  /** Both connections are up. */
  readonly up: boolean;
  /** One command; throws ClusterUnavailableError when Redis is away or silent. */
  cmd(name: string, args: string[]): Promise<unknown>;
  /** Channels to listen on, kept across reconnects. */
  subscribe(channels: string[], listener: (message: string, channel: string) => void): void;
  /** Up or down changed; `up` false also for every failed dial (why: the error). */
  onState(listener: (up: boolean, why: string) => void): void;
  start(): void;
  close(): void;
}

export interface BunRedisOptions {
  url: string;
  clock?: Clock;
  random?: () => number;
  /** Redis over TLS (rediss://): the CA to trust, PEM; default: the system's. */
  ca?: string;
}

export class BunRedis implements RedisPort {
  private cmdClient: RedisClient | null = null;
  private subClient: RedisClient | null = null;
  private readonly subs: { channels: string[]; listener: (m: string, c: string) => void }[] = [];
  private readonly listeners: ((up: boolean, why: string) => void)[] = [];
  private timer: TimerHandle | null = null;
  private attempt = 0;
  private closed = false;
  private dialing = false;
  private isUp = false;
  private readonly clock: Clock;
  private lastWhy = "not connected yet";

  constructor(private readonly o: BunRedisOptions) {
    this.clock = o.clock ?? systemClock;
  }

  get up(): boolean {
    return this.isUp;
  }

  /** Why it is down (the last error), for status and refusals. */
  get why(): string {
    return this.lastWhy;
  }

  onState(listener: (up: boolean, why: string) => void): void {
    this.listeners.push(listener);
  }

  subscribe(channels: string[], listener: (message: string, channel: string) => void): void {
    this.subs.push({ channels, listener });
    if (this.isUp && this.subClient) void this.subClient.subscribe(channels, listener).catch((e) => this.lost(e as Error));
  }

  start(): void {
    void this.dial();
  }

  private make(): RedisClient {
    const tls = this.o.url.startsWith("rediss:") ? (this.o.ca ? { ca: this.o.ca } : true) : undefined;
    const c = new RedisClient(this.o.url, { autoReconnect: false, enableOfflineQueue: false, connectionTimeout: 2_000, enableAutoPipelining: true, ...(tls ? { tls } : {}) });
    c.onclose = (e) => this.lost(e ?? new Error("connection closed"));
    return c;
  }

  private async dial(): Promise<void> {
    if (this.closed || this.dialing) return;
    this.dialing = true;
    this.timer = null;
    const cmd = this.make();
    const sub = this.make();
    try {
      await Promise.all([cmd.connect(), sub.connect()]);
      // Every subscription again: a new connection has none.
      for (const s of this.subs) await sub.subscribe(s.channels, s.listener);
      if (this.closed) throw new Error("closed");
      this.cmdClient = cmd;
      this.subClient = sub;
      this.attempt = 0;
      this.isUp = true;
      this.dialing = false;
      for (const l of this.listeners) l(true, "connected");
    } catch (e) {
      this.dialing = false;
      cmd.onclose = null;
      sub.onclose = null;
      cmd.close();
      sub.close();
      this.lastWhy = describe(e as Error, this.o.url);
      for (const l of this.listeners) l(false, this.lastWhy);
      this.schedule();
    }
  }

  private schedule(): void {
    if (this.closed || this.timer !== null) return;
    const ceiling = Math.min(ClusterTiming.redialCap, ClusterTiming.redialBase * 2 ** Math.min(this.attempt++, 10));
    this.timer = this.clock.setTimeout(() => void this.dial(), Math.max(50, Math.floor((this.o.random ?? Math.random)() * ceiling)));
  }

  private lost(e: Error): void {
    this.lastWhy = describe(e, this.o.url);
    this.dropClients(this.lastWhy);
    this.schedule();
  }

  /** Closes both links without their onclose firing; tells the listeners `why` if the link was up. */
  private dropClients(why: string): void {
    const wasUp = this.isUp;
    this.isUp = false;
    for (const c of [this.cmdClient, this.subClient]) {
      if (!c) continue;
      c.onclose = null;
      c.close();
    }
    this.cmdClient = null;
    this.subClient = null;
    if (wasUp) for (const l of this.listeners) l(false, why);
  }

  async cmd(name: string, args: string[]): Promise<unknown> {
    const c = this.cmdClient;
    if (!this.isUp || !c) throw new ClusterUnavailableError(this.lastWhy);
    let timer: TimerHandle | null = null;
    try {
      return await Promise.race([
        c.send(name, args),
        new Promise<never>((_, reject) => {
          timer = this.clock.setTimeout(() => reject(new ClusterUnavailableError(`no answer to ${name} within ${ClusterTiming.command} ms`)), ClusterTiming.command);
        }),
      ]);
    } catch (e) {
      if (e instanceof ClusterUnavailableError) {
        this.lost(e);
        throw e;
      }
      const code = (e as { code?: string }).code;
      // A server's error reply is an answer (the command was wrong); anything else is the link.
      if (code === "ERR_REDIS_SERVER_ERROR") throw e;
      this.lost(e as Error);
      throw new ClusterUnavailableError(describe(e as Error, this.o.url));
    } finally {
      this.clock.clearTimeout(timer);
    }
  }

  close(): void {
    this.closed = true;
    this.clock.clearTimeout(this.timer);
    this.timer = null;
    this.dropClients("closed");
  }
}

/** An error of the Redis link as one line, the password never in it. */
function describe(e: Error, url: string): string {
  let where = url;
  try {
    const u = new URL(url);
    where = `${u.hostname}:${u.port || 6379}`;
  } catch {
    /* keep */
  }
  return `${where}: ${(e.message || String(e)).replace(/\/\/[^@/]*@/g, "//***@").slice(0, 200)}`;
}
