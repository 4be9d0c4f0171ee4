// nymea benchmark: our relay's nymea-remoteproxy listener next to a relay written in C with
// the same two TLS legs, measured in this one run on 127.0.0.1.
//
// Run:   make bench B=nymea        (or: node_modules/.bin/bun bench/nymea.bench.ts)
// Needs: stunnel4 socat openssl (scripts/deps.sh).
//
// Paths (both clients dial the relay; the bench process plays both clients):
//   (c)      client ═TLS 1.3═ stunnel (server) → socat (TCP-LISTEN ↔ TCP-LISTEN) ← stunnel
//            (server) ═TLS 1.3═ client: two TLS legs terminated and spliced in C, no nymea
//            handshake (the chain does not speak it). One socat per tunnel.
//   tcp      client ═TLS═ agent relay [nymea] tcp ═TLS═ client, after Hello-less
//            Authenticate + TunnelEstablished (dummy authenticator, loopback).
//   ws       the same over the [nymea] ws listener, with Bun's WebSocket client (text frames).
// Figures: one-way throughput (client A → client B, BENCH_SECONDS per run, interleaved
// repeats, median), 64-byte round trips A → B → A (median and p99 over BENCH_ROUNDS), pairing
// latency (connect of the first client to TunnelEstablished at both, over BENCH_PAIRINGS
// sequential pairings), and relay RSS growth per waiting (authenticated, alone) client and per
// open tunnel at BENCH_HOLD of each (each measured in a fresh relay process).
//
// Goals (issue 12): throughput >= 1.0x (c); <= 32 KiB per waiting client.
//
// Environment: BENCH_SECONDS=3  BENCH_REPEAT=3  BENCH_ROUNDS=2000  BENCH_PAIRINGS=1000  BENCH_HOLD=1000
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "bun";
import { formatTable } from "../src/table.ts";
import { Children, freePort, programsPresent, run, waitForListen, type Child } from "../test/helpers/proc.ts";
import { agentArgv, agentCli } from "./lib/ours.ts";
import { makeTlsFiles } from "./lib/peers.ts";
import { percentile } from "./lib/pingpong.ts";
import { ROOT } from "../test/helpers/cli.ts";

const env = process.env;
const SECONDS = Math.min(10, Math.max(1, Number(env.BENCH_SECONDS ?? 3) || 3));
const REPEAT = Math.min(10, Math.max(1, Number(env.BENCH_REPEAT ?? 3) || 3));
const ROUNDS = Math.max(100, Number(env.BENCH_ROUNDS ?? 2000) || 2000);
const PAIRINGS = Math.min(10_000, Math.max(10, Number(env.BENCH_PAIRINGS ?? 1000) || 1000));
const HOLD = Math.min(5_000, Math.max(10, Number(env.BENCH_HOLD ?? 1000) || 1000));
const START_MS = 20_000;
const CHUNK = Buffer.alloc(64 * 1024, "x");
const CHUNK_TEXT = CHUNK.toString("latin1");

if (!programsPresent("nymea.bench.ts", ["stunnel", "socat", "openssl"])) process.exit(1);

// ------------------------------------------------------------------------- client ends

/** One end of a tunnel as the bench drives it. */
interface End {
  /** Writes; resolves when the transport can take more. */
  write(data: Buffer): Promise<void>;
  onData: (n: number, data: Buffer | string) => void;
  close(): void;
}

/** A TLS TCP client whose first lines (nymea answers) are handed to `lines`, the rest to onData. */
class TcpEnd implements End {
  onData: (n: number, data: Buffer | string) => void = () => {};
  private sock!: Socket<undefined>;
  private waiters: (() => void)[] = [];
  private pending: Buffer[] = [];
  private text = "";
  linesWanted = 0;
  lines: string[] = [];
  lineWaiter: (() => void) | null = null;
  closed = false;

  static async connect(port: number): Promise<TcpEnd> {
    const e = new TcpEnd();
    let ready!: () => void;
    let fail!: (err: Error) => void;
    const p = new Promise<void>((res, rej) => ((ready = res), (fail = rej)));
    e.sock = await Bun.connect<undefined>({
      hostname: "127.0.0.1",
      port,
      tls: { rejectUnauthorized: false },
      socket: {
        handshake: (_s, ok) => (ok || true ? ready() : fail(new Error("handshake"))),
        data: (_s, d) => e.data(d),
        drain: () => e.drain(),
        close: () => {
          e.closed = true;
          fail(new Error("closed"));
        },
        error: (_s, err) => fail(err),
      },
    });
    e.sock.setNoDelay(true);
    await p;
    return e;
  }

