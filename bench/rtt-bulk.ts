// Issue 18: what state left by bulk traffic makes our ping-pong p99 slower? Our three daemons
// and the raw Bun splice side by side, the 64-byte ping-pong measured through both in each
// window, interleaved (ours, splice, ours, splice: a load swing falls on both). Windows:
//
//   fresh        twice, before any bulk traffic
//   after bulk   odd turns: iperf3 (4 streams) through ours, then through the splice
//   no bulk      even turns, the control: the same idle time, no iperf3; the same legs and the
//                same (grown) processes. A residue of bulk traffic shows as "after bulk" above
//                "no bulk"; one of the grown processes as "no bulk" above "fresh".
//   new legs     (BENCH_KILL=1) after "after bulk": both relay legs killed with `ss -K` and
//                redialled: fresh kernel sockets (autotuned buffers, cwnd, rtt) and fresh
//                TLS/mux connection state, in the same processes.
//
// Per window: median/p90/p99 of each path and their ratios (medians over turns), and per
// process (master/relay/onsite) the CPU and the run-queue wait per round trip from
// /proc/PID/task/*/schedstat. The splice opens a TLS connection per TCP connection, so its
// ping-pong always runs on fresh legs: it is the same-moment reference the ratios divide by.
//
//   bun bench/rtt-bulk.ts [TURNS=4] [ROUNDS=1000] [IPERF_SECONDS=3]
//   BENCH_SS=1      `ss -tmi` of the relay legs after each bulk/control window
//   BENCH_STRACE=1  syscalls per round trip per process (strace -c), ours then the splice
//   BENCH_PERF=1    perf stat software events per round trip per process (task-clock,
//                   context switches, migrations, page faults), ours then the splice, twice
//   BENCH_OURS_ENV=K=V,K=V  environment for our daemons only (e.g. MIMALLOC_PURGE_DELAY=-1)
import { readdirSync, readFileSync } from "node:fs";
import { runIperf, startIperfServer } from "../test/helpers/iperf.ts";
import { freePort, run, waitForListen } from "../test/helpers/proc.ts";
import { formatTable } from "../src/table.ts";
import { agentCli, ONSITE_ID, startFleet } from "./lib/ours.ts";
import { percentile, pingPongSamples, startEchoServer, summarize, type LatencySummary } from "./lib/pingpong.ts";
import { startSplicePath } from "./transport-splice.ts";

