// `make bench B=cluster`: a session carried across the relay-to-relay mesh (issue 16) against
// a session on one relay, in the same run. Two relay processes (bench/cluster-mesh-relay.ts),
// each a RelayServer behind real TLS with its mesh listener; a master on relay A, one device on
// A and one on B, all over real TLS on loopback. Turns alternate (same, cross, cross, same, …)
// so the shared machine's noise falls on both paths alike.
//  - throughput: one stream, MESH_BYTES (default 64 MiB) written as fast as credit allows,
//    timed until the device has read it all; the median of MESH_ROUNDS (default 3) turns.
//  - RTT: 64-byte echoes, one at a time (MESH_PINGS, default 300): median and p95.
//  - relay CPU per GB moved (both relays together for the cross path).
// Goal (issue 16): cross-relay throughput ≥ 0.8× same-relay. Note that here both relays and
// both ends share the same cores: the cross path's second relay competes with everything else,
// which a real deployment (relays on their own machines) does not.
import { createHash, randomBytes } from "node:crypto";
import { join } from "node:path";
import { Connection, type Stream } from "../src/transport/mux.ts";
import { MAX_CONTROL_MESSAGE } from "../src/transport/frame.ts";
import { Msg, type SessionInfo } from "../src/transport/messages.ts";
import { dialTls } from "../src/transport/tls.ts";
import { createCa, issueCertificate, parseCa } from "../src/pki.ts";
import { cpuSeconds } from "../test/helpers/proc.ts";

const BYTES = Number(process.env.MESH_BYTES ?? 64 * 1024 * 1024);
const ROUNDS = Number(process.env.MESH_ROUNDS ?? 3);
const PINGS = Number(process.env.MESH_PINGS ?? 300);
const PROFILE = process.env.MESH_PROFILE as "same" | "cross" | undefined;

const caText = createCa({ name: "bench fleet CA" });
const ca = parseCa(caText.certPem, caText.keyPem);
const cert = (role: "relay" | "onsite" | "master", id: string) => issueCertificate(ca, role === "relay" ? { role, id, hosts: ["127.0.0.1"] } : { role, id });

interface RelayProc {
  id: string;
  proc: ReturnType<typeof Bun.spawn>;
  port: number;
  mesh: string;
}

