// Secrets stay secret (issue 13 §7), the parts without root: a config file that holds a
// secret and others can read is refused with the chmod that fixes it; the PSK and the proxy
// credentials come from a file or stdin instead of argv. The full scenario with every log,
// cmdline and API answer grepped is test/secrets-system.test.ts.
import { describe, expect, test } from "bun:test";
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadConfigFile, secretFileProblem, secretsIn, type RawConfig } from "../src/config.ts";
import { configSources, readSecretArg } from "../src/cli/common.ts";
import { UsageError } from "../src/errors.ts";
import { agent, tempDir } from "./helpers/cli.ts";

describe("which config keys are secrets", () => {
  test.each<[string, RawConfig, string[]]>([
    ["nothing secret", { relay: "r:443", ap: { enabled: true, ssid: "x" } }, []],
    ["[ap] passphrase", { ap: { passphrase: "abcdefghijkl" } }, ["[ap] passphrase"]],
    ["a proxy without credentials", { proxy: "http://proxy.lan:3128" }, []],
    ["a proxy with user and password", { proxy: "http://tech:pw@proxy.lan:3128" }, ['the proxy\'s credentials (proxy = "http://user:pass@…")']],
    ["a proxy with a user only", { proxy: "http://tech@proxy.lan:3128" }, ['the proxy\'s credentials (proxy = "http://user:pass@…")']],
    ["both", { proxy: "http://a:b@p:1", ap: { passphrase: "abcdefghijkl" } }, ["[ap] passphrase", 'the proxy\'s credentials (proxy = "http://user:pass@…")']],
  ])("%s", (_n, raw, want) => expect(secretsIn(raw)).toEqual(want));

  test.each([
    [0o100600, ["s"], undefined],
    [0o100400, ["s"], undefined],
    [0o100644, [], undefined],
    [0o100644, ["s"], "readable by group and others (mode 0644)"],
    [0o100640, ["s"], "readable by group (mode 0640)"],
    [0o100604, ["s"], "readable by others (mode 0604)"],
    [0o100620, ["s"], undefined], // group may write, not read: not a leak (and not this check's business)
  ])("mode %o with secrets %j", (mode, secrets, want) => {
    const p = secretFileProblem("/etc/agent/agent.toml", mode, secrets);
    if (want === undefined) expect(p).toBeUndefined();
    else expect(p).toEqual({ message: `/etc/agent/agent.toml holds s and is ${want}: refused`, hint: "chmod 600 /etc/agent/agent.toml" });
  });
});

describe("a config file with a secret must be 0600", () => {
  const refused = async (path: string) => (await loadConfigFile(path, true).catch((e: unknown) => e)) as UsageError;

  test("0644 with [ap] passphrase: refused with the exact chmod; 0600: read; 0644 without a secret: read", async () => {
    using tmp = tempDir("sec-cfg");
    const f = join(tmp.path, "agent.toml");
    writeFileSync(f, '[ap]\nenabled = true\npassphrase = "secret-passphrase-1"\n');
    chmodSync(f, 0o644);
    const e = await refused(f);
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toBe(`config file ${f} holds [ap] passphrase and is readable by group and others (mode 0644): refused`);
    expect(e.hint).toBe(`chmod 600 ${f}`);
    expect(e.message).not.toContain("secret-passphrase-1");
    chmodSync(f, 0o600);
    expect((await loadConfigFile(f, true))?.raw).toMatchObject({ ap: { passphrase: "secret-passphrase-1" } });
    writeFileSync(f, 'relay = "r.example:443"\n');
    chmodSync(f, 0o644);
    expect((await loadConfigFile(f, true))?.raw).toEqual({ relay: "r.example:443" });
  });

  test("the daemon exits 2 and prints the fix; the password is not in the message", async () => {
    using tmp = tempDir("sec-cli");
    const f = join(tmp.path, "agent.toml");
    writeFileSync(f, 'role = "onsite"\nproxy = "http://tech:pr0xy-pa55@proxy.lan:3128"\n');
    chmodSync(f, 0o640);
    const r = await agent(["--config", f]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`config file ${f} holds the proxy's credentials`);
    expect(r.stderr).toContain("readable by group (mode 0640)");
    expect(r.stderr).toContain(`chmod 600 ${f}`);
    expect(r.stderr + r.stdout).not.toContain("pr0xy-pa55");
    // doctor names it the same way.
    const d = await agent(["doctor", "--role", "onsite", "--config", f]);
    expect(d.stdout + d.stderr).toContain(`chmod 600 ${f}`);
  });
});

describe("secrets from a file or stdin, not argv", () => {
  test("--proxy-file: read from a 0600 file; one others can read is refused; with --proxy too is refused", async () => {
    using tmp = tempDir("sec-pf");
    const f = join(tmp.path, "proxy.url");
    writeFileSync(f, "http://tech:pf-secret@proxy.lan:3128\n", { mode: 0o600 });
    const flagSrc = (await configSources({ _: [], "proxy-file": f })).at(-1)!;
    expect(flagSrc.raw.proxy).toBe("http://tech:pf-secret@proxy.lan:3128");
    chmodSync(f, 0o644);
    const e = (await configSources({ _: [], "proxy-file": f }).catch((e: unknown) => e)) as UsageError;
    expect(e.message).toBe(`--proxy-file: ${f} holds the proxy's credentials and is readable by group and others (mode 0644): refused`);
    expect(e.hint).toBe(`chmod 600 ${f}`);
    chmodSync(f, 0o600);
    const both = (await configSources({ _: [], "proxy-file": f, proxy: "http://p:1" }).catch((e: unknown) => e)) as UsageError;
    expect(both.message).toBe("--proxy and --proxy-file both given");
  });

  test.each([
    ["missing", undefined, "--psk-file FILE: no such file"],
    ["empty", "", "expected the Wi-Fi passphrase on one line, got nothing"],
    ["two lines", "a\nb\n", "expected the Wi-Fi passphrase on one line, got several lines"],
  ])("--psk-file %s is refused", async (_n, content, msg) => {
    using tmp = tempDir("sec-psk");
    const f = join(tmp.path, "psk");
    if (content !== undefined) writeFileSync(f, content, { mode: 0o600 });
    const e = (await readSecretArg("--psk-file", f, "the Wi-Fi passphrase").catch((e: unknown) => e)) as Error;
    expect(e).toBeInstanceOf(UsageError);
    expect(e.message).toContain(msg.replace("FILE", f));
  });

  test("configure-wifi: --psk-file and a PSK argument together are refused before anything is sent", async () => {
    using tmp = tempDir("sec-cw");
    const f = join(tmp.path, "psk");
    writeFileSync(f, "wifi-secret-1\n", { mode: 0o600 });
    const r = await agent(["uplink", "configure-wifi", "Shop", "other-secret", "--psk-file", f, "--control", join(tmp.path, "none.sock")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("a PSK argument and --psk-file both given");
    chmodSync(f, 0o644);
    const r2 = await agent(["uplink", "configure-wifi", "Shop", "--psk-file", f, "--control", join(tmp.path, "none.sock")]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toContain(`chmod 600 ${f}`);
    expect(r2.stderr).not.toContain("wifi-secret-1");
  });
});
