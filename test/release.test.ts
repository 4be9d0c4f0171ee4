// Release build and packaging: the build matrix (build/matrix.ts) table-tested, and the
// service files under targets/ checked against targets/targets.toml and the role names.
import { describe, expect, test } from "bun:test";
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import {
  artifactName,
  buildMatrix,
  commitLabel,
  compileArgv,
  parseReleaseArgs,
  parseTargets,
  ReleaseUsageError,
  ROLES,
  sha256sumsText,
  sizesText,
  type Artifact,
  type TargetSpec,
} from "../build/matrix.ts";
import { programsPresent } from "./helpers/proc.ts";

const REPO = join(import.meta.dir, "..");
const TARGETS: TargetSpec[] = parseTargets(Bun.TOML.parse(await Bun.file(join(REPO, "targets/targets.toml")).text()));
const byName = (name: string) => TARGETS.find((t) => t.name === name)!;

describe("targets/targets.toml", () => {
  test.each([
    ["linux-arm64", "bun-linux-arm64", "glibc", "systemd", "/var/lib/agent", "/run/agent/control.sock"],
    ["linux-arm64-musl", "bun-linux-arm64-musl", "musl", "procd", "/etc/agent/state", "/var/run/agent/control.sock"],
    ["linux-x64", "bun-linux-x64", "glibc", "systemd", "/var/lib/agent", "/run/agent/control.sock"],
    ["linux-x64-musl", "bun-linux-x64-musl", "musl", "procd", "/etc/agent/state", "/var/run/agent/control.sock"],
  ])("%s → %s, %s, %s", (name, bunTarget, libc, init, stateDir, control) => {
    const t = byName(name);
    expect(t).toBeDefined();
    expect(t.bun_target).toBe(bunTarget);
    expect(t.libc).toBe(libc as TargetSpec["libc"]);
    expect(t.init).toBe(init as TargetSpec["init"]);
    expect(t.defaults.config).toBe("/etc/agent/agent.toml");
    expect(t.defaults.state_dir).toBe(stateDir);
    expect(t.defaults.control).toBe(control);
    if (libc === "musl") {
      expect(t.musl_arch).toBe(t.arch);
      expect(t.runtime_deps).toContain("libstdcpp6");
    }
    expect(existsSync(join(REPO, "targets", t.packaging))).toBe(true);
  });

  test("exactly the four release targets, in order", () => {
    expect(TARGETS.map((t) => t.name)).toEqual(["linux-arm64", "linux-arm64-musl", "linux-x64", "linux-x64-musl"]);
  });

  test("the arm64 glibc target says how CI runs it under qemu", () => {
    expect(byName("linux-arm64").qemu).toBe("qemu-aarch64-static");
    expect(byName("linux-arm64").sysroot).toBe("/usr/aarch64-linux-gnu");
  });

  const valid = Bun.TOML.parse(`[targets.t]\nbun_target="bun-linux-x64"\narch="x86_64"\nlibc="glibc"\nplatform="p"\ninit="systemd"\npackaging="raspberrypi"\nruntime_deps=[]\n[targets.t.defaults]\nconfig="/c"\nstate_dir="/s"\ncontrol="/k"\nbin="/b"\n`) as {
    targets: { t: Record<string, unknown> & { defaults: Record<string, unknown> } };
  };
  test("a valid fixture parses", () => {
    expect(parseTargets(valid).map((t) => t.name)).toEqual(["t"]);
  });
  test.each([
    ["no tables", () => ({}), "expected [targets.<name>] tables"],
    ["bun target", (d: typeof valid) => ((d.targets.t.bun_target = "linux-x64"), d), 'targets.t.bun_target: expected a bun target such as "bun-linux-arm64"'],
    ["libc", (d: typeof valid) => ((d.targets.t.libc = "uclibc"), d), 'targets.t.libc: expected one of glibc, musl, got "uclibc"'],
    ["musl needs musl_arch", (d: typeof valid) => ((d.targets.t.libc = "musl"), d), "targets.t.musl_arch: expected a non-empty string"],
    ["init", (d: typeof valid) => ((d.targets.t.init = "sysvinit"), d), "targets.t.init: expected one of systemd, procd"],
    ["relative path", (d: typeof valid) => ((d.targets.t.defaults.state_dir = "state"), d), "targets.t.defaults.state_dir: expected an absolute path"],
    ["missing defaults", (d: typeof valid) => (delete (d.targets.t as Record<string, unknown>).defaults, d), "expected a [targets.t.defaults] table"],
  ])("invalid: %s", (_name, mutate, message) => {
    const doc = mutate(structuredClone(valid) as typeof valid);
    expect(() => parseTargets(doc)).toThrow(message);
  });
});

