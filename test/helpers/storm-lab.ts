// Issue 17's storm, shared by test/relay-storm.test.ts (short) and bench/storm.bench.ts (the
// full 60 s): a namespace of our own with many addresses on its loopback (the relay's,
// the devices', the strangers'), the real relay process in it, a swarm of real devices
// (test/helpers/device-swarm.ts) connected first, then a storm of strangers
// (test/helpers/storm.ts: silent TCP connections and certificate-less TLS handshakes from
// many addresses). Mid-storm every device's connection is cut; the figure is how long each
// takes to be back (its own reconnect loop, through the storm).
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BUN } from "./cli.ts";
import { Fleet } from "./fleet.ts";
import { createNamespace, deleteNamespace, nsArgv, nsName, sh } from "./netns.ts";
import { cpuSeconds } from "./proc.ts";
import { waitFor } from "./wait.ts";

export const RELAY_IP = "10.77.0.1";
const DEVICE_PREFIX = "10.77.1.";
const STRANGER_PREFIX = "10.77.2.";

export interface StormOptions {
  devices: number;
  strangers: number;
  /** The storm's length; the devices are cut `dropAfterMs` into it. */
  stormMs: number;
  dropAfterMs: number;
  /** New connections a second of each kind, and the storm's bound on open sockets. */
  silentRate: number;
  tlsRate: number;
  maxOpen: number;
  /** Stop waiting for the devices this long after the cut. */
  backWithinMs: number;
  log?: (line: string) => void;
}

export interface StormResult {
  devices: number;
  /** ms from the cut to up again, per device (null: not back). */
  back: (number | null)[];
  storm: { silent: number; handshakes: number; connected: number; tlsDone: number; refused: number; skipped: number; ms: number };
  /** Relay CPU over the storm, share of one core. */
  relayCpu: number;
  admission: { dropped: Record<string, number>; sources: number; held_off: number };
  /** Lines the relay wrote to stderr / the audit file during the storm. */
  refusalLogLines: number;
  summaryLines: number;
  auditLines: number;
}

