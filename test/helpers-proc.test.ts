// test/helpers/proc.ts: /proc parsing is table-tested; the readers are checked against
// independent measurements (the process's own cpuUsage, memory it allocates, processes it forks).
import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import {
  Children,
  cpuSeconds,
  freePort,
  listeners,
  listeningPorts,
  missingPrograms,
  parseListeners,
  parseListening,
  parseStat,
  parseStartTicks,
  parseStatusKiB,
  processTree,
  rssKiB,
  run,
  socketInodes,
  spawnChild,
  treeUsage,
  waitForListen,
  waitForPort,
} from "./helpers/proc.ts";
import { waitFor } from "./helpers/wait.ts";

// Field layout of /proc/PID/stat: pid (comm) state ppid pgrp session tty tpgid flags minflt
// cminflt majflt cmajflt utime stime cutime cstime ...
const stat = (comm: string, ppid: number, ut: number, st: number, cut: number, cst: number) =>
  `1234 (${comm}) S ${ppid} 1234 1234 0 -1 4194560 100 0 0 0 ${ut} ${st} ${cut} ${cst} 20 0 1 0 5000 1000000 200 18446744073709551615\n`;

describe("parseStat", () => {
  test.each([
    ["plain name", stat("sshd", 1, 10, 5, 0, 0), { ppid: 1, utime: 10, stime: 5, cutime: 0, cstime: 0 }],
    ["name with spaces", stat("Web Content", 77, 1, 2, 3, 4), { ppid: 77, utime: 1, stime: 2, cutime: 3, cstime: 4 }],
    ["name with ') ('", stat("a) (b", 9, 100, 200, 300, 400), { ppid: 9, utime: 100, stime: 200, cutime: 300, cstime: 400 }],
  ])("%s", (_name, text, want) => {
    expect(parseStat(text)).toEqual(want);
  });

  test.each([["no parentheses", "1234 sshd S 1"], ["too short", "1 (x) S 1 2"]])("rejects %s", (_name, text) => {
    expect(() => parseStat(text)).toThrow(/proc\/PID\/stat/);
  });
});

test("parseStartTicks: field 22, counted from the last ')'", () => {
  expect(parseStartTicks(stat("a) (b", 9, 100, 200, 300, 400))).toBe(5000);
  expect(() => parseStartTicks("1 (x) S 1 2")).toThrow(/start time/);
});

describe("parseStatusKiB", () => {
  const status = "Name:\tsshd\nVmPeak:\t  20000 kB\nVmHWM:\t    9000 kB\nVmRSS:\t    8123 kB\nThreads:\t1\n";
  test.each([
    ["VmRSS", status, 8123],
    ["VmHWM", status, 9000],
    ["VmRSS", "Name:\tkthreadd\nThreads:\t1\n", 0],
  ] as const)("%s", (key, text, want) => {
    expect(parseStatusKiB(text, key)).toBe(want);
  });
});

test("parseListening / parseListeners keep LISTEN rows only, read hex ports and inodes", () => {
  const table = [
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4711 1 0 100 0 0 10 0",
    "   1: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1",
    "   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 815 1 0 100 0 0 10 0",
    "",
  ].join("\n");
  expect(parseListening(table)).toEqual([8080, 22]);
  expect(parseListeners(table)).toEqual([
    { port: 8080, inode: 4711 },
    { port: 22, inode: 815 },
  ]);
});

test("rssKiB sees memory a process touches", async () => {
  // Two fresh processes, one of which touches 128 MiB: measured in this test process, the
  // allocator could hand back pages an earlier test file already made resident, and the
  // figure would not move.
  await using kids = new Children();
  const script = (mib: number) => `const b = Buffer.alloc(${mib} * 1024 * 1024, 1); console.log("ready " + b[b.length - 1]); setInterval(() => b[0]++, 1000);`;
  const idle = kids.spawn("idle", [process.execPath, "-e", script(1)]);
  const big = kids.spawn("big", [process.execPath, "-e", script(128)]);
  await waitFor(() => idle.output().includes("ready 1") && big.output().includes("ready 1"), 20_000, "both children ready");
  expect(rssKiB(big.pid) - rssKiB(idle.pid)).toBeGreaterThan(96 * 1024);
}, 30_000);

test("cpuSeconds agrees with process.cpuUsage()", () => {
  const c0 = cpuSeconds(process.pid);
  const u0 = process.cpuUsage();
  let x = 0;
  // Bounded busy loop: about a third of a second of CPU.
  for (let i = 0; i < 1000 && cpuSeconds(process.pid) - c0 < 0.3; i++) for (let j = 0; j < 1_000_000; j++) x += j % 7;
  const c1 = cpuSeconds(process.pid);
  const u1 = process.cpuUsage(u0);
  expect(x).toBeGreaterThan(0);
  expect(c1 - c0).toBeGreaterThan(0.29); // 0.3 s in 10 ms ticks, less float rounding
  // /proc counts in clock ticks (10 ms here), cpuUsage in microseconds.
  expect(Math.abs(c1 - c0 - (u1.user + u1.system) / 1e6)).toBeLessThan(0.1);
});

