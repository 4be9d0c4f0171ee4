// Issue 19, what a new user stumbles over in the CLI: each test here failed before its fix.
// The CLI runs in this process (runMain, output through the injected writer) against API
// objects served by a real ControlServer: fakes of each role's API, or the roles composed by
// src/roles (not started, no relay) where the answer is the role's own.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runMain } from "../src/cli/index.ts";
import { flagsIgnoredForRole } from "../src/cli/daemon.ts";
import { nearest } from "../src/cli/format.ts";
import { formatUplinkReport } from "../src/cli/uplink.ts";
import { resolveConfig } from "../src/config.ts";
import { ControlServer, inProcessTransport } from "../src/control.ts";
import { NotFoundError } from "../src/errors.ts";
import { createLogger } from "../src/log.ts";
import { FakeBackend, type Exec } from "../src/nat/backend.ts";
import type { Bundle } from "../src/pki.ts";
import type { DaemonStatus, MasterApi, OnsiteApi, RelayApi, WifiApi } from "../src/roles/api.ts";
import { Daemon } from "../src/roles/daemon.ts";
import { composeMaster, natRefusal } from "../src/roles/master.ts";
import { composeOnsite } from "../src/roles/onsite.ts";
import { ErrorCode } from "../src/transport/messages.ts";
import { RemoteError } from "../src/transport/mux.ts";
import type { SessionView } from "../src/tunnel/master-forwarder.ts";
import type { UplinkReport } from "../src/uplink/manager.ts";

