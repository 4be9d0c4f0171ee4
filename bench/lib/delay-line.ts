// A packet-level delay line for the tunnel benchmark: this kernel has no sch_netem (nor sch_fq
// for EDT delays, nor nft `queue`), so the 50 ms of added delay on the onsite device's uplink is
// made in userspace, below TCP, between two TUN devices:
//
//   onsite ns: route to the relay via `a` ─┐                  ┌─ `b` (moved into the relay ns):
//                                          └ this process: ──┘   route to the onsite via `b`
//                                            each packet waits `delayMs`, then is written out
//                                            of the other device, in arrival order
//
// Because it delays IP packets (not a TCP stream it terminates), the relay's TLS connection sees
// the delay in its own RTT, exactly as it would with netem: its loss recovery pays 100 ms a
// round, where a TCP-terminating proxy would recover losses on a short leg and hide them.
//
// No bandwidth cap: a packet leaves when its time comes, however many are waiting. Bounded:
// each direction holds at most `maxBytes` (default 8 MiB, 50 ms of 1.3 Gbit/s); a packet that
// would exceed it is dropped and counted (netem's `limit` does the same, by packets).
//
// Run: bun bench/lib/delay-line.ts <dev-a> <dev-b> <delay-ms> — prints "ready" once both devices
// exist (down, no address: the caller configures and moves them) and, on SIGTERM, one JSON line
// of counters before it exits. The DelayQueue below is pure and table-tested
// (test/bench-delay.test.ts).
import { systemClock, type Clock, type TimerHandle } from "../../src/clock.ts";

export const DEFAULT_MAX_BYTES = 8 * 1024 * 1024;

export interface DelayCounters {
  packets: number;
  bytes: number;
  dropped: number;
  /** Most bytes waiting at once. */
  peakBytes: number;
}

/** One direction: a FIFO of packets, each due `delayMs` after it arrived; bounded by bytes. */
export class DelayQueue {
  readonly counters: DelayCounters = { packets: 0, bytes: 0, dropped: 0, peakBytes: 0 };
  private readonly items: { due: number; packet: Uint8Array }[] = [];
  private head = 0;
  private waiting = 0;

  constructor(
    readonly delayMs: number,
    readonly maxBytes = DEFAULT_MAX_BYTES,
  ) {
    if (!Number.isFinite(delayMs) || delayMs < 0) throw new Error(`delay must be a non-negative number of ms, not ${delayMs}`);
    if (!Number.isInteger(maxBytes) || maxBytes <= 0) throw new Error(`maxBytes must be a positive integer, not ${maxBytes}`);
  }

  /** Queues a packet that arrived at `now`; false (dropped, counted) when it does not fit. */
  push(packet: Uint8Array, now: number): boolean {
    if (this.waiting + packet.length > this.maxBytes) {
      this.counters.dropped++;
      return false;
    }
    this.items.push({ due: now + this.delayMs, packet });
    this.waiting += packet.length;
    this.counters.peakBytes = Math.max(this.counters.peakBytes, this.waiting);
    return true;
  }

  /** The packets due at `now`, oldest first, taken off the queue. */
  take(now: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    while (this.head < this.items.length && this.items[this.head]!.due <= now) {
      const p = this.items[this.head++]!.packet;
      this.waiting -= p.length;
      this.counters.packets++;
      this.counters.bytes += p.length;
      out.push(p);
    }
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items.splice(0, this.head);
      this.head = 0;
    }
    return out;
  }

  /** When the oldest waiting packet falls due, or undefined when none waits. */
  nextDue(): number | undefined {
    return this.items[this.head]?.due;
  }

  get bytesWaiting(): number {
    return this.waiting;
  }
}

/** Drives a DelayQueue: one timer for the head packet; `send` writes a packet out. */
export class DelayPump {
  readonly queue: DelayQueue;
  private timer: TimerHandle | undefined;
  private timerDue = Infinity;

  constructor(
    delayMs: number,
    private readonly send: (p: Uint8Array) => void,
    private readonly clock: Clock = systemClock,
    maxBytes = DEFAULT_MAX_BYTES,
  ) {
    this.queue = new DelayQueue(delayMs, maxBytes);
  }

  /** A packet arrived: copied (the reader reuses its buffer), queued, the timer set. */
  arrive(packet: Uint8Array): void {
    this.queue.push(packet.slice(), this.clock.now());
    this.arm();
  }

  private arm(): void {
    const due = this.queue.nextDue();
    if (due === undefined || due >= this.timerDue) return;
    this.clock.clearTimeout(this.timer);
    this.timerDue = due;
    this.timer = this.clock.setTimeout(() => this.fire(), Math.max(0, due - this.clock.now()));
  }

  private fire(): void {
    this.timer = undefined;
    this.timerDue = Infinity;
    for (const p of this.queue.take(this.clock.now())) this.send(p);
    this.arm();
  }

  stop(): void {
    this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** The command line: two device names (IFNAMSIZ) and a delay in ms; a specific error otherwise. */
export function parseArgs(argv: readonly string[]): { a: string; b: string; delayMs: number } {
  if (argv.length !== 3) throw new Error(`usage: delay-line.ts <dev-a> <dev-b> <delay-ms> (got ${argv.length} arguments)`);
  const [a, b, d] = argv as [string, string, string];
  for (const n of [a, b]) if (!/^[A-Za-z0-9_.-]{1,15}$/.test(n)) throw new Error(`device name ${JSON.stringify(n)}: 1-15 letters, digits, _ . -`);
  if (a === b) throw new Error(`the two devices must differ (both ${a})`);
  const delayMs = Number(d);
  if (!/^\d+(\.\d+)?$/.test(d) || !Number.isFinite(delayMs)) throw new Error(`delay ${JSON.stringify(d)}: a non-negative number of ms`);
  return { a, b, delayMs };
}

if (import.meta.main) {
  const { LinuxTunDevice } = await import("../../src/tunnel/packet/tun-linux.ts");
  let args: ReturnType<typeof parseArgs>;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error((e as Error).message);
    process.exit(2);
  }
  const a = LinuxTunDevice.open({ name: args.a, mode: "routed" });
  const b = LinuxTunDevice.open({ name: args.b, mode: "routed" });
  const ab = new DelayPump(args.delayMs, (p) => b.write(p));
  const ba = new DelayPump(args.delayMs, (p) => a.write(p));
  a.onPacket((p) => ab.arrive(p));
  b.onPacket((p) => ba.arrive(p));
  // The devices' poll thread does not hold the event loop open; this does, until SIGTERM.
  const alive = setInterval(() => {}, 1 << 30);
  process.on("SIGTERM", () => {
    clearInterval(alive);
    ab.stop();
    ba.stop();
    const writeDrops = a.counters.txDropped + b.counters.txDropped;
    console.log(JSON.stringify({ [`${args.a}->${args.b}`]: ab.queue.counters, [`${args.b}->${args.a}`]: ba.queue.counters, writeDrops }));
    void Promise.all([a.close(), b.close()]).then(() => process.exit(0));
  });
  console.log("ready");
}
