// test/helpers/iperf.ts: iperf3 reports parsed from real runs, and the checksum transfer
// proven to catch what a broken forward does (cut, corrupt) — a checker that cannot fail
// would make every "100 MB each way" test downstream worthless.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  deterministicStream,
  download,
  parseIperfJson,
  parseRequest,
  runIperf,
  startChecksumServer,
  startIperfServer,
  streamSha256,
  transferBothWays,
  upload,
  type ChecksumServer,
  type IperfServer,
} from "./helpers/iperf.ts";
import { freePort, programsPresent } from "./helpers/proc.ts";

const MB = 1024 * 1024;

describe("parseRequest", () => {
  test.each([
    ["PUT 100", { op: "PUT", bytes: 100 }],
    ["GET 5 7", { op: "GET", bytes: 5, seed: 7 }],
    ["PUT 0", { op: "PUT", bytes: 0 }],
  ])("%s", (line, want) => {
    expect(parseRequest(line)).toEqual(want as ReturnType<typeof parseRequest>);
  });
  test.each([["PUT"], ["GET 5"], ["put 5"], ["PUT -1"], ["PUT 5 6"], [`PUT ${17 * 1024 ** 3}`]])("rejects %j", (line) => {
    expect(() => parseRequest(line)).toThrow(/bad request|over the/);
  });
});

describe("deterministicStream", () => {
  test("has the asked length, depends on the seed, and no two chunks are equal", () => {
    const chunks = [...deterministicStream(10 * MB + 123, 5)];
    expect(chunks.reduce((n, c) => n + c.length, 0)).toBe(10 * MB + 123);
    const digests = new Set(chunks.map((c) => new Bun.CryptoHasher("sha256").update(c).digest("hex")));
    expect(digests.size).toBe(chunks.length);
    expect(streamSha256(MB, 5)).toBe(streamSha256(MB, 5));
    expect(streamSha256(MB, 5)).not.toBe(streamSha256(MB, 6));
    expect(streamSha256(MB, 5)).not.toBe(streamSha256(MB + 1, 5));
  });
});

test("parseIperfJson turns an iperf3 error report into an error", () => {
  expect(() => parseIperfJson('{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}')).toThrow(
    "iperf3: unable to connect to server: Connection refused",
  );
  expect(() => parseIperfJson("iperf3: error")).toThrow(/not JSON/);
});

const present = programsPresent("helpers-iperf.test.ts", ["iperf3"]);

describe.skipIf(!present)("iperf3", () => {
  let server: IperfServer;
  beforeAll(async () => {
    server = await startIperfServer();
  });
  afterAll(async () => {
    await server?.stop();
  });

  test.each([
    [1, false],
    [4, false],
    [2, true],
  ])("%d stream(s), reverse %p: bytes both ends agree on", async (parallel, reverse) => {
    const r = await runIperf({ host: "127.0.0.1", port: server.port, seconds: 1, parallel, reverse });
    expect(r.streams).toBe(parallel);
    expect(r.reverse).toBe(reverse);
    expect(r.receivedBytes).toBeGreaterThan(MB);
    // The receiver can miss at most what was in flight when the test ended.
    expect(r.receivedBytes).toBeLessThanOrEqual(r.sentBytes);
    expect(r.receivedBytes / r.sentBytes).toBeGreaterThan(0.9);
    expect(r.receivedBps).toBeGreaterThan(0);
    expect(r.seconds).toBeGreaterThan(0.5);
  }, 30_000);

  test("a client started while the server still runs another test waits its turn instead of failing as busy", async () => {
    const first = runIperf({ host: "127.0.0.1", port: server.port, seconds: 1 });
    // iperf3 answers "busy" to a second client while the first one's test runs.
    await Bun.sleep(200);
    const second = runIperf({ host: "127.0.0.1", port: server.port, seconds: 1 });
    const [a, b] = await Promise.all([first, second]);
    expect(a.receivedBytes).toBeGreaterThan(MB);
    expect(b.receivedBytes).toBeGreaterThan(MB);
  }, 30_000);

  test("a client with no server fails with iperf3's reason", async () => {
    const port = await freePort();
    await expect(runIperf({ host: "127.0.0.1", port, seconds: 1 })).rejects.toThrow(/iperf3: unable to (connect|send control message)/);
  }, 30_000);
});

type Mangle = (chunk: Uint8Array, passed: number) => Uint8Array | "cut";
const pass: Mangle = (c) => c;

/**
 * A TCP forward to targetPort that can cut or corrupt what goes through it, client to target
 * (`up`) or back (`down`). It queues what a socket did not take and writes it on drain, so
 * the only damage is the one asked for.
 */
