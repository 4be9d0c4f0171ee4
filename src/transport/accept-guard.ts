// Out of descriptors (issue 17): Bun's accept loop does not back off when accept() fails with
// EMFILE; the listening socket stays readable and the loop spins a core for nothing. The guard
// looks at the process's descriptors a few times a second; when they are nearly out it closes
// the listening socket (the connections it accepted stay), waits (acceptPause: 50 ms doubling
// to 2 s), and listens again on the same port once there is room (below the mark by as much
// again: no flapping at the edge). While paused a new connection is refused by the kernel, and
// a device backs off and redials as after any refused dial.
import { readdirSync } from "node:fs";
import { acceptPause, descriptorsOut } from "./accept-pacer.ts";
import type { Clock, TimerHandle } from "../clock.ts";

export interface Stoppable {
  readonly port: number;
  stop(closeActiveConnections?: boolean): void;
}

export interface AcceptGuardOptions {
  /** Listens (again) on this port; throws if it cannot. */
  listen(port: number): Stoppable;
  port: number;
  /** The soft open-files limit. */
  limit: number;
  /** Descriptors in use now (default: the entries of /proc/self/fd). */
  open?: () => number;
  /** Kept free for the rest of the process (default: 1/16 of the limit, at least 8). */
  reserve?: number;
  /** How often descriptors are counted while accepting (ms). */
  every?: number;
  clock: Clock;
  log: { warn(msg: string): void; info(msg: string): void };
}

export function openDescriptors(): number {
  return readdirSync("/proc/self/fd").length;
}

/** A listener that stops accepting while the process is nearly out of descriptors. */
export class AcceptGuard implements Stoppable {
  private listener: Stoppable | null;
  private readonly reserve: number;
  private tick: TimerHandle | null = null;
  private wait: TimerHandle | null = null;
  private pauses = 0;
  private stopped = false;
  /** Times accepting was paused since start. */
  paused = 0;
  readonly port: number;

  constructor(private readonly o: AcceptGuardOptions) {
    this.listener = o.listen(o.port);
    this.port = this.listener.port;
    this.reserve = o.reserve ?? Math.max(8, Math.floor(o.limit / 16));
    this.tick = o.clock.setInterval(() => this.check(), o.every ?? 250);
  }

  get accepting(): boolean {
    return this.listener !== null;
  }

  private count(): number {
    try {
      return (this.o.open ?? openDescriptors)();
    } catch (e) {
      // Listing /proc/self/fd takes a descriptor itself: failing for want of one is the answer.
      const code = (e as NodeJS.ErrnoException).code;
      return code === "EMFILE" || code === "ENFILE" ? Infinity : 0;
    }
  }

  private check(): void {
    if (this.stopped || !this.listener) return;
    const open = this.count();
    if (!descriptorsOut(open, this.o.limit, this.reserve)) return;
    this.listener.stop(false);
    this.listener = null;
    this.paused++;
    this.pauses = 0;
    this.o.log.warn(`out of descriptors (${open === Infinity ? "all" : open} open of ${this.o.limit}): not accepting new connections until some are free; the devices connected stay`);
    this.again();
  }

  private again(): void {
    this.pauses++;
    this.wait = this.o.clock.setTimeout(() => {
      this.wait = null;
      if (this.stopped) return;
      const open = this.count();
      if (descriptorsOut(open, this.o.limit, 2 * this.reserve)) return this.again();
      try {
        this.listener = this.o.listen(this.port);
      } catch (e) {
        this.o.log.warn(`cannot listen on port ${this.port} again: ${(e as Error).message}; trying again`);
        return this.again();
      }
      this.o.log.info(`descriptors free again (${open} open of ${this.o.limit}): accepting new connections`);
    }, acceptPause(this.pauses));
  }

  stop(closeActiveConnections?: boolean): void {
    this.stopped = true;
    this.o.clock.clearInterval(this.tick);
    this.o.clock.clearTimeout(this.wait);
    this.listener?.stop(closeActiveConnections);
    this.listener = null;
  }
}
