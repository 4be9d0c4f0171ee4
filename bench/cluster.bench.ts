// `make bench B=cluster`: what relay scale-out (issue 16) costs and how fast it recovers.
//  1. Cross-relay against same-relay sessions in the same run, interleaved turns: iperf3
//     throughput through a master's forward (master on relay A; device on A, or on B over the
//     mesh), and the RTT of 64-byte ping-pongs. Goal: cross ≥ 0.8× same.
//  2. kill -9 of the relay holding a device (its list: the two other relays) → the master's
//     untouched forward answering again, median and p95 over CLUSTER_KILLS (default 10).
//     Goal: ≤ 10 s median. CLUSTER_KILL_SETTLE says what comes before each kill:
//     - "stable" (the default): the device's connection has lived past Timing.stableAfter
//       (60 s, read from its `agent status`), so each kill is an independent relay failure
//       that finds the device's redial backoff reset: what one relay dying costs. ~70 s a kill.
//     - "none": the next kill as soon as the forward answers and all three relays are back
//       (every 10-30 s). No connection lives 60 s, so the device's attempt counter climbs
//       kill after kill and its backoff ceiling reaches the 30 s cap: this measures a relay
//       that FLAPS (the backoff doing its job), not ten independent failures.
//     Each kill prints the device's attempt counter and connection age going in, and the
//     dials it made coming out (from its debug log: the wait it chose before each).
//  3. Presence load: 10,000 devices over 3 relays' directories (RedisDirectory, in this
//     process, against a real redis-server): Redis commands per second in steady state, and the
//     CPU the directories take per relay. The devices are presence entries and inventory rows,
//     not TLS connections: what is measured is what cluster mode ADDS.
//  4. Idle memory per device: a relay in cluster mode against a single relay, with
//     CLUSTER_IDLE (default 2,000) idle authenticated TLS devices each. Goal: ≤ 1.2×.
// Ratios against peers measured in the same run; no figure is checked by a test.
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Fleet, type Daemon } from "../test/helpers/fleet.ts";
import { TestRedis } from "../test/helpers/redis.ts";
import { cpuSeconds, freePort } from "../test/helpers/proc.ts";
import { waitFor } from "../test/helpers/wait.ts";
import { runIperf, startIperfServer } from "../test/helpers/iperf.ts";
import { percentile, pingPongSamples, startEchoServer } from "./lib/pingpong.ts";
import { IDLE_CONNECTOR_MODULE, measureIdleCapacity } from "./lib/idle.ts";
import { RedisDirectory, type SharedRow } from "../src/cluster/redis-directory.ts";
import { BunRedis } from "../src/cluster/redis-client.ts";
import { formatTable } from "../src/table.ts";
import { Timing } from "../src/transport/policy.ts";

const env = process.env;
const TURNS = Number(env.CLUSTER_TURNS ?? 3);
const KILLS = Number(env.CLUSTER_KILLS ?? 10);
const PRESENCE = Number(env.CLUSTER_DEVICES ?? 10_000);
const IDLE = Number(env.CLUSTER_IDLE ?? 2_000);
const only = (env.CLUSTER_PARTS ?? "1,2,3,4").split(",");
const SETTLE = env.CLUSTER_KILL_SETTLE ?? "stable";
if (SETTLE !== "stable" && SETTLE !== "none") throw new Error(`CLUSTER_KILL_SETTLE must be "stable" or "none", got ${JSON.stringify(SETTLE)}`);

const median = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 50);
const p95 = (xs: number[]) => percentile([...xs].sort((a, b) => a - b), 95);

interface Cluster {
  fleet: Fleet;
  redis: TestRedis;
  relays: Map<string, Daemon>;
  ports: Map<string, number>;
  startRelay(id: string, port?: number, cluster?: boolean): Promise<Daemon>;
  startDevice(role: "onsite" | "master", id: string, on: string[], level?: string): Promise<Daemon>;
  close(): Promise<void>;
}

