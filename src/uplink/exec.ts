// The uplink adapters' command runner is the shared one (src/exec.ts).
export { realExec, describeFailure, EXEC_TIMEOUT_MS, type Exec, type ExecResult } from "../exec.ts";
