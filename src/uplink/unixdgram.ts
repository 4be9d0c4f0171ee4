// AF_UNIX SOCK_DGRAM sockets through bun:ffi, the transport of wpa_supplicant's control
// interface. Bun has no unix datagram socket (Bun.udpSocket is UDP only, node:dgram has no
// "unix_dgram"), so this opens one with libc the way netlink.ts does for NETLINK_ROUTE:
// non-blocking, read from a short timer, never blocking the event loop.
import { dlopen, FFIType, ptr, read, type Pointer } from "bun:ffi";
import { unlinkSync } from "node:fs";
import { libcPath } from "../libc.ts";

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const MSG_DONTWAIT = 0x40;
const EAGAIN = 11;
const EINTR = 4;
/** sizeof(struct sockaddr_un): sa_family_t (2) + sun_path[108]. */
const SUN_LEN = 110;
const SUN_PATH_MAX = 107;
/** wpa_supplicant's replies fit in 4 kB except SCAN_RESULTS with many cells; its own buffer is 4096 * 4. */
const RECV_BUF = 64 * 1024;
/** How often queued datagrams are read: short enough for request latency, a failed recv() costs ~1 µs. */
export const POLL_MS = 10;

let libc: ReturnType<typeof openLibc> | undefined;
function openLibc() {
  return dlopen(libcPath(), {
    socket: { args: [FFIType.i32, FFIType.i32, FFIType.i32], returns: FFIType.i32 },
    bind: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    connect: { args: [FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 },
    sendto: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i64 },
    recvfrom: { args: [FFIType.i32, FFIType.ptr, FFIType.u64, FFIType.i32, FFIType.ptr, FFIType.ptr], returns: FFIType.i64 },
    close: { args: [FFIType.i32], returns: FFIType.i32 },
    __errno_location: { args: [], returns: FFIType.ptr },
  }).symbols;
}
const lib = () => (libc ??= openLibc());
const errno = () => read.i32(lib().__errno_location() as Pointer, 0);

export class UnixDgramError extends Error {
  constructor(
    message: string,
    readonly errno: number,
  ) {
    super(`${message} (errno ${errno})`);
  }
}

function sockaddr(path: string): Buffer {
  const b = Buffer.alloc(SUN_LEN);
  const p = Buffer.from(path);
  if (p.length > SUN_PATH_MAX) throw new Error(`unix socket path longer than ${SUN_PATH_MAX} bytes: ${path}`);
  b.writeUInt16LE(AF_UNIX, 0);
  p.copy(b, 2);
  return b;
}

export interface Datagram {
  data: Buffer;
  /** Sender's bound path ("" for an unbound sender). */
  from: string;
}

/**
 * One datagram socket bound to `path` (removed first if a dead process left it, and again
 * on close). `connect(peer)` fixes the destination, as wpa_ctrl does.
 */
export class UnixDgramSocket {
  private fd: number;
  private readonly buf = Buffer.alloc(RECV_BUF);
  private readonly addrBuf = Buffer.alloc(SUN_LEN);
  private readonly lenBuf = Buffer.alloc(4);
  private timer: Timer | undefined;
  private listener: ((d: Datagram) => void) | undefined;

  constructor(readonly path: string) {
    const l = lib();
    const sa = sockaddr(path);
    try {
      unlinkSync(path);
    } catch {
      // nothing left there
    }
    this.fd = l.socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (this.fd < 0) throw new UnixDgramError("unix dgram socket()", errno());
    if (l.bind(this.fd, ptr(sa), SUN_LEN) < 0) {
      const e = errno();
      this.close();
      throw new UnixDgramError(`bind(${path})`, e);
    }
  }

  get closed(): boolean {
    return this.fd < 0;
  }

  connect(peer: string): void {
    const sa = sockaddr(peer);
    if (lib().connect(this.fd, ptr(sa), SUN_LEN) < 0) throw new UnixDgramError(`connect(${peer})`, errno());
  }

  /** Sends to the connected peer, or to `to`. */
  send(data: string | Buffer, to?: string): void {
    if (this.fd < 0) throw new Error(`unix dgram socket ${this.path} is closed`);
    const b = typeof data === "string" ? Buffer.from(data) : data;
    const body = b.length ? b : Buffer.alloc(1); // ptr() refuses an empty buffer
    const sa = to === undefined ? null : sockaddr(to);
    const n = Number(lib().sendto(this.fd, ptr(body), b.length, 0, sa ? ptr(sa) : null, sa ? SUN_LEN : 0));
    if (n < 0) throw new UnixDgramError(`send to ${to ?? "peer"}`, errno());
  }

  /** One queued datagram, or undefined. */
  recv(): Datagram | undefined {
    if (this.fd < 0) return undefined;
    this.lenBuf.writeUInt32LE(SUN_LEN, 0);
    const n = Number(lib().recvfrom(this.fd, ptr(this.buf), this.buf.length, MSG_DONTWAIT, ptr(this.addrBuf), ptr(this.lenBuf)));
    if (n < 0) {
      const e = errno();
      if (e === EAGAIN || e === EINTR) return undefined;
      throw new UnixDgramError(`recv on ${this.path}`, e);
    }
    const alen = this.lenBuf.readUInt32LE(0);
    let from = "";
    if (alen > 2) {
      const raw = this.addrBuf.subarray(2, alen);
      const z = raw.indexOf(0);
      from = raw.subarray(0, z < 0 ? raw.length : z).toString();
    }
    return { data: Buffer.from(this.buf.subarray(0, n)), from };
  }

  /** Delivers every datagram to `cb`, polled every POLL_MS. */
  onMessage(cb: (d: Datagram) => void): void {
    this.listener = cb;
    this.timer ??= setInterval(() => this.drain(), POLL_MS);
  }

  /** Delivers what is queued now; callers expecting a reply call it more often than POLL_MS. */
  drain(): void {
    for (;;) {
      let d: Datagram | undefined;
      try {
        d = this.recv();
      } catch {
        return; // reported by the next send; a broken socket has nothing to read
      }
      if (!d) return;
      this.listener?.(d);
    }
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    if (this.fd >= 0) {
      lib().close(this.fd);
      this.fd = -1;
    }
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}
