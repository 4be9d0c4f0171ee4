// The transport benchmark's parts (bench/lib): the arithmetic is table-tested; the peers are
// proven to be working paths (bytes arrive unchanged through them) before their figures mean
// anything; the ping-pong client catches a wrong echo; the idle-capacity machinery opens
// exactly what it says against a real server process. No test here asserts a timing.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startChecksumServer, transferBothWays, type ChecksumServer } from "./helpers/iperf.ts";
import { freePort, processAgeSeconds, processTree, programsPresent, socketCount, spawnChild, treeUsage, waitForListen } from "./helpers/proc.ts";
import { idleReport, levelFigures, measureIdleCapacity } from "../bench/lib/idle.ts";
import { cpuPerGB, fmt, medianFigures, ratio, report, type PathFigures } from "../bench/lib/measure.ts";
import { startSshPath, startStunnelPath, stunnelConfig } from "../bench/lib/peers.ts";
import { percentile, pingPong, startEchoServer, summarize } from "../bench/lib/pingpong.ts";

const MB = 1024 * 1024;

describe("latency arithmetic", () => {
  const oneTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);
  test.each([
    ["p50 of [5] is 5", [5], 50, 5],
    ["p50 of [1..4] is 2", oneTo(4), 50, 2],
    ["p99 of [1..4] is 4", oneTo(4), 99, 4],
    ["p99 of [1..100] is 99", oneTo(100), 99, 99],
    ["p99 of [1..1000] is 990", oneTo(1000), 99, 990],
    ["p100 of [1..3] is 3", oneTo(3), 100, 3],
  ])("percentile: %s", (_label, sorted, p, want) => {
    expect(percentile(sorted, p)).toBe(want);
  });

  test("summarize converts ns to us and sorts", () => {
    expect(summarize([3000, 1000, 2000])).toEqual({ rounds: 3, medianUs: 2, p99Us: 3, maxUs: 3, meanUs: 2 });
    expect(() => summarize([])).toThrow(/no samples/);
  });
});

