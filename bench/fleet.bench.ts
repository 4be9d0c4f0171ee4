// `make bench B=fleet`: what fleet operations (issue 14) cost the relay.
//  1. Relay CPU and memory with 5,000 known devices sending heartbeats (one each per 25 s, so
//     200 datagrams/s over real UDP on loopback) against the same 5,000 idle. The devices are
//     inventory records without TLS connections: what is measured is what heartbeats ADD.
//     Goal (issue 14): ≤ 2 % of one core more, ≤ 4 KiB per device more.
//  2. Inventory write cost per connect + disconnect: the sqlite store against the memory store.
//  3. `agent devices --all` with 50,000 devices stored, against `agent status` (the CLI's own
//     cost) on the same relay.
// Ratios against peers measured in the same run; no figure is checked by a test.
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import dgram from "node:dgram";
import { cpuSeconds, rssKiB } from "../test/helpers/proc.ts";
import { agent, BUN, MAIN } from "../test/helpers/cli.ts";
import { deviceKey, encodeHeartbeat, HeartbeatTiming } from "../src/transport/heartbeat/codec.ts";
import { Inventory } from "../src/tunnel/relay/inventory.ts";
import { MemoryInventoryStore, SqliteInventoryStore, type InventoryStore } from "../src/tunnel/relay/inventory-store.ts";
import { waitFor } from "../test/helpers/wait.ts";

const DEVICES = Number(process.env.FLEET_DEVICES ?? 5000);
const PHASE_MS = Number(process.env.FLEET_PHASE_MS ?? HeartbeatTiming.interval);
const dir = mkdtempSync(join(tmpdir(), "agent-fleet-bench-"));

/**
 * The heartbeat cost of one relay (`tree`: the source tree whose bench/lib/fleet-relay.ts runs,
 * default this one). `quiet`: no lines printed, the figures returned (the A/B turns); the first
 * round then goes fast (all devices in ~2 s), as it is not measured.
 */
