// Processes and ports for system tests and benchmarks: what a process costs (RSS and CPU
// from /proc, summed over its process tree when a server forks per connection), a child
// process we own and stop by pid, free ports and waiting for a listener.
import { existsSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { waitFor } from "./wait.ts";

/** How long a child gets between SIGTERM and SIGKILL when we stop it. */
export const STOP_GRACE_MS = 2_000;
/** How much of a child's output we keep for error messages. */
const KEEP_OUTPUT_CHARS = 16_384;

// ---------------------------------------------------------------- /proc parsing (pure)

export interface StatFields {
  ppid: number;
  /** Clock ticks, this process (all threads). */
  utime: number;
  stime: number;
  /** Clock ticks of children this process has waited for (a forking server's finished workers). */
  cutime: number;
  cstime: number;
}

/**
 * Parses /proc/PID/stat. The command name (field 2) sits in parentheses and may itself hold
 * spaces and parentheses, so the fields are counted from the last ")".
 */
export function parseStat(text: string): StatFields {
  const close = text.lastIndexOf(")");
  if (close < 0) throw new Error(`not a /proc/PID/stat line: ${JSON.stringify(text.slice(0, 80))}`);
  // After ")": field 3 (state) is index 0, so field N is index N - 3.
  const f = text.slice(close + 2).trim().split(/\s+/);
  const num = (field: number) => {
    const v = Number(f[field - 3]);
    if (!Number.isInteger(v)) throw new Error(`/proc/PID/stat field ${field} is ${JSON.stringify(f[field - 3])}, not an integer`);
    return v;
  };
  return { ppid: num(4), utime: num(14), stime: num(15), cutime: num(16), cstime: num(17) };
}

/** Field 22 of /proc/PID/stat: when the process started, clock ticks after boot. */
export function parseStartTicks(text: string): number {
  const close = text.lastIndexOf(")");
  const v = Number(close < 0 ? NaN : text.slice(close + 2).trim().split(/\s+/)[22 - 3]);
  if (!Number.isInteger(v)) throw new Error(`not a /proc/PID/stat line with a start time: ${JSON.stringify(text.slice(0, 80))}`);
  return v;
}

/** Reads a "Key:   123 kB" line of /proc/PID/status, in KiB. Kernel threads have no VmRSS: 0. */
export function parseStatusKiB(text: string, key: "VmRSS" | "VmHWM"): number {
  const m = new RegExp(`^${key}:\\s+(\\d+) kB$`, "m").exec(text);
  return m ? Number(m[1]) : 0;
}

// ---------------------------------------------------------------- /proc adapters

let clkTck: number | undefined;
/** Clock ticks per second (`getconf CLK_TCK`), read once. */
export function clockTicks(): number {
  if (clkTck === undefined) {
    const p = Bun.spawnSync(["getconf", "CLK_TCK"], { stdout: "pipe", stderr: "pipe" });
    const v = Number(p.stdout.toString().trim());
    if (p.exitCode !== 0 || !Number.isInteger(v) || v <= 0) throw new Error(`getconf CLK_TCK failed: ${p.stderr.toString().trim() || p.stdout.toString()}`);
    clkTck = v;
  }
  return clkTck;
}

function readProc(pid: number, file: string): string {
  try {
    return readFileSync(`/proc/${pid}/${file}`, "utf8");
  } catch (cause) {
    throw new Error(`process ${pid} is gone (reading /proc/${pid}/${file})`, { cause });
  }
}

/** Resident set size of one process, KiB. */
export function rssKiB(pid: number): number {
  return parseStatusKiB(readProc(pid, "status"), "VmRSS");
}

/** Peak resident set size of one process since it started, KiB. */
export function peakRssKiB(pid: number): number {
  return parseStatusKiB(readProc(pid, "status"), "VmHWM");
}

/**
 * CPU seconds (user + system) of one process, all its threads. With `children`, the CPU of
 * its children that have exited and been reaped is added (how a fork-per-connection server
 * such as socat keeps the cost of connections that are already closed).
 */
export function cpuSeconds(pid: number, opts: { children?: boolean } = {}): number {
  const s = parseStat(readProc(pid, "stat"));
  const ticks = s.utime + s.stime + (opts.children ? s.cutime + s.cstime : 0);
  return ticks / clockTicks();
}

/** Seconds since `pid` started (/proc/uptime minus its start time). */
export function processAgeSeconds(pid: number): number {
  const uptime = Number(readFileSync("/proc/uptime", "utf8").split(" ")[0]);
  return uptime - parseStartTicks(readProc(pid, "stat")) / clockTicks();
}

/** Parent pid of every live process (a snapshot of /proc). */
function parentTable(): Map<number, number> {
  const table = new Map<number, number>();
  for (const name of readdirSync("/proc")) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    try {
      table.set(pid, parseStat(readFileSync(`/proc/${pid}/stat`, "utf8")).ppid);
    } catch {
      // exited while we listed /proc
    }
  }
  return table;
}

