#!/usr/bin/env bun
// Entry point: the only place that reads process.argv and calls process.exit.
import { runMain } from "./cli/index.ts";

// process.exit() right after a large write to a pipe drops what the pipe has not taken yet
// (`agent devices --json` for 5,000 devices came out cut short). So the process ends by
// itself once its work is done, which flushes stdout; a leftover handle cannot keep it
// alive, since the unref'd timer still ends it a second later.
void runMain(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
  setTimeout(() => process.exit(code), 1000).unref();
});
