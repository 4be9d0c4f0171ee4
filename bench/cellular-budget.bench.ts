// `make bench B=cellular` (root): what the device's own upkeep costs on an ACTIVE metered
// (cellular) uplink, in bytes per hour: the uplink manager's probes, the relay connection's
// keepalives and the UDP heartbeat, with no user traffic. Goal (issue 13 §8): ≤ 100 kB/h.
//
// On the namespace lab (test/helpers/uplink-lab.ts) with a real relay: eth0 and wlan0 cut,
// so the cellular uplink (brought up by the fake mmcli) carries the tunnel. An nft table in
// the onsite namespace counts, on the cellular interface, the IP bytes of the device's own
// packets (input/output hooks only: the LAN's forwarded traffic is not the device's upkeep)
// in four classes: the relay connection (its 4-tuple), probes (other connections to the
// relay's port), heartbeats (UDP to the relay's port: heartbeat_port defaults to the listen
// port's number) and everything else. IP bytes are what a cellular operator bills (no
// Ethernet header on a modem's raw-IP interface). Counted over a real window of
// CELLULAR_BUDGET_S seconds (default 120) that starts CELLULAR_SETTLE_S (default 90) after
// the switch, then extrapolated to an hour.
//
// The peer, measured in the same run: the same lab with the cellular uplink marked
// `metered = false`, i.e. probed like any active uplink, at the tracking interval.
import { startLab, waitReport, type Lab } from "../test/helpers/uplink-lab.ts";
import { waitFor } from "../test/helpers/wait.ts";
import type { DeviceInfo } from "../src/transport/messages.ts";
import { defaults } from "../src/config.ts";
import { METERED_ACTIVE_PERIOD_MS } from "../src/uplink/policy.ts";

if (process.getuid?.() !== 0) {
  console.error("cellular budget bench needs root (network namespaces)");
  process.exit(1);
}
const WINDOW_S = Number(process.env.CELLULAR_BUDGET_S ?? 120);
/** Wait this long after the switch before counting: an active metered uplink's probe period
 * backs off from the interval to a minute over its first ~63 s (1+2+4+…+32 s). */
const SETTLE_S = Number(process.env.CELLULAR_SETTLE_S ?? 90);
const GOAL = 100_000;
const RELAY_PORT = 4443;

interface Counts {
  relayConn: number;
  probes: number;
  heartbeat: number;
  heartbeatPackets: number;
  other: number;
  relayPackets: number;
  probePackets: number;
  probeConnects: number;
}

async function measure(label: string, cellularConfig: string): Promise<Counts & { windowS: number; sport: number }> {
  const lab: Lab = await startLab({ prefix: "cb", relay: true, cellularConfig });
  try {
    const cell = lab.topo.uplinks[2]!;
    await waitReport(lab, (r) => r.uplinks.every((u) => u.health === "up"), 60_000, "all uplinks up");
    await lab.topo.setLink(1, false);
    await lab.topo.setLink(2, false);
    await waitReport(lab, (r) => r.active === cell.dev, 30_000, "cellular active");
    await waitFor(
      async () => (await lab.fleet!.json<DeviceInfo[]>(lab.fleet!.relayControl, ["devices"])).some((d) => d.id === "site-1" && d.online && d.uplink === cell.dev),
      30_000,
      "site-1 online via cellular",
    );
    await Bun.sleep(SETTLE_S * 1000);
    // The relay connection's local port: the one established connection to the relay.
    const ss = await lab.topo.ns(lab.topo.onsite, ["ss", "-Htn", "state", "established", "dst", `${lab.topo.relayAddr}:${RELAY_PORT}`]);
    // (A connection over a cut uplink may linger with unsent data: only the cellular one counts.)
    const ports = ss.stdout.trim().split("\n").map((l) => l.trim().split(/\s+/)[2] ?? "").filter((local) => local.startsWith(`${cell.addr}:`)).map((local) => Number(local.split(":")[1]));
    if (ports.length !== 1) throw new Error(`expected one relay connection, found: ${ss.stdout}`);
    const sport = ports[0]!;
    const w = JSON.stringify(cell.dev);
    const a = cell.addr;
    // Counted: IPv4 from/to the cellular address. Apart: packets of connections that another
    // uplink's address opened (the cut eth0's relay connection retransmitting, until TCP gives
    // up) and IPv6 (the kernel's own ND/MLD on the lab's veth), which are not steady upkeep.
    const table = `table inet cbbudget {
  chain out {
    type filter hook output priority 0; policy accept;
    oifname ${w} ip saddr ${a} tcp sport ${sport} counter comment "relay"
    oifname ${w} ip saddr ${a} tcp dport ${RELAY_PORT} tcp sport != ${sport} counter comment "probe"
    oifname ${w} ip saddr ${a} tcp dport ${RELAY_PORT} tcp sport != ${sport} tcp flags syn / syn,ack counter comment "syn"
    oifname ${w} ip saddr ${a} udp dport ${RELAY_PORT} counter comment "heartbeat"
    oifname ${w} ip saddr ${a} counter comment "all"
    oifname ${w} ip saddr != ${a} counter comment "stale"
    oifname ${w} meta nfproto ipv6 counter comment "ipv6"
  }
  chain in {
    type filter hook input priority 0; policy accept;
    iifname ${w} ip daddr ${a} tcp dport ${sport} counter comment "relay"
    iifname ${w} ip daddr ${a} tcp sport ${RELAY_PORT} tcp dport != ${sport} counter comment "probe"
    iifname ${w} ip daddr ${a} udp sport ${RELAY_PORT} counter comment "heartbeat"
    iifname ${w} ip daddr ${a} counter comment "all"
    iifname ${w} ip daddr != ${a} counter comment "stale"
    iifname ${w} meta nfproto ipv6 counter comment "ipv6"
  }
}
`;
    const f = `${lab.dir}/budget.nft`;
    await Bun.write(f, table);
    await lab.topo.ns(lab.topo.onsite, ["nft", "-f", f]);
    const t0 = performance.now();
    await Bun.sleep(WINDOW_S * 1000);
    const windowS = (performance.now() - t0) / 1000;
    const list = JSON.parse((await lab.topo.ns(lab.topo.onsite, ["nft", "-j", "list", "table", "inet", "cbbudget"])).stdout) as { nftables: { rule?: { comment?: string; expr: { counter?: { bytes: number; packets: number } }[] } }[] };
    await lab.topo.ns(lab.topo.onsite, ["nft", "delete", "table", "inet", "cbbudget"], true);
    const sum = (c: string, k: "bytes" | "packets") =>
      list.nftables.filter((x) => x.rule?.comment === c).reduce((n, x) => n + (x.rule!.expr.find((e) => e.counter)?.counter?.[k] ?? 0), 0);
    // The relay connection must have lived through the window: else its bytes are mixed up.
    const again = await lab.topo.ns(lab.topo.onsite, ["ss", "-Htn", "state", "established", "dst", `${lab.topo.relayAddr}:${RELAY_PORT}`]);
    if (!again.stdout.includes(`:${sport} `)) console.log(`  (${label}: the relay connection changed during the window; figures mix both)`);
    const all = sum("all", "bytes");
    const relay = sum("relay", "bytes");
    const probes = sum("probe", "bytes");
    const heartbeat = sum("heartbeat", "bytes");
    console.log(`  ${label}: not counted: ${sum("stale", "bytes")} B (${sum("stale", "packets")} packets) of connections from another uplink's address, ${sum("ipv6", "bytes")} B IPv6 (ND/MLD), in ${Math.round(windowS)} s`);
    return { windowS, sport, relayConn: relay, probes, heartbeat, heartbeatPackets: sum("heartbeat", "packets"), other: all - relay - probes - heartbeat, relayPackets: sum("relay", "packets"), probePackets: sum("probe", "packets"), probeConnects: sum("syn", "packets") };
  } finally {
    await lab.close();
  }
}

