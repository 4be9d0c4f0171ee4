// Moving real bytes through a path under test.
// - iperf3 (Debian's): a server on 127.0.0.1 and a client run with -J whose JSON report is
//   parsed into bits per second and bytes each way.
// - A checksum server: a Bun TCP server that hashes what it is sent (PUT) or sends a
//   deterministic stream (GET); the client side compares SHA-256 digests end to end, so a
//   forward that drops, duplicates, reorders or truncates bytes is caught, and a transfer cut
//   in the middle never passes for a complete one.
import { freePort, run, spawnChild, waitForListen, type Child } from "./proc.ts";

const IPERF_START_MS = 10_000;
/** iperf3 gets this long beyond its test duration before we kill it. */
const IPERF_SLACK_MS = 30_000;

// ---------------------------------------------------------------- iperf3

export interface IperfServer extends AsyncDisposable {
  host: string;
  port: number;
  child: Child;
  stop(): Promise<void>;
}

/** `iperf3 -s` on host (127.0.0.1) at a free port; it serves one test at a time, any number in a row. */
export async function startIperfServer(host = "127.0.0.1"): Promise<IperfServer> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort(host);
    const child = spawnChild("iperf3 -s", ["iperf3", "-s", "-B", host, "-p", String(port)]);
    try {
      await waitForListen(port, IPERF_START_MS, child, { owned: true });
      const stop = () => child.stop();
      return { host, port, child, stop, [Symbol.asyncDispose]: stop };
    } catch (e) {
      lastError = e;
      await child.stop();
    }
  }
  throw new Error("iperf3 server did not start", { cause: lastError });
}

export interface IperfOptions {
  host: string;
  port: number;
  /** Test duration, seconds (iperf3 -t). */
  seconds?: number;
  /** Parallel streams (iperf3 -P). */
  parallel?: number;
  /** Server sends, client receives (iperf3 -R). */
  reverse?: boolean;
  /** TCP_NODELAY on iperf3's data sockets (iperf3 -N). */
  noDelay?: boolean;
}

export interface IperfResult {
  /** Bits per second as the sender counted them, and as the receiver did. */
  sentBps: number;
  receivedBps: number;
  sentBytes: number;
  receivedBytes: number;
  /** Measured duration (receiver side), seconds. */
  seconds: number;
  streams: number;
  reverse: boolean;
  /** TCP retransmissions seen by the sender (0 on loopback unless something is wrong). */
  retransmits: number;
}

interface IperfJson {
  error?: string;
  start?: { test_start?: { num_streams?: number; reverse?: number } };
  end?: {
    sum_sent?: { bytes: number; bits_per_second: number; seconds: number; retransmits?: number };
    sum_received?: { bytes: number; bits_per_second: number; seconds: number };
  };
}

/** Reads `iperf3 -J` output; an iperf3 error report becomes an Error with its message. */
export function parseIperfJson(text: string): IperfResult {
  let j: IperfJson;
  try {
    j = JSON.parse(text) as IperfJson;
  } catch (cause) {
    throw new Error(`iperf3 -J output is not JSON: ${JSON.stringify(text.slice(0, 200))}`, { cause });
  }
  if (j.error) throw new Error(`iperf3: ${j.error}`);
  const sent = j.end?.sum_sent;
  const received = j.end?.sum_received;
  if (!sent || !received) throw new Error("iperf3 -J output has no end.sum_sent / end.sum_received");
  return {
    sentBps: sent.bits_per_second,
    receivedBps: received.bits_per_second,
    sentBytes: sent.bytes,
    receivedBytes: received.bytes,
    seconds: received.seconds,
    streams: j.start?.test_start?.num_streams ?? 1,
    reverse: j.start?.test_start?.reverse === 1,
    retransmits: sent.retransmits ?? 0,
  };
}

/** iperf3's server serves one test at a time and frees itself only after the previous
 * client is gone: a client started right after another one can be told this. */
const SERVER_BUSY = "the server is busy running a test";
const BUSY_RETRIES = 10;
const BUSY_PAUSE_MS = 300;

/** Runs the iperf3 client to completion (bounded) and returns its parsed report. A server
 * still finishing the previous test ("busy") is asked again, a bounded number of times. */
export async function runIperf(o: IperfOptions): Promise<IperfResult> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await runIperfOnce(o);
    } catch (e) {
      if (attempt >= BUSY_RETRIES || !String((e as Error).message).includes(SERVER_BUSY)) throw e;
      await Bun.sleep(BUSY_PAUSE_MS);
    }
  }
}