async function heartbeatCost(floor = false, tree = join(import.meta.dir, ".."), quiet = false): Promise<number> {
  const secret = randomBytes(32);
  const child = Bun.spawn([BUN, join(tree, "bench", "lib", "fleet-relay.ts"), floor ? "floor" : join(dir, `hb-${Math.random().toString(36).slice(2)}.db`), String(DEVICES), secret.toString("hex")], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  const reader = child.stdout.getReader();
  const dec = new TextDecoder();
  let pending = "";
  const line = async (): Promise<Record<string, unknown>> => {
    while (!pending.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the bench relay exited");
      pending += dec.decode(value);
    }
    const l = pending.slice(0, pending.indexOf("\n"));
    pending = pending.slice(pending.indexOf("\n") + 1);
    return JSON.parse(l);
  };
  const report = async () => {
    child.stdin.write("report\n");
    await child.stdin.flush();
    return (await line()) as { heapUsed: number; rss: number; accepted: number };
  };
  try {
    const { port } = (await line()) as { port: number };
    const keys = Array.from({ length: DEVICES }, (_, i) => deviceKey(secret, `dev-${String(i).padStart(5, "0")}`, "0a"));
    const boot = randomBytes(16);
    const phase = async (send: boolean, seq = 1n, phaseMs = PHASE_MS) => {
      const r0 = await report();
      const c0 = cpuSeconds(child.pid);
      const t0 = performance.now();
      const PHASE_MS = phaseMs;
      if (send) {
        // One heartbeat per device over the phase, evenly spread (a 25 s interval's worth).
        const s = dgram.createSocket("udp4");
        const payload = { up: 1000, act: "eth0", via: "eth0", iv: HeartbeatTiming.interval, tun: "up", ul: [{ n: "eth0", s: "up", l: 0, r: 12 }, { n: "wwan0", s: "up", l: 0, r: 60, m: 1 as const }], cell: { sig: 70, op: "Orange F", tech: "lte" }, err: null, load: 0.3, disk: 1000 };
        for (let i = 0; i < DEVICES; i++) {
          const due = t0 + (i * PHASE_MS) / DEVICES;
          if (due > performance.now()) await Bun.sleep(due - performance.now());
          const d = encodeHeartbeat({ id: `dev-${String(i).padStart(5, "0")}`, boot, seq, sentAt: Date.now(), payload }, keys[i]!);
          s.send(d, port, "127.0.0.1");
        }
        await Bun.sleep(Math.max(0, t0 + PHASE_MS - performance.now()));
        s.close();
      } else await Bun.sleep(PHASE_MS);
      const wall = (performance.now() - t0) / 1000;
      const cpu = cpuSeconds(child.pid) - c0;
      const r1 = await report();
      return { cpuPct: (100 * cpu) / wall, rss: rssKiB(child.pid), heap: r1.heapUsed, accepted: r1.accepted - r0.accepted };
    };
    if (floor) {
      const bare = await phase(true, 1n);
      console.log(`  peer, a bare node:dgram socket that only counts (the floor: one event-loop wake per datagram): CPU ${bare.cpuPct.toFixed(2)} % of one core at ${(bare.accepted / (PHASE_MS / 1000)).toFixed(0)}/s`);
      return bare.cpuPct;
    }
    if (quiet) {
      await phase(true, 1n, 2_000);
      const idle = await phase(false);
      const beats = await phase(true, 2n);
      if (beats.accepted < DEVICES * 0.95) throw new Error(`only ${beats.accepted} of ${DEVICES} heartbeats accepted`);
      return beats.cpuPct - idle.cpuPct;
    }
    const idle = await phase(false);
    // The first heartbeat of each device changes its state (offline → alive) and is written to
    // the store; the second round is the steady state: nothing written (HEARTBEAT_PERSIST_MS).
    const first = await phase(true, 1n);
    const beats = await phase(true, 2n);
    const perDevice = (beats.heap - idle.heap) / 1024 / DEVICES;
    console.log(`relay with ${DEVICES} known devices, ${PHASE_MS / 1000} s each:`);
    console.log(`  idle:        CPU ${idle.cpuPct.toFixed(2)} % of one core, heap ${(idle.heap / 1048576).toFixed(1)} MiB, RSS ${(idle.rss / 1024).toFixed(1)} MiB`);
    console.log(`  first round: CPU ${first.cpuPct.toFixed(2)} % of one core (each device's first heartbeat: a state change, written to sqlite)`);
    console.log(`  heartbeats:  CPU ${beats.cpuPct.toFixed(2)} % of one core, heap ${(beats.heap / 1048576).toFixed(1)} MiB, RSS ${(beats.rss / 1024).toFixed(1)} MiB, ${beats.accepted} accepted (${(beats.accepted / (PHASE_MS / 1000)).toFixed(0)}/s)`);
    console.log(`  heartbeats add ${(beats.cpuPct - idle.cpuPct).toFixed(2)} % of one core (goal ≤ 2 %) and ${perDevice.toFixed(2)} KiB heap per device (goal ≤ 4 KiB); RSS +${((beats.rss - idle.rss) / DEVICES).toFixed(2)} KiB per device`);
    return beats.cpuPct - idle.cpuPct;
  } finally {
    child.kill();
    await child.exited;
  }
}

function writeCost(): void {
  const n = 5000;
  const measure = (name: string, store: InventoryStore) => {
    const inv = new Inventory(undefined, store);
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      inv.connected(`w-${i}`, { serial: "0a", address: "192.0.2.1", agent: "bench" });
      inv.disconnected(`w-${i}`, undefined, "bench");
    }
    const us = ((performance.now() - t0) * 1000) / n;
    store.close();
    return { name, us };
  };
  const mem = measure("memory store", new MemoryInventoryStore());
  const sql = measure("sqlite store (WAL, synchronous=NORMAL)", new SqliteInventoryStore(join(dir, "writes.db")));
  console.log(`inventory write cost per connect + disconnect (${n} pairs):`);
  console.log(`  ${mem.name}: ${mem.us.toFixed(1)} µs`);
  console.log(`  ${sql.name}: ${sql.us.toFixed(1)} µs (${(sql.us / mem.us).toFixed(1)}× the memory store)`);
}

