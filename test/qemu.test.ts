// The arm64 glibc release artifact (Raspberry Pi OS 64-bit) run under qemu-user on an x86_64
// host: --version, a CA and a device bundle made by the arm64 build and checked by openssl,
// and `doctor --json`. Builds dist/agent-linux-arm64 first when it is missing or older than
// the sources. Needs qemu-user-static and libc6-arm64-cross (Debian); skipped without them.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pkg from "../package.json" with { type: "json" };
import { parseTargets } from "../build/matrix.ts";

const REPO = join(import.meta.dir, "..");
const TARGET = "linux-arm64";
const ARTIFACT = join(REPO, "dist", `agent-${TARGET}`);
const BUILD_TIMEOUT_MS = 300_000;
// Bun under qemu-user starts in seconds, not milliseconds: every JIT tier is emulated.
const RUN_TIMEOUT_MS = 60_000;

const spec = parseTargets(Bun.TOML.parse(await Bun.file(join(REPO, "targets/targets.toml")).text())).find((t) => t.name === TARGET)!;
const qemu = spec.qemu ? Bun.which(spec.qemu) : null;
const sysroot = spec.sysroot ?? "";
const missing = [!qemu && `${spec.qemu} (apt-get install qemu-user-static)`, !existsSync(join(sysroot, "lib")) && `${sysroot} (apt-get install libc6-arm64-cross)`].filter(Boolean);
// CI installs both (scripts/deps.sh) and must never skip this: there it is a failure.
if (missing.length > 0 && process.env.CI) throw new Error(`qemu.test.ts cannot run in CI: missing ${missing.join(", ")}`);
if (missing.length > 0) console.warn(`qemu.test.ts skipped: missing ${missing.join(", ")}`);

/** Newest modification time among the files that go into the executable. */
function newestSource(): number {
  let newest = 0;
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, entry.name);
      if (entry.isDirectory()) walk(p);
      else newest = Math.max(newest, statSync(p).mtimeMs);
    }
  };
  walk(join(REPO, "src"));
  for (const f of ["package.json", "build/release.ts", "build/matrix.ts", "targets/targets.toml"]) newest = Math.max(newest, statSync(join(REPO, f)).mtimeMs);
  return newest;
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(argv: string[], timeoutMs: number, cwd = REPO): Promise<Run> {
  const proc = Bun.spawn(argv, { cwd, stdin: "ignore", stdout: "pipe", stderr: "pipe", timeout: timeoutMs, killSignal: "SIGKILL" });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

/** The arm64 executable under qemu, with the arm64 glibc as its library root. */
function agent(...args: string[]): Promise<Run> {
  return run([qemu!, "-L", sysroot, ARTIFACT, ...args], RUN_TIMEOUT_MS);
}

const explain = (r: Run) => `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;

describe.skipIf(missing.length > 0)(`${TARGET} artifact under ${spec.qemu}`, () => {
  let tmp = "";

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), "agent-qemu-"));
    if (existsSync(ARTIFACT) && statSync(ARTIFACT).mtimeMs >= newestSource()) return;
    const r = await run([process.execPath, "build/release.ts", "--target", TARGET, "--role", "generic"], BUILD_TIMEOUT_MS);
    if (r.code !== 0) throw new Error(`building ${ARTIFACT} failed: ${explain(r)}`);
  }, BUILD_TIMEOUT_MS + 10_000);

  afterAll(() => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  test("is an aarch64 ELF executable", async () => {
    const head = new Uint8Array(await Bun.file(ARTIFACT).slice(0, 20).arrayBuffer());
    expect([...head.slice(0, 4)]).toEqual([0x7f, 0x45, 0x4c, 0x46]);
    expect(head[18]! | (head[19]! << 8)).toBe(183); // e_machine EM_AARCH64
    expect(statSync(ARTIFACT).mode & 0o111).not.toBe(0);
  });

  test("--version names the package version and the linux-arm64 target", async () => {
    const r = await agent("--version");
    expect(r.code, explain(r)).toBe(0);
    expect(r.stdout).toContain(`agent ${pkg.version}`);
    expect(r.stdout).toContain(`target ${TARGET}`);
    // The generic executable has no baked-in role.
    expect(r.stdout).not.toContain(", role ");
  }, RUN_TIMEOUT_MS);

  test("pki init and issue write a 0600 bundle whose device certificate openssl verifies against the CA", async () => {
    const ca = join(tmp, "ca");
    const bundle = join(tmp, "q.bundle");
    const init = await agent("pki", "init", "--dir", ca);
    expect(init.code, explain(init)).toBe(0);
    const issue = await agent("pki", "issue", "--dir", ca, "--role", "onsite", "--id", "qemu-1", "--out", bundle);
    expect(issue.code, explain(issue)).toBe(0);

    expect(existsSync(bundle)).toBe(true);
    expect((statSync(bundle).mode & 0o777).toString(8)).toBe("600");

    const text = await Bun.file(bundle).text();
    const device = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n?/.exec(text)?.[0];
    expect(device, "a PEM certificate in the bundle").toBeDefined();
    const deviceFile = join(tmp, "device.pem");
    await Bun.write(deviceFile, device!.endsWith("\n") ? device! : `${device}\n`);
    const caFile = join(ca, "ca.crt");
    expect(existsSync(caFile), `${caFile} written by pki init`).toBe(true);
    expect((await Bun.file(caFile).text()).trim()).not.toBe(device!.trim());

    const verify = await run(["openssl", "verify", "-CAfile", caFile, deviceFile], RUN_TIMEOUT_MS);
    expect(verify.code, explain(verify)).toBe(0);
    expect(verify.stdout).toContain(": OK");
    const subject = await run(["openssl", "x509", "-noout", "-subject", "-in", deviceFile], RUN_TIMEOUT_MS);
    expect(subject.stdout).toContain("qemu-1");
  }, RUN_TIMEOUT_MS * 3);

  test("doctor --json prints a report with an array of checks", async () => {
    // --state-dir keeps doctor (which creates the state dir) out of /var/lib/agent.
    const r = await agent("doctor", "--json", "--state-dir", join(tmp, "state"));
    // 0: everything required is there; 1: something is missing on this host. Both are reports.
    expect([0, 1], explain(r)).toContain(r.code);
    const report = JSON.parse(r.stdout) as { checks?: unknown };
    expect(Array.isArray(report.checks)).toBe(true);
    expect((report.checks as unknown[]).length).toBeGreaterThan(0);
  }, RUN_TIMEOUT_MS);
});