  private data(d: Buffer): void {
    if (this.lines.length < this.linesWanted) {
      this.text += d.toString("latin1");
      while (this.lines.length < this.linesWanted) {
        const i = this.text.indexOf("\n");
        if (i < 0) return;
        this.lines.push(this.text.slice(0, i));
        this.text = this.text.slice(i + 1);
        this.lineWaiter?.();
      }
      if (this.text.length) {
        const rest = Buffer.from(this.text, "latin1");
        this.text = "";
        this.onData(rest.byteLength, rest);
      }
      return;
    }
    this.onData(d.byteLength, d);
  }

  async expectLines(n: number): Promise<string[]> {
    this.linesWanted += n;
    const want = this.linesWanted;
    while (this.lines.length < want) {
      if (this.closed) throw new Error(`closed after ${this.lines.length} line(s): ${this.lines.join(" | ")}`);
      await new Promise<void>((res) => {
        this.lineWaiter = res;
        setTimeout(res, 50);
      });
    }
    return this.lines.slice(want - n, want);
  }

  private drain(): void {
    while (this.pending.length) {
      const head = this.pending[0]!;
      const n = this.sock.write(head);
      if (n < head.byteLength) {
        this.pending[0] = head.subarray(Math.max(0, n));
        return;
      }
      this.pending.shift();
    }
    for (const w of this.waiters.splice(0)) w();
  }

  write(data: Buffer): Promise<void> {
    if (!this.pending.length) {
      const n = this.sock.write(data);
      if (n >= data.byteLength) return Promise.resolve();
      this.pending.push(data.subarray(Math.max(0, n)));
    } else this.pending.push(data);
    return new Promise((res) => this.waiters.push(res));
  }

  close(): void {
    this.sock.end();
  }
}

/** Bun's WebSocket client (text frames only: the relay closes on binary). */
class WsEnd implements End {
  onData: (n: number, data: Buffer | string) => void = () => {};
  lines: string[] = [];
  linesWanted = 0;
  closed = false;
  private constructor(private readonly ws: WebSocket) {}

  static async connect(port: number): Promise<WsEnd> {
    const ws = new WebSocket(`wss://127.0.0.1:${port}/`, { tls: { rejectUnauthorized: false } } as unknown as string[]);
    const e = new WsEnd(ws);
    ws.onmessage = (m) => {
      const d = m.data as string;
      if (e.lines.length < e.linesWanted) e.lines.push(d);
      else e.onData(d.length, d);
    };
    ws.onclose = () => (e.closed = true);
    await new Promise<void>((res, rej) => {
      ws.onopen = () => res();
      ws.onerror = () => rej(new Error("WebSocket error"));
    });
    return e;
  }

  send(text: string): void {
    this.ws.send(text);
  }

  async expectLines(n: number): Promise<string[]> {
    this.linesWanted += n;
    const want = this.linesWanted;
    while (this.lines.length < want) {
      if (this.closed) throw new Error(`closed after ${this.lines.length} line(s)`);
      await Bun.sleep(1);
    }
    return this.lines.slice(want - n, want);
  }

  async write(data: Buffer): Promise<void> {
    this.ws.send(data === CHUNK ? CHUNK_TEXT : data.toString("latin1"));
    while (this.ws.bufferedAmount > 4 * CHUNK.byteLength && !this.closed) await Bun.sleep(1);
  }

  close(): void {
    this.ws.close();
  }
}

// ------------------------------------------------------------------------- paths

interface Tunnel {
  a: End;
  b: End;
  close(): Promise<void>;
}

interface BenchPath {
  name: string;
  open(nonce: string): Promise<Tunnel>;
  relayPids(): number[];
}

const authLine = (nonce: string, name: string) => JSON.stringify({ id: 1, method: "Authentication.Authenticate", params: { name, nonce, token: "bench", uuid: crypto.randomUUID() } }) + "\n";

