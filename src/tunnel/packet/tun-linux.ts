// A Linux TUN (routed, IP packets) or TAP (bridged, Ethernet frames) device as a PacketDevice:
// open("/dev/net/tun", O_RDWR|O_NONBLOCK|O_CLOEXEC), ioctl(TUNSETIFF) with IFF_TUN or IFF_TAP
// and IFF_NO_PI (bare packets), then one read(2) or write(2) per packet — all through the one
// libc binding (src/os/libc.ts).
//
// Reading. Bun cannot watch a foreign fd. The fd is non-blocking and read through
// src/os/polled-fd.ts (its RecvOps seam carries read(2) here instead of recvfrom), woken by
// the process's poll(2) thread (src/os/fd-watch.ts) when packets wait — measured: a TUN
// device read on a 1 ms timer costs 3.3 % of a core while idle (1.6 % at 5 ms, 0.6 % at
// 25 ms) and adds up to a period per direction; the watch costs nothing idle. The timer
// stays as the fallback (`wake: "timer"`). Each wake-up reads in a batch: every queued
// packet, up to READ_BATCH, and when the batch was full the next batch follows at once (a
// 0 ms timer), so a busy tunnel is read as fast as the handler takes packets. The handler is never waited for: the device reads at its own pace
// and whoever cannot keep up drops (the wire's bounded queue), which is what keeps TCP inside
// this tunnel from melting down.
//
// The device is not persistent: closing the fd removes the interface, so a killed process
// leaves no device behind (the kernel closes its fds); routes through it go with it.
import { ptr } from "bun:ffi";
import { systemClock, type Clock, type TimerHandle } from "../../clock.ts";
import { E, errno, IFF_NO_PI, IFF_TAP, IFF_TUN, libc, O_CLOEXEC, O_NONBLOCK, O_RDWR, OsError, TUNSETIFF, tunIfreq } from "../../os/libc.ts";
import { FdWatcher, type FdWatch } from "../../os/fd-watch.ts";
import { PolledFd, type RecvOps } from "../../os/polled-fd.ts";
import { TUNNEL_MTU, TunnelRefused, type PacketDevice, type TunnelMode } from "./device.ts";

export const TUN_PATH = "/dev/net/tun";
/** How often an idle device is read. 1 ms bounds the added latency per direction; see README. */
export const TUN_READ_MS = 1;
/** Packets read per batch before yielding to the event loop. */
export const READ_BATCH = 256;
/** Largest packet read whole: a TAP frame of MTU 1500 plus headers fits; bigger is cut by the kernel. */
export const READ_BUF = 65_536;

/** The system calls a device makes; the real ones go through libc, tests pass a fake. */
export interface TunOps {
  open(path: string, flags: number): number;
  ioctl(fd: number, request: number, arg: Uint8Array): number;
  read(fd: number, buf: Uint8Array): number;
  write(fd: number, buf: Uint8Array): number;
  close(fd: number): number;
  errno(): number;
}

export const realTunOps: TunOps = {
  open: (path, flags) => libc().open(ptr(Buffer.from(`${path}\0`)), flags, 0),
  ioctl: (fd, request, arg) => libc().ioctl(fd, request, ptr(arg)),
  read: (fd, buf) => Number(libc().read(fd, ptr(buf), buf.length)),
  write: (fd, buf) => Number(libc().write(fd, ptr(buf), buf.length)),
  close: (fd) => libc().close(fd),
  errno,
};

/** PolledFd reads datagrams with recvfrom; a TUN fd is not a socket, so its "recvfrom" is read(2). */
function readAsRecv(ops: TunOps): RecvOps {
  return { recvfrom: (fd, buf) => ops.read(fd, buf), errno: () => ops.errno() };
}

export interface TunCounters {
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
  /** Writes the kernel refused (queue full, a packet too big or empty, device gone). */
  txDropped: number;
  readErrors: number;
}

export interface OpenTunOptions {
  name: string;
  mode: TunnelMode;
  ops?: TunOps;
  clock?: Clock;
  periodMs?: number;
  /**
   * How the device learns that packets wait: "watch" (default) — the process's poll(2) thread
   * (src/os/fd-watch.ts) says so, no timer; "timer" — read every `periodMs` (PolledFd), the
   * fallback, and what tests on a fake clock use.
   */
  wake?: "watch" | "timer";
  /** Told about a read error other than EAGAIN/EINTR (the device stops reading after it). */
  onError?: (e: Error) => void;
}

