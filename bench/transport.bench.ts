// Transport benchmark: our relay path next to the peers it must beat, all set up and
// measured in this one run on 127.0.0.1.
//
// Run:   make bench B=transport        (or: node_modules/.bin/bun bench/transport.bench.ts)
// Needs: iperf3 openssh-server stunnel4 socat openssl (scripts/deps.sh); root for sshd
//        (it runs as root with its own config, keys and port in a temp dir).
//
// Paths, each leading to its own iperf3 server and to a shared 64-byte echo server:
//   direct   the client straight to the target: the ceiling.
//   (b)      seed 003's design: onsite `ssh -N -R` into an sshd (the relay) and the
//            master's `ssh -N -L` to it; both legs encrypted (OpenSSH defaults).
//   (c)      client → stunnel ═TLS 1.3═ stunnel → socat → stunnel ═TLS 1.3═ stunnel → target:
//            a relay written in C (the middle two stunnels + socat) with our number of TLS
//            legs; mutual auth, certificates made with openssl, TCP_NODELAY on every socket.
//   splice   the ceiling of the runtime through the same two TLS legs as ours: three Bun
//            processes, each a bare socket.write copy with pause/resume backpressure
//            (bench/transport-splice.ts). Every figure is also given as a ratio to it.
//   ours     `agent pki init/issue`, `agent --role relay|onsite|master` as real processes,
//            `agent connect site-1 --forward 127.0.0.1:LPORT:127.0.0.1:TARGET`.
//            Until the CLI has all of that, this row says "not available: <reason>".
//            BENCH_AGENT_MAIN=/path/to/src/main.ts measures another checkout's agent.
//   base     with BENCH_BASE_MAIN=/path/to/other/src/main.ts: the same path built from another
//            checkout (an earlier commit), measured in turns with ours in the same run: an
//            interleaved A/B. It is added to the paths by itself when the variable is set.
// A path that fails while measured is reported "not available: <step> failed: ..." and left
// out of later runs; the benchmark exits 1 if a peer (not ours) could not be measured.
//
// All paths are set up first, then measured taking turns (A B C D, A B C D, ...), so load
// from other work on the machine falls on every path alike. Figures per path: iperf3
// throughput with 1 and 4 streams (-N: TCP_NODELAY), ping-pong latency (median/p99/max over
// sequential 64-byte round trips on one TCP_NODELAY connection), the
// relay's CPU seconds per GB carried and peak RSS during iperf3 (for (b) the sshd processes,
// for (c) socat + the two middle stunnels, for ours the relay process), and the same for the
// whole path (every process the path started). Then each figure as a ratio to (b) and (c).
//
// Environment:
//   BENCH_SECONDS=5         iperf3 duration per run (max 10)
//   BENCH_ROUNDS=2000       ping-pong round trips per path (split over the repeats)
//   BENCH_REPEAT=2          runs per path; paths take turns, figures are medians
//   BENCH_PATHS=direct,splice,ssh,stunnel,ours   which paths, in this order
//   BENCH_PHASES=iperf,pingpong  what each turn runs, in this order; "pingpong" alone measures
//                           latency through processes that never carried bulk traffic
//   BENCH_SPLICE_BUN_ARGS=  extra bun arguments for the splice hops (--cpu-prof: a profile)
//   BENCH_SOCAT_BUFFER=65536  socat -b (socat's own default is 8192, a weaker peer)
//   BENCH_IDLE=1            also run the idle-capacity measurement (bench/lib/idle.ts)
//   BENCH_IDLE_COUNTS=1000,5000
//   BENCH_IDLE_CONNECTOR=FILE  the connector module (default bench/lib/idle-connector.ts;
//                              with BENCH_AGENT_MAIN, that checkout's)
//
// Goals from issue 3: throughput >= (c) and >= 2x (b); p99 latency <= (c); idle relay
// memory <= 32 KiB per device. Issue 18: throughput >= 0.9x the raw splice (1 and 4 streams),
// >= 1.3x (c), >= 2x (b); relay CPU per GB <= 1.1x the splice's.
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { startIperfServer } from "../test/helpers/iperf.ts";
import { programsPresent } from "../test/helpers/proc.ts";
import { IDLE_CONNECTOR_MODULE, idleReport, measureIdleCapacity } from "./lib/idle.ts";
import { measurePaths, report, type PathFigures, type Phase } from "./lib/measure.ts";
import { agentCli, startFleet, startOursPath } from "./lib/ours.ts";
import type { Path } from "./lib/path.ts";
import { DEFAULT_SOCAT_BUFFER, startSshPath, startStunnelPath } from "./lib/peers.ts";
import { startEchoServer } from "./lib/pingpong.ts";
import { startSplicePath } from "./transport-splice.ts";