async function nymeaPair(port: number, transport: "tcp" | "ws", nonce: string): Promise<Tunnel> {
  const mk = async () => (transport === "tcp" ? TcpEnd.connect(port) : WsEnd.connect(port));
  const send = (e: TcpEnd | WsEnd, line: string) => (e instanceof TcpEnd ? e.write(Buffer.from(line)) : (e.send(line), Promise.resolve()));
  const a = await mk();
  await send(a, authLine(nonce, "a"));
  const [ra] = await a.expectLines(1);
  if (!ra!.includes("AuthenticationErrorNoError")) throw new Error(`first client refused: ${ra}`);
  const notifyA = a.expectLines(1);
  const b = await mk();
  await send(b, authLine(nonce, "b"));
  const [rb, nb] = await b.expectLines(2);
  if (!rb!.includes("AuthenticationErrorNoError") || !nb!.includes("TunnelEstablished")) throw new Error(`second client: ${rb} ${nb}`);
  await notifyA;
  return {
    a,
    b,
    close: async () => {
      a.close();
      b.close();
    },
  };
}

function mean(v: number[]): number {
  return v.reduce((x, y) => x + y, 0) / v.length;
}

async function throughput(t: Tunnel): Promise<number> {
  let got = 0;
  t.b.onData = (n) => (got += n);
  const end = performance.now() + SECONDS * 1000;
  const t0 = performance.now();
  let sent = 0;
  while (performance.now() < end) {
    await t.a.write(CHUNK);
    sent += CHUNK.byteLength;
  }
  // Count what arrived in the time, not what was queued.
  const secs = (performance.now() - t0) / 1000;
  const atEnd = got;
  t.b.onData = () => {};
  return (atEnd * 8) / secs / 1e9;
}

async function roundTrips(t: Tunnel, rounds: number): Promise<number[]> {
  const msg = Buffer.alloc(64, "p");
  let got = 0;
  let done: (() => void) | null = null;
  t.b.onData = (_n, d) => void t.b.write(typeof d === "string" ? Buffer.from(d, "latin1") : Buffer.from(d));
  t.a.onData = (n) => {
    got += n;
    if (got >= 64) {
      got -= 64;
      done?.();
    }
  };
  const samples: number[] = [];
  for (let i = 0; i < rounds + 50; i++) {
    const p = new Promise<void>((res) => (done = res));
    const t0 = Bun.nanoseconds();
    await t.a.write(msg);
    await p;
    if (i >= 50) samples.push((Bun.nanoseconds() - t0) / 1000);
  }
  t.a.onData = t.b.onData = () => {};
  return samples.sort((x, y) => x - y);
}

// ------------------------------------------------------------------------- setup

const kids = new Children();
const dir = mkdtempSync(join(tmpdir(), "agent-bench-nymea-"));
let stopping: Promise<void> | undefined;
const cleanup = () => (stopping ??= kids.stopAll().finally(() => rmSync(dir, { recursive: true, force: true })));
for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => void cleanup().then(() => process.exit(130)));

interface Relay {
  child: Child;
  tcp: number;
  ws: number;
  sock: string;
}

let relayNo = 0;
async function startRelay(bundle: string): Promise<Relay> {
  const n = relayNo++;
  const [tcp, ws, listen] = [await freePort(), await freePort(), await freePort()];
  const conf = join(dir, `relay-${n}.toml`);
  writeFileSync(conf, `log_level = "warn"\n[nymea]\ntcp = "127.0.0.1:${tcp}"\nws = "127.0.0.1:${ws}"\ndummy = true\nalone_timeout = "1h"\ninactive_timeout = "1h"\n`);
  const sock = join(dir, `relay-${n}.sock`);
  const child = kids.spawn(`agent relay ${n}`, agentArgv(["--role", "relay", "--bundle", bundle, "--listen", `127.0.0.1:${listen}`, "--config", conf, "--control", sock, "--state-dir", join(dir, `state-${n}`)]), { cwd: ROOT });
  await waitForListen(tcp, START_MS, child, { owned: true });
  await waitForListen(ws, START_MS, child, { owned: true });
  return { child, tcp, ws, sock };
}

const rssKiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]);

async function relayStats(r: Relay): Promise<{ clients: number; authenticated: number; tunnels: number }> {
  const st = JSON.parse(await agentCli("status", ["status", "--json", "--control", r.sock]));
  return st.relay.nymea;
}

async function until(probe: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = performance.now() + ms;
  while (!(await probe())) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(200);
  }
}

