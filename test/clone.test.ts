// A cloned SD card (issue 17 §6): two live devices with one certificate used to evict each
// other for ever. The relay notices the flapping, keeps the connection it has, refuses the
// newcomer with GOAWAY DUPLICATE (both sides log why; the device backs off to the maximum)
// and marks the id duplicated in `agent devices`.
import { afterAll, describe, expect, test } from "bun:test";
import { ClonePolicy, CloneWatch, flapping, recentTimes } from "../src/tunnel/relay/clone.ts";
import { retryDelay } from "../src/transport/client.ts";
import { Timing } from "../src/transport/policy.ts";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { holdsFor, waitFor } from "./helpers/wait.ts";

const MIN = 60_000;

describe("flapping (pure)", () => {
  test.each([
    ["no replacement", [], 0, false],
    ["three within the window", [0, 1000, 2000], 3000, false],
    ["four within the window", [0, 1000, 2000, 3000], 3000, true],
    ["four, the first just outside", [0, 1000, 2000, 3000], 5 * MIN, false],
    ["four, all just inside", [1, 1000, 2000, 3000], 5 * MIN, true],
    ["four spread over an hour", [0, 20 * MIN, 40 * MIN, 60 * MIN], 60 * MIN, false],
    ["times in the future do not count", [0, 1000, 2000, 9 * MIN], 3000, false],
  ] as const)("%s", (_name, times, now, want) => {
    expect(flapping(times, now)).toBe(want);
  });

  test("recentTimes keeps only the window", () => {
    expect(recentTimes([0, MIN, 2 * MIN, 6 * MIN], 6 * MIN)).toEqual([2 * MIN, 6 * MIN]);
  });
});

describe("CloneWatch", () => {
  test("a device redialling replaces itself; two devices flapping: the fourth newcomer is refused, then every one while they keep coming", () => {
    const w = new CloneWatch();
    expect(w.arrive("site-1", "10.0.0.1", null, 0)).toEqual({ action: "accept" });
    // Replacements, alternating addresses as two clones would.
    expect(w.arrive("site-1", "10.0.0.2", "10.0.0.1", 1000).action).toBe("replace");
    expect(w.arrive("site-1", "10.0.0.1", "10.0.0.2", 2000).action).toBe("replace");
    expect(w.arrive("site-1", "10.0.0.2", "10.0.0.1", 3000).action).toBe("replace");
    const v = w.arrive("site-1", "10.0.0.1", "10.0.0.2", 4000);
    expect(v.action).toBe("refuse");
    if (v.action !== "refuse") throw new Error("unreachable");
    expect(v.first).toBe(true);
    expect(v.mark).toEqual({ since: 4000, last: 4000, refused: 1, addresses: ["10.0.0.2", "10.0.0.1"] });
    expect(v.reason).toBe("another device is connected with the certificate of site-1 (from 10.0.0.2): two devices share one certificate (a cloned SD card?); the connection that was there first stays, issue this one its own bundle (agent pki issue)");
    // Marked: the next newcomer is refused at once, even much later (within the hold).
    const again = w.arrive("site-1", "10.0.0.1", "10.0.0.2", 4000 + ClonePolicy.window + 1000);
    expect(again.action === "refuse" && !again.first && again.mark.refused === 2).toBe(true);
    // Other ids are not affected.
    expect(w.arrive("site-2", "10.0.0.9", "10.0.0.8", 5000).action).toBe("replace");
    expect(w.mark("site-2", 5000)).toBeNull();
  });

  test("one device process redialling (the same HELLO instance) replaces itself however often: a device that moves uplinks is never a clone", () => {
    const w = new CloneWatch();
    expect(w.arrive("site-1", "10.92.1.2", null, 0)).toEqual({ action: "accept" });
    for (let i = 1; i <= 20; i++) expect(w.arrive("site-1", `10.92.${(i % 2) + 1}.2`, `10.92.${((i + 1) % 2) + 1}.2`, i * 1000, true).action).toBe("replace");
    expect(w.mark("site-1", 21_000)).toBeNull();
    // Another instance (a second process with the same certificate) still counts from here.
    for (let i = 0; i < 3; i++) expect(w.arrive("site-1", "a", "b", 30_000 + i).action).toBe("replace");
    expect(w.arrive("site-1", "b", "a", 30_004).action).toBe("refuse");
  });

  test("no live connection: the newcomer is taken, even while marked (the established one is gone)", () => {
    const w = new CloneWatch();
    for (let i = 0; i < 4; i++) w.arrive("s", `a${i % 2}`, `a${(i + 1) % 2}`, i);
    expect(w.mark("s", 10)).not.toBeNull();
    expect(w.arrive("s", "a0", null, 20)).toEqual({ action: "accept" });
  });

  test("the mark ends after the hold without newcomers, and the id starts afresh", () => {
    const w = new CloneWatch();
    for (let i = 0; i < 4; i++) w.arrive("s", `a${i % 2}`, `a${(i + 1) % 2}`, i);
    expect(w.mark("s", 3 + ClonePolicy.hold - 1)).not.toBeNull();
    expect(w.mark("s", 3 + ClonePolicy.hold)).toBeNull();
    expect(w.arrive("s", "a1", "a0", 3 + ClonePolicy.hold + 1).action).toBe("replace");
    w.forget("s");
    expect(w.tracked).toBe(0);
  });

  test("a refused device waits the backoff's maximum before dialling again", () => {
    expect(retryDelay(1, true, () => 0)).toBe(Timing.backoffCap);
  });
});