describe("report arithmetic", () => {
  test.each([
    [2, 1e9, 2],
    [1, 5e8, 2],
    [0, 1e9, 0],
  ])("cpuPerGB(%d s, %d B) = %d", (cpu, bytes, want) => {
    expect(cpuPerGB(cpu, bytes)).toBe(want);
  });
  test("cpuPerGB with no bytes is NaN, printed as '-'", () => {
    expect(fmt(cpuPerGB(1, 0), 2)).toBe("-");
  });
  test.each([
    [2, 1, "2.00x"],
    [1, 4, "0.25x"],
    [1, 0, "-"],
    [undefined, 1, "-"],
    [1, undefined, "-"],
  ])("ratio(%p, %p) = %s", (a, b, want) => {
    expect(ratio(a, b)).toBe(want);
  });

  test("report prints figures, ratios to each peer, and why a row is missing", () => {
    const row = (name: string, g: number, p99: number): PathFigures => ({
      name,
      notes: `${name} notes`,
      gbps1: g,
      gbps4: g * 2,
      latency: { rounds: 10, medianUs: p99 / 2, p99Us: p99, maxUs: p99 * 2, meanUs: p99 / 2 },
      relay: { cpuSecondsPerGB: 1, peakRssMiB: 10 },
      wholePath: { cpuSecondsPerGB: 2, peakRssMiB: 20 },
    });
    const b = row("(b)", 1, 100);
    const c = row("(c)", 2, 50);
    const ours: PathFigures = { name: "ours", notes: "not measured", unavailable: "agent connect: unknown command" };
    const text = report([row("direct", 8, 10), b, c, ours], [b, c]);
    expect(text).toContain("ratio to (b)");
    expect(text).toContain("ratio to (c)");
    expect(text).toMatch(/^direct +8\.00 +16\.00 +5 +10 +20 +1\.00 +10\.0 +2\.00 +20\.0$/m);
    // (c) against (b): twice the throughput, half the p99.
    expect(text).toMatch(/^\(c\) +2\.00x +2\.00x +0\.50x +0\.50x +0\.50x +1\.00x/m);
    expect(text).toMatch(/^ours +n\/a$/m);
    expect(text).toContain("ours: not available: agent connect: unknown command");
  });

  test("medianFigures: every figure is the median over turns, not pooled; a phase that did not run stays empty", () => {
    const lat = (p99: number) => ({ rounds: 100, medianUs: p99 / 4, p99Us: p99, maxUs: p99 * 3, meanUs: p99 / 3 });
    const f = medianFigures("ours", "n", [
      { gbps1: 1, gbps4: 4, latency: lat(900), relay: { cpuSecondsPerGB: 3, peakRssMiB: 50 }, wholePath: { cpuSecondsPerGB: 9, peakRssMiB: 150 } },
      { gbps1: 3, gbps4: 2, latency: lat(5000), relay: { cpuSecondsPerGB: 1, peakRssMiB: 70 }, wholePath: { cpuSecondsPerGB: 5, peakRssMiB: 130 } },
      { gbps1: 2, gbps4: 3, latency: lat(600), relay: { cpuSecondsPerGB: 2, peakRssMiB: 60 }, wholePath: { cpuSecondsPerGB: 7, peakRssMiB: 140 } },
    ]);
    expect([f.gbps1, f.gbps4]).toEqual([2, 3]);
    // One turn's bad tail does not become the figure: the median turn's p99 is.
    expect(f.latency).toEqual({ rounds: 300, medianUs: 225, p99Us: 900, maxUs: 2700, meanUs: 300 });
    expect(f.relay).toEqual({ cpuSecondsPerGB: 2, peakRssMiB: 60 });
    expect(f.wholePath).toEqual({ cpuSecondsPerGB: 7, peakRssMiB: 140 });
    expect(f.runs).toEqual({ gbps1: [1, 3, 2], gbps4: [4, 2, 3], p99Us: [900, 5000, 600] });
    const pingOnly = medianFigures("ours", "n", [{ latency: lat(400) }, { latency: lat(800) }]);
    expect(pingOnly.gbps1).toBeUndefined();
    expect(pingOnly.relay).toBeUndefined();
    expect(pingOnly.latency?.p99Us).toBe(600);
  });
});

test("stunnelConfig: TLS 1.3 only, peer verified, TCP_NODELAY on both sides, one section per service", () => {
  const conf = stunnelConfig({ mode: "client", services: [{ name: "t0", accept: 1, connect: 2 }, { name: "t1", accept: 3, connect: 4 }], ca: "/ca", cert: "/c", key: "/k" });
  expect(conf).toContain("socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1");
  expect(conf.match(/sslVersionMin = TLSv1\.3/g)?.length).toBe(2);
  expect(conf.match(/verifyChain = yes/g)?.length).toBe(2);
  expect(conf).toContain("[t1]\nclient = yes\naccept = 127.0.0.1:3\nconnect = 127.0.0.1:4");
});

describe("pingPong", () => {
  test("counts the asked rounds, median <= p99 <= max", async () => {
    await using echo = startEchoServer();
    const s = await pingPong("127.0.0.1", echo.port, 300);
    expect(s.rounds).toBe(300);
    expect(s.medianUs).toBeGreaterThan(0);
    expect(s.medianUs).toBeLessThanOrEqual(s.p99Us);
    expect(s.p99Us).toBeLessThanOrEqual(s.maxUs);
  });

  test("fails on an echo that changes a byte", async () => {
    const bad = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        data(s, chunk) {
          const c = Uint8Array.from(chunk);
          c[c.length - 1]! ^= 1;
          s.write(c);
        },
      },
    });
    try {
      await expect(pingPong("127.0.0.1", bad.port, 10)).rejects.toThrow(/round 0/);
    } finally {
      bad.stop(true);
    }
  });

  test("fails when the server closes", async () => {
    const closing = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data: (s) => void s.end() } });
    try {
      await expect(pingPong("127.0.0.1", closing.port, 10)).rejects.toThrow(/round 0/);
    } finally {
      closing.stop(true);
    }
  });
});

