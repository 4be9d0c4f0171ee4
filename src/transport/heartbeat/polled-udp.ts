// The relay's heartbeat socket, read in batches: a UDP socket opened through libc and drained
// from a timer (every `periodMs`, default 50 ms) instead of one event-loop wake per datagram.
// At 5,000 devices a heartbeat arrives every 5 ms; node:dgram wakes the loop, makes a Buffer,
// an rinfo object and an event for each, which was most of what heartbeats cost the relay
// (`make bench B=fleet`). Here one tick reads what queued (≈10 datagrams) into one reused
// buffer and hands each on as a view: `Datagram.data` is valid only during the callback (the
// receiver judges it synchronously and keeps nothing of it). The kernel's receive queue holds
// what arrives between ticks (SO_RCVBUF asked for 1 MiB; the kernel caps it at rmem_max); a
// flood beyond it is dropped by the kernel, and one tick reads at most `maxPerTick`, so a
// stranger's flood costs bounded work and leaves nothing behind.
//
// The system calls come in through `UdpOps` (real: src/os/libc.ts), so the reading logic is
// tested against a fake as well as a real socket (test/heartbeat-polled-udp.test.ts).
import { ptr } from "bun:ffi";
import { systemClock, type Clock, type TimerHandle } from "../../clock.ts";
import { AF_INET, E, errno, libc, MSG_DONTWAIT, OsError, SO_RCVBUF, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, SOL_SOCKET } from "../../os/libc.ts";
import type { Datagram, DatagramSocket, OpenDatagram } from "./socket.ts";

const SOCKADDR_IN = 16;
/** Larger than any heartbeat (MAX_DATAGRAM): a longer datagram is cut and then judged truncated or malformed. */
const RECV_BUF = 2048;
export const POLL_MS = 50;
const MAX_PER_TICK = 4096;
const RCVBUF_BYTES = 1 << 20;

export interface UdpOps {
  open(address: string, port: number): number;
  /** The bound port. */
  port(fd: number): number;
  recvfrom(fd: number, buf: Uint8Array, addr: Uint8Array, addrLen: Uint8Array): number;
  sendto(fd: number, data: Uint8Array, addr: Uint8Array): number;
  errno(): number;
  close(fd: number): void;
}

/** A sockaddr_in for `address:port` (IPv4 literal). Pure. */
export function sockaddrIn(address: string, port: number): Uint8Array {
  const parts = address.split(".").map(Number);
  if (parts.length !== 4 || parts.some((n) => !Number.isInteger(n) || n < 0 || n > 255)) throw new Error(`not an IPv4 address: ${JSON.stringify(address)}`);
  const sa = new Uint8Array(SOCKADDR_IN);
  const v = new DataView(sa.buffer);
  v.setUint16(0, AF_INET, true);
  v.setUint16(2, port, false);
  sa.set(parts, 4);
  return sa;
}

export const realUdpOps: UdpOps = {
  open(address, port) {
    const c = libc();
    const fd = c.socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new OsError("socket(AF_INET, SOCK_DGRAM)", errno());
    const size = new Int32Array([RCVBUF_BYTES]);
    c.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, ptr(size), 4); // best effort: the default still works
    const sa = sockaddrIn(address, port);
    if (c.bind(fd, ptr(sa), SOCKADDR_IN) < 0) {
      const e = errno();
      c.close(fd);
      throw Object.assign(new OsError(`bind udp ${address}:${port}`, e), { code: e === 98 ? "EADDRINUSE" : e === 13 ? "EACCES" : e === 99 ? "EADDRNOTAVAIL" : undefined });
    }
    return fd;
  },
  port(fd) {
    const sa = new Uint8Array(SOCKADDR_IN);
    const len = new Uint32Array([SOCKADDR_IN]);
    if (libc().getsockname(fd, ptr(sa), ptr(len)) < 0) throw new OsError("getsockname", errno());
    return new DataView(sa.buffer).getUint16(2, false);
  },
  recvfrom: (fd, buf, addr, addrLen) => Number(libc().recvfrom(fd, ptr(buf), buf.length, MSG_DONTWAIT, ptr(addr), ptr(addrLen))),
  sendto: (fd, data, addr) => Number(libc().sendto(fd, ptr(data), data.length, 0, ptr(addr), SOCKADDR_IN)),
  errno,
  close: (fd) => void libc().close(fd),
};

export interface PolledUdpOptions {
  ops?: UdpOps;
  clock?: Clock;
  periodMs?: number;
  maxPerTick?: number;
}

/** The receive loop over `UdpOps`: one reused buffer, each datagram a view handed to the handlers. */
export class PolledUdp implements DatagramSocket {
  private readonly buf = new Uint8Array(RECV_BUF);
  private readonly addr = new Uint8Array(SOCKADDR_IN);
  private readonly addrLen = new Uint32Array(1);
  private readonly addrLenBytes = new Uint8Array(this.addrLen.buffer);
  private readonly handlers: ((d: Datagram) => void)[] = [];
  private readonly timer: TimerHandle;
  private readonly clock: Clock;
  private readonly ops: UdpOps;
  private readonly maxPerTick: number;
  private fd: number;
  private readonly bound: { address: string; port: number };
  /** Read errors other than EAGAIN/EINTR (the next tick tries again). */
  errors = 0;
  ticks = 0;

  constructor(address: string, port: number, o: PolledUdpOptions = {}) {
    this.ops = o.ops ?? realUdpOps;
    this.clock = o.clock ?? systemClock;
    this.maxPerTick = o.maxPerTick ?? MAX_PER_TICK;
    this.fd = this.ops.open(address, port);
    this.bound = { address, port: this.ops.port(this.fd) };
    this.timer = this.clock.setInterval(() => this.tick(), o.periodMs ?? POLL_MS);
    (this.timer as { unref?: () => void }).unref?.();
  }

  /** Reads what queued (at most maxPerTick); returns how many datagrams were handed on. */
  tick(): number {
    this.ticks++;
    let n = 0;
    while (this.fd >= 0 && n < this.maxPerTick) {
      this.addrLen[0] = SOCKADDR_IN;
      const len = this.ops.recvfrom(this.fd, this.buf, this.addr, this.addrLenBytes);
      if (len < 0) {
        const e = this.ops.errno();
        if (e !== E.EAGAIN && e !== E.EINTR) this.errors++;
        break;
      }
      n++;
      const a = this.addr;
      const d: Datagram = { data: this.buf.subarray(0, len), address: `${a[4]}.${a[5]}.${a[6]}.${a[7]}`, port: (a[2]! << 8) | a[3]! };
      for (const h of this.handlers) h(d);
    }
    return n;
  }

  async send(data: Uint8Array, port: number, address: string): Promise<void> {
    if (this.fd < 0) throw new Error("socket closed");
    if (this.ops.sendto(this.fd, data, sockaddrIn(address, port)) < 0) throw new OsError(`sendto ${address}:${port}`, this.ops.errno());
  }

  onMessage(fn: (d: Datagram) => void): void {
    this.handlers.push(fn);
  }

  local(): { address: string; port: number } {
    return { ...this.bound };
  }

  async close(): Promise<void> {
    this.clock.clearInterval(this.timer);
    if (this.fd >= 0) this.ops.close(this.fd);
    this.fd = -1;
  }
}

/** Opens the polled socket (an IPv4 literal address, or 0.0.0.0 when none is given). */
export const openPolledUdp: OpenDatagram = async ({ address, port }) => new PolledUdp(address ?? "0.0.0.0", port ?? 0);