/** RSS once it stops moving (two samples 500 ms apart within 1%), bounded. */
async function settledRss(pid: number): Promise<number> {
  let last = rssKiB(pid);
  for (let i = 0; i < 20; i++) {
    await Bun.sleep(500);
    const now = rssKiB(pid);
    if (Math.abs(now - last) <= last * 0.01) return now;
    last = now;
  }
  return last;
}

async function inBatches<T>(n: number, width: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < n; i += width) out.push(...(await Promise.all(Array.from({ length: Math.min(width, n - i) }, (_, j) => fn(i + j)))));
  return out;
}

let failed = false;
try {
  const pki = join(dir, "pki");
  const bundle = join(dir, "relay.bundle");
  await agentCli("pki init", ["pki", "init", "--dir", pki]);
  await agentCli("pki issue relay", ["pki", "issue", "--dir", pki, "--role", "relay", "--id", "relay-1", "--host", "127.0.0.1", "--out", bundle]);
  const relay = await startRelay(bundle);

  // (c): one stunnel with two TLS services, one socat per tunnel joining the two plain legs.
  const tls = await makeTlsFiles(dir);
  const [p1, p2, x, y] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const stConf = join(dir, "stunnel.conf");
  const svc = (name: string, accept: number, connect: number) => [`[${name}]`, `accept = 127.0.0.1:${accept}`, `connect = 127.0.0.1:${connect}`, `cert = ${tls.server.cert}`, `key = ${tls.server.key}`, "sslVersionMin = TLSv1.3", ""];
  writeFileSync(stConf, ["foreground = yes", "pid =", "syslog = no", "debug = 3", "socket = l:TCP_NODELAY=1", "socket = r:TCP_NODELAY=1", "", ...svc("a", p1, x), ...svc("b", p2, y)].join("\n"));
  const stunnel = kids.spawn("stunnel", ["stunnel", stConf]);
  await waitForListen(p1, START_MS, stunnel, { owned: true });
  await waitForListen(p2, START_MS, stunnel, { owned: true });
  const stunnelVersion = ((await run(["stunnel", "-version"], { timeoutMs: 10_000 })).stderr.split("\n").find((l) => l.startsWith("stunnel")) ?? "stunnel").trim();
  let socat: Child | null = null;
  const peer: BenchPath = {
    name: "(c) stunnel + socat",
    relayPids: () => [stunnel.pid, ...(socat ? [socat.pid] : [])],
    async open() {
      socat = kids.spawn("socat", ["socat", "-b", "65536", `TCP-LISTEN:${x},bind=127.0.0.1,reuseaddr,nodelay`, `TCP-LISTEN:${y},bind=127.0.0.1,reuseaddr,nodelay`]);
      await waitForListen(x, START_MS, socat, { owned: true });
      const a = await TcpEnd.connect(p1);
      await waitForListen(y, START_MS, socat, { owned: true });
      const b = await TcpEnd.connect(p2);
      const s = socat;
      return {
        a,
        b,
        close: async () => {
          a.close();
          b.close();
          await s.stop();
        },
      };
    },
  };
  const paths: BenchPath[] = [
    peer,
    { name: "ours: nymea TCP ↔ TCP", relayPids: () => [relay.child.pid], open: (nonce) => nymeaPair(relay.tcp, "tcp", nonce) },
    { name: "ours: nymea WS ↔ WS", relayPids: () => [relay.child.pid], open: (nonce) => nymeaPair(relay.ws, "ws", nonce) },
  ];

  console.log(`${SECONDS} s per throughput run, ${REPEAT} run(s) per path interleaved, ${ROUNDS} round trips per path; peer: ${stunnelVersion}, TLS 1.3, socat -b 65536`);
  const gbps = new Map<string, number[]>(paths.map((p) => [p.name, []]));
  const rtts = new Map<string, number[]>(paths.map((p) => [p.name, []]));
  for (let r = 0; r < REPEAT; r++) {
    for (const p of paths) {
      // A fresh tunnel for each measure: bytes still queued from the throughput run would
      // answer the first round trips.
      let g = 0;
      const t = await p.open(crypto.randomUUID());
      try {
        g = await throughput(t);
        gbps.get(p.name)!.push(g);
      } finally {
        await t.close();
      }
      const t2 = await p.open(crypto.randomUUID());
      try {
        const rt = await roundTrips(t2, Math.ceil(ROUNDS / REPEAT));
        rtts.get(p.name)!.push(...rt);
        console.log(`  run ${r + 1}: ${p.name}: ${g.toFixed(2)} Gbit/s, rtt median ${percentile(rt, 50).toFixed(0)} µs`);
      } finally {
        await t2.close();
      }
    }
  }
  const med = (v: number[]) => percentile([...v].sort((a, b) => a - b), 50);
  const peerG = med(gbps.get(peer.name)!);
  const peerRtt = rtts.get(peer.name)!.sort((a, b) => a - b);
  const rows = paths.map((p) => {
    const g = med(gbps.get(p.name)!);
    const rt = rtts.get(p.name)!.sort((a, b) => a - b);
    const m = percentile(rt, 50);
    const p99 = percentile(rt, 99);
    return [p.name, g.toFixed(2), `${(g / peerG).toFixed(2)}x`, m.toFixed(0), p99.toFixed(0), `${(m / percentile(peerRtt, 50)).toFixed(2)}x`, `${(p99 / percentile(peerRtt, 99)).toFixed(2)}x`];
  });
  console.log("\n" + formatTable(["path", "Gbit/s (median)", "vs (c)", "rtt median µs", "rtt p99 µs", "median vs (c)", "p99 vs (c)"], rows));
  console.log(`throughput runs (Gbit/s): ${paths.map((p) => `${p.name}: ${gbps.get(p.name)!.map((g) => g.toFixed(2)).join(", ")}`).join("; ")}`);

  // Pairing latency: first client's connect to TunnelEstablished at both ends.
  const pairing: number[] = [];
  for (let i = 0; i < PAIRINGS; i++) {
    const t0 = performance.now();
    const t = await nymeaPair(relay.tcp, "tcp", `pair-${i}`);
    pairing.push(performance.now() - t0);
    await t.close();
  }
  pairing.sort((a, b) => a - b);
  console.log(`\npairing over TLS TCP, ${PAIRINGS} sequential pairings (connect → TunnelEstablished at both): median ${percentile(pairing, 50).toFixed(2)} ms, p99 ${percentile(pairing, 99).toFixed(2)} ms, mean ${mean(pairing).toFixed(2)} ms`);
  await kids.stopAll();
  void relay;

  // Memory: each measurement in a fresh relay process.
  const waitingRelay = await startRelay(bundle);
  const base1 = await settledRss(waitingRelay.child.pid);
  const waiting = await inBatches(HOLD, 50, async (i) => {
    const e = await TcpEnd.connect(waitingRelay.tcp);
    await e.write(Buffer.from(authLine(`wait-${i}`, "w")));
    await e.expectLines(1);
    return e;
  });
  await until(async () => (await relayStats(waitingRelay)).authenticated >= HOLD, 30_000, `${HOLD} waiting clients`);
  const held1 = await settledRss(waitingRelay.child.pid);
  for (const e of waiting) e.close();
  await waitingRelay.child.stop();

  const tunnelRelay = await startRelay(bundle);
  const base2 = await settledRss(tunnelRelay.child.pid);
  const tunnels = await inBatches(HOLD, 25, (i) => nymeaPair(tunnelRelay.tcp, "tcp", `t-${i}`));
  await until(async () => (await relayStats(tunnelRelay)).tunnels >= HOLD, 30_000, `${HOLD} tunnels`);
  const held2 = await settledRss(tunnelRelay.child.pid);
  for (const t of tunnels) await t.close();
  await tunnelRelay.child.stop();
  const perWaiting = ((held1 - base1) * 1024) / HOLD / 1024;
  const perTunnel = ((held2 - base2) * 1024) / HOLD / 1024;
  console.log(
    `relay RSS: ${base1} KiB idle → ${held1} KiB with ${HOLD} waiting TLS clients: ${perWaiting.toFixed(1)} KiB per waiting client (goal ≤ 32 KiB); ` +
      `${base2} KiB idle → ${held2} KiB with ${HOLD} open tunnels (${2 * HOLD} TLS connections): ${perTunnel.toFixed(1)} KiB per tunnel`,
  );
} catch (e) {
  failed = true;
  console.error(`nymea benchmark failed: ${e instanceof Error ? e.stack : e}`);
} finally {
  await cleanup();
}
process.exit(failed ? 1 : 0);
