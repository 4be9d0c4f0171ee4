// `make bench B=herd`: the thundering herd (issue 17, item 3). 2,000 real devices (each its own
// certificate, its own loopback source address, the devices' real reconnect loop:
// test/helpers/device-swarm.ts, in two processes) connected to the real relay for over 60 s
// (so each counts as stable); then the relay is killed with SIGKILL and started again on the
// same port and state dir. Reported: the time until every device is back, the relay's peak CPU
// (share of one core over 1 s windows, from /proc/PID/stat), and the histogram of arrivals.
//
// Two turns, interleaved A/B against the same relay build: `spread` (the devices follow the
// WELCOME's redial spread: fleet / accept rate, here 2,000 / 250 = 8 s) and `all at once`
// (the devices ignore it, as before issue 17: every stable device redials within 250 ms; the
// relay's accept pacer still holds). Ratios between the two are the figure, absolute numbers
// are this shared machine's.
//
//   HERD_DEVICES=2000 HERD_STABLE_MS=61000 HERD_TURNS=spread,nospread make bench B=herd
import { join } from "node:path";
import { BUN } from "../test/helpers/cli.ts";
import { Fleet } from "../test/helpers/fleet.ts";
import { cpuSeconds } from "../test/helpers/proc.ts";
import { waitFor } from "../test/helpers/wait.ts";
import { formatTable } from "../src/table.ts";

const DEVICES = Number(process.env.HERD_DEVICES ?? 2000);
const STABLE_MS = Number(process.env.HERD_STABLE_MS ?? 61_000);
const TURNS = (process.env.HERD_TURNS ?? "spread,nospread").split(",");
const PROCS = 2;
const BACK_WITHIN_MS = 180_000;
const SWARM = join(import.meta.dir, "..", "test", "helpers", "device-swarm.ts");

interface Turn {
  name: string;
  /** ms from the kill until the restarted relay's control socket answered. */
  restartMs: number;
  back: number[];
  missing: number;
  peakCpu: number;
  meanCpu: number;
}

