#!/usr/bin/env bun
// Entry point: the only place that reads process.argv and calls process.exit.
import { runCli } from "./cli/index.ts";
import { describeError, exitCodeOf, RuntimeError, UsageError } from "./errors.ts";

async function main(): Promise<number> {
  try {
    return await runCli(process.argv.slice(2));
  } catch (err) {
    const hint = err instanceof UsageError || err instanceof RuntimeError ? err.hint : undefined;
    process.stderr.write(`agent: ${describeError(err)}\n`);
    if (hint) process.stderr.write(`hint: ${hint}\n`);
    if (!(err instanceof UsageError || err instanceof RuntimeError) && process.env.AGENT_DEBUG) {
      process.stderr.write(`${(err as Error).stack ?? ""}\n`);
    }
    return exitCodeOf(err);
  }
}

// process.exit() right after a large write to a pipe drops what the pipe has not taken yet
// (`agent devices --json` for 5,000 devices came out cut short). So the process ends by
// itself once its work is done, which flushes stdout; a leftover handle cannot keep it
// alive, since the unref'd timer still ends it a second later.
void main().then((code) => {
  process.exitCode = code;
  setTimeout(() => process.exit(code), 1000).unref();
});
