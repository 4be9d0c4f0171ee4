// The README's run command must stay true: the demo brings up all three roles and cleans up.
import { expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { BUN, ROOT } from "./helpers/cli.ts";

test("demo starts relay, onsite and master, reports their status, and cleans up", async () => {
  const p = Bun.spawn([BUN, join(ROOT, "scripts/demo.ts"), "--once"], { stdout: "pipe", stderr: "pipe", cwd: ROOT });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  expect(err).toBe("");
  expect(code).toBe(0);
  for (const role of ["relay", "onsite", "master"]) expect(out).toMatch(new RegExp(`^role\\s+${role}$`, "m"));
  for (const id of ["relay-demo", "site-1", "tech-1"]) expect(out).toMatch(new RegExp(`^id\\s+${id}$`, "m"));
  const dir = /throwaway fleet in (\S+)/.exec(out)?.[1];
  expect(dir).toBeDefined();
  expect(existsSync(dir!)).toBe(false);
  expect(out).toContain("stopped 3 daemons");
}, 60_000);
