// Packet-tunnel benchmark (issue 11), every row in one run on one topology: the tunnel lab with
// a relay (test/helpers/tunnel-lab.ts). A laptop namespace on the master's secondary port runs
// iperf3 and ping to a LAN host behind the onsite device; only the path between differs:
//
//   routed   ours: `agent connect --tunnel routed` (TUN at both ends, packets through the relay)
//   bridged  ours: the same session after `agent tunnel mode S bridged` (TAP + bridges)
//   forward  ours: `agent connect --forward 192.168.77.1:15201:192.168.1.1:5201` (TCP streams)
//   vtun     seed 000's own path: vtund over stunnel to the relay, which routes between TUNs
//   openvpn  OpenVPN over TCP, client-to-client on the relay
//   lossy    routed and forward again with 2 % random loss on the onsite device's uplink, first
//            alone, then with 50 ms of added delay each way on the same uplink
//
// Figures: iperf3 TCP throughput with 1 and 4 streams (median of BENCH_TURNS turns of
// BENCH_SECONDS each), ping RTT median and p99 (BENCH_PINGS pings), the lossy path's longest
// stall (the longest run of 100 ms iperf3 intervals that carried nothing), and the drops the
// tunnel counted. Needs root, iperf3, vtun, stunnel4, openvpn, nft (scripts/deps.sh).
//
// Loss is nft's `numgen random` on the onsite uplink, both ways. This kernel has no sch_netem
// (nor sch_fq, nor nft `queue`), so the 50 ms is a packet-level delay line in userspace
// (bench/lib/delay-line.ts): for the delayed rows the onsite's route to the relay goes through a
// TUN pair whose packets wait 50 ms each way, and the loss rule moves onto that TUN. The relay's
// TLS connection carries both the routed tunnel and the TCP forward, so both rows see the same
// loss and delay; the bench prints the RTT rise it measured (outer path and through the tunnel).
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { formatTable } from "../src/table.ts";
import { agent, BUN } from "../test/helpers/cli.ts";
import { Fleet, type Daemon } from "../test/helpers/fleet.ts";
import { inNs, nsArgv } from "../test/helpers/netns.ts";
import { programsPresent, spawnChild } from "../test/helpers/proc.ts";
import { buildTunnelLab, LAB_RELAY, LAN_ROUTER, type TunnelLab } from "../test/helpers/tunnel-lab.ts";
import { waitFor } from "../test/helpers/wait.ts";
import { DEFAULT_MAX_BYTES } from "./lib/delay-line.ts";
import { median } from "./lib/measure.ts";
import { startOpenvpnPath, startVtunPath } from "./lib/tunnel-peers.ts";

const env = process.env;
const TURNS = Number(env.BENCH_TURNS ?? 3);
const SECONDS = Number(env.BENCH_SECONDS ?? 3);
const PINGS = Number(env.BENCH_PINGS ?? 100);
const PORT = 7443;

if (process.getuid?.() !== 0) {
  console.error("tunnel.bench.ts needs root (namespaces, TUN/TAP)");
  process.exit(1);
}
if (!programsPresent("tunnel.bench.ts", ["iperf3", "vtund", "stunnel", "openvpn", "nft", "busybox", "openssl"])) process.exit(1);

interface Row {
  name: string;
  tcp1: number;
  tcp4: number;
  rttMedian: number;
  rttP99: number;
  stallMs?: number;
  notes: string;
}

const quantile = (v: number[], q: number) => {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? NaN;
};

async function iperf(lab: TunnelLab, host: string, port: number, streams: number, seconds = SECONDS): Promise<{ bps: number; stallMs: number }> {
  const r = await inNs(lab.laptop, ["iperf3", "-c", host, "-p", String(port), "-t", String(seconds), "-P", String(streams), "-i", "0.1", "-J", "--connect-timeout", "5000"], true);
  const j = JSON.parse(r.stdout || "{}") as { error?: string; end?: { sum_received?: { bits_per_second: number } }; intervals?: { sum: { bytes: number; seconds: number } }[] };
  if (j.error || !j.end?.sum_received) throw new Error(`iperf3 to ${host}:${port}: ${j.error ?? r.stderr}`);
  let run = 0;
  let worst = 0;
  for (const i of j.intervals ?? []) {
    run = i.sum.bytes === 0 ? run + i.sum.seconds : 0;
    worst = Math.max(worst, run);
  }
  return { bps: j.end.sum_received.bits_per_second, stallMs: worst * 1000 };
}

async function ping(lab: TunnelLab, host: string): Promise<{ median: number; p99: number }> {
  const r = await inNs(lab.laptop, ["busybox", "ping", "-c", String(PINGS), "-i", "0.02", "-W", "1", host], true);
  const rtts = [...r.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]));
  return { median: median(rtts), p99: quantile(rtts, 0.99) };
}