const peersPresent = programsPresent("helpers-bench.test.ts (peers)", ["/usr/sbin/sshd", "ssh", "ssh-keygen", "stunnel", "socat", "openssl"]);

describe.skipIf(!peersPresent).each([
  ["(b) ssh -R + ssh -L", startSshPath],
  ["(c) stunnel+socat+stunnel", startStunnelPath],
] as const)("peer %s", (_name, start) => {
  let cs: ChecksumServer;
  beforeAll(() => {
    cs = startChecksumServer();
  });
  afterAll(async () => {
    await cs?.stop();
  });

  test("carries 20 MB each way unchanged to each target, and stops everything it started", async () => {
    await using echo = startEchoServer();
    const path = await start([cs.port, echo.port]);
    let pids: number[] = [];
    try {
      expect(path.entries.length).toBe(2);
      const r = await transferBothWays({ host: "127.0.0.1", port: path.entries[0]!, bytes: 20 * MB, timeoutMs: 60_000 });
      expect(r.upload.error).toBeUndefined();
      expect(r.download.error).toBeUndefined();
      expect(r.upload.receivedSha256).toBe(r.upload.sentSha256);
      expect(r.download.receivedSha256).toBe(r.download.sentSha256);
      // The second entry leads to the echo server, not to the first target.
      expect((await pingPong("127.0.0.1", path.entries[1]!, 50)).rounds).toBe(50);
      // The relay processes did carry the bytes: they used CPU and are part of the path.
      const relay = treeUsage(path.relayPids);
      expect(relay.cpuSeconds).toBeGreaterThan(0);
      expect(relay.rssKiB).toBeGreaterThan(0);
      pids = path.pathPids.flatMap((p) => processTree(p));
      expect(pids.length).toBeGreaterThanOrEqual(3);
    } finally {
      await path.stop();
    }
    // Still running = present in /proc and not a zombie. A per-connection sshd process whose
    // parent ended is reparented to PID 1 and is a zombie until PID 1 gets round to reaping
    // it: it has ended, and when that happens is up to PID 1, not to the path.
    const alive = pids.filter((p) => {
      try {
        const stat = readFileSync(`/proc/${p}/stat`, "utf8");
        return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
      } catch {
        return false; // gone
      }
    });
    expect(alive).toEqual([]);
  }, 90_000);
});

