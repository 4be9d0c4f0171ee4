// AF_UNIX SOCK_DGRAM sockets through bun:ffi, the transport of wpa_supplicant's control
// interface. Bun has no unix datagram socket (Bun.udpSocket is UDP only, node:dgram has no
// "unix_dgram"), so this opens one with libc (`src/os/libc.ts`) the way netlink.ts does for
// NETLINK_ROUTE: non-blocking, read by `src/os/polled-fd.ts` from a short timer, never
// blocking the event loop.
import { ptr } from "bun:ffi";
import { unlinkSync } from "node:fs";
import { AF_UNIX, errno, libc, OsError, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK } from "../os/libc.ts";
import { PolledFd } from "../os/polled-fd.ts";

/** sizeof(struct sockaddr_un): sa_family_t (2) + sun_path[108]. */
const SUN_LEN = 110;
const SUN_PATH_MAX = 107;
/** wpa_supplicant's replies fit in 4 kB except SCAN_RESULTS with many cells; its own buffer is 4096 * 4. */
const RECV_BUF = 64 * 1024;
/** How often queued datagrams are read: short enough for request latency, a failed recv() costs ~1 µs. */
export const POLL_MS = 10;

export class UnixDgramError extends OsError {}

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
  private readonly reader: PolledFd;
  private listener: ((d: Datagram) => void) | undefined;

  constructor(readonly path: string) {
    const l = libc();
    const sa = sockaddr(path);
    try {
      unlinkSync(path);
    } catch {
      // nothing left there
    }
    this.fd = l.socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (this.fd < 0) throw new UnixDgramError("unix dgram socket()", errno());
    this.reader = new PolledFd(this.fd, { bufSize: RECV_BUF, addrSize: SUN_LEN, name: path });
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
    if (libc().connect(this.fd, ptr(sa), SUN_LEN) < 0) throw new UnixDgramError(`connect(${peer})`, errno());
  }

  /** Sends to the connected peer, or to `to`. */
  send(data: string | Buffer, to?: string): void {
    if (this.fd < 0) throw new Error(`unix dgram socket ${this.path} is closed`);
    const b = typeof data === "string" ? Buffer.from(data) : data;
    const body = b.length ? b : Buffer.alloc(1); // ptr() refuses an empty buffer
    const sa = to === undefined ? null : sockaddr(to);
    const n = Number(libc().sendto(this.fd, ptr(body), b.length, 0, sa ? ptr(sa) : null, sa ? SUN_LEN : 0));
    if (n < 0) throw new UnixDgramError(`send to ${to ?? "peer"}`, errno());
  }

  /** One queued datagram, or undefined. */
  recv(): Datagram | undefined {
    if (this.fd < 0) return undefined;
    let p;
    try {
      p = this.reader.readOnce();
    } catch (e) {
      throw new UnixDgramError(`recv on ${this.path}`, (e as OsError).errno);
    }
    if (!p) return undefined;
    let from = "";
    if (p.from && p.from.length > 2) {
      const raw = p.from.subarray(2);
      const z = raw.indexOf(0);
      from = raw.subarray(0, z < 0 ? raw.length : z).toString();
    }
    return { data: p.data, from };
  }

  /** Delivers every datagram to `cb`, polled every POLL_MS. */
  onMessage(cb: (d: Datagram) => void): void {
    this.listener = cb;
    this.reader.start(POLL_MS, () => this.drain());
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
    this.reader.stop(true);
    if (this.fd >= 0) {
      libc().close(this.fd);
      this.fd = -1;
    }
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}
