// Issue 19, "Operations" and messages: SIGHUP reloads what can change live, an operator group
// for the control socket, facts as fields in JSON logs, no timestamps under journald, and a
// relay certificate for another name refused in words a user can act on. Each failed before
// its fix.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveConfig, type Config, type RawConfig } from "../src/config.ts";
import { ControlServer } from "../src/control.ts";
import { createLogger, setLogLevel } from "../src/log.ts";
import { realExecSync } from "../src/os/spawn.ts";
import { createCa, issueCertificate, parseCa } from "../src/pki.ts";
import type { Bundle } from "../src/pki.ts";
import { Daemon } from "../src/roles/daemon.ts";
import { OnsiteRole } from "../src/roles/onsite.ts";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { dialTls } from "../src/transport/tls.ts";
import { linkPair } from "../src/transport/link.ts";
import { Connection } from "../src/transport/mux.ts";
import { MAX_CONTROL_MESSAGE } from "../src/transport/frame.ts";
import { Msg } from "../src/transport/messages.ts";

const dir = mkdtempSync(join(tmpdir(), "agent-ux-ops-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const config = (raw: RawConfig = {}): Config => resolveConfig([{ origin: { kind: "flag" }, raw: { relay: "127.0.0.1:9", control: join(dir, "c.sock"), state_dir: dir, ...raw } }]);

describe("SIGHUP reloads what can change live", () => {
  test("onsite: allow and log level change, each with a log line; the session server sees the new allow list", async () => {
    const lines: string[] = [];
    const log = createLogger({ level: "info", json: true, write: (l) => void lines.push(l), journald: false });
    const cfg = config({ allow: ["192.168.1.0/24"] });
    let next = config({ allow: ["10.0.0.0/8:22"], log_level: "debug" });
    const daemon = new Daemon({ role: "onsite", id: "site-1" }, cfg, log, { reloadConfig: async () => next });
    const role = new OnsiteRole(cfg, { id: "site-1" } as Bundle, log.withTag("onsite"));
    daemon.add(role);
    const child = log.withTag("sessions");
    child.debug("before");
    await daemon.reload();
    child.debug("after");
    const records = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(records.find((r) => r.key === "log_level")).toMatchObject({ msg: "SIGHUP: log level info → debug", from: "info", to: "debug" });
    expect(records.find((r) => r.key === "allow")).toMatchObject({ msg: "SIGHUP: allow list 192.168.1.0/24 → 10.0.0.0/8:22", from: ["192.168.1.0/24"], to: ["10.0.0.0/8:22"] });
    // The level is shared by every tagged child, made before the reload or after.
    expect(records.map((r) => r.msg)).not.toContain("before");
    expect(records.map((r) => r.msg)).toContain("after");
    // The session server reads the daemon's config: the new list decides at once.
    const { checkTarget } = await import("../src/tunnel/onsite-server.ts");
    expect(checkTarget(cfg.allow, "10.0.0.5:22").ok).toBe(true);
    expect(checkTarget(cfg.allow, "192.168.1.5:80").ok).toBe(false);
    // A config that no longer loads changes nothing and says so.
    lines.length = 0;
    const broken = new Daemon({ role: "onsite", id: "site-1" }, cfg, log, {
      reloadConfig: async () => {
        throw new Error("config.toml:3:1: bad");
      },
    });
    await broken.reload();
    expect(lines.map((l) => JSON.parse(l).msg)).toEqual(["SIGHUP: the config does not load; keeping the running one config.toml:3:1: bad"]);
    expect(cfg.allow).toHaveLength(1);
    // What needs a restart is named, not silently ignored.
    lines.length = 0;
    next = config({ allow: ["10.0.0.0/8:22"], log_level: "debug", relay: "127.0.0.1:10" });
    await daemon.reload();
    expect(lines.map((l) => JSON.parse(l).msg)).toContain("SIGHUP: relay changed; that takes a restart");
  });

  test("master: the log level reloads", async () => {
    const lines: string[] = [];
    const log = createLogger({ level: "warn", json: true, write: (l) => void lines.push(l), journald: false });
    const daemon = new Daemon({ role: "master", id: "tech-1" }, config({ log_level: "warn" }), log, { reloadConfig: async () => config({ log_level: "info" }) });
    log.info("hidden");
    await daemon.reload();
    log.info("shown");
    expect(lines.map((l) => JSON.parse(l).msg)).toEqual(["SIGHUP: log level warn → info", "shown"]);
  });

  test("relay: [[access]] reloads in place (the pairing policy reads the daemon's config), with a log line", async () => {
    const lines: string[] = [];
    const log = createLogger({ level: "info", json: true, write: (l) => void lines.push(l), journald: false });
    const cfg = config({ access: [{ masters: ["tech-*"], onsites: ["*"] }] } as RawConfig);
    const held = cfg.access; // what RelayRole's `access: () => this.cfg.access` reads
    const { mayReach } = await import("../src/tunnel/pairing.ts");
    expect(mayReach(held, "tech-1", "site-1")).toBe(true);
    const daemon = new Daemon({ role: "relay", id: "relay-1" }, cfg, log, { reloadConfig: async () => config({ access: [{ masters: ["ops-*"], onsites: ["*"] }] } as RawConfig) });
    await daemon.reload();
    expect(mayReach(held, "tech-1", "site-1")).toBe(false);
    expect(mayReach(held, "ops-1", "site-1")).toBe(true);
    expect(lines.map((l) => JSON.parse(l).msg)).toContain("SIGHUP: [[access]] 1 → 1 rule(s); new sessions and device lists follow them");
  });

  test("setLogLevel returns the previous level", () => {
    const log = createLogger({ level: "error", write: () => {} });
    expect(setLogLevel(log.withTag("x"), "trace")).toBe("error");
    expect(setLogLevel(log, "info")).toBe("trace");
  });
});

describe("logs", () => {
  test("under journald (JOURNAL_STREAM) lines carry no time; elsewhere they do", () => {
    const j: string[] = [];
    createLogger({ json: true, write: (l) => void j.push(l), journald: true }).info("x", { id: "site-1" });
    expect(JSON.parse(j[0]!)).toEqual({ level: "info", msg: "x", id: "site-1" });
    const p: string[] = [];
    createLogger({ write: (l) => void p.push(l), journald: true }).warn("y");
    expect(p[0]).toBe("WARN y\n");
    const saved = process.env.JOURNAL_STREAM;
    process.env.JOURNAL_STREAM = "8:12345";
    try {
      const d: string[] = [];
      createLogger({ json: true, write: (l) => void d.push(l) }).info("z");
      expect(JSON.parse(d[0]!).time).toBeUndefined();
    } finally {
      if (saved === undefined) delete process.env.JOURNAL_STREAM;
      else process.env.JOURNAL_STREAM = saved;
    }
    const t: string[] = [];
    createLogger({ json: true, write: (l) => void t.push(l), journald: false }).info("w");
    expect(Date.parse(JSON.parse(t[0]!).time)).not.toBeNaN();
  });

  test("JSON logs: an error passed along is also the field `error`", () => {
    const lines: string[] = [];
    createLogger({ json: true, write: (l) => void lines.push(l), journald: false }).error("reload failed", new Error("outer", { cause: new Error("inner") }), { id: "site-1" });
    expect(JSON.parse(lines[0]!)).toMatchObject({ msg: "reload failed outer: inner", error: "outer: inner", id: "site-1" });
  });

  test("the relay's connect and disconnect lines carry id, address and reason as fields", async () => {
    const records: Record<string, unknown>[] = [];
    const log = createLogger({ level: "info", json: true, write: (l) => void records.push(JSON.parse(l)), journald: false });
    const server = new RelayServer({ id: "relay-1", log, access: () => [], keepaliveInterval: 60_000 });
    const [link, relayLink] = linkPair("203.0.113.5", "10.9.9.9");
    const conn = new Connection(link, { side: "dialer", maxControlIn: MAX_CONTROL_MESSAGE });
    const welcome = new Promise((resolve) => conn.on(Msg.WELCOME, resolve));
    const relayConn = server.accept(relayLink, { id: "site-1", role: "onsite", serial: "serial-1" });
    conn.send(Msg.HELLO, { versions: [1], role: "onsite", id: "site-1", agent: "test/1" });
    await welcome;
    conn.close();
    await relayConn.wait();
    await server.close();
    expect(records.find((r) => String(r.msg).startsWith("onsite site-1 connected"))).toMatchObject({ id: "site-1", role: "onsite", address: "203.0.113.5" });
    const gone = records.find((r) => String(r.msg).startsWith("onsite site-1 disconnected"));
    expect(gone).toMatchObject({ id: "site-1", role: "onsite", address: "203.0.113.5" });
    expect(typeof gone!.reason).toBe("string");
  });
});

describe("an operator group for the control socket", () => {
  test("is a config key too (operator = \"GROUP\"), checked as a group name", () => {
    const file = (raw: RawConfig) => resolveConfig([{ origin: { kind: "file", path: "agent.toml" }, raw }]);
    expect(file({ operator: "support" }).operator).toBe("support");
    expect(() => file({ operator: "no spaces allowed" })).toThrow(/operator.*expected a group name/s);
  });

  const root = process.getuid?.() === 0 && Bun.which("groupadd") !== null;
  test.skipIf(!root)("--operator GROUP: the socket belongs to the group, mode 0660; an unknown group is refused", async () => {
    const group = `agentux${process.pid % 100000}`;
    const add = realExecSync(["groupadd", group]);
    expect(add.code).toBe(0);
    const log = createLogger({ level: "silent", write: () => {} });
    const sock = join(dir, "op.sock");
    const server = new ControlServer(sock, log, group);
    try {
      const gid = Number(realExecSync(["getent", "group", group]).stdout.split(":")[2]);
      await server.start();
      const st = statSync(sock);
      expect(st.mode & 0o777).toBe(0o660);
      expect(st.gid).toBe(gid);
    } finally {
      server.close();
      realExecSync(["groupdel", group]);
    }
    const bad = new ControlServer(join(dir, "bad.sock"), log, "no-such-group-agentux");
    expect(bad.start()).rejects.toThrow('cannot give it to operator group "no-such-group-agentux"');
    // Without an operator: owner only, as before.
    const plain = new ControlServer(join(dir, "plain.sock"), log);
    await plain.start();
    expect(statSync(join(dir, "plain.sock")).mode & 0o777).toBe(0o600);
    plain.close();
  });

  test("the daemon takes --operator", async () => {
    const { daemonArgs } = await import("../src/cli/common.ts");
    expect(daemonArgs.operator.type).toBe("string");
  });
});

describe("a relay certificate for another name", () => {
  test("the refusal names the certificate's names and both fixes, not Node's text", async () => {
    const c = createCa({ name: "fleet CA" });
    const fleet = parseCa(c.certPem, c.keyPem);
    const device = issueCertificate(fleet, { role: "onsite", id: "site-1" });
    const relay = issueCertificate(fleet, { role: "relay", id: "relay-1", hosts: ["relay.example.net", "10.9.9.9"] });
    const l = Bun.listen({ hostname: "127.0.0.1", port: 0, tls: { cert: relay.certPem, key: relay.keyPem, ca: fleet.certPem, requestCert: true, rejectUnauthorized: false } as Bun.TLSOptions, socket: { data() {} } });
    try {
      const e = (await dialTls({ host: "127.0.0.1", port: l.port, tls: { certPem: device.certPem, keyPem: device.keyPem, caPem: fleet.certPem }, timeout: 5000 }).catch((x: Error) => x)) as Error;
      expect(e.message).toContain("it is for relay.example.net, 10.9.9.9, not 127.0.0.1");
      expect(e.message).toContain("--relay relay.example.net:PORT");
      expect(e.message).toContain("agent pki issue --role relay --host 127.0.0.1");
      expect(e.message).not.toContain("altnames");
    } finally {
      l.stop(true);
    }
  });
});
