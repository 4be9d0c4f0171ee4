// The load of `make soak` (bench/soak.ts), in a process of its own so its CPU and memory are
// not the relay's: idle onsite devices that churn (leave and come back), and pairs of a master
// and an onsite device moving data through the relay in sessions that open and close. Every
// connection speaks the real protocol over real TLS 1.3 with its own certificate (signed here
// with one shared RSA key, as bench/lib/idle-connector.ts does: a key per device would take
// minutes and changes nothing on the relay's side).
//
// argv[2]: JSON { relay: "host:port", pki: CA dir, devices, pairs, churnEveryMs, churnCount,
// pairBytes, pairPauseMs, roundsPerSession }. Prints one JSON line per report; reads "report"
// and "stop" lines on stdin (stop: everything closes, a last report, exit).
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { caPaths, generateKeyPair, parseCa, type CaMaterial, type KeyPair } from "../../src/pki.ts";
import { Connection, RemoteError, type Stream } from "../../src/transport/mux.ts";
import { Msg } from "../../src/transport/messages.ts";
import { dialTls, type TlsMaterial } from "../../src/transport/tls.ts";
import { request } from "../../src/transport/typed.ts";
import { helloWelcome, issueDevice } from "./bench-device.ts";

const o = JSON.parse(process.argv[2]!) as {
  relay: string;
  pki: string;
  devices: number;
  pairs: number;
  churnEveryMs: number;
  churnCount: number;
  pairBytes: number;
  pairPauseMs: number;
  roundsPerSession: number;
};
const [host, portText] = o.relay.split(":") as [string, string];
const port = Number(portText);

const stats = {
  devicesUp: 0,
  connects: 0,
  connectFailures: 0,
  lastConnectError: "",
  churned: 0,
  unexpectedCloses: 0,
  bytesCompared: 0,
  mismatches: 0,
  rounds: 0,
  streamsFailed: 0,
  lastStreamError: "",
  sessionsOpened: 0,
  sessionsEnded: 0,
  sessionsLost: 0,
  sessionOpenFailures: 0,
  lastSessionError: "",
  unhandled: 0,
  lastUnhandled: "",
};
process.on("unhandledRejection", (e) => {
  stats.unhandled++;
  stats.lastUnhandled = String((e as Error)?.stack ?? e).slice(0, 500);
});

// ---- certificates -----------------------------------------------------------------------------

const p = caPaths(o.pki);
const caPem = readFileSync(p.cert, "utf8");
const caKeyPem = readFileSync(p.key, "utf8");
const ca: CaMaterial = parseCa(caPem, caKeyPem);
const key: KeyPair = generateKeyPair();
const issued = new Map<string, TlsMaterial>();

function issue(role: "onsite" | "master", id: string): TlsMaterial {
  const had = issued.get(id);
  if (had) return had;
  const m = issueDevice({ ca, caPem, caKeyPem, key }, role, id, 7);
  issued.set(id, m);
  return m;
}

/** Dials, says HELLO, waits for the WELCOME. */
async function dial(role: "onsite" | "master", id: string, onStream?: (s: Stream) => void, setup?: (c: Connection) => void): Promise<Connection> {
  const link = await dialTls({ host, port, tls: issue(role, id), timeout: 15_000 });
  const conn = new Connection(link, { side: "dialer", maxControlIn: 16 * 1024 * 1024, onStream });
  setup?.(conn);
  await helloWelcome(conn, role, id, "soak");
  if (role === "onsite") conn.send(Msg.INVENTORY, { hostname: id, location: "soak", agent: "soak", uptime: 1, uplink: "lo" });
  conn.startKeepalive();
  return conn;
}

let stopping = false;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- idle devices that churn ------------------------------------------------------------------

const idle = new Map<number, Connection>();
/** Devices being closed on purpose (churn, stop): their close is no surprise. */
const leaving = new Set<Connection>();

async function bringUp(i: number): Promise<void> {
  for (let tries = 0; tries < 5 && !stopping; tries++) {
    try {
      const c = await dial("onsite", `soak-dev-${i}`);
      stats.connects++;
      idle.set(i, c);
      stats.devicesUp++;
      void c.wait().then((why) => {
        stats.devicesUp--;
        if (idle.get(i) === c) idle.delete(i);
        if (!leaving.delete(c) && !stopping) {
          stats.unexpectedCloses++;
          stats.lastConnectError = `soak-dev-${i} closed: ${why.message}`;
          void bringUp(i);
        }
      });
      return;
    } catch (e) {
      stats.connectFailures++;
      stats.lastConnectError = `soak-dev-${i}: ${(e as Error).message}`;
      await sleep(500 * (tries + 1));
    }
  }
}

async function rampUp(): Promise<void> {
  // Under the relay's unauthenticated-per-source cap (32): every device dials from 127.0.0.1.
  const batch = 25;
  for (let i = 0; i < o.devices && !stopping; i += batch) await Promise.all(Array.from({ length: Math.min(batch, o.devices - i) }, (_, k) => bringUp(i + k)));
}