const log = createLogger({ level: "silent", write: () => {} });
const dir = mkdtempSync(join(tmpdir(), "agent-ux-cli-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const SOCK = join(dir, "x.sock");

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** `agent ARGV` exactly as given (no --control added), against `server` in this process. */
async function run(argv: string[], server?: ControlServer, extra: { bakedRole?: string } = {}): Promise<Run> {
  const r: Run = { code: -1, stdout: "", stderr: "" };
  r.code = await runMain(argv, {
    io: { out: (t) => void (r.stdout += t), err: (t) => void (r.stderr += t) },
    ...(server ? { transport: () => inProcessTransport(server) } : {}),
    ...extra,
  });
  return r;
}

function serving(api: object, role: string): ControlServer {
  return new ControlServer(SOCK, log).serve(api, role);
}

const now = Date.now();
const iso = (ms: number) => new Date(ms).toISOString();

function status(role: DaemonStatus["role"], part?: Record<string, unknown>): DaemonStatus {
  const s: DaemonStatus = { role, id: `${role}-1`, version: "9.9.9", commit: "abc1234", target: "dev-linux-x64", pid: 4242, started: iso(now - 65_000), uptime_s: 65, control: SOCK, state_dir: "/var/lib/agent" };
  if (part) s[role] = part;
  return s;
}

const linkUp = { relay: "relay.example:7443", state: "up", since: iso(now - 120_000), attempt: 0, connects: 1, last_error: null, next_retry: null, rtt_ms: 12, sessions: 2 };
const linkDown = { relay: "relay.example:7443", state: "waiting", since: iso(now - 30_000), attempt: 3, connects: 0, last_error: "cannot connect to relay.example:7443: Connection refused", next_retry: iso(now + 4_500), rtt_ms: null, sessions: 0 };

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

function fakeMaster(part: Record<string, unknown> = linkUp, extra: Partial<MasterApi> = {}): MasterApi {
  return {
    status: () => status("master", part),
    devices: async () => [],
    connect: async () => session,
    sessions: () => [session],
    disconnect: async () => session,
    natAdd: async () => {
      throw new Error("unused");
    },
    ...extra,
  };
}

function fakeOnsite(extra: Partial<OnsiteApi> = {}, part: Record<string, unknown> = { ...linkUp, streams_served: 0 }, uplink?: Record<string, unknown>): OnsiteApi {
  return {
    status: () => ({ ...status("onsite", part), ...(uplink ? { uplink } : {}) }),
    sessions: () => [],
    redial: () => ({}),
    natAdd: async () => {
      throw new Error("unused");
    },
    natList: () => ({ backend: "fake", now: iso(now), rules: [] }),
    natDel: async () => {
      throw new Error("unused");
    },
    natFlush: async () => ({ removed: 0 }),
    ...extra,
  };
}

const fakeRelay: RelayApi = { status: () => status("relay"), devices: () => [], sessions: () => [], refusals: () => [] };

describe("agent status shows the relay link (issue 19, item 2)", () => {
  test("a connected master: the relay, since when, the rtt and the session count; exit 0", async () => {
    const r = await run(["status", "--control", SOCK], serving(fakeMaster(), "master"));
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^relay\\s+relay\\.example:7443: connected since ${linkUp.since} \\(2m ago\\), rtt 12ms$`, "m"));
    expect(r.stdout).toMatch(/^sessions\s+2$/m);
    expect(r.stdout).not.toMatch(/^last error/m);
  });

  test("a master that is not connected: the last error and the next retry; exit 3", async () => {
    const r = await run(["status", "--control", SOCK], serving(fakeMaster(linkDown), "master"));
    expect(r.code).toBe(3);
    expect(r.stdout).toMatch(/^relay\s+relay\.example:7443: not connected, waiting to dial again \(since .*, 30s ago\)$/m);
    expect(r.stdout).toMatch(/^last error\s+cannot connect to relay\.example:7443: Connection refused$/m);
    expect(r.stdout).toMatch(/^next retry\s+in 5s \(/m);
    // --json: the same answer as data, and the same exit code for scripts.
    const j = await run(["status", "--json", "--control", SOCK], serving(fakeMaster(linkDown), "master"));
    expect(j.code).toBe(3);
    expect(JSON.parse(j.stdout).master.state).toBe("waiting");
  });

  test("an onsite device: the active uplink, or that none is managed", async () => {
    const managed = await run(["status", "--control", SOCK], serving(fakeOnsite({}, undefined, { active: "wan", healthy: ["wan", "lte"] }), "onsite"));
    expect(managed.code).toBe(0);
    expect(managed.stdout).toMatch(/^uplink\s+wan \(healthy: wan, lte; see `agent uplink status`\)$/m);
    const plain = await run(["status", "--control", SOCK], serving(fakeOnsite(), "onsite"));
    expect(plain.stdout).toMatch(/^uplink\s+default route \(no \[\[uplink\]\] configured\)$/m);
  });

  test("the relay has no relay link: exit 0", async () => {
    const r = await run(["status", "--control", SOCK], serving(fakeRelay, "relay"));
    expect(r.code).toBe(0);
    expect(r.stdout).not.toMatch(/^relay\s/m);
  });

  test("a real composed master that has not reached the relay: exit 3, the state it is in", async () => {
    const cfg = resolveConfig([{ origin: { kind: "flag" }, raw: { relay: "127.0.0.1:9", control: SOCK, state_dir: dir } }]);
    const daemon = new Daemon({ role: "master", id: "tech-1" }, cfg, log);
    composeMaster(daemon, cfg, { id: "tech-1" } as Bundle, log);
    const r = await run(["status", "--control", SOCK], daemon.control);
    expect(r.code).toBe(3);
    expect(r.stdout).toMatch(/^relay\s+127\.0\.0\.1:9: connecting/m);
    expect(r.stdout).toMatch(/^sessions\s+0$/m);
  });

  test("the help and the README name exit code 3", async () => {
    expect((await run(["status", "--help"])).stdout).toContain("exit 3 when the daemon runs but is not connected");
    const readme = await Bun.file(join(import.meta.dir, "..", "README.md")).text();
    expect(readme).toMatch(/\| *3 *\|[^\n]*not connected/);
  });
});

describe("CLI grammar", () => {
  test("options before the command: `agent --control X devices` is `agent devices --control X`", async () => {
    const before = await run(["--control", SOCK, "sessions"], serving(fakeMaster(), "master"));
    expect(before.code).toBe(0);
    expect(before.stdout).toMatch(/^s-1\s+site-1/m);
    const nested = await run(["--control=" + SOCK, "nat", "list", "--json"], serving(fakeOnsite(), "onsite"));
    expect(nested.code).toBe(0);
    expect(JSON.parse(nested.stdout).backend).toBe("fake");
    // An option the command does not take is still refused, naming the command.
    const wrong = await run(["--role", "master", "sessions"]);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toStartWith("agent: unknown option --role for agent sessions\n");
  });

  test("`agent help` and `agent help CMD` print the usage", async () => {
    const top = await run(["help"]);
    expect(top.code).toBe(0);
    expect(top.stdout).toContain("USAGE agent");
    expect(top.stdout).toContain("help");
    const sub = await run(["help", "nat", "add"]);
    expect(sub.code).toBe(0);
    expect(sub.stdout).toContain("USAGE agent nat add [OPTIONS]");
    const bad = await run(["help", "natt"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("did you mean `agent nat`?");
  });

  test.each([
    [["--rol", "master"], "did you mean --role?"],
    [["status", "--contol", "x"], "did you mean --control?"],
    [["devcies"], "did you mean `agent devices`?"],
    [["nat", "lst"], "did you mean `agent nat list`?"],
    [["--control", "/x.sock", "devcies"], "did you mean `agent devices --control /x.sock`?"],
  ])("a near miss %p: %s", async (argv, hint) => {
    const r = await run(argv);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`hint: ${hint}`);
  });

  test("nearest: close words only", () => {
    expect(nearest("rol", ["role", "relay", "listen"])).toBe("role");
    expect(nearest("xyz", ["role", "relay"])).toBeUndefined();
    expect(nearest("con", ["connect", "control", "config"])).toBeUndefined(); // ambiguous prefix
    expect(nearest("disc", ["connect", "disconnect"])).toBe("disconnect");
  });

  test("the hint to end a session carries the --control and --config given", async () => {
    const cfgFile = join(dir, "m.toml");
    await Bun.write(cfgFile, `control = "${SOCK}"\n`);
    const r = await run(["connect", "site-1", "--forward", "18080:192.168.1.50:80", "--control", SOCK, "--config", cfgFile], serving(fakeMaster(), "master"));
    expect(r.code).toBe(0);
    expect(r.stdout).toEndWith(`end it with: agent disconnect s-1 --control ${SOCK} --config ${cfgFile}\n`);
    const plain = await run(["--config", cfgFile, "connect", "site-1", "--forward", "18080:192.168.1.50:80"], serving(fakeMaster(), "master"));
    expect(plain.stdout).toEndWith(`end it with: agent disconnect s-1 --config ${cfgFile}\n`);
  });

  test("a daemon's hint naming a command carries the --control given; others are left alone", async () => {
    const { withReach } = await import("../src/cli/index.ts");
    expect(withReach("see `agent sessions` or `agent pki issue --role relay` or `agent nat list --control y`", " --control x")).toBe("see `agent sessions --control x` or `agent pki issue --role relay` or `agent nat list --control y`");
    expect(withReach("see `agent sessions`", "")).toBe("see `agent sessions`");
  });

  test("per-role executables: the help says which role is built in", async () => {
    const r = await run(["--help"], undefined, { bakedRole: "onsite" });
    expect(r.stdout).toContain("This executable has the onsite role built in");
    expect((await run(["--help"], undefined, {})).stdout).not.toContain("built in:");
  });
});

describe("options for another role", () => {
  test.each([
    ["master", { allow: ["10.0.0.0/8"] }, ["--allow has no effect on a master: only an onsite device serves LAN targets"]],
    ["relay", { relay: "r:1", location: "x" }, ["--relay has no effect on a relay: the relay dials no relay; it listens on `listen`", "--location has no effect on a relay: only an onsite device reports a location"]],
    ["onsite", { allow: ["10.0.0.0/8"], relay: "r:1" }, []],
    ["onsite", { gui: "127.0.0.1:8080" }, ["--gui has no effect on an onsite device: only a master and a relay serve the GUI"]],
  ] as const)("%s with %p", (role, args, warnings) => {
    expect(flagsIgnoredForRole({ _: [], ...args } as never, role)).toEqual([...warnings]);
  });

  test("a NAT refusal on a master does not tell its user to use --allow", () => {
    const e = natRefusal(new RemoteError(ErrorCode.FORBIDDEN, "to: 10.9.9.9:80 is outside the LAN allow list; add it with --allow or the config key allow"));
    expect(e.message).toBe("to: 10.9.9.9:80 is outside the LAN allow list");
    expect(e.message).not.toContain("--allow");
    expect((e as { hint?: string }).hint).toContain("the onsite device's allow list");
  });
});

describe("exit codes", () => {
  test("connect --ttl 400d: a usage error (2) that names the flag in the user's units", async () => {
    const r = await run(["connect", "site-1", "--forward", "8080:192.168.1.50:80", "--ttl", "400d", "--control", SOCK], serving(fakeMaster(), "master"));
    expect(r.code).toBe(2);
    expect(r.stderr).toStartWith("agent: --ttl: at most 7d, got 400d\n");
    expect(r.stderr).not.toContain("milliseconds");
  });

  test("not found is exit 4 for disconnect, nat del and connect", async () => {
    const cfg = resolveConfig([{ origin: { kind: "flag" }, raw: { relay: "127.0.0.1:9", control: SOCK, state_dir: dir } }]);
    const master = new Daemon({ role: "master", id: "tech-1" }, cfg, log);
    composeMaster(master, cfg, { id: "tech-1" } as Bundle, log);
    const d = await run(["disconnect", "s-nope", "--control", SOCK], master.control);
    expect(d.code).toBe(4);
    expect(d.stderr).toStartWith('agent: no session "s-nope"');

    const onsiteCfg = resolveConfig([{ origin: { kind: "flag" }, raw: { relay: "127.0.0.1:9", control: SOCK, state_dir: join(dir, "onsite"), nat: { backend: "iptables" } } }]);
    const onsite = new Daemon({ role: "onsite", id: "site-1" }, onsiteCfg, log);
    const exec: Exec = async () => ({ code: 0, stdout: "", stderr: "" });
    const { nat } = await composeOnsite(onsite, onsiteCfg, { id: "site-1" } as Bundle, log, { nat: { backend: new FakeBackend(), exec } });
    await nat.start();
    try {
      const n = await run(["nat", "del", "r-nope", "--control", SOCK], onsite.control);
      expect(n.code).toBe(4);
      // The daemon's hint, carrying the --control given so that it can be pasted.
      expect(n.stderr).toBe(`agent: no active rule "r-nope"\nhint: \`agent nat list --control ${SOCK}\` shows the ids\n`);
    } finally {
      await nat.close();
    }

    // connect to a device the relay does not know: the relay's answer, as the master maps it.
    const unknown = fakeMaster(linkUp, {
      connect: async () => {
        throw new NotFoundError('unknown device "site-9": it has never connected to this relay');
      },
    });
    const c = await run(["connect", "site-9", "--forward", "8080:192.168.1.50:80", "--control", SOCK], serving(unknown, "master"));
    expect(c.code).toBe(4);
  });

  test("the README lists the exit codes", async () => {
    const readme = await Bun.file(join(import.meta.dir, "..", "README.md")).text();
    for (const code of ["0", "1", "2", "3", "4"]) expect(readme).toMatch(new RegExp(`^\\| *${code} *\\|`, "m"));
  });
});

