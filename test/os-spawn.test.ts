// The one process spawner: real commands (argv only, stdin, exit codes, a missing program,
// the timeout), the fake beside it, and the supervisor that runs hostapd/dnsmasq on top of
// it, driven in memory on FakeSpawner + FakeClock (restart backoff, a stable run, stop with
// SIGKILL after the grace period, wall-clock steps that change nothing).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FakeClock } from "../src/clock.ts";
import { createLogger } from "../src/log.ts";
import { CANNOT_RUN, describeFailure, execWith, FakeSpawner, realExec, realExecSync, realSpawn, type Exec, type ExecSync } from "../src/os/spawn.ts";
import { BACKOFF_MAX_MS, BACKOFF_MIN_MS, STABLE_RUN_MS, STOP_GRACE_MS, Supervisor } from "../src/uplink/supervisor.ts";

const DAY = 86_400_000;

describe.each([
  ["realExec", realExec],
  ["realExecSync", ((argv, opts) => Promise.resolve(realExecSync(argv, opts))) as Exec],
])("%s", (_name, exec) => {
  test("runs an argument array, never a shell: metacharacters stay one argument", async () => {
    const r = await exec(["echo", "$HOME; ls | wc", "'x'"]);
    expect(r).toEqual({ code: 0, stdout: "$HOME; ls | wc 'x'\n", stderr: "" });
  });

  test("feeds stdin and collects stdout, stderr and the exit code", async () => {
    const r = await exec(["sh", "-c", "cat; echo oops >&2; exit 3"], { stdin: "line one\nline two\n" });
    expect(r).toEqual({ code: 3, stdout: "line one\nline two\n", stderr: "oops\n" });
    expect(describeFailure(["sh", "-c", "..."], r)).toBe("sh -c ...: exit 3: oops");
  });

  test("runs in the directory asked for", async () => {
    expect((await exec(["pwd"], { cwd: "/proc" })).stdout).toBe("/proc\n");
  });

  test("a missing program is a failed command (127) naming it, not a throw", async () => {
    const r = await exec(["/nonexistent/agent-tool", "-V"]);
    expect(r.code).toBe(CANNOT_RUN);
    expect(r.stderr).toMatch(/^cannot run \/nonexistent\/agent-tool: /);
  });

  test("a command past its timeout is stopped with SIGTERM (128 + 15)", async () => {
    const t0 = performance.now();
    const r = await exec(["sleep", "20"], { timeoutMs: 150 });
    expect(r.code).toBe(143);
    expect(performance.now() - t0).toBeLessThan(5_000);
  });
});

describe("realSpawn", () => {
  test("a long-running child: its pid is live, a signal ends it and is reported", async () => {
    const c = realSpawn(["sleep", "30"], { stdout: "ignore", stderr: "ignore" });
    expect(existsSync(`/proc/${c.pid}`)).toBe(true);
    c.kill("SIGTERM");
    expect(await c.exited).toBe(143);
    expect(c.signalCode).toBe("SIGTERM");
  });

  test("env replaces the child's environment", async () => {
    const c = realSpawn(["sh", "-c", "echo \"$AGENT_T\""], { env: { AGENT_T: "seen", PATH: process.env.PATH } });
    expect(await new Response(c.stdout as ReadableStream).text()).toBe("seen\n");
    expect(await c.exited).toBe(0);
  });
});

