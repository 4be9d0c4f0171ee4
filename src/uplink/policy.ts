// The failover decision: a pure state machine. Every input (a probe result, a link change,
// a clock tick) is an event; `decide(state, event, now)` returns the next state and the
// actions the effects adapter must carry out. Nothing here touches the system or the clock.
// `now` and every instant in the state (since, flaps, history) are monotonic milliseconds
// (Clock.now()), so hold-downs and flap windows do not move when the wall clock is stepped.
//
// Semantics (mwan3's, with faster defaults):
// - `down` consecutive failed probe rounds mark a healthy uplink down; `up` consecutive good
//   rounds mark a down uplink up. A link that loses its carrier or address is down at once
//   (it cannot carry anything), but a link coming up is never trusted by itself: it must
//   pass `up` probe rounds first.
// - Choice: healthy uplinks only; unmetered before metered (a metered uplink carries
//   traffic only while nothing unmetered is healthy), then lower priority, then config order.
// - The active uplink is left only when it goes down (at once) or when a better uplink has
//   been up for its required stable time (preemption). That time grows with the uplink's
//   recent flaps, so a link that comes and goes cannot drag traffic back and forth.

export interface UplinkSpec {
  name: string;
  priority: number;
  metered: boolean;
}

export interface PolicyParams {
  /** Consecutive failed rounds that mark an uplink down. */
  down: number;
  /** Consecutive good rounds that mark an uplink up. */
  up: number;
}

/** Flap damping: recent down transitions within this window count against preemption. */
export const FLAP_WINDOW_MS = 300_000;
/** Extra stable time before returning to an uplink with 2 recent flaps; doubles per flap. */
export const FLAP_HOLD_BASE_MS = 10_000;
/** Cap of that extra time. */
export const FLAP_HOLD_MAX_MS = 300_000;
/**
 * How often an ACTIVE metered uplink is probed while healthy, when its [[uplink]] entry sets
 * no `keepalive`. It carries traffic only because nothing unmetered is healthy, the relay
 * connection's own keepalive watches the same path, and every probe is billed: measured
 * (`make bench B=cellular`), probing each second cost about 1.1 MB/h.
 */
export const METERED_ACTIVE_PERIOD_MS = 60_000;

/**
 * The probe period of one uplink. Standby: its `keepalive` if set (at least the interval),
 * else the interval. Active and unmetered: the interval. Active and metered: the interval
 * while its health is not settled up (a failed round is confirmed at the normal pace, so a
 * dead link is still noticed after `down` quick rounds); then it doubles with each good
 * round since it became active (`activeOk`) up to its `keepalive` or
 * METERED_ACTIVE_PERIOD_MS: a link that has just taken over, or just failed once, is watched
 * closely; one that has carried the traffic for minutes costs a probe a minute. Pure.
 */
export function probePeriod(u: { active: boolean; metered: boolean; keepalive?: number; health: Health; failStreak: number; activeOk?: number }, interval: number): number {
  if (!u.active) return u.keepalive ? Math.max(u.keepalive, interval) : interval;
  if (!u.metered || u.health !== "up" || u.failStreak > 0) return interval;
  const cap = Math.max(u.keepalive ?? METERED_ACTIVE_PERIOD_MS, interval);
  return Math.min(cap, interval * 2 ** Math.min(u.activeOk ?? 0, 30));
}

/** Switch history kept for `agent uplink status`. */
export const HISTORY_MAX = 50;

export type Health = "unknown" | "up" | "down";

export interface UplinkState {
  name: string;
  priority: number;
  metered: boolean;
  /** Carrier and an IPv4 address present (from the link monitor). */
  link: boolean;
  health: Health;
  okStreak: number;
  failStreak: number;
  /** When health last changed (ms). */
  since?: number;
  /** Times of recent up→down transitions, newest last, within FLAP_WINDOW_MS. */
  flaps: number[];
}

export interface Switch {
  at: number;
  from?: string;
  to?: string;
  reason: string;
}

export interface PolicyState {
  params: PolicyParams;
  uplinks: UplinkState[];
  active?: string;
  activeSince?: number;
  history: Switch[];
}

