// A per-role release executable for this host (linux-x64), built into a temp dir: the role
// is baked in, a flag still overrides it, and the sums file verifies with sha256sum.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import pkg from "../package.json" with { type: "json" };
import { ROOT, tempDir } from "./helpers/cli.ts";

const tmp = tempDir("release");
const exe = join(tmp.path, "agent-onsite-linux-x64");
afterAll(() => tmp[Symbol.dispose]());

async function run(argv: string[], cwd = ROOT) {
  const p = Bun.spawn(argv, { cwd, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { stdout, stderr, code };
}

beforeAll(async () => {
  const r = await run([process.execPath, "build/release.ts", "--target", "linux-x64", "--role", "onsite", "--out", tmp.path]);
  if (r.code !== 0) throw new Error(`release build failed: ${r.stderr}`);
}, 120_000);

test.skipIf(process.arch !== "x64")("the onsite executable starts as onsite unless told otherwise (runs on x64 hosts only: it is built for linux-x64)", async () => {
  const v = await run([exe, "--version"]);
  expect(v.code).toBe(0);
  expect(v.stdout).toContain(`agent ${pkg.version}`);
  expect(v.stdout).toContain("target linux-x64, role onsite");

  const bare = await run([exe]);
  expect(bare.code).toBe(2);
  expect(bare.stderr).toContain("required for --role onsite");

  const relay = await run([exe, "--role", "relay"]);
  expect(relay.code).toBe(2);
  expect(relay.stderr).toContain("required for --role relay");
});

test("SHA256SUMS and SIZES.txt cover what was built", async () => {
  const sums = await Bun.file(join(tmp.path, "SHA256SUMS")).text();
  expect(sums).toMatch(/^[0-9a-f]{64} {2}agent-onsite-linux-x64$/m);
  const check = await run(["sha256sum", "-c", "SHA256SUMS"], tmp.path);
  expect(check.code).toBe(0);
  expect(check.stdout).toContain("agent-onsite-linux-x64: OK");
  expect(await Bun.file(join(tmp.path, "SIZES.txt")).text()).toContain("agent-onsite-linux-x64");
});