function startForward(targetPort: number, up: Mangle = pass, down: Mangle = pass) {
  type End = { peer?: Bun.Socket<End>; passed: number; queue: Uint8Array[]; ending: boolean };
  const flush = (s: Bun.Socket<End>) => {
    const q = s.data.queue;
    while (q.length) {
      const n = s.write(q[0]!);
      if (n < q[0]!.length) {
        q[0] = q[0]!.subarray(Math.max(0, n));
        return;
      }
      q.shift();
    }
    if (s.data.ending) s.end();
  };
  const send = (to: Bun.Socket<End> | undefined, chunk: Uint8Array, queueIfNoPeer: Uint8Array[]) => {
    if (!to) return void queueIfNoPeer.push(Uint8Array.from(chunk));
    to.data.queue.push(Uint8Array.from(chunk));
    flush(to);
  };
  const relay = (from: Bun.Socket<End>, chunk: Uint8Array, mangle: Mangle, early: Uint8Array[]) => {
    const out = mangle(chunk, from.data.passed);
    from.data.passed += chunk.length;
    if (out === "cut") {
      from.data.peer?.end();
      from.end();
      return;
    }
    send(from.data.peer, out, early);
  };
  const endPeer = (s: Bun.Socket<End>) => {
    const p = s.data.peer;
    if (!p) return;
    p.data.ending = true;
    flush(p);
  };
  const listener = Bun.listen<End>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(client) {
        client.data = { passed: 0, queue: [], ending: false };
        const early: Uint8Array[] = [];
        (client.data as End & { early?: Uint8Array[] }).early = early;
        void Bun.connect<End>({
          hostname: "127.0.0.1",
          port: targetPort,
          socket: {
            open(target) {
              target.data = { peer: client, passed: 0, queue: early, ending: false };
              client.data.peer = target;
              flush(target);
            },
            data(target, chunk) {
              relay(target, chunk, down, []);
            },
            drain: flush,
            close: endPeer,
          },
        });
      },
      data(client, chunk) {
        relay(client, chunk, up, (client.data as End & { early: Uint8Array[] }).early);
      },
      drain: flush,
      close: endPeer,
    },
  });
  return { port: listener.port, stop: () => listener.stop(true) };
}

describe("checksum transfers", () => {
  let server: ChecksumServer;
  beforeAll(() => {
    server = startChecksumServer();
  });
  afterAll(async () => {
    await server?.stop();
  });

  test("100 MB each way at once, digests compared on both ends", async () => {
    const r = await transferBothWays({ host: "127.0.0.1", port: server.port, bytes: 100 * MB });
    for (const t of [r.upload, r.download]) {
      expect(t.error).toBeUndefined();
      expect(t.ok).toBe(true);
      expect(t.receivedBytes).toBe(100 * MB);
      expect(t.receivedSha256).toBe(t.sentSha256);
    }
    // The server's own records agree with what the clients computed.
    const put = server.records.find((x) => x.op === "PUT" && x.sha256 === r.upload.sentSha256);
    const get = server.records.find((x) => x.op === "GET" && x.sha256 === r.download.sentSha256);
    expect(put).toEqual({ op: "PUT", bytes: 100 * MB, sha256: r.upload.sentSha256, complete: true });
    expect(get).toEqual({ op: "GET", bytes: 100 * MB, sha256: r.download.sentSha256, complete: true });
  }, 60_000);

  test("a download cut in the middle is not ok and says how far it got", async () => {
    // Cut the client's side after the request: the server is stopped mid-stream.
    const fwd = startForward(server.port);
    try {
      const p = download({ host: "127.0.0.1", port: fwd.port, bytes: 1024 * MB, timeoutMs: 20_000 });
      await Bun.sleep(100);
      fwd.stop();
      const r = await p;
      expect(r.ok).toBe(false);
      expect(r.receivedBytes).toBeLessThan(1024 * MB);
      expect(r.error).toMatch(/stream ended after \d+ of \d+ bytes|socket error/);
    } finally {
      fwd.stop();
    }
  }, 30_000);

  test("an upload cut after 1 MB is not ok", async () => {
    const fwd = startForward(server.port, (c, passed) => (passed > MB ? "cut" : c));
    try {
      const r = await upload({ host: "127.0.0.1", port: fwd.port, bytes: 20 * MB, timeoutMs: 20_000 });
      expect(r.ok).toBe(false);
      expect(r.receivedSha256).toBe("");
      expect(r.error).toMatch(/no digest from the server|socket error/);
    } finally {
      fwd.stop();
    }
  }, 30_000);

  test.each(["upload", "download"] as const)("one flipped byte in an %s is a digest mismatch", async (direction) => {
    let flipped = false;
    const flip = (c: Uint8Array, passed: number) => {
      // Requests are small; flip a byte of the body, once.
      if (flipped || passed + c.length < 5 * MB) return c;
      flipped = true;
      const copy = Uint8Array.from(c);
      copy[copy.length - 1]! ^= 0x40;
      return copy;
    };
    // Uploads are mangled on their way in; downloads on the way out (the forward's server side).
    const fwd = direction === "upload" ? startForward(server.port, flip) : startForward(server.port, pass, flip);
    try {
      const r = await (direction === "upload" ? upload : download)({ host: "127.0.0.1", port: fwd.port, bytes: 10 * MB, timeoutMs: 20_000 });
      expect(flipped).toBe(true);
      expect(r.ok).toBe(false);
      expect(r.error).toBe("digest mismatch");
      expect(r.receivedSha256).not.toBe(r.sentSha256);
    } finally {
      fwd.stop();
    }
  }, 30_000);

  test("the server refuses a bad request line and more bytes than announced", async () => {
    const reply = async (payload: string) => {
      const s = await Bun.connect({ hostname: "127.0.0.1", port: server.port, socket: { data() {} } });
      let text = "";
      const done = new Promise<void>((resolve) => {
        s.reload({ socket: { data: (_s, c) => void (text += Buffer.from(c).toString()), close: () => resolve(), error: () => resolve() } });
      });
      s.write(payload);
      await done;
      return text;
    };
    expect(await reply("HELLO\n")).toMatch(/^ERR bad request "HELLO"/);
    expect(await reply("PUT 3\nabcdef")).toMatch(/^ERR more than the 3 bytes announced/);
  }, 30_000);
});

