// Runs the real program (src/main.ts under the project's Bun) the way a user would.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { run } from "./proc.ts";
import { waitFor } from "./wait.ts";

export const ROOT = join(import.meta.dir, "..", "..");
export const BUN = process.execPath;
export const MAIN = join(ROOT, "src", "main.ts");

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `agent ARGS`; killed (with what it started) after `timeoutMs` (default 60 s), which then throws. */
export async function agent(args: string[], opts: { env?: Record<string, string>; timeoutMs?: number } = {}): Promise<Run> {
  return run([BUN, MAIN, ...args], { env: { ...process.env, ...opts.env }, cwd: ROOT, timeoutMs: opts.timeoutMs ?? 60_000 });
}

export function tempDir(prefix: string): { path: string; [Symbol.dispose](): void } {
  const path = mkdtempSync(join(tmpdir(), `agent-${prefix}-`));
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) };
}

/** The suite's one poll-until (./wait.ts), here too because many tests import it from here. */
export { waitFor };

export const fileExists = (p: string) => existsSync(p);
