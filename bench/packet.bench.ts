// Packet-channel benchmark (issue 11, the wire half): the packet stream of a routed tunnel next
// to a TCP forward, both through the same relay, master and onsite roles composed in one process
// over real TLS on 127.0.0.1, measured in turns in this one run. The tunnel's devices are the
// in-memory ones (src/tunnel/packet/memory.ts): this measures the wire (framing, queues, relay
// routing, TLS), not TUN/TAP or the kernel; `make bench B=tunnel` is the full topology.
//
// Run:   make bench B=packet        (or: node_modules/.bin/bun bench/packet.bench.ts)
// Env:   BENCH_MB=64 (per run), BENCH_REPEAT=3 (turns; figures are medians)
//
// Rows: TCP forward (bytes under credit) and routed packets of 1420 bytes, offered in bursts of
// 64 with a yield between (as a TUN reader hands them on): Mbit/s delivered, and the drops the
// packet path counted (queue_full at each hop). Ratio: packets / TCP forward.
import type { Socket } from "bun";
import { Trio, packet } from "../test/helpers/tunnel-trio.ts";
import { waitFor } from "../test/helpers/wait.ts";

const MB = Number(process.env.BENCH_MB ?? 64);
const REPEAT = Number(process.env.BENCH_REPEAT ?? 3);
const BYTES = MB * 1024 * 1024;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const t = await Trio.start({ onsite: { tunnel: { enabled: true }, allow: ["127.0.0.1/32", "192.168.1.0/24"] } });
let sunk = 0;
const sink = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data: (_s, d) => void (sunk += d.length) } });
const fwd = await t.masterApi.call("connect", { onsite: "site-1", forwards: [`127.0.0.1:0:127.0.0.1:${sink.port}`] });
const tun = await t.masterApi.call("connect", { onsite: "site-1", forwards: [], tunnel: "routed" });
await waitFor(async () => (await t.masterApi.call("sessions")).find((s) => s.session === tun.session)?.tunnel?.state === "up", 5_000, "the tunnel up");
const mdev = t.masterHost.open_[0]!.device;
const odev = t.onsiteHost.open_[0]!.device;

async function tcpRun(): Promise<number> {
  sunk = 0;
  const chunk = new Uint8Array(256 * 1024);
  let sent = 0;
  let drained: () => void = () => {};
  const start = performance.now();
  const sock: Socket = await Bun.connect({ hostname: "127.0.0.1", port: fwd.forwards[0]!.port, socket: { data() {}, drain: () => drained() } });
  while (sent < BYTES) {
    const n = sock.write(chunk);
    sent += n;
    if (n < chunk.length) await new Promise<void>((r) => (drained = r));
  }
  await waitFor(() => sunk >= BYTES, 120_000, "the sink to get everything");
  const ms = performance.now() - start;
  sock.end();
  return (BYTES * 8) / ms / 1000;
}

async function packetRun(): Promise<{ mbit: number; drops: number }> {
  odev.take();
  const before = (await t.masterApi.call("sessions")).find((s) => s.session === tun.session)!.tunnel!.packets.drops.queue_full;
  const relayBefore = t.relayRole.server.sessionList().find((s) => s.session === tun.session)!.tunnel!.relay!.to_onsite.drops.queue_full;
  const n = Math.ceil(BYTES / 1420);
  let delivered = 0;
  const start = performance.now();
  for (let i = 0; i < n; i += 64) {
    for (let j = 0; j < 64; j++) mdev.inject(packet(1420, i + j));
    delivered += odev.take().length;
    await new Promise((r) => setImmediate(r));
  }
  let last = -1;
  await waitFor(() => {
    delivered += odev.take().length;
    const still = delivered === last;
    last = delivered;
    return delivered >= n || still;
  }, 30_000, "the packets to stop arriving", { every: 50 });
  const ms = performance.now() - start;
  const after = (await t.masterApi.call("sessions")).find((s) => s.session === tun.session)!.tunnel!.packets.drops.queue_full;
  const relayAfter = t.relayRole.server.sessionList().find((s) => s.session === tun.session)!.tunnel!.relay!.to_onsite.drops.queue_full;
  return { mbit: (delivered * 1420 * 8) / ms / 1000, drops: after - before + relayAfter - relayBefore };
}

const tcp: number[] = [];
const pk: number[] = [];
let drops = 0;
for (let r = 0; r < REPEAT; r++) {
  tcp.push(await tcpRun());
  const p = await packetRun();
  pk.push(p.mbit);
  drops += p.drops;
}
console.log(`packet channel vs TCP forward, ${MB} MiB per run, ${REPEAT} turns (medians), all roles in one process over TLS on 127.0.0.1`);
console.log(`  TCP forward          ${median(tcp).toFixed(0)} Mbit/s`);
console.log(`  routed packets 1420  ${median(pk).toFixed(0)} Mbit/s delivered   (drops counted: ${drops} queue_full over all turns)`);
console.log(`  ratio packets / TCP forward: ${(median(pk) / median(tcp)).toFixed(2)}x   (issue 11 goal for the full path: >= 0.5x)`);
sink.stop(true);
await t.close();
process.exit(0);