describe("idle capacity machinery", () => {
  test("levelFigures", () => {
    expect(levelFigures({ count: 1000, opened: 1000, failed: 0, baselineRssKiB: 50_000, rssKiB: 82_000, sockets: 1003, cpu0: 1, cpu1: 1.05, idleMs: 10_000 })).toEqual({
      count: 1000,
      opened: 1000,
      failed: 0,
      firstError: undefined,
      relayRssKiB: 82_000,
      rssPerConnectionKiB: 32,
      relaySockets: 1003,
      idleCpuPercent: 0.5000000000000004,
    });
  });

  test("a missing connector module is named in the error", async () => {
    await expect(
      measureIdleCapacity({ relayPid: process.pid, connectorModule: "/nonexistent/connector.ts", context: { relay: "127.0.0.1:1", workDir: "/tmp", pkiDir: "/tmp" } }),
    ).rejects.toThrow(/no idle connector: \/nonexistent\/connector\.ts is missing/);
  });

  test("opens each level from a separate process; the server really holds the connections", async () => {
    // A real server process stands in for the relay; the connector is plain TCP.
    const port = await freePort();
    const server = spawnChild("echo server", [process.execPath, join(import.meta.dir, "..", "bench", "lib", "pingpong.ts"), "serve", String(port)]);
    const work = mkdtempSync(join(tmpdir(), "agent-idle-test-"));
    try {
      await waitForListen(port, 10_000, server);
      const base = socketCount(server.pid);
      const logged: string[] = [];
      const res = await measureIdleCapacity({
        relayPid: server.pid,
        connectorModule: join(import.meta.dir, "..", "bench", "lib", "idle-tcp-connector.ts"),
        context: { relay: `127.0.0.1:${port}`, workDir: work, pkiDir: work },
        counts: [200, 600],
        batch: 50,
        idleMs: 300,
        settleMs: 200,
        // The server is younger than this: the baseline waits (as for a relay's start-up trim).
        minRelayAgeMs: 1_000 + processAgeSeconds(server.pid) * 1000,
        log: (l) => void logged.push(l),
      });
      expect(logged.some((l) => /waiting \d+\.\d s more for the relay's start-up trim/.test(l))).toBe(true);
      expect(res.levels.map((l) => [l.count, l.opened, l.failed])).toEqual([
        [200, 200, 0],
        [600, 600, 0],
      ]);
      expect(res.baselineSockets).toBe(base);
      // Exact: measureIdleCapacity samples only once the server holds every opened connection
      // (it waits for the accepts, not a fixed time), and nothing else connects to it.
      expect(res.levels[0]!.relaySockets - base).toBe(200);
      expect(res.levels[1]!.relaySockets - base).toBe(600);
      expect(res.levels[1]!.relayRssKiB).toBeGreaterThan(0);
      expect(idleReport(res)).toMatch(/^600 +600 +600 /m);
      // The slow preparation ran once, for every level, before any connection was open.
      expect(readFileSync(join(work, "prepare.log"), "utf8")).toBe("prepare 0 600 after 0 opened\n");
      // The load process closed its connections when done (it has exited; the server sees
      // the FINs as fast as it gets the CPU: the deadline only bounds a broken run).
      const until = performance.now() + 20_000;
      while (socketCount(server.pid) > base && performance.now() < until) await Bun.sleep(50);
      expect(socketCount(server.pid)).toBe(base);
    } finally {
      await server.stop();
      rmSync(work, { recursive: true, force: true });
    }
  }, 60_000);

  test("samples only once the server has accepted what the load process opened", async () => {
    // The server is stopped (SIGSTOP) while the load opens: the kernel completes the handshakes
    // into its listen backlog, so every connect succeeds, but the server holds none of them
    // until it runs again, which it does only after the load has reported the level open.
    const port = await freePort();
    const server = spawnChild("echo server", [process.execPath, join(import.meta.dir, "..", "bench", "lib", "pingpong.ts"), "serve", String(port)]);
    const work = mkdtempSync(join(tmpdir(), "agent-idle-test-"));
    let resumed = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await waitForListen(port, 10_000, server);
      const base = socketCount(server.pid);
      process.kill(server.pid, "SIGSTOP");
      const res = await measureIdleCapacity({
        relayPid: server.pid,
        connectorModule: join(import.meta.dir, "..", "bench", "lib", "idle-tcp-connector.ts"),
        context: { relay: `127.0.0.1:${port}`, workDir: work, pkiDir: work },
        counts: [100],
        batch: 50,
        idleMs: 100,
        settleMs: 100,
        minRelayAgeMs: 0,
        log: (line) => {
          if (!/ open \(/.test(line)) return;
          expect(socketCount(server.pid)).toBe(base); // still stopped: nothing accepted yet
          timer = setTimeout(() => {
            resumed = true;
            process.kill(server.pid, "SIGCONT");
          }, 500);
        },
      });
      expect(resumed).toBe(true);
      expect(res.levels.map((l) => [l.count, l.opened, l.relaySockets - base])).toEqual([[100, 100, 100]]);
    } finally {
      clearTimeout(timer);
      if (!resumed) process.kill(server.pid, "SIGCONT");
      await server.stop();
      rmSync(work, { recursive: true, force: true });
    }
  }, 60_000);
});
