// A real OpenSSH server (Debian's /usr/sbin/sshd) for tests and benchmarks: its own config,
// host key and one authorized client key in a temp dir, key authentication only, listening
// on 127.0.0.1 at a port the kernel picked. `ssh` through a port forward to it works too:
// the host key is pinned under an alias, not under host:port.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Child, freePort, processTree, run, spawnChild, STOP_GRACE_MS, waitForListen } from "./proc.ts";

export const SSHD = "/usr/sbin/sshd";
/** The name the host key is pinned under in known_hosts, whatever host:port reaches it. */
export const HOST_KEY_ALIAS = "agent-test-sshd";
const START_MS = 10_000;
/** Another process may take the port between freePort() and sshd's bind: try a few. */
const BIND_ATTEMPTS = 3;

export interface Sshd extends AsyncDisposable {
  port: number;
  /** The listening sshd; it forks one process tree per connection (see proc.treeUsage). */
  pid: number;
  dir: string;
  user: string;
  clientKeyPath: string;
  knownHostsPath: string;
  /**
   * argv for `ssh` to this server through 127.0.0.1:port (default: sshd's own port), with
   * `options` (e.g. ["-N", "-R", "..."]) before the destination; append a command if any.
   */
  sshArgs(port?: number, options?: string[]): string[];
  /** sshd's log so far (it runs with -e: log to stderr). */
  log(): string;
  stop(): Promise<void>;
}

async function keygen(file: string, comment: string): Promise<void> {
  const r = await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file], { timeoutMs: 10_000 });
  if (r.code !== 0) throw new Error(`ssh-keygen for ${file} failed (exit ${r.code}): ${r.stderr.trim()}`);
}

const signal = (pid: number, sig: NodeJS.Signals) => {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false; // gone
  }
};

/** SIGTERM, wait until they are gone, SIGKILL what is left after STOP_GRACE_MS. */
async function endPids(pids: number[]): Promise<void> {
  let left = pids.filter((p) => signal(p, "SIGTERM"));
  const until = Date.now() + STOP_GRACE_MS;
  while (left.length && Date.now() < until) {
    await Bun.sleep(20);
    left = left.filter((p) => existsSync(`/proc/${p}`) && !isZombie(p));
  }
  for (const p of left) signal(p, "SIGKILL");
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

/** The login name of this uid (Bun's os.userInfo() says "unknown" when $USER is unset). */
async function currentUser(): Promise<string> {
  const r = await run(["id", "-un"], { timeoutMs: 5_000 });
  const name = r.stdout.trim();
  if (r.code !== 0 || !name) throw new Error(`id -un failed: ${r.stderr.trim()}`);
  return name;
}

export function sshdConfig(o: { port: number; hostKey: string; authorizedKeys: string; pidFile: string; extra?: string[] }): string {
  return [
    `Port ${o.port}`,
    "ListenAddress 127.0.0.1",
    `HostKey ${o.hostKey}`,
    `PidFile ${o.pidFile}`,
    `AuthorizedKeysFile ${o.authorizedKeys}`,
    "PermitRootLogin prohibit-password",
    "PubkeyAuthentication yes",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "UsePAM no",
    // The temp dir is not owned the way StrictModes wants (root, not group/world writable).
    "StrictModes no",
    "AllowTcpForwarding yes",
    "GatewayPorts no",
    "X11Forwarding no",
    "AllowAgentForwarding no",
    "PrintMotd no",
    "PermitUserEnvironment no",
    // Benchmarks and stress tests open many connections at once.
    "MaxStartups 100:30:200",
    "MaxSessions 100",
    "LogLevel INFO",
    ...(o.extra ?? []),
    "",
  ].join("\n");
}

/** Starts sshd; `extraConfig` lines are appended to its config (e.g. "ClientAliveInterval 5"). */
export async function startSshd(opts: { extraConfig?: string[] } = {}): Promise<Sshd> {
  if (!existsSync(SSHD)) throw new Error(`${SSHD} is missing: install Debian's openssh-server (scripts/deps.sh)`);
  // Privilege separation directory; Debian's service unit creates it, we do not run that.
  mkdirSync("/run/sshd", { recursive: true, mode: 0o755 });
  const dir = mkdtempSync(join(tmpdir(), "agent-sshd-"));
  try {
    const hostKey = join(dir, "ssh_host_ed25519_key");
    const clientKeyPath = join(dir, "client_ed25519");
    await Promise.all([keygen(hostKey, "agent test sshd host key"), keygen(clientKeyPath, "agent test client")]);
    const authorizedKeys = join(dir, "authorized_keys");
    writeFileSync(authorizedKeys, readFileSync(`${clientKeyPath}.pub`), { mode: 0o600 });
    const knownHostsPath = join(dir, "known_hosts");
    const [type, key] = readFileSync(`${hostKey}.pub`, "utf8").trim().split(/\s+/);
    writeFileSync(knownHostsPath, `${HOST_KEY_ALIAS} ${type} ${key}\n`);
    const user = await currentUser();
    const config = join(dir, "sshd_config");

    let child: Child | undefined;
    let port = 0;
    let lastError: unknown;
    for (let attempt = 0; attempt < BIND_ATTEMPTS && !child; attempt++) {
      port = await freePort();
      writeFileSync(config, sshdConfig({ port, hostKey, authorizedKeys, pidFile: join(dir, "sshd.pid"), extra: opts.extraConfig }));
      const check = await run([SSHD, "-t", "-f", config], { timeoutMs: 10_000 });
      if (check.code !== 0) throw new Error(`sshd rejects its config ${config}: ${check.stderr.trim()}`);
      const c = spawnChild("sshd", [SSHD, "-D", "-e", "-f", config]);
      try {
        await waitForListen(port, START_MS, c, { owned: true });
        child = c;
      } catch (e) {
        lastError = e;
        await c.stop();
        if (!/Address already in use|Bind to port/.test(c.output())) break;
      }
    }
    if (!child) throw new Error(`sshd did not start`, { cause: lastError });
    const sshd = child;

    const sshArgs = (p = port, options: string[] = []) => [
      "ssh",
      "-F", "/dev/null", // the user's ~/.ssh/config must not change what a test does
      "-i", clientKeyPath,
      "-o", "IdentitiesOnly=yes",
      "-o", `UserKnownHostsFile=${knownHostsPath}`,
      "-o", "GlobalKnownHostsFile=/dev/null",
      "-o", "StrictHostKeyChecking=yes",
      "-o", `HostKeyAlias=${HOST_KEY_ALIAS}`,
      "-o", "BatchMode=yes",
      "-o", "ConnectTimeout=10",
      "-o", "LogLevel=ERROR",
      "-p", String(p),
      ...options,
      `${user}@127.0.0.1`,
    ];
    let stopped: Promise<void> | undefined;
    const stop = () =>
      (stopped ??= (async () => {
        // SIGTERM to the listener does not end the per-connection processes it forked (they
        // live as long as their client): end them too, by pid, so nothing outlives the test.
        const forked = sshd.running ? processTree(sshd.pid).filter((p) => p !== sshd.pid) : [];
        await sshd.stop();
        await endPids(forked);
        rmSync(dir, { recursive: true, force: true });
      })());
    return {
      port,
      pid: sshd.pid,
      dir,
      user,
      clientKeyPath,
      knownHostsPath,
      sshArgs,
      log: () => sshd.output(),
      stop,
      [Symbol.asyncDispose]: stop,
    };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
