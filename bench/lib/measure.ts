// Measuring one path and laying out the comparison. The arithmetic (CPU per GB, ratios,
// formatting) is pure and table-tested; measurePath drives the real tools.
import { runIperf, type IperfResult } from "../../test/helpers/iperf.ts";
import { treeUsage } from "../../test/helpers/proc.ts";
import { formatTable } from "../../src/table.ts";
import { pingPongSamples, summarize, type LatencySummary } from "./pingpong.ts";
import type { Path } from "./path.ts";

/** How often relay RSS is sampled while iperf3 runs (its peak under load is what we report). */
const RSS_SAMPLE_MS = 100;
/** After a run, before the last CPU sample. */
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
  /** Every iperf3 run's result, for the report's spread. */
  runs?: { gbps1: number[]; gbps4: number[] };
  latency?: LatencySummary;
  relay?: ProcessCost;
  wholePath?: ProcessCost;
}

export interface MeasureOptions {
  /** iperf3 duration per run, seconds. */
  seconds: number;
  /** Ping-pong round trips per path, in total over the repeats. */
  rounds: number;
  /** Rounds over all paths: each figure is the median of this many runs per path. */
  repeat: number;
  /** Progress lines. */
  log?: (line: string) => void;
}

export function cpuPerGB(cpuSeconds: number, bytes: number): number {
  return bytes > 0 ? cpuSeconds / (bytes / 1e9) : NaN;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const v = [...values].sort((a, b) => a - b);
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

type Measured = Pick<Path, "name" | "notes" | "entries" | "relayPids" | "pathPids">;

/** Running totals of one path over all its runs. */
class Tally {
  gbps1: number[] = [];
  gbps4: number[] = [];
  samplesNs: number[] = [];
  bytes = 0;
  relayCpu = 0;
  pathCpu = 0;
  relayPeakKiB = 0;
  pathPeakKiB = 0;
  /** Set when a run through this path failed: the path is left out of the later runs. */
  error: string | undefined;
  constructor(readonly path: Measured) {}

  /** Runs one step for this path unless it already failed; a failure is kept, not thrown. */
  async step(what: string, fn: () => Promise<void>): Promise<void> {
    if (this.error) return;
    try {
      await fn();
    } catch (e) {
      this.error = `${what} failed: ${(e instanceof Error ? e.message : String(e)).split("\n")[0]}`;
    }
  }

  usage(which: "relay" | "path") {
    const pids = which === "relay" ? this.path.relayPids : this.path.pathPids;
    return pids.length ? treeUsage(pids) : undefined;
  }

  sampleRss(): void {
    this.relayPeakKiB = Math.max(this.relayPeakKiB, this.usage("relay")?.rssKiB ?? 0);
    this.pathPeakKiB = Math.max(this.pathPeakKiB, this.usage("path")?.rssKiB ?? 0);
  }

  /** One iperf3 run through this path, its relay's CPU counted and RSS sampled meanwhile. */
  async iperf(port: number, seconds: number, parallel: number): Promise<IperfResult> {
    const r0 = this.usage("relay");
    const p0 = this.usage("path");
    const timer = setInterval(() => this.sampleRss(), RSS_SAMPLE_MS);
    let r: IperfResult;
    try {
      r = await runIperf({ host: "127.0.0.1", port, seconds, parallel });
    } finally {
      clearInterval(timer);
    }
    // A fork-per-connection relay (socat) counts a finished worker's CPU once it has reaped it.
    await Bun.sleep(REAP_SETTLE_MS);
    this.sampleRss();
    const r1 = this.usage("relay");
    const p1 = this.usage("path");
    // Bytes that went through the path: what the sender wrote (the receiver may miss the tail).
    this.bytes += r.sentBytes;
    if (r0 && r1) this.relayCpu += r1.cpuSeconds - r0.cpuSeconds;
    if (p0 && p1) this.pathCpu += p1.cpuSeconds - p0.cpuSeconds;
    return r;
  }

  figures(): PathFigures {
    if (this.error) return { name: this.path.name, notes: this.path.notes, unavailable: this.error };
    const hasRelay = this.path.relayPids.length > 0;
    const hasPath = this.path.pathPids.length > 0;
    return {
      name: this.path.name,
      notes: this.path.notes,
      gbps1: median(this.gbps1),
      gbps4: median(this.gbps4),
      runs: { gbps1: this.gbps1, gbps4: this.gbps4 },
      latency: summarize(this.samplesNs),
      relay: hasRelay ? { cpuSecondsPerGB: cpuPerGB(this.relayCpu, this.bytes), peakRssMiB: this.relayPeakKiB / 1024 } : undefined,
      wholePath: hasPath ? { cpuSecondsPerGB: cpuPerGB(this.pathCpu, this.bytes), peakRssMiB: this.pathPeakKiB / 1024 } : undefined,
    };
  }
}

/**
 * Measures every path, interleaved: each repeat runs iperf3 with 1 then 4 streams through
 * path A, B, C..., then the ping-pong through each; so background load on a shared machine
 * falls on all paths alike instead of on whichever ran during it. Each path's entries are
 * [iperf3, echo]. Throughput is the median over repeats, latency is over all round trips,
 * CPU per GB over all bytes carried, RSS the peak sampled during iperf3.
 */
export async function measurePaths(paths: readonly Measured[], o: MeasureOptions): Promise<PathFigures[]> {
  for (const p of paths) {
    if (p.entries.length !== 2) throw new Error(`${p.name}: want two entries (iperf3, echo), got ${p.entries.length}`);
  }
  const tallies = paths.map((p) => new Tally(p));
  const roundsPerRepeat = Math.max(1, Math.ceil(o.rounds / o.repeat));
  for (let rep = 1; rep <= o.repeat; rep++) {
    for (const t of tallies) {
      await t.step("iperf3", async () => {
        const one = await t.iperf(t.path.entries[0]!, o.seconds, 1);
        const four = await t.iperf(t.path.entries[0]!, o.seconds, 4);
        t.gbps1.push(one.receivedBps / 1e9);
        t.gbps4.push(four.receivedBps / 1e9);
        o.log?.(`run ${rep}/${o.repeat} ${t.path.name}: ${(one.receivedBps / 1e9).toFixed(2)} Gbit/s x1, ${(four.receivedBps / 1e9).toFixed(2)} Gbit/s x4`);
      });
      if (t.error) o.log?.(`${t.path.name}: ${t.error}`);
    }
    for (const t of tallies) {
      await t.step("ping-pong", async () => void t.samplesNs.push(...(await pingPongSamples("127.0.0.1", t.path.entries[1]!, roundsPerRepeat))));
    }
  }
  return tallies.map((t) => t.figures());
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
  const spread = (v: number[] | undefined) => (v && v.length ? v.map((x) => x.toFixed(2)).join(" ") : "-");
  out.push(rows.filter((r) => r.runs).map((r) => `${r.name}: Gbit/s per run x1 [${spread(r.runs?.gbps1)}], x4 [${spread(r.runs?.gbps4)}]`).join("\n") + "\n");
  out.push(rows.map((r) => `${r.name}: ${r.notes}`).join("\n") + "\n");
  return out.join("\n");
}
