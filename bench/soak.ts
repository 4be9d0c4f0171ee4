// `make soak` (issue 17 §9; not in CI): the real relay process under a long mixed load, then
// whether anything leaked.
//
// Load (bench/lib/soak-load.ts, a process of its own): SOAK_DEVICES idle onsite devices (1,000)
// of which SOAK_CHURN (20) leave every SOAK_CHURN_EVERY (3 s) and come back 1-4 s later;
// SOAK_PAIRS (20) master/onsite pairs moving data through the relay (a stream of 1 MiB out and
// its echo back, compared by SHA-256, then a pause), each session ended after 5 rounds and a
// new one opened. Beside it, this driver revokes a freshly issued device every minute (it must
// be closed with GOAWAY REVOKED and refused on redial).
//
// Report: the relay's RSS slope over the run (least squares, after the ramp-up), its descriptors
// against the baseline before the load and after it stopped, unhandled rejections (the load's
// counter; the relay must still run and its log must carry none), sessions lost, bytes
// compared, revocations enforced.
//
//   SOAK=30m (default; any duration agent understands: 10m, 1h)   make soak SOAK=10m
import { join } from "node:path";
import { readdirSync } from "node:fs";
import { parseDuration, formatDuration } from "../src/duration.ts";
import { parseBundle } from "../src/pki.ts";
import { GoAwayCode } from "../src/transport/frame.ts";
import { Msg, PROTOCOL_VERSIONS } from "../src/transport/messages.ts";
import { Connection } from "../src/transport/mux.ts";
import { dialTls } from "../src/transport/tls.ts";
import { agent, BUN } from "../test/helpers/cli.ts";
import { Fleet } from "../test/helpers/fleet.ts";
import { cpuSeconds, rssKiB } from "../test/helpers/proc.ts";
import { waitFor } from "../test/helpers/wait.ts";

const env = process.env;
const durationMs = parseDuration(env.SOAK ?? "30m");
const devices = Number(env.SOAK_DEVICES ?? 1000);
const pairs = Number(env.SOAK_PAIRS ?? 20);
const churnCount = Number(env.SOAK_CHURN ?? 20);
const churnEveryMs = parseDuration(env.SOAK_CHURN_EVERY ?? "3s");
const SAMPLE_MS = 10_000;
const REVOKE_EVERY_MS = parseDuration(env.SOAK_REVOKE_EVERY ?? "1m");

const fdsOf = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

