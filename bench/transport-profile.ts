// Where the time goes on one path of the transport benchmark, per process: starts the path
// (ours, base or the raw splice), runs iperf3 through it, and reports for every process its CPU
// seconds per GB and syscalls per MB (perf stat, when perf works here); with
// PROFILE_PERF=1 also `perf record` of each process (native symbols: TLS, copies, syscalls).
// For the JavaScript side, run with BUN_OPTIONS="--cpu-prof-md --cpu-prof-dir=DIR".
//
//   bun bench/transport-profile.ts [ours|splice|base] [seconds] [streams]
import { startEchoServer } from "./lib/pingpong.ts";
import { startIperfServer, runIperf } from "../test/helpers/iperf.ts";
import { startOursPath } from "./lib/ours.ts";
import { startSplicePath } from "./transport-splice.ts";
import { cpuSeconds } from "../test/helpers/proc.ts";
import type { Path } from "./lib/path.ts";

const [which = "ours", secs = "5", streams = "1"] = process.argv.slice(2);
const iperf = await startIperfServer();
const echo = startEchoServer();
let path: Path | undefined;
try {
  path =
    which === "splice" ? await startSplicePath([iperf.port, echo.port])
    : which === "base" ? await startOursPath([iperf.port, echo.port], process.env.BENCH_BASE_MAIN)
    : await startOursPath([iperf.port, echo.port]);
  const roles = ["master", "relay", "onsite"];
  const pids = which === "splice" ? path.pathPids : [path.pathPids[0]!, path.pathPids[1]!, path.pathPids[2]!];
  const cpu0 = pids.map((p) => cpuSeconds(p));
  const perf = pids.map((p, i) =>
    Bun.spawn(process.env.PROFILE_PERF === "1"
      ? ["perf", "record", "-g", "-o", `/tmp/perf-${which}-${roles[i]}.data`, "-p", String(p), "--", "sleep", String(Number(secs) + 1)]
      : ["perf", "stat", "-x", ",", "-e", process.env.PROFILE_EVENTS ?? "raw_syscalls:sys_enter,context-switches", "-p", String(p), "--", "sleep", String(Number(secs) + 1)],
      { stdout: "pipe", stderr: "pipe" }));
  const r = await runIperf({ host: "127.0.0.1", port: path.entries[0]!, seconds: Number(secs), parallel: Number(streams) });
  const outs = await Promise.all(perf.map(async (p) => (await p.exited, await new Response(p.stderr).text())));
  const gb = r.sentBytes / 1e9;
  console.log(`${which}: ${(r.receivedBps / 1e9).toFixed(2)} Gbit/s x${streams}, ${gb.toFixed(2)} GB`);
  pids.forEach((p, i) => {
    const cpu = cpuSeconds(p) - cpu0[i]!;
    const stat = Object.fromEntries(outs[i]!.split("\n").filter((l) => /^\d/.test(l)).map((l) => { const f = l.split(","); return [f[2], Number(f[0])]; }));
    const sys = stat["raw_syscalls:sys_enter"];
    if (process.env.PROFILE_EVENTS) console.log(`  ${roles[i]} per MB: ${Object.entries(stat).map(([k, v]) => `${k.replace("syscalls:sys_enter_", "")} ${((v as number) / (gb * 1000)).toFixed(1)}`).join(", ")}`);
    console.log(`  ${roles[i]}: CPU ${(cpu / gb).toFixed(2)} s/GB${sys ? `, syscalls ${(sys / (gb * 1000)).toFixed(1)}/MB, context switches ${((stat["context-switches"] ?? 0) / (gb * 1000)).toFixed(2)}/MB` : ""}`);
  });
} finally {
  await path?.stop();
  await iperf.stop();
  await echo.stop();
}
