// `agent pki ...` run as a user would (src/main.ts under the project's Bun): exit codes,
// messages with hints, files and modes, and no private key on any output.
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { agent, tempDir, type Run } from "./helpers/cli.ts";

const tmp = tempDir("pki-cli");
afterAll(() => tmp[Symbol.dispose]());
const ca = join(tmp.path, "ca");
const file = (name: string) => join(tmp.path, name);
const mode = (p: string) => statSync(p).mode & 0o777;

const outputs: Run[] = [];
async function pki(...args: string[]): Promise<Run> {
  const r = await agent(["pki", ...args]);
  outputs.push(r);
  return r;
}

function expectUsage(r: Run, msg: string): void {
  expect(r.code).toBe(2);
  expect(r.stderr).toContain(msg);
  expect(r.stderr).toMatch(/\nhint: .+/);
  expect(r.stdout).toBe("");
}

describe("agent pki", () => {
  // The steps build on each other, in order.
  test("init creates the CA; a second init is refused", async () => {
    const r = await pki("init", "--dir", ca);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`created fleet CA "agent fleet CA" in ${ca}`);
    expect(r.stdout).toContain(join(ca, "revoked"));
    expect(r.stdout).toMatch(/SHA-256\s+([0-9A-F]{2}:){31}[0-9A-F]{2}/);
    expect(mode(ca)).toBe(0o700);
    expect(mode(join(ca, "ca.key"))).toBe(0o600);
    const key = readFileSync(join(ca, "ca.key"), "utf8");
    expectUsage(await pki("init", "--dir", ca), "refusing to overwrite it");
    expect(readFileSync(join(ca, "ca.key"), "utf8")).toBe(key);
  });

  test("issue writes bundles with mode 0600", async () => {
    const r = await pki("issue", "--dir", ca, "--role", "relay", "--id", "relay-1", "--host", "relay.example.net", "--host", "203.0.113.5", "--out", file("relay-1.bundle"));
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^issued relay certificate for relay-1 \(serial [0-9a-f]{32}, valid until \S+\)$/m);
    expect(r.stdout).toContain("hosts    relay.example.net, 203.0.113.5");
    expect(mode(file("relay-1.bundle"))).toBe(0o600);
    for (const [role, id] of [
      ["onsite", "site-1"],
      ["master", "tech-1"],
    ]) {
      const x = await pki("issue", "--dir", ca, "--role", role!, "--id", id!, "--out", file(`${id}.bundle`));
      expect(x.code).toBe(0);
      expect(mode(file(`${id}.bundle`))).toBe(0o600);
    }
  });

  test.each([
    [["--role", "onsite", "--id", "site-2", "--host", "x.example"], "--host is only for relay certificates, not onsite"],
    [["--role", "relay", "--id", "relay-2"], "a relay certificate needs at least one --host"],
    [["--role", "onsite", "--id", "Site 2"], 'invalid id "Site 2": an id is 1-63 characters'],
    [["--role", "onsite", "--id", "../x"], 'invalid id "../x"'],
    [["--role", "onsite", "--id", "a;b"], 'invalid id "a;b"'],
    [["--role", "gateway", "--id", "g"], "--role: expected one of relay, onsite, master"],
    [["--role", "onsite", "--id", "site-2", "--days", "0"], "--days must be a whole number of days from 1 to 3650"],
    [["--role", "onsite", "--id", "site-1"], "id site-1 already has a valid onsite certificate"],
  ])("issue %p is refused", async (args, msg) => {
    expectUsage(await pki("issue", "--dir", ca, ...args, "--out", file("refused.bundle")), msg);
    expect(() => statSync(file("refused.bundle"))).toThrow();
  });

  test("--force replaces a certificate and revokes the old one", async () => {
    const before = readFileSync(file("site-1.bundle"), "utf8");
    const r = await pki("issue", "--dir", ca, "--role", "onsite", "--id", "site-1", "--force", "--out", file("site-1.bundle"));
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("revoked the previous certificate");
    expect(readFileSync(file("site-1.bundle"), "utf8")).not.toBe(before);
    expect(mode(file("site-1.bundle"))).toBe(0o600);
  });

  test("revoke, then list shows it (table and JSON)", async () => {
    const r = await pki("revoke", "--dir", ca, "--id", "tech-1");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^revoked 1 certificate of tech-1: [0-9a-f]{32}$/m);
    expectUsage(await pki("revoke", "--dir", ca, "--id", "ghost"), "no certificate was ever issued to id ghost");

    const list = await pki("list", "--dir", ca);
    expect(list.code).toBe(0);
    const lines = list.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^ID\s+ROLE\s+SERIAL\s+NOT AFTER\s+STATUS\s+HOSTS$/);
    expect(lines).toHaveLength(5);
    // Aligned: every row's ROLE column starts where the header's does.
    const col = lines[0]!.indexOf("ROLE");
    for (const l of lines.slice(1)) expect(l.slice(col)).toMatch(/^(relay|onsite|master) /);
    expect(lines.find((l) => l.startsWith("tech-1"))).toMatch(/revoked \d{4}-\d\d-\d\dT/);
    expect(lines.find((l) => l.startsWith("relay-1"))).toMatch(/ valid\s+relay\.example\.net,203\.0\.113\.5$/);
    expect(lines.filter((l) => l.startsWith("site-1")).map((l) => / (valid|revoked)( |$)/.exec(l)?.[1])).toEqual(["revoked", "valid"]);

    const json = JSON.parse((await pki("list", "--dir", ca, "--json")).stdout) as Array<{ id: string; status: string; revoked: string | null }>;
    expect(json.find((c) => c.id === "tech-1")).toMatchObject({ status: "revoked" });
    expect(json.find((c) => c.id === "relay-1")).toMatchObject({ status: "valid", revoked: null });
    expect(readFileSync(join(ca, "revoked"), "utf8")).toMatch(/^[0-9a-f]{32} tech-1 \S+Z$/m);
  });

  test("show prints the identity and checks the bundle", async () => {
    const r = await pki("show", file("relay-1.bundle"));
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^id\s+relay-1$/m);
    expect(r.stdout).toMatch(/^role\s+relay$/m);
    expect(r.stdout).toMatch(/^subject\s+O=agent fleet, OU=relay, CN=relay-1$/m);
    expect(r.stdout).toMatch(/^SANs\s+URI:agent:\/\/relay\/relay-1, DNS:relay\.example\.net, IP:203\.0\.113\.5$/m);
    expect(r.stdout).toMatch(/^serial\s+[0-9a-f]{32}$/m);
    expect(r.stdout).toMatch(/^not before\s+\d{4}-/m);
    expect(r.stdout).toMatch(/^not after\s+\d{4}-/m);
    expect(r.stdout).toMatch(/^issuer\s+O=agent fleet, CN=agent fleet CA$/m);
    expect(r.stdout).toMatch(/^verified\s+yes/m);

    chmodSync(file("relay-1.bundle"), 0o644);
    const loose = await pki("show", file("relay-1.bundle"), "--json");
    expect(loose.code).toBe(1);
    const j = JSON.parse(loose.stdout);
    expect(j).toMatchObject({ id: "relay-1", role: "relay", mode: "0644", verified: true });
    expect(j.problems[0]).toContain("lets group or others reach the private key");
    chmodSync(file("relay-1.bundle"), 0o600);

    expectUsage(await pki("show", file("nope.bundle")), "does not exist");
  });

  test("no command ever prints a private key", () => {
    expect(outputs.length).toBeGreaterThan(10);
    for (const r of outputs) {
      expect(r.stdout + r.stderr).not.toContain("PRIVATE KEY");
    }
  });
});
