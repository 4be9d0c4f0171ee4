// Probes that leave through one uplink: a TCP connect to each tracking target, bound to the
// uplink's own source address. The source rule that the route adapter installs
// (`from ADDR lookup TABLE`) sends such a packet through that uplink's gateway even while
// another uplink carries the default route, so a standby link is really tested.
//
// Only a completed handshake counts. A link that is up but black-holed (DNS answers, the
// relay port is dropped) therefore fails its probes. Each round sends `count` staggered
// attempts per target (mwan3's `count`): one lost SYN on a lossy link does not fail a round.
import { Socket } from "node:net";
import { lookup } from "node:dns/promises";
import type { HostPort } from "../netaddr.ts";
import { formatHostPort } from "../netaddr.ts";
import { systemClock, type Clock } from "../clock.ts";

export interface TargetResult {
  target: string;
  ok: boolean;
  rttMs?: number;
  error?: string;
}

export interface RoundResult {
  ok: boolean;
  /** Fastest successful connect in the round. */
  rttMs?: number;
  targets: TargetResult[];
}

export interface ProbeOptions {
  timeoutMs: number;
  count: number;
  /** Timeouts, stagger and round-trip times on its monotonic clock; default the system's. */
  clock?: Clock;
}

/** Probes one uplink: `source` is its IPv4 address. */
export type Prober = (source: string, targets: readonly HostPort[], opts: ProbeOptions) => Promise<RoundResult>;

/** Gap between the staggered attempts of one round, as a share of the timeout. */
const STAGGER_SHARE = 0.25;

/** One TCP connect from `source` to host:port; resolves with the connect time or an error. */
export function tcpConnect(source: string, host: string, port: number, timeoutMs: number, clock: Clock = systemClock): Promise<{ ok: boolean; rttMs?: number; error?: string }> {
  return new Promise((resolve) => {
    const t0 = clock.now();
    const s = new Socket();
    let done = false;
    const finish = (r: { ok: boolean; rttMs?: number; error?: string }) => {
      if (done) return;
      done = true;
      clock.clearTimeout(timer);
      // A completed handshake ends with a RST, not a FIN exchange: 4 packets a probe instead
      // of 6 (SYN, SYN-ACK, ACK, RST: about 210 IP bytes), which a metered uplink pays for.
      if (r.ok && typeof s.resetAndDestroy === "function") s.resetAndDestroy();
      else s.destroy();
      resolve(r);
    };
    const timer = clock.setTimeout(() => finish({ ok: false, error: "timeout" }), timeoutMs);
    s.once("connect", () => finish({ ok: true, rttMs: clock.now() - t0 }));
    s.once("error", (e: NodeJS.ErrnoException) => finish({ ok: false, error: e.code ?? e.message }));
    s.connect({ host, port, localAddress: source });
  });
}

async function resolveHost(host: string): Promise<string> {
  if (/^\d+\.\d+\.\d+\.\d+$/.test(host)) return host;
  return (await lookup(host, { family: 4 })).address;
}

export const tcpProber: Prober = async (source, targets, opts) => {
  const count = Math.max(1, opts.count);
  const clock = opts.clock ?? systemClock;
  const sleep = (ms: number) => new Promise<void>((r) => clock.setTimeout(r, ms));
  const stagger = (opts.timeoutMs * STAGGER_SHARE) / count;
  const results = await Promise.all(
    targets.map(async (t): Promise<TargetResult> => {
      const name = formatHostPort(t);
      let addr: string;
      try {
        addr = await resolveHost(t.host);
      } catch (e) {
        return { target: name, ok: false, error: `resolve: ${(e as Error).message}` };
      }
      const t0 = clock.now();
      let answered = false;
      const attempts = Array.from({ length: count }, async (_, i) => {
        if (i > 0) await sleep(i * stagger);
        if (answered) return { ok: false, error: "not needed" };
        const left = opts.timeoutMs - (clock.now() - t0);
        if (left <= 0) return { ok: false, error: "timeout" };
        const r = await tcpConnect(source, addr, t.port, left, clock);
        return r.ok ? { ok: true, rttMs: r.rttMs } : r;
      });
      // Success as soon as any attempt connects; failure once all have failed.
      const first = await new Promise<{ ok: boolean; rttMs?: number; error?: string }>((resolve) => {
        let failed = 0;
        let lastErr = "timeout";
        for (const a of attempts)
          void a.then((r) => {
            if (r.ok) {
              answered = true;
              resolve(r);
            }
            else if (++failed === count) resolve({ ok: false, error: r.error ?? lastErr });
            else lastErr = r.error ?? lastErr;
          });
      });
      return { target: name, ...first };
    }),
  );
  const good = results.filter((r) => r.ok);
  return { ok: good.length > 0, rttMs: good.length ? Math.min(...good.map((r) => r.rttMs!)) : undefined, targets: results };
};