class Lines {
  private buf = "";
  private waiters: ((l: string) => void)[] = [];
  private queue: string[] = [];
  constructor(stream: ReadableStream<Uint8Array>) {
    void (async () => {
      const dec = new TextDecoder();
      for await (const c of stream) {
        this.buf += dec.decode(c, { stream: true });
        let nl;
        while ((nl = this.buf.indexOf("\n")) >= 0) {
          const l = this.buf.slice(0, nl);
          this.buf = this.buf.slice(nl + 1);
          const w = this.waiters.shift();
          if (w) w(l);
          else this.queue.push(l);
        }
      }
    })();
  }
  next(ms: number, what: string): Promise<string> {
    const q = this.queue.shift();
    if (q !== undefined) return Promise.resolve(q);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no ${what} within ${ms / 1000} s`)), ms);
      this.waiters.push((l) => {
        clearTimeout(t);
        resolve(l);
      });
    });
  }
  drain(): string[] {
    return this.queue.splice(0);
  }
}

export async function runStorm(o: StormOptions): Promise<StormResult> {
  const log = o.log ?? (() => {});
  const ns = nsName("storm");
  const work = mkdtempSync(join(tmpdir(), "agent-storm-"));
  const fleet = await Fleet.create();
  const procs: ReturnType<typeof Bun.spawn>[] = [];
  try {
    await createNamespace(ns);
    const batch = [`addr add ${RELAY_IP}/32 dev lo`];
    for (let i = 1; i <= o.devices; i++) batch.push(`addr add ${DEVICE_PREFIX}${i}/32 dev lo`);
    for (let i = 1; i <= o.strangers; i++) batch.push(`addr add ${STRANGER_PREFIX}${i}/32 dev lo`);
    if (o.devices > 250 || o.strangers > 250) throw new Error("at most 250 devices and 250 strangers (one /24 each)");
    const batchFile = join(work, "addrs.batch");
    writeFileSync(batchFile, batch.join("\n") + "\n");
    await sh(["ip", "-n", ns, "-batch", batchFile]);

    const bundle = await fleet.issue("relay", "relay-storm", ["--host", RELAY_IP]);
    const relay = await fleet.start("relay", "relay-storm", ["--listen", `${RELAY_IP}:0`], bundle, ns);
    const port = ((await fleet.status(relay)).relay as { port: number }).port;
    log(`relay in ${ns} on ${RELAY_IP}:${port}`);

    const swarm = Bun.spawn(nsArgv(ns, BUN, join(import.meta.dir, "device-swarm.ts"), fleet.ca, RELAY_IP, String(port), String(o.devices), DEVICE_PREFIX, "1"), { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
    procs.push(swarm);
    const swarmOut = new Lines(swarm.stdout);
    const tell = async (cmd: string) => {
      swarm.stdin.write(cmd + "\n");
      await swarm.stdin.flush();
    };
    await tell("up");
    JSON.parse(await swarmOut.next(120_000, `all ${o.devices} devices up before the storm`));
    log(`${o.devices} devices up`);

    const logBefore = relay.log().length;
    const audit = join(fleet.dir, "state-relay-storm", "refusals.log");
    const auditBefore = existsSync(audit) ? readFileSync(audit, "utf8").split("\n").length - 1 : 0;
    const cpu0 = cpuSeconds(relay.proc.pid);
    const t0 = performance.now();
    const storm = Bun.spawn(nsArgv(ns, BUN, join(import.meta.dir, "storm.ts"), RELAY_IP, String(port), STRANGER_PREFIX, "1", String(o.strangers), String(o.stormMs), String(o.silentRate), String(o.tlsRate), String(o.maxOpen)), { stdout: "pipe", stderr: "inherit" });
    procs.push(storm);
    const stormOut = new Lines(storm.stdout);
    await Bun.sleep(o.dropAfterMs); // the storm's own course: the cut comes this far into it
    await tell("drop");
    log(`cut every device's connection ${o.dropAfterMs / 1000} s into the storm`);
    let back: (number | null)[] = new Array(o.devices).fill(null);
    const dropAt = performance.now();
    await waitFor(
      async () => {
        for (const l of swarmOut.drain()) back = (JSON.parse(l) as { back: (number | null)[] }).back;
        return back.every((b) => b !== null) || performance.now() - dropAt > o.backWithinMs;
      },
      o.backWithinMs + 10_000,
      "the devices to be back (or the window to pass)",
    );
    log(`${back.filter((b) => b !== null).length} of ${o.devices} back`);
    const stormStats = JSON.parse(await stormOut.next(o.stormMs + 60_000, "the storm's counts")) as StormResult["storm"];
    const relayCpu = (cpuSeconds(relay.proc.pid) - cpu0) / ((performance.now() - t0) / 1000);
    const st = (await fleet.status(relay)).relay as { admission: StormResult["admission"] };
    const text = relay.log().slice(logBefore);
    const auditAfter = existsSync(audit) ? readFileSync(audit, "utf8").split("\n").length - 1 : 0;
    await tell("exit");
    await Promise.race([swarm.exited, Bun.sleep(10_000)]);
    return {
      devices: o.devices,
      back,
      storm: stormStats,
      relayCpu,
      admission: st.admission,
      refusalLogLines: text.split("\n").filter((l) => l.includes("refused ")).length,
      summaryLines: text.split("\n").filter((l) => /refused \d+ more connection\(s\) from/.test(l)).length,
      auditLines: auditAfter - auditBefore,
    };
  } finally {
    for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
    await fleet.close();
    await deleteNamespace(ns);
    rmSync(work, { recursive: true, force: true });
  }
}

/** The devices back within `ms`, and the percentiles of the time they took. Pure. */
export function backFigures(back: readonly (number | null)[], ms: number): { within: number; share: number; p50: number | null; p95: number | null; max: number | null } {
  const done = back.filter((b): b is number => b !== null).sort((a, b) => a - b);
  const within = done.filter((b) => b <= ms).length;
  const at = (q: number) => (done.length ? done[Math.min(done.length - 1, Math.ceil(q * back.length) - 1)] ?? null : null);
  return { within, share: within / back.length, p50: at(0.5), p95: done.length >= Math.ceil(0.95 * back.length) ? at(0.95) : null, max: done.length === back.length ? done.at(-1)! : null };
}