async function cluster(): Promise<Cluster> {
  const redis = await TestRedis.create();
  const fleet = await Fleet.create();
  const relays = new Map<string, Daemon>();
  const ports = new Map<string, number>();
  const c: Cluster = {
    fleet,
    redis,
    relays,
    ports,
    async startRelay(id, port = 0, on = true) {
      const conf = join(fleet.dir, `${id}.toml`);
      writeFileSync(conf, on ? `[cluster]\nredis = "${redis.url}"\nmesh = "127.0.0.1:${await freePort()}"\n` : "");
      rmSync(join(fleet.dir, `${id}.sock`), { force: true });
      const d = await fleet.startRelay(id, ["--config", conf, "--log-level", "warn"], port);
      relays.set(id, d);
      ports.set(id, fleet.relayPort);
      return d;
    },
    async startDevice(role, id, on, level = "warn") {
      const conf = join(fleet.dir, `${id}.toml`);
      writeFileSync(conf, `relay = [${on.map((r) => `"127.0.0.1:${ports.get(r)}"`).join(", ")}]\n${role === "onsite" ? 'allow = ["127.0.0.1/32"]\n' : ""}`);
      await fleet.issue(role, id);
      const d = await fleet.start(role, id, ["--config", conf, "--log-level", level]);
      await fleet.waitConnected(d);
      return d;
    },
    async close() {
      await fleet.close();
      await redis.close();
    },
  };
  return c;
}

async function onlineOn(c: Cluster, asked: Daemon, id: string): Promise<string | null> {
  const rows = await c.fleet.json<{ id: string; online: boolean; relay?: string }[]>(asked, ["devices", "--all"]);
  const r = rows.find((x) => x.id === id);
  return r?.online ? (r.relay ?? null) : null;
}

// ---- 1. cross-relay against same-relay --------------------------------------------------

async function throughputAndRtt(): Promise<void> {
  const c = await cluster();
  const iperf = await startIperfServer();
  const echo = startEchoServer();
  try {
    await c.startRelay("relay-a");
    await c.startRelay("relay-b");
    const siteA = await c.startDevice("onsite", "site-a", ["relay-a"]);
    const siteB = await c.startDevice("onsite", "site-b", ["relay-b"]);
    const master = await c.startDevice("master", "tech-1", ["relay-a"]);
    await waitFor(async () => (await onlineOn(c, c.relays.get("relay-a")!, "site-b")) === "relay-b", 15_000, "site-b listed on relay-b");
    const fwd = async (dev: string) => (await c.fleet.connect(master, dev, [`127.0.0.1:${iperf.port}`, `127.0.0.1:${echo.port}`])).ports;
    const same = await fwd("site-a");
    const cross = await fwd("site-b");
    const bps: Record<string, number[]> = { same: [], cross: [] };
    const rtt: Record<string, number[]> = { same: [], cross: [] };
    // CPU seconds per GB of each process on the path, per turn (the master's and relay A's
    // are on both paths; relay B and site-b only on the cross path, site-a only on the same).
    const procs: [string, number][] = [["master", master.proc.pid], ["relay A", c.relays.get("relay-a")!.proc.pid], ["relay B", c.relays.get("relay-b")!.proc.pid], ["site-a", siteA.proc.pid], ["site-b", siteB.proc.pid]];
    const cpuPerGB: Record<string, number[][]> = { same: [], cross: [] };
    for (let t = 0; t < TURNS; t++) {
      for (const kind of t % 2 === 0 ? ["same", "cross"] : ["cross", "same"]) {
        const [ip, ep] = kind === "same" ? same : cross;
        const cpu0 = procs.map(([, pid]) => cpuSeconds(pid));
        const r = await runIperf({ host: "127.0.0.1", port: ip!, seconds: Number(env.CLUSTER_IPERF_SECONDS ?? 3) });
        cpuPerGB[kind]!.push(procs.map(([, pid], i) => (cpuSeconds(pid) - cpu0[i]!) / (r.receivedBytes / 1e9)));
        bps[kind]!.push(r.receivedBps);
        const samples = await pingPongSamples("127.0.0.1", ep!, 500);
        rtt[kind]!.push(...samples.map((ns) => ns / 1e3));
      }
    }
    const mb = (xs: number[]) => (median(xs) / 1e6).toFixed(0);
    console.log(
      formatTable(
        ["session", "iperf3 Mbit/s (median of turns)", "RTT µs median", "RTT µs p95"],
        [
          ["same relay (A)", mb(bps.same!), median(rtt.same!).toFixed(0), p95(rtt.same!).toFixed(0)],
          ["cross relay (A → B, mesh)", mb(bps.cross!), median(rtt.cross!).toFixed(0), p95(rtt.cross!).toFixed(0)],
        ],
      ),
    );
    console.log(`cross / same throughput: ${(median(bps.cross!) / median(bps.same!)).toFixed(2)}× (goal ≥ 0.8×); RTT cross / same: ${(median(rtt.cross!) / median(rtt.same!)).toFixed(2)}×; ${TURNS} interleaved turns`);
    console.log(`per-turn Mbit/s: same ${bps.same!.map((x) => (x / 1e6).toFixed(0)).join(", ")}; cross ${bps.cross!.map((x) => (x / 1e6).toFixed(0)).join(", ")}`);
    const cpuRow = (kind: string) => procs.map((_, i) => median(cpuPerGB[kind]!.map((t) => t[i]!)));
    console.log(formatTable(["CPU s/GB (median of turns)", ...procs.map(([n]) => n), "path"], ["same", "cross"].map((k) => {
      const row = cpuRow(k);
      return [k, ...row.map((x) => x.toFixed(2)), row.reduce((a, b) => a + b, 0).toFixed(2)];
    })));
  } finally {
    await iperf.stop();
    await echo.stop();
    await c.close();
  }
}