async function measure(lab: TunnelLab, name: string, host: string, port: number, notes: string, pingHost: string | null = host): Promise<Row> {
  const t1: number[] = [];
  const t4: number[] = [];
  let stall = 0;
  const failed: string[] = [];
  // A failed run is a result, not a crash: counted in the row's notes, its reason printed.
  const attempt = async (streams: number, into: number[]) => {
    try {
      const r = await iperf(lab, host, port, streams);
      into.push(r.bps);
      stall = Math.max(stall, r.stallMs);
    } catch (e) {
      failed.push(`${streams} stream(s): ${(e as Error).message.split("\n")[0]}`);
      console.log(`  ${name}: run failed: ${failed.at(-1)}`);
    }
  };
  for (let i = 0; i < TURNS; i++) {
    await attempt(1, t1);
    await attempt(4, t4);
  }
  const p = pingHost ? await ping(lab, pingHost) : { median: NaN, p99: NaN };
  if (failed.length) notes += `; ${failed.length} of ${2 * TURNS} iperf3 runs failed`;
  const row = { name, tcp1: median(t1) / 1e6, tcp4: median(t4) / 1e6, rttMedian: p.median, rttP99: p.p99, stallMs: stall, notes };
  console.log(`  ${name}: ${row.tcp1.toFixed(0)} / ${row.tcp4.toFixed(0)} Mbit/s, RTT ${row.rttMedian.toFixed(2)} / ${row.rttP99.toFixed(2)} ms`);
  return row;
}

async function laptopAddress(lab: TunnelLab, cidr: string, gateway?: string): Promise<void> {
  await lab.forgetLease();
  await inNs(lab.laptop, ["ip", "route", "flush", "dev", "lap0"], true);
  await inNs(lab.laptop, ["ip", "addr", "add", cidr, "dev", "lap0"]);
  if (gateway) await inNs(lab.laptop, ["ip", "route", "replace", "default", "via", gateway]);
}

async function loss(lab: TunnelLab, on: boolean, dev = "up0"): Promise<void> {
  if (!on) {
    await inNs(lab.onsite, ["nft", "delete", "table", "inet", "bench_loss"], true);
    return;
  }
  const script = `table inet bench_loss {\n chain in {\n  type filter hook prerouting priority -400;\n  iifname "${dev}" numgen random mod 100 < 2 drop\n }\n chain out {\n  type filter hook postrouting priority 400;\n  oifname "${dev}" numgen random mod 100 < 2 drop\n }\n}\n`;
  const p = Bun.spawn(nsArgv(lab.onsite, "nft", "-f", "-"), { stdin: new TextEncoder().encode(script), stdout: "pipe", stderr: "pipe" });
  if ((await p.exited) !== 0) throw new Error(`nft loss rules: ${await new Response(p.stderr).text()}`);
}

const DELAY_MS = 50;
const ONSITE_UPLINK = "10.200.2.2";

/** The onsite device's RTT to the relay over its current route (ms, median of 20 pings). */
async function outerRtt(lab: TunnelLab): Promise<number> {
  const r = await inNs(lab.onsite, ["busybox", "ping", "-c", "20", "-i", "0.05", "-W", "2", LAB_RELAY], true);
  return median([...r.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1])));
}

/**
 * Puts the delay line on the onsite device's path to the relay: the TUN pair dly0 (onsite) and
 * dly1 (moved into the relay namespace), host routes to each other's uplink address through them.
 * The established TLS connection keeps its addresses; only its packets' path changes.
 * Returns the undo, which yields the delay line's counters (JSON).
 */
