// The real program, run as a user would: exit codes, messages, and the daemon lifecycle.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import pkg from "../package.json" with { type: "json" };
import { agent, BUN, MAIN, ROOT, tempDir, waitFor } from "./helpers/cli.ts";

const tmp = tempDir("cli");
afterAll(() => tmp[Symbol.dispose]());

describe("usage errors exit 2 with a reason and a hint", () => {
  test.each([
    [[], "no role given"],
    [["--bogus"], "unknown option --bogus"],
    [["--role", "server"], "--role: expected one of relay, onsite, master"],
    [["--role"], "--role needs a value"],
    [["frobnicate"], 'unknown command "frobnicate"'],
    [["pki"], "`agent pki` needs a command"],
    [["status", "extra"], 'unexpected argument "extra"'],
    [["--role", "relay", "--listen", "127.0.0.1:4433"], "--bundle: required for --role relay"],
    [["--role", "onsite", "--bundle", "x.bundle"], "--relay: required for --role onsite"],
    [["--role", "onsite", "--bundle", "b", "--relay", "relay.example.net"], "--relay: expected HOST:PORT"],
    [["--role", "onsite", "--bundle", "b", "--relay", "r.example:1", "--allow", "10.0.0.1/8"], "--allow: item 1: \"10.0.0.1/8\" has host bits set"],
    [["--role", "relay", "--config", "/nonexistent/agent.toml"], "config file /nonexistent/agent.toml does not exist"],
  ])("agent %p", async (args, msg) => {
    const r = await agent(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(msg);
    expect(r.stderr).toMatch(/\nhint: .+/);
    expect(r.stdout).toBe("");
  });

  test("a broken config file names the file and the key", async () => {
    const path = join(tmp.path, "bad.toml");
    writeFileSync(path, 'role = "relay"\nlisten = "0.0.0.0:443"\n[nat]\nbackend = "pf"\n');
    const r = await agent(["--config", path]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${path}: nat.backend: expected one of auto, iptables, nft, got "pf"`);
  });
});

test("--version prints version, commit, target and Bun version", async () => {
  const r = await agent(["--version"]);
  expect(r.code).toBe(0);
  expect(r.stdout).toContain(`agent ${pkg.version}`);
  expect(r.stdout).toMatch(/commit [0-9a-f]{7,}|commit unknown/);
  expect(r.stdout).toContain(`target dev-linux-${process.arch}`);
  expect(r.stdout).toContain(`bun ${Bun.version}`);
  const j = await agent(["version", "--json"]);
  expect(JSON.parse(j.stdout)).toMatchObject({ version: pkg.version, bun: Bun.version });
});

test("--help shows usage and the commands", async () => {
  const r = await agent(["--help"]);
  expect(r.code).toBe(0);
  for (const word of ["--role", "--bundle", "status", "doctor", "pki"]) expect(r.stdout).toContain(word);
  const sub = await agent(["pki", "issue", "--help"]);
  expect(sub.code).toBe(0);
  expect(sub.stdout).toContain("--role");
});

test("status without a daemon is a runtime error (exit 1)", async () => {
  const r = await agent(["status", "--control", join(tmp.path, "none.sock")]);
  expect(r.code).toBe(1);
  expect(r.stderr).toContain("no daemon control socket");
});

describe("daemon lifecycle", () => {
  const ca = join(tmp.path, "ca");
  const bundles: Record<string, string> = {};
  beforeAll(async () => {
    expect((await agent(["pki", "init", "--dir", ca])).code).toBe(0);
    for (const [role, id, extra] of [
      ["relay", "relay-1", ["--host", "localhost"]],
      ["onsite", "site-1", []],
      ["master", "tech-1", []],
    ] as const) {
      const out = join(tmp.path, `${id}.bundle`);
      const r = await agent(["pki", "issue", "--dir", ca, "--role", role, "--id", id, ...extra, "--out", out]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      bundles[role] = out;
    }
  });

  async function startDaemon(args: string[], sock: string) {
    const p = Bun.spawn([BUN, MAIN, ...args, "--control", sock, "--state-dir", join(tmp.path, "state")], { stdout: "pipe", stderr: "pipe", cwd: ROOT });
    await waitFor(() => existsSync(sock) || p.exitCode !== null, 10_000, "control socket");
    if (p.exitCode !== null) throw new Error(`daemon exited ${p.exitCode}: ${await new Response(p.stderr).text()}`);
    return p;
  }

  test.each([
    { role: "relay", extra: ["--listen", "127.0.0.1:4433"], signal: "SIGTERM" },
    { role: "onsite", extra: ["--relay", "127.0.0.1:4433", "--location", "Royal Champagne"], signal: "SIGINT" },
    { role: "master", extra: ["--relay", "127.0.0.1:4433"], signal: "SIGTERM" },
  ] as const)("$role: status over the control socket, clean stop on $signal", async ({ role, extra, signal }) => {
    const sock = join(tmp.path, `${role}.sock`);
    const p = await startDaemon(["--role", role, "--bundle", bundles[role]!, ...extra, "--json-logs"], sock);
    try {
      const st = await agent(["status", "--json", "--control", sock]);
      const s = JSON.parse(st.stdout);
      // Exit 3: the daemon runs but its relay link is not up (no relay listens here).
      expect(st.code).toBe(role === "relay" || s[role].state === "up" ? 0 : 3);
      expect(s).toMatchObject({ role, pid: p.pid, version: pkg.version, control: sock });
      expect(s.id).toBe({ relay: "relay-1", onsite: "site-1", master: "tech-1" }[role]);
      expect(s.uptime_s).toBeGreaterThanOrEqual(0);
      const text = await agent(["status", "--control", sock]);
      expect(text.stdout).toMatch(new RegExp(`^role\\s+${role}$`, "m"));
      expect(text.stdout).toMatch(new RegExp(`^pid\\s+${p.pid}$`, "m"));
    } finally {
      p.kill(signal);
    }
    expect(await p.exited).toBe(0);
    expect(existsSync(sock)).toBe(false);
    const logs = (await new Response(p.stderr).text()).trim().split("\n");
    for (const line of logs) expect(() => JSON.parse(line)).not.toThrow();
    expect(logs.map((l) => JSON.parse(l).msg)).toContain(`received ${signal}, stopping`);
  });

  test("flags win over the config file", async () => {
    const cfgPath = join(tmp.path, "relay.toml");
    const fileSock = join(tmp.path, "from-file.sock");
    const flagSock = join(tmp.path, "from-flag.sock");
    writeFileSync(cfgPath, `role = "relay"\nlisten = "127.0.0.1:4434"\nbundle = "${bundles.relay}"\ncontrol = "${fileSock}"\nlog_level = "warn"\n`);
    const p = await startDaemon(["--config", cfgPath], flagSock);
    try {
      expect(existsSync(fileSock)).toBe(false);
      const s = JSON.parse((await agent(["status", "--json", "--control", flagSock])).stdout);
      expect(s.role).toBe("relay");
    } finally {
      p.kill("SIGTERM");
      await p.exited;
    }
    // log_level = "warn" from the file: the info lines of start and stop are not written.
    expect(await new Response(p.stderr).text()).not.toContain("INFO");
  });

  test("a second daemon on the same socket is refused with exit 1", async () => {
    const sock = join(tmp.path, "dup.sock");
    const p = await startDaemon(["--role", "relay", "--bundle", bundles.relay!, "--listen", "127.0.0.1:4435"], sock);
    try {
      const r = await agent(["--role", "relay", "--bundle", bundles.relay!, "--listen", "127.0.0.1:4435", "--control", sock, "--state-dir", join(tmp.path, "state")]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain("already listening");
    } finally {
      p.kill("SIGTERM");
      await p.exited;
    }
  });

  test("a bundle readable by others is refused (exit 2) and nothing starts", async () => {
    const loose = join(tmp.path, "loose.bundle");
    writeFileSync(loose, await Bun.file(bundles.onsite!).text(), { mode: 0o600 });
    chmodSync(loose, 0o644);
    const sock = join(tmp.path, "loose.sock");
    const r = await agent(["--role", "onsite", "--bundle", loose, "--relay", "127.0.0.1:1", "--control", sock, "--state-dir", join(tmp.path, "state")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(loose);
    expect(r.stderr).toContain("chmod 600");
    expect(existsSync(sock)).toBe(false);
  });

  test("a bundle of another role is refused (exit 2)", async () => {
    const r = await agent(["--role", "relay", "--bundle", bundles.onsite!, "--listen", "127.0.0.1:4436", "--control", join(tmp.path, "x.sock"), "--state-dir", join(tmp.path, "state")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("is for role onsite");
  });

  test("a missing bundle file is refused (exit 2)", async () => {
    const r = await agent(["--role", "master", "--bundle", join(tmp.path, "nope.bundle"), "--relay", "127.0.0.1:1", "--control", join(tmp.path, "y.sock"), "--state-dir", join(tmp.path, "state")]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("nope.bundle");
  });
});

test("help of a nested command names the whole command, without colour codes in a pipe", async () => {
  const r = await agent(["pki", "issue", "--help"]);
  expect(r.code).toBe(0);
  expect(r.stdout).toContain("USAGE agent pki issue [OPTIONS]");
  expect(r.stdout).not.toContain("\x1b[");
});

test("a large answer is printed whole through a pipe (agent devices --json for 5,000 devices)", async () => {
  using dir = tempDir("bigout");
  const { ControlServer } = await import("../src/control.ts");
  const { createLogger } = await import("../src/log.ts");
  const sock = `${dir.path}/c.sock`;
  const server = new ControlServer(sock, createLogger({ level: "silent" }));
  const now = new Date().toISOString();
  server.handle("devices", () =>
    Array.from({ length: 5000 }, (_, i) => ({ id: `site-${i}`, hostname: `h${i}`, location: "bench", address: "127.0.0.1", agent: "0", uptime: 1, uplink: "", online: true, connected_since: now, last_seen: now, rtt_ms: 1 })),
  );
  await server.start();
  try {
    const r = await agent(["devices", "--json", "--control", sock]);
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as unknown[]).length).toBe(5000);
  } finally {
    server.close();
  }
});