describe("build matrix", () => {
  const all = buildMatrix(TARGETS, { outDir: "dist", commit: "0123456789ab" });

  test("a full run is 4 targets × 4 roles = 16 executables with distinct names", () => {
    expect(all).toHaveLength(16);
    expect(new Set(all.map((e) => e.artifact)).size).toBe(16);
    expect(all.map((e) => e.artifact)).toEqual([
      "agent-linux-arm64",
      "agent-onsite-linux-arm64",
      "agent-master-linux-arm64",
      "agent-relay-linux-arm64",
      "agent-linux-arm64-musl",
      "agent-onsite-linux-arm64-musl",
      "agent-master-linux-arm64-musl",
      "agent-relay-linux-arm64-musl",
      "agent-linux-x64",
      "agent-onsite-linux-x64",
      "agent-master-linux-x64",
      "agent-relay-linux-x64",
      "agent-linux-x64-musl",
      "agent-onsite-linux-x64-musl",
      "agent-master-linux-x64-musl",
      "agent-relay-linux-x64-musl",
    ]);
  });

  test.each([
    ["linux-arm64", "generic", "agent-linux-arm64", "bun-linux-arm64", ""],
    ["linux-arm64", "relay", "agent-relay-linux-arm64", "bun-linux-arm64", "relay"],
    ["linux-arm64-musl", "onsite", "agent-onsite-linux-arm64-musl", "bun-linux-arm64-musl", "onsite"],
    ["linux-x64", "master", "agent-master-linux-x64", "bun-linux-x64", "master"],
    ["linux-x64-musl", "generic", "agent-linux-x64-musl", "bun-linux-x64-musl", ""],
  ])("%s %s → %s", (target, role, artifact, bunTarget, bakedRole) => {
    const e = all.find((x) => x.target === target && x.role === role)!;
    expect(e.artifact).toBe(artifact);
    expect(artifactName(target, role as (typeof ROLES)[number])).toBe(artifact);
    expect(e.outfile).toBe(join("dist", artifact));
    expect(e.bunTarget).toBe(bunTarget);
    expect(e.defines.AGENT_BUILD_COMMIT).toBe("0123456789ab");
    expect(e.defines.AGENT_BUILD_TARGET).toBe(target);
    expect(e.defines.AGENT_BUILD_ROLE).toBe(bakedRole);
    expect(e.defines.AGENT_DEFAULT_CONTROL).toBe(byName(target).defaults.control);
    expect(e.defines.AGENT_DEFAULT_STATE_DIR).toBe(byName(target).defaults.state_dir);
  });

  test.each([
    [{ roles: ["generic"] }, ["agent-linux-arm64", "agent-linux-arm64-musl", "agent-linux-x64", "agent-linux-x64-musl"]],
    [{ targets: ["linux-x64"], roles: ["relay", "onsite"] }, ["agent-onsite-linux-x64", "agent-relay-linux-x64"]],
    [{ targets: ["linux-x64-musl", "linux-arm64"], roles: ["master"] }, ["agent-master-linux-arm64", "agent-master-linux-x64-musl"]],
    [{ targets: [], roles: [] }, all.map((e) => e.artifact)],
  ])("filter %j", (filter, artifacts) => {
    expect(buildMatrix(TARGETS, { ...filter, outDir: "dist", commit: "c" }).map((e) => e.artifact)).toEqual(artifacts);
  });

  test.each([
    [{ targets: ["linux-arm"] }, 'unknown target "linux-arm"', "linux-arm64, linux-arm64-musl, linux-x64, linux-x64-musl"],
    [{ targets: ["linux-x64", "mips"] }, 'unknown target "mips"', "targets:"],
    [{ roles: ["server"] }, 'unknown role "server"', "generic, onsite, master, relay"],
  ])("unknown names fail with a usage error: %j", (filter, message, hint) => {
    let err: unknown;
    try {
      buildMatrix(TARGETS, { ...filter, outDir: "dist", commit: "c" });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ReleaseUsageError);
    expect((err as ReleaseUsageError).message).toBe(message);
    expect((err as ReleaseUsageError).hint).toContain(hint);
  });

  test("compileArgv is an argument array: the bun target, JSON-quoted defines, outfile, entry last", () => {
    const e = all.find((x) => x.artifact === "agent-onsite-linux-arm64")!;
    const argv = compileArgv("/path/to/bun", e, "src/main.ts");
    expect(argv.slice(0, 3)).toEqual(["/path/to/bun", "build", "--compile"]);
    expect(argv).toContain("--target=bun-linux-arm64");
    expect(argv).toContain("--minify-syntax");
    expect(argv).toContain("--minify-whitespace");
    // Identifiers stay: stack traces and constructor names must read like the source.
    expect(argv.filter((a) => a === "--minify" || a === "--minify-identifiers")).toEqual([]);
    expect(argv).toContain("--sourcemap=linked");
    expect(argv).toContain("--bytecode");
    expect(argv).toContain("--no-compile-autoload-bunfig");
    expect(argv).toContain("--no-compile-autoload-dotenv");
    expect(argv).toContain(`--outfile=${join("dist", "agent-onsite-linux-arm64")}`);
    expect(argv.at(-1)).toBe("src/main.ts");
    const defines = argv.flatMap((a, i) => (argv[i - 1] === "--define" ? [a] : []));
    expect(defines).toContain('AGENT_BUILD_ROLE="onsite"');
    expect(defines).toContain('AGENT_BUILD_TARGET="linux-arm64"');
    expect(defines).toContain('AGENT_BUILD_COMMIT="0123456789ab"');
    const generic = compileArgv("bun", all[0]!, "src/main.ts", "/tmp/x.tmp");
    expect(generic).toContain('AGENT_BUILD_ROLE=""');
    expect(generic).toContain("--outfile=/tmp/x.tmp");
  });

  test.each([
    ["0123456789ab", false, "0123456789ab"],
    ["0123456789ab", true, "0123456789ab-dirty"],
    [undefined, false, "unknown"],
    [undefined, true, "unknown-dirty"],
    ["fatal: not a git repository", false, "unknown"],
  ])("commitLabel(%p, %p) = %p", (hash, dirty, label) => {
    expect(commitLabel(hash, dirty)).toBe(label);
  });

  test.each([
    [[], { targets: [], roles: [], out: undefined }],
    [["--target", "linux-x64", "--target=linux-arm64", "--role", "relay"], { targets: ["linux-x64", "linux-arm64"], roles: ["relay"], out: undefined }],
    [["--role", "onsite,master", "--out", "/tmp/d"], { targets: [], roles: ["onsite", "master"], out: "/tmp/d" }],
  ])("parseReleaseArgs %j", (argv, want) => {
    expect(parseReleaseArgs(argv)).toEqual(want);
  });

  test.each([[["--bogus"]], [["linux-x64"]], [["--out"]], [["--out="]]])("parseReleaseArgs rejects %j", (argv) => {
    expect(() => parseReleaseArgs(argv)).toThrow(ReleaseUsageError);
  });

  const artifacts: Artifact[] = [
    { target: "linux-x64", artifact: "agent-linux-x64", bytes: 104857600, sha256: "a".repeat(64) },
    { target: "linux-arm64", artifact: "agent-relay-linux-arm64", bytes: 1048576, sha256: "b".repeat(64) },
  ];
  test("SHA256SUMS uses sha256sum's two-space format", () => {
    expect(sha256sumsText(artifacts)).toBe(`${"a".repeat(64)}  agent-linux-x64\n${"b".repeat(64)}  agent-relay-linux-arm64\n`);
  });
  test("SIZES.txt groups by target in targets.toml order with bytes, MiB and a total", () => {
    const text = sizesText(TARGETS, artifacts);
    const lines = text.trimEnd().split("\n");
    expect(lines[0]).toStartWith("linux-arm64 (bun-linux-arm64, glibc)");
    expect(lines[1]).toMatch(/^ {2}agent-relay-linux-arm64 +1048576 B +1\.0 MiB$/);
    expect(lines[2]).toStartWith("linux-x64 (bun-linux-x64, glibc)");
    expect(lines[3]).toMatch(/^ {2}agent-linux-x64 +104857600 B +100\.0 MiB$/);
    expect(lines[4]).toBe("total: 2 artifacts, 105906176 B, 101.0 MiB");
    expect(text).not.toContain("musl");
  });
});

