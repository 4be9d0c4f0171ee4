// Leak check for after the test suite (`make test` runs it after `bun test`): fails when the
// tests left behind what they made. Only names our tests use are looked at:
//
//   - network namespaces "agt-<tag>-…" (test/helpers/netns.ts nsName) whose run has ended:
//     <tag> is the test process's pid in base 36; a live pid is a run still going, not a leak;
//   - processes started for tests that outlived their run: orphans (no live bun process among
//     their ancestors: a running test or benchmark owns its children) that are this
//     checkout's: naming its src/main.ts or test/fixtures/, or started in its directory (the
//     cwd a test run hands down) with a namespace "agt-…" or a test temp dir
//     (/tmp/agent-<name>-XXXXXX) on their command line. Another checkout's processes, and
//     anything a live run owns, are never listed, let alone killed;
//   - in the root namespace: the agent's firewall names (iptables chains AGENT-NAT / AGENT-FWD,
//     comments "agent-nat id=", nft tables agent_nat / agent_ap, the packet tunnels' nft tables
//     agent_tun_<o|m><tag> and iptables chains AGT-TUN-<o|m><tag>-*), and TUN/TAP devices and
//     bridges named agt* or agent*. Tests make these only inside namespaces, so any here is a leak.
//
// Usage: bun scripts/leaks.ts [--clean]   (exit 1 when something was left behind; --clean also
// kills the orphans and deletes the namespaces it lists: only those, by pid and by name.)
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";

/** The run tag of one of our namespace names, or undefined when the name is not ours. */
export function namespaceTag(name: string): string | undefined {
  const m = /^agt-([0-9a-z]+)-[A-Za-z0-9._-]+$/.exec(name);
  return m?.[1];
}

/** Our namespaces whose run (pid = tag in base 36) is no longer alive. */
export function leakedNamespaces(names: readonly string[], alive: (pid: number) => boolean): string[] {
  return names.filter((n) => {
    const tag = namespaceTag(n);
    if (tag === undefined) return false;
    const pid = parseInt(tag, 36);
    return !Number.isSafeInteger(pid) || !alive(pid);
  });
}

export interface Proc {
  pid: number;
  ppid: number;
  /** argv, NUL-split. */
  argv: string[];
  state: string;
  /** Working directory (/proc/PID/cwd), when readable. */
  cwd?: string;
}

/** A test temp dir: mkdtemp of `agent-<name>-` (test/helpers/cli.ts tempDir, fleet.ts). */
const TEMP_DIR = /(^|[\s=:'"])\/tmp\/agent-[A-Za-z0-9-]+-[A-Za-z0-9]{6}(\/|$|[\s'"])/;

/** Whether a process is one this checkout's tests start (see the header). */
export function startedByTests(p: Pick<Proc, "argv" | "cwd">, root: string): boolean {
  const line = p.argv.join(" ");
  if (line.includes(join(root, "src", "main.ts"))) return true;
  if (line.includes(join(root, "test", "fixtures") + "/")) return true;
  // Names shared by every checkout: ours only when started in this one.
  if (p.cwd !== root) return false;
  return /\bip netns exec agt-[0-9a-z]+-/.test(line) || TEMP_DIR.test(line);
}

/** A bun process (a test run, a benchmark, a daemon): whoever has one as an ancestor is owned. */
export function isBun(argv: readonly string[]): boolean {
  const exe = argv[0]?.split("/").at(-1);
  return exe === "bun" || exe === "bun.exe";
}

/**
 * Processes this checkout's tests started that nobody owns any more: no live bun process
 * (a test run, a benchmark) among their ancestors. `self` (this script and its ancestors,
 * e.g. make) is never listed.
 */
export function leakedProcesses(procs: readonly Proc[], root: string, self: ReadonlySet<number>): Proc[] {
  const byPid = new Map(procs.map((p) => [p.pid, p]));
  const owned = (p: Proc) => {
    const seen = new Set<number>();
    for (let q = byPid.get(p.ppid); q && q.pid !== 1 && !seen.has(q.pid); q = byPid.get(q.ppid)) {
      seen.add(q.pid);
      if (isBun(q.argv)) return true;
    }
    return false;
  };
  return procs.filter((p) => p.state !== "Z" && !self.has(p.pid) && startedByTests(p, root) && !owned(p));
}

/** Lines of a firewall dump (iptables-save, nft list ruleset) that carry the agent's names. */
export function agentRuleLines(dump: string): string[] {
  return dump.split("\n").filter((l) => /AGENT-NAT|AGENT-FWD|agent-nat id=|\btable (ip|inet) agent_(nat|ap|tun_[om][0-9a-f]{8})\b|AGT-TUN-[om][0-9a-f]{8}/.test(l));
}

/** Names of TUN/TAP devices in `ip -o link show type tun` style output that look like ours. */
export function ourTunDevices(ipOutput: string): string[] {
  return [...ipOutput.matchAll(/^\d+:\s+([^:@\s]+)[:@]/gm)].map((m) => m[1]!).filter((n) => /^(agt|agent)/.test(n));
}

// ---------------------------------------------------------------- the host

function processTable(): Proc[] {
  const out: Proc[] = [];
  for (const name of readdirSync("/proc")) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
      let cwd: string | undefined;
      try {
        cwd = readlinkSync(`/proc/${pid}/cwd`);
      } catch {
        // another user's process
      }
      out.push({ pid, ppid: Number(f[1]), state: f[0]!, argv, cwd });
    } catch {
      // exited while we looked
    }
  }
  return out;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
};