describe("a command sent to a daemon of another role", () => {
  test.each([
    [["connect", "site-1", "--forward", "8080:10.0.0.1:80"], "onsite", '"agent connect" runs on a master'],
    [["nat", "flush"], "master", '"agent nat flush" runs on an onsite'], // nat list|del run on a master too (its grants)
    [["devices"], "onsite", '"agent devices" runs on a master or the relay'],
    [["uplink", "status"], "relay", '"agent uplink status" runs on an onsite'],
  ] as const)("%p to a %s daemon", async (argv, role, where) => {
    const api = role === "onsite" ? fakeOnsite() : role === "master" ? fakeMaster() : fakeRelay;
    const r = await run([...argv, "--control", SOCK], serving(api, role));
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`the socket ${SOCK} belongs to ${role === "onsite" ? "an onsite" : role === "relay" ? "the relay" : "a master"} daemon; ${where}`);
    expect(r.stderr).not.toContain("knows");
  });
});

describe("one name per thing", () => {
  test("nat list --json is pretty, as every other --json", async () => {
    const r = await run(["nat", "list", "--json", "--control", SOCK], serving(fakeOnsite(), "onsite"));
    expect(r.stdout).toBe(JSON.stringify({ backend: "fake", now: iso(now), rules: [] }, null, 2) + "\n");
  });

  test("devices: CONNECTED (the relay link) and HOST UP (the device's uptime) are told apart", async () => {
    const list = [{ id: "site-1", hostname: "pi", location: "", address: "198.51.100.7", agent: "1.2.0", uptime: 86_400, uplink: "eth0", online: true, connected_since: iso(now - 300_000), last_seen: iso(now), rtt_ms: 5 }];
    const r = await run(["devices", "--control", SOCK], serving(fakeMaster(linkUp, { devices: async () => list }), "master"));
    const [head, row] = r.stdout.trimEnd().split("\n");
    expect(head).toMatch(/\bCONNECTED\s+HOST UP\s+LAST SEEN\s+AGENT$/);
    expect(row).toMatch(/\beth0\s+5m\s+1d\s+now\s+1\.2\.0$/);
    expect((await run(["devices", "--help"])).stdout).toContain("HOST UP: the device's own uptime");
  });

  test("a refused target: connect prints the device's warning, sessions the count and last reason per forward", async () => {
    const warned: SessionView = { ...session, warnings: ["target 192.168.1.50:80: connect failed: Connection refused"] };
    const c = await run(["connect", "site-1", "--forward", "18080:192.168.1.50:80", "--control", SOCK], serving(fakeMaster(linkUp, { connect: async () => warned }), "master"));
    expect(c.code).toBe(0);
    expect(c.stdout).toContain("warning: target 192.168.1.50:80: connect failed: Connection refused");
    const failing: SessionView = { ...session, forwards: session.forwards.map((f) => ({ ...f, errors: 3, last_error: "connect failed: Connection refused" })) };
    const l = await run(["sessions", "--control", SOCK], serving(fakeMaster(linkUp, { sessions: () => [failing] }), "master"));
    expect(l.stdout).toContain("3 failed, last: connect failed: Connection refused");
  });

  test("the sessions table says ONSITE, as the relay's does", async () => {
    const r = await run(["sessions", "--control", SOCK], serving(fakeMaster(), "master"));
    expect(r.stdout.split("\n")[0]).toMatch(/^SESSION\s+ONSITE\s+STATE/);
  });

  test("no devices: a master is told what is true", async () => {
    const m = await run(["devices", "--control", SOCK], serving(fakeMaster(), "master"));
    expect(m.stdout).not.toContain("have connected to the relay yet");
    expect(m.stdout).toContain("or the relay's access policy lets this master see none");
    const r = await run(["devices", "--control", SOCK], serving(fakeRelay, "relay"));
    expect(r.stdout).toBe("no onsite devices have connected to this relay since it started\n");
  });

  test("uplink status: a configured interface the host does not have reads MISSING, not a dead link", () => {
    const uplink = (name: string, present: boolean, problem?: string) => ({
      name, kind: "ethernet", priority: 10, metered: false, active: false, health: "down", since: iso(now - 5_000),
      link: { present, up: present, carrier: false, addrs: [] }, probes: { sent: 0, loss: 0 }, ...(problem ? { problem } : {}),
    });
    const report = { monitor: "netlink", targets: [], tracking: { interval_ms: 1000, timeout_ms: 1000, down: 3, up: 5, count: 1 }, uplinks: [uplink("eht0", false, "missing interface"), uplink("eth1", true, "no carrier")], history: [] } as unknown as UplinkReport;
    const rows = formatUplinkReport(report, now).split("\n");
    expect(rows.find((l) => l.includes("eht0"))).toContain("MISSING (no such interface)");
    expect(rows.find((l) => l.includes("eth1"))).toContain("no carrier");
  });

  test("nat add: a rule applied while IPv4 forwarding is off is reported with the fix on stderr, exit 0", async () => {
    const view = { id: "r-1", proto: "tcp", src: "203.0.113.7/32", port: 8080, to: "192.168.1.50:80", owner: "local", created: iso(now), expires: iso(now + 60_000), remaining_ms: 60_000 };
    const api = fakeOnsite({ natAdd: async () => ({ rule: view, created: true, warning: "IPv4 forwarding is off (net.ipv4.ip_forward=0): turn it on with `sysctl -w net.ipv4.ip_forward=1`" }) });
    const r = await run(["nat", "add", "--src", "203.0.113.7", "--port", "8080", "--to", "192.168.1.50:80", "--ttl", "1m", "--control", SOCK], serving(api, "onsite"));
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("added rule r-1");
    expect(r.stderr).toContain("warning: IPv4 forwarding is off");
  });

  test("uplink status: durations in config units (1s, not 1000ms)", () => {
    const report: UplinkReport = { monitor: "netlink", targets: ["1.1.1.1:443"], tracking: { interval_ms: 1000, timeout_ms: 500, down: 3, up: 2, count: 1 }, uplinks: [], history: [] };
    const text = formatUplinkReport(report, now);
    expect(text).toContain("every 1s, timeout 500ms,");
    expect(text).not.toContain("1000ms");
  });

  test("configure-wifi: PSK may be omitted (open network) as its help says; the help says which priority wins", async () => {
    const h = await run(["uplink", "configure-wifi", "--help"]);
    expect(h.stdout).toContain("HIGHER is preferred");
    expect(h.stdout).toContain("lower wins");
    const asked: unknown[] = [];
    const wifi: Partial<WifiApi> = {
      wifiConfigure: async (req) => {
        asked.push(req);
        return "added open network";
      },
    };
    const r = await run(["uplink", "configure-wifi", "Cafe", "--control", SOCK], serving({ ...fakeOnsite(), ...wifi }, "onsite"));
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(asked).toEqual([{ ssid: "Cafe" }]);
  });
});

