// Idle capacity: how much a relay pays for devices that are connected and doing nothing.
// A separate load process (this file run with --child, open-files limit raised with prlimit)
// opens idle authenticated device connections through a *connector* module, in bounded
// batches, up to each count in turn (1,000 then 5,000); once the relay holds them and the level
// has settled we sample the relay's RSS, the sockets it really holds, and its CPU over an idle
// window.
//
// The connector speaks the real protocol; the relay's owner supplies it as a module that
// exports `connector: IdleConnector` (default: bench/lib/idle-connector.ts). One connection is
// one onsite device with its own id, authenticated, then idle (keepalives only).
//
//   parent (bench)                          child (bun bench/lib/idle.ts --child MODULE CTX)
//   ──"prepare MAX"─────────────────────▶   connector.prepare(ctx, 0, MAX)
//   ◀─{"opened":0,"failed":0}───────────
//   ──"open N"──────────────────────────▶   opens until N are up (batches of `batch`)
//   ◀─{"opened":N,"failed":F,"error":...}──
//   ──"exit"────────────────────────────▶   closes everything, exits
import { existsSync } from "node:fs";
import { join } from "node:path";
import { cpuSeconds, nofileArgv, processAgeSeconds, rssKiB, socketCount, spawnChild, type Child } from "../../test/helpers/proc.ts";
import { formatTable } from "../../src/table.ts";

export const IDLE_CONNECTOR_MODULE = join(import.meta.dir, "idle-connector.ts");
/**
 * Connections opened at once. All come from 127.0.0.1, and a relay caps connections that
 * have not finished TLS + HELLO per source address (ours: 32, src/transport/policy.ts):
 * a batch above that measures the cap, not capacity.
 */
export const DEFAULT_BATCH = 24;
export const DEFAULT_IDLE_MS = 10_000;
/** After a level is reached: let handshakes, GC and lazy allocations settle before sampling. */
export const SETTLE_MS = 3_000;
/**
 * The baseline is taken only once the relay is this old: a daemon drops the executable's code
 * pages from its RSS 10 s after it started (TEXT_TRIM_DELAY_MS in src/roles/daemon.ts), and a
 * baseline taken before that is ~25 MiB too high, which makes the per-device figure look
 * smaller than it is.
 */
export const RELAY_SETTLED_AGE_MS = 13_000;
/** The longest one level may take to open (5,000 TLS handshakes on 2 cores fit well inside). */
const LEVEL_TIMEOUT_MS = 300_000;
/**
 * The load process counts a connection open when its side is; the relay's accept can come
 * later (a busy machine, a deep backlog). Sampling waits, up to this long, until the relay
 * holds at least one socket per opened connection; a relay that never does is sampled anyway
 * and shows the shortfall in its socket count.
 */
export const HOLD_TIMEOUT_MS = 30_000;
/** The longest prepare may take (signing 5,000 certificates in JavaScript). */
const PREPARE_TIMEOUT_MS = 600_000;
/** The load process holds one fd per connection and a few more. */
const CHILD_NOFILE = 65_536;

/** What the connector gets: where the relay is and a scratch dir (e.g. for issued bundles). */
export interface IdleContext {
  relay: string;
  workDir: string;
  pkiDir: string;
  [key: string]: unknown;
}

export interface IdleConnection {
  close(): void | Promise<void>;
}

export interface IdleConnector {
  /**
   * Called once, before the first connection opens, for devices [from, to) (all levels): do
   * the slow work here (issuing certificates). Work done later blocks the event loop that
   * answers the keepalives of the connections already open, and the relay rightly drops them.
   */
  prepare?(ctx: IdleContext, from: number, to: number): Promise<void>;
  /** Opens device `index` (0-based, unique per connection), resolved once authenticated. */
  open(ctx: IdleContext, index: number): Promise<IdleConnection>;
}

export interface IdleLevel {
  count: number;
  opened: number;
  failed: number;
  firstError?: string;
  relayRssKiB: number;
  /** (RSS at this level - RSS with no device) / opened. */
  rssPerConnectionKiB: number;
  /** Sockets the relay process holds at this level (its listener and control socket included). */
  relaySockets: number;
  /** Relay CPU while idle at this level, percent of one core. */
  idleCpuPercent: number;
  /** Devices the relay itself lists as online (IdleOptions.listed), if asked. */
  listed?: number;
  /** Why asking the relay for its list failed (the other figures still stand). */
  listedError?: string;
}

export interface IdleResult {
  baselineRssKiB: number;
  baselineSockets: number;
  levels: IdleLevel[];
}