async function runIperfOnce(o: IperfOptions): Promise<IperfResult> {
  const seconds = o.seconds ?? 5;
  const argv = ["iperf3", "-c", o.host, "-p", String(o.port), "-t", String(seconds), "-P", String(o.parallel ?? 1), "-J", "--connect-timeout", "5000"];
  if (o.reverse) argv.push("-R");
  if (o.noDelay ?? true) argv.push("-N");
  const r = await run(argv, { timeoutMs: seconds * 1000 + IPERF_SLACK_MS });
  try {
    const res = parseIperfJson(r.stdout);
    if (r.code !== 0) throw new Error(`exit ${r.code}`);
    return res;
  } catch (e) {
    throw new Error(`${argv.join(" ")} failed (exit ${r.code}): ${(e as Error).message}\n${r.stderr}`, { cause: e });
  }
}

// ---------------------------------------------------------------- deterministic stream

const BLOCK = 1 << 20;
const CHUNK = 1 << 16;
const blocks = new Map<number, Uint8Array>();

/** 1 MiB of xorshift32 noise for a seed (cached). */
function baseBlock(seed: number): Uint8Array {
  let b = blocks.get(seed);
  if (!b) {
    const words = new Uint32Array(BLOCK / 4);
    let x = seed >>> 0 || 0x9e3779b9;
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      words[i] = x;
    }
    b = new Uint8Array(words.buffer);
    blocks.set(seed, b);
  }
  return b;
}

/**
 * The `bytes`-long stream for `seed`, in fresh 64 KiB chunks. Chunk k is a slice of the seed's
 * noise block at an offset that moves with k, stamped with k: reordered, repeated or lost
 * chunks change the digest.
 */
export function* deterministicStream(bytes: number, seed: number): Generator<Uint8Array> {
  const base = baseBlock(seed);
  for (let k = 0, done = 0; done < bytes; k++) {
    const n = Math.min(CHUNK, bytes - done);
    const off = ((k * 4099) % ((BLOCK - CHUNK) / 16)) * 16;
    const chunk = base.slice(off, off + n);
    if (n >= 4) new DataView(chunk.buffer).setUint32(0, k);
    done += n;
    yield chunk;
  }
}

export function streamSha256(bytes: number, seed: number): string {
  const h = new Bun.CryptoHasher("sha256");
  for (const c of deterministicStream(bytes, seed)) h.update(c);
  return h.digest("hex");
}

// ---------------------------------------------------------------- socket writing with backpressure

type Sock = Bun.Socket<unknown>;

/**
 * Writes an iterator of chunks to a Bun socket, honouring backpressure: what write() did not
 * take is kept and retried from `drain` (Bun does not buffer it for us). Call `pump()` from
 * the socket's drain handler; `done` resolves when the last byte is handed to the kernel.
 */
class Writer {
  private pending: Uint8Array | undefined;
  private finished = false;
  readonly done: Promise<void>;
  private resolve!: () => void;

  constructor(
    private readonly socket: Sock,
    private readonly source: Iterator<Uint8Array>,
    private readonly onChunk?: (c: Uint8Array) => void,
  ) {
    this.done = new Promise((r) => (this.resolve = r));
  }

  pump(): void {
    while (!this.finished) {
      if (!this.pending) {
        const next = this.source.next();
        if (next.done) {
          this.finished = true;
          this.resolve();
          return;
        }
        this.onChunk?.(next.value);
        this.pending = next.value;
      }
      const wrote = this.socket.write(this.pending);
      if (wrote < this.pending.length) {
        this.pending = wrote > 0 ? this.pending.subarray(wrote) : this.pending;
        return; // drain will call pump again
      }
      this.pending = undefined;
    }
  }
}

// ---------------------------------------------------------------- checksum server

/** The largest transfer one request may ask for: bounds a test's loops whatever it asks. */
export const MAX_TRANSFER_BYTES = 16 * 1024 ** 3;
const HEADER_MAX = 128;

export interface ServerRecord {
  op: "PUT" | "GET";
  bytes: number;
  sha256: string;
  complete: boolean;
}

export interface ChecksumServer extends AsyncDisposable {
  host: string;
  port: number;
  /** One record per finished or cut connection, in the order they ended. */
  records: ServerRecord[];
  stop(): Promise<void>;
}

interface ConnState {
  header: string;
  op?: "PUT" | "GET";
  want: number;
  got: number;
  hasher: Bun.CryptoHasher;
  writer?: Writer;
  recorded: boolean;
}