/** systemd's unit syntax, enough for our files: [Section], Key=Value, repeated keys kept. */
function parseUnit(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = header[1]!;
      continue;
    }
    const eq = line.indexOf("=");
    if (eq < 0) throw new Error(`not Key=Value: ${line}`);
    const key = `${section}.${line.slice(0, eq).trim()}`;
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return out;
}

describe("targets/raspberrypi systemd units", () => {
  const pi = byName("linux-arm64").defaults;
  const units = new Map((["onsite", "master", "relay"] as const).map((role) => [role, parseUnit(readFileSync(join(REPO, `targets/raspberrypi/agent-${role}.service`), "utf8"))]));
  const one = (role: "onsite" | "master" | "relay", key: string) => {
    const v = units.get(role)!.get(key);
    expect(v, `${role}: ${key}`).toBeDefined();
    expect(v!.length, `${role}: ${key} set once`).toBe(1);
    return v![0]!;
  };

  test.each(["onsite", "master", "relay"] as const)("agent-%s.service runs its role's executable with the config file, restarts and stops cleanly", (role) => {
    const exec = one(role, "Service.ExecStart").split(/\s+/);
    expect(exec).toEqual([`${pi.bin}/agent-${role}`, "--config", pi.config]);
    expect(one(role, "Service.Restart")).toBe("on-failure");
    expect(one(role, "Service.RestartSec")).toMatch(/^\d+s?$/);
    expect(one(role, "Service.KillSignal")).toBe("SIGTERM");
    expect(one(role, "Service.TimeoutStopSec")).toMatch(/^\d+s?$/);
    expect(one(role, "Service.NoNewPrivileges")).toBe("yes");
    expect(one(role, "Service.ProtectSystem")).toBe("strict");
    // state_dir /var/lib/agent and the control socket's directory /run/agent come from systemd.
    expect(`/var/lib/${one(role, "Service.StateDirectory")}`).toBe(pi.state_dir);
    expect(`/run/${one(role, "Service.RuntimeDirectory")}`).toBe(dirname(pi.control));
    expect(one(role, "Install.WantedBy")).toBe("multi-user.target");
    // The other two roles' units are in Conflicts=: they share the config, state and socket.
    const others = ["onsite", "master", "relay"].filter((r) => r !== role).map((r) => `agent-${r}.service`);
    expect(one(role, "Unit.Conflicts").split(/\s+/).sort()).toEqual(others.sort());
    expect(units.get(role)!.has("Service.MemoryDenyWriteExecute")).toBe(false);
  });

  test("the relay runs unprivileged and may bind 443", () => {
    expect(one("relay", "Service.User")).toBe("agent");
    expect(one("relay", "Service.AmbientCapabilities").split(/\s+/)).toContain("CAP_NET_BIND_SERVICE");
    expect(one("relay", "Service.CapabilityBoundingSet").split(/\s+/)).toEqual(["CAP_NET_BIND_SERVICE"]);
  });

  test.each(["onsite", "master"] as const)("%s runs as root with the network capabilities it needs", (role) => {
    expect(units.get(role)!.has("Service.User")).toBe(false);
    const caps = one(role, "Service.CapabilityBoundingSet").split(/\s+/);
    for (const cap of ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"]) expect(caps).toContain(cap);
    // IP forwarding is set through /proc/sys and TUN needs /dev/net/tun.
    expect(units.get(role)!.has("Service.ProtectKernelTunables")).toBe(false);
    expect(units.get(role)!.has("Service.PrivateDevices")).toBe(false);
    expect(one(role, "Service.ReadWritePaths").split(/\s+/)).toContain("/run");
  });

  // The `systemd` package (scripts/deps.sh) brings both; outside CI a host without it skips,
  // saying so, and in CI that is a failure.
  const haveSystemd = programsPresent("release.test.ts (systemd-analyze verify)", ["systemd-analyze", "/usr/lib/systemd/system/sysinit.target"]);
  const analyze = Bun.which("systemd-analyze");
  test.skipIf(!haveSystemd)("systemd-analyze verify accepts the units", () => {
    // verify wants the ExecStart executables and the User to exist; do it in a scratch root
    // holding the host's own units, stub executables and a passwd with the agent user.
    const root = mkdtempSync(join(tmpdir(), "agent-units-"));
    try {
      mkdirSync(join(root, "usr/local/bin"), { recursive: true });
      mkdirSync(join(root, "etc/systemd/system"), { recursive: true });
      cpSync("/usr/lib/systemd/system", join(root, "usr/lib/systemd/system"), { recursive: true, verbatimSymlinks: true });
      for (const role of ["onsite", "master", "relay"]) {
        writeFileSync(join(root, `usr/local/bin/agent-${role}`), "#!/bin/sh\n");
        chmodSync(join(root, `usr/local/bin/agent-${role}`), 0o755);
        cpSync(join(REPO, `targets/raspberrypi/agent-${role}.service`), join(root, `etc/systemd/system/agent-${role}.service`));
      }
      const files = ["onsite", "master", "relay"].map((r) => join(root, `etc/systemd/system/agent-${r}.service`));
      const r = Bun.spawnSync([analyze!, "verify", `--root=${root}`, ...files], { stdout: "pipe", stderr: "pipe" });
      const output = r.stdout.toString() + r.stderr.toString();
      expect(output.split("\n").filter((l) => /agent-/.test(l))).toEqual([]);
      expect(r.exitCode).toBe(0);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

/** UCI's file syntax, enough for /etc/config/agent: config TYPE 'NAME' + option KEY 'VALUE'. */
function parseUci(text: string): Map<string, Map<string, string>> {
  const sections = new Map<string, Map<string, string>>();
  let current: Map<string, string> | undefined;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const m = /^(config|option)\s+(\S+)\s+'([^']*)'$/.exec(line);
    if (!m) throw new Error(`unexpected UCI line: ${line}`);
    if (m[1] === "config") {
      current = new Map([[".type", m[2]!]]);
      sections.set(m[3]!, current);
    } else {
      if (!current) throw new Error(`option outside a section: ${line}`);
      current.set(m[2]!, m[3]!);
    }
  }
  return sections;
}

describe("targets/openwrt procd service", () => {
  const INIT = join(REPO, "targets/openwrt/agent.init");
  const uci = parseUci(readFileSync(join(REPO, "targets/openwrt/agent.config"), "utf8"));
  const main = uci.get("main")!;
  const owrt = byName("linux-arm64-musl").defaults;
  const shells = [["sh"], ...(Bun.which("busybox") ? [["busybox", "sh"]] : [])];

  test.each(shells)("%s -n agent.init passes", (...shell) => {
    const r = Bun.spawnSync([...shell, "-n", INIT], { stderr: "pipe" });
    expect(r.stderr.toString()).toBe("");
    expect(r.exitCode).toBe(0);
  });

  test("agent.config: section agent 'main', enabled, a valid role and the OpenWRT paths of targets.toml", () => {
    expect(main.get(".type")).toBe("agent");
    expect(["0", "1"]).toContain(main.get("enabled")!);
    expect(["onsite", "master", "relay"]).toContain(main.get("role")!);
    expect(main.get("config")).toBe(owrt.config);
    expect(main.get("state_dir")).toBe(owrt.state_dir);
    expect(main.get("control")).toBe(owrt.control);
  });

  test("agent.init starts at 95 with procd, the generic executable from targets.toml's bin, and the same fallbacks", async () => {
    const text = await Bun.file(INIT).text();
    expect(text.split("\n")[0]).toBe("#!/bin/sh /etc/rc.common");
    expect(text).toMatch(/^USE_PROCD=1$/m);
    expect(text).toMatch(/^START=95$/m);
    expect(text).toContain(`PROG=${owrt.bin}/agent\n`);
    expect(text).toContain(`config_get config main config ${owrt.config}\n`);
    expect(text).toContain(`config_get state_dir main state_dir ${owrt.state_dir}\n`);
    expect(text).toContain(`config_get control main control ${owrt.control}\n`);
  });

  // Runs start_service and service_triggers with procd's and UCI's shell functions replaced by
  // recorders: what the script would hand to procd, with the options of the shipped agent.config.
  function runInit(shell: string[], options: Record<string, string>) {
    const dir = mkdtempSync(join(tmpdir(), "agent-init-"));
    try {
      const config = join(dir, "agent.toml");
      writeFileSync(config, "");
      const uciValues: Record<string, string> = { config, state_dir: join(dir, "state"), control: join(dir, "run/agent/control.sock"), ...options };
      const env: Record<string, string> = { PATH: process.env.PATH ?? "/usr/bin:/bin", INIT };
      for (const [k, v] of Object.entries(uciValues)) env[`UCI_${k}`] = v;
      const script = `
config_load() { [ "$1" = agent ] || echo "config_load $1"; }
config_get() { eval "v=\\\${UCI_$3-}"; [ -n "$v" ] || v="$4"; eval "$1=\\$v"; }
config_get_bool() { config_get "$@"; eval "case \\$$1 in 1|on|true|yes|enabled) $1=1;; *) $1=0;; esac"; }
procd_open_instance() { echo open; }
procd_set_param() { printf 'param'; for a in "$@"; do printf '\\t%s' "$a"; done; echo; }
procd_close_instance() { echo close; }
procd_add_reload_trigger() { echo "trigger $*"; }
. "$INIT"
PROG=/bin/true
start_service; echo "rc=$?"
service_triggers
`;
      const r = Bun.spawnSync([...shell, "-c", script], { env, stdout: "pipe", stderr: "pipe" });
      const lines = r.stdout.toString().trimEnd().split("\n");
      const params = new Map(lines.filter((l) => l.startsWith("param\t")).map((l) => l.split("\t").slice(1)).map((a) => [a[0]!, a.slice(1)]));
      return { lines, params, stderr: r.stderr.toString(), uciValues, dir, stateExists: existsSync(uciValues.state_dir!) };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  test.each(shells)("%s: start_service hands procd the role and config from UCI, respawns, logs to logd", (...shell) => {
    const run = runInit(shell, { enabled: "1", role: main.get("role")! });
    expect(run.stderr).toBe("");
    expect(run.lines[0]).toBe("open");
    expect(run.params.get("command")).toEqual(["/bin/true", "--role", main.get("role")!, "--config", run.uciValues.config!, "--state-dir", run.uciValues.state_dir!, "--control", run.uciValues.control!]);
    expect(run.params.get("respawn")).toEqual(["3600", "5", "0"]);
    expect(run.params.get("stdout")).toEqual(["1"]);
    expect(run.params.get("stderr")).toEqual(["1"]);
    expect(run.params.get("file")).toEqual([run.uciValues.config!]);
    expect(run.lines).toContain("close");
    expect(run.lines).toContain("rc=0");
    expect(run.lines).toContain("trigger agent");
    expect(run.stateExists).toBe(true);
  });

  test.each([
    [{ enabled: "0", role: "onsite" }, "rc=0", "disabled"],
    [{ enabled: "1", role: "server" }, "rc=1", "must be onsite, master or relay"],
    [{ enabled: "1", role: "relay", config: "/nonexistent/agent.toml" }, "rc=1", "config file /nonexistent/agent.toml is missing"],
  ])("start_service with %j starts nothing and says why", (options, rc, message) => {
    const run = runInit(["sh"], options);
    expect(run.lines).not.toContain("open");
    expect(run.lines).toContain(rc);
    expect(run.stderr).toContain(message);
  });

  test.each(["relay", "master"])("role %s is passed through", (role) => {
    const run = runInit(["sh"], { enabled: "1", role });
    expect(run.params.get("command")?.slice(1, 3)).toEqual(["--role", role]);
  });

  test("agent.keep keeps /etc/agent across sysupgrade", async () => {
    const keep = (await Bun.file(join(REPO, "targets/openwrt/agent.keep")).text()).split("\n").filter((l) => l && !l.startsWith("#"));
    expect(keep).toContain("/etc/agent/");
    expect(owrt.state_dir.startsWith("/etc/agent/")).toBe(true);
  });
});