test("the README's CLI overview names every command and subcommand of `agent --help`", async () => {
  const { rootCommand } = await import("../src/cli/index.ts");
  const readme = await Bun.file(join(import.meta.dir, "..", "README.md")).text();
  const start = readme.indexOf("## CLI overview");
  const overview = readme.slice(start, readme.indexOf("\n## ", start + 5));
  const missing: string[] = [];
  for (const [name, entry] of Object.entries(rootCommand.subCommands as Record<string, unknown>)) {
    const cmd = (typeof entry === "function" ? await (entry as () => Promise<{ subCommands?: object }>)() : entry) as { subCommands?: object };
    const subs = Object.keys(cmd.subCommands ?? {});
    if (subs.length === 0 && !overview.includes(`agent ${name}`)) missing.push(name);
    for (const sub of subs) if (!new RegExp(`agent ${name} (\\S+ \\| )*${sub}\\b`).test(overview)) missing.push(`${name} ${sub}`);
  }
  expect(missing).toEqual([]);
});

test("the README's CLI overview names every flag of every command (`agent CMD --help`)", async () => {
  const { rootCommand } = await import("../src/cli/index.ts");
  const readme = await Bun.file(join(import.meta.dir, "..", "README.md")).text();
  const start = readme.indexOf("## CLI overview");
  const overview = readme.slice(start, readme.indexOf("\n## ", start + 5));
  const missing: string[] = [];
  type Cmd = { args?: Record<string, { type?: string }>; subCommands?: Record<string, unknown> };
  const walk = async (name: string, entry: unknown): Promise<void> => {
    const cmd = (typeof entry === "function" ? await (entry as () => Promise<Cmd>)() : entry) as Cmd;
    for (const [flag, def] of Object.entries(cmd.args ?? {})) if (def.type !== "positional" && !overview.includes(`--${flag}`)) missing.push(`${name} --${flag}`);
    for (const [sub, e] of Object.entries(cmd.subCommands ?? {})) await walk(`${name} ${sub}`, e);
  };
  await walk("agent", rootCommand);
  expect(missing).toEqual([]);
});
