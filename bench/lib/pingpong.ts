// Request/response latency: a 64-byte message goes out, the echo comes back, the next one
// goes out; N sequential round trips over one TCP connection with TCP_NODELAY on both ends.
// What a person typing in an ssh session or clicking through a device's web page feels.
//
//   bun bench/lib/pingpong.ts serve [PORT]            echo server on 127.0.0.1
//   bun bench/lib/pingpong.ts HOST PORT [ROUNDS]      client; prints the summary as JSON

export const MESSAGE_BYTES = 64;
/** Round trips before we start counting: connection set-up, JIT, caches. */
export const WARMUP_ROUNDS = 100;
const ROUND_TIMEOUT_MS = 10_000;

export interface LatencySummary {
  rounds: number;
  medianUs: number;
  p99Us: number;
  maxUs: number;
  meanUs: number;
}

/** Nearest-rank percentile of sorted values (p in 0..100). */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) throw new Error("percentile of no samples");
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/** Median, p99 and max of round-trip times given in nanoseconds, in microseconds. */
export function summarize(samplesNs: readonly number[]): LatencySummary {
  const us = samplesNs.map((n) => n / 1000).sort((a, b) => a - b);
  return {
    rounds: us.length,
    medianUs: percentile(us, 50),
    p99Us: percentile(us, 99),
    maxUs: us[us.length - 1]!,
    meanUs: us.reduce((a, b) => a + b, 0) / us.length,
  };
}

export interface EchoServer extends AsyncDisposable {
  host: string;
  port: number;
  stop(): Promise<void>;
}

/** Echoes every byte back, TCP_NODELAY set. Port 0: the kernel picks. */
export function startEchoServer(host = "127.0.0.1", port = 0): EchoServer {
  const listener = Bun.listen<{ pending: Uint8Array[] }>({
    hostname: host,
    port,
    socket: {
      open(s) {
        s.setNoDelay(true);
        s.data = { pending: [] };
      },
      data(s, chunk) {
        if (s.data.pending.length) {
          s.data.pending.push(Uint8Array.from(chunk));
          return;
        }
        const n = s.write(chunk);
        if (n < chunk.length) s.data.pending.push(Uint8Array.from(chunk.subarray(Math.max(0, n))));
      },
      drain(s) {
        while (s.data.pending.length) {
          const head = s.data.pending[0]!;
          const n = s.write(head);
          if (n < head.length) {
            s.data.pending[0] = head.subarray(Math.max(0, n));
            return;
          }
          s.data.pending.shift();
        }
      },
    },
  });
  const stop = async () => listener.stop(true);
  return { host, port: listener.port, stop, [Symbol.asyncDispose]: stop };
}

/**
 * `rounds` sequential round trips of MESSAGE_BYTES to an echo server at host:port (directly or
 * through a forward), after WARMUP_ROUNDS uncounted ones. Each message carries its round
 * number, and the echo is checked, so a path that mixes up bytes fails instead of timing.
 */
export async function pingPong(host: string, port: number, rounds = 2000): Promise<LatencySummary> {
  return summarize(await pingPongSamples(host, port, rounds));
}

/** pingPong's raw round-trip times, nanoseconds, in the order measured. */
export async function pingPongSamples(host: string, port: number, rounds = 2000): Promise<number[]> {
  const samples: number[] = [];
  let want: Uint8Array | undefined;
  let got = 0;
  let sentAt = 0;
  let onRound: ((err?: Error) => void) | undefined;
  const msg = new Uint8Array(MESSAGE_BYTES);
  const socket = await Bun.connect({
    hostname: host,
    port,
    socket: {
      open(s) {
        s.setNoDelay(true);
      },
      data(_s, chunk) {
        const now = Bun.nanoseconds();
        if (!want || got + chunk.length > MESSAGE_BYTES) return onRound?.(new Error(`echo sent ${got + chunk.length} bytes for a ${MESSAGE_BYTES}-byte message`));
        for (let i = 0; i < chunk.length; i++) if (chunk[i] !== want[got + i]) return onRound?.(new Error("echo differs from the message"));
        got += chunk.length;
        if (got === MESSAGE_BYTES) {
          samples.push(now - sentAt);
          onRound?.();
        }
      },
      close() {
        onRound?.(new Error("connection closed"));
      },
      error(_s, e) {
        onRound?.(e);
      },
    },
  });
  try {
    for (let i = 0; i < WARMUP_ROUNDS + rounds; i++) {
      new DataView(msg.buffer).setUint32(0, i);
      msg.fill(i & 0xff, 4);
      want = msg;
      got = 0;
      const done = new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`round ${i}: no echo within ${ROUND_TIMEOUT_MS} ms`)), ROUND_TIMEOUT_MS);
        onRound = (err) => {
          clearTimeout(timer);
          onRound = undefined;
          err ? reject(new Error(`round ${i} to ${host}:${port}`, { cause: err })) : resolve();
        };
      });
      // If the write below throws, nothing awaits `done`: its rejection (the close that
      // follows) must not surface as an unhandled one. `await done` still sees it.
      done.catch(() => {});
      sentAt = Bun.nanoseconds();
      if (socket.write(msg) !== MESSAGE_BYTES) throw new Error(`round ${i}: the socket did not take a ${MESSAGE_BYTES}-byte message`);
      await done;
      if (i === WARMUP_ROUNDS - 1) samples.length = 0;
    }
  } finally {
    socket.end();
  }
  return samples;
}

if (import.meta.main) {
  const [a, b, c] = process.argv.slice(2);
  if (a === "serve") {
    const s = startEchoServer("127.0.0.1", Number(b ?? 0));
    console.log(JSON.stringify({ port: s.port }));
  } else if (a && b) {
    console.log(JSON.stringify(await pingPong(a, Number(b), Number(c ?? 2000))));
  } else {
    console.error("usage: pingpong.ts serve [PORT] | pingpong.ts HOST PORT [ROUNDS]");
    process.exit(2);
  }
}
