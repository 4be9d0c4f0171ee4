// No RTC (issue 13 §7): certificates are never judged with a clock earlier than the
// executable's build time, and a device whose clock is not set says "clock not set" once.
// Pure tables for the rule; the hand-made chain check with real certificates; then real
// daemons: an onsite device whose clock (libfaketime) reads 2001 dials a relay on the real
// clock and connects, where its TLS stack alone (openssl under the same fake clock) says
// "certificate is not yet valid".
import { describe, expect, test } from "bun:test";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { createCa, parseCa } from "../src/pki.ts";
import { judgeCertTime, validityInstant, verifyRelayChain } from "../src/transport/tls.ts";
import { buildTime } from "../src/version.ts";
import { makeCert, newCa } from "./helpers/certs.ts";
import { BUN, MAIN } from "./helpers/cli.ts";
import { Fleet } from "./helpers/fleet.ts";
import { run } from "./helpers/proc.ts";
import { waitFor } from "./helpers/wait.ts";

const DAY = 86_400_000;
const BUILD = Date.UTC(2026, 10, 30, 12, 0, 0);
const STALE = Date.UTC(1970, 0, 1, 0, 0, 42); // a Pi's clock before NTP
const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");

describe("the instant certificates are judged at", () => {
  test.each([
    ["clock after the build", BUILD + DAY, BUILD, { at: BUILD + DAY, clockNotSet: false }],
    ["clock at the build", BUILD, BUILD, { at: BUILD, clockNotSet: false }],
    ["clock before the build (not set)", STALE, BUILD, { at: BUILD, clockNotSet: true }],
    ["build time unknown", STALE, undefined, { at: STALE, clockNotSet: false }],
  ])("%s", (_n, wall, build, want) => expect(validityInstant(wall, build)).toEqual(want));

  test.each<[string, number, number, number, number | undefined, string | null]>([
    ["valid now", BUILD - DAY, BUILD + 365 * DAY, BUILD + DAY, BUILD, null],
    ["stale clock, valid at the build: accepted", BUILD - DAY, BUILD + 365 * DAY, STALE, BUILD, null],
    ["stale clock, issued after the build", BUILD + DAY, BUILD + 365 * DAY, STALE, BUILD,
      `clock not set: this device's clock is earlier than this agent's build (${iso(BUILD)}), and the relay's certificate is valid only from ${iso(BUILD + DAY)} to ${iso(BUILD + 365 * DAY)}; waiting for the clock (NTP) to be set`],
    ["clock set, not yet valid", BUILD + 2 * DAY, BUILD + 365 * DAY, BUILD + DAY, BUILD,
      `the relay's certificate is not yet valid (valid from ${iso(BUILD + 2 * DAY)}); is this device's clock right?`],
    ["expired", BUILD - 365 * DAY, BUILD - DAY, BUILD + DAY, BUILD, `the relay's certificate expired on ${iso(BUILD - DAY)}`],
    ["no build time: the clock as it is", BUILD - DAY, BUILD + DAY, STALE, undefined,
      `the relay's certificate is not yet valid (valid from ${iso(BUILD - DAY)}); is this device's clock right?`],
  ])("%s", (_n, nb, na, wall, build, want) => expect(judgeCertTime("the relay's certificate", nb, na, wall, build)).toBe(want));

  test("the clock-not-set reason is the same whatever the stale clock reads (the dialer logs a repeat once)", () => {
    const a = judgeCertTime("x", BUILD + DAY, BUILD + 2 * DAY, STALE, BUILD);
    const b = judgeCertTime("x", BUILD + DAY, BUILD + 2 * DAY, STALE + 3_600_000, BUILD);
    expect(a).toBe(b);
    expect(a).toStartWith("clock not set:");
  });

  test("from source the build time is HEAD's commit time: known, in the past", () => {
    const b = buildTime();
    expect(b).toBeNumber();
    expect(b!).toBeLessThanOrEqual(Date.now());
    expect(b!).toBeGreaterThan(Date.UTC(2024, 0, 1));
  });
});

