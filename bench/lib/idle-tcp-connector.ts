// A stand-in connector for testing bench/lib/idle.ts itself: plain TCP connections to
// ctx.relay, no TLS, no protocol. It proves the load process, the batching and the sampling
// work; the relay's real figures need the real connector (bench/lib/idle-connector.ts).
// prepare() leaves a trace in ctx.workDir/prepare.log so a test can check when it ran.
import { appendFileSync } from "node:fs";
import { join } from "node:path";
import type { IdleConnection, IdleConnector, IdleContext } from "./idle.ts";

let opened = 0;

export const connector: IdleConnector = {
  async prepare(ctx: IdleContext, from: number, to: number): Promise<void> {
    appendFileSync(join(ctx.workDir, "prepare.log"), `prepare ${from} ${to} after ${opened} opened\n`);
  },
  async open(ctx: IdleContext): Promise<IdleConnection> {
    const [host, port] = ctx.relay.split(":");
    const s = await Bun.connect({ hostname: host!, port: Number(port), socket: { data() {} } });
    opened++;
    return { close: () => void s.end() };
  },
};
