// Where our ping-pong p99 comes from (issue 18): our path's three daemons run with JavaScriptCore's
// GC log on (BUN_JSC_logGC, to their stderr), and the 64-byte ping-pong is measured fresh, then
// after iperf3 has carried bulk traffic through the same processes, in turns. For each
// ping-pong window: the RTT median/p99 and, per daemon, how many collections ran in it and
// their pauses. A p99 that moves with the collections is the GC's; one that does not is not.
//
//   bun bench/rtt-gc.ts [TURNS=3] [ROUNDS=2000] [IPERF_SECONDS=4]
import { runIperf, startIperfServer } from "../test/helpers/iperf.ts";
import { freePort, waitForListen } from "../test/helpers/proc.ts";
import { formatTable } from "../src/table.ts";
import { agentCli, ONSITE_ID, startFleet } from "./lib/ours.ts";
import { pingPongSamples, startEchoServer, summarize } from "./lib/pingpong.ts";

const [turns = 3, rounds = 2000, seconds = 4] = process.argv.slice(2).map(Number);
// Set before the daemons start: they inherit it; this process's own JSC is already up.
process.env.BUN_JSC_logGC = "1";
const echo = startEchoServer();
const iperf = await startIperfServer();
const fleet = await startFleet();
try {
  const [lp, le] = [await freePort(), await freePort()];
  const out = await agentCli("connect", ["connect", ONSITE_ID, "--forward", `127.0.0.1:${lp}:127.0.0.1:${iperf.port}`, "--forward", `127.0.0.1:${le}:127.0.0.1:${echo.port}`, "--control", fleet.sockets.master, "--json"]);
  if (!out.includes("forwards")) throw new Error(`connect printed ${out.slice(0, 200)}`);
  for (const p of [lp, le]) await waitForListen(p, 10_000, fleet.master, { owned: true });
  const daemons = { master: fleet.master, relay: fleet.relay, onsite: fleet.onsite };
  const rows: string[][] = [];
  const window = async (label: string) => {
    const pauses: Record<string, number[]> = { master: [], relay: [], onsite: [] };
    const offs = Object.entries(daemons).map(([name, c]) =>
      c.onOutput((text) => {
        // One line per collection phase: "[GC<0x..>: ... p=0.95ms (max ...)" is its pause.
        for (const m of text.matchAll(/^\[GC<[^>]+>: (?:START )?.*?\bp=([\d.]+)ms/gm)) pauses[name]!.push(Number(m[1]));
      }),
    );
    const s = summarize(await pingPongSamples("127.0.0.1", le, rounds));
    await Bun.sleep(100); // the last log lines
    offs.forEach((off) => off());
    const gc = (n: string) => `${pauses[n]!.length} / ${pauses[n]!.length ? Math.max(...pauses[n]!).toFixed(2) : "-"}`;
    rows.push([label, s.medianUs.toFixed(0), s.p99Us.toFixed(0), s.maxUs.toFixed(0), gc("master"), gc("relay"), gc("onsite")]);
    console.log(rows.at(-1)!.join("  "));
  };
  for (let t = 1; t <= turns; t++) {
    await window(`turn ${t} before iperf3`);
    const r = await runIperf({ host: "127.0.0.1", port: lp, seconds, parallel: 4 });
    console.log(`turn ${t}: iperf3 ${(r.receivedBps / 1e9).toFixed(2)} Gbit/s x4`);
    await window(`turn ${t} after iperf3`);
  }
  console.log(`\nload average ${(await Bun.file("/proc/loadavg").text()).trim()}; GC: collections in the window / longest pause ms`);
  console.log(formatTable(["window", "rtt med us", "rtt p99 us", "rtt max us", "master GC", "relay GC", "onsite GC"], rows));
} finally {
  await fleet.stop();
  await iperf.stop();
  await echo.stop();
}