const MAX_SECONDS = 10;
/** Bounds the idle load: the fd limit here is 20,000 and the relay holds one fd per device. */
const MAX_IDLE_COUNT = 15_000;
const env = process.env;
const seconds = Math.min(MAX_SECONDS, Math.max(1, Number(env.BENCH_SECONDS ?? 5) || 5));
const rounds = Math.max(100, Number(env.BENCH_ROUNDS ?? 2000) || 2000);
const repeat = Math.min(10, Math.max(1, Number(env.BENCH_REPEAT ?? 2) || 2));
// socat's own default is 8 KiB; with 64 KiB the same chain moved 1.2-1.4x the bytes for
// 0.8x the relay CPU per GB in an interleaved A/B here: the stronger peer is the fair one.
const socatBuffer = Number(env.BENCH_SOCAT_BUFFER ?? DEFAULT_SOCAT_BUFFER) || DEFAULT_SOCAT_BUFFER;
const idleCounts = (env.BENCH_IDLE_COUNTS ?? "1000,5000").split(",").map(Number);
if (idleCounts.some((n) => !Number.isInteger(n) || n < 1 || n > MAX_IDLE_COUNT)) {
  console.error(`BENCH_IDLE_COUNTS: want comma-separated counts from 1 to ${MAX_IDLE_COUNT}, got ${JSON.stringify(env.BENCH_IDLE_COUNTS)}`);
  process.exit(2);
}
// The connector speaks the protocol of the agent under test: take it from the same checkout.
const idleConnector = env.BENCH_IDLE_CONNECTOR || (env.BENCH_AGENT_MAIN ? join(dirname(env.BENCH_AGENT_MAIN), "..", "bench", "lib", "idle-connector.ts") : IDLE_CONNECTOR_MODULE);
const phases = (env.BENCH_PHASES ?? "iperf,pingpong").split(",").map((s) => s.trim());
if (phases.length === 0 || phases.some((p) => p !== "iperf" && p !== "pingpong")) {
  console.error(`BENCH_PHASES: want a comma-separated list of iperf and pingpong, got ${JSON.stringify(env.BENCH_PHASES)}`);
  process.exit(2);
}
const wanted = (env.BENCH_PATHS ?? `direct,splice,ssh,stunnel,ours${env.BENCH_BASE_MAIN ? ",base" : ""}`).split(",").map((s) => s.trim());

if (!programsPresent("transport.bench.ts", ["iperf3", "/usr/sbin/sshd", "ssh", "ssh-keygen", "stunnel", "socat", "openssl"])) process.exit(1);

const starters: Record<string, (targets: number[]) => Promise<Path>> = {
  direct: async (targets) => {
    const stop = async () => {};
    return { name: "direct", entries: targets, relayPids: [], pathPids: [], notes: "client straight to the target", stop, [Symbol.asyncDispose]: stop };
  },
  splice: (t) => startSplicePath(t),
  ssh: (t) => startSshPath(t),
  stunnel: (t) => startStunnelPath(t, { socatBuffer }),
  ours: (t) => startOursPath(t),
  base: (t) => {
    if (!env.BENCH_BASE_MAIN) throw new Error("the base path needs BENCH_BASE_MAIN=/path/to/other/checkout/src/main.ts");
    return startOursPath(t, env.BENCH_BASE_MAIN);
  },
};
const names: Record<string, string> = {
  direct: "direct", splice: "raw Bun splice (3 x socket.write)", ssh: "(b) ssh -R + ssh -L", stunnel: "(c) stunnel+socat+stunnel", ours: "ours (master→relay→onsite)", base: "base (same path, BENCH_BASE_MAIN)",
};
for (const w of wanted) {
  if (!starters[w]) {
    console.error(`BENCH_PATHS: unknown path ${JSON.stringify(w)}; have ${Object.keys(starters).join(", ")}`);
    process.exit(2);
  }
}

