// Readiness of foreign fds without a polling timer. Bun cannot watch an fd it did not open,
// so PolledFd reads on a timer: cheap for a netlink socket, but a TUN device read every 1 ms
// costs about 3 % of a core while idle and adds up to 1 ms per direction. Here one worker
// thread per process (fd-watch-worker.ts) blocks in poll(2) on every armed fd and posts the
// slots that became readable; the main thread then reads them (non-blocking, as before) and
// re-arms. Idle: no wake-ups at all; busy: one message per drained batch.
//
// The main thread owns the fds (opens, reads, closes); the worker only waits. A wake socket
// (AF_UNIX datagram pair) interrupts the worker's poll when a slot is armed or freed.
import { ptr } from "bun:ffi";
import { AF_UNIX, libc, MSG_DONTWAIT, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, socketPair } from "./libc.ts";

export const WATCH_SLOTS = 64;

export interface FdWatch {
  /** Ask for one more callback when the fd is readable (after the last one was handled). */
  arm(): void;
  /** Stop watching; call before closing the fd. */
  remove(): void;
}

export class FdWatcher {
  private static one: FdWatcher | undefined;
  private readonly shared = new SharedArrayBuffer(4 * (1 + 2 * WATCH_SLOTS));
  private readonly s = new Int32Array(this.shared);
  private readonly cbs: ((() => void) | undefined)[] = new Array(WATCH_SLOTS);
  private readonly worker: Worker;
  private readonly wakeMain: number;
  private readonly wakeByte = Buffer.from([1]);
  private used = 0;

  private constructor() {
    for (let i = 0; i < WATCH_SLOTS; i++) this.s[1 + 2 * i] = -1;
    const [a, b] = socketPair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
    this.wakeMain = a;
    this.worker = new Worker(new URL("./fd-watch-worker.ts", import.meta.url).href);
    this.worker.onmessage = (e: MessageEvent<number[]>) => {
      for (const i of e.data) this.cbs[i]?.();
    };
    this.worker.postMessage({ shared: this.shared, slots: WATCH_SLOTS, wakeFd: b });
    this.worker.unref();
  }

  /** The process's watcher, started on first use. */
  static get(): FdWatcher {
    return (FdWatcher.one ??= new FdWatcher());
  }

  /** Slots in use (tests, status). */
  get watching(): number {
    return this.used;
  }

  private wake(): void {
    // EAGAIN (wake-ups already queued) is as good as a wake-up.
    libc().send(this.wakeMain, ptr(this.wakeByte), 1, MSG_DONTWAIT);
  }

  /** Watches `fd`; `onReadable` runs on the main thread, then the watch waits for `arm()`. */
  add(fd: number, onReadable: () => void): FdWatch {
    const i = this.cbs.findIndex((c) => c === undefined);
    if (i < 0) throw new Error(`more than ${WATCH_SLOTS} fds watched at once`);
    this.cbs[i] = onReadable;
    this.used++;
    Atomics.store(this.s, 1 + 2 * i, fd);
    Atomics.store(this.s, 2 + 2 * i, 0);
    let gone = false;
    return {
      arm: () => {
        if (gone) return;
        Atomics.store(this.s, 2 + 2 * i, 1);
        Atomics.add(this.s, 0, 1);
        this.wake();
      },
      remove: () => {
        if (gone) return;
        gone = true;
        this.cbs[i] = undefined;
        this.used--;
        Atomics.store(this.s, 2 + 2 * i, 0);
        Atomics.store(this.s, 1 + 2 * i, -1);
        Atomics.add(this.s, 0, 1);
        this.wake();
      },
    };
  }
}
