// The README's run command must stay true: the demo brings up all three roles and cleans up.
import { expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { BUN, ROOT } from "./helpers/cli.ts";

test("demo builds the executable, runs relay, onsite and master, opens a working forward, and cleans up", async () => {
  const p = Bun.spawn([BUN, join(ROOT, "scripts/demo.ts"), "--once"], { stdout: "pipe", stderr: "pipe", cwd: ROOT });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  expect(err).toBe("");
  expect(code).toBe(0);
  expect(out).toMatch(/demo: built \S+\/bin\/agent-linux-(x64|arm64) \(agent \d/);
  expect(out).toMatch(/^site-1\s+online\s+Royal Champagne/m);
  // The page really came through master → relay → onsite: its title is only in the LAN service.
  expect(out).toContain('fetched through the forward: "LAN device behind site-1"');
  const url = /open (http:\/\/127\.0\.0\.1:\d+\/) in a browser/.exec(out)?.[1];
  expect(url).toBeDefined();
  // After the demo stopped, nothing listens there any more.
  expect(await fetch(url!).then(() => "answered", () => "refused")).toBe("refused");
  const dir = /throwaway fleet in (\S+)/.exec(out)?.[1];
  expect(dir).toBeDefined();
  expect(existsSync(dir!)).toBe(false);
  expect(out).toContain("stopped 3 daemons");
  // The master's web GUI came from the compiled executable, with a throwaway user.
  expect(out).toMatch(/web GUI: http:\/\/127\.0\.0\.1:\d+\/ \(user demo, password [0-9a-z]{12,}\); page and script served by the executable/);
}, 60_000);
