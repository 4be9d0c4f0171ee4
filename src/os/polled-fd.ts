// Reads datagrams from a non-blocking socket opened through libc, without ever blocking the
// event loop: Bun cannot watch a foreign fd (the `netlink` package's uv_poll aborts the
// process under Bun), so the fd is read with recvfrom(MSG_DONTWAIT) from a short timer, and
// on demand by callers that expect a reply now. One empty read costs about 1 µs
// (`make bench B=uplink`), so a 10–25 ms timer is cheap and keeps everything on one thread.
//
// The netlink route socket and the AF_UNIX datagram socket both read through this. The
// system calls come in through `RecvOps`, so the reader's logic (EAGAIN, EINTR, errors,
// source addresses, the timer) is tested against `FakeRecvOps` as well as real sockets.
import { ptr } from "bun:ffi";
import { systemClock, type Clock, type TimerHandle } from "../clock.ts";
import { E, errno, libc, MSG_DONTWAIT, OsError } from "./libc.ts";

/** The two calls a reader makes. `recvfrom` returns bytes read, or -1 with `errno()` set. */
export interface RecvOps {
  recvfrom(fd: number, buf: Uint8Array, flags: number, addr: Uint8Array | null, addrLen: Uint8Array | null): number;
  errno(): number;
}

export const realRecvOps: RecvOps = {
  recvfrom: (fd, buf, flags, addr, addrLen) => Number(libc().recvfrom(fd, ptr(buf), buf.length, flags, addr ? ptr(addr) : null, addrLen ? ptr(addrLen) : null)),
  errno,
};

export interface Packet {
  /** The datagram (a copy: the receive buffer is reused). */
  data: Buffer;
  /** The sender's raw socket address (`sockaddr_*`, as long as the kernel filled it), when asked for. */
  from?: Buffer;
}

export interface PolledFdOptions {
  /** Receive buffer size: the largest datagram read whole. */
  bufSize: number;
  /** Size of the sender address to collect (e.g. sizeof(sockaddr_un)); 0: none. */
  addrSize?: number;
  /** What `describe` names in errors, e.g. "netlink" or "/run/x.sock". */
  name?: string;
  ops?: RecvOps;
  clock?: Clock;
}

/**
 * One non-blocking fd read as datagrams. It does not own the fd: the socket's class opens and
 * closes it, and calls `stop()` first.
 */
export class PolledFd {
  private readonly buf: Buffer;
  private readonly addr: Buffer | null;
  private readonly addrLen: Buffer | null;
  private readonly ops: RecvOps;
  private readonly clock: Clock;
  private timer: TimerHandle | undefined;

  constructor(
    private fd: number,
    private readonly o: PolledFdOptions,
  ) {
    this.buf = Buffer.alloc(o.bufSize);
    const a = o.addrSize ?? 0;
    this.addr = a > 0 ? Buffer.alloc(a) : null;
    this.addrLen = a > 0 ? Buffer.alloc(4) : null;
    this.ops = o.ops ?? realRecvOps;
    this.clock = o.clock ?? systemClock;
  }

  /** True once `stop(true)` detached the fd. */
  get detached(): boolean {
    return this.fd < 0;
  }

  /**
   * One queued datagram, or undefined when nothing is queued (EAGAIN) or the read was
   * interrupted (EINTR: the next tick reads it). Any other errno throws an `OsError`
   * (e.g. ENOBUFS on netlink: the kernel dropped messages).
   */
  readOnce(): Packet | undefined {
    if (this.fd < 0) return undefined;
    if (this.addrLen) this.addrLen.writeUInt32LE(this.addr!.length, 0);
    const n = this.ops.recvfrom(this.fd, this.buf, MSG_DONTWAIT, this.addr, this.addrLen);
    if (n < 0) {
      const e = this.ops.errno();
      if (e === E.EAGAIN || e === E.EINTR) return undefined;
      throw new OsError(`recv on ${this.o.name ?? `fd ${this.fd}`}`, e);
    }
    const data = Buffer.from(this.buf.subarray(0, n));
    if (!this.addr) return { data };
    const len = Math.min(this.addrLen!.readUInt32LE(0), this.addr.length);
    return { data, from: Buffer.from(this.addr.subarray(0, len)) };
  }

  /** Delivers every queued datagram to `cb`; returns how many. Errors are thrown to the caller. */
  drain(cb: (p: Packet) => void): number {
    let count = 0;
    for (;;) {
      const p = this.readOnce();
      if (!p) return count;
      count++;
      cb(p);
    }
  }

  /**
   * Calls `tick` every `periodMs` until `stop()` (idempotent: a second call keeps the first
   * timer). `tick` normally drains; it decides what a read error means for its socket.
   */
  start(periodMs: number, tick: () => void): void {
    if (this.timer !== undefined || this.fd < 0) return;
    this.timer = this.clock.setInterval(tick, periodMs);
  }

  get polling(): boolean {
    return this.timer !== undefined;
  }

  /** Stops the timer; with `detach`, the fd is forgotten (its owner is about to close it). */
  stop(detach = false): void {
    this.clock.clearInterval(this.timer);
    this.timer = undefined;
    if (detach) this.fd = -1;
  }
}

/**
 * A socket's receive queue in memory, for tests of the reader: `push` queues a datagram,
 * `fail` makes the next read fail with an errno. Reads of an fd other than `fd` fail EBADF.
 */
export class FakeRecvOps implements RecvOps {
  private queue: ({ data: Uint8Array; from?: Uint8Array } | { errno: number })[] = [];
  private last = 0;
  reads = 0;

  constructor(readonly fd = 3) {}

  push(data: string | Uint8Array, from?: Uint8Array): void {
    this.queue.push({ data: typeof data === "string" ? Buffer.from(data) : data, from });
  }
  fail(errnum: number): void {
    this.queue.push({ errno: errnum });
  }
  get queued(): number {
    return this.queue.length;
  }

  recvfrom(fd: number, buf: Uint8Array, _flags: number, addr: Uint8Array | null, addrLen: Uint8Array | null): number {
    this.reads++;
    if (fd !== this.fd) return this.error(E.EBADF);
    const next = this.queue.shift();
    if (!next) return this.error(E.EAGAIN);
    if ("errno" in next) return this.error(next.errno);
    // As the kernel does: a datagram longer than the buffer is cut, the rest is lost.
    const n = Math.min(next.data.length, buf.length);
    buf.set(next.data.subarray(0, n));
    if (addr && addrLen) {
      const from = next.from ?? new Uint8Array(0);
      const room = new DataView(addrLen.buffer, addrLen.byteOffset, 4).getUint32(0, true);
      addr.set(from.subarray(0, Math.min(room, from.length)));
      new DataView(addrLen.buffer, addrLen.byteOffset, 4).setUint32(0, from.length, true);
    }
    return n;
  }
  errno(): number {
    return this.last;
  }
  private error(e: number): number {
    this.last = e;
    return -1;
  }
}