/** Least-squares slope of y over x. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return 0;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

const fleet = await Fleet.create();
const revoked = join(fleet.ca, "revoked");
let load: ReturnType<typeof Bun.spawn> | null = null;
const stopAll = async () => {
  try {
    load?.kill("SIGKILL");
  } catch {}
  await fleet.close();
};
process.on("SIGINT", () => void stopAll().then(() => process.exit(130)));

try {
  const relay = await fleet.startRelay("relay-soak", ["--revocations", revoked]);
  const pid = relay.proc.pid;
  await Bun.sleep(2000);
  const baseline = { fds: fdsOf(pid), rssKiB: rssKiB(pid) };
  console.log(`soak: ${formatDuration(durationMs)}, ${devices} idle devices (churn ${churnCount} every ${formatDuration(churnEveryMs)}), ${pairs} pairs moving data, a revocation a minute`);
  console.log(`relay pid ${pid}: baseline ${baseline.fds} descriptors, RSS ${(baseline.rssKiB / 1024).toFixed(1)} MiB`);

  const opts = { relay: `127.0.0.1:${fleet.relayPort}`, pki: fleet.ca, devices, pairs, churnEveryMs, churnCount, pairBytes: 1 << 20, pairPauseMs: 1000, roundsPerSession: 5 };
  const child = (load = Bun.spawn([BUN, join(import.meta.dir, "lib", "soak-load.ts"), JSON.stringify(opts)], { stdin: "pipe", stdout: "pipe", stderr: "inherit" }));
  const reader = child.stdout.getReader();
  const dec = new TextDecoder();
  let pending = "";
  let last: Record<string, number | string> = {};
  const lines = (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      pending += dec.decode(value);
      while (pending.includes("\n")) {
        last = JSON.parse(pending.slice(0, pending.indexOf("\n")));
        pending = pending.slice(pending.indexOf("\n") + 1);
      }
    }
  })();
  const ask = async (what: string) => {
    child.stdin.write(`${what}\n`);
    await child.stdin.flush();
  };
  await waitFor(() => last.kind === "ramped", 300_000, "the idle devices to connect", { every: 500, abort: () => (child.exitCode !== null ? new Error(`the load exited with ${child.exitCode}`) : undefined) });
  console.log(`ramped up: ${last.devicesUp} devices up (${last.connectFailures} connect failures)`);

  // Revocations, beside the load: a fresh device, connected, then revoked.
  const rev = { issued: 0, enforced: 0, refusedAfter: 0, failures: [] as string[] };
  const revokeOne = async (n: number) => {
    const id = `soak-rev-${n}`;
    rev.issued++;
    const b = parseBundle(await Bun.file(await fleet.issue("onsite", id)).text(), `${id}.bundle`);
    const conn = new Connection(await dialTls({ host: "127.0.0.1", port: fleet.relayPort, tls: b, timeout: 15_000 }), { side: "dialer" });
    const welcomed = new Promise((r) => conn.on(Msg.WELCOME, r));
    conn.send(Msg.HELLO, { versions: [...PROTOCOL_VERSIONS], role: "onsite", id, agent: "soak" });
    await Promise.race([welcomed, Bun.sleep(15_000).then(() => Promise.reject(new Error(`${id}: no WELCOME`)))]);
    const r = await agent(["pki", "revoke", "--dir", fleet.ca, "--id", id]);
    if (r.code !== 0) throw new Error(`pki revoke ${id}: ${r.stderr}`);
    const why = await Promise.race([conn.wait(), Bun.sleep(15_000).then(() => null)]);
    if (why?.code === GoAwayCode.REVOKED && why.remote) rev.enforced++;
    else rev.failures.push(`${id}: ${why ? `closed with ${why.code} ${why.message}` : "still connected 15 s after the revocation"}`);
    conn.close();
    try {
      const again = new Connection(await dialTls({ host: "127.0.0.1", port: fleet.relayPort, tls: b, timeout: 15_000 }), { side: "dialer" });
      const w2 = await Promise.race([again.wait(), Bun.sleep(10_000).then(() => null)]);
      if (w2?.code === GoAwayCode.REVOKED) rev.refusedAfter++;
      else rev.failures.push(`${id}: redial not refused (${w2 ? w2.message : "still open"})`);
      again.close();
    } catch {
      rev.refusedAfter++; // refused at the handshake
    }
  };

  const start = performance.now();
  const samples: { t: number; rss: number; fds: number; cpu: number }[] = [];
  let nextRevoke = start + REVOKE_EVERY_MS;
  let revN = 0;
  while (performance.now() - start < durationMs) {
    await Bun.sleep(Math.min(SAMPLE_MS, Math.max(0, durationMs - (performance.now() - start))));
    if (relay.proc.exitCode !== null) throw new Error(`the relay exited (${relay.proc.exitCode}): ${relay.log().slice(-2000)}`);
    if (child.exitCode !== null) throw new Error(`the load exited (${child.exitCode})`);
    const t = (performance.now() - start) / 1000;
    samples.push({ t, rss: rssKiB(pid), fds: fdsOf(pid), cpu: cpuSeconds(pid) });
    await ask("report");
    if (performance.now() >= nextRevoke) {
      nextRevoke += REVOKE_EVERY_MS;
      await revokeOne(revN++).catch((e) => rev.failures.push((e as Error).message));
    }
    const s = samples.at(-1)!;
    const cpuPct = samples.length > 1 ? (100 * (s.cpu - samples.at(-2)!.cpu)) / (s.t - samples.at(-2)!.t) : 0;
    console.log(
      `${formatDuration(Math.round(t) * 1000).padStart(7)}: relay RSS ${(s.rss / 1024).toFixed(1)} MiB, ${s.fds} fds, CPU ${cpuPct.toFixed(0)} %; devices up ${last.devicesUp}, churned ${last.churned}, compared ${((last.bytesCompared as number) / 2 ** 20).toFixed(0)} MiB, mismatches ${last.mismatches}, sessions ${last.sessionsOpened}/${last.sessionsEnded} lost ${last.sessionsLost}, streams failed ${last.streamsFailed}, revoked ${rev.enforced}/${rev.issued}`,
    );
  }

  await ask("stop");
  await waitFor(() => last.kind === "final", 90_000, "the load to stop", { every: 200 });
  await child.exited;
  await lines;
  // Back to the baseline: every connection of the load is gone.
  let endFds = fdsOf(pid);
  try {
    await waitFor(() => (endFds = fdsOf(pid)) <= baseline.fds, 30_000, "the relay's descriptors back to the baseline", { every: 250 });
  } catch {}
  const endRss = rssKiB(pid);
  const log = relay.log();
  const relayUnhandled = log.split("\n").filter((l) => /unhandled|uncaught|TypeError|RangeError/i.test(l));
  // The slope after the ramp-up's first tenth (allocator warm-up), in KiB per minute.
  const steady = samples.filter((s) => s.t >= samples.at(-1)!.t / 10);
  const perMin = slope(steady.map((s) => s.t / 60), steady.map((s) => s.rss));
  const peakFds = Math.max(...samples.map((s) => s.fds));
  const cpuAvg = samples.length > 1 ? (100 * (samples.at(-1)!.cpu - samples[0]!.cpu)) / (samples.at(-1)!.t - samples[0]!.t) : 0;

  console.log("\n=== soak report ===");
  console.log(`duration                 ${formatDuration(durationMs)} (${samples.length} samples every ${SAMPLE_MS / 1000} s)`);
  console.log(`relay RSS                baseline ${(baseline.rssKiB / 1024).toFixed(1)} MiB, first sample ${(samples[0]!.rss / 1024).toFixed(1)} MiB, last ${(samples.at(-1)!.rss / 1024).toFixed(1)} MiB, after the load ${(endRss / 1024).toFixed(1)} MiB`);
  console.log(`RSS slope (steady)       ${perMin >= 0 ? "+" : ""}${perMin.toFixed(1)} KiB/min over ${steady.length} samples (${((perMin * 60) / 1024).toFixed(2)} MiB/h)`);
  console.log(`relay descriptors        baseline ${baseline.fds}, peak ${peakFds}, after the load ${endFds} (${endFds - baseline.fds >= 0 ? "+" : ""}${endFds - baseline.fds})`);
  console.log(`relay CPU                ${cpuAvg.toFixed(1)} % of one core on average`);
  console.log(`unhandled rejections     load ${last.unhandled}${last.lastUnhandled ? ` (${last.lastUnhandled})` : ""}; relay ${relay.proc.exitCode === null ? "still running" : `EXITED ${relay.proc.exitCode}`}, ${relayUnhandled.length} suspicious log lines${relayUnhandled.length ? `: ${relayUnhandled.slice(0, 3).join(" | ")}` : ""}`);
  console.log(`idle devices             ${last.connects} connects, ${last.churned} churn departures, ${last.connectFailures} connect failures${last.lastConnectError ? ` (last: ${last.lastConnectError})` : ""}, ${last.unexpectedCloses} unexpected closes`);
  console.log(`data                     ${((last.bytesCompared as number) / 2 ** 20).toFixed(0)} MiB compared in ${last.rounds} rounds, ${last.mismatches} mismatches, ${last.streamsFailed} streams failed${last.lastStreamError ? ` (last: ${last.lastStreamError})` : ""}`);
  console.log(`sessions                 ${last.sessionsOpened} opened, ${last.sessionsEnded} ended, ${last.sessionsLost} lost, ${last.sessionOpenFailures} open failures${last.lastSessionError ? ` (last: ${last.lastSessionError})` : ""}`);
  console.log(`revocations              ${rev.enforced}/${rev.issued} closed with GOAWAY REVOKED, ${rev.refusedAfter} refused on redial${rev.failures.length ? `; failures: ${rev.failures.join("; ")}` : ""}`);
  const ok = relay.proc.exitCode === null && last.unhandled === 0 && relayUnhandled.length === 0 && last.mismatches === 0 && last.sessionsLost === 0 && endFds <= baseline.fds && rev.failures.length === 0;
  console.log(ok ? "soak: OK" : "soak: PROBLEMS (see above)");
  await stopAll();
  process.exit(ok ? 0 : 1);
} catch (e) {
  console.error(`soak failed: ${(e as Error).message}`);
  await stopAll();
  process.exit(1);
}