/** Parses "PUT <bytes>" / "GET <bytes> <seed>" (the request line, without "\n"). */
export function parseRequest(line: string): { op: "PUT"; bytes: number } | { op: "GET"; bytes: number; seed: number } {
  const m = /^(PUT) (\d+)$|^(GET) (\d+) (\d+)$/.exec(line);
  if (!m) throw new Error(`bad request ${JSON.stringify(line)}: want "PUT <bytes>" or "GET <bytes> <seed>"`);
  const bytes = Number(m[2] ?? m[4]);
  if (bytes > MAX_TRANSFER_BYTES) throw new Error(`request for ${bytes} bytes is over the ${MAX_TRANSFER_BYTES}-byte limit`);
  return m[1] ? { op: "PUT", bytes } : { op: "GET", bytes, seed: Number(m[5]) >>> 0 };
}

/**
 * A TCP server on host (127.0.0.1) at a kernel-chosen port. A client sends one request line:
 * - `PUT <bytes>\n` then exactly <bytes> bytes; the server answers the hex SHA-256 of what
 *   it received and a newline, then closes;
 * - `GET <bytes> <seed>\n`; the server sends deterministicStream(bytes, seed) and closes.
 */
export function startChecksumServer(host = "127.0.0.1"): ChecksumServer {
  const records: ServerRecord[] = [];
  const record = (s: ConnState, complete: boolean) => {
    if (s.recorded || !s.op) return;
    s.recorded = true;
    records.push({ op: s.op, bytes: s.got, sha256: s.hasher.digest("hex"), complete });
  };
  const listener = Bun.listen<ConnState>({
    hostname: host,
    port: 0,
    socket: {
      open(socket) {
        socket.setNoDelay(true);
        socket.data = { header: "", want: 0, got: 0, hasher: new Bun.CryptoHasher("sha256"), recorded: false };
      },
      data(socket, chunk) {
        const s = socket.data;
        let body: Uint8Array = chunk;
        if (!s.op) {
          const nl = chunk.indexOf(10);
          s.header += Buffer.from(nl < 0 ? chunk : chunk.subarray(0, nl)).toString("latin1");
          if (nl < 0) {
            if (s.header.length > HEADER_MAX) socket.end("ERR request line too long\n");
            return;
          }
          body = chunk.subarray(nl + 1);
          let req: ReturnType<typeof parseRequest>;
          try {
            req = parseRequest(s.header);
          } catch (e) {
            socket.end(`ERR ${(e as Error).message}\n`);
            return;
          }
          s.op = req.op;
          s.want = req.bytes;
          if (req.op === "GET") {
            s.writer = new Writer(socket as Sock, deterministicStream(req.bytes, req.seed), (c) => {
              s.hasher.update(c);
              s.got += c.length;
            });
            void s.writer.done.then(() => {
              record(s, true);
              socket.end();
            });
            s.writer.pump();
            return;
          }
        }
        if (s.op !== "PUT" || body.length === 0) return;
        if (s.got + body.length > s.want) {
          record(s, false);
          socket.end(`ERR more than the ${s.want} bytes announced\n`);
          return;
        }
        s.hasher.update(body);
        s.got += body.length;
        if (s.got === s.want) {
          const hex = s.hasher.copy().digest("hex");
          record(s, true);
          socket.end(`${hex}\n`);
        }
      },
      drain(socket) {
        socket.data.writer?.pump();
      },
      close(socket) {
        record(socket.data, false);
      },
      error(socket) {
        record(socket.data, false);
      },
    },
  });
  if (listener.port === 0 || !listener.port) throw new Error("checksum server did not get a port");
  const stop = async () => listener.stop(true);
  return { host, port: listener.port, records, stop, [Symbol.asyncDispose]: stop };
}

// ---------------------------------------------------------------- checksum client

export interface TransferResult {
  direction: "upload" | "download";
  /** Bytes the sender meant to send. */
  bytes: number;
  /** Bytes the receiving end counted; -1 for an upload whose server never answered. */
  receivedBytes: number;
  sentSha256: string;
  /** Digest of what the receiving end got ("" if it never told us). */
  receivedSha256: string;
  /** Every byte arrived, unchanged, and the stream ended cleanly. */
  ok: boolean;
  /** Why not ok. */
  error?: string;
  seconds: number;
}

export interface TransferOptions {
  host: string;
  port: number;
  bytes: number;
  seed?: number;
  /** Give up (ok: false) after this long. */
  timeoutMs?: number;
}

const TRANSFER_TIMEOUT_MS = 120_000;

