// The CLI run in this process, as main.ts runs it (runMain: exit code, "agent: ..." and a
// hint on stderr), with its output captured through the injected writer. The daemons are
// fakes of each role's API (src/roles/api.ts) served by a real ControlServer; the client
// reaches them through the in-process transport (the same JSON the socket carries), and one
// test goes over a real socket in a temp dir. test/cli.test.ts runs the real program.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runMain } from "../src/cli/index.ts";
import { resolveConfig } from "../src/config.ts";
import { ControlServer, inProcessTransport } from "../src/control.ts";
import { createLogger } from "../src/log.ts";
import type { RuleView } from "../src/nat/service.ts";
import type { DaemonStatus, MasterApi, OnsiteApi, RelayApi } from "../src/roles/api.ts";
import { Daemon } from "../src/roles/daemon.ts";
import type { DeviceInfo } from "../src/transport/messages.ts";
import type { SessionView } from "../src/tunnel/master-forwarder.ts";
import { VERSION } from "../src/version.ts";

const log = createLogger({ level: "silent", write: () => {} });
const dir = mkdtempSync(join(tmpdir(), "agent-cli-inprocess-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `agent ARGV` against `api` (served in this process), capturing what it prints. */
async function agent(argv: string[], api?: object, role = "fake"): Promise<Run> {
  const server = new ControlServer(join(dir, "unused.sock"), log);
  if (api) server.serve(api, role);
  const run: Run = { code: -1, stdout: "", stderr: "" };
  run.code = await runMain([...argv, ...(api ? ["--control", server.path] : [])], {
    io: { out: (t) => void (run.stdout += t), err: (t) => void (run.stderr += t) },
    transport: () => inProcessTransport(server),
  });
  return run;
}

const now = Date.now();
const iso = (ms: number) => new Date(ms).toISOString();

function status(role: DaemonStatus["role"]): DaemonStatus {
  return { role, id: `${role}-1`, version: "9.9.9", commit: "abc1234", target: "dev-linux-x64", pid: 4242, started: iso(now - 65_000), uptime_s: 65, control: "/run/agent/control.sock", state_dir: "/var/lib/agent" };
}

const devices: DeviceInfo[] = [
  { id: "site-1", hostname: "pi-1", location: "Royal Champagne", address: "198.51.100.7", agent: "1.2.0", uptime: 3600, uplink: "eth0", online: true, connected_since: iso(now - 60_000), last_seen: iso(now), rtt_ms: 12 },
  { id: "site-2", hostname: "", location: "", address: "198.51.100.8", agent: "1.1.0", uptime: 10, uplink: "", online: false, connected_since: iso(now - 900_000), last_seen: iso(now - 90_000), rtt_ms: null },
];

const session: SessionView = {
  session: "s-1",
  onsite: "site-1",
  state: "active",
  since: iso(now),
  reason: "opened",
  opened: iso(now),
  expires: iso(now + 30 * 60_000 - 500),
  forwards: [{ bind: "127.0.0.1", port: 18080, target: "192.168.1.50:80", connections: 0, active: 0 }],
};

const rule: RuleView = { id: "r-1", proto: "tcp", src: "203.0.113.7/32", port: 8080, to: "192.168.1.50:80", owner: "s-1", created: iso(now), expires: iso(now + 60_000), remaining_ms: 59_800 };

/** A master that records the requests it gets. */
function fakeMaster() {
  const asked: Record<string, unknown>[] = [];
  const api: MasterApi = {
    status: () => status("master"),
    devices: async () => devices,
    connect: async (req) => {
      asked.push({ connect: req });
      return session;
    },
    sessions: () => [session],
    disconnect: async (req) => {
      asked.push({ disconnect: req });
      return { ...session, state: "closed", reason: "disconnected by the user" };
    },
    natAdd: async (req) => {
      asked.push({ natAdd: req });
      return { created: true, rule };
    },
  };
  return { api, asked };
}

function fakeOnsite(rules: RuleView[]): OnsiteApi {
  return {
    status: () => status("onsite"),
    sessions: () => [{ session: "s-1", master: "tech-1", targets: ["192.168.1.50:80"], opened: iso(now), streams: 3 }],
    redial: () => ({}),
    natAdd: async () => ({ created: false, rule }),
    natList: () => ({ backend: "fake", now: iso(now), rules }),
    natDel: async () => rule,
    natFlush: async () => ({ removed: rules.length }),
  };
}

const fakeRelay: RelayApi = {
  status: () => status("relay"),
  devices: () => devices,
  sessions: () => [{ session: "s-1", master: "tech-1", onsite: "site-1", targets: ["192.168.1.50:80"], opened: iso(now - 120_000), expires: null }],
  refusals: () => [],
};

describe("agent status", () => {
  test("text: one aligned pair per line", async () => {
    const r = await agent(["status"], fakeMaster().api);
    expect(r).toMatchObject({ code: 0, stderr: "" });
    expect(r.stdout).toBe(
      [
        "role       master",
        "id         master-1",
        "version    9.9.9 (commit abc1234, dev-linux-x64)",
        "pid        4242",
        `uptime     1m5s (since ${iso(now - 65_000)})`,
        "control    /run/agent/control.sock",
        "state dir  /var/lib/agent",
        "",
      ].join("\n"),
    );
  });

  test("--json: the daemon's answer as it is", async () => {
    const r = await agent(["status", "--json"], fakeOnsite([]));
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual(status("onsite"));
  });

  test("over a real control socket: the daemon shell's own status", async () => {
    const sock = join(dir, "daemon.sock");
    const cfg = resolveConfig([{ origin: { kind: "flag" }, raw: { control: sock, state_dir: join(dir, "state") } }]);
    const d = new Daemon({ role: "relay", id: "relay-7" }, cfg, log);
    d.control.serve(d.api(), "relay");
    await d.control.start();
    try {
      const run: Run = { code: -1, stdout: "", stderr: "" };
      run.code = await runMain(["status", "--control", sock], { io: { out: (t) => void (run.stdout += t), err: (t) => void (run.stderr += t) } });
      expect(run.code).toBe(0);
      expect(run.stdout).toMatch(/^role\s+relay$/m);
      expect(run.stdout).toMatch(/^id\s+relay-7$/m);
      expect(run.stdout).toMatch(new RegExp(`^pid\\s+${process.pid}$`, "m"));
    } finally {
      d.control.close();
    }
  });

  test("no daemon: exit 1, the reason and a hint on stderr, nothing on stdout", async () => {
    const r: Run = { code: -1, stdout: "", stderr: "" };
    r.code = await runMain(["status", "--control", join(dir, "none.sock")], { io: { out: (t) => void (r.stdout += t), err: (t) => void (r.stderr += t) } });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(`agent: no daemon control socket at ${join(dir, "none.sock")}\nhint: is the daemon running? pass --control SOCKET if it uses another path\n`);
  });
});

describe("agent devices", () => {
  test.each([
    ["master", fakeMaster().api],
    ["relay", fakeRelay],
  ] as const)("on a %s: a table, online and offline devices", async (_role, api) => {
    const r = await agent(["devices"], api);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^ID\s+STATE\s+LOCATION\s+HOSTNAME\s+ADDRESS\s+UPLINK\s+CONNECTED\s+HOST UP\s+LAST SEEN\s+AGENT$/);
    expect(lines[1]).toMatch(/^site-1\s+online\s+Royal Champagne\s+pi-1\s+198\.51\.100\.7\s+eth0\s+1m\s+1h\s+now\s+1\.2\.0$/);
    expect(lines[2]).toMatch(/^site-2\s+offline\s+-\s+-\s+198\.51\.100\.8\s+-\s+-\s+-\s+1m30s ago\s+1\.1\.0$/);
    expect(lines).toHaveLength(3);
  });

  test("--json", async () => {
    const r = await agent(["devices", "--json"], fakeRelay);
    expect(JSON.parse(r.stdout)).toEqual(devices);
  });

  test("an onsite daemon does not list devices: exit 2, naming the role", async () => {
    const r = await agent(["devices"], fakeOnsite([]), "onsite");
    expect(r.code).toBe(2);
    expect(r.stderr).toStartWith("agent: the socket " + join(dir, "unused.sock") + " belongs to an onsite daemon; \"agent devices\" runs on a master or the relay\n");
  });
});

describe("agent sessions", () => {
  test("on a master: its sessions with their forwards", async () => {
    const r = await agent(["sessions"], fakeMaster().api);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^SESSION\s+ONSITE\s+STATE\s+FORWARDS\s+TTL\s+NOTE$/);
    expect(lines[1]).toMatch(/^s-1\s+site-1\s+active\s+127\.0\.0\.1:18080→192\.168\.1\.50:80\s+30m left\s+opened$/);
  });

  test("on the relay: every session, master and onsite", async () => {
    const r = await agent(["sessions"], fakeRelay);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^SESSION\s+MASTER\s+ONSITE\s+TARGETS\s+OPENED\s+TTL$/);
    expect(lines[1]).toMatch(/^s-1\s+tech-1\s+site-1\s+192\.168\.1\.50:80\s+2m ago\s+no TTL$/);
  });

  test("on an onsite device: the sessions it serves", async () => {
    const r = await agent(["sessions"], fakeOnsite([]));
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines).toEqual([expect.stringMatching(/^SESSION\s+MASTER\s+TARGETS\s+STREAMS$/), expect.stringMatching(/^s-1\s+tech-1\s+192\.168\.1\.50:80\s+3$/)]);
  });

  test("none", async () => {
    const api = { ...fakeMaster().api, sessions: () => [] };
    expect(await agent(["sessions"], api)).toEqual({ code: 0, stdout: "no sessions\n", stderr: "" });
  });
});

