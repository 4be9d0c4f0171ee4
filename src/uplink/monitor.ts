// Link monitors: what links exist, whether they have carrier and an IPv4 address, and which
// gateways the main table knows for them. One interface, three implementations:
// - NetlinkMonitor: netlink events (link, IPv4 address and IPv4 route groups) trigger a
//   debounced full dump; a periodic dump resyncs whatever was missed (ENOBUFS, a bug).
// - PollingMonitor: the fallback when netlink cannot be used (no bun:ffi on a platform, a
//   seccomp filter): /sys/class/net plus `ip -j` every POLL interval.
// - FakeMonitor: in memory, for unit tests.
// Raw events are debounced (a cable plug produces a burst of link/address/route messages) and
// listeners hear only real changes of what the uplink manager uses.
import { readdirSync, readFileSync } from "node:fs";
import { RouteSocket, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_LINK, snapshotFromMessages, type LinkInfo, type Snapshot } from "./netlink.ts";
import type { Exec } from "../os/spawn.ts";
import { systemClock, type Clock, type TimerHandle } from "../clock.ts";

export type { LinkInfo, Snapshot } from "./netlink.ts";

/** How often the netlink socket is read (non-blocking). Bounds the added detection delay. */
export const NETLINK_READ_MS = 25;
/** Quiet time after the last raw event before the monitor dumps and reports. */
export const DEBOUNCE_MS = 30;
/** Full resync of the netlink monitor even without events. */
export const RESYNC_MS = 30_000;
/** Polling fallback period. */
export const POLL_MS = 500;

export interface LinkMonitor {
  readonly kind: "netlink" | "poll" | "fake";
  /** Takes the first snapshot; resolves when it is available. */
  start(): Promise<void>;
  snapshot(): Snapshot;
  /** Called after each debounced change with the new snapshot. */
  onChange(cb: (snap: Snapshot) => void): void;
  close(): Promise<void>;
}

/** Usable for traffic: admin up, carrier, and an IPv4 address. */
export function linkUsable(l: LinkInfo | undefined): boolean {
  return !!l && l.up && l.carrier && l.addrs.length > 0;
}

/** Whether two snapshots differ in anything the uplink manager uses. */
export function snapshotsDiffer(a: Snapshot, b: Snapshot): boolean {
  if (a.size !== b.size) return true;
  for (const [name, x] of a) {
    const y = b.get(name);
    if (!y) return true;
    if (x.index !== y.index || x.up !== y.up || x.carrier !== y.carrier) return true;
    if (x.addrs.join() !== y.addrs.join() || x.gateways.join() !== y.gateways.join()) return true;
  }
  return false;
}

abstract class BaseMonitor {
  protected snap: Snapshot = new Map();
  private listeners: ((s: Snapshot) => void)[] = [];
  snapshot(): Snapshot {
    return this.snap;
  }
  onChange(cb: (snap: Snapshot) => void): void {
    this.listeners.push(cb);
  }
  protected publish(next: Snapshot): void {
    if (!snapshotsDiffer(this.snap, next)) return;
    this.snap = next;
    for (const cb of this.listeners) cb(next);
  }
}

export class NetlinkMonitor extends BaseMonitor implements LinkMonitor {
  readonly kind = "netlink" as const;
  private events: RouteSocket | undefined;
  private requests: RouteSocket | undefined;
  private readTimer: TimerHandle | undefined;
  private resyncTimer: TimerHandle | undefined;
  private debounce: TimerHandle | undefined;
  /** Raw netlink messages seen (for status and tests). */
  rawEvents = 0;

  constructor(
    private readonly onError: (e: unknown) => void = () => {},
    private readonly clock: Clock = systemClock,
  ) {
    super();
  }

  async start(): Promise<void> {
    this.events = new RouteSocket(RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE);
    // Dumps go over their own socket so their replies never interleave with events.
    this.requests = new RouteSocket(0);
    this.resync();
    this.readTimer = this.clock.setInterval(() => this.read(), NETLINK_READ_MS);
    this.resyncTimer = this.clock.setInterval(() => this.resync(), RESYNC_MS);
  }