async function listCost(): Promise<void> {
  const n = 50_000;
  const state = join(dir, "state-50k");
  mkdirSync(state, { recursive: true });
  const store = new SqliteInventoryStore(join(state, "inventory.db"));
  const t0 = performance.now();
  store.batch(() => {
    for (let i = 0; i < n; i++) store.put({ id: `site-${String(i).padStart(5, "0")}`, serial: "0a", firstSeen: Date.now(), lastSeen: Date.now(), connectedSince: Date.now(), address: "192.0.2.1", info: { hostname: "pi", location: "Royal Champagne", agent: "0.1.0", uptime: 1, uplink: "eth0" }, certExpires: Date.now() + 86_400_000 * 365, heartbeat: null });
  });
  store.close();
  console.log(`stored ${n} devices in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const ca = join(dir, "ca");
  for (const a of [["pki", "init", "--dir", ca], ["pki", "issue", "--dir", ca, "--role", "relay", "--id", "relay-1", "--host", "127.0.0.1", "--out", join(dir, "relay.bundle")]]) {
    const r = await agent(a);
    if (r.code !== 0) throw new Error(r.stderr);
  }
  const sock = join(dir, "relay.sock");
  const started = performance.now();
  const relay = Bun.spawn([BUN, MAIN, "--role", "relay", "--bundle", join(dir, "relay.bundle"), "--listen", "127.0.0.1:0", "--control", sock, "--state-dir", state, "--log-level", "error"], { stdin: "ignore", stdout: "ignore", stderr: "inherit" });
  try {
    await waitFor(async () => (await agent(["status", "--control", sock])).code === 0, 60_000, "the relay with 50,000 devices answering");
    console.log(`relay start with ${n} stored devices: ${((performance.now() - started) / 1000).toFixed(1)} s to answer status; RSS ${(rssKiB(relay.pid) / 1024).toFixed(0)} MiB`);
    const time = async (args: string[]) => {
      const ms: number[] = [];
      let out = "";
      for (let i = 0; i < 3; i++) {
        const t = performance.now();
        const r = await agent([...args, "--control", sock], { timeoutMs: 120_000 });
        ms.push(performance.now() - t);
        if (r.code !== 0) throw new Error(`agent ${args.join(" ")}: ${r.stderr}`);
        out = r.stdout;
      }
      ms.sort((a, b) => a - b);
      return { ms: ms[1]!, bytes: out.length };
    };
    const status = await time(["status", "--json"]);
    const json = await time(["devices", "--all", "--json"]);
    const table = await time(["devices", "--all"]);
    console.log(`agent devices --all with ${n} stored (median of 3):`);
    console.log(`  agent status --json (peer: the CLI itself): ${status.ms.toFixed(0)} ms`);
    console.log(`  agent devices --all --json: ${json.ms.toFixed(0)} ms, ${(json.bytes / 1048576).toFixed(1)} MiB (${(json.ms / status.ms).toFixed(1)}× status)`);
    console.log(`  agent devices --all (table): ${table.ms.toFixed(0)} ms (${(table.ms / status.ms).toFixed(1)}× status)`);
  } finally {
    relay.kill();
    await relay.exited;
  }
}

/**
 * FLEET_AB=DIR: interleaved A/B turns of the heartbeat cost, A the source tree in DIR (e.g. a
 * `git archive` of the commit before a change, with node_modules linked), B this one; FLEET_ROUNDS
 * pairs (default 3), the order alternating, each a fresh relay. Prints each turn and the medians.
 */
async function abTurns(a: string): Promise<void> {
  const rounds = Number(process.env.FLEET_ROUNDS ?? 3);
  const here = join(import.meta.dir, "..");
  const got: Record<"A" | "B", number[]> = { A: [], B: [] };
  for (let i = 0; i < rounds; i++) {
    const order: ("A" | "B")[] = i % 2 === 0 ? ["A", "B"] : ["B", "A"];
    for (const v of order) {
      const pct = await heartbeatCost(false, v === "A" ? a : here, true);
      got[v].push(pct);
      console.log(`  turn ${i + 1} ${v}: heartbeats add ${pct.toFixed(2)} % of one core`);
    }
  }
  const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!;
  console.log(`A/B, ${DEVICES} devices, ${rounds} turns each: A (${a}) median ${median(got.A).toFixed(2)} %, B (this tree) median ${median(got.B).toFixed(2)} % of one core added by heartbeats`);
}

if (process.env.FLEET_AB) {
  try {
    await abTurns(process.env.FLEET_AB);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  process.exit(0);
}

try {
  writeCost();
  const added = await heartbeatCost();
  const bare = await heartbeatCost(true);
  console.log(`  heartbeats cost ${(added / Math.max(bare, 0.01)).toFixed(1)}× the bare receive of the same datagrams`);
  await listCost();
} finally {
  rmSync(dir, { recursive: true, force: true });
}