const perHour = (bytes: number, s: number) => (bytes * 3600) / s;
const kB = (b: number) => `${(b / 1000).toFixed(1)} kB/h`;
const t = defaults().tracking;
console.log(`cellular upkeep on an active metered uplink, no user traffic; window ${WINDOW_S} s each, ${SETTLE_S} s after the switch, extrapolated to 1 h; IP bytes both ways`);
console.log(`tracking defaults: interval ${t.interval} ms, timeout ${t.timeout} ms, count ${t.count}; the lab's cellular [[uplink]] sets no keepalive (active period: ${METERED_ACTIVE_PERIOD_MS / 1000} s)`);
const rows: [string, Awaited<ReturnType<typeof measure>>][] = [];
rows.push(["agent (metered cellular, defaults)", await measure("metered", "")]);
rows.push(["peer: the same uplink probed as unmetered", await measure("unmetered", "metered = false")]);
console.log(`${"".padEnd(44)} ${"probes".padStart(12)} ${"relay conn".padStart(12)} ${"heartbeat".padStart(12)} ${"other".padStart(12)} ${"total".padStart(12)}  probe connects/h, heartbeats/h`);
for (const [name, c] of rows) {
  const total = c.probes + c.relayConn + c.heartbeat + c.other;
  console.log(`${name.padEnd(44)} ${kB(perHour(c.probes, c.windowS)).padStart(12)} ${kB(perHour(c.relayConn, c.windowS)).padStart(12)} ${kB(perHour(c.heartbeat, c.windowS)).padStart(12)} ${kB(perHour(c.other, c.windowS)).padStart(12)} ${kB(perHour(total, c.windowS)).padStart(12)}  ${Math.round(perHour(c.probeConnects, c.windowS))}, ${Math.round(perHour(c.heartbeatPackets, c.windowS))}`);
}
const [a, b] = [rows[0]![1], rows[1]![1]];
const tot = (c: Counts & { windowS: number }) => perHour(c.probes + c.relayConn + c.heartbeat + c.other, c.windowS);
console.log(`ratio: agent / unmetered peer = ${(tot(a) / tot(b)).toFixed(3)}; goal ≤ ${GOAL / 1000} kB/h: ${tot(a) <= GOAL ? "met" : "NOT met"} (${kB(tot(a))})`);
console.log(`relay connection: ${Math.round(perHour(a.relayPackets, a.windowS))} packets/h, ${a.relayPackets ? Math.round(a.relayConn / a.relayPackets) : 0} B each on average`);
