// Runs the real program (src/main.ts under the project's Bun) the way a user would.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const ROOT = join(import.meta.dir, "..", "..");
export const BUN = process.execPath;
export const MAIN = join(ROOT, "src", "main.ts");

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export async function agent(args: string[], opts: { env?: Record<string, string> } = {}): Promise<Run> {
  const p = Bun.spawn([BUN, MAIN, ...args], { stdout: "pipe", stderr: "pipe", env: { ...process.env, ...opts.env }, cwd: ROOT });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

export function tempDir(prefix: string): { path: string; [Symbol.dispose](): void } {
  const path = mkdtempSync(join(tmpdir(), `agent-${prefix}-`));
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) };
}

/** Polls `cond` every 20 ms until it holds or `ms` pass. */
export async function waitFor(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await cond()) return;
    await Bun.sleep(20);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

export const fileExists = (p: string) => existsSync(p);
