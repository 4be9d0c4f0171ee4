// `make bench B=uplink` (root): failover times of the uplink manager with its default tracking
// settings, measured on the namespace lab (test/helpers/uplink-lab.ts: a real onsite daemon,
// three uplinks through NATing routers, a LAN client connecting to the relay's port every
// 50 ms). Twenty cuts each of "link down" and "black hole" (iptables DROP at the router, link
// stays up). Each cut hits whichever of the two unmetered uplinks is active, so the other one
// takes over; the cut one is restored and must be healthy again before the next cut.
//
// The relay port is served by a real relay, with a real master beside it in the relay
// namespace; the master holds one session with a forward to an HTTP server on the LAN, and a
// poller in the master's namespace sends a request through that forward every 50 ms.
//
// Printed: time to detect (cut → the switch in the daemon's history), time until LAN
// traffic flows on the backup (cut → first connection the relay sees through the backup's
// router), and time until the relay session is back (cut → the first request through the
// master's forward, started once the cut is in place, that gets its answer), median / p95 / max.
//
// Beside them, figures that are COMPUTED, not measured (no mwan3 runs here), each labelled so:
// - mwan3 with its defaults (interval 10 s, down 5, timeout 4 s, count 1), tracking the same
//   targets ours does (the relay); the model is in bench/lib/mwan3.ts. Black hole (the carrier
//   stays up): its probe rounds, each failed one waiting the ping timeout per target before
//   the interval: 60-70 s. Link down: netifd's ifdown hotplug tells mwan3 at once, taken as
//   0 ms (a lower bound). Either way the route switch → traffic lag added is ours, measured.
// - the relay session without the redial hook: the tunnel would be re-dialed only when our
//   keepalive gives up (no frame for 15 s, checked every 5 s: 15-20 s after the cut, spread
//   evenly), so "no redial hook" is max(our switch, keepalive) + our measured lag from switch
//   to session, and "mwan3 + 15 s keepalive" is max(mwan3's switch, keepalive) + the same lag.
//   Both leave out the reconnect backoff (≤ 0.5 s) and any dial that fails over the
//   still-dead path before the switch: they are lower bounds.
// Ratio lines name the computed side as computed.
// Also: the cost of reading the non-blocking netlink socket from a timer.
import { join } from "node:path";
import { defaults } from "../src/config.ts";
import { Timing } from "../src/transport/policy.ts";
import { keepaliveClose as keepaliveAt, mwan3Defaults, mwan3Detect } from "./lib/mwan3.ts";
import type { SessionView } from "../src/tunnel/master-forwarder.ts";
import { NETLINK_READ_MS } from "../src/uplink/monitor.ts";
import { RouteSocket, RTMGRP_LINK } from "../src/uplink/netlink.ts";
import { FIXTURES, LAN_HTTP, lines, startLab, switchAfter, waitReport, type Lab } from "../test/helpers/uplink-lab.ts";

const CUTS = Number(process.env.UPLINK_BENCH_CUTS ?? 20);
/** mwan3 is assumed to track what ours does: the relay plus [tracking] targets (none by default). */
const MWAN3 = mwan3Defaults(1 + defaults().tracking.targets.length);

