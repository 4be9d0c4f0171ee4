// Issue 15's backend with real processes on 127.0.0.1: a relay, an onsite device whose config
// declares [[service]] tables, and a master with one entry of its own. The services reach the
// relay's inventory (`agent devices --json` there) and the master's catalogue (`agent
// services`), the master's `agent devices` carries the relay's state fields, `agent sessions
// extend` moves a live session's end on the master and on the relay, the master's monitor
// streams session_open / session_extend / session_close, and its status card names its uplink
// and secondary interface.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { monitorJson } from "./helpers/monitor.ts";
import { waitFor } from "./helpers/wait.ts";
import type { ServiceEntry } from "../src/roles/api.ts";
import type { DeviceInfo, SessionInfo } from "../src/transport/messages.ts";

describe("service catalogue and session extend, real relay, onsite and master", () => {
  let fleet: Fleet;
  let relay: Daemon;
  let master: Daemon;
  const monitors: Subprocess[] = [];

  beforeAll(async () => {
    fleet = await Fleet.create();
    relay = await fleet.startRelay();
    const onsiteCfg = join(fleet.dir, "onsite.toml");
    writeFileSync(
      onsiteCfg,
      [
        'location = "Royal Champagne, cellar 2"',
        "[[service]]",
        'name = "Router web UI"',
        'target = "192.168.1.1:80"',
        'kind = "http"',
        "[[service]]",
        'name = "NAS"',
        'target = "192.168.1.20:22"',
        'kind = "ssh"',
        'description = "backups"',
        "",
      ].join("\n"),
    );
    const masterCfg = join(fleet.dir, "master.toml");
    writeFileSync(masterCfg, ["[[service]]", 'device = "site-1"', 'name = "Door camera"', 'target = "192.168.1.30:5900"', 'kind = "vnc"', ""].join("\n"));
    const onsite = await fleet.startOnsite("site-1", ["--allow", "127.0.0.1/32", "--config", onsiteCfg]);
    master = await fleet.startMaster("tech-1", ["--config", masterCfg]);
    await fleet.waitConnected(onsite);
    await fleet.waitConnected(master);
  }, 60_000);

  afterAll(async () => {
    for (const m of monitors) m.kill();
    await fleet?.close();
  });

  function monitor(d: Daemon): Record<string, unknown>[] {
    const m = monitorJson(d.sock);
    monitors.push(m.proc);
    return m.events;
  }

  test("the device's services are in the relay's inventory and the master's catalogue, with the master's own entry", async () => {
    const onRelay = await waitFor(async () => {
      const l = await fleet.json<DeviceInfo[]>(relay, ["devices"]);
      return l.find((d) => d.id === "site-1" && d.services?.length) ?? undefined;
    }, 15_000, "site-1's services on the relay");
    expect(onRelay.services).toEqual([
      { name: "Router web UI", target: "192.168.1.1:80", kind: "http" },
      { name: "NAS", target: "192.168.1.20:22", kind: "ssh", description: "backups" },
    ]);
    const list = await fleet.json<ServiceEntry[]>(master, ["services"]);
    expect(list.map((s) => [s.device, s.source, s.name, s.kind, s.online, s.location])).toEqual([
      ["site-1", "device", "NAS", "ssh", true, "Royal Champagne, cellar 2"],
      ["site-1", "device", "Router web UI", "http", true, "Royal Champagne, cellar 2"],
      ["site-1", "master", "Door camera", "vnc", true, "Royal Champagne, cellar 2"],
    ]);
    expect(list[1]!.offer).toEqual({ action: "tab", forward: "0:192.168.1.1:80", url: "http://127.0.0.1:{port}/", command: null });
    expect(list[2]!.offer.url).toBe("vnc://127.0.0.1:{port}");
    const text = await fleet.cli(master, ["services", "site-1"]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain("Router web UI");
    expect((await fleet.json<ServiceEntry[]>(master, ["services", "site-9"]))).toEqual([]);
  }, 30_000);

  test("the master's `agent devices` carries the relay's state fields", async () => {
    const [d] = await fleet.json<DeviceInfo[]>(master, ["devices"]);
    expect(d).toMatchObject({ id: "site-1", online: true, state: "online", status: "online", location: "Royal Champagne, cellar 2" });
    expect(typeof d!.first_seen).toBe("string");
    expect(d!.services).toHaveLength(2);
    const table = await fleet.cli(master, ["devices"]);
    expect(table.stdout).toContain("STATE");
  }, 30_000);

  test("extend moves the session's end on the master and the relay; the monitor streams it", async () => {
    const events = monitor(master);
    // The monitor subscribes asynchronously: sessions are opened (and ended) until it has seen
    // one open, and that one is the session under test (bounded: 10 tries).
    let session = "";
    for (let i = 0; i < 10 && !session; i++) {
      const s = (await fleet.connect(master, "site-1", ["127.0.0.1:9"], "1m")).session;
      const seen = await waitFor(() => events.some((e) => e.type === "session_open" && e.session === s), 1_500, "session_open").then(() => true, () => false);
      if (seen) session = s;
      else expect((await fleet.cli(master, ["disconnect", s])).code).toBe(0);
    }
    expect(session).not.toBe("");
    const before = (await fleet.json<SessionInfo[]>(relay, ["sessions"])).find((s) => s.session === session)!;
    const extended = await fleet.json<{ session: string; expires: string }>(master, ["sessions", "extend", session, "--ttl", "30m"]);
    expect(Date.parse(extended.expires) - Date.parse(before.expires!)).toBeGreaterThan(25 * 60_000);
    const after = (await fleet.json<SessionInfo[]>(relay, ["sessions"])).find((s) => s.session === session)!;
    expect(Math.abs(Date.parse(after.expires!) - Date.parse(extended.expires))).toBeLessThan(5_000);
    await waitFor(() => events.find((e) => e.type === "session_extend" && e.session === session), 10_000, () => `session_extend in ${JSON.stringify(events)}`);
    const bad = await fleet.cli(master, ["sessions", "extend", session, "--ttl", "9d"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--ttl: at most");
    const missing = await fleet.cli(master, ["sessions", "extend", "s-nothere1", "--ttl", "5m"]);
    expect(missing.code).toBe(4);
    expect((await fleet.cli(master, ["disconnect", session])).code).toBe(0);
    await waitFor(() => events.find((e) => e.type === "session_close" && e.session === session), 10_000, () => `session_close in ${JSON.stringify(events)}`);
  }, 60_000);

  test("the master's status card: its uplink to the relay and the secondary interface", async () => {
    const st = await waitFor(async () => {
      const m = (await fleet.status(master)).master as { uplink: { iface: string } | null; secondary: { iface: string } | null };
      return m.uplink && m.secondary ? m : undefined;
    }, 20_000, "the host facts");
    expect(st.uplink).toMatchObject({ iface: "lo", address: "127.0.0.1" });
    // The test host's eth1 may or may not exist; what is said of it must match `ip link`.
    const present = Bun.spawnSync(["ip", "link", "show", "dev", "eth1"]).exitCode === 0;
    expect(st.secondary).toMatchObject({ iface: "eth1", present });
  }, 30_000);
});