describe("FakeSpawner", () => {
  test("scripts each command and records the calls", async () => {
    const f = new FakeSpawner((argv) => (argv[0] === "ip" ? { stdout: "[]" } : { code: 2, stderr: "no such device" }));
    expect(await f.exec(["ip", "-j", "link"])).toEqual({ code: 0, stdout: "[]", stderr: "" });
    expect(await f.exec(["mmcli", "-L"])).toEqual({ code: 2, stdout: "", stderr: "no such device" });
    expect(f.calls.map((c) => c.argv)).toEqual([["ip", "-j", "link"], ["mmcli", "-L"]]);
    expect(f.calls[0]!.opts.timeoutMs).toBe(10_000); // Exec always sets a timeout
  });

  test("a program that cannot start is 127 through exec, as with the real one", async () => {
    const f = new FakeSpawner(() => ({ spawnError: "ENOENT: no such file" }));
    expect((await f.exec(["hostapd"])).code).toBe(CANNOT_RUN);
    expect(f.children).toEqual([]);
  });

  test("the timeout kills a hung command on the fake clock", async () => {
    const clock = new FakeClock();
    const f = new FakeSpawner(() => ({ daemon: true }), clock);
    const exec = execWith(f.spawn, 500);
    const pending = exec(["iptables-save"]);
    clock.advance(499);
    await clock.settle();
    expect(f.running.length).toBe(1);
    clock.advance(1);
    expect((await pending).code).toBe(143);
    expect(f.children[0]!.signals).toEqual(["SIGTERM"]);
    expect(clock.pending).toBe(0);
  });

  test("a child that ignores SIGTERM runs on until SIGKILL", async () => {
    const f = new FakeSpawner(() => ({ daemon: true, ignores: ["SIGTERM"] }));
    const c = f.spawn(["stubborn"]);
    c.kill("SIGTERM");
    expect(f.running.length).toBe(1);
    c.kill(9);
    expect(await c.exited).toBe(137);
    expect(c.signalCode).toBe("SIGKILL");
  });

  test("a daemon writes output while it runs; its streams end when it exits", async () => {
    const f = new FakeSpawner(() => ({ daemon: true, stdout: "starting\n" }));
    const c = f.spawn(["hostapd"]);
    c.write("stdout", "AP-ENABLED\n");
    c.exit(1);
    expect(await new Response(c.stdout as ReadableStream).text()).toBe("starting\nAP-ENABLED\n");
    expect(await c.exited).toBe(1);
  });
});

