// libc through bun:ffi, opened once for the whole process. Every piece of the agent that needs
// a system call Bun does not offer (NETLINK_ROUTE and AF_UNIX datagram sockets, getrlimit,
// later /dev/net/tun with TUNSETIFF) takes its symbols from here, so there is one dlopen, one
// list of signatures and one way to read errno.
//
// The library is found by a name that exists on each target: glibc's soname `libc.so.6`, or
// musl's dynamic loader `/lib/ld-musl-<arch>.so.1`, which is libc on musl systems such as
// OpenWRT (DESIGN.md: "Facts checked"). Every symbol below exists under the same name in both.
import { existsSync } from "node:fs";
import { endianness } from "node:os";
import { dlopen, FFIType, read, type Pointer } from "bun:ffi";

/** musl's loader name for this CPU (`aarch64`, `x86_64`, …). */
export function muslLoaderPath(arch: string = process.arch): string {
  const a = arch === "arm64" ? "aarch64" : arch === "x64" ? "x86_64" : arch;
  return `/lib/ld-musl-${a}.so.1`;
}

/** The file to dlopen: musl's loader where it exists, else glibc's soname. */
export function libcPath(exists: (p: string) => boolean = existsSync, arch: string = process.arch): string {
  const musl = muslLoaderPath(arch);
  return exists(musl) ? musl : "libc.so.6";
}

const { i32, u32, i64, u64, ptr } = FFIType;

/** The signatures, in C terms in the comments. size_t/ssize_t are 64-bit on every target. */
const SYMBOLS = {
  // int socket(int domain, int type, int protocol)
  socket: { args: [i32, i32, i32], returns: i32 },
  // int socketpair(int domain, int type, int protocol, int sv[2])
  socketpair: { args: [i32, i32, i32, ptr], returns: i32 },
  // int bind / connect(int fd, const struct sockaddr *, socklen_t)
  bind: { args: [i32, ptr, u32], returns: i32 },
  connect: { args: [i32, ptr, u32], returns: i32 },
  // ssize_t send(int fd, const void *, size_t, int flags); recv likewise
  send: { args: [i32, ptr, u64, i32], returns: i64 },
  recv: { args: [i32, ptr, u64, i32], returns: i64 },
  // ssize_t sendto(int fd, const void *, size_t, int, const struct sockaddr *, socklen_t)
  sendto: { args: [i32, ptr, u64, i32, ptr, u32], returns: i64 },
  // ssize_t recvfrom(int fd, void *, size_t, int, struct sockaddr *, socklen_t *)
  recvfrom: { args: [i32, ptr, u64, i32, ptr, ptr], returns: i64 },
  // int getsockname(int fd, struct sockaddr *, socklen_t *): the bound address (port 0 → the chosen one)
  getsockname: { args: [i32, ptr, ptr], returns: i32 },
  // int setsockopt(int fd, int level, int name, const void *, socklen_t)
  setsockopt: { args: [i32, i32, i32, ptr, u32], returns: i32 },
  // int close(int fd)
  close: { args: [i32], returns: i32 },
  // int getrlimit / setrlimit(int resource, struct rlimit *)
  getrlimit: { args: [i32, ptr], returns: i32 },
  setrlimit: { args: [i32, ptr], returns: i32 },
  // int poll(struct pollfd *, nfds_t, int timeout_ms)
  poll: { args: [ptr, u64, i32], returns: i32 },
  // int fcntl(int fd, int cmd, int arg) — variadic in C; every use here passes an int
  fcntl: { args: [i32, i32, i32], returns: i32 },
  // int ioctl(int fd, unsigned long request, void *arg) — e.g. TUNSETIFF with a struct ifreq
  ioctl: { args: [i32, u64, ptr], returns: i32 },
  // int open(const char *path, int flags, mode_t mode); ssize_t read / write(int, void *, size_t)
  open: { args: [ptr, i32, u32], returns: i32 },
  read: { args: [i32, ptr, u64], returns: i64 },
  write: { args: [i32, ptr, u64], returns: i64 },
  // int *__errno_location(void): errno of the calling thread (glibc and musl)
  __errno_location: { args: [], returns: ptr },
} as const;

export type Libc = ReturnType<typeof openLibc>;

function openLibc() {
  return dlopen(libcPath(), SYMBOLS).symbols;
}

let opened: Libc | undefined;

/** The process's one libc handle, opened on first use. */
export function libc(): Libc {
  return (opened ??= openLibc());
}

/** errno of the last failed call on this thread; read it before any other libc call. */
export function errno(): number {
  return read.i32(libc().__errno_location() as Pointer, 0);
}

/** Linux errno values the agent handles by number (same on every Linux architecture we ship). */
export const E = { EPERM: 1, ENOENT: 2, EINTR: 4, EBADF: 9, EAGAIN: 11, EBUSY: 16, ENODEV: 19, EINVAL: 22, ENOBUFS: 105 } as const;

/** Socket constants (Linux, all our architectures). */
export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_NETLINK = 16;
export const SOCK_DGRAM = 2;
export const SOL_SOCKET = 1;
export const SO_RCVBUF = 8;
export const SOCK_RAW = 3;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const MSG_DONTWAIT = 0x40;
/** poll(2) event bits. */
export const POLLIN = 0x1;
/** open(2) flags, for the TUN device. */
export const O_RDWR = 0o2;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;
/** TUN/TAP (linux/if_tun.h): `ioctl(fd, TUNSETIFF, struct ifreq *)` with these flags in ifr_flags. */
export const TUNSETIFF = 0x400454ca;
export const IFF_TUN = 0x0001;
export const IFF_TAP = 0x0002;
/** No 4-byte packet-information header before each packet: reads and writes are bare packets. */
export const IFF_NO_PI = 0x1000;
/** struct ifreq: a 16-byte name (IFNAMSIZ, NUL included), then a 24-byte union (ifr_flags first). */
export const IFNAMSIZ = 16;
export const IFREQ_SIZE = 40;

/** A `struct ifreq` for TUNSETIFF: `name` (at most 15 bytes) and `flags` (a short at offset 16). */
export function tunIfreq(name: string, flags: number): Buffer {
  const n = Buffer.from(name, "utf8");
  if (n.length === 0 || n.length >= IFNAMSIZ) throw new RangeError(`interface name ${JSON.stringify(name)} must be 1 to ${IFNAMSIZ - 1} bytes`);
  const b = Buffer.alloc(IFREQ_SIZE);
  n.copy(b, 0);
  // A short in host byte order (big-endian MIPS routers exist among OpenWRT targets).
  if (endianness() === "BE") b.writeUInt16BE(flags & 0xffff, IFNAMSIZ);
  else b.writeUInt16LE(flags & 0xffff, IFNAMSIZ);
  return b;
}

/** A failed system call: what was attempted and the errno it returned. */
export class OsError extends Error {
  constructor(
    message: string,
    readonly errno: number,
  ) {
    super(`${message} (errno ${errno})`);
  }
}

/** Two connected sockets (e.g. AF_UNIX SOCK_DGRAM for a test of a reader). Throws OsError. */
export function socketPair(domain: number, type: number, protocol = 0): [number, number] {
  const sv = new Int32Array(2);
  if (libc().socketpair(domain, type, protocol, sv) < 0) throw new OsError("socketpair()", errno());
  return [sv[0]!, sv[1]!];
}
