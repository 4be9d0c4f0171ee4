// Starting other programs: the one place the agent calls Bun.spawn. Always an argument array,
// never a shell string; a timeout, when one is given, is enforced here (SIGTERM when it runs
// out). Two shapes sit on top of the one spawner:
//
//   - `Exec`: run a command to completion and collect its exit code and output (ip, iptables,
//     nft, mmcli, ubus, conntrack…). Every adapter takes an injected Exec, so tests record or
//     script commands; `execWith(spawner)` builds one from any spawner.
//   - a long-running `Child` with streams (hostapd, dnsmasq under `uplink/supervisor.ts`).
//
// `FakeSpawner` beside the real one runs scripted children in memory on an injected clock:
// output, exit codes, exits on signals or not, timeouts.
import { constants } from "node:os";
import { systemClock, type Clock, type TimerHandle } from "../clock.ts";

export type StdinSpec = "ignore" | "inherit" | string | Uint8Array;
export type StdoutSpec = "pipe" | "ignore" | "inherit";

export interface SpawnOptions {
  /** Default "ignore". Text or bytes are written to the child's stdin, which is then closed. */
  stdin?: StdinSpec;
  /** Default "pipe". */
  stdout?: StdoutSpec;
  stderr?: StdoutSpec;
  /** The child's whole environment (default: ours). */
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** SIGTERM after this long; undefined: no limit (a daemon). */
  timeoutMs?: number;
}

/** A started program. The real one is Bun's Subprocess, which has this shape. */
export interface Child {
  readonly pid: number;
  readonly stdout: ReadableStream<Uint8Array> | number | null | undefined;
  readonly stderr: ReadableStream<Uint8Array> | number | null | undefined;
  /** Resolves with the exit code, or 128 + the signal number when a signal ended it. */
  readonly exited: Promise<number>;
  /** The signal that ended it ("SIGTERM"), once exited; null otherwise. */
  readonly signalCode: string | null;
  kill(signal?: NodeJS.Signals | number): void;
}

/** Starts `argv`; throws (ENOENT…) when the program cannot be started at all. */
export type Spawner = (argv: readonly string[], opts?: SpawnOptions) => Child;

const stdinOf = (s: StdinSpec | undefined) => (s === undefined ? "ignore" : typeof s === "string" ? new TextEncoder().encode(s) : s);

export const realSpawn: Spawner = (argv, opts = {}) =>
  Bun.spawn([...argv], {
    stdin: stdinOf(opts.stdin),
    stdout: opts.stdout ?? "pipe",
    stderr: opts.stderr ?? "pipe",
    env: opts.env,
    cwd: opts.cwd,
    timeout: opts.timeoutMs,
  }) as Child;

// ---- Run to completion ----

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Text for the command's stdin (e.g. an `iptables-restore` or `nft -f -` script). */
  stdin?: string;
  timeoutMs?: number;
  /** Working directory (default: ours). */
  cwd?: string;
}

export type Exec = (argv: readonly string[], opts?: ExecOptions) => Promise<ExecResult>;
export type ExecSync = (argv: readonly string[], opts?: ExecOptions) => ExecResult;

/** Upper bound for one system command (ip, mmcli, ubus): a hung tool must not stall the daemon. */
export const EXEC_TIMEOUT_MS = 10_000;
/** Exit code reported when the program could not be started (as a shell reports it). */
export const CANNOT_RUN = 127;

const cannotRun = (argv: readonly string[], e: unknown): ExecResult => ({ code: CANNOT_RUN, stdout: "", stderr: `cannot run ${argv[0]}: ${(e as Error).message}` });

async function text(s: Child["stdout"]): Promise<string> {
  return s instanceof ReadableStream ? new Response(s).text() : "";
}

/** An Exec on top of `spawn`: stdin from text, both outputs collected, a timeout always. */
export function execWith(spawn: Spawner, defaultTimeoutMs = EXEC_TIMEOUT_MS): Exec {
  return async (argv, opts = {}) => {
    let p: Child;
    try {
      p = spawn(argv, { stdin: opts.stdin, stdout: "pipe", stderr: "pipe", cwd: opts.cwd, timeoutMs: opts.timeoutMs ?? defaultTimeoutMs });
    } catch (e) {
      // A missing executable is reported like a failed command, so callers handle one shape.
      return cannotRun(argv, e);
    }
    const [stdout, stderr, code] = await Promise.all([text(p.stdout), text(p.stderr), p.exited]);
    return { code, stdout, stderr };
  };
}

export const realExec: Exec = execWith(realSpawn);

