// `make bench B=uplink` (root): failover times of the uplink manager with its default tracking
// settings, measured on the namespace lab (test/helpers/uplink-lab.ts: a real onsite daemon,
// three uplinks through NATing routers, a LAN client connecting to the relay's port every
// 50 ms). Twenty cuts each of "link down" and "black hole" (iptables DROP at the router, link
// stays up). Each cut hits whichever of the two unmetered uplinks is active, so the other one
// takes over; the cut one is restored and must be healthy again before the next cut.
//
// Printed: time to detect (cut → the switch in the daemon's history) and time until LAN
// traffic flows on the backup (cut → first connection the relay sees through the backup's
// router), median / p95 / max; next to mwan3 with its defaults (interval 10 s, down 5,
// timeout 4 s), computed for the same cuts: mwan3 declares a link offline `down` failed probes
// after the cut, the first probe falling anywhere in its interval (spread evenly over the 20
// cuts), each failure known `timeout` after its probe; the route switch lag is ours.
// Also: the cost of reading the non-blocking netlink socket from a timer.
import { defaults } from "../src/config.ts";
import { NETLINK_READ_MS } from "../src/uplink/monitor.ts";
import { RouteSocket, RTMGRP_LINK } from "../src/uplink/netlink.ts";
import { startLab, switchAfter, waitReport, type Lab } from "../test/helpers/uplink-lab.ts";

const CUTS = Number(process.env.UPLINK_BENCH_CUTS ?? 20);
const MWAN3 = { interval: 10_000, down: 5, timeout: 4_000 };

if (process.getuid?.() !== 0) {
  console.error("uplink bench needs root (network namespaces)");
  process.exit(1);
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};
const fmt = (ms: number) => (ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);
const row = (name: string, xs: number[]) => `${name.padEnd(48)} ${fmt(pct(xs, 50)).padStart(8)} ${fmt(pct(xs, 95)).padStart(8)} ${fmt(Math.max(...xs)).padStart(8)}`;

/** mwan3's time to declare the link offline for the k-th of n cuts. */
function mwan3Detect(k: number, n: number): number {
  const phase = ((k + 0.5) / n) * MWAN3.interval; // wait for its next probe
  return phase + (MWAN3.down - 1) * MWAN3.interval + MWAN3.timeout;
}

async function cutOnce(lab: Lab, kind: "link" | "blackhole"): Promise<{ detect: number; traffic: number }> {
  const r0 = await lab.status();
  const active = r0.active!;
  const i = lab.topo.uplinks.findIndex((u) => u.dev === active) + 1;
  const other = i === 1 ? 2 : 1;
  const otherDev = lab.topo.uplinks[other - 1]!.dev;
  const t0 = Date.now();
  if (kind === "link") await lab.topo.setLink(i, false);
  else await lab.topo.blackhole(i, true);
  try {
    const r = await waitReport(lab, (r) => r.active === otherDev, 20_000, `failover ${active} → ${otherDev}`);
    const sw = switchAfter(r, t0, otherDev)!;
    const end = Date.now() + 10_000;
    while (!lab.firstVia(other, t0) && Date.now() < end) await Bun.sleep(50);
    const first = lab.firstVia(other, t0);
    if (!first) throw new Error(`no LAN traffic through ${otherDev} after the cut`);
    return { detect: Date.parse(sw.at) - t0, traffic: first.at - t0 };
  } finally {
    if (kind === "link") await lab.topo.setLink(i, true);
    else await lab.topo.blackhole(i, false);
    await waitReport(lab, (r) => r.uplinks.find((u) => u.name === active)?.health === "up", 30_000, `${active} healthy again`);
  }
}

function netlinkReadCost(): number {
  const s = new RouteSocket(RTMGRP_LINK);
  try {
    const n = 200_000;
    const t = performance.now();
    for (let k = 0; k < n; k++) s.drain();
    return ((performance.now() - t) * 1000) / n; // µs per empty read
  } finally {
    s.close();
  }
}

const lab = await startLab({ prefix: "upb" });
try {
  await waitReport(lab, (r) => r.active === "upbeth0" && r.uplinks.every((u) => u.health === "up"), 30_000, "all uplinks healthy");
  const t = defaults().tracking;
  console.log(`defaults: interval ${t.interval} ms, timeout ${t.timeout} ms, down ${t.down}, up ${t.up}, ${t.count} connects per round; ${CUTS} cuts each`);
  const results: Record<string, { detect: number[]; traffic: number[] }> = {};
  for (const kind of ["link", "blackhole"] as const) {
    const res = { detect: [] as number[], traffic: [] as number[] };
    for (let k = 0; k < CUTS; k++) {
      const r = await cutOnce(lab, kind);
      res.detect.push(r.detect);
      res.traffic.push(r.traffic);
      process.stdout.write(".");
    }
    results[kind] = res;
  }
  console.log("\n");
  console.log(`${"".padEnd(48)} ${"median".padStart(8)} ${"p95".padStart(8)} ${"max".padStart(8)}`);
  for (const [kind, label] of [
    ["link", "link down"],
    ["blackhole", "black hole"],
  ] as const) {
    const r = results[kind]!;
    const mwDetect = r.detect.map((_, k) => mwan3Detect(k, CUTS));
    const mwTraffic = mwDetect.map((d, k) => d + (r.traffic[k]! - r.detect[k]!));
    console.log(row(`${label}: detect (agent)`, r.detect));
    console.log(row(`${label}: detect (mwan3 defaults, computed)`, mwDetect));
    console.log(row(`${label}: traffic on backup (agent)`, r.traffic));
    console.log(row(`${label}: traffic on backup (mwan3, computed)`, mwTraffic));
    console.log(`${label}: mwan3 / agent, median time to traffic: ${(pct(mwTraffic, 50) / pct(r.traffic, 50)).toFixed(1)}x`);
  }
  const us = netlinkReadCost();
  console.log(
    `\nnetlink socket read from a ${NETLINK_READ_MS} ms timer (non-blocking recv, nothing queued): ${us.toFixed(2)} µs per read, ` +
      `${((us * (1000 / NETLINK_READ_MS)) / 1000).toFixed(3)} ms of CPU per second (${((us * (1000 / NETLINK_READ_MS)) / 10_000).toFixed(4)}% of a core)`,
  );
  console.log("note: on OpenWRT a carrier loss can also reach mwan3 through netifd's ifdown hotplug; the mwan3 figures are its probe path.");
} finally {
  await lab.close();
}