class Lines {
  latest = "";
  constructor(stream: ReadableStream<Uint8Array>, onLine: (l: string) => void) {
    void (async () => {
      const dec = new TextDecoder();
      let buf = "";
      for await (const c of stream) {
        buf += dec.decode(c, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          onLine(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      }
    })();
  }
}

async function turn(name: string): Promise<Turn> {
  const fleet = await Fleet.create();
  const swarms: { proc: ReturnType<typeof Bun.spawn>; up: boolean; back: (number | null)[] }[] = [];
  try {
    const relay = await fleet.startRelay("relay-herd");
    const port = fleet.relayPort;
    const per = Math.ceil(DEVICES / PROCS);
    for (let k = 0; k < PROCS; k++) {
      const n = Math.min(per, DEVICES - k * per);
      const proc = Bun.spawn([BUN, SWARM, fleet.ca, "127.0.0.1", String(port), String(n), "127.1.", String(1 + k * per), name === "nospread" ? "nospread" : ""], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
      const s = { proc, up: false, back: new Array<number | null>(n).fill(null) };
      new Lines(proc.stdout as ReadableStream<Uint8Array>, (l) => {
        const m = JSON.parse(l) as { up?: number; back?: (number | null)[] };
        if (m.back) s.back = m.back;
        else if (m.up !== undefined) s.up = true;
      });
      swarms.push(s);
    }
    const tell = async (cmd: string) => {
      for (const s of swarms) {
        const w = s.proc.stdin as import("bun").FileSink;
        w.write(cmd + "\n");
        await w.flush();
      }
    };
    await tell("up");
    await waitFor(() => swarms.every((s) => s.up), 600_000, `all ${DEVICES} devices up`, { every: 500 });
    console.log(`[${name}] ${DEVICES} devices up; holding them ${STABLE_MS / 1000} s so each counts as stable`);
    await Bun.sleep(STABLE_MS); // the devices' own "stable after 60 s" rule is what is measured
    relay.proc.kill("SIGKILL");
    await relay.proc.exited;
    const t0 = performance.now();
    await tell("mark");
    const again = await fleet.start("relay", "relay-herd", ["--listen", `127.0.0.1:${port}`], relay.bundle);
    // The killed relay's control socket file is still there: up again is when it says it listens.
    await waitFor(() => again.log().includes(" listening on "), 30_000, "the restarted relay to listen", { every: 20 });
    const restartMs = performance.now() - t0;
    const samples: { t: number; cpu: number }[] = [{ t: performance.now(), cpu: cpuSeconds(again.proc.pid) }];
    const done = () => swarms.every((s) => s.back.every((b) => b !== null));
    await waitFor(
      () => {
        samples.push({ t: performance.now(), cpu: cpuSeconds(again.proc.pid) });
        return done() || performance.now() - t0 > BACK_WITHIN_MS;
      },
      BACK_WITHIN_MS + 10_000,
      "the devices to be back",
      { every: 250 },
    );
    await Bun.sleep(1_500); // one more report from each swarm (they say their figures every second)
    let peak = 0;
    for (let i = 0; i < samples.length; i++) {
      const j = samples.findIndex((s) => s.t >= samples[i]!.t + 1_000);
      if (j < 0) break;
      peak = Math.max(peak, (samples[j]!.cpu - samples[i]!.cpu) / ((samples[j]!.t - samples[i]!.t) / 1000));
    }
    const first = samples[0]!;
    const last = samples.at(-1)!;
    const all = swarms.flatMap((s) => s.back);
    return {
      name,
      restartMs,
      back: all.filter((b): b is number => b !== null).sort((a, b) => a - b),
      missing: all.filter((b) => b === null).length,
      peakCpu: peak,
      meanCpu: (last.cpu - first.cpu) / ((last.t - first.t) / 1000),
    };
  } finally {
    for (const s of swarms) {
      try {
        const w = s.proc.stdin as import("bun").FileSink;
        w.write("exit\n");
        await w.flush();
      } catch {
        /* gone */
      }
    }
    await Promise.race([Promise.all(swarms.map((s) => s.proc.exited)), Bun.sleep(10_000)]);
    for (const s of swarms) if (s.proc.exitCode === null) s.proc.kill("SIGKILL");
    await fleet.close();
  }
}

function histogram(back: number[], bucketMs: number): string[] {
  if (!back.length) return [];
  const n = Math.ceil((back.at(-1)! + 1) / bucketMs);
  const counts = new Array<number>(n).fill(0);
  for (const b of back) counts[Math.floor(b / bucketMs)]!++;
  const max = Math.max(...counts);
  return counts.map((c, i) => `${String((i * bucketMs) / 1000).padStart(5)} s ${String(c).padStart(5)} ${"#".repeat(Math.round((c / max) * 50))}`);
}

const results: Turn[] = [];
for (const name of TURNS) results.push(await turn(name));
const q = (b: number[], f: number) => (b.length ? b[Math.min(b.length - 1, Math.ceil(f * b.length) - 1)]! : NaN);
console.log(`\nherd: ${DEVICES} devices, relay killed with SIGKILL after ${STABLE_MS / 1000} s and restarted on the same port (times from the kill)`);
console.log(
  formatTable(
    ["turn", "relay up again", "all back", "p50", "p95", "missing", "peak relay CPU (1 s)", "mean relay CPU"],
    results.map((r) => [r.name, `${(r.restartMs / 1000).toFixed(1)} s`, r.missing ? `not within ${BACK_WITHIN_MS / 1000} s` : `${(r.back.at(-1)! / 1000).toFixed(1)} s`, `${(q(r.back, 0.5) / 1000).toFixed(1)} s`, `${(q(r.back, 0.95) / 1000).toFixed(1)} s`, String(r.missing), `${(r.peakCpu * 100).toFixed(0)} %`, `${(r.meanCpu * 100).toFixed(0)} %`]),
  ),
);
if (results.length === 2 && results.every((r) => r.back.length)) {
  const [a, b] = results as [Turn, Turn];
  console.log(`ratio ${a.name}/${b.name}: all back ${(a.back.at(-1)! / b.back.at(-1)!).toFixed(2)}, peak relay CPU ${(a.peakCpu / b.peakCpu).toFixed(2)}`);
}
for (const r of results) {
  console.log(`\narrivals, ${r.name} (devices per second after the kill):`);
  for (const l of histogram(r.back, 1_000)) console.log(l);
}