  private read(): void {
    if (!this.events) return;
    try {
      const n = this.events.drain().length;
      if (n > 0 || this.events.overrun) {
        this.rawEvents += n;
        this.events.overrun = false;
        this.clock.clearTimeout(this.debounce);
        this.debounce = this.clock.setTimeout(() => this.resync(), DEBOUNCE_MS);
      }
    } catch (e) {
      this.onError(e);
    }
  }

  private resync(): void {
    if (!this.requests) return;
    try {
      this.publish(snapshotFromMessages(this.requests.dumpAll()));
    } catch (e) {
      this.onError(e);
    }
  }

  async close(): Promise<void> {
    this.clock.clearInterval(this.readTimer);
    this.clock.clearInterval(this.resyncTimer);
    this.clock.clearTimeout(this.debounce);
    this.events?.close();
    this.requests?.close();
    this.events = this.requests = undefined;
  }
}

export class PollingMonitor extends BaseMonitor implements LinkMonitor {
  readonly kind = "poll" as const;
  private timer: TimerHandle | undefined;
  private running: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly exec: Exec,
    private readonly sysNet = "/sys/class/net",
    private readonly periodMs = POLL_MS,
    private readonly clock: Clock = systemClock,
  ) {
    super();
  }

  async start(): Promise<void> {
    await this.poll();
    this.timer = this.clock.setInterval(() => {
      this.running ??= this.poll().finally(() => (this.running = undefined));
    }, this.periodMs);
  }

  private async poll(): Promise<void> {
    if (this.closed) return;
    const snap: Snapshot = new Map();
    for (const name of readdirSync(this.sysNet)) {
      const read = (f: string) => {
        try {
          return readFileSync(`${this.sysNet}/${name}/${f}`, "utf8").trim();
        } catch {
          return ""; // carrier cannot be read while the link is admin down
        }
      };
      const flags = parseInt(read("flags") || "0", 16);
      snap.set(name, { name, index: Number(read("ifindex")), up: (flags & 1) === 1, carrier: read("carrier") === "1", addrs: [], gateways: [] });
    }
    const addrs = await this.exec(["ip", "-j", "-4", "addr", "show"]);
    if (addrs.code === 0) {
      for (const l of JSON.parse(addrs.stdout || "[]") as { ifname: string; addr_info?: { local: string; prefixlen: number }[] }[]) {
        const info = snap.get(l.ifname);
        if (info) info.addrs = (l.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`);
      }
    }
    const routes = await this.exec(["ip", "-j", "-4", "route", "show", "table", "main", "default"]);
    if (routes.code === 0) {
      for (const r of JSON.parse(routes.stdout || "[]") as { dev?: string; gateway?: string }[]) {
        const info = r.dev ? snap.get(r.dev) : undefined;
        if (info && r.gateway && !info.gateways.includes(r.gateway)) info.gateways.push(r.gateway);
      }
    }
    if (!this.closed) this.publish(snap);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.clock.clearInterval(this.timer);
    await this.running;
  }
}

/** In-memory monitor: tests set links and the manager hears the change. */
export class FakeMonitor extends BaseMonitor implements LinkMonitor {
  readonly kind = "fake" as const;
  async start(): Promise<void> {}
  set(links: LinkInfo[]): void {
    this.publish(new Map(links.map((l) => [l.name, l])));
  }
  async close(): Promise<void> {}
}

/** Netlink when it works here, else the polling fallback. */
export function createLinkMonitor(exec: Exec, onError?: (e: unknown) => void, prefer: "netlink" | "poll" = "netlink", clock: Clock = systemClock): LinkMonitor {
  if (prefer === "netlink") {
    try {
      // Probe once: opening the socket fails fast where netlink or bun:ffi is unavailable.
      new RouteSocket(0).close();
      return new NetlinkMonitor(onError, clock);
    } catch (e) {
      onError?.(e);
    }
  }
  return new PollingMonitor(exec, undefined, undefined, clock);
}