describe("Supervisor on FakeSpawner + FakeClock", () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "os-spawn-"));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  let n = 0;
  function setup(script: ConstructorParameters<typeof FakeSpawner>[0] = () => ({ daemon: true })) {
    const clock = new FakeClock();
    const spawner = new FakeSpawner(script, clock);
    const lines: string[] = [];
    const log = createLogger({ level: "debug", write: (l) => void lines.push(l) });
    const pidFile = join(dir, `d${++n}`, "hostapd.pid");
    const sup = new Supervisor({ name: "hostapd", argv: ["/usr/sbin/hostapd", "/run/x.conf"], pidFile, log, spawn: spawner.spawn, clock, env: { AGENT_X: "1" } });
    return { clock, spawner, lines, pidFile, sup };
  }
  /** Lets the exit handlers (promise callbacks) run. */
  const settle = async () => {
    for (let i = 0; i < 3; i++) await Bun.sleep(0);
  };

  test("start: the argv and env reach the spawner, the pid file holds the pid (0600)", async () => {
    const s = setup();
    await s.sup.start();
    const call = s.spawner.calls[0]!;
    expect(call.argv).toEqual(["/usr/sbin/hostapd", "/run/x.conf"]);
    expect(call.opts.env?.AGENT_X).toBe("1");
    expect(call.opts.timeoutMs).toBeUndefined(); // a daemon has no deadline
    const pid = s.spawner.children[0]!.pid;
    expect(readFileSync(s.pidFile, "utf8")).toBe(`${pid}\n`);
    expect(statSync(s.pidFile).mode & 0o777).toBe(0o600);
    expect(s.sup.status()).toMatchObject({ name: "hostapd", running: true, pid, restarts: 0 });
    await s.sup.stop();
  });

  test("output lines go to the log at debug level", async () => {
    const s = setup(() => ({ daemon: true, stdout: "wlan0: AP-ENABLED\n", stderr: "half a li" }));
    await s.sup.start();
    const c = s.spawner.children[0]!;
    c.write("stderr", "ne\n");
    await settle();
    expect(s.lines.some((l) => l.includes("DEBUG") && l.includes("hostapd: wlan0: AP-ENABLED"))).toBe(true);
    expect(s.lines.some((l) => l.includes("hostapd: half a line"))).toBe(true);
    await s.sup.stop();
  });

  test("crashes restart with a doubling backoff, capped, and a stable run resets it", async () => {
    const s = setup();
    await s.sup.start();
    const waits: number[] = [];
    for (let i = 0; i < 9; i++) {
      s.spawner.running[0]!.exit(1);
      await settle();
      const wait = s.sup.status().next_restart_ms!;
      waits.push(wait);
      s.clock.advance(wait - 1);
      expect(s.spawner.children.length).toBe(i + 1); // not yet
      s.clock.advance(1);
      expect(s.spawner.children.length).toBe(i + 2); // restarted exactly on time
    }
    expect(waits).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    expect(waits[0]).toBe(BACKOFF_MIN_MS);
    expect(Math.max(...waits)).toBe(BACKOFF_MAX_MS);
    s.clock.advance(STABLE_RUN_MS);
    s.spawner.running[0]!.exit(1);
    await settle();
    expect(s.sup.status().next_restart_ms).toBe(BACKOFF_MIN_MS);
    expect(s.sup.status()).toMatchObject({ running: false, restarts: 10, last_exit: { code: 1 } });
    expect(s.lines.some((l) => l.includes("hostapd exited (code 1) after 60000 ms; restarting in 500 ms"))).toBe(true);
    await s.sup.stop();
  });

  test.each([
    ["+1 day", DAY],
    ["-1 day", -DAY],
  ])("a wall-clock step of %s changes neither the backoff nor the stable-run reset", async (_l, step) => {
    const s = setup();
    await s.sup.start();
    s.spawner.running[0]!.exit(1);
    await settle();
    s.clock.stepWall(step);
    expect(s.sup.status().next_restart_ms).toBe(500);
    s.clock.advance(500);
    expect(s.spawner.children.length).toBe(2);
    // a crash right after the step is a quick crash: the backoff doubles, not resets
    s.clock.stepWall(step);
    s.spawner.running[0]!.exit(1);
    await settle();
    expect(s.sup.status().next_restart_ms).toBe(1000);
    // last_exit.at is a timestamp people read: on the (stepped) wall clock
    expect(Date.parse(s.sup.status().last_exit!.at)).toBe(s.clock.wall());
    await s.sup.stop();
  });

  test("a crash by signal is reported with the signal", async () => {
    const s = setup();
    await s.sup.start();
    s.spawner.running[0]!.kill("SIGSEGV");
    await settle();
    expect(s.sup.status().last_exit).toMatchObject({ code: null, signal: "SIGSEGV" });
    expect(existsSync(s.pidFile)).toBe(false); // no pid file while nothing runs
    await s.sup.stop();
  });

  test("a program that cannot start is retried with backoff", async () => {
    let fail = true;
    const s = setup(() => (fail ? { spawnError: "ENOENT" } : { daemon: true }));
    await s.sup.start();
    expect(s.sup.status()).toMatchObject({ running: false, restarts: 1, next_restart_ms: 500 });
    fail = false;
    s.clock.advance(500);
    expect(s.sup.status().running).toBe(true);
    await s.sup.stop();
  });

  test("stop: SIGTERM, then SIGKILL after the grace period for a child that ignores it; no restart", async () => {
    const s = setup(() => ({ daemon: true, ignores: ["SIGTERM"] }));
    await s.sup.start();
    const c = s.spawner.children[0]!;
    let stopped = false;
    const p = s.sup.stop().then(() => (stopped = true));
    await settle();
    expect(c.signals).toEqual(["SIGTERM"]);
    s.clock.advance(STOP_GRACE_MS - 1);
    await settle();
    expect(stopped).toBe(false);
    s.clock.advance(1);
    await p;
    expect(c.signals).toEqual(["SIGTERM", "SIGKILL"]);
    expect(existsSync(s.pidFile)).toBe(false);
    s.clock.advance(BACKOFF_MAX_MS * 2);
    expect(s.spawner.children.length).toBe(1);
    expect(s.clock.pending).toBe(0);
  });

  test("stop during a pending restart cancels it", async () => {
    const s = setup();
    await s.sup.start();
    s.spawner.running[0]!.exit(1);
    await settle();
    await s.sup.stop();
    s.clock.advance(BACKOFF_MAX_MS);
    expect(s.spawner.children.length).toBe(1);
    expect(s.sup.status().next_restart_ms).toBeUndefined();
  });
});

test("doctor's iptables probe goes through the injected runner", async () => {
  const { gatherFacts } = await import("../src/doctor.ts");
  const seen: (readonly string[])[] = [];
  const fake: ExecSync = (argv) => (seen.push(argv), { code: 0, stdout: "iptables v1.8.9 (nf_tables)\n", stderr: "" });
  const dir = mkdtempSync(join(tmpdir(), "os-spawn-doctor-"));
  try {
    const bin = join(dir, "bin");
    const { mkdirSync, writeFileSync } = await import("node:fs");
    mkdirSync(bin);
    writeFileSync(join(bin, "iptables"), "#!/bin/sh\nexit 99\n", { mode: 0o755 });
    const facts = gatherFacts({ PATH: bin, stateDir: join(dir, "state"), execSync: fake });
    expect(facts.iptablesBackend).toBe("nf_tables");
    expect(seen[0]![1]).toBe("-V");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
