// The raw-splice path of the transport benchmark: the ceiling of Bun itself through the same
// two TLS legs as ours. Three Bun processes (bench/transport-splice-hop.ts), each a bare
// `socket.write` copy with pause/resume backpressure:
//   entry → [master hop: TCP in, TLS out] ═TLS 1.3═ [relay hop: TLS in, TLS out] ═TLS 1.3═
//   [onsite hop: TLS in, TCP out] → target
// Mutual authentication with RSA-2048 certificates (the size our PKI issues), TCP_NODELAY on
// every socket, one TLS connection per TCP connection. No framing, no credit, no streams: what
// ours adds on top of this is what the benchmark's ratios to this row measure.
import { join } from "node:path";
import { BUN } from "../test/helpers/cli.ts";
import { freePort, waitForListen } from "../test/helpers/proc.ts";
import type { Path } from "./lib/path.ts";
import { makeTlsFiles } from "./lib/peers.ts";
import { inScratch } from "./lib/scratch.ts";

const START_MS = 15_000;
const HOP = join(import.meta.dir, "transport-splice-hop.ts");

/** Extra Bun arguments for every hop (e.g. BENCH_SPLICE_BUN_ARGS=--cpu-prof for a profile). */
function bunArgs(): string[] {
  return (process.env.BENCH_SPLICE_BUN_ARGS ?? "").split(/\s+/).filter(Boolean);
}

export async function startSplicePath(targets: readonly number[]): Promise<Path> {
  return inScratch("agent-bench-splice-", async ({ kids, dir, stop }) => {
    const tls = await makeTlsFiles(dir);
    const ports = async () => Promise.all(targets.map(() => freePort()));
    const [entries, r1, r2] = [await ports(), await ports(), await ports()];
    const map = (from: number[], to: readonly number[]) => from.map((p, i) => `${p}:${to[i]}`).join(",");
    const hop = async (label: string, io: [string, string], from: number[], to: readonly number[]) => {
      const ids = ["--ca", tls.ca, "--cert", tls.server.cert, "--key", tls.server.key, "--client-cert", tls.client.cert, "--client-key", tls.client.key];
      const argv = [BUN, ...bunArgs(), HOP, "--in", io[0], "--out", io[1], "--map", map(from, to), ...ids];
      const c = kids.spawn(`splice ${label}`, argv, { cwd: dir });
      for (const p of from) await waitForListen(p, START_MS, c, { owned: true });
      return c;
    };
    // From the target end, so every hop's next hop already listens.
    const onsite = await hop("onsite", ["tls", "tcp"], r2, targets);
    const relay = await hop("relay", ["tls", "tls"], r1, r2);
    const master = await hop("master", ["tcp", "tls"], entries, r1);
    return {
      name: "raw Bun splice",
      entries,
      relayPids: [relay.pid],
      pathPids: [master.pid, relay.pid, onsite.pid],
      notes: `Bun ${Bun.version}: three bare socket.write copies with pause/resume, TLS 1.3 both legs, mutual auth, RSA-2048`,
      stop,
      [Symbol.asyncDispose]: stop,
    } satisfies Path;
  });
}
