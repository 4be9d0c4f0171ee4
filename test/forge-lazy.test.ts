// node-forge costs 11-15 MiB of RSS just by being loaded (docs/performance.md, Footprint), so
// a running daemon must not load it: the role modules, src/transport/tls.ts and everything a
// daemon does with certificates at start and per connection (load its bundle, judge a peer's
// certificate, check revocation, load a relay's enroller, make a device's enrollment request)
// run on node:crypto. Each case spawns a fresh Bun, does that, and lists the node-forge files
// in its module registry (require.cache holds ESM and CommonJS modules alike). A positive
// control proves the probe sees forge when it is loaded: signing a certificate loads it.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCa, formatBundle, issueCertificate, parseCa } from "../src/pki.ts";
import { formatEnroller, issueEnroller } from "../src/pki-enroll.ts";
import { BUN } from "./helpers/cli.ts";

const SRC = join(import.meta.dir, "..", "src");
const dir = mkdtempSync(join(tmpdir(), "agent-forge-lazy-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const ca = createCa({ name: "lazy CA" });
const caMat = parseCa(ca.certPem, ca.keyPem);
const dev = issueCertificate(caMat, { role: "onsite", id: "site-1" });
const bundle = join(dir, "site-1.bundle");
writeFileSync(bundle, formatBundle({ role: "onsite", id: "site-1", certPem: dev.certPem, keyPem: dev.keyPem, caPem: ca.certPem }), { mode: 0o600 });
const en = issueEnroller(caMat, { id: "enroll-1" });
const enroller = join(dir, "e.enroller");
writeFileSync(enroller, formatEnroller("enroll-1", en.certPem, en.keyPem, ca.certPem), { mode: 0o600 });

/** Runs `body` (after `imports`) in a fresh Bun; returns the node-forge files it loaded and what it printed. */
function probe(imports: string, body: string): { forge: string[]; out: string } {
  const script = join(dir, `probe-${Math.random().toString(36).slice(2)}.ts`);
  writeFileSync(
    script,
    `${imports}\n${body}\nconst forge = Object.keys(require.cache).filter((k) => k.includes("/node_modules/node-forge/"));\nconsole.log(JSON.stringify({ forge }));\n`,
  );
  const r = Bun.spawnSync([BUN, script], { stderr: "pipe", stdout: "pipe" });
  const out = r.stdout.toString();
  if (r.exitCode !== 0) throw new Error(`probe failed (${r.exitCode}): ${r.stderr.toString()}`);
  const last = out.trim().split("\n").pop()!;
  return { forge: JSON.parse(last).forge as string[], out };
}

describe("node-forge is not loaded by a running daemon", () => {
  for (const mod of ["roles/onsite.ts", "roles/master.ts", "roles/relay.ts", "roles/daemon.ts", "roles/enroll.ts", "transport/tls.ts", "transport/auth.ts", "pki.ts", "pki-enroll.ts"]) {
    test(`importing src/${mod}`, () => {
      expect(probe(`import * as m from ${JSON.stringify(join(SRC, mod))};`, "if (Object.keys(m).length === 0) throw new Error('empty module');").forge).toEqual([]);
    });
  }

  test("a daemon's certificate work: its bundle, a peer's certificate judged, revocations, the relay's enroller, an enrollment request", () => {
    const r = probe(
      `import { loadBundle, parseRevocations, REVOCATIONS_HEADER, fingerprintSha256 } from ${JSON.stringify(join(SRC, "pki.ts"))};
import { verifyPeer } from ${JSON.stringify(join(SRC, "transport/auth.ts"))};
import { loadEnroller, createEnrollmentCsr, generateDeviceKey } from ${JSON.stringify(join(SRC, "pki-enroll.ts"))};
import { X509Certificate } from "node:crypto";`,
      `const b = await loadBundle(${JSON.stringify(bundle)});
const der = new Uint8Array(new X509Certificate(b.certPem).raw);
const revoked = parseRevocations(REVOCATIONS_HEADER + "\\n" + b.serial + " site-1 2026-01-01T00:00:00Z\\n");
const v = verifyPeer({ handshakeOk: true, authorized: true, authorizationError: null, peerDer: der, protocol: "TLSv1.3" }, { revocations: revoked, roles: ["onsite"] }, new Date());
const e = await loadEnroller(${JSON.stringify(enroller)});
const csr = createEnrollmentCsr(generateDeviceKey(), "site-");
console.log(JSON.stringify({ id: b.id, verdict: v.ok ? "ok" : v.reason, enroller: e.id, fp: fingerprintSha256(b.caPem).length, csr: csr.id }));`,
    );
    const said = JSON.parse(r.out.trim().split("\n")[0]!);
    expect(said.id).toBe("site-1");
    expect(said.verdict).toBe(`certificate ${dev.serial} is revoked (since 2026-01-01T00:00:00.000Z)`);
    expect(said.enroller).toBe("enroll-1");
    expect(said.fp).toBe(95);
    expect(said.csr).toMatch(/^site-[0-9a-f]{16}$/);
    expect(r.forge).toEqual([]);
  });

  test("control: signing a certificate does load node-forge, and the probe sees it", () => {
    const r = probe(`import { createCa } from ${JSON.stringify(join(SRC, "pki.ts"))};`, `createCa({ name: "control" });`);
    expect(r.forge.length).toBeGreaterThan(0);
  });
});
