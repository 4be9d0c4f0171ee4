// Runs one helper daemon (hostapd, dnsmasq) in the foreground as our child: restarted with
// backoff when it dies, its pid kept in a pid file in the state directory. When the agent
// itself is killed (-9) the child lives on; the next start reads the pid file and stops that
// orphan, but only if /proc/<pid>/cmdline still shows the same executable and our own
// configuration file: a pid reused by another process is never signalled, and nothing is
// ever stopped by its name alone.
//
// The child is started through the one spawner (`src/os/spawn.ts`) and every duration
// (backoff, a stable run, the stop grace) is measured on the injected monotonic clock, so a
// wall-clock step neither resets nor stretches a backoff; tests run it on FakeSpawner + FakeClock.
import { existsSync, mkdirSync, readFileSync, unlinkSync } from "node:fs";
import { basename, dirname } from "node:path";
import { systemClock, type Clock, type TimerHandle } from "../clock.ts";
import type { Logger } from "../log.ts";
import { writeFileAtomic } from "../os/atomic.ts";
import { realSpawn, type Child, type Spawner } from "../os/spawn.ts";

/** First restart after this long; doubles per crash up to BACKOFF_MAX_MS. */
export const BACKOFF_MIN_MS = 500;
export const BACKOFF_MAX_MS = 30_000;
/** A run this long resets the backoff: the crash before it was a one-off. */
export const STABLE_RUN_MS = 60_000;
/** SIGTERM, then SIGKILL after this long. */
export const STOP_GRACE_MS = 3_000;

export function nextBackoff(prev: number | undefined, ranMs: number): number {
  if (prev === undefined || ranMs >= STABLE_RUN_MS) return BACKOFF_MIN_MS;
  return Math.min(prev * 2, BACKOFF_MAX_MS);
}

export interface SupervisedStatus {
  name: string;
  running: boolean;
  pid?: number;
  restarts: number;
  last_exit?: { code: number | null; signal?: string; at: string };
  next_restart_ms?: number;
}

/** argv[] of a live process, or undefined. */
export function cmdlineOf(pid: number): string[] | undefined {
  try {
    const raw = readFileSync(`/proc/${pid}/cmdline`);
    if (raw.length === 0) return undefined; // zombie or kernel thread
    return raw.toString().replace(/\0$/, "").split("\0");
  } catch {
    return undefined;
  }
}

