// COMPUTED, not measured: when mwan3 (OpenWrt's multi-WAN manager) would move traffic off a
// cut uplink, for the uplink benchmark's rows beside our measured ones. No mwan3 runs here;
// every figure made from this is labelled "computed" where it is printed or quoted.
//
// The model, with mwan3track's defaults for an interface that sets none of the options:
// - link down (the carrier goes): netifd's ifdown hotplug reaches mwan3 at once; taken as
//   0 ms, which leaves out netifd's and the hotplug script's own time (a lower bound);
// - black hole (the carrier stays up): mwan3 notices only by its probe rounds. The cut falls
//   anywhere in its interval (spread evenly over the cuts), so its next round starts after
//   `wait`; a failed round pings each target in turn (`count` pings, each waiting `timeout`),
//   then sleeps the interval (failure_interval defaults to it); the link is offline once
//   `down` rounds in a row failed: wait + down × targets × count × timeout + (down − 1) × interval.

export interface Mwan3Tracking {
  interval: number;
  down: number;
  timeout: number;
  count: number;
  /** How many track_ip targets (the bench assumes the ones ours tracks: the relay). */
  targets: number;
}

/** mwan3track's defaults (interval 10 s, down 5, timeout 4 s, count 1), for `targets` targets. */
export function mwan3Defaults(targets: number): Mwan3Tracking {
  return { interval: 10_000, down: 5, timeout: 4_000, count: 1, targets };
}

/** Computed: ms from the cut until mwan3 declares the link offline, for the k-th of n cuts. */
export function mwan3Detect(t: Mwan3Tracking, kind: "link" | "blackhole", k: number, n: number): number {
  if (kind === "link") return 0;
  const wait = ((k + 0.5) / n) * t.interval;
  return wait + t.down * t.targets * t.count * t.timeout + (t.down - 1) * t.interval;
}

/** Computed: ms from the cut until a keepalive (no frame for `timeout`, checked every `interval`) closes the dead connection, k-th of n cuts. */
export function keepaliveClose(keepalive: { timeout: number; interval: number }, k: number, n: number): number {
  return keepalive.timeout + ((k + 0.5) / n) * keepalive.interval;
}
