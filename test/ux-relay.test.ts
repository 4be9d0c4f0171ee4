// Issue 19, item 3: a relay without `revocations` reads STATE_DIR/revoked, and says loudly when
// it has no list at all. In-process: a real RelayRole on 127.0.0.1:0, a real TLS client.
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import { resolveConfig, revocationsFile } from "../src/config.ts";
import { ControlServer } from "../src/control.ts";
import { createLogger } from "../src/log.ts";
import { caPaths, initCa, issueToFile, loadBundle, revokeId, type Bundle } from "../src/pki.ts";
import { RelayRole } from "../src/roles/relay.ts";
import { waitFor } from "./helpers/cli.ts";

const tmp = mkdtempSync(join(tmpdir(), "ux-relay-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const caDir = join(tmp, "ca");
await initCa(caDir);
await issueToFile(caDir, { role: "relay", id: "relay-1", hosts: ["127.0.0.1"], out: join(tmp, "relay.bundle") });
await issueToFile(caDir, { role: "onsite", id: "site-rev", out: join(tmp, "site-rev.bundle") });
await revokeId(caDir, "site-rev");
const relayBundle = await loadBundle(join(tmp, "relay.bundle"));
const revoked = await loadBundle(join(tmp, "site-rev.bundle"));

let roles: RelayRole[] = [];
afterEach(async () => {
  for (const r of roles) await r.close();
  roles = [];
});

async function startRelay(stateDir: string, extra: Record<string, unknown> = {}): Promise<{ role: RelayRole; lines: string[] }> {
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const cfg = resolveConfig([{ origin: { kind: "flag" }, raw: { role: "relay", listen: "127.0.0.1:0", state_dir: stateDir, control: join(stateDir, "control.sock"), ...extra } }]);
  const lines: string[] = [];
  const log = createLogger({ level: "debug", write: (l) => void lines.push(l) });
  const role = new RelayRole(cfg, relayBundle, log, new ControlServer(cfg.control, log));
  roles.push(role);
  await role.start();
  return { role, lines };
}

/** Presents `b` to the relay; resolves when the relay has closed the connection or 3 s passed. */
function present(port: number, b: Bundle): Promise<void> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: "127.0.0.1", port, cert: b.certPem, key: b.keyPem, ca: b.caPem, rejectUnauthorized: false, minVersion: "TLSv1.3" });
    s.on("error", () => {});
    const t = setTimeout(() => (s.destroy(), resolve()), 3_000);
    s.once("close", () => (clearTimeout(t), resolve()));
  });
}

describe("the relay's default revocation list", () => {
  test("is STATE_DIR/revoked, and a configured one wins", () => {
    expect(revocationsFile({ state_dir: "/var/lib/agent" })).toEqual({ path: "/var/lib/agent/revoked", configured: false });
    expect(revocationsFile({ state_dir: "/srv/agent/" })).toEqual({ path: "/srv/agent/revoked", configured: false });
    expect(revocationsFile({ state_dir: "/var/lib/agent", revocations: "/etc/agent/revoked" })).toEqual({ path: "/etc/agent/revoked", configured: true });
  });

  test("without --revocations, a certificate revoked in STATE_DIR/revoked is refused", async () => {
    const state = join(tmp, "state-with-list");
    mkdirSync(state, { recursive: true, mode: 0o700 });
    copyFileSync(caPaths(caDir).revoked, join(state, "revoked"));
    const { role, lines } = await startRelay(state);
    expect(role.status()).toMatchObject({ revoked: 1, revocations_file: join(state, "revoked"), revocations_loaded: true });
    await present(role.status().port as number, revoked);
    await waitFor(() => role.server.refusals.some((r) => r.presented?.includes("site-rev") === true), 5_000, "the refusal of the revoked certificate");
    expect(role.server.refusals.find((r) => r.presented?.includes("site-rev"))!.reason).toContain("revoked");
    expect(lines.join("")).not.toContain("NO REVOCATION LIST");
  });

  test("no list at all: a loud warning at start that says how `agent pki revoke` output gets there; copied in later, it takes effect", async () => {
    const state = join(tmp, "state-without-list");
    const { role, lines } = await startRelay(state);
    const warn = lines.find((l) => l.includes("NO REVOCATION LIST"));
    expect(warn).toBeDefined();
    expect(warn).toMatch(/WARN/i);
    expect(warn).toContain(join(state, "revoked"));
    expect(warn).toContain("agent pki revoke");
    expect(warn).toContain("--revocations");
    expect(role.status()).toMatchObject({ revoked: 0, revocations_loaded: false });

    copyFileSync(caPaths(caDir).revoked, join(state, "revoked"));
    await waitFor(() => role.status().revoked === 1, 5_000, "the relay to read the copied list");
    await present(role.status().port as number, revoked);
    await waitFor(() => role.server.refusals.some((r) => r.presented?.includes("site-rev") === true), 5_000, "the refusal of the revoked certificate");
    // The warning is not repeated at every poll.
    expect(lines.filter((l) => l.includes("NO REVOCATION LIST")).length).toBe(1);
    // Removed again: said once, and the list loaded before stays in force.
    rmSync(join(state, "revoked"));
    await waitFor(() => lines.some((l) => l.includes("was removed; keeping the 1 revoked certificate(s)")), 5_000, "the relay to notice the removal");
    expect(role.status()).toMatchObject({ revoked: 1 });
  });

  test("a configured list that is missing still stops the start", async () => {
    const state = join(tmp, "state-configured-missing");
    await expect(startRelay(state, { revocations: join(tmp, "nowhere", "revoked") })).rejects.toThrow(/cannot read revocation list/);
  });
});
