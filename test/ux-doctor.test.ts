// Issue 19, item 7: `agent doctor` was wrong in several ways. Table tests over gathered facts
// (the decisions are pure), the gatherers against real files and sockets, and the CLI as a
// real process: it changes nothing, takes the role from the config file, and tests a config.
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DEFAULT_CONFIG_FILE, resolveConfig } from "../src/config.ts";
import {
  capabilitiesFromHex,
  evaluate,
  gatherConfigFacts,
  gatherFacts,
  TOOLS,
  type BundleFacts,
  type CheckRow,
  type ConfigFacts,
  type DoctorReport,
  type HostFacts,
  type Tool,
} from "../src/doctor.ts";
import { caPaths, initCa, issueToFile } from "../src/pki.ts";

const tmp = mkdtempSync(join(tmpdir(), "ux-doctor-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function facts(over: Partial<HostFacts> = {}): HostFacts {
  const tools = Object.fromEntries(TOOLS.map((t) => [t, `/usr/sbin/${t}`])) as Record<Tool, string | null>;
  return {
    os: { family: "debian", name: "Debian GNU/Linux 12 (bookworm)" },
    kernel: "6.1.0",
    uid: 0,
    caps: capabilitiesFromHex("000001ffffffffff"),
    tools,
    iptablesBackend: "nf_tables",
    tun: { path: "/dev/net/tun", exists: true, openable: true },
    stateDir: { path: "/var/lib/agent", writable: true, created: false, exists: true },
    ipForward: { value: "1" },
    ...over,
  };
}

const NOW = Date.parse("2026-06-01T00:00:00Z");
const goodBundle = (over: Partial<BundleFacts> = {}): BundleFacts => ({
  path: "/etc/agent/site-1.bundle",
  mode: 0o600,
  role: "onsite",
  id: "site-1",
  notBefore: "2026-01-01T00:00:00.000Z",
  notAfter: "2028-01-01T00:00:00.000Z",
  problems: [],
  ...over,
});
function config(over: Partial<ConfigFacts> = {}): ConfigFacts {
  return {
    file: "/etc/agent/agent.toml",
    role: "onsite",
    now: NOW,
    bundle: goodBundle(),
    relay: { target: "relay.example.net:443", ok: true, ms: 12 },
    listen: null,
    revocations: { path: "/var/lib/agent/revoked", configured: false, exists: false },
    interfaces: [{ name: "eth0", use: "[[uplink]] ethernet", present: true }],
    ...over,
  };
}

const row = (r: DoctorReport, check: string): CheckRow => {
  const found = r.checks.find((c) => c.check === check);
  if (!found) throw new Error(`no ${check} row in ${r.checks.map((c) => c.check).join(",")}`);
  return found;
};

describe("a master runs without root", () => {
  const nobody = facts({ uid: 65534, caps: capabilitiesFromHex("0000000000000000"), tun: { path: "/dev/net/tun", exists: true, openable: false, error: "EACCES" }, tools: { ...facts().tools, ip: null } });
  test("as nobody, with no capability, no TUN and no ip: master ok, each such row optional-missing and says why", () => {
    const r = evaluate(nobody, "master");
    expect(r.ok).toBe(true);
    for (const check of ["tun", "ip", "cap-net-admin"]) {
      expect(row(r, check)).toMatchObject({ required: false, status: "optional-missing" });
      expect(row(r, check).detail).toContain("port forwards need none");
    }
  });
  test.each([
    ["onsite", false],
    ["all", false],
    ["relay", true],
  ] as const)("the same host for %s: ok=%p", (role, ok) => {
    expect(evaluate(nobody, role).ok).toBe(ok);
  });
});

describe("net.ipv4.ip_forward", () => {
  test.each([
    [{ value: "1" }, "ok", true],
    [{ value: "0" }, "missing", false],
    [{ value: null, error: "ENOENT" }, "warn", true],
  ] as const)("%o → %s (onsite ok=%p)", (ipForward, status, ok) => {
    const r = evaluate(facts({ ipForward }), "onsite");
    expect(row(r, "ip-forward").status).toBe(status);
    expect(r.ok).toBe(ok);
    if (status !== "ok") expect(row(r, "ip-forward").fix).toContain("net.ipv4.ip_forward=1");
  });
  test("only the onsite device forwards", () => {
    for (const role of ["relay", "master"] as const) {
      const r = evaluate(facts({ ipForward: { value: "0" } }), role);
      expect(r.ok).toBe(true);
      expect(r.checks.some((c) => c.check === "ip-forward")).toBe(false);
    }
  });
});

describe("what the config names", () => {
  test("without a config, no config rows", () => {
    const r = evaluate(facts(), "all");
    for (const c of ["config", "bundle", "relay", "listen", "revocations", "interfaces"]) expect(r.checks.some((x) => x.check === c)).toBe(false);
  });

  test("flags alone (no config file): what they do not name is not missing, but the relay's missing revocation list is said", () => {
    const { file: _file, ...rest } = config({ role: undefined, bundle: null, relay: null, listen: null, interfaces: [] });
    const r = evaluate(facts({ config: rest }), "all");
    expect(r.checks.filter((c) => ["config", "bundle", "relay", "listen", "interfaces"].includes(c.check))).toEqual([]);
    expect(row(r, "revocations")).toMatchObject({ status: "warn", roles: ["relay"] });
    expect(r.ok).toBe(true);
  });

  test("a sound onsite config: every row ok", () => {
    const r = evaluate(facts({ config: config() }), "onsite");
    expect(r.ok).toBe(true);
    for (const c of ["config", "bundle", "relay", "interfaces"]) expect(row(r, c).status).toBe("ok");
  });

  test("config problems: one failing row that lists them all, and nothing built on the broken file", () => {
    const r = evaluate(facts({ config: config({ problems: ["/etc/agent/agent.toml: listen: expected HOST:PORT", "/etc/agent/agent.toml: foo: unknown key"] }) }), "relay");
    expect(r.ok).toBe(false);
    expect(row(r, "config").status).toBe("missing");
    expect(row(r, "config").detail).toContain("listen: expected HOST:PORT");
    expect(row(r, "config").detail).toContain("foo: unknown key");
    expect(r.checks.some((c) => c.check === "bundle")).toBe(false);
  });

  const DAY = 86_400_000;
  test.each([
    ["no bundle configured", null, "missing", "bundle ="],
    ["unreadable", goodBundle({ error: "bundle /x does not exist" }), "missing", "agent pki issue"],
    ["mode 0644", goodBundle({ mode: 0o644 }), "missing", "chmod 600 /etc/agent/site-1.bundle"],
    ["broken", goodBundle({ problems: ["the private key does not match the device certificate"] }), "missing", "agent pki issue"],
    ["a master's bundle on an onsite device", goodBundle({ role: "master", id: "tech-1" }), "missing", "--role onsite"],
    ["expired", goodBundle({ notAfter: new Date(NOW - DAY).toISOString() }), "missing", "--force --out NEW.bundle"],
    ["not yet valid", goodBundle({ notBefore: new Date(NOW + DAY).toISOString() }), "missing", "clock"],
    ["expiring in 10 days", goodBundle({ notAfter: new Date(NOW + 10.5 * DAY).toISOString() }), "warn", "--force --out NEW.bundle"],
    ["sound", goodBundle(), "ok", ""],
  ] as const)("bundle %s → %s", (_name, bundle, status, fix) => {
    const r = evaluate(facts({ config: config({ bundle }) }), "onsite");
    expect(row(r, "bundle").status).toBe(status);
    expect(row(r, "bundle").fix).toContain(fix);
    expect(r.ok).toBe(status !== "missing");
  });

  test("the bundle's role is checked against the config's role, not doctor's --role all", () => {
    const r = evaluate(facts({ config: config({ role: "relay", bundle: goodBundle({ role: "onsite" }), relay: null, listen: { address: "0.0.0.0:443", port: 443, ok: true } }) }), "all");
    expect(row(r, "bundle").detail).toContain("but the role is relay");
  });

  test.each([
    [{ target: "relay.example.net:443", ok: true, ms: 5 }, "ok", "accepts TCP connections"],
    [{ target: "relay.example.net:443", ok: false, error: "ECONNREFUSED" }, "warn", "connection refused"],
    [{ target: "relay.example.net:443", ok: false, error: "ENOTFOUND" }, "warn", "does not resolve"],
    [{ target: "relay.example.net:443", ok: false, error: "ETIMEDOUT (no answer within 3000 ms)" }, "warn", "ETIMEDOUT"],
    [{ target: "relay.example.net:443", via: "proxy.lan:3128", ok: false, error: "ECONNREFUSED" }, "warn", "proxy.lan:3128"],
    [null, "missing", "no relay configured"],
  ] as const)("relay %o → %s", (relay, status, detail) => {
    const r = evaluate(facts({ config: config({ relay }) }), "master");
    expect(row(r, "relay").status).toBe(status);
    expect(row(r, "relay").detail).toContain(detail);
  });

  const relayCfg = (over: Partial<ConfigFacts>) => config({ role: "relay", bundle: goodBundle({ role: "relay", id: "relay-1" }), relay: null, interfaces: [], ...over });
  test.each([
    [{ address: "0.0.0.0:443", port: 443, ok: true }, "ok", true],
    [{ address: "0.0.0.0:443", port: 443, ok: false, error: "EADDRINUSE" }, "warn", true],
    [{ address: "0.0.0.0:443", port: 443, ok: false, error: "EACCES" }, "missing", false],
    [{ address: "192.0.2.1:443", port: 443, ok: false, error: "EADDRNOTAVAIL" }, "missing", false],
    [null, "missing", false],
  ] as const)("listen %o → %s", (listen, status, ok) => {
    const r = evaluate(facts({ config: relayCfg({ listen }) }), "relay");
    expect(row(r, "listen").status).toBe(status);
    expect(r.ok).toBe(ok);
  });

  test.each([
    [{ path: "/var/lib/agent/revoked", configured: false, exists: true, entries: 2 }, "ok", "2 revoked"],
    [{ path: "/var/lib/agent/revoked", configured: false, exists: false }, "warn", "accepts revoked certificates"],
    [{ path: "/etc/agent/revoked", configured: true, exists: false }, "missing", "will not start"],
    [{ path: "/etc/agent/revoked", configured: true, exists: true, error: "revocation list line 1: bad" }, "missing", "line 1"],
  ] as const)("revocations %o → %s", (revocations, status, detail) => {
    const r = evaluate(facts({ config: relayCfg({ listen: { address: "0.0.0.0:8443", port: 8443, ok: true }, revocations }) }), "relay");
    expect(row(r, "revocations").status).toBe(status);
    expect(row(r, "revocations").detail).toContain(detail);
    if (status !== "ok") expect(row(r, "revocations").fix).toContain("agent pki revoke");
  });

  test.each([
    [[{ name: "eth0", use: "[[uplink]] ethernet", present: true }], "ok"],
    [[{ name: "eth0", use: "[[uplink]] ethernet", present: true }, { name: "eht1", use: "[[uplink]] ethernet", present: false }], "missing"],
    [[{ name: "wlan0", use: "[ap] interface", present: false }], "missing"],
    [[{ name: "wwan0", use: "[[uplink]] cellular", present: false, optional: true }], "warn"],
  ] as const)("interfaces %o → %s, naming the missing ones", (interfaces, status) => {
    const r = evaluate(facts({ config: config({ interfaces: interfaces.map((i) => ({ ...i })) }) }), "onsite");
    expect(row(r, "interfaces").status).toBe(status);
    for (const i of interfaces.filter((i) => !i.present)) expect(row(r, "interfaces").detail).toContain(i.name);
  });
});

// Real files and sockets for the gatherers.
const caDir = join(tmp, "ca");
await initCa(caDir);
await issueToFile(caDir, { role: "onsite", id: "site-1", out: join(tmp, "site-1.bundle") });
await issueToFile(caDir, { role: "relay", id: "relay-1", hosts: ["127.0.0.1"], out: join(tmp, "relay.bundle") });

function listening(): Promise<Server> {
  return new Promise((resolve) => {
    const s = createServer((c) => c.destroy());
    s.listen(0, "127.0.0.1", () => resolve(s));
  });
}
const portOf = (s: Server) => (s.address() as { port: number }).port;

describe("gatherConfigFacts", () => {
  test("bundle mode, relay reachability, interfaces from a fake /sys/class/net", async () => {
    const bundle = join(tmp, "loose.bundle");
    writeFileSync(bundle, await Bun.file(join(tmp, "site-1.bundle")).text());
    chmodSync(bundle, 0o644);
    const sysNet = join(tmp, "sys-class-net");
    mkdirSync(join(sysNet, "eth0"), { recursive: true });
    const srv = await listening();
    try {
      const up = resolveConfig([{ origin: { kind: "flag" }, raw: { role: "onsite", bundle, relay: `127.0.0.1:${portOf(srv)}`, state_dir: join(tmp, "s1") } }]);
      up.uplink = [
        { name: "eth0", kind: "ethernet", priority: 1, metered: false },
        { name: "eht1", kind: "ethernet", priority: 2, metered: false },
      ];
      const f = await gatherConfigFacts(up, { sysNet, connectTimeoutMs: 2000 });
      expect(f.bundle).toMatchObject({ path: bundle, mode: 0o644, role: "onsite", id: "site-1", problems: [] });
      expect(f.relay).toMatchObject({ target: `127.0.0.1:${portOf(srv)}`, ok: true });
      expect(f.interfaces).toEqual([
        { name: "eth0", use: "[[uplink]] ethernet", present: true },
        { name: "eht1", use: "[[uplink]] ethernet", present: false },
      ]);
      const r = evaluate(facts({ config: f }), "onsite");
      expect(row(r, "bundle").fix).toContain(`chmod 600 ${bundle}`);
      expect(row(r, "interfaces").detail).toContain("eht1");
    } finally {
      srv.close();
    }
    // A closed port: refused, reported as such.
    const closed = await listening();
    const port = portOf(closed);
    await new Promise((r) => closed.close(r));
    const down = resolveConfig([{ origin: { kind: "flag" }, raw: { role: "master", relay: `127.0.0.1:${port}` } }]);
    expect((await gatherConfigFacts(down)).relay).toMatchObject({ ok: false, error: "ECONNREFUSED" });
  });

  test("relay: a listen address in use, and the revocation list in the state dir", async () => {
    const srv = await listening();
    const state = join(tmp, "relay-state");
    mkdirSync(state, { mode: 0o700 });
    try {
      const cfg = resolveConfig([{ origin: { kind: "flag" }, raw: { role: "relay", bundle: join(tmp, "relay.bundle"), listen: `127.0.0.1:${portOf(srv)}`, state_dir: state } }]);
      let f = await gatherConfigFacts(cfg);
      expect(f.listen).toMatchObject({ ok: false, error: "EADDRINUSE" });
      expect(f.revocations).toEqual({ path: join(state, "revoked"), configured: false, exists: false });
      writeFileSync(join(state, "revoked"), await Bun.file(caPaths(caDir).revoked).text());
      f = await gatherConfigFacts({ ...cfg, listen: { host: "127.0.0.1", port: 0 } });
      expect(f.listen).toMatchObject({ ok: true });
      expect(f.revocations).toMatchObject({ exists: true, entries: 0 });
    } finally {
      srv.close();
    }
  });

  test("gatherFacts creates no state dir", () => {
    const fresh = join(tmp, "never", "state");
    const f = gatherFacts({ stateDir: fresh });
    expect(f.stateDir).toMatchObject({ path: fresh, writable: true, exists: false, created: false });
    expect(existsSync(join(tmp, "never"))).toBe(false);
  });
});

describe("agent doctor (CLI)", () => {
  const repo = join(import.meta.dir, "..");
  const agent = (...args: string[]) => Bun.spawnSync([process.execPath, "src/main.ts", "doctor", ...args], { cwd: repo, stdout: "pipe", stderr: "pipe" });

  test("changes nothing: a fresh state dir path stays absent", () => {
    const fresh = join(tmp, "fresh-cli", "state");
    const p = agent("--json", "--state-dir", fresh);
    expect([0, 1]).toContain(p.exitCode);
    expect((JSON.parse(p.stdout.toString()) as DoctorReport).host.state_dir).toMatchObject({ path: fresh, exists: false });
    expect(existsSync(join(tmp, "fresh-cli"))).toBe(false);
  });

  test("--config FILE: the file's role is the role checked, its state dir is left alone, and a sound relay config exits 0", () => {
    const state = join(tmp, "cli-relay-state");
    const file = join(tmp, "relay.toml");
    writeFileSync(file, `role = "relay"\nbundle = "${join(tmp, "relay.bundle")}"\nlisten = "127.0.0.1:0"\nstate_dir = "${state}"\n`);
    const p = agent("--json", "--config", file);
    const r = JSON.parse(p.stdout.toString()) as DoctorReport;
    expect(r.role).toBe("relay");
    expect(row(r, "config")).toMatchObject({ status: "ok" });
    expect(row(r, "bundle")).toMatchObject({ status: "ok" });
    expect(row(r, "listen")).toMatchObject({ status: "ok" });
    expect(row(r, "revocations")).toMatchObject({ status: "warn" });
    expect(existsSync(state)).toBe(false);
    expect(p.exitCode).toBe(r.ok ? 0 : 1);
    // On a host where the relay's needs are met (root here, or a port ≥ 1024), that is 0.
    if (process.getuid?.() === 0) expect(p.exitCode).toBe(0);
  });

  test("--config FILE with mistakes: every problem, exit 1 (not a usage error)", () => {
    const file = join(tmp, "broken.toml");
    writeFileSync(file, `role = "relay"\nlisten = "nope"\nfoo = 1\n`);
    const p = agent("--json", "--config", file);
    expect(p.exitCode).toBe(1);
    const r = JSON.parse(p.stdout.toString()) as DoctorReport;
    expect(r.role).toBe("relay");
    expect(row(r, "config").status).toBe("missing");
    expect(row(r, "config").detail).toContain("listen:");
    expect(row(r, "config").detail).toContain("foo:");
    const syntax = join(tmp, "syntax.toml");
    writeFileSync(syntax, "role = \n");
    const q = agent("--config", syntax);
    expect(q.exitCode).toBe(1);
    expect(q.stdout.toString()).toContain("not valid TOML");
  });

  test("--role relay without a config file says that revoked certificates would be accepted", () => {
    const state = join(tmp, "flags-only-state");
    // The default config file would be read if this host had one.
    if (existsSync(DEFAULT_CONFIG_FILE)) throw new Error(`${DEFAULT_CONFIG_FILE} exists on this host; this test needs it absent`);
    const q = agent("--json", "--role", "relay", "--state-dir", state);
    const rep = JSON.parse(q.stdout.toString()) as DoctorReport;
    expect(row(rep, "revocations")).toMatchObject({ status: "warn" });
    expect(row(rep, "revocations").detail).toContain(join(state, "revoked"));
    expect(existsSync(state)).toBe(false);
  });

  test("--role wins over the file's role", () => {
    const file = join(tmp, "onsite.toml");
    writeFileSync(file, `role = "onsite"\nrelay = "127.0.0.1:1"\nstate_dir = "${join(tmp, "nostate")}"\n`);
    const r = JSON.parse(agent("--json", "--config", file, "--role", "master").stdout.toString()) as DoctorReport;
    expect(r.role).toBe("master");
    expect(readdirSync(tmp)).not.toContain("nostate");
  });
});
