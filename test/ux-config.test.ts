// issue 19: a TOML syntax error names its line and column; config-error hints are
// self-contained (an installed binary has no targets/*.toml), quoting the expected form; and
// options another role would use are named as doing nothing for this one.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, configHint, ignoredForRole, parseToml, resolveConfig, tomlErrorLocation, type ConfigSource, type Role } from "../src/config.ts";

const FIX = join(import.meta.dir, "fixtures", "config", "ux");
const fixture = (name: string) => readFileSync(join(FIX, name), "utf8");

function syntaxError(name: string): ConfigError {
  try {
    parseToml(fixture(name), `/etc/agent/${name}`);
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error(`${name} parsed`);
}

describe("TOML syntax errors name line and column", () => {
  test.each([
    // fixture, line, column, what the message says
    ["unterminated-string.toml", 6, 8, "Unterminated string"],
    ["open-header.toml", 2, 5, "Expected ']'"],
    ["twice.toml", 3, 1, "Cannot redefine key 'allow'"],
  ] as [string, number, number, string][])("%s: line %d, column %d", (name, line, column, what) => {
    const e = syntaxError(name);
    expect(e.message).toContain(`/etc/agent/${name}: (syntax): not valid TOML at line ${line}, column ${column}: `);
    expect(e.message).toContain(what);
    // The line is quoted with a caret under the column.
    const shown = e.message.split("\n");
    const src = fixture(name).split("\n")[line - 1]!;
    expect(shown).toContain(`    ${src}`);
    expect(shown).toContain(`    ${" ".repeat(column - 1)}^`);
  });

  test("a line with a secret is quoted without it", () => {
    const e = syntaxError("secret.toml");
    expect(e.message).toContain("line 3");
    expect(e.message).not.toContain("hunter2");
    expect(e.message).toContain("passphrase = …");
  });

  test.each([
    ["a = 1\n", undefined],
    ["a = 1\n\n# note\nb = = 2\n", 4],
    ["a = [\n  1,\n  2,\n]\nb = {\n", 5],
  ] as [string, number | undefined][])("tomlErrorLocation(%p) → line %p", (text, line) => {
    let msg = "";
    try {
      Bun.TOML.parse(text);
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(tomlErrorLocation(text, msg)?.line).toBe(line);
  });
});

describe("config-error hints are self-contained", () => {
  test("no hint points at the repository's targets/ directory", () => {
    for (const name of ["unterminated-string.toml", "open-header.toml"]) expect(syntaxError(name).hint).not.toContain("targets/");
    let e: unknown;
    try {
      resolveConfig([{ origin: { kind: "file", path: "/etc/agent/agent.toml" }, raw: { allow: "192.168.1.0/24", nat: { max_ttl: "forever" } } }]);
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(ConfigError);
    const hint = (e as ConfigError).hint!;
    expect(hint).not.toContain("targets/");
    // The expected forms are quoted in the hint itself.
    expect(hint).toContain('allow = ["192.168.1.0/24", "10.0.0.5/32:22,80"]');
    expect(hint).toContain('[nat] backend = "auto"');
  });

  test.each([
    [[{ origin: { kind: "file", path: "f" }, key: "uplink[0].priority", message: "x" }], "[[uplink]] name ="],
    [[{ origin: { kind: "file", path: "f" }, key: "tracking.interval", message: "x" }], '[tracking] targets = ["1.1.1.1:443"]'],
    [[{ origin: { kind: "flag" }, key: "relay", message: "x" }], undefined], // flags: --help has their forms
  ] as [Parameters<typeof configHint>[0], string | undefined][])("configHint for %p", (problems, form) => {
    const h = configHint(problems);
    expect(h).not.toContain("targets/");
    if (form) expect(h).toContain(form);
    else expect(h).not.toContain("expected form");
  });
});

describe("ignoredForRole", () => {
  const file = (raw: Record<string, unknown>): ConfigSource => ({ origin: { kind: "file", path: "/etc/agent/agent.toml" }, raw });
  const flags = (raw: Record<string, unknown>): ConfigSource => ({ origin: { kind: "flag" }, raw });
  test.each([
    [[flags({ allow: ["10.0.0.0/8"] })], "master", ["--allow has no effect on a master: only an onsite device serves LAN targets"]],
    [[flags({ allow: ["10.0.0.0/8"] })], "onsite", []],
    [[file({ listen: "0.0.0.0:443", revocations: "/x" })], "relay", []],
    [[file({ listen: "0.0.0.0:443" })], "onsite", ["/etc/agent/agent.toml: listen has no effect on an onsite device: only the relay listens; devices dial `relay`"]],
    [[file({ gui: "127.0.0.1:8080", relay: "r:443" })], "master", []],
    [[file({ relay: "r:443", access: [] })], "relay", ["/etc/agent/agent.toml: relay has no effect on a relay: the relay dials no relay; it listens on `listen`"]],
    [[{ origin: { kind: "default" }, raw: { allow: [] } }], "master", []], // defaults never warn
  ] as [ConfigSource[], Role, string[]][])("%p as %s", (sources, role, want) => {
    expect(ignoredForRole(sources, role)).toEqual(want);
  });

  test("a relay config with allow, [nat] and [[uplink]] gets one warning for each", () => {
    const path = join(FIX, "relay-with-onsite-keys.toml");
    const src: ConfigSource = { origin: { kind: "file", path }, raw: parseToml(fixture("relay-with-onsite-keys.toml"), path) };
    expect(ignoredForRole([src], "relay")).toEqual([
      `${path}: allow has no effect on a relay: only an onsite device serves LAN targets`,
      `${path}: [nat] has no effect on a relay: only an onsite device installs NAT rules`,
      `${path}: [[uplink]] has no effect on a relay: only an onsite device manages uplinks`,
    ]);
  });
});