/** `pid` and all its live descendants. */
export function processTree(pid: number): number[] {
  const parents = parentTable();
  const children = new Map<number, number[]>();
  for (const [child, parent] of parents) {
    const list = children.get(parent) ?? [];
    list.push(child);
    children.set(parent, list);
  }
  const out: number[] = [];
  const todo = [pid];
  while (todo.length) {
    const p = todo.pop()!;
    out.push(p);
    todo.push(...(children.get(p) ?? []));
  }
  return out;
}

export interface Usage {
  /** Sum of VmRSS, KiB. */
  rssKiB: number;
  /** Sum of user + system CPU seconds, reaped children included. */
  cpuSeconds: number;
  pids: number[];
}

/**
 * RSS and CPU of the given processes and all their descendants. Each process counts its own
 * CPU plus that of its reaped children, which are no longer in the tree, so nothing is
 * counted twice. A process that exits while we read is skipped.
 */
export function treeUsage(roots: readonly number[]): Usage {
  const pids = [...new Set(roots.flatMap((r) => processTree(r)))];
  let rss = 0;
  let cpu = 0;
  const seen: number[] = [];
  for (const pid of pids) {
    try {
      const stat = parseStat(readFileSync(`/proc/${pid}/stat`, "utf8"));
      const status = readFileSync(`/proc/${pid}/status`, "utf8");
      cpu += (stat.utime + stat.stime + stat.cutime + stat.cstime) / clockTicks();
      rss += parseStatusKiB(status, "VmRSS");
      seen.push(pid);
    } catch {
      // exited between the listing and the read
    }
  }
  return { rssKiB: rss, cpuSeconds: cpu, pids: seen };
}

// ---------------------------------------------------------------- ports

/** Ports freePort handed out lately: the kernel may offer a released port again at once. */
const recentPorts: number[] = [];
const RECENT_PORTS_KEPT = 512;

/**
 * A TCP port that was free a moment ago on `host` (the kernel picks it), never one this
 * process got from freePort lately, so several ports taken before anything binds them differ.
 * For programs that cannot be told to listen on port 0 and report the port; another process
 * can still take it before ours binds, so callers that can should retry on "address in use".
 */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const l = Bun.listen({ hostname: host, port: 0, socket: { data() {} } });
    const port = l.port;
    l.stop(true);
    if (recentPorts.includes(port)) continue;
    recentPorts.push(port);
    if (recentPorts.length > RECENT_PORTS_KEPT) recentPorts.shift();
    return port;
  }
  throw new Error(`no free TCP port on ${host} that was not handed out lately`);
}

