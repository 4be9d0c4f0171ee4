// A per-role release executable for this host (linux-x64 or linux-arm64, glibc or musl: the
// target this machine can run), built into a temp dir: the role is baked in, a flag still
// overrides it, and the sums file verifies with sha256sum.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import pkg from "../package.json" with { type: "json" };
import { ROOT, tempDir } from "./helpers/cli.ts";

/** The release target whose executables run on this host, or undefined (no such target). */
function hostTarget(): string | undefined {
  const arch = ({ x64: "x64", arm64: "arm64" } as Record<string, string>)[process.arch];
  if (process.platform !== "linux" || !arch) return undefined;
  const musl = existsSync("/lib") && readdirSync("/lib").some((f) => f.startsWith("ld-musl-"));
  return `linux-${arch}${musl ? "-musl" : ""}`;
}
const TARGET = hostTarget();
// Every host the suite supports has a target (targets/targets.toml); in CI a host without one
// is a broken runner, not a skip.
if (!TARGET) {
  const msg = `release-run.test.ts: no release target runs on ${process.platform}/${process.arch} (targets: linux x64/arm64, glibc/musl)`;
  if (process.env.CI) throw new Error(`${msg}; in CI this is a failure, not a skip`);
  console.warn(`skipping: ${msg}`);
}

const tmp = tempDir("release");
const ARTIFACT = `agent-onsite-${TARGET}`;
const exe = join(tmp.path, ARTIFACT);
afterAll(() => tmp[Symbol.dispose]());

async function run(argv: string[], cwd = ROOT) {
  const p = Bun.spawn(argv, { cwd, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { stdout, stderr, code };
}

beforeAll(async () => {
  if (!TARGET) return;
  const r = await run([process.execPath, "build/release.ts", "--target", TARGET, "--role", "onsite", "--out", tmp.path]);
  if (r.code !== 0) throw new Error(`release build failed: ${r.stderr}`);
}, 120_000);

test.skipIf(!TARGET)(`the onsite executable (${TARGET}, this host's target) starts as onsite unless told otherwise`, async () => {
  const v = await run([exe, "--version"]);
  expect(v.code).toBe(0);
  expect(v.stdout).toContain(`agent ${pkg.version}`);
  expect(v.stdout).toContain(`target ${TARGET}, role onsite`);

  const bare = await run([exe]);
  expect(bare.code).toBe(2);
  expect(bare.stderr).toContain("required for --role onsite");

  const relay = await run([exe, "--role", "relay"]);
  expect(relay.code).toBe(2);
  expect(relay.stderr).toContain("required for --role relay");
});

test.skipIf(!TARGET)("SHA256SUMS and SIZES.txt cover what was built", async () => {
  const sums = await Bun.file(join(tmp.path, "SHA256SUMS")).text();
  expect(sums).toMatch(new RegExp(`^[0-9a-f]{64} {2}${ARTIFACT}$`, "m"));
  const check = await run(["sha256sum", "-c", "SHA256SUMS"], tmp.path);
  expect(check.code).toBe(0);
  expect(check.stdout).toContain(`${ARTIFACT}: OK`);
  expect(await Bun.file(join(tmp.path, "SIZES.txt")).text()).toContain(ARTIFACT);
});