/** Pure: the figures of one level from the samples taken. */
export function levelFigures(s: { count: number; opened: number; failed: number; firstError?: string; baselineRssKiB: number; rssKiB: number; sockets: number; cpu0: number; cpu1: number; idleMs: number }): IdleLevel {
  return {
    count: s.count,
    opened: s.opened,
    failed: s.failed,
    firstError: s.firstError,
    relayRssKiB: s.rssKiB,
    rssPerConnectionKiB: s.opened > 0 ? (s.rssKiB - s.baselineRssKiB) / s.opened : NaN,
    relaySockets: s.sockets,
    idleCpuPercent: ((s.cpu1 - s.cpu0) / (s.idleMs / 1000)) * 100,
  };
}

export interface IdleOptions {
  relayPid: number;
  connectorModule: string;
  context: IdleContext;
  counts?: number[];
  batch?: number;
  idleMs?: number;
  settleMs?: number;
  /** How long to wait for the relay to hold the opened connections (default HOLD_TIMEOUT_MS). */
  holdTimeoutMs?: number;
  /** The relay's age before its baseline is sampled (default RELAY_SETTLED_AGE_MS). */
  minRelayAgeMs?: number;
  /** How many devices the relay reports online (e.g. via `agent devices --json`): proves they authenticated. */
  listed?: () => Promise<number>;
  /** Progress lines (preparation and each level take minutes at 5,000). */
  log?: (line: string) => void;
}

/** Opens the levels in turn from a separate load process and samples the relay at each. */
export async function measureIdleCapacity(o: IdleOptions): Promise<IdleResult> {
  if (!existsSync(o.connectorModule)) {
    throw new Error(`no idle connector: ${o.connectorModule} is missing (it must export \`connector: IdleConnector\`, see bench/lib/idle.ts)`);
  }
  const counts = o.counts ?? [1000, 5000];
  const settleMs = o.settleMs ?? SETTLE_MS;
  const idleMs = o.idleMs ?? DEFAULT_IDLE_MS;
  const load = spawnLoad(o.connectorModule, o.context, o.batch ?? DEFAULT_BATCH);
  try {
    const log = o.log ?? (() => {});
    let t = performance.now();
    const took = () => `${((performance.now() - t) / 1000).toFixed(1)} s`;
    const prep = await load.request(`prepare ${Math.max(...counts)}`, PREPARE_TIMEOUT_MS);
    if (prep.error) throw new Error(`idle connector prepare failed: ${prep.error}`);
    log(`idle: connector prepared ${Math.max(...counts)} devices in ${took()}`);
    await Bun.sleep(settleMs);
    const age = processAgeSeconds(o.relayPid) * 1000;
    const minAge = o.minRelayAgeMs ?? RELAY_SETTLED_AGE_MS;
    if (age < minAge) {
      log(`idle: waiting ${((minAge - age) / 1000).toFixed(1)} s more for the relay's start-up trim before the baseline`);
      await Bun.sleep(minAge - age);
    }
    const baselineRssKiB = rssKiB(o.relayPid);
    const baselineSockets = socketCount(o.relayPid);
    const levels: IdleLevel[] = [];
    for (const count of counts) {
      t = performance.now();
      const r = await load.request(`open ${count}`, LEVEL_TIMEOUT_MS);
      log(`idle: ${r.opened} open (${r.failed} failed) after ${took()}`);
      const held = await waitHeld(o.relayPid, baselineSockets + r.opened, o.holdTimeoutMs ?? HOLD_TIMEOUT_MS);
      if (!held) log(`idle: the relay holds ${socketCount(o.relayPid) - baselineSockets} of ${r.opened} opened connections after ${took()}`);
      await Bun.sleep(settleMs);
      const cpu0 = cpuSeconds(o.relayPid);
      await Bun.sleep(idleMs);
      const cpu1 = cpuSeconds(o.relayPid);
      const level = levelFigures({ count, opened: r.opened, failed: r.failed, firstError: r.error, baselineRssKiB, rssKiB: rssKiB(o.relayPid), sockets: socketCount(o.relayPid), cpu0, cpu1, idleMs });
      if (o.listed) {
        try {
          level.listed = await o.listed();
        } catch (e) {
          level.listedError = (e as Error).message.split("\n")[0];
        }
      }
      levels.push(level);
    }
    return { baselineRssKiB, baselineSockets, levels };
  } finally {
    await load.close();
  }
}

/** Waits until `pid` holds at least `sockets` sockets; false when `timeoutMs` passed first. */
async function waitHeld(pid: number, sockets: number, timeoutMs: number): Promise<boolean> {
  const until = performance.now() + timeoutMs;
  for (;;) {
    if (socketCount(pid) >= sockets) return true;
    if (performance.now() > until) return false;
    await Bun.sleep(20);
  }
}

