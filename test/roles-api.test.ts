// Each role's API object as its daemon serves it: composed by src/roles (not started, no
// relay), called through the typed client straight into the control server's dispatch, so
// requests and answers go through the same JSON the socket carries. The onsite daemon's NAT
// service runs on the in-memory firewall backend.
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveConfig, type RawConfig } from "../src/config.ts";
import { ControlClient, inProcessTransport, isUnknownCommand } from "../src/control.ts";
import { RuntimeError, UsageError } from "../src/errors.ts";
import { createLogger } from "../src/log.ts";
import { FakeBackend, type Exec } from "../src/nat/backend.ts";
import type { Bundle } from "../src/pki.ts";
import type { MasterApi, OnsiteApi, UplinkApi } from "../src/roles/api.ts";
import { composeDaemon, Daemon } from "../src/roles/daemon.ts";
import { composeMaster } from "../src/roles/master.ts";
import { composeOnsite } from "../src/roles/onsite.ts";

let dir: string;
let logged: string[];
const log = () => createLogger({ level: "info", json: true, write: (l) => void logged.push(l) });

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "agent-roles-api-"));
  logged = [];
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function config(raw: RawConfig = {}) {
  return resolveConfig([{ origin: { kind: "flag" }, raw: { relay: "127.0.0.1:9", control: join(dir, "control.sock"), state_dir: dir, ...raw } }]);
}

/** Only the id is read: the roles are never started, so nothing dials with the bundle. */
const bundle = (id: string) => ({ id }) as Bundle;

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected a rejection");
}

describe("master API", () => {
  function master() {
    const cfg = config();
    const daemon = new Daemon({ role: "master", id: "tech-1" }, cfg, log());
    const { api } = composeMaster(daemon, cfg, bundle("tech-1"), log());
    return { daemon, api, client: new ControlClient<MasterApi>(inProcessTransport(daemon.control)) };
  }

  test("status names the role; no sessions yet", async () => {
    const { client } = master();
    expect(await client.call("status")).toMatchObject({ role: "master", id: "tech-1", pid: process.pid, control: join(dir, "control.sock") });
    expect(await client.call("sessions")).toEqual([]);
  });

  test("requests are checked at the API: each bad field a usage error that says the fix", async () => {
    const { client } = master();
    const cases: [Promise<unknown>, string][] = [
      [client.call("connect", { onsite: "", forwards: ["8080:10.0.0.1:80"] }), "connect: missing device id"],
      [client.call("connect", { onsite: "site-1", forwards: [] }), "give at least one --forward"],
      [client.call("connect", { onsite: "site-1", forwards: ["nonsense"] }), "nonsense"],
      [client.call("natAdd", { src: "1.2.3.4", session: "s", port: 1, to: "10.0.0.1:80", ttl: "1m" } as never), "--src is not taken on a master"],
      [client.call("natAdd", { session: "", port: 1, to: "10.0.0.1:80", ttl: "1m" }), "nat add needs --session SESSION"],
    ];
    for (const [p, msg] of cases) {
      const e = await rejection(p);
      expect(e).toBeInstanceOf(UsageError);
      expect(e.message).toContain(msg);
    }
  });

  test("without the relay: devices and NAT say so (runtime errors); an unknown session is named", async () => {
    const { client } = master();
    const devices = await rejection(client.call("devices"));
    expect(devices).toBeInstanceOf(RuntimeError);
    expect(devices.message).toContain("not connected to the relay (connecting)");
    const nat = await rejection(client.call("natAdd", { session: "s-1", port: "8080", to: "10.0.0.1:80", ttl: "1m" }));
    expect(nat).toBeInstanceOf(RuntimeError);
    expect(nat.message).toContain("not connected to the relay");
    expect((await rejection(client.call("disconnect", { session: "s-9" }))).message).toContain('no session "s-9"');
  });

  test("the socket serves exactly the API's methods; another role's command is refused naming this role", async () => {
    const { daemon, api } = master();
    expect(Object.keys(api).sort()).toEqual(["connect", "devices", "disconnect", "natAdd", "natDel", "natList", "services", "sessions", "sessionsExtend", "status", "tunnelMode"]);
    const res = await daemon.control.dispatch(JSON.stringify({ cmd: "nat.flush" }));
    expect(res).toEqual({ ok: false, code: "usage", error: 'unknown command "nat.flush"; this master daemon knows connect, devices, disconnect, nat.add, nat.del, nat.list, services, sessions, sessions.extend, status, tunnel.mode' });
  });
});