/** What an open() or TUNSETIFF failure means to a user, as a refusal the wire passes on. */
export function explainOpenError(step: "open" | "TUNSETIFF", name: string, e: number): TunnelRefused {
  if (step === "open" && (e === E.ENOENT || e === E.ENODEV || e === 6 /* ENXIO */)) {
    return new TunnelRefused("no_device", `${TUN_PATH} is missing (errno ${e}): load the tun module (modprobe tun) or create the node`);
  }
  if (e === E.EPERM || e === 13 /* EACCES */) {
    return new TunnelRefused("no_device", `cannot create ${name}: permission denied (errno ${e}); the agent needs root or CAP_NET_ADMIN for packet tunnels`);
  }
  if (step === "TUNSETIFF" && e === E.EBUSY) return new TunnelRefused("busy", `interface ${name} is already in use (another tunnel end of this session is still open)`);
  return new TunnelRefused("no_device", `cannot create ${name}: ${step} failed (errno ${e})`);
}

export class LinuxTunDevice implements PacketDevice {
  readonly mtu: number;
  readonly counters: TunCounters = { rxPackets: 0, rxBytes: 0, txPackets: 0, txBytes: 0, txDropped: 0, readErrors: 0 };
  private fd: number;
  private readonly ops: TunOps;
  private readonly clock: Clock;
  private readonly reader: PolledFd;
  private handler: ((p: Uint8Array) => void) | undefined;
  private again: TimerHandle | undefined;
  private watch: FdWatch | undefined;
  private closed = false;

  private constructor(
    readonly name: string,
    readonly mode: TunnelMode,
    fd: number,
    private readonly o: OpenTunOptions,
  ) {
    this.fd = fd;
    this.mtu = TUNNEL_MTU[mode];
    this.ops = o.ops ?? realTunOps;
    this.clock = o.clock ?? systemClock;
    this.reader = new PolledFd(fd, { bufSize: READ_BUF, name, ops: readAsRecv(this.ops), clock: this.clock });
  }

  /** Creates the interface (down, no address: the host configures it). Throws TunnelRefused. */
  static open(o: OpenTunOptions): LinuxTunDevice {
    const ops = o.ops ?? realTunOps;
    const fd = ops.open(TUN_PATH, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) throw explainOpenError("open", o.name, ops.errno());
    const req = tunIfreq(o.name, (o.mode === "routed" ? IFF_TUN : IFF_TAP) | IFF_NO_PI);
    if (ops.ioctl(fd, TUNSETIFF, req) < 0) {
      const e = ops.errno();
      ops.close(fd);
      throw explainOpenError("TUNSETIFF", o.name, e);
    }
    return new LinuxTunDevice(o.name, o.mode, fd, o);
  }

  onPacket(handler: (packet: Uint8Array) => void): void {
    const first = !this.handler;
    this.handler = handler;
    if (this.closed || !first) return;
    if ((this.o.wake ?? (this.o.ops ? "timer" : "watch")) === "watch") {
      this.watch = FdWatcher.get().add(this.fd, () => this.tick());
      this.watch.arm();
    } else {
      this.reader.start(this.o.periodMs ?? TUN_READ_MS, () => this.tick());
    }
  }

  /** Reads one batch; returns how many packets it delivered. Public for tests on a fake clock. */
  tick(): number {
    if (this.closed || !this.handler) return 0;
    let n = 0;
    try {
      for (; n < READ_BATCH; n++) {
        const p = this.reader.readOnce();
        if (!p) break;
        this.counters.rxPackets++;
        this.counters.rxBytes += p.data.length;
        this.handler(p.data);
        if (this.closed) return n + 1;
      }
    } catch (e) {
      this.counters.readErrors++;
      this.reader.stop();
      this.o.onError?.(e instanceof Error ? e : new Error(String(e)));
      return n;
    }
    if (n === READ_BATCH) {
      this.again ??= this.clock.setTimeout(() => {
        this.again = undefined;
        this.tick();
      }, 0);
    } else {
      // Drained to EAGAIN: wait for the next readiness.
      this.watch?.arm();
    }
    return n;
  }

  write(packet: Uint8Array): boolean {
    if (this.closed || packet.length === 0) {
      this.counters.txDropped++;
      return false;
    }
    const n = this.ops.write(this.fd, packet);
    if (n < 0) {
      this.counters.txDropped++;
      return false;
    }
    this.counters.txPackets++;
    this.counters.txBytes += packet.length;
    return true;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.watch?.remove();
    this.watch = undefined;
    this.reader.stop(true);
    this.clock.clearTimeout(this.again);
    this.again = undefined;
    if (this.fd >= 0 && this.ops.close(this.fd) < 0) {
      const e = this.ops.errno();
      if (e !== E.EINTR) throw new OsError(`close ${this.name}`, e);
    }
    this.fd = -1;
  }
}
