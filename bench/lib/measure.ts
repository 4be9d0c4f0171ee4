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
  /** Every turn's figures, in order, for the report's spread. */
  runs?: { gbps1: number[]; gbps4: number[]; p99Us?: number[] };
  latency?: LatencySummary;
  relay?: ProcessCost;
  wholePath?: ProcessCost;
}

/** What one turn through one path measured (a phase that did not run leaves its fields out). */
export interface TurnFigures {
  gbps1?: number;
  gbps4?: number;
  latency?: LatencySummary;
  relay?: ProcessCost;
  wholePath?: ProcessCost;
}

export type Phase = "iperf" | "pingpong";

export interface MeasureOptions {
  /** iperf3 duration per run, seconds. */
  seconds: number;
  /** Ping-pong round trips per path, in total over the repeats. */
  rounds: number;
  /** Rounds over all paths: each figure is the median of this many runs per path. */
  repeat: number;
  /**
   * What each turn runs, in this order (default iperf3 then ping-pong). ["pingpong"] alone
   * measures latency through processes whose heaps never carried bulk traffic.
   */
  phases?: readonly Phase[];
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

/** The median over turns of one figure; undefined when no turn measured it. Pure. */
function medianOf(turns: readonly TurnFigures[], get: (t: TurnFigures) => number | undefined): number | undefined {
  const v = turns.map(get).filter((x): x is number => x !== undefined && Number.isFinite(x));
  return v.length ? median(v) : undefined;
}

/**
 * Every figure of a path as the median over its turns (issue 18: "same run, medians over
 * turns"): throughput, each latency statistic (a turn's p99 is over that turn's round trips),
 * CPU per GB and peak RSS. Pure.
 */
export function medianFigures(name: string, notes: string, turns: readonly TurnFigures[]): PathFigures {
  const m = (get: (t: TurnFigures) => number | undefined) => medianOf(turns, get);
  const lat = turns.filter((t) => t.latency);
  const cost = (which: "relay" | "wholePath"): ProcessCost | undefined =>
    turns.some((t) => t[which]) ? { cpuSecondsPerGB: m((t) => t[which]?.cpuSecondsPerGB) ?? NaN, peakRssMiB: m((t) => t[which]?.peakRssMiB) ?? NaN } : undefined;
  return {
    name,
    notes,
    gbps1: m((t) => t.gbps1),
    gbps4: m((t) => t.gbps4),
    runs: {
      gbps1: turns.flatMap((t) => (t.gbps1 === undefined ? [] : [t.gbps1])),
      gbps4: turns.flatMap((t) => (t.gbps4 === undefined ? [] : [t.gbps4])),
      p99Us: lat.map((t) => t.latency!.p99Us),
    },
    latency: lat.length
      ? {
          rounds: lat.reduce((a, t) => a + t.latency!.rounds, 0),
          medianUs: m((t) => t.latency?.medianUs)!,
          p99Us: m((t) => t.latency?.p99Us)!,
          maxUs: m((t) => t.latency?.maxUs)!,
          meanUs: m((t) => t.latency?.meanUs)!,
        }
      : undefined,
    relay: cost("relay"),
    wholePath: cost("wholePath"),
  };
}

type Measured = Pick<Path, "name" | "notes" | "entries" | "relayPids" | "pathPids">;

/** One path's turns so far. */
class Tally {
  turns: TurnFigures[] = [];
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

  /** The figures of the turn under way (the last one). */
  turn(rep: number): TurnFigures {
    while (this.turns.length < rep) this.turns.push({});
    return this.turns[rep - 1]!;
  }

  usage(which: "relay" | "path") {
    const pids = which === "relay" ? this.path.relayPids : this.path.pathPids;
    return pids.length ? treeUsage(pids) : undefined;
  }