describe("agent connect / disconnect", () => {
  test("connect sends the forwards and the TTL in ms, and prints how to end the session", async () => {
    const m = fakeMaster();
    const r = await agent(["connect", "site-1", "--forward", "18080:192.168.1.50:80", "--ttl", "30m"], m.api);
    expect(r.code).toBe(0);
    expect(m.asked).toEqual([{ connect: { onsite: "site-1", forwards: ["18080:192.168.1.50:80"], ttl: 1_800_000 } }]);
    expect(r.stdout).toBe(`session s-1 to site-1 (30m left)\n  127.0.0.1:18080 → 192.168.1.50:80\nend it with: agent disconnect s-1 --control ${join(dir, "unused.sock")}\n`);
  });

  test("a bad --forward is refused before the daemon is asked", async () => {
    const m = fakeMaster();
    const r = await agent(["connect", "site-1", "--forward", "nonsense"], m.api);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("nonsense");
    expect(m.asked).toEqual([]);
  });

  test("disconnect", async () => {
    const m = fakeMaster();
    const r = await agent(["disconnect", "s-1"], m.api);
    expect(r).toEqual({ code: 0, stdout: "session s-1 to site-1 closed\n", stderr: "" });
    expect(m.asked).toEqual([{ disconnect: { session: "s-1" } }]);
  });
});

