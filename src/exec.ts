// Runs a system command from an argument array (never a shell string). Every adapter takes an
// injected `Exec` so tests can record or fake commands, and timeouts live in one place.

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** Text for the command's stdin (e.g. an `iptables-restore` or `nft -f -` script). */
  stdin?: string;
  timeoutMs?: number;
}

export type Exec = (argv: readonly string[], opts?: ExecOptions) => Promise<ExecResult>;

/** Upper bound for one system command (ip, mmcli, ubus): a hung tool must not stall the daemon. */
export const EXEC_TIMEOUT_MS = 10_000;

export const realExec: Exec = async (argv, opts = {}) => {
  let p;
  try {
    p = Bun.spawn([...argv], {
      stdin: opts.stdin === undefined ? "ignore" : new TextEncoder().encode(opts.stdin),
      stdout: "pipe",
      stderr: "pipe",
      timeout: opts.timeoutMs ?? EXEC_TIMEOUT_MS,
    });
  } catch (e) {
    // A missing executable is reported like a failed command, so callers handle one shape.
    return { code: 127, stdout: "", stderr: `cannot run ${argv[0]}: ${(e as Error).message}` };
  }
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
};

/** "ip route ...: exit 2: RTNETLINK answers: ..." for error messages. */
export function describeFailure(argv: readonly string[], r: ExecResult): string {
  return `${argv.join(" ")}: exit ${r.code}${r.stderr.trim() ? `: ${r.stderr.trim()}` : ""}`;
}