const [turns = 4, rounds = 1000, seconds = 3] = process.argv.slice(2).map(Number);
const REDIAL_MS = 30_000;
const echo = startEchoServer();
const iperfOurs = await startIperfServer();
const iperfSplice = await startIperfServer();
// BENCH_OURS_ENV=K=V,K=V: environment for our daemons only (a hypothesis test, e.g. an
// allocator option); the splice starts with this process's own environment.
const oursEnv = (process.env.BENCH_OURS_ENV ?? "").split(",").filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)] as [string, string]);
const saved = { ...process.env };
for (const [k, v] of oursEnv) process.env[k] = v;
const fleet = await startFleet();
for (const [k] of oursEnv) if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k];
if (oursEnv.length) console.log(`our daemons run with ${oursEnv.map((kv) => kv.join("=")).join(" ")}`);
const splice = await startSplicePath([iperfSplice.port, echo.port]);
const ss = (filter: string[], kill = false) => run(["ss", ...(kill ? ["-K"] : []), "-tmin", "state", "established", ...filter], { timeoutMs: 10_000 });
const legs = () => ["(", "sport", "=", `:${fleet.relayPort}`, "or", "dport", "=", `:${fleet.relayPort}`, ")"];
try {
  const [lp, le] = [await freePort(), await freePort()];
  const out = await agentCli("connect", ["connect", ONSITE_ID, "--forward", `127.0.0.1:${lp}:127.0.0.1:${iperfOurs.port}`, "--forward", `127.0.0.1:${le}:127.0.0.1:${echo.port}`, "--control", fleet.sockets.master, "--json"]);
  if (!out.includes("forwards")) throw new Error(`connect printed ${out.slice(0, 200)}`);
  for (const p of [lp, le]) await waitForListen(p, 10_000, fleet.master, { owned: true });
  const [sIperf, sEcho] = splice.entries as [number, number];
  type Fig = LatencySummary & { p90Us: number };
  const withP90 = (ns: number[]): Fig => ({ ...summarize(ns), p90Us: percentile(ns.map((n) => n / 1000).sort((a, b) => a - b), 90) });
  const figures: Record<string, { ours: Fig[]; splice: Fig[]; cpu: Record<string, number[]>; wait: Record<string, number[]> }> = {};
  const oursPids = [fleet.master.pid, fleet.relay.pid, fleet.onsite.pid];
  const splicePids = [...splice.pathPids];
  // Per process, summed over its threads: [CPU ns, ns runnable but waiting for a CPU] (schedstat).
  const schedstat = (pids: number[]): [number, number][] =>
    pids.map((pid) => {
      let cpu = 0;
      let wait = 0;
      for (const t of readdirSync(`/proc/${pid}/task`)) {
        try {
          const [c, w] = readFileSync(`/proc/${pid}/task/${t}/schedstat`, "utf8").split(" ").map(Number);
          cpu += c!;
          wait += w!;
        } catch {} // a thread that ended between the listing and the read
      }
      return [cpu, wait];
    });
  const addSched = (f: (typeof figures)[string], who: string, before: [number, number][], after: [number, number][], rts: number) => {
    (f.cpu[who] ??= []).push(...after.map((x, i) => (x[0] - before[i]![0]) / rts / 1000));
    (f.wait[who] ??= []).push(...after.map((x, i) => (x[1] - before[i]![1]) / rts / 1000));
  };
  const window = async (label: string) => {
    const f = (figures[label] ??= { ours: [], splice: [], cpu: {}, wait: {} });
    // Halves interleaved: ours, splice, ours, splice, so a load swing falls on both.
    const half = Math.ceil(rounds / 2);
    const o: number[] = [];
    const s: number[] = [];
    for (let i = 0; i < 2; i++) {
      const [a0, b0] = [schedstat(oursPids), schedstat(splicePids)];
      o.push(...(await pingPongSamples("127.0.0.1", le, half)));
      const [a1, b1] = [schedstat(oursPids), schedstat(splicePids)];
      s.push(...(await pingPongSamples("127.0.0.1", sEcho, half)));
      const b2 = schedstat(splicePids);
      // ours' CPU while ours ran, the splice's while the splice ran (each idles otherwise)
      addSched(f, "ours", a0, a1, half + 100);
      addSched(f, "splice", b1, b2, half + 100);
      void b0;
    }
    f.ours.push(withP90(o));
    f.splice.push(withP90(s));
    const a = f.ours.at(-1)!;
    const b = f.splice.at(-1)!;
    console.log(`${label}: ours med ${a.medianUs.toFixed(0)} p99 ${a.p99Us.toFixed(0)} | splice med ${b.medianUs.toFixed(0)} p99 ${b.p99Us.toFixed(0)} | p99 ratio ${(a.p99Us / b.p99Us).toFixed(2)}x`);
  };
  // Control turns carry no bulk: the same windows, the same legs, the same (grown) processes.
  // A residue of bulk traffic shows as "after bulk" above "no bulk"; one of the grown processes
  // as "no bulk" above "fresh".
  await window("fresh");
  await window("fresh");
  for (let t = 1; t <= turns; t++) {
    const bulk = t % 2 === 1;
    if (bulk) {
      const r1 = await runIperf({ host: "127.0.0.1", port: lp, seconds, parallel: 4 });
      const r2 = await runIperf({ host: "127.0.0.1", port: sIperf, seconds, parallel: 4 });
      console.log(`turn ${t}: iperf3 x4 ours ${(r1.receivedBps / 1e9).toFixed(2)}, splice ${(r2.receivedBps / 1e9).toFixed(2)} Gbit/s`);
    } else {
      await Bun.sleep(2 * seconds * 1000);
    }
    await window(bulk ? "after bulk" : "no bulk");
    if (process.env.BENCH_SS === "1") console.log((await ss(legs())).stdout);
    if (!bulk || process.env.BENCH_KILL !== "1") continue;
    const killed = await ss(legs(), true);
    if (killed.code !== 0) throw new Error(`ss -K failed (exit ${killed.code}): ${killed.stderr}`);
    // Redialled: a short ping-pong gets through again (bounded).
    const until = Date.now() + REDIAL_MS;
    for (;;) {
      try {
        await pingPongSamples("127.0.0.1", le, 10);
        break;
      } catch (e) {
        if (Date.now() > until) throw new Error(`no ping-pong through the redialled legs within ${REDIAL_MS} ms`, { cause: e });
        await Bun.sleep(200);
      }
    }
    await window("new legs");
  }
  if (process.env.BENCH_STRACE === "1") {
    // Syscalls per round trip in each process, ours against the splice (strace slows both:
    // compare the counts, not the times). After the turns: ours has carried bulk traffic.
    const count = async (label: string, pids: Record<string, number>, port: number) => {
      const tracers = Object.entries(pids).map(([name, pid]) => ({ name, p: Bun.spawn(["strace", "-f", "-c", "-p", String(pid)], { stdout: "ignore", stderr: "pipe" }) }));
      await Bun.sleep(500); // attached
      const n = 1000;
      await pingPongSamples("127.0.0.1", port, n);
      for (const t of tracers) t.p.kill("SIGINT");
      for (const t of tracers) {
        const text = await new Response(t.p.stderr).text();
        await t.p.exited;
        const calls = [...text.matchAll(/^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$/gm)].map((m) => [m[2]!, Number(m[1])] as const).filter(([, c]) => c >= n / 2);
        console.log(`strace ${label} ${t.name}: per round trip ${calls.map(([k, c]) => `${k} ${(c / (n + 100)).toFixed(2)}`).join(", ")}`);
      }
    };
    await count("ours", { master: fleet.master.pid, relay: fleet.relay.pid, onsite: fleet.onsite.pid }, le);
    const [sm, sr, so] = splice.pathPids as [number, number, number];
    await count("splice", { master: sm, relay: sr, onsite: so }, sEcho);
  }
  if (process.env.BENCH_PERF === "1") {
    // Context switches, migrations and page faults per round trip per process (perf stat,
    // software events: this machine has no hardware counters), ours against the splice.
    const count = async (label: string, pids: Record<string, number>, port: number) => {
      const n = 2000;
      const stats = Object.entries(pids).map(([name, pid]) => ({ name, p: Bun.spawn(["perf", "stat", "-x", ",", "-e", "task-clock,context-switches,cpu-migrations,page-faults", "-p", String(pid)], { stdout: "ignore", stderr: "pipe" }) }));
      await Bun.sleep(300);
      await pingPongSamples("127.0.0.1", port, n);
      for (const t of stats) t.p.kill("SIGINT");
      for (const t of stats) {
        const text = await new Response(t.p.stderr).text();
        await t.p.exited;
        const ev = text.split("\n").filter((l) => /^[\d.]+,/.test(l)).map((l) => l.split(",")).map((f) => `${f[2]} ${(Number(f[0]) / (n + 100)).toFixed(3)}`);
        console.log(`perf ${label} ${t.name}: per round trip ${ev.join(", ")}`);
      }
    };
    for (let i = 0; i < 2; i++) {
      await count("ours", { master: fleet.master.pid, relay: fleet.relay.pid, onsite: fleet.onsite.pid }, le);
      const [sm, sr, so] = splice.pathPids as [number, number, number];
      await count("splice", { master: sm, relay: sr, onsite: so }, sEcho);
    }
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
  const rows = Object.entries(figures).map(([label, f]) => {
    const ratios = f.ours.map((o, i) => o.p99Us / f.splice[i]!.p99Us);
    const mratios = f.ours.map((o, i) => o.medianUs / f.splice[i]!.medianUs);
    const p90 = f.ours.map((o, i) => o.p90Us / f.splice[i]!.p90Us);
    return [label, String(f.ours.length), med(f.ours.map((x) => x.medianUs)).toFixed(0), med(f.ours.map((x) => x.p99Us)).toFixed(0), med(f.splice.map((x) => x.medianUs)).toFixed(0), med(f.splice.map((x) => x.p99Us)).toFixed(0), med(mratios).toFixed(2) + "x", med(p90).toFixed(2) + "x", med(ratios).toFixed(2) + "x", ratios.map((r) => r.toFixed(2)).join(" ")];
  });
  // CPU and run-queue wait per round trip, per process (master, relay, onsite), summed over the window's halves.
  const per = (xs: number[]) => [0, 1, 2].map((k) => xs.filter((_, i) => i % 3 === k).reduce((a, b) => a + b, 0) / (xs.length / 3)).map((v) => v.toFixed(1)).join("/");
  const schedRows = Object.entries(figures).map(([label, f]) => [label, per(f.cpu.ours!), per(f.cpu.splice!), per(f.wait.ours!), per(f.wait.splice!)]);
  console.log("\nper round trip, us, master/relay/onsite (mean over the window's halves):");
  console.log(formatTable(["window", "ours CPU", "splice CPU", "ours run-queue wait", "splice run-queue wait"], schedRows));
  console.log(`\nload average ${(await Bun.file("/proc/loadavg").text()).trim()}; medians over turns, us`);
  console.log(formatTable(["window", "n", "ours med", "ours p99", "splice med", "splice p99", "med ratio", "p90 ratio", "p99 ratio", "p99 ratio per turn"], rows));
} finally {
  await splice.stop();
  await fleet.stop();
  await iperfSplice.stop();
  await iperfOurs.stop();
  await echo.stop();
}
