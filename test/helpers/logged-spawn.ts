// A daemon process as the system tests start it: stdin closed, stdout drained (so a chatty
// daemon never blocks on a full pipe), stderr kept for the failure messages.
import type { Subprocess } from "bun";

export interface LoggedProcess {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  /** Everything the process wrote to stderr so far. */
  log: () => string;
}

export function spawnLogged(argv: string[]): LoggedProcess {
  const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  let text = "";
  void (async () => {
    const dec = new TextDecoder();
    for await (const c of proc.stderr) text += dec.decode(c, { stream: true });
  })();
  void new Response(proc.stdout).text();
  return { proc, log: () => text };
}