describe("agent nat", () => {
  test("list: none", async () => {
    expect(await agent(["nat", "list"], fakeOnsite([]))).toEqual({ code: 0, stdout: "no active rules (backend fake)\n", stderr: "" });
  });

  test("list: one row per rule with the time it has left", async () => {
    const r = await agent(["nat", "list"], fakeOnsite([rule]));
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^ID\s+PROTO\s+SOURCE\s+IN\s+PORT\s+TO\s+LEFT\s+OWNER$/);
    expect(lines[1]).toMatch(/^r-1\s+tcp\s+203\.0\.113\.7\/32\s+\*\s+8080\s+192\.168\.1\.50:80\s+1m\s+s-1$/);
    const j = await agent(["nat", "list", "--json"], fakeOnsite([rule]));
    expect(JSON.parse(j.stdout)).toEqual({ backend: "fake", now: iso(now), rules: [rule] });
  });

  test("add --session on a master: the request as typed, the rule as answered", async () => {
    const m = fakeMaster();
    const r = await agent(["nat", "add", "--session", "s-1", "--port", "8080", "--to", "192.168.1.50:80", "--ttl", "1m"], m.api);
    expect(r.code).toBe(0);
    expect(m.asked).toEqual([{ natAdd: { session: "s-1", port: "8080", to: "192.168.1.50:80", ttl: "1m", proto: "tcp" } }]);
    expect(r.stdout).toBe(`added rule r-1: tcp 203.0.113.7/32 → port 8080 → 192.168.1.50:80, expires in 1m (${rule.expires})\n`);
  });

  test("add with neither --src nor --session: exit 2 and a hint", async () => {
    const r = await agent(["nat", "add", "--port", "8080", "--to", "192.168.1.50:80", "--ttl", "1m"], fakeOnsite([]));
    expect(r).toEqual({ code: 2, stdout: "", stderr: "agent: agent nat add needs exactly one of --src (on the onsite daemon) and --session (on a master)\nhint: see `agent nat add --help`\n" });
  });

  test("del and flush", async () => {
    expect((await agent(["nat", "del", "r-1"], fakeOnsite([rule]))).stdout).toBe("deleted rule r-1: tcp 203.0.113.7/32 → port 8080 → 192.168.1.50:80\n");
    expect((await agent(["nat", "flush"], fakeOnsite([rule]))).stdout).toBe("removed 1 rule(s)\n");
  });
});

describe("the rest of the tree", () => {
  test("uplink status on a daemon without uplinks: exit 1, what to configure", async () => {
    const r = await agent(["uplink", "status"], fakeOnsite([]), "onsite");
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    // The cause (the daemon's own answer) follows the reason.
    expect(r.stderr).toStartWith('agent: this daemon runs no uplink manager: unknown command "uplink.status"; this onsite daemon knows nat.add,');
    expect(r.stderr).toEndWith("\nhint: it starts on an onsite daemon whose config has [[uplink]] entries\n");
  });

  test("version and help go to the injected writer; no colour codes when it is no terminal", async () => {
    const v = await agent(["version", "--json"]);
    expect(JSON.parse(v.stdout).version).toBe(VERSION);
    const h = await agent(["nat", "add", "--help"]);
    expect(h.code).toBe(0);
    expect(h.stdout).toContain("USAGE agent nat add [OPTIONS]");
    expect(h.stdout).not.toContain("\x1b[");
  });
});

test("only main.ts reads process.argv or exits; commands print only through the injected writer", () => {
  const src = join(import.meta.dir, "..", "src");
  const offenders: string[] = [];
  for (const file of new Bun.Glob("**/*.ts").scanSync(src)) {
    const text = readFileSync(join(src, file), "utf8");
    if (file !== "main.ts" && /process\.(argv|exit)\b/.test(text)) offenders.push(`${file}: process.argv/exit`);
    // The default writer (cli/args.ts processOut) is the one place a command's output meets the process.
    if (file.startsWith("cli/") && file !== "cli/args.ts" && /process\.(stdout|stderr)/.test(text)) offenders.push(`${file}: process.stdout/stderr`);
  }
  expect(offenders).toEqual([]);
});