// ---- 2. kill -9 → answering again -------------------------------------------------------

/** What `agent status` says of a device's relay connection (RelayClient.status()). */
interface LinkStatus {
  state: string;
  since: string;
  attempt: number;
  connects: number;
}

/**
 * The device's redials in its log (debug level) since a kill: each dial with the wait before it
 * (from the line that ended the previous connection or dial) and where it went, then how it
 * ended: "lost 0.21 s→relay-c refused 0.40 s→relay-b up".
 */
function redials(log: string, names: ReadonlyMap<number, string>): string {
  const out: string[] = [];
  let ended: number | null = null;
  for (const line of log.split("\n")) {
    const m = /^(\d{4}-\d\d-\d\dT\S+Z) \w+(?: \[[^\]]*\])? (.*)$/.exec(line);
    if (!m) continue;
    const t = Date.parse(m[1]!);
    const msg = m[2]!;
    if (msg.startsWith("relay connection lost")) {
      out.push("lost");
      ended = t;
    } else if (/^(still )?cannot reach the relay/.test(msg)) {
      out.push("refused");
      ended = t;
    } else if (msg.startsWith("dialing relay ")) {
      const port = Number(/:(\d+)/.exec(msg)?.[1]);
      out.push(`${ended === null ? "?" : ((t - ended) / 1000).toFixed(2)} s→${names.get(port) ?? msg.slice(14)}`);
    } else if (msg.startsWith("connected to relay")) out.push("up");
  }
  return out.join(" ");
}

