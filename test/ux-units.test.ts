// issue 19, "systemd units": a config error exits 2 and every shipped unit stops restarting
// on exit 2 (RestartPreventExitStatus=2); before, a typo in agent.toml restarted every 5 s for ever.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { runCli } from "../src/cli/index.ts";
import { exitCodeOf } from "../src/errors.ts";

const REPO = join(import.meta.dir, "..");

function unitsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...unitsUnder(p));
    else if (name.endsWith(".service")) out.push(p);
  }
  return out;
}

/** The values of `key` in `[section]` of a systemd unit. */
function values(text: string, section: string, key: string): string[] {
  let cur = "";
  const out: string[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("#") || line === "") continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) cur = s[1]!;
    else if (cur === section && line.startsWith(`${key}=`)) out.push(line.slice(key.length + 1));
  }
  return out;
}

describe("shipped systemd units", () => {
  const units = unitsUnder(join(REPO, "targets"));
  test("there are units to check", () => {
    expect(units.length).toBeGreaterThanOrEqual(3);
  });
  test.each(units.map((u) => [u.slice(REPO.length + 1), u]))("%s does not restart on exit 2 (config error)", (_name, path) => {
    const text = readFileSync(path, "utf8");
    expect(values(text, "Service", "Restart")).toEqual(["on-failure"]);
    const prevent = values(text, "Service", "RestartPreventExitStatus").flatMap((v) => v.split(/\s+/));
    expect(prevent).toContain("2");
  });
});

describe("a config error exits 2", () => {
  const FIX = join(import.meta.dir, "fixtures", "config", "ux");
  async function codeOf(argv: string[]): Promise<number> {
    try {
      return await runCli(argv);
    } catch (e) {
      return exitCodeOf(e);
    }
  }
  test.each([
    [["--config", join(FIX, "unterminated-string.toml"), "--role", "onsite"]], // TOML syntax
    [["--config", join(FIX, "does-not-exist.toml"), "--role", "onsite"]], // a named file missing
    [["--role", "onsite", "--config", join(FIX, "open-header.toml")]],
    [["--role", "onsite", "--relay", "not a host port"]], // a bad value
  ])("agent %p", async (argv) => {
    expect(await codeOf(argv)).toBe(2);
  });
});