/** For the few synchronous callers (`doctor`'s host facts): blocks until the command ends. */
export const realExecSync: ExecSync = (argv, opts = {}) => {
  let r;
  try {
    r = Bun.spawnSync([...argv], { stdin: stdinOf(opts.stdin), stdout: "pipe", stderr: "pipe", cwd: opts.cwd, timeout: opts.timeoutMs ?? EXEC_TIMEOUT_MS });
  } catch (e) {
    return cannotRun(argv, e);
  }
  const code = r.exitCode ?? 128 + signalNumber(r.signalCode ?? "SIGKILL");
  return { code, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
};

/** "ip route ...: exit 2: RTNETLINK answers: ..." for error messages. */
export function describeFailure(argv: readonly string[], r: ExecResult): string {
  return `${argv.join(" ")}: exit ${r.code}${r.stderr.trim() ? `: ${r.stderr.trim()}` : ""}`;
}

export function signalNumber(sig: NodeJS.Signals | number | string): number {
  if (typeof sig === "number") return sig;
  return (constants.signals as Record<string, number>)[sig] ?? 0;
}

function signalName(sig: NodeJS.Signals | number | undefined): string {
  if (sig === undefined) return "SIGTERM";
  if (typeof sig === "string") return sig;
  return Object.entries(constants.signals).find(([, n]) => n === sig)?.[0] ?? `SIG${sig}`;
}

// ---- The fake ----

/** What a fake child does. Times are on the FakeSpawner's clock. */
export interface FakeScript {
  stdout?: string;
  stderr?: string;
  /** Exit code when it exits by itself. Default 0. */
  code?: number;
  /** Exits by itself this long after it started; undefined: at once, unless `daemon`. */
  runMs?: number;
  /** Runs until killed (or until the test calls `exit`), as hostapd does. */
  daemon?: boolean;
  /** Signals it survives (e.g. ["SIGTERM"] for a child that only SIGKILL stops). */
  ignores?: string[];
  /** `spawn` throws this, as Bun.spawn does for a missing program. */
  spawnError?: string;
}

let fakePid = 40_000;

/** A child run by FakeSpawner: it writes its script's output, then exits as scripted. */
export class FakeChild implements Child {
  readonly pid = ++fakePid;
  readonly stdout: ReadableStream<Uint8Array>;
  readonly stderr: ReadableStream<Uint8Array>;
  readonly exited: Promise<number>;
  signalCode: string | null = null;
  exitCode: number | null = null;
  /** Every signal sent, in order. */
  readonly signals: string[] = [];
  private resolve!: (code: number) => void;
  private readonly out: ReadableStreamDefaultController<Uint8Array>[] = [];
  private timer: TimerHandle | undefined;
  private deadline: TimerHandle | undefined;

  constructor(
    readonly argv: readonly string[],
    readonly opts: SpawnOptions,
    private readonly script: FakeScript,
    private readonly clock: Clock,
  ) {
    this.exited = new Promise((r) => (this.resolve = r));
    this.stdout = new ReadableStream({ start: (c) => void (this.out[0] = c) });
    this.stderr = new ReadableStream({ start: (c) => void (this.out[1] = c) });
    if (script.stdout) this.write("stdout", script.stdout);
    if (script.stderr) this.write("stderr", script.stderr);
    if (opts.timeoutMs !== undefined) this.deadline = this.clock.setTimeout(() => this.kill("SIGTERM"), opts.timeoutMs);
    if (script.runMs !== undefined) this.timer = clock.setTimeout(() => this.exit(script.code ?? 0), script.runMs);
    else if (!script.daemon) queueMicrotask(() => this.exit(script.code ?? 0));
  }

  get running(): boolean {
    return this.exitCode === null && this.signalCode === null;
  }

  /** More output, as a running daemon prints it. */
  write(stream: "stdout" | "stderr", text: string): void {
    if (!this.running) return;
    this.out[stream === "stdout" ? 0 : 1]!.enqueue(new TextEncoder().encode(text));
  }

  kill(signal?: NodeJS.Signals | number): void {
    const name = signalName(signal);
    this.signals.push(name);
    if (!this.running || (this.script.ignores ?? []).includes(name)) return;
    this.end(null, name);
  }

  /** Ends the child with an exit code now (a crash, or a normal exit). */
  exit(code: number): void {
    if (this.running) this.end(code, null);
  }

  private end(code: number | null, signal: string | null): void {
    this.clock.clearTimeout(this.timer);
    this.clock.clearTimeout(this.deadline);
    this.exitCode = code;
    this.signalCode = signal;
    for (const c of this.out) c.close();
    this.resolve(code ?? 128 + signalNumber(signal!));
  }
}

/**
 * A spawner for tests: `respond(argv, opts)` scripts each child; `calls` and `children` show
 * what was started. `exec` is an Exec over the same children.
 */
export class FakeSpawner {
  readonly children: FakeChild[] = [];
  readonly calls: { argv: string[]; opts: SpawnOptions }[] = [];

  constructor(
    public respond: (argv: readonly string[], opts: SpawnOptions) => FakeScript = () => ({}),
    private readonly clock: Clock = systemClock,
  ) {}

  readonly spawn = (argv: readonly string[], opts: SpawnOptions = {}): FakeChild => {
    this.calls.push({ argv: [...argv], opts });
    const script = this.respond(argv, opts);
    if (script.spawnError !== undefined) throw Object.assign(new Error(script.spawnError), { code: "ENOENT" });
    const c = new FakeChild(argv, opts, script, this.clock);
    this.children.push(c);
    return c;
  };

  readonly exec: Exec = execWith(this.spawn);

  /** The children still running. */
  get running(): FakeChild[] {
    return this.children.filter((c) => c.running);
  }
}