/** Resolves once a TCP connection to host:port succeeds; throws after `ms`. */
export async function waitForPort(host: string, port: number, ms = 10_000, what = `${host}:${port}`): Promise<void> {
  await waitFor(
    async () => {
      const s = await Bun.connect({ hostname: host, port, socket: { data() {} } });
      s.end();
      return true;
    },
    ms,
    `${what} to accept TCP connections`,
    { every: 25 },
  );
}

// ---------------------------------------------------------------- child processes

/** A child process we started: its output is kept for errors; `stop()` ends it by pid. */
export class Child implements AsyncDisposable {
  readonly pid: number;
  readonly exited: Promise<number>;
  private out = "";
  private stopped = false;
  private listeners = new Set<(text: string) => void>();

  constructor(
    readonly name: string,
    // stdin is "pipe" when the child was spawned with { stdin: true }, else "ignore".
    private readonly proc: Bun.Subprocess<"pipe" | "ignore", "pipe", "pipe">,
  ) {
    this.pid = proc.pid;
    this.exited = proc.exited;
    void this.drain(proc.stdout);
    void this.drain(proc.stderr);
  }

  /** A pipe nobody reads fills up and blocks the child: keep reading, keep the tail. */
  private async drain(stream: ReadableStream<Uint8Array>): Promise<void> {
    const dec = new TextDecoder();
    try {
      for await (const chunk of stream) {
        const text = dec.decode(chunk, { stream: true });
        this.out += text;
        for (const l of this.listeners) l(text);
        if (this.out.length > 2 * KEEP_OUTPUT_CHARS) this.out = this.out.slice(-KEEP_OUTPUT_CHARS);
      }
    } catch {
      // the pipe closed under us: the child is gone
    }
  }