async function startRelay(id: string): Promise<RelayProc> {
  const c = cert("relay", id);
  const proc = Bun.spawn([process.execPath, join(import.meta.dir, "cluster-mesh-relay.ts"), JSON.stringify({ id, certPem: c.certPem, keyPem: c.keyPem, caPem: ca.certPem })], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${id} exited before listening`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  const { port, mesh } = JSON.parse(text.slice(0, text.indexOf("\n"))) as { port: number; mesh: string };
  return { id, proc, port, mesh };
}

/** A device or master over real TLS to a relay. Devices sink streams to :9 and echo :7. */
async function dial(relay: RelayProc, role: "onsite" | "master", id: string): Promise<Connection> {
  const c = cert(role, id);
  const link = await dialTls({ host: "127.0.0.1", port: relay.port, tls: { certPem: c.certPem, keyPem: c.keyPem, caPem: ca.certPem } });
  const conn = new Connection(link, { side: "dialer", maxControlIn: MAX_CONTROL_MESSAGE, onStream: role === "onsite" ? serve : undefined });
  conn.handle(Msg.SESSION_OFFER, () => ({}));
  const welcome = new Promise((r) => conn.on(Msg.WELCOME, r));
  conn.send(Msg.HELLO, { versions: [1], role, id, agent: "bench" });
  await welcome;
  return conn;
}

const sunk = new Map<string, { bytes: number; hash: ReturnType<typeof createHash> }>();
function serve(s: Stream): void {
  const target = String(s.open.target);
  if (target.endsWith(":7")) s.ondata = (d) => s.write(d);
  else {
    const key = String(s.open.session);
    const acc = { bytes: 0, hash: createHash("sha256") };
    sunk.set(key, acc);
    s.ondata = (d) => {
      acc.bytes += d.length;
      acc.hash.update(d);
    };
  }
  s.onend = () => s.end();
  s.accept();
  s.resume();
}

async function throughput(master: Connection, session: SessionInfo, relays: RelayProc[]): Promise<{ mbps: number; cpuPerGB: number[]; ends: number; ok: boolean }> {
  const s = master.openStream({ session: session.session, target: "10.0.0.5:9" });
  s.resume();
  const chunk = randomBytes(64 * 1024);
  const expect = createHash("sha256");
  const cpu0 = relays.map((r) => cpuSeconds(r.proc.pid));
  const own0 = process.cpuUsage();
  const t0 = performance.now();
  let sent = 0;
  while (sent < BYTES) {
    const ok = s.write(chunk);
    expect.update(chunk);
    sent += chunk.length;
    if (!ok) await new Promise<void>((r) => (s.ondrain = () => r()));
  }
  s.end();
  for (;;) {
    const acc = sunk.get(session.session);
    if (acc && acc.bytes >= sent) break;
    await Bun.sleep(2);
  }
  const secs = (performance.now() - t0) / 1000;
  const cpu = relays.map((r, i) => cpuSeconds(r.proc.pid) - cpu0[i]!);
  const own = process.cpuUsage(own0);
  const ends = (own.user + own.system) / 1e6 / secs;
  const ok = sunk.get(session.session)!.hash.digest("hex") === expect.digest("hex");
  sunk.delete(session.session);
  return { mbps: sent / 1e6 / secs, cpuPerGB: cpu.map((c) => c / (sent / 1e9)), ends, ok };
}

async function rtt(master: Connection, session: SessionInfo): Promise<number[]> {
  const s = master.openStream({ session: session.session, target: "10.0.0.5:7" });
  let waiting: ((d: Uint8Array) => void) | null = null;
  s.ondata = (d) => waiting?.(d);
  s.resume();
  const msg = randomBytes(64);
  const out: number[] = [];
  for (let i = 0; i < PINGS; i++) {
    let got = 0;
    const t0 = performance.now();
    await new Promise<void>((r) => {
      waiting = (d) => {
        got += d.length;
        if (got >= msg.length) r();
      };
      s.write(msg);
    });
    out.push(performance.now() - t0);
  }
  s.end();
  return out;
}

/**
 * MESH_PROFILE=same|cross: one transfer on that path only, with `perf stat` (syscalls, context
 * switches) on each relay and on this process, per MB moved; PROFILE_EVENTS picks other events.
 */
async function profile(path: "same" | "cross", master: Connection, session: SessionInfo, relays: RelayProc[]): Promise<void> {
  const events = process.env.PROFILE_EVENTS ?? "raw_syscalls:sys_enter,context-switches";
  const who = [...relays.map((r) => ({ name: r.id, pid: r.proc.pid })), { name: "ends (this process)", pid: process.pid }];
  const record = process.env.PROFILE_PERF === "1";
  // PROFILE_PERF=1: `perf record -g` of each process instead (/tmp/perf-mesh-PATH-NAME.data).
  const perf = who.map((w) => Bun.spawn(record ? ["perf", "record", "-g", "-o", `/tmp/perf-mesh-${path}-${w.name.split(" ")[0]}.data`, "-p", String(w.pid)] : ["perf", "stat", "-x", ",", "-e", events, "-p", String(w.pid)], { stdout: "pipe", stderr: "pipe" }));
  await Bun.sleep(300);
  const t = await throughput(master, session, relays);
  for (const p of perf) p.kill("SIGINT");
  const outs = await Promise.all(perf.map(async (p) => (await p.exited, await new Response(p.stderr).text())));
  const mb = BYTES / 1e6;
  console.log(`${path}: ${t.mbps.toFixed(0)} MB/s, relay CPU ${t.cpuPerGB.map((c) => c.toFixed(2)).join(" / ")} s/GB, this process ${(t.ends * 100).toFixed(0)} % of a core`);
  who.forEach((w, i) => {
    const stat = outs[i]!.split("\n").filter((l) => /^\d/.test(l)).map((l) => l.split(","));
    console.log(`  ${w.name} per MB: ${stat.map((f) => `${f[2]!.replace(/^(raw_)?syscalls:sys_enter_?/, "") || "syscalls"} ${(Number(f[0]) / mb).toFixed(1)}`).join(", ")}`);
  });
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

const a = await startRelay("relay-a");
const b = await startRelay("relay-b");
try {
  const dirLine = JSON.stringify({ nodes: [{ id: a.id, mesh: a.mesh }, { id: b.id, mesh: b.mesh }], presence: { "site-a": "relay-a", "site-b": "relay-b" } }) + "\n";
  for (const r of [a, b]) {
    (r.proc.stdin as import("bun").FileSink).write(dirLine);
    await (r.proc.stdin as import("bun").FileSink).flush();
  }
  await dial(a, "onsite", "site-a");
  await dial(b, "onsite", "site-b");
  const master = await dial(a, "master", "tech-1");
  const open = (onsite: string) => master.request(Msg.SESSION_OPEN, { onsite, targets: ["10.0.0.5:9", "10.0.0.5:7"] }) as Promise<SessionInfo>;
  const paths = { same: { session: await open("site-a"), relays: [a] }, cross: { session: await open("site-b"), relays: [a, b] } };
  const figures: Figures = { same: { mbps: [], cpu: [], ends: [], rtt: [] }, cross: { mbps: [], cpu: [], ends: [], rtt: [] } };
  // Warm-up: one small turn each (JIT, TLS session set-up), not counted.
  for (const p of ["same", "cross"] as const) await rtt(master, paths[p].session);
  if (PROFILE) await profile(PROFILE, master, paths[PROFILE].session, paths[PROFILE].relays);
  else await turns(master, paths, figures);
  master.close();
} finally {
  // Stdin's end lets each relay close and exit by itself (so a --cpu-prof in BUN_OPTIONS is
  // written); one that has not within 3 s is killed.
  for (const r of [a, b]) (r.proc.stdin as import("bun").FileSink).end();
  await Promise.all([a, b].map((r) => Promise.race([r.proc.exited, Bun.sleep(3_000).then(() => r.proc.kill())])));
  await Promise.all([a.proc.exited, b.proc.exited]);
}
process.exit(0);

type Figures = Record<"same" | "cross", { mbps: number[]; cpu: number[][]; ends: number[]; rtt: number[] }>;

async function turns(master: Connection, paths: Record<"same" | "cross", { session: SessionInfo; relays: RelayProc[] }>, figures: Figures): Promise<void> {
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? (["same", "cross"] as const) : (["cross", "same"] as const);
    for (const p of order) {
      const t = await throughput(master, paths[p].session, paths[p].relays);
      if (!t.ok) throw new Error(`${p}: the bytes the device read are not the bytes sent`);
      figures[p].mbps.push(t.mbps);
      figures[p].cpu.push(t.cpuPerGB);
      figures[p].ends.push(t.ends);
      figures[p].rtt.push(...(await rtt(master, paths[p].session)));
    }
  }
  const row = (p: "same" | "cross") => {
    const f = figures[p];
    const cpu = f.cpu[0]!.map((_, i) => pct(f.cpu.map((c) => c[i]!), 50));
    return { mbps: pct(f.mbps, 50), cpu, rtt50: pct(f.rtt, 50), rtt95: pct(f.rtt, 95) };
  };
  const same = row("same");
  const cross = row("cross");
  console.log(`cross-relay session vs same-relay session (${ROUNDS} alternating turns of ${(BYTES / 1048576).toFixed(0)} MiB, ${PINGS} echoes of 64 B per turn; real TLS on loopback, 2 relay processes)`);
  console.log(`  path        throughput   RTT median   RTT p95    relay CPU per GB moved`);
  for (const [name, r] of [["same-relay", same], ["cross-relay", cross]] as const) {
    const cpu = r.cpu.map((c, i) => `${["A", "B"][i]} ${c.toFixed(2)} s`).join(", ");
    console.log(`  ${name.padEnd(11)} ${r.mbps.toFixed(0).padStart(6)} MB/s  ${r.rtt50.toFixed(3).padStart(7)} ms  ${r.rtt95.toFixed(3).padStart(7)} ms   ${cpu}`);
  }
  const ratio = cross.mbps / same.mbps;
  console.log(`  cross/same throughput: ${ratio.toFixed(2)}× (goal ≥ 0.8×: ${ratio >= 0.8 ? "met" : "NOT met"}); RTT median +${(cross.rtt50 - same.rtt50).toFixed(3)} ms for the extra hop`);
  console.log(`  per-turn throughput, MB/s: same ${figures.same.mbps.map((x) => x.toFixed(0)).join(", ")}; cross ${figures.cross.mbps.map((x) => x.toFixed(0)).join(", ")}`);
  // The master and the device both live in this process: while it is busy all the time, it is
  // the limit of both paths; when it idles on the cross path, the extra hop is.
  console.log(`  this process (master + device + hashing), % of a core: same ${figures.same.ends.map((x) => (x * 100).toFixed(0)).join(", ")}; cross ${figures.cross.ends.map((x) => (x * 100).toFixed(0)).join(", ")}`);
}