describe("the relay's chain judged by hand at the validity instant", () => {
  const caPems = createCa({ name: "clock test CA", now: new Date(BUILD - 30 * DAY) });
  const ca = parseCa(caPems.certPem, caPems.keyPem);
  const relay = (notBefore: number) => makeCert(ca, { role: "relay", id: "relay-1", ips: ["127.0.0.1"], notBefore: new Date(notBefore), notAfter: new Date(BUILD + 365 * DAY) });
  const before = relay(BUILD - 2 * DAY);
  test.each<[string, () => string | null, string | null | RegExp]>([
    ["issued before the build, clock in 1970: valid", () => verifyRelayChain(before.der, caPems.certPem, "127.0.0.1", STALE, BUILD), null],
    ["the same with the clock set", () => verifyRelayChain(before.der, caPems.certPem, "127.0.0.1", BUILD + DAY, BUILD), null],
    ["issued after the build, clock in 1970: clock not set", () => verifyRelayChain(relay(BUILD + DAY).der, caPems.certPem, "127.0.0.1", STALE, BUILD), /^clock not set: .*the relay's certificate is valid only from/],
    ["another CA's certificate", () => verifyRelayChain(makeCert(newCa(), { role: "relay", id: "relay-1", ips: ["127.0.0.1"] }).der, caPems.certPem, "127.0.0.1", STALE, BUILD), "the relay's certificate was not issued by this fleet's CA; is 127.0.0.1 a relay of this fleet?"],
    ["not for the host dialed", () => verifyRelayChain(before.der, caPems.certPem, "10.0.0.9", STALE, BUILD), "the relay's certificate is not for 10.0.0.9"],
  ])("%s", (_n, f, want) => {
    const got = f();
    if (want instanceof RegExp) expect(got).toMatch(want);
    else expect(got).toBe(want);
  });
});

const hasFaketime = existsSync("/usr/bin/faketime");
if (!hasFaketime && process.env.CI) throw new Error("faketime is missing (scripts/deps.sh installs it); CI must not skip the stale-clock test");
const maybe = hasFaketime ? describe : describe.skip; // without faketime (outside CI): skipped, there is no other way to fake OpenSSL's clock

maybe("an onsite daemon whose clock reads 2001 (libfaketime) and a relay on the real clock", () => {
  // libfaketime by LD_PRELOAD under `env`, which execs: the pid the fleet stops is the daemon's
  // own. The `faketime` wrapper forks and waits instead, so stopping it orphaned the daemon.
  const lib = ["x86_64-linux-gnu", "aarch64-linux-gnu"].map((t) => `/usr/lib/${t}/faketime/libfaketimeMT.so.1`).find((p) => existsSync(p));
  if (!lib) throw new Error("libfaketimeMT.so.1 not found (Debian's libfaketime package, pulled in by faketime)");
  const ft = (when: number) => ["env", "TZ=UTC", `LD_PRELOAD=${lib}`, `FAKETIME=@${new Date(when).toISOString().slice(0, 19).replace("T", " ")}`, "FAKETIME_DONT_FAKE_MONOTONIC=1"];
  const agentAt = async (when: number, args: string[]) => {
    const r = await run([...ft(when), BUN, MAIN, ...args], { timeoutMs: 60_000 });
    if (r.code !== 0) throw new Error(`agent ${args.join(" ")} at ${new Date(when).toISOString()}: ${r.stderr}`);
  };

  test("certificates from before the build: connected; TLS under the same clock alone refuses them", async () => {
    const build = buildTime()!;
    await using fleet = new Fleet();
    mkdirSync(fleet.dir, { recursive: true });
    await agentAt(build - 10 * DAY, ["pki", "init", "--dir", fleet.ca]);
    await agentAt(build - 2 * DAY, ["pki", "issue", "--dir", fleet.ca, "--role", "relay", "--id", "relay-1", "--host", "127.0.0.1", "--out", join(fleet.dir, "relay-1.bundle")]);
    await agentAt(build - 2 * DAY, ["pki", "issue", "--dir", fleet.ca, "--role", "onsite", "--id", "site-1", "--out", join(fleet.dir, "site-1.bundle")]);
    // A relay certificate from after the build, for the control below.
    await agentAt(build + 2 * DAY, ["pki", "issue", "--dir", fleet.ca, "--role", "relay", "--id", "relay-2", "--host", "127.0.0.1", "--out", join(fleet.dir, "relay-2.bundle")]);
    await agentAt(build - 2 * DAY, ["pki", "issue", "--dir", fleet.ca, "--role", "onsite", "--id", "site-2", "--out", join(fleet.dir, "site-2.bundle")]);
    const relay = await fleet.startRelay("relay-1");
    const relay1Port = fleet.relayPort;

    // Control: OpenSSL with the stale clock refuses the relay's certificate as not yet valid.
    const s = await run([...ft(Date.UTC(2001, 0, 1)), "openssl", "s_client", "-connect", `127.0.0.1:${relay1Port}`, "-CAfile", join(fleet.ca, "ca.crt"), "-brief"], { timeoutMs: 15_000, stdin: "" });
    expect(s.stdout + s.stderr).toMatch(/certificate is not yet valid/);

    fleet.wrap = ft(Date.UTC(2001, 0, 1));
    const site = await fleet.startOnsite("site-1");
    await fleet.waitConnected(site, 20_000);
    const devices = await fleet.json<{ id: string; online: boolean }[]>(relay, ["devices"]);
    expect(devices.find((d) => d.id === "site-1")?.online).toBe(true);
    expect(site.log()).not.toContain("not yet valid");

    // A relay certificate issued after the build cannot be judged: "clock not set", once,
    // however often the device redials.
    fleet.wrap = [];
    await fleet.startRelay("relay-2");
    fleet.wrap = ft(Date.UTC(2001, 0, 1));
    const site2 = await fleet.startOnsite("site-2");
    await waitFor(() => site2.log().includes("clock not set"), 20_000, "site-2 says the clock is not set", { detail: () => site2.log() });
    // At least two more dials with the same verdict (the status counts them) before looking again.
    const attempts = async () => ((await fleet.status(site2)).onsite as { attempts?: number; failures?: number } | undefined) ?? {};
    const first = await attempts();
    console.log(`site-2 status while the clock is not set: ${JSON.stringify((await fleet.status(site2)).onsite)}`);
    await waitFor(async () => JSON.stringify(await attempts()) !== JSON.stringify(first), 20_000, "another dial");
    const log = site2.log();
    expect(log.split("\n").filter((l) => l.includes("clock not set"))).toHaveLength(1);
    expect(log).not.toContain("not yet valid");
    expect((await fleet.status(site2)).onsite).toMatchObject({ state: expect.not.stringMatching(/^up$/) });
  }, 90_000);
});
