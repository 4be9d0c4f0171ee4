// The uplink manager: wires the link monitor, the per-uplink probes, the pure failover
// policy (./policy.ts) and the effects (routes, modem, listeners). A Component of the
// onsite daemon. Policy decisions are applied in order through one effects chain, so a
// switch's route change finishes before the next switch starts.
import type { TrackingConfig, UplinkConfig } from "../config.ts";
import type { HostPort } from "../netaddr.ts";
import { formatHostPort } from "../netaddr.ts";
import { formatDuration } from "../duration.ts";
import type { Logger } from "../log.ts";
import { decide, initialState, probePeriod, type Action, type PolicyEvent, type PolicyState, type Switch } from "./policy.ts";
import { linkUsable, type LinkMonitor, type Snapshot } from "./monitor.ts";
import type { Prober, RoundResult } from "./probe.ts";
import { RULE_PREF_BASE, TABLE_BASE, type RouteTable, type UplinkRoute } from "./routes.ts";
import type { Modem, ModemStatus } from "./modem.ts";
import { systemClock, wallOf, type Clock, type TimerHandle } from "../clock.ts";
import { describeMissing, missingInterfaces } from "./interfaces.ts";
import type { LinkInfo } from "./netlink.ts";

/** Probe rounds kept per uplink for loss and latency. */
export const STATS_WINDOW = 20;
/** How often a cellular modem's state is read, and its data connection re-established if lost. */
export const MODEM_CHECK_MS = 10_000;

export interface ActiveChange {
  from?: string;
  to?: string;
  reason: string;
}

export interface UplinkManagerOptions {
  uplinks: UplinkConfig[];
  tracking: TrackingConfig;
  /** The relay: always a tracking target. */
  relay?: HostPort;
  monitor: LinkMonitor;
  routes: RouteTable;
  prober: Prober;
  /** Modems by uplink name (cellular uplinks). */
  modems?: Map<string, Modem>;
  log: Logger;
  /** Probe schedule, hold-downs and flap windows run on its monotonic now() and timers; the
   * report shows those instants on its wall clock. Default: the system clock. */
  clock?: Clock;
  /** Older seam: a monotonic now() alone (the timers stay the clock's). */
  now?: () => number;
}

interface Round {
  at: number;
  ok: boolean;
  rttMs?: number;
}

interface UplinkRuntime {
  cfg: UplinkConfig;
  index: number;
  installed?: UplinkRoute;
  rounds: Round[];
  last?: RoundResult & { at: number };
  timer?: TimerHandle;
  probing?: Promise<void>;
  modem?: ModemStatus & { error?: string; at: number };
  /** Whether the last snapshot had the interface (undefined: none seen yet). */
  present?: boolean;
  /** Good rounds in a row since it last became active (probePeriod backs off with them). */
  activeOk: number;
}

/** Why an uplink's link is not usable, or undefined when it is. "missing interface" is its own
 * reason: a configured name this device does not have is a config problem, not an uplink down. */
export function linkProblem(l: LinkInfo | undefined): string | undefined {
  if (!l) return "missing interface";
  if (!l.up) return "link down";
  if (!l.carrier) return "no carrier";
  if (l.addrs.length === 0) return "no IPv4 address";
  return undefined;
}

export interface UplinkStatus {
  name: string;
  kind: string;
  priority: number;
  metered: boolean;
  active: boolean;
  health: string;
  /** Why the link is not usable ("missing interface", "link down", "no carrier", "no IPv4 address"); absent when it is. */
  problem?: string;
  since?: string;
  link: { present: boolean; up: boolean; carrier: boolean; addrs: string[]; gateway?: string };
  probes: { sent: number; lost: number; loss: number; latency_ms?: number; last?: { at: string; ok: boolean; rtt_ms?: number; targets: RoundResult["targets"] } };
  ok_streak: number;
  fail_streak: number;
  modem?: Record<string, unknown>;
}

export interface UplinkReport {
  active?: string;
  active_since?: string;
  monitor: string;
  targets: string[];
  tracking: { interval_ms: number; timeout_ms: number; down: number; up: number; count: number };
  uplinks: UplinkStatus[];
  history: { at: string; from?: string; to?: string; reason: string }[];
}