if (process.getuid?.() !== 0) {
  console.error("uplink bench needs root (network namespaces)");
  process.exit(1);
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};
const fmt = (ms: number) => (ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`);
const KEEPALIVE = { timeout: Timing.keepaliveTimeout, interval: Timing.keepaliveInterval };
const row = (name: string, xs: number[]) => `${name.padEnd(64)} ${fmt(pct(xs, 50)).padStart(8)} ${fmt(pct(xs, 95)).padStart(8)} ${fmt(Math.max(...xs)).padStart(8)}`;

interface Poll {
  start: number;
  at: number;
  ok?: boolean;
  err?: string;
}
const polls: Poll[] = [];

async function cutOnce(lab: Lab, kind: "link" | "blackhole"): Promise<{ detect: number; traffic: number; session: number }> {
  const r0 = await lab.status();
  const active = r0.active!;
  const i = lab.topo.uplinks.findIndex((u) => u.dev === active) + 1;
  const other = i === 1 ? 2 : 1;
  const otherDev = lab.topo.uplinks[other - 1]!.dev;
  const t0 = Date.now();
  if (kind === "link") await lab.topo.setLink(i, false);
  else await lab.topo.blackhole(i, true);
  // Requests started before the `ip`/`iptables` process had made the cut could still succeed.
  const inPlace = Date.now();
  try {
    const r = await waitReport(lab, (r) => r.active === otherDev, 20_000, `failover ${active} → ${otherDev}`);
    const sw = switchAfter(r, t0, otherDev)!;
    const end = Date.now() + 10_000;
    while (!lab.firstVia(other, t0) && Date.now() < end) await Bun.sleep(50);
    const first = lab.firstVia(other, t0);
    if (!first) throw new Error(`no LAN traffic through ${otherDev} after the cut`);
    const back = () => polls.find((p) => p.start >= inPlace && p.ok);
    const end2 = Date.now() + 20_000;
    while (!back() && Date.now() < end2) await Bun.sleep(50);
    const ok = back();
    if (!ok) throw new Error(`no request through the forward succeeded within 20 s of the cut; last: ${JSON.stringify(polls.at(-1))}`);
    return { detect: Date.parse(sw.at) - t0, traffic: first.at - t0, session: ok.at - t0 };
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

const lab = await startLab({ prefix: "upb", relay: true });
let poller: ReturnType<typeof Bun.spawn> | undefined;
try {
  await waitReport(lab, (r) => r.active === "upbeth0" && r.uplinks.every((u) => u.health === "up"), 30_000, "all uplinks healthy");
  const fleet = lab.fleet!;
  // One session with a forward to the LAN's HTTP server, opened once and kept across all cuts.
  let view: SessionView | undefined;
  for (const until = Date.now() + 30_000; !view && Date.now() < until; await Bun.sleep(200)) {
    view = await fleet.json<SessionView>(fleet.masterControl, ["connect", "site-1", "--forward", `127.0.0.1:0:${fleet.lanHttp}`]).catch(() => undefined);
  }
  if (!view) throw new Error("could not open a session to site-1 through the real relay");
  const port = view.forwards[0]!.port;
  const poll = Bun.spawn(["ip", "netns", "exec", lab.topo.relay, process.execPath, join(FIXTURES, "poll-forward.ts"), "127.0.0.1", String(port), LAN_HTTP.body], { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
  poller = poll;
  void lines(poll.stdout, (l) => {
    try {
      polls.push(JSON.parse(l) as Poll);
    } catch {
      // partial line at exit
    }
  });
  for (const until = Date.now() + 10_000; !polls.some((p) => p.ok) && Date.now() < until; ) await Bun.sleep(50);
  if (!polls.some((p) => p.ok)) throw new Error(`the forward does not answer before the first cut: ${JSON.stringify(polls.at(-1))}`);
  const t = defaults().tracking;
  console.log(`defaults: interval ${t.interval} ms, timeout ${t.timeout} ms, down ${t.down}, up ${t.up}, ${t.count} connects per round; ${CUTS} cuts each`);
  const results: Record<string, { detect: number[]; traffic: number[]; session: number[] }> = {};
  for (const kind of ["link", "blackhole"] as const) {
    const res = { detect: [] as number[], traffic: [] as number[], session: [] as number[] };
    for (let k = 0; k < CUTS; k++) {
      const r = await cutOnce(lab, kind);
      res.detect.push(r.detect);
      res.traffic.push(r.traffic);
      res.session.push(r.session);
      process.stdout.write(".");
    }
    results[kind] = res;
  }
  console.log("\n");
  console.log(`${"".padEnd(64)} ${"median".padStart(8)} ${"p95".padStart(8)} ${"max".padStart(8)}`);
  for (const [kind, label] of [
    ["link", "link down"],
    ["blackhole", "black hole"],
  ] as const) {
    const r = results[kind]!;
    const mwDetect = r.detect.map((_, k) => mwan3Detect(MWAN3, kind, k, CUTS));
    const mwTraffic = mwDetect.map((d, k) => d + (r.traffic[k]! - r.detect[k]!));
    const mwWhy = kind === "link" ? "hotplug, at once" : `${MWAN3.down} probe rounds`;
    console.log(row(`${label}: detect (agent)`, r.detect));
    console.log(row(`${label}: detect (mwan3 defaults, computed: ${mwWhy})`, mwDetect));
    console.log(row(`${label}: traffic on backup (agent)`, r.traffic));
    console.log(row(`${label}: traffic on backup (mwan3, computed)`, mwTraffic));
    const lag = r.session.map((x, k) => x - r.detect[k]!); // switch → session back, measured
    const noHook = r.detect.map((d, k) => Math.max(d, keepaliveAt(KEEPALIVE, k, CUTS)) + lag[k]!);
    const mwSession = mwDetect.map((d, k) => Math.max(d, keepaliveAt(KEEPALIVE, k, CUTS)) + lag[k]!);
    console.log(row(`${label}: relay session back (agent)`, r.session));
    console.log(row(`${label}: session back, no redial hook (computed)`, noHook));
    console.log(row(`${label}: session back, mwan3 + 15 s keepalive (computed)`, mwSession));
    console.log(`${label}: median time to traffic, mwan3 (computed) / agent: ${(pct(mwTraffic, 50) / pct(r.traffic, 50)).toFixed(1)}x`);
    console.log(
      `${label}: median time to the relay session: no redial hook (computed) / agent ${(pct(noHook, 50) / pct(r.session, 50)).toFixed(1)}x, ` +
        `mwan3 + keepalive (computed) / agent ${(pct(mwSession, 50) / pct(r.session, 50)).toFixed(1)}x`,
    );
  }
  console.log(
    `\ncomputed, not measured (no mwan3 runs here): mwan3 defaults interval ${MWAN3.interval / 1000} s, down ${MWAN3.down}, ` +
      `timeout ${MWAN3.timeout / 1000} s, count ${MWAN3.count}, ${MWAN3.targets} target(s) as ours tracks. Black hole: the next round starts ` +
      `anywhere in its interval, then ${MWAN3.down} failed rounds, each waiting the ping timeout per target and then the interval. ` +
      `Link down: netifd's ifdown hotplug reaches mwan3 at once, taken as 0 ms (a lower bound). Our measured switch → traffic ` +
      `(and → session) lag is added to both; the session rows leave out the reconnect backoff: lower bounds.`,
  );
  const sessions = await fleet.json<SessionView[]>(fleet.masterControl, ["sessions"]);
  const same = sessions.find((s) => s.session === view!.session);
  console.log(`\nthe forward's session after ${2 * CUTS} cuts: ${same?.session} ${same?.state} on port ${same?.forwards[0]?.port} (opened once, on port ${port}); ${same?.forwards[0]?.connections} connections carried`);
  const us = netlinkReadCost();
  console.log(
    `\nnetlink socket read from a ${NETLINK_READ_MS} ms timer (non-blocking recv, nothing queued): ${us.toFixed(2)} µs per read, ` +
      `${((us * (1000 / NETLINK_READ_MS)) / 1000).toFixed(3)} ms of CPU per second (${((us * (1000 / NETLINK_READ_MS)) / 10_000).toFixed(4)}% of a core)`,
  );
} finally {
  if (poller) {
    poller.kill();
    await poller.exited;
  }
  await lab.close();
}