function run(argv: string[]): { code: number; stdout: string; stderr: string } {
  try {
    const p = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe", timeout: 15_000 });
    return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
  } catch (e) {
    return { code: -1, stdout: "", stderr: (e as Error).message };
  }
}

function main(): number {
  const clean = process.argv.includes("--clean");
  const root = join(import.meta.dir, "..");
  const problems: string[] = [];
  const notes: string[] = [];
  const isRoot = process.getuid?.() === 0;

  // Namespaces.
  let names: string[] = [];
  try {
    names = readdirSync("/run/netns");
  } catch {
    // no namespace was ever made here
  }
  const nsLeaks = leakedNamespaces(names, alive);
  for (const n of nsLeaks) {
    const pids = isRoot ? run(["ip", "netns", "pids", n]).stdout.split(/\s+/).filter(Boolean) : [];
    problems.push(`network namespace ${n} (its run has ended)${pids.length ? `, processes inside: ${pids.join(" ")}` : ""}`);
  }

  // Processes.
  const procs = processTable();
  const self = new Set<number>();
  const byPid = new Map(procs.map((p) => [p.pid, p]));
  for (let q = byPid.get(process.pid); q && !self.has(q.pid); q = byPid.get(q.ppid)) self.add(q.pid);
  const procLeaks = leakedProcesses(procs, root, self);
  for (const p of procLeaks) problems.push(`process ${p.pid} (parent ${p.ppid}): ${p.argv.join(" ").slice(0, 200)}`);

  // The root namespace: firewall and TUN/TAP.
  if (isRoot) {
    for (const [tool, argv] of [
      ["iptables", ["iptables-save"]],
      ["nft", ["nft", "list", "ruleset"]],
    ] as const) {
      const r = run([...argv]);
      if (r.code !== 0) {
        notes.push(`${tool}: not checked (${(r.stderr.trim() || `exit ${r.code}`).split("\n")[0]})`);
        continue;
      }
      for (const l of agentRuleLines(r.stdout)) problems.push(`${tool} in the root namespace: ${l.trim()}`);
    }
    const tun = run(["ip", "-o", "link", "show", "type", "tun"]);
    if (tun.code === 0) for (const d of ourTunDevices(tun.stdout)) problems.push(`TUN/TAP device ${d} in the root namespace`);
    else notes.push(`TUN/TAP: not checked (${tun.stderr.trim().split("\n")[0]})`);
    // A master's bridged tunnel makes a bridge `agt-b<tag>` (src/tunnel/packet/names.ts).
    const br = run(["ip", "-o", "link", "show", "type", "bridge"]);
    if (br.code === 0) for (const d of ourTunDevices(br.stdout)) problems.push(`bridge ${d} in the root namespace`);
  } else {
    notes.push("not root: firewall rules, TUN/TAP devices and processes inside namespaces not checked");
  }

  if (clean) {
    for (const p of procLeaks) {
      try {
        process.kill(p.pid, "SIGKILL");
      } catch {
        // gone already
      }
    }
    for (const n of nsLeaks) {
      if (isRoot) for (const pid of run(["ip", "netns", "pids", n]).stdout.split(/\s+/).filter(Boolean)) run(["kill", "-KILL", pid]);
      const r = run(["ip", "netns", "del", n]);
      if (r.code !== 0) notes.push(`--clean: ip netns del ${n}: ${r.stderr.trim()}`);
    }
  }

  for (const n of notes) console.log(`leaks: ${n}`);
  if (problems.length === 0) {
    console.log("leaks: none (namespaces, processes, agent firewall rules, TUN/TAP)");
    return 0;
  }
  console.log(`leaks: the tests left ${problems.length} thing(s) behind${clean ? " (removed with --clean)" : " (bun scripts/leaks.ts --clean removes them)"}:`);
  for (const p of problems) console.log(`  ${p}`);
  return 1;
}

if (import.meta.main) process.exit(main());
