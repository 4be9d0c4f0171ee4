// Real processes on 127.0.0.1 (test/helpers/fleet.ts): the relay's inventory and refusals
// survive a restart, by SIGTERM and by kill -9: offline devices, their history and the
// refusals are still listed. A revoked device hears GOAWAY REVOKED at the handshake and then
// waits the backoff's maximum (30 s) instead of redialling every few seconds.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { holdsFor, waitFor } from "./helpers/wait.ts";
import { caPaths } from "../src/pki.ts";
import { agent } from "./helpers/cli.ts";
import { retryDelay } from "../src/transport/client.ts";
import { Timing } from "../src/transport/policy.ts";
import type { DeviceRow } from "../src/tunnel/relay/inventory.ts";
import type { RefusalGroup } from "../src/tunnel/relay/refusals.ts";

test.each([
  [1, false, 0.999, 499],
  [4, false, 0.999, 3996],
  [1, true, 0, Timing.backoffCap],
  [1, true, 0.999, Timing.backoffCap],
])("retryDelay(attempt %p, revoked %p, random %p) = %p", (attempt, revoked, r, expected) => expect(retryDelay(attempt, revoked, () => r)).toBe(expected));

describe("the relay's inventory and refusals across restarts", () => {
  let fleet: Fleet;
  let relay: Daemon;
  const devices = async (args: string[] = ["--all"]) => fleet.json<DeviceRow[]>(relay, ["devices", ...args]);
  const refusals = async () => fleet.json<RefusalGroup[]>(relay, ["refusals"]);
  const revokedGroup = async () => (await refusals()).find((g) => g.presented === "site-rev (onsite)");

  beforeAll(async () => {
    fleet = await Fleet.create();
    await fleet.issue("onsite", "site-rev");
    const r = await agent(["pki", "revoke", "--dir", fleet.ca, "--id", "site-rev"]);
    if (r.code !== 0) throw new Error(r.stderr);
    relay = await fleet.startRelay("relay-1", ["--revocations", caPaths(fleet.ca).revoked]);
  }, 30_000);
  afterAll(() => fleet?.close(), 30_000);

  test("a revoked device is told why and backs off to the maximum: one refusal, not one every few seconds", async () => {
    const rev = await fleet.startOnsite("site-rev");
    await waitFor(revokedGroup, 15_000, "the revoked device's refusal");
    await waitFor(() => rev.log().includes("the relay revoked this device's certificate (or it expired): dialling again only every 30 s"), 10_000, "the device's log saying it backs off", { detail: () => rev.log().slice(-1500) });
    const st = (await fleet.status(rev)).onsite as { last_error: string; state: string };
    expect(st.last_error).toMatch(/^the relay refused us: certificate \S+ is revoked/);
    expect(st.state).toBe("waiting");
    // With the ordinary backoff (0.5 s, 1 s, 2 s … with jitter) it would be refused ~3 more times in 6 s.
    await holdsFor(async () => ((await revokedGroup())?.count ?? 0) > 1, 6_000, "a second dial of the revoked device within 6 s");
    expect((await revokedGroup())!.codes).toEqual({ revoked: 1 });
    await fleet.stop(rev);
  }, 40_000);

  test("SIGTERM and kill -9 of the relay: offline devices, their history and the refusals are still listed", async () => {
    const site = await fleet.startOnsite("site-1");
    await waitFor(async () => (await devices()).some((d) => d.id === "site-1" && d.online), 15_000, "site-1 online");
    await fleet.stop(site);
    await waitFor(async () => (await devices()).some((d) => d.id === "site-1" && !d.online), 15_000, "site-1 offline");
    const before = (await devices()).find((d) => d.id === "site-1")!;
    expect(before.serial).toMatch(/^[0-9a-f]+$/);
    expect(before.cert_expires).not.toBeNull();

    for (const how of ["SIGTERM", "SIGKILL"] as const) {
      await fleet.stop(relay, how);
      relay = await fleet.restart(relay);
      // After kill -9 the old socket file is still there: ready is when the new daemon answers.
      await waitFor(async () => (await fleet.cli(relay, ["status"])).code === 0, 15_000, `the relay answering after ${how}`);
      const all = await devices();
      const d = all.find((x) => x.id === "site-1");
      expect(d, `site-1 after ${how}`).toBeDefined();
      expect(d!).toMatchObject({ online: false, state: "offline", first_seen: before.first_seen, serial: before.serial, cert_expires: before.cert_expires, address: before.address });
      // Not heard since this start: the default listing leaves it out, --offline and --all show it.
      expect((await devices([])).some((x) => x.id === "site-1")).toBe(false);
      expect((await devices(["--offline"])).some((x) => x.id === "site-1")).toBe(true);
      const h = await fleet.json<{ kind: string; reason: string }[]>(relay, ["devices", "history", "site-1"]);
      expect(h.map((e) => e.kind)).toEqual(["connect", "disconnect"]);
      expect(h[1]!.reason).toContain("site-1 is shutting down");
      const g = await revokedGroup();
      expect(g, `the revoked device's refusal after ${how}`).toBeDefined();
      expect(g!.count).toBe(1);
      expect(g!.address).toBe("127.0.0.1");
    }
    // The table and the plain history, as people read them.
    const table = await fleet.cli(relay, ["devices", "--all"]);
    expect(table.stdout).toMatch(/^site-1\s+offline\s/m);
    const hist = await fleet.cli(relay, ["devices", "history", "site-1"]);
    expect(hist.stdout).toMatch(/\bdisconnect\s+127\.0\.0\.1\s+.*shutting down/);
    const ref = await fleet.cli(relay, ["refusals", "--since", "1h"]);
    expect(ref.stdout).toMatch(/site-rev \(onsite\)\s+127\.0\.0\.1\s+1\s+revoked 1/);

    // Forget: gone from the listing and its history, also after a restart.
    expect((await fleet.cli(relay, ["devices", "forget", "site-1"])).stdout).toBe("forgot site-1 and its history\n");
    const again = await fleet.cli(relay, ["devices", "history", "site-1"]);
    expect(again.code).toBe(4);
    expect(again.stderr).toContain('no device "site-1" in the inventory');
    relay = await fleet.restart(relay);
    expect((await devices()).some((x) => x.id === "site-1")).toBe(false);
  }, 60_000);
});
