import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, defaults, parseToml, requireForRole, resolveConfig, type ConfigSource } from "../src/config.ts";
import { formatAllowEntry, formatHostPort } from "../src/netaddr.ts";

const root = join(import.meta.dir, "..");
const file = (path: string): ConfigSource => ({ origin: { kind: "file", path }, raw: parseToml(readFileSync(path, "utf8"), path) });

describe("shipped example configs parse", () => {
  const examples = readdirSync(join(root, "targets/examples")).filter((f) => f.endsWith(".toml"));
  test("there are examples for every role", () => {
    for (const role of ["relay", "onsite", "master"]) expect(examples).toContain(`${role}.toml`);
  });
  test.each(examples)("targets/examples/%s", (name) => {
    const cfg = resolveConfig([file(join(root, "targets/examples", name))]);
    expect(cfg.role).toBeDefined();
    requireForRole(cfg, cfg.role!);
  });
  test("README's TOML blocks parse", () => {
    const readme = readFileSync(join(root, "README.md"), "utf8");
    const blocks = [...readme.matchAll(/```toml\n([\s\S]*?)```/g)].map((m) => m[1]!);
    expect(blocks.length).toBeGreaterThan(0);
    for (const b of blocks) resolveConfig([{ origin: { kind: "file", path: "README.md" }, raw: parseToml(b, "README.md") }]);
  });
  test("onsite example values", () => {
    const cfg = resolveConfig([file(join(root, "targets/examples/onsite.toml"))]);
    expect(cfg.location).toBe("Royal Champagne");
    expect(cfg.allow.map(formatAllowEntry)).toEqual(["192.168.1.0/24", "10.0.0.5/32:22,80"]);
    expect(cfg.uplink.map((u) => [u.name, u.kind, u.priority, u.metered])).toEqual([
      ["eth0", "ethernet", 10, false],
      ["wlan0", "wifi", 20, false],
      ["wwan0", "cellular", 30, true],
    ]);
    expect(cfg.uplink[2]!.keepalive).toBe(60_000);
    expect(cfg.nat.max_ttl).toBe(8 * 3600_000);
    expect(cfg.tracking).toMatchObject({ interval: 1000, timeout: 1000, down: 3, up: 5 });
    // No shared passphrase in a shipped file: each device generates its own.
    expect(cfg.ap).toMatchObject({ enabled: true, interface: "wlan0", country: "FR", retry: 300_000 });
    expect(cfg.ap.passphrase).toBeUndefined();
  });
});

describe("invalid fixtures fail with a useful message", () => {
  const dir = join(root, "test/fixtures/config/invalid");
  const cases = readdirSync(dir).filter((f) => f.endsWith(".toml"));
  test("there are fixtures", () => expect(cases.length).toBeGreaterThan(15));
  test.each(cases)("%s", (name) => {
    const path = join(dir, name);
    const text = readFileSync(path, "utf8");
    const expected = /^# expect: (.*)$/m.exec(text)?.[1];
    expect(expected).toBeDefined();
    let err: unknown;
    try {
      resolveConfig([file(path)]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const msg = (err as Error).message;
    expect(msg).toContain(expected!);
    expect(msg).toContain(path); // names the file
  });
});

describe("precedence and origins", () => {
  const fileSrc: ConfigSource = { origin: { kind: "file", path: "/etc/agent/agent.toml" }, raw: { relay: "a.example:443", location: "File" } };
  test("flags win over the file, the file over defaults", () => {
    const cfg = resolveConfig([fileSrc, { origin: { kind: "flag" }, raw: { relay: "b.example:8443" } }]);
    expect(formatHostPort(cfg.relay!)).toBe("b.example:8443");
    expect(cfg.location).toBe("File");
    expect(cfg.control).toBe(defaults().control);
  });
  test("a bad flag is reported as the flag", () => {
    expect(() => resolveConfig([fileSrc, { origin: { kind: "flag" }, raw: { state_dir: "" } }])).toThrow("--state-dir: expected a directory path");
  });
  test("all problems are reported at once", () => {
    try {
      resolveConfig([{ origin: { kind: "file", path: "f.toml" }, raw: { relay: "x", log_level: "loud", nope: 1 } }]);
      throw new Error("not refused");
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      expect((e as ConfigError).problems.map((p) => p.key).sort()).toEqual(["log_level", "nope", "relay"]);
    }
  });
  test("default allow list is the private ranges", () => {
    expect(defaults().allow.map(formatAllowEntry)).toEqual(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]);
  });
  test.each([
    ["relay", { bundle: "b" }, "--listen"],
    ["onsite", { bundle: "b" }, "--relay"],
    ["master", { relay: "r.example:443" }, "--bundle"],
  ] as const)("role %s requires %s", (role, raw, missing) => {
    const cfg = resolveConfig([{ origin: { kind: "flag" }, raw }]);
    expect(() => requireForRole(cfg, role)).toThrow(missing);
  });
});