/** Sends `bytes` of the deterministic stream to a checksum server (through whatever path host:port is). */
export function upload(o: TransferOptions): Promise<TransferResult> {
  const seed = o.seed ?? 1;
  const started = performance.now();
  const sent = new Bun.CryptoHasher("sha256");
  let reply = "";
  return new Promise((resolve) => {
    let finished = false;
    let sock: Sock | undefined;
    const finish = (error?: string) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      sock?.end();
      const sentSha256 = sent.digest("hex");
      const m = /^([0-9a-f]{64})\n/.exec(reply);
      const receivedSha256 = m ? m[1]! : "";
      const err = error ?? (m ? (receivedSha256 === sentSha256 ? undefined : "digest mismatch") : `no digest from the server (reply ${JSON.stringify(reply.slice(0, 100))})`);
      resolve({
        direction: "upload",
        bytes: o.bytes,
        receivedBytes: m && !err ? o.bytes : -1,
        sentSha256,
        receivedSha256,
        ok: !err,
        error: err,
        seconds: (performance.now() - started) / 1000,
      });
    };
    const timer = setTimeout(() => finish(`timed out after ${o.timeoutMs ?? TRANSFER_TIMEOUT_MS} ms`), o.timeoutMs ?? TRANSFER_TIMEOUT_MS);
    let writer: Writer | undefined;
    Bun.connect({
      hostname: o.host,
      port: o.port,
      socket: {
        open(s) {
          sock = s as Sock;
          s.setNoDelay(true);
          const header = new TextEncoder().encode(`PUT ${o.bytes}\n`);
          const chunks = (function* () {
            yield header;
            yield* deterministicStream(o.bytes, seed);
          })();
          let first = true;
          writer = new Writer(s as Sock, chunks, (c) => {
            if (first) first = false;
            else sent.update(c);
          });
          writer.pump();
        },
        drain() {
          writer?.pump();
        },
        data(_s, chunk) {
          reply += Buffer.from(chunk).toString("latin1");
          if (reply.length > 200) finish(`unexpected reply ${JSON.stringify(reply.slice(0, 100))}`);
        },
        close() {
          // The server closes after its digest line; anything else is a cut transfer.
          finish();
        },
        error(_s, e) {
          finish(`socket error: ${e.message}`);
        },
        connectError(_s, e) {
          finish(`cannot connect to ${o.host}:${o.port}: ${e.message}`);
        },
      },
    }).catch((e: Error) => finish(`cannot connect to ${o.host}:${o.port}: ${e.message}`));
  });
}

/** Receives `bytes` of the deterministic stream from a checksum server and checks it. */
export function download(o: TransferOptions): Promise<TransferResult> {
  const seed = o.seed ?? 2;
  const started = performance.now();
  const got = new Bun.CryptoHasher("sha256");
  let received = 0;
  return new Promise((resolve) => {
    let finished = false;
    let sock: Sock | undefined;
    const finish = (error?: string) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      sock?.end();
      const sentSha256 = streamSha256(o.bytes, seed);
      const receivedSha256 = got.digest("hex");
      const err =
        error ?? (received !== o.bytes ? `stream ended after ${received} of ${o.bytes} bytes` : receivedSha256 !== sentSha256 ? "digest mismatch" : undefined);
      resolve({ direction: "download", bytes: o.bytes, receivedBytes: received, sentSha256, receivedSha256, ok: !err, error: err, seconds: (performance.now() - started) / 1000 });
    };
    const timer = setTimeout(() => finish(`timed out after ${o.timeoutMs ?? TRANSFER_TIMEOUT_MS} ms`), o.timeoutMs ?? TRANSFER_TIMEOUT_MS);
    Bun.connect({
      hostname: o.host,
      port: o.port,
      socket: {
        open(s) {
          sock = s as Sock;
          s.setNoDelay(true);
          s.write(`GET ${o.bytes} ${seed}\n`);
        },
        data(_s, chunk) {
          got.update(chunk);
          received += chunk.length;
        },
        close() {
          finish();
        },
        error(_s, e) {
          finish(`socket error: ${e.message}`);
        },
        connectError(_s, e) {
          finish(`cannot connect to ${o.host}:${o.port}: ${e.message}`);
        },
      },
    }).catch((e: Error) => finish(`cannot connect to ${o.host}:${o.port}: ${e.message}`));
  });
}

/** Upload and download at the same time over two connections: "N bytes each way". */
export async function transferBothWays(o: TransferOptions): Promise<{ upload: TransferResult; download: TransferResult }> {
  const [up, down] = await Promise.all([upload({ ...o, seed: o.seed ?? 1 }), download({ ...o, seed: (o.seed ?? 1) + 1 })]);
  return { upload: up, download: down };
}