async function churn(): Promise<void> {
  while (!stopping) {
    await sleep(o.churnEveryMs);
    if (stopping) break;
    const ids = [...idle.keys()].sort(() => Math.random() - 0.5).slice(0, o.churnCount);
    for (const i of ids) {
      const c = idle.get(i)!;
      leaving.add(c);
      idle.delete(i);
      c.close(0, "soak churn: leaving for a moment");
      stats.churned++;
      void sleep(1000 + Math.random() * 3000).then(() => (stopping ? undefined : bringUp(i)));
    }
  }
}

// ---- pairs moving data ------------------------------------------------------------------------

/** The onsite end: accepts every offer and echoes every stream, with backpressure. */
const acceptOffers = (conn: Connection) => void conn.handle(Msg.SESSION_OFFER, () => ({}));
function echo(s: Stream): void {
  {
    s.ondata = (chunk) => {
      if (!s.write(chunk)) {
        s.pause();
        s.ondrain = () => s.resume();
      }
    };
    s.onend = () => s.end();
    s.accept();
    s.resume();
  }
}

function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** One round: a stream through the relay, `bytes` out, the echo back, both hashed. */
function round(master: Connection, session: string, target: string, data: Uint8Array): Promise<void> {
  return new Promise((resolve) => {
    const s = master.openStream({ session, target });
    const got = createHash("sha256");
    let n = 0;
    const done = (err: string | null) => {
      if (err) {
        stats.streamsFailed++;
        stats.lastStreamError = err;
      }
      resolve();
    };
    s.ondata = (c) => {
      got.update(c);
      n += c.length;
    };
    s.onend = () => {
      const want = createHash("sha256").update(data).digest("hex");
      if (n !== data.length || got.digest("hex") !== want) stats.mismatches++;
      else stats.bytesCompared += n;
    };
    s.onclose = (err) => done(err ? `stream: ${err.message}` : null);
    s.resume();
    let at = 0;
    const pump = () => {
      while (at < data.length) {
        const piece = data.subarray(at, Math.min(data.length, at + 64 * 1024));
        at += piece.length;
        if (!s.write(piece)) {
          s.ondrain = pump;
          return;
        }
      }
      s.end();
    };
    pump();
  });
}

async function pair(k: number): Promise<void> {
  const site = `soak-site-${k}`;
  const tech = `soak-master-${k}`;
  const target = "127.0.0.1:7";
  const data = pattern(o.pairBytes, k + 1);
  let onsite: Connection | null = null;
  let master: Connection | null = null;
  const mine = new Set<string>();
  while (!stopping) {
    try {
      if (!onsite || onsite.closed) onsite = await dial("onsite", site, echo, acceptOffers);
      if (!master || master.closed) {
        master = await dial("master", tech);
        master.on(Msg.SESSION_CLOSE, (b) => {
          // A session this side did not end: lost.
          if (!mine.delete(b.session as string)) stats.sessionsLost++;
        });
      }
      let info;
      try {
        info = await request(master, Msg.SESSION_OPEN, { onsite: site, targets: [target], ttl: null, session: null }, 30_000);
      } catch (e) {
        stats.sessionOpenFailures++;
        stats.lastSessionError = `${site}: ${(e as Error).message}`;
        await sleep(1000);
        continue;
      }
      stats.sessionsOpened++;
      for (let r = 0; r < o.roundsPerSession && !stopping && !master.closed; r++) {
        await round(master, info.session, target, data);
        stats.rounds++;
        await sleep(o.pairPauseMs);
      }
      if (!master.closed) {
        mine.add(info.session);
        await request(master, Msg.SESSION_END, { session: info.session, reason: "soak: next session" }).catch((e: RemoteError) => {
          mine.delete(info.session);
          stats.lastSessionError = `end ${info.session}: ${e.message}`;
        });
        stats.sessionsEnded++;
      }
    } catch (e) {
      stats.lastSessionError = `${site}: ${(e as Error).message}`;
      await sleep(1000);
    }
  }
  for (const c of [master, onsite]) if (c && !c.closed) await c.closeAndWait(0, "soak done");
}

// ---- control ----------------------------------------------------------------------------------

const report = (kind: string) => process.stdout.write(JSON.stringify({ kind, ...stats, rss: process.memoryUsage().rss }) + "\n");

const pairs = (async () => {
  await rampUp();
  report("ramped");
  void churn();
  await Promise.all(Array.from({ length: o.pairs }, (_, k) => pair(k)));
})();

let buf = "";
process.stdin.on("data", async (d) => {
  buf += d.toString();
  while (buf.includes("\n")) {
    const line = buf.slice(0, buf.indexOf("\n"));
    buf = buf.slice(buf.indexOf("\n") + 1);
    if (line === "report") report("report");
    if (line === "stop") {
      stopping = true;
      await Promise.race([pairs, sleep(30_000)]);
      await Promise.all([...idle.values()].map((c) => {
        leaving.add(c);
        return c.closeAndWait(0, "soak done");
      }));
      report("final");
      process.exit(0);
    }
  }
});