  /** Calls `fn` with each piece of output from now on (stdout and stderr); returns the unsubscribe. */
  onOutput(fn: (text: string) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Writes to the child's stdin (spawned with { stdin: true }). */
  write(text: string): void {
    const sink = this.proc.stdin;
    if (!sink || typeof sink === "number") throw new Error(`${this.name} was started without a stdin pipe`);
    sink.write(text);
    void sink.flush();
  }

  /** The tail of stdout and stderr interleaved. */
  output(): string {
    return this.out.slice(-KEEP_OUTPUT_CHARS);
  }

  get running(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** SIGTERM, then SIGKILL after STOP_GRACE_MS. Idempotent; resolves once the child is gone. */
  async stop(): Promise<void> {
    if (!this.stopped) {
      this.stopped = true;
      if (this.running) {
        this.proc.kill("SIGTERM");
        const timer = setTimeout(() => this.running && this.proc.kill("SIGKILL"), STOP_GRACE_MS);
        await this.exited;
        clearTimeout(timer);
      }
    }
    await this.exited;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  /** Error with the child's name, exit state and output tail: what a failing test should print. */
  failure(what: string): Error {
    const state = this.running ? "running" : `exited ${this.proc.exitCode ?? this.proc.signalCode}`;
    return new Error(`${what} (${this.name}, pid ${this.pid}, ${state})\n--- output ---\n${this.output()}`);
  }
}

export interface SpawnOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** A stdin pipe for Child.write (else stdin is /dev/null). */
  stdin?: boolean;
}

export function spawnChild(name: string, argv: string[], opts: SpawnOptions = {}): Child {
  const proc = Bun.spawn(argv, { stdin: opts.stdin ? "pipe" : "ignore", stdout: "pipe", stderr: "pipe", cwd: opts.cwd, env: opts.env ?? process.env });
  return new Child(name, proc as Bun.Subprocess<"pipe" | "ignore", "pipe", "pipe">);
}

/** Children started together and stopped together, last started first. */
export class Children implements AsyncDisposable {
  private list: Child[] = [];

  spawn(name: string, argv: string[], opts: SpawnOptions = {}): Child {
    const c = spawnChild(name, argv, opts);
    this.list.push(c);
    return c;
  }

  async stopAll(): Promise<void> {
    const list = this.list.reverse();
    this.list = [];
    for (const c of list) await c.stop();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stopAll();
  }
}

export interface RunOptions {
  /** Deadline for the whole run, output included (default 30 s). */
  timeoutMs?: number;
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** Written to the command's stdin (else stdin is /dev/null). */
  stdin?: string;
}

/** How long output pipes may stay open once a timed-out command's process tree is killed. */
const PIPE_GRACE_MS = 1_000;

/**
 * Runs a command to completion with a deadline; output captured. The deadline bounds the
 * whole call, output included: a grandchild that keeps stdout open (a daemon the command
 * started) cannot hold it past the deadline. On timeout the command and its descendants
 * are killed by pid and the call throws with what output there was.
 */
export async function run(argv: string[], opts: RunOptions = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn(argv, {
    stdin: opts.stdin === undefined ? "ignore" : new TextEncoder().encode(opts.stdin),
    stdout: "pipe",
    stderr: "pipe",
    cwd: opts.cwd,
    env: opts.env ?? process.env,
  });
  const timeoutMs = opts.timeoutMs ?? 30_000;
  let stdout = "";
  let stderr = "";
  const collect = async (stream: ReadableStream<Uint8Array>, into: (t: string) => void) => {
    const dec = new TextDecoder();
    try {
      for await (const chunk of stream) into(dec.decode(chunk, { stream: true }));
    } catch {
      // the pipe closed under us
    }
  };
  const done = Promise.all([collect(p.stdout, (t) => (stdout += t)), collect(p.stderr, (t) => (stderr += t)), p.exited]);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), timeoutMs)));
  const first = await Promise.race([done, deadline]);
  clearTimeout(timer);
  if (first !== "timeout") return { code: first[2], stdout, stderr };
  const exited = p.exitCode !== null || p.signalCode !== null;
  // Children first would be reparented before we see them: list the tree, then kill it all.
  for (const pid of processTree(p.pid).reverse()) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  await Promise.race([done, Bun.sleep(PIPE_GRACE_MS)]);
  const why = exited
    ? `exited ${p.exitCode ?? p.signalCode} but its output stayed open (a process it left behind holds the pipe)`
    : "did not finish";
  throw new Error(`${argv.join(" ")} ${why} within ${timeoutMs} ms\n--- stderr ---\n${stderr.slice(-KEEP_OUTPUT_CHARS)}\n--- stdout ---\n${stdout.slice(-KEEP_OUTPUT_CHARS)}`);
}

/**
 * Local ports in LISTEN state, from /proc/net/tcp and tcp6 (this network namespace). Lets us
 * wait for a server without connecting to it: a probe connection is a real client to
 * iperf3 (it would start a test) and a log line to sshd.
 */
export function listeningPorts(): Set<number> {
  return new Set(listeners().map((l) => l.port));
}

/** LISTEN sockets of this network namespace: port and socket inode. */
export function listeners(): { port: number; inode: number }[] {
  const out: { port: number; inode: number }[] = [];
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue; // no IPv6 in this kernel
    }
    out.push(...parseListeners(text));
  }
  return out;
}

/** The LISTEN (state 0A) rows of a /proc/net/tcp table: local port and socket inode. */
export function parseListeners(text: string): { port: number; inode: number }[] {
  const out: { port: number; inode: number }[] = [];
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || f[3] !== "0A") continue;
    const port = parseInt(f[1]!.split(":")[1] ?? "", 16);
    const inode = Number(f[9]);
    if (Number.isInteger(port) && Number.isInteger(inode)) out.push({ port, inode });
  }
  return out;
}

/** Ports of the LISTEN rows of a /proc/net/tcp table. */
export function parseListening(text: string): number[] {
  return parseListeners(text).map((l) => l.port);
}

