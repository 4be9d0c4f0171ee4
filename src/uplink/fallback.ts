// When the radio is an access point and when it is a Wi-Fi client: a pure state machine,
// `decideAp(state, event, now) → {state, actions}`, table-tested in test/wifi-unit.test.ts.
//
//   client ──(no healthy uplink for `after`)──▶ ap ──(healthy uplink, if stop_on_uplink)──▶ client
//   ap ──(every `retry`, if a network is known; or a network was just configured)──▶ trying
//   trying ──(connected)──▶ client        trying ──(failed)──▶ back where it came from
//
// One radio: entering "trying" from "ap" stops the AP first and a failed try starts it again.
// A manual start_ap holds the AP until stop_ap (a person on site asked for it); a manual
// stop_ap restarts the `after` clock.

export type ApMode = "client" | "ap" | "trying";

export interface ApPolicyOptions {
  after: number;
  retry: number;
  stopOnUplink: boolean;
}

export interface ApState {
  mode: ApMode;
  /** Since when no uplink has been healthy (client mode). */
  unhealthySince?: number;
  /** The AP was started by hand: health does not end it, retries do not interrupt it. */
  manual: boolean;
  lastTry?: number;
  /** Where a failed try returns to. */
  resume: "client" | "ap";
  /** A network was configured during a try: try again before giving up. */
  again?: boolean;
}

export type ApEvent =
  | { type: "tick"; healthy: boolean; known: number }
  | { type: "start_ap" }
  | { type: "stop_ap" }
  | { type: "configured" }
  | { type: "start_wifi" }
  | { type: "reset" }
  | { type: "try_result"; ok: boolean };

export type ApAction = { type: "start-ap"; reason: string } | { type: "stop-ap"; reason: string } | { type: "try-wifi"; reason: string };

export function initialApState(now: number): ApState {
  return { mode: "client", unhealthySince: now, manual: false, resume: "client" };
}

export function decideAp(s: ApState, ev: ApEvent, now: number, o: ApPolicyOptions): { state: ApState; actions: ApAction[] } {
  const out = (state: ApState, ...actions: ApAction[]) => ({ state, actions });
  const tryFrom = (reason: string) =>
    s.mode === "ap"
      ? out({ ...s, mode: "trying", resume: "ap", lastTry: now }, { type: "stop-ap", reason }, { type: "try-wifi", reason })
      : out({ ...s, mode: "trying", resume: "client", lastTry: now }, { type: "try-wifi", reason });
  switch (ev.type) {
    case "tick":
      if (s.mode === "client") {
        if (ev.healthy) return out({ ...s, unhealthySince: undefined });
        const since = s.unhealthySince ?? now;
        if (now - since >= o.after) return out({ ...s, mode: "ap", manual: false, lastTry: now, unhealthySince: since }, { type: "start-ap", reason: `no healthy uplink for ${Math.round((now - since) / 1000)}s` });
        return out({ ...s, unhealthySince: since });
      }
      if (s.mode === "ap" && !s.manual) {
        if (ev.healthy && o.stopOnUplink) return out({ ...s, mode: "client", unhealthySince: undefined }, { type: "stop-ap", reason: "an uplink is healthy" });
        if (ev.known > 0 && now - (s.lastTry ?? now) >= o.retry) return tryFrom("retrying the known Wi-Fi networks");
      }
      return out(s);
    case "start_ap":
      if (s.mode === "ap") return out({ ...s, manual: true });
      return out({ ...s, mode: "ap", manual: true, lastTry: now }, { type: "start-ap", reason: "requested" });
    case "stop_ap":
      if (s.mode === "ap") return out({ ...s, mode: "client", manual: false, unhealthySince: now }, { type: "stop-ap", reason: "requested" });
      return out({ ...s, manual: false, resume: "client", unhealthySince: now });
    case "configured":
    case "start_wifi":
      if (s.mode === "trying") return out({ ...s, again: true });
      return tryFrom(ev.type === "configured" ? "a network was configured" : "requested");
    case "reset":
      // netconnectd's reset: forget the grace period; the AP comes at the next tick if no uplink is healthy.
      if (s.mode === "client") return out({ ...s, unhealthySince: now - o.after });
      return out(s);
    case "try_result":
      if (s.mode !== "trying") return out(s);
      if (ev.ok) return out({ ...s, mode: "client", manual: false, unhealthySince: now, again: false });
      if (s.again) return out({ ...s, again: false, lastTry: now }, { type: "try-wifi", reason: "a network was configured during the last try" });
      if (s.resume === "ap") return out({ ...s, mode: "ap", lastTry: now }, { type: "start-ap", reason: "the Wi-Fi client could not connect" });
      return out({ ...s, mode: "client" });
  }
}

/**
 * What the fallback counts as "a healthy uplink". A configured uplink that is healthy, of
 * course. But when configured uplinks are missing (a typo in `[[uplink]] name`, a renamed
 * interface), the device may be online through an interface the config does not name: the
 * AP is for a device that cannot reach its relay, so a relay that answers through the main
 * routing table also counts (and the AP, which would take the radio, stays off). An uplink
 * that is present but down never triggers that check: the configured uplinks are the whole
 * story there, as before. `relayReachable` undefined: not checked (yet).
 */
export interface FallbackView {
  healthy: readonly string[];
  missing: readonly string[];
  relayReachable?: boolean;
}

export function fallbackHealthy(v: FallbackView): { healthy: boolean; reason: string } {
  if (v.healthy.length > 0) return { healthy: true, reason: `healthy uplink: ${v.healthy.join(", ")}` };
  if (v.missing.length === 0) return { healthy: false, reason: "no healthy uplink" };
  if (v.relayReachable === true) return { healthy: true, reason: `the relay answers through an interface the config does not name (missing: ${v.missing.join(", ")})` };
  return { healthy: false, reason: `no healthy uplink; missing: ${v.missing.join(", ")}` };
}

/** Whether the relay must be probed outside the configured uplinks (see fallbackHealthy). */
export function needsRelayCheck(v: Omit<FallbackView, "relayReachable">): boolean {
  return v.healthy.length === 0 && v.missing.length > 0;
}
