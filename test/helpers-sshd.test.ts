// test/helpers/sshd.ts against the real ssh client: key login works, the host key is
// pinned (also through a forwarded port), other keys are refused, stop() leaves nothing.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort, listeningPorts, processTree, programsPresent, run, spawnChild, waitForListen } from "./helpers/proc.ts";
import { SSHD, startSshd, type Sshd } from "./helpers/sshd.ts";
import { waitFor } from "./helpers/wait.ts";

const present = programsPresent("helpers-sshd.test.ts", [SSHD, "ssh", "ssh-keygen"]);

describe.skipIf(!present)("startSshd", () => {
  let sshd: Sshd;
  beforeAll(async () => {
    sshd = await startSshd();
  }, 30_000);
  afterAll(async () => {
    await sshd?.stop();
  });

  test("runs a command over ssh with the client key", async () => {
    const token = `hello-${crypto.randomUUID()}`;
    const r = await run([...sshd.sshArgs(), "echo", token], { timeoutMs: 20_000 });
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe(`${token}\n`);
    expect(r.code).toBe(0);
  }, 30_000);

  test("refuses a key that is not authorized", async () => {
    const other = join(sshd.dir, "stranger");
    expect((await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other])).code).toBe(0);
    const argv = sshd.sshArgs().map((a) => (a === sshd.clientKeyPath ? other : a));
    const r = await run([...argv, "true"], { timeoutMs: 20_000 });
    expect(r.code).toBe(255);
    expect(r.stderr).toContain("Permission denied (publickey)");
  }, 30_000);

  test("the client refuses a server whose host key is not the pinned one", async () => {
    const wrong = join(sshd.dir, "wrong_known_hosts");
    writeFileSync(wrong, "agent-test-sshd ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHl0b3Rhbmx5IG5vdCB0aGUgcmlnaHQga2V5IGF0IGFsbA==\n");
    const argv = sshd.sshArgs().map((a) => (a === `UserKnownHostsFile=${sshd.knownHostsPath}` ? `UserKnownHostsFile=${wrong}` : a));
    const r = await run([...argv, "true"], { timeoutMs: 20_000 });
    expect(r.code).toBe(255);
    expect(r.stderr).toMatch(/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED/);
  }, 30_000);

  test("works through a forwarded port (ssh -L to itself), host key still verified", async () => {
    const lport = await freePort();
    const tunnel = spawnChild("ssh -L", sshd.sshArgs(sshd.port, ["-N", "-o", "ExitOnForwardFailure=yes", "-L", `127.0.0.1:${lport}:127.0.0.1:${sshd.port}`]));
    try {
      await waitForListen(lport, 15_000, tunnel);
      const r = await run([...sshd.sshArgs(lport), "echo", "via-forward"], { timeoutMs: 20_000 });
      expect(r.stdout).toBe("via-forward\n");
      expect(r.code).toBe(0);
      // sshd serves each connection in processes it forks: the tree holds them.
      expect(processTree(sshd.pid).length).toBeGreaterThan(1);
    } finally {
      await tunnel.stop();
    }
  }, 40_000);
});

test.skipIf(!present)("stop() ends sshd and its forked connection processes and removes its dir", async () => {
  const sshd = await startSshd();
  const tunnel = spawnChild("ssh -N", sshd.sshArgs(sshd.port, ["-N"]));
  try {
    // Wait until the tunnel is logged in and its processes live under the listener.
    await waitFor(() => sshd.log().includes("Accepted publickey"), 15_000, "sshd to log the tunnel's login", { every: 50 }).catch(() => {});
    expect(sshd.log()).toContain("Accepted publickey");
    const forked = processTree(sshd.pid).filter((p) => p !== sshd.pid);
    expect(forked.length).toBeGreaterThan(0);
    await sshd.stop();
    await sshd.stop();
    await waitFor(() => !forked.some((p) => existsSync(`/proc/${p}`)), 5_000, "sshd's forked processes to end", { every: 50 }).catch(() => {});
    expect(forked.filter((p) => existsSync(`/proc/${p}`))).toEqual([]);
    expect(existsSync(`/proc/${sshd.pid}`)).toBe(false);
    expect(listeningPorts().has(sshd.port)).toBe(false);
    expect(existsSync(sshd.dir)).toBe(false);
  } finally {
    await tunnel.stop();
    await sshd.stop();
  }
}, 40_000);
