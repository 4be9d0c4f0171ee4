// Runs a system command from an argument array (never a shell string). Every adapter takes an
// injected `Exec` so tests can record or fake commands. The spawner and the timeouts live in
// `src/os/spawn.ts`; this module keeps the names the adapters import.
export { CANNOT_RUN, describeFailure, EXEC_TIMEOUT_MS, execWith, realExec, realExecSync } from "./os/spawn.ts";
export type { Exec, ExecOptions, ExecResult, ExecSync } from "./os/spawn.ts";
