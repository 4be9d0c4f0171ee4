// Seed 000's warning: the master's secondary interface (the technician's port) appearing,
// going or being renamed while a tunnel is up. The events come from the uplink's link monitor
// (src/uplink/monitor.ts: NETLINK_ROUTE through bun:ffi, or its polling fallback), reused
// rather than a second netlink socket; what a change means is decided here, purely, from two
// snapshots (a rename keeps the kernel's interface index and changes the name).
import { realExec, type Exec } from "../../os/spawn.ts";
import { createLinkMonitor, type LinkMonitor, type Snapshot } from "../../uplink/monitor.ts";

/** The sentences that describe what happened to `name` between two snapshots (none: nothing). */
export function secondaryChanges(name: string, before: Snapshot, after: Snapshot): string[] {
  const was = before.get(name);
  const is = after.get(name);
  const byIndex = (s: Snapshot, index: number) => [...s.values()].find((l) => l.index === index);
  const out: string[] = [];
  if (was && (!is || is.index !== was.index)) {
    const moved = byIndex(after, was.index);
    if (moved && moved.name !== name) out.push(`the secondary interface ${name} was renamed to ${moved.name}; the tunnel's DHCP and bridge still name ${name}`);
    else out.push(`the secondary interface ${name} disappeared`);
  }
  if (is && (!was || was.index !== is.index)) {
    const from = byIndex(before, is.index);
    if (from && from.name !== name) out.push(`an interface was renamed from ${from.name} to ${name}, the secondary interface`);
    else out.push(`the secondary interface ${name} appeared`);
  }
  return out;
}

/** Watches one interface name; `subscribe` starts the monitor for the first handler, stops it after the last. */
export class SecondaryWatch {
  private monitor: LinkMonitor | undefined;
  private starting: Promise<void> | undefined;
  private last: Snapshot = new Map();
  /** The monitor's first snapshot is the baseline, not a change. */
  private primed = false;
  private readonly handlers = new Set<(what: string) => void>();

  constructor(
    private readonly iface: string,
    private readonly make: () => LinkMonitor = () => createLinkMonitor(realExec),
    private readonly onError: (e: unknown) => void = () => {},
  ) {}

  subscribe(handler: (what: string) => void): () => void {
    this.handlers.add(handler);
    if (!this.monitor) {
      const m = (this.monitor = this.make());
      m.onChange((snap) => this.changed(snap));
      this.starting = m
        .start()
        .then(() => {
          this.last = m.snapshot();
          this.primed = true;
        })
        .catch((e) => this.onError(e));
    }
    return () => {
      this.handlers.delete(handler);
      if (this.handlers.size === 0) void this.close();
    };
  }

  private changed(snap: Snapshot): void {
    if (!this.primed) {
      this.last = snap;
      return;
    }
    const what = secondaryChanges(this.iface, this.last, snap);
    this.last = snap;
    for (const w of what) for (const h of this.handlers) h(w);
  }

  /** Resolves once the first snapshot is in (tests wait for it before changing links). */
  async ready(): Promise<void> {
    await this.starting;
  }

  async close(): Promise<void> {
    const m = this.monitor;
    this.monitor = undefined;
    this.primed = false;
    await this.starting;
    await m?.close();
  }
}