const started: Path[] = [];
// Everything started, stopped last-first at the end or on Ctrl-C / SIGTERM (no orphans).
const cleanups: (() => Promise<void>)[] = [];
let cleaning: Promise<void> | undefined;
const cleanup = () =>
  (cleaning ??= (async () => {
    for (const c of cleanups.reverse()) await c().catch((e: Error) => console.error(`cleanup: ${e.message}`));
  })());
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    console.error(`${sig}: stopping everything the benchmark started`);
    void cleanup().then(() => process.exit(130));
  });
}
const echo = startEchoServer();
cleanups.push(() => echo.stop());
const rows: PathFigures[] = [];
let failed = false;
try {
  console.log(`iperf3 ${seconds} s per run, ${repeat} run(s) per path interleaved, ${rounds} ping-pong rounds per path; each turn: ${phases.join(" then ")}; load average ${(await Bun.file("/proc/loadavg").text()).split(" ").slice(0, 3).join(" ")}`);
  // Every path is set up first and stays up (idle) while the others are measured.
  const unavailable = new Map<string, string>();
  for (const w of wanted) {
    try {
      // One iperf3 server per path: iperf3 -s serves one test at a time, and a path that
      // hangs a test must not leave the server busy for the paths measured after it.
      const iperf = await startIperfServer();
      cleanups.push(() => iperf.stop());
      const path = await starters[w]!([iperf.port, echo.port]);
      path.name = names[w]!; // the report finds rows and peers by these names
      started.push(path);
      cleanups.push(() => path.stop());
    } catch (e) {
      const reason = oneLine(e);
      console.log(`${names[w]}: not available: ${reason}`);
      unavailable.set(names[w]!, reason);
      // Only our row may be missing (the CLI is still being built); a peer that fails to
      // start is a broken benchmark.
      if (w !== "ours") {
        failed = true;
        console.error(e instanceof Error ? e.message : e);
      }
    }
  }
  const measured = await measurePaths(started, { seconds, rounds, repeat, phases: phases as Phase[], log: (l) => console.log(l) });
  for (const w of wanted) {
    const name = names[w]!;
    const m = measured.find((f) => f.name === name);
    rows.push(m ?? { name, notes: "not measured", unavailable: unavailable.get(name) ?? "not started" });
    if (w !== "ours" && rows.at(-1)!.unavailable) failed = true;
  }
  // The splice first: it is the ceiling the issue-18 goals are stated against.
  const peers = rows.filter((r) => r.name === names.splice || r.name === names.ssh || r.name === names.stunnel || r.name === names.base);
  console.log("\n" + report(rows, peers));
  // Idle paths would only add noise to what follows.
  for (const p of started) await p.stop();

  if (env.BENCH_IDLE === "1") {
    try {
      if (!existsSync(idleConnector)) {
        throw new Error(`${idleConnector} is missing: it must export \`connector: IdleConnector\` speaking the real protocol (see bench/lib/idle.ts)`);
      }
      const fleet = await startFleet();
      cleanups.push(() => fleet.stop());
      try {
        const res = await measureIdleCapacity({
          relayPid: fleet.relay.pid,
          connectorModule: idleConnector,
          context: { relay: `127.0.0.1:${fleet.relayPort}`, workDir: fleet.dir, pkiDir: `${fleet.dir}/pki` },
          counts: idleCounts,
          log: (l) => console.log(l),
          // The relay's own inventory: the connections really are authenticated devices.
          listed: async () => {
            const list = JSON.parse(await agentCli("devices", ["devices", "--json", "--control", fleet.sockets.relay])) as { online?: boolean }[];
            return list.filter((d) => d.online).length;
          },
        });
        console.log(idleReport(res));
      } finally {
        await fleet.stop();
      }
    } catch (e) {
      console.log(`idle capacity: not available: ${oneLine(e)}`);
    }
  } else {
    console.log("idle capacity: not run (BENCH_IDLE=1 runs it)");
  }
} catch (e) {
  console.error(`transport benchmark failed: ${e instanceof Error ? e.message : e}`);
  failed = true;
} finally {
  await cleanup();
}
process.exit(failed ? 1 : 0);

function oneLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  return msg.split("\n")[0]!.slice(0, 300);
}
