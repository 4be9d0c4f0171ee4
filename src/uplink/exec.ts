// Runs a system command from an argument array (never a shell string). Injected everywhere
// so tests can record or fake commands and so timeouts are applied in one place.

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export type Exec = (argv: readonly string[], opts?: { timeoutMs?: number }) => Promise<ExecResult>;

/** Upper bound for any one system command (ip, mmcli, ubus): a hung tool must not stall failover. */
export const EXEC_TIMEOUT_MS = 10_000;

export const realExec: Exec = async (argv, opts = {}) => {
  let p: ReturnType<typeof Bun.spawn>;
  try {
    p = Bun.spawn([...argv], { stdin: "ignore", stdout: "pipe", stderr: "pipe", timeout: opts.timeoutMs ?? EXEC_TIMEOUT_MS });
  } catch (e) {
    // Missing executable: reported like a failed command so callers handle one shape.
    return { code: 127, stdout: "", stderr: `${argv[0]}: ${(e as Error).message}` };
  }
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout as ReadableStream).text(),
    new Response(p.stderr as ReadableStream).text(),
    p.exited,
  ]);
  return { code, stdout, stderr };
};

/** "ip route ...: exit 2: RTNETLINK answers: ..." for error messages. */
export function describeFailure(argv: readonly string[], r: ExecResult): string {
  return `${argv.join(" ")}: exit ${r.code}${r.stderr.trim() ? `: ${r.stderr.trim()}` : ""}`;
}
