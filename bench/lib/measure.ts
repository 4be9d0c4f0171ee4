// Measuring one path and laying out the comparison. The arithmetic (CPU per GB, ratios,
// formatting) is pure and table-tested; measurePath drives the real tools.
import { runIperf, type IperfResult } from "../../test/helpers/iperf.ts";
import { treeUsage } from "../../test/helpers/proc.ts";
import { formatTable } from "../../src/table.ts";
import { pingPong, type LatencySummary } from "./pingpong.ts";
import type { Path } from "./path.ts";

/** How often relay RSS is sampled while iperf3 runs (its peak under load is what we report). */
const RSS_SAMPLE_MS = 100;
const REAP_SETTLE_MS = 500;

export interface ProcessCost {
  /** CPU seconds per GB (10^9 bytes) carried, during the iperf3 runs. */
  cpuSecondsPerGB: number;
  /** Largest RSS sampled under load, MiB. */
  peakRssMiB: number;
}

export interface PathFigures {
  name: string;
  notes: string;
  /** Set when the path could not be measured; no figures then. */
  unavailable?: string;
  gbps1?: number;
  gbps4?: number;
  latency?: LatencySummary;
  relay?: ProcessCost;
  wholePath?: ProcessCost;
}

export interface MeasureOptions {
  iperfPort: number;
  echoPort: number;
  seconds: number;
  rounds: number;
}

export function cpuPerGB(cpuSeconds: number, bytes: number): number {
  return bytes > 0 ? cpuSeconds / (bytes / 1e9) : NaN;
}

/**
 * Throughput (1 and 4 streams), then 64-byte ping-pong; relay and whole-path CPU over the
 * iperf3 runs and their RSS sampled during them. Entries: [iperf3, echo].
 */
export async function measurePath(path: Pick<Path, "name" | "notes" | "entries" | "relayPids" | "pathPids">, o: MeasureOptions): Promise<PathFigures> {
  const [iperfEntry, echoEntry] = path.entries;
  if (iperfEntry === undefined || echoEntry === undefined) throw new Error(`${path.name}: want two entries (iperf3, echo), got ${path.entries.length}`);
  const sample = (pids: number[]) => (pids.length ? treeUsage(pids) : undefined);
  let relayPeak = 0;
  let pathPeak = 0;
  const takeSample = () => {
    relayPeak = Math.max(relayPeak, sample(path.relayPids)?.rssKiB ?? 0);
    pathPeak = Math.max(pathPeak, sample(path.pathPids)?.rssKiB ?? 0);
  };
  const relay0 = sample(path.relayPids);
  const path0 = sample(path.pathPids);
  const timer = setInterval(takeSample, RSS_SAMPLE_MS);
  let one: IperfResult;
  let four: IperfResult;
  try {
    one = await runIperf({ host: "127.0.0.1", port: iperfEntry, seconds: o.seconds, parallel: 1 });
    four = await runIperf({ host: "127.0.0.1", port: iperfEntry, seconds: o.seconds, parallel: 4 });
  } finally {
    clearInterval(timer);
  }
  // A fork-per-connection relay (socat) counts a finished worker's CPU once it has reaped it.
  await Bun.sleep(REAP_SETTLE_MS);
  takeSample();
  const relay1 = sample(path.relayPids);
  const path1 = sample(path.pathPids);
  // Bytes that went through the path: what the senders wrote (receivers may miss the tail).
  const bytes = one.sentBytes + four.sentBytes;
  const latency = await pingPong("127.0.0.1", echoEntry, o.rounds);
  const cost = (a: typeof relay0, b: typeof relay0, peak: number): ProcessCost | undefined =>
    a && b ? { cpuSecondsPerGB: cpuPerGB(b.cpuSeconds - a.cpuSeconds, bytes), peakRssMiB: peak / 1024 } : undefined;
  return {
    name: path.name,
    notes: path.notes,
    gbps1: one.receivedBps / 1e9,
    gbps4: four.receivedBps / 1e9,
    latency,
    relay: cost(relay0, relay1, relayPeak),
    wholePath: cost(path0, path1, pathPeak),
  };
}

// ---------------------------------------------------------------- report

type Metric = { label: string; get: (f: PathFigures) => number | undefined; digits: number };

export const METRICS: readonly Metric[] = [
  { label: "Gbit/s x1", get: (f) => f.gbps1, digits: 2 },
  { label: "Gbit/s x4", get: (f) => f.gbps4, digits: 2 },
  { label: "rtt med us", get: (f) => f.latency?.medianUs, digits: 0 },
  { label: "rtt p99 us", get: (f) => f.latency?.p99Us, digits: 0 },
  { label: "rtt max us", get: (f) => f.latency?.maxUs, digits: 0 },
  { label: "relay CPU s/GB", get: (f) => f.relay?.cpuSecondsPerGB, digits: 2 },
  { label: "relay RSS MiB", get: (f) => f.relay?.peakRssMiB, digits: 1 },
  { label: "path CPU s/GB", get: (f) => f.wholePath?.cpuSecondsPerGB, digits: 2 },
  { label: "path RSS MiB", get: (f) => f.wholePath?.peakRssMiB, digits: 1 },
];

export function fmt(v: number | undefined, digits: number): string {
  return v === undefined || !Number.isFinite(v) ? "-" : v.toFixed(digits);
}

/** a / b as "1.23x", "-" when either is missing or b is 0. */
export function ratio(a: number | undefined, b: number | undefined): string {
  return a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0 ? "-" : `${(a / b).toFixed(2)}x`;
}

/** The figures table, then one ratio table per peer (each figure divided by the peer's). */
export function report(rows: readonly PathFigures[], peers: readonly PathFigures[]): string {
  const out: string[] = [];
  const figures = rows.map((r) => (r.unavailable ? [r.name, "n/a"] : [r.name, ...METRICS.map((m) => fmt(m.get(r), m.digits))]));
  out.push(formatTable(["path", ...METRICS.map((m) => m.label)], figures));
  // Reasons go under the table: a long one in a cell would stretch a column for every row.
  for (const r of rows) if (r.unavailable) out.push(`${r.name}: not available: ${r.unavailable}\n`);
  for (const peer of peers) {
    if (peer.unavailable) {
      out.push(`ratios to ${peer.name}: not available (${peer.unavailable})\n`);
      continue;
    }
    const lines = rows.filter((r) => !r.unavailable && r !== peer).map((r) => [r.name, ...METRICS.map((m) => ratio(m.get(r), m.get(peer)))]);
    out.push(`ratio to ${peer.name} (throughput: higher is better; latency, CPU, RSS: lower is better)\n` + formatTable(["path", ...METRICS.map((m) => m.label)], lines));
  }
  out.push(rows.map((r) => `${r.name}: ${r.notes}`).join("\n") + "\n");
  return out.join("\n");
}