/** "every 1s, timeout 1s, down 3, up 5": the tracking settings in the config's own units (not "1000ms"). */
export function trackingSummary(t: UplinkReport["tracking"]): string {
  return `every ${formatDuration(t.interval_ms)}, timeout ${formatDuration(t.timeout_ms)}, down ${t.down}, up ${t.up}${t.count > 1 ? `, ${t.count} tries per target` : ""}`;
}

export class UplinkManager {
  readonly name = "uplink";
  private state: PolicyState;
  private readonly rt: UplinkRuntime[];
  private readonly listeners: ((ev: ActiveChange) => void)[] = [];
  private effects: Promise<void> = Promise.resolve();
  private closed = false;
  private modemTimer: TimerHandle | undefined;
  private readonly clock: Clock;
  private readonly now: () => number;
  private readonly targets: HostPort[];

  constructor(private readonly o: UplinkManagerOptions) {
    this.clock = o.clock ?? systemClock;
    this.now = o.now ?? (() => this.clock.now());
    this.state = initialState(
      o.uplinks.map((u) => ({ name: u.name, priority: u.priority, metered: u.metered })),
      { down: o.tracking.down, up: o.tracking.up },
    );
    this.rt = o.uplinks.map((cfg, index) => ({ cfg, index, rounds: [], activeOk: 0 }));
    const seen = new Set<string>();
    this.targets = [...(o.relay ? [o.relay] : []), ...o.tracking.targets].filter((t) => {
      const k = formatHostPort(t);
      return seen.has(k) ? false : (seen.add(k), true);
    });
  }

  /** The lead's hook: "redial the relay now" on every change of the active uplink. */
  onActiveChange(cb: (ev: ActiveChange) => void): void {
    this.listeners.push(cb);
  }

  get active(): string | undefined {
    return this.state.active;
  }