export type PolicyEvent =
  | { type: "probe"; uplink: string; ok: boolean }
  | { type: "link"; uplink: string; up: boolean }
  /** Several link changes seen at once (one monitor snapshot): decided together, so a burst
   *  of losses does not pass through a short-lived choice of a link that is also gone. */
  | { type: "links"; up: Record<string, boolean> }
  | { type: "tick" };

export type Action = { type: "switch"; from?: string; to?: string; reason: string };

export interface Decision {
  state: PolicyState;
  actions: Action[];
}

export function initialState(specs: UplinkSpec[], params: PolicyParams): PolicyState {
  return {
    params,
    uplinks: specs.map((s) => ({ name: s.name, priority: s.priority, metered: s.metered, link: false, health: "unknown", okStreak: 0, failStreak: 0, flaps: [] })),
    history: [],
  };
}

/** Stable time an uplink must show, beyond its `up` count, before it may preempt. */
export function requiredStableMs(u: UplinkState, now: number): number {
  const recent = u.flaps.filter((t) => now - t < FLAP_WINDOW_MS).length;
  if (recent <= 1) return 0;
  return Math.min(FLAP_HOLD_MAX_MS, FLAP_HOLD_BASE_MS * 2 ** (recent - 2));
}

/** Orders candidates: unmetered first, then priority, then config order (stable sort). */
function better(a: UplinkState, b: UplinkState): number {
  if (a.metered !== b.metered) return a.metered ? 1 : -1;
  return a.priority - b.priority;
}

function setHealth(u: UplinkState, health: Health, now: number): UplinkState {
  if (u.health === health) return u;
  const flaps = health === "down" && u.health === "up" ? [...u.flaps.filter((t) => now - t < FLAP_WINDOW_MS), now] : u.flaps;
  return { ...u, health, since: now, flaps };
}

function applyEvent(u: UplinkState, ev: PolicyEvent, p: PolicyParams, now: number): UplinkState {
  if (ev.type === "links") return Object.hasOwn(ev.up, u.name) ? applyEvent(u, { type: "link", uplink: u.name, up: ev.up[u.name]! }, p, now) : u;
  if (ev.type === "tick" || ev.uplink !== u.name) return u;
  if (ev.type === "link") {
    if (!ev.up) return setHealth({ ...u, link: false, okStreak: 0, failStreak: 0 }, "down", now);
    // Link up: remembered, but health waits for probes.
    return u.link ? u : { ...u, link: true, okStreak: 0, failStreak: 0 };
  }
  if (ev.ok) {
    const n = { ...u, okStreak: u.okStreak + 1, failStreak: 0 };
    // At start there is nothing to flap from: the first good round is enough.
    if (u.health === "unknown") return setHealth(n, "up", now);
    if (u.health === "down" && n.okStreak >= p.up) return setHealth(n, "up", now);
    return n;
  }
  const n = { ...u, failStreak: u.failStreak + 1, okStreak: 0 };
  if (u.health !== "down" && n.failStreak >= p.down) return setHealth(n, "down", now);
  return n;
}

export function decide(state: PolicyState, ev: PolicyEvent, now: number): Decision {
  const uplinks = state.uplinks.map((u) => applyEvent(u, ev, state.params, now));
  const healthy = uplinks.filter((u) => u.health === "up").sort(better);
  const current = uplinks.find((u) => u.name === state.active);
  let target: UplinkState | undefined;
  let reason = "";
  if (current && current.health === "up") {
    // Preempt only for a strictly better uplink that has been stable long enough.
    const best = healthy.find((u) => better(u, current) < 0 && now - (u.since ?? now) >= requiredStableMs(u, now));
    if (best) {
      target = best;
      reason = `${best.name} is preferred and stable`;
    } else target = current;
  } else {
    target = healthy[0];
    if (current) reason = target ? `${current.name} is down` : "all uplinks down";
    else if (target) reason = state.history.length === 0 ? "initial choice" : `${target.name} recovered`;
  }
  const to = target?.name;
  if (to === state.active) return { state: { ...state, uplinks }, actions: [] };
  const sw: Switch = { at: now, from: state.active, to, reason };
  const history = [...state.history, sw].slice(-HISTORY_MAX);
  return {
    state: { ...state, uplinks, active: to, activeSince: now, history },
    actions: [{ type: "switch", from: state.active, to, reason }],
  };
}