async function killRecovery(): Promise<void> {
  const c = await cluster();
  const web = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("ok") });
  const get = (p: number) => fetch(`http://127.0.0.1:${p}/`, { signal: AbortSignal.timeout(2_000) }).then((r) => r.text(), () => "");
  try {
    for (const id of ["relay-a", "relay-b", "relay-c"]) await c.startRelay(id);
    // Debug level: its log names each relay it dials (src/roles/device.ts), so the waits it
    // chose between dials can be read back.
    const dev = await c.startDevice("onsite", "site-k", ["relay-b", "relay-c"], "debug");
    const master = await c.startDevice("master", "tech-1", ["relay-a"]);
    const a = c.relays.get("relay-a")!;
    const names = new Map([...c.ports].map(([id, port]) => [port, id]));
    const link = async () => (await c.fleet.status(dev)).onsite as LinkStatus;
    const age = (l: LinkStatus) => (l.state === "up" ? Date.now() - Date.parse(l.since) : 0);
    await waitFor(() => onlineOn(c, a, "site-k"), 15_000, "site-k online");
    const { ports: [p] } = await c.fleet.connect(master, "site-k", [`127.0.0.1:${web.port}`]);
    await waitFor(async () => (await get(p!)) === "ok", 10_000, "the forward answering");
    console.log(`settle before each kill: ${SETTLE === "stable" ? `the device's connection older than stableAfter (${Timing.stableAfter / 1000} s): independent failures` : "none, back to back: a flapping relay"}`);
    const times: number[] = [];
    const attempts: number[] = [];
    for (let k = 0; k < KILLS; k++) {
      const holder = (await waitFor(() => onlineOn(c, a, "site-k"), 20_000, "site-k online"))!;
      await waitFor(async () => (await get(p!)) === "ok", 30_000, "the forward answering before the kill");
      if (SETTLE === "stable") {
        const need = Timing.stableAfter + 1_000;
        await waitFor(async () => age(await link()) >= need, need + 60_000, `site-k's relay connection older than ${need / 1000} s`, { every: 2_000 });
      }
      const before = await link();
      const mark = dev.log().length;
      const t0 = performance.now();
      await c.fleet.stop(c.relays.get(holder)!, "SIGKILL");
      await waitFor(async () => (await get(p!)) === "ok", 90_000, "the forward answering again", { every: 50 });
      times.push(performance.now() - t0);
      const after = await link();
      attempts.push(before.attempt);
      console.log(
        `kill ${k + 1}/${KILLS}: ${holder} killed, answering again after ${(times.at(-1)! / 1000).toFixed(2)} s; ` +
          `device's connection ${(age(before) / 1000).toFixed(0)} s old, attempt counter ${before.attempt} → ${after.attempt}; redials: ${redials(dev.log().slice(mark), names)}`,
      );
      await c.startRelay(holder, c.ports.get(holder));
      await waitFor(async () => ((await c.fleet.status(a)).relay as { cluster: { relays: string[] } }).cluster.relays.length === 3, 20_000, "three relays again");
    }
    console.log(`attempt counter going into each kill: ${attempts.join(", ")}`);
    console.log(`per kill, s: ${times.map((t) => (t / 1000).toFixed(2)).join(", ")}`);
    console.log(`kill -9 → answering again over ${KILLS} kills (settle: ${SETTLE}): median ${(median(times) / 1000).toFixed(2)} s, p95 ${(p95(times) / 1000).toFixed(2)} s (goal ≤ 10 s median)`);
  } finally {
    web.stop(true);
    await c.close();
  }
}

// ---- 3. presence load --------------------------------------------------------------------

