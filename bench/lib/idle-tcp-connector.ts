// A stand-in connector for testing bench/lib/idle.ts itself: plain TCP connections to
// ctx.relay, no TLS, no protocol. It proves the load process, the batching and the sampling
// work; the relay's real figures need the real connector (bench/lib/idle-connector.ts).
import type { IdleConnection, IdleConnector, IdleContext } from "./idle.ts";

export const connector: IdleConnector = {
  async open(ctx: IdleContext): Promise<IdleConnection> {
    const [host, port] = ctx.relay.split(":");
    const s = await Bun.connect({ hostname: host!, port: Number(port), socket: { data() {} } });
    return { close: () => void s.end() };
  },
};