/** Inodes of the sockets open in `pid` and its descendants. */
export function socketInodes(pid: number): Set<number> {
  const out = new Set<number>();
  for (const p of processTree(pid)) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${p}/fd`);
    } catch {
      continue; // exited
    }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${p}/fd/${fd}`));
        if (m) out.add(Number(m[1]));
      } catch {
        // closed while we looked
      }
    }
  }
  return out;
}

/**
 * Resolves once something listens on TCP `port`; throws after `ms`, or at once if `child`
 * exits. With `owned`, only a listener of `child` (or its descendants) counts: another
 * process that took the port between freePort() and the child's bind must not pass for it.
 */
export async function waitForListen(port: number, ms = 10_000, child?: Child, opts: { owned?: boolean } = {}): Promise<void> {
  const owner = opts.owned ? child : undefined;
  const probe = () => {
    const l = listeners().filter((x) => x.port === port);
    if (!l.length) return false;
    if (!owner) return true;
    const mine = socketInodes(owner.pid);
    return l.some((x) => mine.has(x.inode));
  };
  const abort = () => (child && !child.running ? child.failure(`exited before listening on port ${port}`) : undefined);
  try {
    await waitFor(probe, ms, `a listener on TCP port ${port}`, { abort });
  } catch (e) {
    if (child && !child.running) throw e; // the child's own failure, from abort
    const msg = `${owner ? `${owner.name} does not listen` : "nothing listens"} on TCP port ${port} after ${ms} ms`;
    throw child ? child.failure(msg) : new Error(msg);
  }
}

/** Which of these programs are not on PATH (or not at the absolute path given). */
export function missingPrograms(names: readonly string[]): string[] {
  return names.filter((n) => (n.startsWith("/") ? !existsSync(n) : !Bun.which(n)));
}

/**
 * For a system test's file: returns true when its programs are present. When some are
 * missing it returns false (the caller skips, saying why) — except in CI, where a missing
 * program is a broken runner and the test file must fail instead of skipping.
 */
export function programsPresent(file: string, names: readonly string[]): boolean {
  const missing = missingPrograms(names);
  if (missing.length === 0) return true;
  const msg = `${file} needs ${missing.join(", ")} (scripts/deps.sh installs them)`;
  if (process.env.CI) throw new Error(`${msg}; in CI this is a failure, not a skip`);
  console.warn(`skipping: ${msg}`);
  return false;
}

/** How many sockets a process has open (/proc/PID/fd links to "socket:[...]"): what a server really holds. */
export function socketCount(pid: number): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith("socket:")) n++;
    } catch {
      // closed while we looked
    }
  }
  return n;
}

/** This process's open-files limit (soft, hard) from /proc/self/limits; Infinity for "unlimited". */
export function nofileLimits(): { soft: number; hard: number } {
  const line = readFileSync("/proc/self/limits", "utf8").split("\n").find((l) => l.startsWith("Max open files"));
  const f = line?.trim().split(/\s+/) ?? [];
  const num = (v: string | undefined) => (v === "unlimited" ? Infinity : Number(v));
  const soft = num(f[3]);
  const hard = num(f[4]);
  if (!Number.isFinite(soft) && soft !== Infinity) throw new Error(`cannot read "Max open files" from /proc/self/limits: ${JSON.stringify(line)}`);
  return { soft, hard };
}

/**
 * argv that runs with at least `want` open files where this process may grant it: children
 * inherit our soft limit, and prlimit (which execs: same pid) raises it up to our hard limit.
 * Raising the hard limit itself needs CAP_SYS_RESOURCE, which containers often drop, so we
 * never ask for more than the hard limit: the child gets min(want, hard).
 */
export function nofileArgv(argv: string[], want: number): string[] {
  const { soft, hard } = nofileLimits();
  if (soft >= want || soft >= hard || missingPrograms(["prlimit"]).length) return argv;
  const target = Math.min(want, hard);
  return ["prlimit", `--nofile=${target}:${hard === Infinity ? "unlimited" : hard}`, "--", ...argv];
}