async function presenceLoad(): Promise<void> {
  const redis = await TestRedis.create();
  const dirs: RedisDirectory[] = [];
  try {
    const per = Math.ceil(PRESENCE / 3);
    const wall = Date.now();
    for (let r = 0; r < 3; r++) {
      const rows: SharedRow[] = Array.from({ length: per }, (_, i) => ({ id: `dev-${r}-${i}`, hostname: `host-${i}`, location: "Building A", address: "203.0.113.7", agent: "agent/1.0", uptime: 1000 + i, uplink: "eth0", online: true, connected_since: new Date(wall).toISOString(), last_seen: new Date().toISOString(), rtt_ms: 12, state: "online", serial: "0a1b2c" }));
      const d = new RedisDirectory({
        redis: new BunRedis({ url: redis.url }),
        self: { id: `relay-${r}`, mesh: `127.0.0.1:${9000 + r}` },
        log: { info: () => {}, warn: (m) => console.log(m) },
        hooks: { replaced: () => {}, revoked: () => {}, since: () => null, rows: () => rows, sessions: () => [], accessDigest: () => "x" },
      });
      d.start();
      dirs.push(d);
      for (let i = 0; i < per; i++) d.connected(`dev-${r}-${i}`, wall);
    }
    const client = await redis.client();
    const info = async () => {
      const text = String(await client.send("INFO", ["stats"]));
      return Number(/total_commands_processed:(\d+)/.exec(text)?.[1] ?? NaN);
    };
    const redisCpu = () => cpuSeconds(redis.pid!);
    // The first writes (every presence key, every row) settle; then a steady window of two refresh cycles.
    await waitFor(async () => Number(await client.send("DBSIZE", [])) >= PRESENCE, 60_000, "every presence key written");
    await Bun.sleep(8_000);
    const windowMs = 12_000;
    const c0 = await info();
    const u0 = process.cpuUsage();
    const r0 = redisCpu();
    const t0 = performance.now();
    await Bun.sleep(windowMs);
    const secs = (performance.now() - t0) / 1000;
    const cmds = (await info()) - c0 - 1;
    const u = process.cpuUsage(u0);
    const cpu = (u.user + u.system) / 1e6;
    const rcpu = redisCpu() - r0;
    client.close();
    console.log(
      formatTable(
        ["devices", "relays", "Redis commands/s", "relay CPU for cluster mode (its directory), % of a core per relay", "redis-server CPU %"],
        [[String(per * 3), "3", (cmds / secs).toFixed(0), ((cpu / secs / 3) * 100).toFixed(2), ((rcpu / secs) * 100).toFixed(2)]],
      ),
    );
    console.log(`presence: each relay refreshes its ${per} keys every 6 s (a third of the 20 s TTL), heartbeats once a second, and rewrites only changed inventory rows (all of them once a minute)`);
  } finally {
    await Promise.allSettled(dirs.map((d) => d.close()));
    await redis.close();
  }
}

// ---- 4. idle memory per device -----------------------------------------------------------

async function idleMemory(): Promise<void> {
  const c = await cluster();
  try {
    const out: string[][] = [];
    const perDevice: Record<string, number> = {};
    for (const [id, on] of [["relay-single", false], ["relay-cluster", true]] as const) {
      const started = performance.now();
      const d = await c.startRelay(id, 0, on);
      // A daemon drops its executable's code pages from its RSS 10 s after it starts
      // (src/os/text-trim.ts): a baseline taken before that is ~25 MiB too high, and the
      // per-device figure too low. The connector's prepare usually outlasts it; this makes sure.
      const young = 13_000 - (performance.now() - started);
      if (young > 0) await Bun.sleep(young);
      const res = await measureIdleCapacity({
        relayPid: d.proc.pid,
        connectorModule: IDLE_CONNECTOR_MODULE,
        context: { relay: `127.0.0.1:${c.ports.get(id)}`, workDir: c.fleet.dir, pkiDir: c.fleet.ca },
        counts: [IDLE],
        log: (l) => console.log(`${id}: ${l}`),
      });
      const l = res.levels[0]!;
      perDevice[id] = l.rssPerConnectionKiB;
      out.push([on ? "cluster" : "single", `${l.opened}`, (l.relayRssKiB / 1024).toFixed(1), l.rssPerConnectionKiB.toFixed(1), l.idleCpuPercent.toFixed(2)]);
      await c.fleet.stop(d);
    }
    console.log(formatTable(["relay", "idle devices", "RSS MiB", "KiB/device", "idle CPU %"], out));
    console.log(`idle memory per device, cluster / single: ${(perDevice["relay-cluster"]! / perDevice["relay-single"]!).toFixed(2)}× (goal ≤ 1.2×)`);
  } finally {
    await c.close();
  }
}

for (const [n, name, fn] of [
  ["1", "cross-relay against same-relay", throughputAndRtt],
  ["2", "kill -9 → answering again", killRecovery],
  ["3", "presence load", presenceLoad],
  ["4", "idle memory per device", idleMemory],
] as const) {
  if (!only.includes(n)) continue;
  console.log(`\n--- ${n}. ${name} ---`);
  await fn();
}
process.exit(0);
