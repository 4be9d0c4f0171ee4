// Flash-and-run enrollment (issue 14 §8) with real processes on 127.0.0.1 and real TLS: a relay
// with an enroller from `agent pki issue-enroller`, tokens made with `agent enroll token add`,
// and onsite daemons started from one identical image (the same config file, empty state
// dirs). Heavy (daemons): run under flock /tmp/agent-heavy.lock.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { generateDeviceKey, parseEnroller } from "../src/pki-enroll.ts";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { BUN, MAIN, agent } from "./helpers/cli.ts";
import { spawnLogged } from "./helpers/logged-spawn.ts";
import { waitFor } from "./helpers/wait.ts";
import { masterSignedByEnroller } from "./helpers/certs.ts";

interface Device {
  name: string;
  proc: Subprocess<"ignore", "pipe", "pipe">;
  sock: string;
  state: string;
  log: () => string;
}

interface DeviceRow {
  id: string;
  state: string;
  heartbeat?: unknown;
}

describe("flash-and-run enrollment", () => {
  let fleet: Fleet;
  let relay: Daemon;
  let enrollPort = 0;
  const devices: Device[] = [];

  /** Starts an onsite daemon from `image` with the state dir `name` (kept across restarts). */
  const startDevice = (name: string, image: string): Device => {
    const state = join(fleet.dir, `dev-${name}`);
    const sock = join(fleet.dir, `dev-${name}.sock`);
    const { proc, log } = spawnLogged([BUN, MAIN, "--role", "onsite", "--config", image, "--control", sock, "--state-dir", state]);
    const d = { name, proc, sock, state, log };
    devices.push(d);
    return d;
  };
  const stopDevice = async (d: Device) => {
    if (d.proc.exitCode === null && d.proc.signalCode === null) d.proc.kill("SIGTERM");
    await d.proc.exited;
  };
  const idOf = async (d: Device): Promise<string> => {
    await waitFor(() => existsSync(d.sock) || d.proc.exitCode !== null, 20_000, () => `${d.name} enrolled and started: ${d.log()}`);
    if (d.proc.exitCode !== null) throw new Error(`${d.name} exited ${d.proc.exitCode}: ${d.log()}`);
    const r = await agent(["status", "--json", "--control", d.sock]);
    return (JSON.parse(r.stdout) as { id: string }).id;
  };
  const relayJson = async <T>(args: string[]): Promise<T> => fleet.json<T>(relay, args);
  const relayDevices = () => relayJson<DeviceRow[]>(["devices", "--all"]);
  const image = (name: string, tokenText: string, extra = "") => {
    const tokenFile = join(fleet.dir, `${name}.token`);
    writeFileSync(tokenFile, tokenText + "\n", { mode: 0o600 });
    const file = join(fleet.dir, `${name}.toml`);
    writeFileSync(
      file,
      `relay = "127.0.0.1:${fleet.relayPort}"\nallow = ["127.0.0.1/32"]\n[enroll]\naddress = "127.0.0.1:${enrollPort}"\ntoken_file = "${tokenFile}"\nca = "${join(fleet.ca, "ca.crt")}"\nid_prefix = "site-"\n${extra}`,
      { mode: 0o600 },
    );
    return file;
  };
  const tokenAdd = async (args: string[]): Promise<string> => {
    const r = await fleet.cli(relay, ["enroll", "token", "add", ...args]);
    expect(r.code).toBe(0);
    return r.stdout.trim();
  };

  beforeAll(async () => {
    fleet = await Fleet.create();
    const enroller = join(fleet.dir, "relay-1.enroller");
    const r = await agent(["pki", "issue-enroller", "--dir", fleet.ca, "--id", "enroll-1", "--out", enroller]);
    expect(r.code).toBe(0);
    const cfg = join(fleet.dir, "relay.toml");
    writeFileSync(cfg, `[enroll]\nlisten = "127.0.0.1:0"\nenroller = "${enroller}"\n`);
    relay = await fleet.startRelay("relay-1", ["--config", cfg]);
    enrollPort = ((await fleet.status(relay)).enroll as { port: number }).port;
    expect(enrollPort).toBeGreaterThan(0);
  });

  afterAll(async () => {
    await Promise.all(devices.map(stopDevice));
    await fleet?.close();
  });

  let firstId = "";
  let first: Device;
  let twoDeviceImage = "";

  test("two devices from one identical image enroll with distinct ids, connect, send heartbeats, and a restart keeps the identity", async () => {
    const token = await tokenAdd(["--uses", "2", "--expires", "1h"]);
    expect(token).toMatch(/^agt1_[A-Za-z0-9_-]{32}$/);
    twoDeviceImage = image("fleet", token);
    first = startDevice("a", twoDeviceImage);
    const second = startDevice("b", twoDeviceImage);
    const [a, b] = await Promise.all([idOf(first), idOf(second)]);
    expect(a).toMatch(/^site-[0-9a-f]{16}$/);
    expect(b).toMatch(/^site-[0-9a-f]{16}$/);
    expect(a).not.toBe(b);
    firstId = a;
    // Both connect as normal devices, and the per-device heartbeat key works for them.
    await waitFor(async () => {
      const rows = await relayDevices();
      return [a, b].every((id) => rows.some((r) => r.id === id && r.state === "online" && r.heartbeat)) || undefined;
    }, 20_000, "both enrolled devices online with a heartbeat");
    const tokens = await relayJson<{ used: number; uses: number; state: string }[]>(["enroll", "token", "list"]);
    expect(tokens[0]).toMatchObject({ used: 2, uses: 2, state: "used up" });
    // The key stayed on the device: the bundle and the key are its, 0600; the relay holds no key.
    expect(existsSync(join(first.state, "enroll.key"))).toBe(true);
    expect((Bun.file(join(first.state, "enrolled.bundle")).size)).toBeGreaterThan(0);
    // Restart: the stored bundle, no second enrollment (the token is used up, so one would fail).
    await stopDevice(first);
    first = startDevice("a", twoDeviceImage);
    expect(await idOf(first)).toBe(a);
    expect(first.log()).not.toContain("enrolling as");
    await waitFor(async () => (await relayDevices()).some((r) => r.id === a && r.state === "online") || undefined, 15_000, "restarted device online");
  }, 60_000);

  test("a wrong token is refused with its reason and logged in the relay's refusals", async () => {
    const d = startDevice("wrong", image("wrong", "agt1_this-is-not-a-token-of-this-relay"));
    await waitFor(() => d.log().includes("enrollment refused by the relay (token): unknown enrollment token") || undefined, 15_000, () => `the refusal in the device's log: ${d.log()}`);
    expect(existsSync(d.sock)).toBe(false); // no bundle, no daemon
    await stopDevice(d);
    expect(d.proc.exitCode).toBe(0);
    const r = await fleet.cli(relay, ["refusals", "--json"]);
    expect(r.stdout).toContain("enrollment refused: unknown enrollment token");
    expect(r.stdout).toContain('"enroll"');
  }, 30_000);

  test("an enrolled device that is revoked is closed, and cannot enroll again: not with its key, not as a new device with the used token", async () => {
    const rev = await fleet.cli(relay, ["enroll", "revoke", firstId]);
    expect(rev.code).toBe(0);
    expect(rev.stdout).toContain(`${firstId} revoked (serial `);
    await waitFor(() => first.log().includes("the relay revoked this device's certificate") || undefined, 15_000, () => `GOAWAY REVOKED at the device: ${first.log()}`);
    await waitFor(async () => (await relayDevices()).some((r) => r.id === firstId && r.state !== "online") || undefined, 10_000, "revoked device offline");
    await stopDevice(first);
    // Same key, bundle gone (a re-flash that kept the state dir's key): refused as revoked.
    rmSync(join(first.state, "enrolled.bundle"));
    const again = startDevice("a", twoDeviceImage);
    await waitFor(() => again.log().includes("enrollment refused by the relay (revoked)") || undefined, 15_000, () => `revoked refusal: ${again.log()}`);
    await stopDevice(again);
    // A new device (empty state dir) with the same, used-up token: refused.
    const fresh = startDevice("c", twoDeviceImage);
    await waitFor(() => fresh.log().includes("is used up (2 of 2 uses)") || undefined, 15_000, () => `used-up refusal: ${fresh.log()}`);
    await stopDevice(fresh);
    const list = await relayJson<{ id: string; state: string }[]>(["enroll", "list"]);
    expect(list.find((e) => e.id === firstId)?.state).toBe("revoked");
  }, 45_000);

  test("approval: a manual token's device waits in `agent enroll pending` until `agent enroll approve`, then connects", async () => {
    const token = await tokenAdd(["--manual", "--note", "batch 7"]);
    const d = startDevice("manual", image("manual", token));
    const pending = await waitFor(async () => {
      const rows = await relayJson<{ id: string; state: string }[]>(["enroll", "pending"]);
      return rows.length === 1 ? rows[0] : undefined;
    }, 15_000, "one pending enrollment");
    expect(pending.state).toBe("pending");
    await waitFor(() => d.log().includes(`\`agent enroll approve ${pending.id}\``) || undefined, 10_000, () => `device says it waits: ${d.log()}`);
    expect(existsSync(d.sock)).toBe(false);
    const ok = await fleet.cli(relay, ["enroll", "approve", pending.id]);
    expect(ok.code).toBe(0);
    expect(await idOf(d)).toBe(pending.id);
    await waitFor(async () => (await relayDevices()).some((r) => r.id === pending.id && r.state === "online") || undefined, 15_000, "approved device online");
    // Deny of a signed one is refused with the way to shut it out.
    const deny = await fleet.cli(relay, ["enroll", "deny", pending.id]);
    expect(deny.code).not.toBe(0);
    expect(deny.stderr).toContain(`agent enroll revoke ${pending.id}`);
  }, 45_000);

  test("the relay's TLS refuses a master identity the enroller signed (name constraints), and logs why", async () => {
    // As if the relay's enroller key leaked and signed a master: the chain verifies up to the
    // fleet CA, but the enroller may only vouch for onsite identities.
    const e = parseEnroller(readFileSync(join(fleet.dir, "relay-1.enroller"), "utf8"), "relay-1.enroller");
    const keyPem = generateDeviceKey();
    const chain = masterSignedByEnroller(e, keyPem, "tech-evil", "4242") + e.certPem;
    let got = 0;
    const closed = Promise.withResolvers<void>();
    await Bun.connect({
      hostname: "127.0.0.1",
      port: fleet.relayPort,
      tls: { cert: chain, key: keyPem, ca: e.caPem, rejectUnauthorized: false } as Bun.TLSOptions,
      socket: { data: (_s, d) => void (got += d.length), close: () => closed.resolve(), error: () => closed.resolve() },
    });
    await closed.promise;
    expect(got).toBe(0); // not one byte of application data
    await waitFor(async () => {
      const r = await fleet.cli(relay, ["refusals", "--json"]);
      return r.stdout.includes("tech-evil (master)") && /permitted subtree violation|certificate refused by TLS/.test(r.stdout) ? r : undefined;
    }, 10_000, "the refusal of the constrained chain in the relay's log");
  }, 30_000);

  test("the relay's enroll.db keeps tokens and enrollments across a restart", async () => {
    relay = await fleet.restart(relay);
    enrollPort = ((await fleet.status(relay)).enroll as { port: number }).port;
    const list = await relayJson<{ id: string; state: string }[]>(["enroll", "list"]);
    expect(list.map((e) => e.state).sort()).toEqual(["revoked", "signed", "signed"]);
    const tokens = await relayJson<{ note: string }[]>(["enroll", "token", "list"]);
    expect(tokens.map((t) => t.note)).toEqual(["", "batch 7"]);
  }, 30_000);
});