/** Is `pid` the process we started with `argv`: same executable name and same arguments? */
export function sameProcess(cmdline: string[] | undefined, argv: readonly string[]): boolean {
  if (!cmdline || cmdline.length === 0) return false;
  // A script runs as "interpreter script args…": compare from the executable's own name.
  const at = cmdline.findIndex((a) => basename(a) === basename(argv[0]!));
  if (at < 0) return false;
  const rest = cmdline.slice(at + 1);
  return rest.length === argv.length - 1 && rest.every((a, i) => a === argv[i + 1]);
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const sleep = (clock: Clock, ms: number) => new Promise<void>((r) => clock.setTimeout(r, ms));

async function waitGone(pid: number, ms: number, clock: Clock): Promise<boolean> {
  const until = clock.now() + ms;
  while (clock.now() < until) {
    const c = cmdlineOf(pid);
    if (!alive(pid) || c === undefined) return true;
    await sleep(clock, 25);
  }
  return !alive(pid);
}

/**
 * Stops a process left by a previous agent run, found by its pid file; returns its pid if
 * one was stopped. The pid file is removed either way.
 */
export async function stopOrphan(pidFile: string, argv: readonly string[], log?: Logger, clock: Clock = systemClock): Promise<number | undefined> {
  if (!existsSync(pidFile)) return undefined;
  const pid = Number(readFileSync(pidFile, "utf8").trim());
  try {
    unlinkSync(pidFile);
  } catch {
    // gone meanwhile
  }
  if (!Number.isInteger(pid) || pid <= 1) return undefined;
  if (!sameProcess(cmdlineOf(pid), argv)) {
    log?.debug(`pid file ${pidFile} names pid ${pid}, which is not our ${basename(argv[0]!)} any more; left alone`);
    return undefined;
  }
  log?.warn(`stopping ${basename(argv[0]!)} (pid ${pid}) left running by a previous agent`);
  process.kill(pid, "SIGTERM");
  if (!(await waitGone(pid, STOP_GRACE_MS, clock))) {
    process.kill(pid, "SIGKILL");
    await waitGone(pid, STOP_GRACE_MS, clock);
  }
  return pid;
}

export interface SupervisorOptions {
  name: string;
  argv: readonly string[];
  pidFile: string;
  log: Logger;
  /** Output lines of the child go to the log at debug level (hostapd and dnsmasq are chatty). */
  env?: Record<string, string>;
  /** Default: the real spawner. */
  spawn?: Spawner;
  /** Default: the system clock. Backoff and grace periods use `now()`, `last_exit.at` uses `wall()`. */
  clock?: Clock;
}

export class Supervisor {
  private proc: Child | undefined;
  private stopping = true;
  private backoff: number | undefined;
  private restarts = 0;
  private lastExit: SupervisedStatus["last_exit"];
  private timer: TimerHandle | undefined;
  private nextAt: number | undefined;
  private exitWaiters: (() => void)[] = [];
  private readonly clock: Clock;
  private readonly spawner: Spawner;

  constructor(private readonly o: SupervisorOptions) {
    this.clock = o.clock ?? systemClock;
    this.spawner = o.spawn ?? realSpawn;
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  /** Stops an orphan of an earlier run, then starts the process. */
  async start(): Promise<void> {
    await stopOrphan(this.o.pidFile, this.o.argv, this.o.log, this.clock);
    this.stopping = false;
    this.backoff = undefined;
    this.spawn();
  }

  private spawn(): void {
    this.timer = undefined;
    this.nextAt = undefined;
    if (this.stopping) return;
    const started = this.clock.now();
    let p: Child;
    try {
      p = this.spawner(this.o.argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...this.o.env } });
    } catch (e) {
      this.o.log.error(`cannot start ${this.o.name}: ${(e as Error).message}`);
      this.scheduleRestart(0, null, undefined);
      return;
    }
    this.proc = p;
    mkdirSync(dirname(this.o.pidFile), { recursive: true, mode: 0o700 });
    writeFileAtomic(this.o.pidFile, `${p.pid}\n`, { mode: 0o600 });
    this.o.log.info(`${this.o.name} started (pid ${p.pid})`);
    void this.pipe(p.stdout as ReadableStream<Uint8Array>);
    void this.pipe(p.stderr as ReadableStream<Uint8Array>);
    void p.exited.then((code) => {
      if (this.proc === p) this.proc = undefined;
      const signal = p.signalCode == null ? undefined : String(p.signalCode);
      this.lastExit = { code: signal ? null : code, signal, at: new Date(this.clock.wall()).toISOString() };
      for (const w of this.exitWaiters.splice(0)) w();
      if (this.stopping) return;
      this.scheduleRestart(Math.round(this.clock.now() - started), signal ? null : code, signal);
    });
  }

  private scheduleRestart(ranMs: number, code: number | null, signal: string | undefined): void {
    this.backoff = nextBackoff(this.backoff, ranMs);
    this.restarts++;
    this.nextAt = this.clock.now() + this.backoff;
    try {
      unlinkSync(this.o.pidFile);
    } catch {
      // not written
    }
    this.o.log.warn(`${this.o.name} exited (${signal ? `signal ${signal}` : `code ${code}`}) after ${ranMs} ms; restarting in ${this.backoff} ms`);
    this.timer = this.clock.setTimeout(() => this.spawn(), this.backoff);
  }

  private async pipe(stream: ReadableStream<Uint8Array>): Promise<void> {
    const dec = new TextDecoder();
    let buf = "";
    try {
      for await (const chunk of stream) {
        buf += dec.decode(chunk);
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (line) this.o.log.debug(`${this.o.name}: ${line}`);
        }
      }
    } catch {
      // process gone
    }
  }

  /** Stops the process (SIGTERM, then SIGKILL) and any pending restart. Idempotent. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.nextAt = undefined;
    const p = this.proc;
    if (p) {
      const gone = new Promise<void>((r) => this.exitWaiters.push(r));
      p.kill("SIGTERM");
      const t = this.clock.setTimeout(() => p.kill("SIGKILL"), STOP_GRACE_MS);
      await gone;
      this.clock.clearTimeout(t);
      this.o.log.info(`${this.o.name} stopped`);
    }
    try {
      unlinkSync(this.o.pidFile);
    } catch {
      // none
    }
  }

  status(): SupervisedStatus {
    return {
      name: this.o.name,
      running: !!this.proc,
      pid: this.proc?.pid,
      restarts: this.restarts,
      last_exit: this.lastExit,
      next_restart_ms: this.nextAt === undefined ? undefined : Math.max(0, Math.round(this.nextAt - this.clock.now())),
    };
  }
}