test("treeUsage finds forked children and the CPU of reaped ones", async () => {
  // The subshell burns CPU and exits (the shell reaps it); then two sleeps stay alive.
  await using kids = new Children();
  const sh = kids.spawn("sh", ["sh", "-c", "( i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done ); sleep 30 & sleep 30 & echo ready; wait"]);
  await waitFor(() => sh.output().includes("ready"), 20_000, "the shell's ready");
  expect(sh.output()).toContain("ready");
  const tree = processTree(sh.pid);
  expect(tree).toContain(sh.pid);
  expect(tree.length).toBe(3);
  const u = treeUsage([sh.pid]);
  expect(u.pids.sort()).toEqual(tree.sort());
  expect(u.rssKiB).toBeGreaterThan(0);
  // The busy subshell is gone, its CPU is in the shell's cutime: the tree still has it.
  expect(cpuSeconds(sh.pid)).toBeLessThan(u.cpuSeconds);
  expect(u.cpuSeconds).toBeGreaterThan(0.05);
  await kids.stopAll();
  expect(sh.running).toBe(false);
}, 30_000);

test("freePort gives a port one can listen on; waitForListen and waitForPort see the listener", async () => {
  const port = await freePort();
  expect(listeningPorts().has(port)).toBe(false);
  const l = Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } });
  try {
    await waitForListen(port, 2_000);
    await waitForPort("127.0.0.1", port, 2_000);
    expect(listeningPorts().has(port)).toBe(true);
  } finally {
    l.stop(true);
  }
  expect(listeningPorts().has(port)).toBe(false);
  await expect(waitForPort("127.0.0.1", port, 200)).rejects.toThrow(/timed out after 200 ms/);
  await expect(waitForListen(port, 200)).rejects.toThrow(/nothing listens on TCP port/);
});

test("waitForListen with owned: a port someone else holds does not count for the child", async () => {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const c = spawnChild("sleeper", ["sleep", "30"]);
  try {
    await waitForListen(l.port, 1_000, c);
    await expect(waitForListen(l.port, 300, c, { owned: true })).rejects.toThrow(/sleeper does not listen on TCP port \d+ after 300 ms/);
    // The inode matching that decides ownership finds this process as the holder.
    const mine = socketInodes(process.pid);
    expect(listeners().some((x) => x.port === l.port && mine.has(x.inode))).toBe(true);
  } finally {
    l.stop(true);
    await c.stop();
  }
});

test("waitForListen fails at once when the child that should listen exits, with its output", async () => {
  const c = spawnChild("false-server", ["sh", "-c", "echo cannot bind >&2; exit 3"]);
  await expect(waitForListen(await freePort(), 10_000, c)).rejects.toThrow(/exited before listening[\s\S]*exited 3[\s\S]*cannot bind/);
});

test("Child.stop ends a process that ignores SIGTERM (SIGKILL after the grace) and is idempotent", async () => {
  const c = spawnChild("stubborn", ["sh", "-c", "trap '' TERM; echo up; while :; do sleep 1; done"]);
  await waitFor(() => c.output().includes("up"), 5_000, "the child's up");
  await Promise.all([c.stop(), c.stop()]);
  expect(c.running).toBe(false);
  expect(await c.exited).not.toBe(0);
}, 15_000);

test("run kills a command that outlives its deadline", async () => {
  await expect(run(["sleep", "30"], { timeoutMs: 200 })).rejects.toThrow(/did not finish within 200 ms/);
  expect(await run(["sh", "-c", "echo out; echo err >&2; exit 4"])).toEqual({ code: 4, stdout: "out\n", stderr: "err\n" });
});

test("run's deadline bounds a grandchild that holds the pipes, and kills it with the command", async () => {
  // The shell waits for its background sleep: both hold stdout. Both are killed at the deadline.
  const t0 = performance.now();
  const err = await run(["sh", "-c", "sleep 30 & echo $!; wait"], { timeoutMs: 300 }).catch((e: Error) => e);
  expect(performance.now() - t0).toBeLessThan(5_000);
  expect((err as Error).message).toMatch(/did not finish within 300 ms/);
  const sleeper = Number(/--- stdout ---\n(\d+)/.exec((err as Error).message)?.[1]);
  expect(sleeper).toBeGreaterThan(0);
  await waitFor(() => !existsSync(`/proc/${sleeper}`), 5_000, `the background sleep ${sleeper} to be killed`);
});

test("run's deadline holds when the command exits but leaves a process holding its output", async () => {
  // The shell exits at once; the orphaned sleep keeps stdout open for 3 s (then ends by itself).
  const t0 = performance.now();
  await expect(run(["sh", "-c", "sleep 3 & exit 0"], { timeoutMs: 300 })).rejects.toThrow(/exited 0 but its output stayed open/);
  expect(performance.now() - t0).toBeLessThan(2_500);
});

test("missingPrograms", () => {
  expect(missingPrograms(["sh", "/bin/sh", "no-such-program-xyz", "/no/such/file"])).toEqual(["no-such-program-xyz", "/no/such/file"]);
});