  /** iperf3 with 1 then 4 streams: this turn's throughput, CPU per GB over both runs, peak RSS. */
  async iperfTurn(t: TurnFigures, port: number, seconds: number): Promise<void> {
    const peak = { relay: 0, path: 0 };
    const sample = () => {
      peak.relay = Math.max(peak.relay, this.usage("relay")?.rssKiB ?? 0);
      peak.path = Math.max(peak.path, this.usage("path")?.rssKiB ?? 0);
    };
    const r0 = this.usage("relay");
    const p0 = this.usage("path");
    let bytes = 0;
    const run = async (parallel: number): Promise<IperfResult> => {
      const timer = setInterval(sample, RSS_SAMPLE_MS);
      let r: IperfResult;
      try {
        r = await runIperf({ host: "127.0.0.1", port, seconds, parallel });
      } finally {
        clearInterval(timer);
      }
      // A fork-per-connection relay (socat) counts a finished worker's CPU once it has reaped it.
      await Bun.sleep(REAP_SETTLE_MS);
      sample();
      // Bytes that went through the path: what the sender wrote (the receiver may miss the tail).
      bytes += r.sentBytes;
      return r;
    };
    t.gbps1 = (await run(1)).receivedBps / 1e9;
    t.gbps4 = (await run(4)).receivedBps / 1e9;
    const r1 = this.usage("relay");
    const p1 = this.usage("path");
    if (r0 && r1) t.relay = { cpuSecondsPerGB: cpuPerGB(r1.cpuSeconds - r0.cpuSeconds, bytes), peakRssMiB: peak.relay / 1024 };
    if (p0 && p1) t.wholePath = { cpuSecondsPerGB: cpuPerGB(p1.cpuSeconds - p0.cpuSeconds, bytes), peakRssMiB: peak.path / 1024 };
  }

  figures(): PathFigures {
    if (this.error) return { name: this.path.name, notes: this.path.notes, unavailable: this.error };
    return medianFigures(this.path.name, this.path.notes, this.turns);
  }
}

/**
 * Measures every path, interleaved: each turn runs iperf3 with 1 then 4 streams through
 * path A, B, C..., then the ping-pong through each; so background load on a shared machine
 * falls on all paths alike instead of on whichever ran during it. Each path's entries are
 * [iperf3, echo]. Every figure is the median over the turns (medianFigures).
 */
export async function measurePaths(paths: readonly Measured[], o: MeasureOptions): Promise<PathFigures[]> {
  for (const p of paths) {
    if (p.entries.length !== 2) throw new Error(`${p.name}: want two entries (iperf3, echo), got ${p.entries.length}`);
  }
  const phases = o.phases ?? ["iperf", "pingpong"];
  const tallies = paths.map((p) => new Tally(p));
  const roundsPerRepeat = Math.max(1, Math.ceil(o.rounds / o.repeat));
  for (let rep = 1; rep <= o.repeat; rep++) {
    for (const phase of phases) {
      for (const t of tallies) {
        const turn = t.turn(rep);
        if (phase === "iperf") {
          await t.step("iperf3", async () => {
            await t.iperfTurn(turn, t.path.entries[0]!, o.seconds);
            o.log?.(`run ${rep}/${o.repeat} ${t.path.name}: ${turn.gbps1!.toFixed(2)} Gbit/s x1, ${turn.gbps4!.toFixed(2)} Gbit/s x4`);
          });
        } else {
          await t.step("ping-pong", async () => {
            turn.latency = summarize(await pingPongSamples("127.0.0.1", t.path.entries[1]!, roundsPerRepeat));
            o.log?.(`run ${rep}/${o.repeat} ${t.path.name}: rtt median ${turn.latency.medianUs.toFixed(0)} us, p99 ${turn.latency.p99Us.toFixed(0)} us`);
          });
        }
        if (t.error) o.log?.(`${t.path.name}: ${t.error}`);
      }
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
  const spread0 = (v: number[] | undefined) => (v && v.length ? v.map((x) => x.toFixed(0)).join(" ") : "-");
  out.push("every figure above is the median over turns; per turn:\n" + rows.filter((r) => r.runs).map((r) => `${r.name}: Gbit/s x1 [${spread(r.runs?.gbps1)}], x4 [${spread(r.runs?.gbps4)}], rtt p99 us [${spread0(r.runs?.p99Us)}]`).join("\n") + "\n");
  out.push(rows.map((r) => `${r.name}: ${r.notes}`).join("\n") + "\n");
  return out.join("\n");
}