describe("onsite API", () => {
  // `ip -j addr` (the device's own addresses: none) and conntrack (cutting flows) succeed.
  const exec: Exec = async (argv) => ({ code: 0, stdout: argv[0] === "ip" ? "[]" : "", stderr: "" });

  async function onsite() {
    const cfg = config({ allow: ["192.168.1.0/24"] });
    const daemon = new Daemon({ role: "onsite", id: "site-1" }, cfg, log());
    const backend = new FakeBackend();
    const od = await composeOnsite(daemon, cfg, bundle("site-1"), log(), { nat: { backend, exec } });
    return { daemon, backend, od, client: new ControlClient<OnsiteApi>(inProcessTransport(daemon.control)) };
  }

  test("without [[uplink]] or [ap]: status, NAT, sessions, redial; uplink commands are unknown", async () => {
    const { daemon, od, client } = await onsite();
    expect(Object.keys(od.api).sort()).toEqual(["natAdd", "natDel", "natFlush", "natList", "redial", "sessions", "status"]);
    expect(await client.call("status")).toMatchObject({ role: "onsite", id: "site-1" });
    expect(await client.call("sessions")).toEqual([]);
    const e = await rejection(new ControlClient<UplinkApi>(inProcessTransport(daemon.control)).call("uplinkStatus"));
    expect(isUnknownCommand(e, "uplink.status")).toBe(true);
    expect(e.message).toContain("this onsite daemon knows nat.add, nat.del, nat.flush, nat.list, redial, sessions, status");
  });

  test("NAT before its service started: unavailable, and the message says why", async () => {
    const { client } = await onsite();
    const e = await rejection(client.call("natList"));
    expect(e).toBeInstanceOf(RuntimeError);
    expect(e.message).toBe("NAT is unavailable: the NAT service has not started");
  });

  test("a local NAT rule: add, list, delete, flush through the typed API, applied to the firewall", async () => {
    const { od, backend, client } = await onsite();
    await od.nat.start();
    try {
      const added = await client.call("natAdd", { src: "203.0.113.7", port: "8080", to: "192.168.1.50:80", ttl: "1m" });
      expect(added.created).toBe(true);
      expect(added.rule).toMatchObject({ proto: "tcp", src: "203.0.113.7/32", port: 8080, to: "192.168.1.50:80", owner: "local" });
      expect(backend.installed.size).toBe(1);
      const listing = await client.call("natList");
      expect(listing.backend).toBe("memory");
      expect(listing.rules.map((r) => r.id)).toEqual([added.rule.id]);
      expect((await client.call("natDel", { id: added.rule.id })).id).toBe(added.rule.id);
      expect(backend.installed.size).toBe(0);
      await client.call("natAdd", { src: "203.0.113.8", port: 8081, to: "192.168.1.51:22", ttl: "5m", proto: "tcp" });
      expect(await client.call("natFlush")).toEqual({ removed: 1 });
      expect((await client.call("natList")).rules).toEqual([]);
      // A field the service refuses is the user's to fix.
      const bad = await rejection(client.call("natAdd", { src: "203.0.113.7", port: "8080", to: "10.9.9.9:80", ttl: "1m" }));
      expect(bad).toBeInstanceOf(UsageError);
    } finally {
      await od.nat.close();
    }
  });

  test("redial asks the relay client to dial again, with the reason given", async () => {
    const { client } = await onsite();
    expect(await client.call("redial", { reason: "test: route changed" })).toEqual({});
    expect(logged.some((l) => l.includes("redialing the relay now: test: route changed"))).toBe(true);
  });
});

describe("composeDaemon", () => {
  test.each([
    ["relay", "devices, devices.forget, devices.history, enroll.approve, enroll.deny, enroll.list, enroll.pending, enroll.revoke, enroll.token.add, enroll.token.del, enroll.token.list, kick, refusals, refusals.report, sessions, sessions.end, status"],
    ["master", "connect, devices, disconnect, nat.add, nat.del, nat.list, services, sessions, sessions.extend, status, tunnel.mode"],
    ["onsite", "nat.add, nat.del, nat.flush, nat.list, redial, sessions, status"],
  ] as const)("%s: the control socket serves the role's API and names the role", async (role, known) => {
    const d = await composeDaemon(role, config({ listen: "127.0.0.1:0" }), bundle(`${role}-1`), log());
    expect(d.status()).toMatchObject({ role, id: `${role}-1` });
    expect(await d.control.dispatch(JSON.stringify({ cmd: "nope" }))).toEqual({ ok: false, code: "usage", error: `unknown command "nope"; this ${role} daemon knows ${known}` });
    await d.close();
  });
});
