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

void main().then((code) => process.exit(code));