async function delayOn(lab: TunnelLab): Promise<() => Promise<string>> {
  const line = spawnChild("delay line", nsArgv(lab.onsite, BUN, join(import.meta.dir, "lib", "delay-line.ts"), "dly0", "dly1", String(DELAY_MS)));
  const undo = async () => {
    await inNs(lab.onsite, ["ip", "route", "replace", `${LAB_RELAY}/32`, "via", "10.200.2.1", "dev", "up0"], true);
    await inNs(lab.relay, ["ip", "route", "del", `${ONSITE_UPLINK}/32`], true);
    await line.stop();
    return line.output().trim().split("\n").pop() ?? "";
  };
  try {
    await waitFor(() => line.output().includes("ready") || !line.running, 10_000, "delay line ready");
    if (!line.running) throw line.failure("delay line exited");
    await inNs(lab.onsite, ["ip", "link", "set", "dly1", "netns", lab.relay]);
    await inNs(lab.onsite, ["ip", "link", "set", "dly0", "mtu", "1500", "up"]);
    await inNs(lab.relay, ["ip", "link", "set", "dly1", "mtu", "1500", "up"]);
    for (const ns of [lab.onsite, lab.relay]) await inNs(ns, ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"], true);
    await inNs(lab.relay, ["ip", "route", "add", `${ONSITE_UPLINK}/32`, "dev", "dly1"]);
    await inNs(lab.onsite, ["ip", "route", "replace", `${LAB_RELAY}/32`, "dev", "dly0", "src", ONSITE_UPLINK]);
  } catch (e) {
    await undo();
    throw e;
  }
  return undo;
}

const lab = await buildTunnelLab("tb", { relay: true });
const fleet = await Fleet.create();
const rows: Row[] = [];
let drops = "";
const delayCheck: { outer?: [number, number]; counters?: string } = {};
try {
  const iperfd = spawnChild("iperf3 -s", nsArgv(lab.lan, "iperf3", "-s", "-B", LAN_ROUTER, "-p", "5201"));
  void iperfd;
  await fleet.issue("relay", "relay-1", ["--host", LAB_RELAY]);
  const conf = (name: string, text: string) => {
    const f = join(fleet.dir, name);
    writeFileSync(f, text);
    return f;
  };
  const relay = await fleet.start("relay", "relay-1", ["--listen", `${LAB_RELAY}:${PORT}`], join(fleet.dir, "relay-1.bundle"), lab.relay);
  const onsite = await fleet.start("onsite", "site-1", ["--relay", `${LAB_RELAY}:${PORT}`, "--allow", "192.168.1.0/24", "--config", conf("o.toml", '[tunnel]\nenabled = true\nbridged = true\nlan_bridge = "br-lan"\n')], undefined, lab.onsite);
  const master = await fleet.start("master", "tech-1", ["--relay", `${LAB_RELAY}:${PORT}`, "--config", conf("m.toml", '[tunnel]\nsecondary = "eth1"\ndhcp = false\npool = "10.98.0.0/16"\n')], undefined, lab.master);
  await fleet.waitConnected(onsite);
  await fleet.waitConnected(master);
  const cli = (d: Daemon, args: string[]) => agent([...args, "--control", d.sock], { env: { SSH_CONNECTION: "", SSH_CLIENT: "" } });
  const tunnelState = async (session: string) => {
    const j = JSON.parse((await cli(master, ["sessions", "--json"])).stdout) as { session: string; tunnel?: { mode: string; state: string; packets?: unknown } }[];
    return j.find((s) => s.session === session)?.tunnel;
  };
  const waitUp = (session: string, mode: string) => waitFor(async () => {
    const t = await tunnelState(session);
    return t?.mode === mode && t.state === "up";
  }, 20_000, `${mode} tunnel up`);

  console.log(`turns ${TURNS} × ${SECONDS} s per figure, ${PINGS} pings`);
  await laptopAddress(lab, "192.168.77.10/24", "192.168.77.1");
  const c = await cli(master, ["connect", "site-1", "--tunnel", "routed", "--forward", "192.168.77.1:15201:192.168.1.1:5201", "--json"]);
  if (c.code !== 0) throw new Error(`connect: ${c.stderr}`);
  const session = (JSON.parse(c.stdout) as { session: string }).session;
  await waitUp(session, "routed");
  rows.push(await measure(lab, "routed (ours)", LAN_ROUTER, 5201, "TUN ⇄ mux ⇄ relay ⇄ mux ⇄ TUN, TLS 1.3"));
  rows.push(await measure(lab, "TCP forward (ours)", "192.168.77.1", 15201, "the session's port forward, same relay", LAN_ROUTER));

  await loss(lab, true);
  rows.push(await measure(lab, "routed, 2 % loss", LAN_ROUTER, 5201, "loss on the onsite uplink (up0) both ways, no added delay"));
  rows.push(await measure(lab, "TCP forward, 2 % loss", "192.168.77.1", 15201, "same path", null));
  await loss(lab, false);

  const rttBefore = await outerRtt(lab);
  const delayOff = await delayOn(lab);
  try {
    delayCheck.outer = [rttBefore, await outerRtt(lab)];
    await loss(lab, true, "dly0");
    rows.push(await measure(lab, "routed, 2 % loss + 50 ms", LAN_ROUTER, 5201, `same loss, on the delay line's TUN; +${DELAY_MS} ms each way (userspace, packet level)`));
    rows.push(await measure(lab, "TCP forward, 2 % loss + 50 ms", "192.168.77.1", 15201, "same path", null));
  } finally {
    await loss(lab, false);
    delayCheck.counters = await delayOff();
  }
  if (rows.some((r) => r.notes.includes("runs failed"))) {
    for (const d of [master, onsite, relay]) console.log(`--- ${d.id} log, last lines ---\n${d.log().trim().split("\n").slice(-15).join("\n")}`);
  }

  if ((await cli(master, ["tunnel", "mode", session, "bridged"])).code !== 0) throw new Error("switch to bridged failed");
  await waitUp(session, "bridged");
  await laptopAddress(lab, "192.168.1.50/24");
  rows.push(await measure(lab, "bridged (ours)", LAN_ROUTER, 5201, "TAP ⇄ … ⇄ TAP, both bridges"));
  drops = JSON.stringify((await tunnelState(session))?.packets ?? {});
  await cli(master, ["disconnect", session]);
  await fleet.stop(master);
  await fleet.stop(onsite);
  await fleet.stop(relay);

  await laptopAddress(lab, "192.168.77.10/24", "192.168.77.1");
  for (const start of [startVtunPath, startOpenvpnPath]) {
    const p = await start(lab);
    try {
      rows.push(await measure(lab, p.name, LAN_ROUTER, 5201, p.notes));
    } finally {
      await p.stop();
    }
  }
} finally {
  await fleet.close();
  await lab.teardown();
}

const by = (n: string) => rows.find((r) => r.name.startsWith(n));
const tunRow = (n: string) => rows.find((r) => r.name === n);
const fmt = (v: number | undefined, d = 1) => (v === undefined || !Number.isFinite(v) ? "-" : v.toFixed(d));
console.log("\n" + formatTable(["path", "TCP 1 stream Mbit/s", "TCP 4 streams Mbit/s", "RTT median ms", "RTT p99 ms", "longest stall ms", "notes"], rows.map((r) => [r.name, fmt(r.tcp1, 0), fmt(r.tcp4, 0), fmt(r.rttMedian, 2), fmt(r.rttP99, 2), fmt(r.stallMs, 0), r.notes])));
const routed = by("routed (ours)");
const ratio = (a: number | undefined, b: number | undefined) => (a && b ? `${(a / b).toFixed(2)}x` : "-");
const goals: string[][] = [
  ["routed / our TCP forward (1 stream)", ratio(routed?.tcp1, by("TCP forward (ours)")?.tcp1), "≥ 0.5x"],
  ["routed / vtun + stunnel (1 stream)", ratio(routed?.tcp1, by("vtun")?.tcp1), "≥ 1.5x"],
  ["routed / OpenVPN TCP (1 stream)", ratio(routed?.tcp1, by("OpenVPN")?.tcp1), "≥ 1.0x"],
  ["bridged / routed (1 stream)", ratio(by("bridged")?.tcp1, routed?.tcp1), "within 10 %"],
  ["RTT p99: routed / OpenVPN", ratio(routed?.rttP99, by("OpenVPN")?.rttP99), "≤ 1.0x"],
  ["lossy path (2 % + 50 ms) goodput: routed / TCP forward", ratio(tunRow("routed, 2 % loss + 50 ms")?.tcp1, tunRow("TCP forward, 2 % loss + 50 ms")?.tcp1), "≥ 0.7x"],
  ["lossy path (2 % + 50 ms): longest stall, routed / TCP forward", `${fmt(tunRow("routed, 2 % loss + 50 ms")?.stallMs, 0)} / ${fmt(tunRow("TCP forward, 2 % loss + 50 ms")?.stallMs, 0)} ms`, "none over 2000 ms"],
  ["(loss only, no delay) goodput: routed / TCP forward", ratio(tunRow("routed, 2 % loss")?.tcp1, tunRow("TCP forward, 2 % loss")?.tcp1), "(info)"],
  ["queues per tunnel", "256 packets / 512 KiB per direction and hop (src/transport/policy.ts)", "bounded"],
];
console.log("\n" + formatTable(["figure", "measured", "goal"], goals));
const [o0, o1] = delayCheck.outer ?? [NaN, NaN];
const tunRtt = (n: string) => tunRow(n)?.rttMedian ?? NaN;
console.log(`\ndelay check (median RTT): onsite → relay ${fmt(o0, 2)} → ${fmt(o1, 2)} ms (+${fmt(o1 - o0, 1)}); laptop → LAN through the routed tunnel ${fmt(tunRtt("routed (ours)"), 2)} → ${fmt(tunRtt("routed, 2 % loss + 50 ms"), 2)} ms (+${fmt(tunRtt("routed, 2 % loss + 50 ms") - tunRtt("routed (ours)"), 1)}); expected ≈ +${2 * DELAY_MS}`);
console.log(`delay line counters (per direction; drops = over its ${DEFAULT_MAX_BYTES / 1024 / 1024} MiB bound): ${delayCheck.counters ?? "-"}`);
console.log(`\ndrops counted by the tunnel during the runs (agent sessions --json, packets): ${drops}`);