  async start(): Promise<void> {
    if (this.targets.length === 0) throw new Error("uplink tracking has no target: set `relay` or [tracking] targets");
    this.o.monitor.onChange((snap) => this.onSnapshot(snap));
    await this.o.monitor.start();
    const first = this.o.monitor.snapshot();
    // A configured name this device does not have (a typo, a renamed interface) is said now.
    // An empty first snapshot is a monitor that sees nothing (yet), not a host without interfaces.
    const missing = first.size ? missingInterfaces(this.rt.map((r) => r.cfg.name), first.keys()) : [];
    if (missing.length > 0) this.o.log.warn(`${describeMissing("[[uplink]]", missing, first.keys())}; check the [[uplink]] names (\`ip link\` lists the interfaces)`, { missing });
    for (const r of this.rt) r.present = first.has(r.cfg.name);
    this.onSnapshot(first);
    for (const r of this.rt) this.schedule(r, 0);
    if (this.o.modems?.size) {
      void this.checkModems();
      this.modemTimer = this.clock.setInterval(() => void this.checkModems(), MODEM_CHECK_MS);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.clock.clearInterval(this.modemTimer);
    for (const r of this.rt) this.clock.clearTimeout(r.timer);
    await Promise.allSettled(this.rt.map((r) => r.probing));
    await this.o.monitor.close();
    await this.effects;
    // Per-uplink rules go; the main default route stays so the device keeps its last path.
    for (const r of this.rt) if (r.installed) await this.o.routes.removeUplink(r.installed).catch(() => {});
  }

  private feed(ev: PolicyEvent): void {
    const d = decide(this.state, ev, this.now());
    this.state = d.state;
    for (const a of d.actions) this.apply(a);
  }

  private apply(a: Action): void {
    // A metered uplink may sit in a long keepalive wait: once active it is probed now, then
    // at its active period (probePeriod).
    const next = this.rt.find((x) => x.cfg.name === a.to);
    if (next) next.activeOk = 0;
    if (next?.cfg.keepalive || next?.cfg.metered) this.schedule(next, 0);
    this.o.log.info(a.to ? `uplink ${a.to} is now active (${a.reason})` : `no uplink is usable (${a.reason})`, { from: a.from, to: a.to });
    this.effects = this.effects.then(async () => {
      if (a.to) {
        const r = this.rt.find((x) => x.cfg.name === a.to)!;
        const snap = this.o.monitor.snapshot();
        const gw = this.gatewayOf(r, snap);
        // A link gone again since the decision: the next decision moves on; nothing to install.
        if (!linkUsable(snap.get(a.to))) this.o.log.debug(`uplink ${a.to} lost its link before its route was installed`);
        else if (gw) await this.o.routes.setDefault({ dev: a.to, gateway: gw }).catch((e) => this.o.log.error(`switching the default route to ${a.to} failed`, e));
        else this.o.log.error(`uplink ${a.to} has no known gateway; set gateway in its [[uplink]] entry`);
      }
      for (const cb of this.listeners) {
        try {
          cb({ from: a.from, to: a.to, reason: a.reason });
        } catch (e) {
          this.o.log.warn("uplink change listener failed", e);
        }
      }
    });
  }

  private gatewayOf(r: UplinkRuntime, snap: Snapshot): string | undefined {
    if (r.cfg.gateway !== undefined) {
      const g = r.cfg.gateway;
      return `${g >>> 24}.${(g >>> 16) & 255}.${(g >>> 8) & 255}.${g & 255}`;
    }
    return snap.get(r.cfg.name)?.gateways[0] ?? r.installed?.gateway;
  }

  private onSnapshot(snap: Snapshot): void {
    if (this.closed) return;
    const changed: Record<string, boolean> = {};
    for (const r of this.rt) {
      const present = snap.has(r.cfg.name);
      if (r.present !== undefined && present !== r.present) {
        if (present) this.o.log.info(`uplink ${r.cfg.name}: interface appeared`);
        else this.o.log.warn(`uplink ${r.cfg.name}: interface disappeared (missing interface)`);
      }
      r.present = present;
      const usable = linkUsable(snap.get(r.cfg.name));
      if (usable !== this.state.uplinks[r.index]!.link) changed[r.cfg.name] = usable;
    }
    if (Object.keys(changed).length > 0) {
      this.feed({ type: "links", up: changed });
      // A link that comes (back) up is probed now rather than at its next slot.
      for (const r of this.rt) if (changed[r.cfg.name]) this.schedule(r, 0);
    }
    this.effects = this.effects.then(() => this.reconcileRoutes(snap));
  }

  /** Per-uplink tables and rules for every usable uplink; the active default route again (the kernel drops it with its link). */
  private async reconcileRoutes(snap: Snapshot): Promise<void> {
    for (const r of this.rt) {
      const link = snap.get(r.cfg.name);
      const gw = this.gatewayOf(r, snap);
      const source = link?.addrs[0]?.split("/")[0];
      if (!linkUsable(link) || !gw || !source) continue;
      const want: UplinkRoute = { dev: r.cfg.name, table: TABLE_BASE + r.index, pref: RULE_PREF_BASE + r.index, source, gateway: gw };
      try {
        await this.o.routes.ensureUplink(want, r.installed);
        r.installed = want;
      } catch (e) {
        this.o.log.error(`installing the probe route of uplink ${r.cfg.name} failed`, e);
      }
    }
    const active = this.rt.find((x) => x.cfg.name === this.state.active);
    if (active && linkUsable(snap.get(active.cfg.name))) {
      const gw = this.gatewayOf(active, snap);
      if (gw) await this.o.routes.setDefault({ dev: active.cfg.name, gateway: gw }).catch((e) => this.o.log.error("restoring the default route failed", e));
    }
  }

  /** Probe period (policy.ts `probePeriod`): the tracking interval; a standby uplink's keepalive; a healthy active metered uplink's, backing off to its keepalive or a minute. */
  private periodOf(r: UplinkRuntime): number {
    const u = this.state.uplinks[r.index]!;
    return probePeriod({ active: this.state.active === r.cfg.name, metered: r.cfg.metered, keepalive: r.cfg.keepalive, health: u.health, failStreak: u.failStreak, activeOk: r.activeOk }, this.o.tracking.interval);
  }

  private schedule(r: UplinkRuntime, delay: number): void {
    if (this.closed) return;
    this.clock.clearTimeout(r.timer);
    r.timer = this.clock.setTimeout(() => {
      if (r.probing) return; // the running round reschedules itself
      r.probing = this.round(r).finally(() => {
        r.probing = undefined;
      });
    }, delay);
  }

  private async round(r: UplinkRuntime): Promise<void> {
    const started = this.now();
    // A link that just came up gets its probe route from the effects chain: wait for it.
    if (!r.installed) await this.effects;
    const link = this.o.monitor.snapshot().get(r.cfg.name);
    const source = link?.addrs[0]?.split("/")[0];
    // Without carrier or address the link monitor has already marked the uplink down; no probe
    // can leave, and none is counted (the uplink must still pass `up` rounds once it is back).
    if (linkUsable(link) && source && r.installed) {
      const res = await this.o.prober(source, this.targets, { timeoutMs: this.o.tracking.timeout, count: this.o.tracking.count, clock: this.clock });
      if (this.closed) return;
      const at = this.now();
      r.last = { ...res, at };
      r.rounds.push({ at, ok: res.ok, rttMs: res.rttMs });
      if (r.rounds.length > STATS_WINDOW) r.rounds.shift();
      this.feed({ type: "probe", uplink: r.cfg.name, ok: res.ok });
      r.activeOk = res.ok && this.state.active === r.cfg.name ? r.activeOk + 1 : 0;
    }
    const elapsed = this.now() - started;
    this.schedule(r, Math.max(0, this.periodOf(r) - elapsed));
  }

  private async checkModems(): Promise<void> {
    for (const r of this.rt) {
      const modem = this.o.modems?.get(r.cfg.name);
      if (!modem || this.closed) continue;
      try {
        let s = await modem.status();
        if (!s.connected) {
          this.o.log.info(`cellular uplink ${r.cfg.name}: modem ${s.state}, connecting`, { apn: r.cfg.apn });
          await modem.connect(r.cfg.apn);
          s = await modem.status();
        }
        r.modem = { ...s, at: this.now() };
      } catch (e) {
        r.modem = { state: "error", connected: false, error: (e as Error).message, at: this.now() };
        this.o.log.warn(`cellular uplink ${r.cfg.name}: modem check failed`, e);
      }
    }
  }

  /** `agent status`: the short form. */
  status(): Record<string, unknown> {
    const missing = this.rt.filter((r) => r.present === false).map((r) => r.cfg.name);
    return { active: this.state.active ?? null, healthy: this.state.uplinks.filter((u) => u.health === "up").map((u) => u.name), ...(missing.length ? { missing } : {}) };
  }

  /** `agent uplink status`: everything. */
  report(): UplinkReport {
    const snap = this.o.monitor.snapshot();
    // Instants are monotonic; people read them as wall-clock times of now.
    const iso = (t?: number) => (t === undefined ? undefined : new Date(wallOf(this.clock, t)).toISOString());
    const t = this.o.tracking;
    return {
      active: this.state.active,
      active_since: iso(this.state.activeSince),
      monitor: this.o.monitor.kind,
      targets: this.targets.map(formatHostPort),
      tracking: { interval_ms: t.interval, timeout_ms: t.timeout, down: t.down, up: t.up, count: t.count },
      uplinks: this.rt.map((r) => {
        const u = this.state.uplinks[r.index]!;
        const l = snap.get(r.cfg.name);
        const lost = r.rounds.filter((x) => !x.ok).length;
        const rtts = r.rounds.filter((x) => x.ok && x.rttMs !== undefined).map((x) => x.rttMs!);
        return {
          name: r.cfg.name,
          kind: r.cfg.kind,
          priority: r.cfg.priority,
          metered: r.cfg.metered,
          active: this.state.active === r.cfg.name,
          health: u.health,
          problem: linkProblem(l),
          since: iso(u.since),
          link: { present: !!l, up: !!l?.up, carrier: !!l?.carrier, addrs: l?.addrs ?? [], gateway: this.gatewayOf(r, snap) },
          probes: {
            sent: r.rounds.length,
            lost,
            loss: r.rounds.length ? lost / r.rounds.length : 0,
            latency_ms: rtts.length ? Math.round((rtts.reduce((a, b) => a + b, 0) / rtts.length) * 10) / 10 : undefined,
            last: r.last && { at: iso(r.last.at)!, ok: r.last.ok, rtt_ms: r.last.rttMs && Math.round(r.last.rttMs * 10) / 10, targets: r.last.targets },
          },
          ok_streak: u.okStreak,
          fail_streak: u.failStreak,
          modem: r.modem && { ...r.modem, at: iso(r.modem.at) },
        };
      }),
      history: this.state.history.map((h: Switch) => ({ at: iso(h.at)!, from: h.from, to: h.to, reason: h.reason })),
    };
  }
}