export function idleReport(r: IdleResult): string {
  const rows = r.levels.map((l) => [
    String(l.count),
    `${l.opened}${l.failed ? ` (${l.failed} failed: ${l.firstError ?? "?"})` : ""}`,
    String(l.relaySockets - r.baselineSockets),
    (l.relayRssKiB / 1024).toFixed(1),
    l.rssPerConnectionKiB.toFixed(1),
    l.idleCpuPercent.toFixed(2),
    l.listed !== undefined ? String(l.listed) : l.listedError ? `error: ${l.listedError}` : "-",
  ]);
  return (
    `idle capacity (relay baseline ${(r.baselineRssKiB / 1024).toFixed(1)} MiB, goal <= 32 KiB per device)\n` +
    formatTable(["devices", "opened", "relay sockets +", "relay RSS MiB", "KiB/device", "idle CPU %", "relay lists online"], rows)
  );
}

// ---------------------------------------------------------------- the load process

interface LoadReply {
  opened: number;
  failed: number;
  error?: string;
}

function spawnLoad(module: string, ctx: IdleContext, batch: number) {
  const argv = [process.execPath, import.meta.path, "--child", module, JSON.stringify(ctx), String(batch)];
  const child: Child = spawnChild("idle load", nofileArgv(argv, CHILD_NOFILE), { stdin: true });
  return {
    async request(line: string, timeoutMs: number): Promise<LoadReply> {
      let seen = "";
      const off = child.onOutput((t) => void (seen += t));
      try {
        child.write(`${line}\n`);
        const until = Date.now() + timeoutMs;
        for (;;) {
          const m = /^REPLY (.*)$/m.exec(seen);
          if (m) return JSON.parse(m[1]!) as LoadReply;
          if (!child.running) throw child.failure(`idle load process exited during "${line}"`);
          if (Date.now() > until) throw child.failure(`idle load process did not finish "${line}" within ${timeoutMs} ms`);
          await Bun.sleep(50);
        }
      } finally {
        off();
      }
    },
    async close(): Promise<void> {
      if (child.running) child.write("exit\n");
      const t = setTimeout(() => void child.stop(), 30_000);
      await child.exited;
      clearTimeout(t);
      await child.stop();
    },
  };
}

async function childMain(module: string, ctxJson: string, batchText: string): Promise<void> {
  const { connector } = (await import(module)) as { connector?: IdleConnector };
  if (!connector || typeof connector.open !== "function") throw new Error(`${module} does not export \`connector\` with an open(ctx, index) function`);
  const ctx = JSON.parse(ctxJson) as IdleContext;
  const batch = Math.max(1, Number(batchText) || DEFAULT_BATCH);
  const open: IdleConnection[] = [];
  let failed = 0;
  let error: string | undefined;
  const reply = (r: LoadReply) => process.stdout.write(`REPLY ${JSON.stringify(r)}\n`);
  for await (const line of console) {
    const cmd = line.trim();
    if (cmd === "exit") break;
    const prep = /^prepare (\d+)$/.exec(cmd);
    if (prep) {
      try {
        await connector.prepare?.(ctx, 0, Number(prep[1]));
        reply({ opened: open.length, failed });
      } catch (e) {
        reply({ opened: open.length, failed, error: (e as Error).message });
      }
      continue;
    }
    const m = /^open (\d+)$/.exec(cmd);
    if (!m) {
      reply({ opened: open.length, failed, error: `unknown command ${JSON.stringify(cmd)}` });
      continue;
    }
    const target = Number(m[1]);
    // Each index is used once, also after a failure: a retried id would replace a live one.
    let next = open.length + failed;
    while (open.length < target) {
      const n = Math.min(batch, target - open.length);
      const results = await Promise.allSettled(Array.from({ length: n }, () => connector.open(ctx, next++)));
      for (const r of results) {
        if (r.status === "fulfilled") open.push(r.value);
        else {
          failed++;
          error ??= (r.reason as Error)?.message ?? String(r.reason);
        }
      }
      // Bounded: a relay refusing everything must not keep us trying forever.
      if (failed > target) break;
    }
    reply({ opened: open.length, failed, error });
  }
  await Promise.allSettled(open.map((c) => c.close()));
  process.exit(0);
}

if (import.meta.main && process.argv[2] === "--child") {
  const [module, ctx, batch] = process.argv.slice(3);
  await childMain(module!, ctx!, batch ?? "").catch((e: Error) => {
    process.stderr.write(`idle load: ${e.stack ?? e.message}\n`);
    process.exit(1);
  });
}