describe("two real onsite processes on one bundle", () => {
  let fleet: Fleet | undefined;
  afterAll(async () => {
    await fleet?.close();
  });

  test("the relay stops the flapping, keeps one, refuses the other with a reason both log, and marks the id duplicated", async () => {
    fleet = await Fleet.create();
    const relay = await fleet.startRelay("relay-clone");
    const bundle = await fleet.issue("onsite", "site-clone");
    const args = ["--relay", `127.0.0.1:${fleet.relayPort}`, "--allow", "127.0.0.1/32"];
    const a = await fleet.start("onsite", "clone-a", args, bundle);
    await fleet.waitConnected(a);
    const b = await fleet.start("onsite", "clone-b", args, bundle);
    const detail = () => `relay:\n${relay.log().slice(-2500)}\nclone-a:\n${a.log().slice(-1200)}\nclone-b:\n${b.log().slice(-1200)}`;
    await waitFor(() => relay.log().includes("site-clone: 4 replacements within 5 min: two devices use this certificate"), 60_000, "the relay to notice the flapping", { detail });
    // The refusal comes with the next newcomer's dial, after its backoff: wait for it.
    const refusal = /refused site-clone \(onsite\) from 127\.0\.0\.1: another device is connected with the certificate of site-clone \(from 127\.0\.0\.1\): two devices share one certificate/;
    await waitFor(() => refusal.test(relay.log()), 30_000, "the relay to refuse the next newcomer", { detail });
    expect(relay.log()).toMatch(refusal);

    // One of them was refused and says so, backing off; the other stays up.
    const refusedLine = "the relay refused this device as a duplicate: another device is connected with the same certificate (a cloned SD card?); dialling again only every 30 s";
    const refused = await waitFor(() => [a, b].find((d) => d.log().includes(refusedLine)), 10_000, "the refused device to log why", { detail });
    const kept = refused === a ? b : a;
    expect(refused.log()).toContain("the relay refused us: another device is connected with the certificate of site-clone");
    const stateOf = async (d: Daemon) => (await fleet!.status(d)).onsite as { state: string; last_error: string | null };
    await waitFor(async () => (await stateOf(kept)).state === "up", 10_000, "the kept device up", { detail });
    // The flapping has stopped: no more replacements, the kept one stays up, the refused one waits.
    const replacements = () => relay.log().split("\n").filter((l) => l.includes("site-clone: a new connection from")).length;
    const before = replacements();
    await holdsFor(async () => replacements() !== before || (await stateOf(kept)).state !== "up", 6_000, "the kept device to stay up, nothing replaced", { detail });
    const waiting = await stateOf(refused);
    expect(waiting.state === "waiting" || waiting.state === "connecting").toBe(true);
    expect(waiting.last_error).toContain("two devices share one certificate");

    // The relay's inventory marks the id, and `agent devices` says so.
    const rows = await fleet.json<{ id: string; online: boolean; duplicate: { refused: number; addresses: string[] } | null; status: string }[]>(relay, ["devices"]);
    const row = rows.find((r) => r.id === "site-clone")!;
    expect(row.online).toBe(true);
    expect(row.duplicate!.refused).toBeGreaterThanOrEqual(1);
    expect(row.duplicate!.addresses).toEqual(["127.0.0.1"]);
    const text = (await fleet.cli(relay, ["devices"])).stdout;
    expect(text).toMatch(/site-clone: online; DUPLICATE: two devices use this certificate, \d+ connections? refused \(from 127\.0\.0\.1\); give each device its own bundle/);
  }, 90_000);
});
