// The tunnel commands as a user runs them, against real relay / onsite / master processes over
// real TLS: bad flags exit 2 naming the problem, a device whose config does not allow tunnels
// refuses naming the key, an unknown session exits 4, and a daemon without a TUN/TAP host says
// so. The formatting of `agent sessions`' tunnel lines is checked on its own (pure): a tunnel
// that is up across processes needs the Linux host (test/tunnel-system*.test.ts).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { formatTunnel, sshPeer } from "../src/cli/tunnel.ts";
import { formatSessions } from "../src/cli/sessions.ts";
import type { SessionView } from "../src/tunnel/master-forwarder.ts";
import { noPacketStats } from "../src/transport/packet.ts";
import { Fleet, type Daemon } from "./helpers/fleet.ts";

describe("agent connect --tunnel and agent tunnel mode, real processes", () => {
  let fleet: Fleet;
  let master: Daemon;
  let onsiteOff: Daemon;
  let onsiteOn: Daemon;

  beforeAll(async () => {
    fleet = await Fleet.create();
    await fleet.startRelay();
    const on = join(fleet.dir, "on.toml");
    writeFileSync(on, "[tunnel]\nenabled = true\n");
    onsiteOff = await fleet.startOnsite("site-1", ["--allow", "192.168.1.0/24"]);
    onsiteOn = await fleet.startOnsite("site-2", ["--allow", "192.168.1.0/24", "--config", on]);
    master = await fleet.startMaster();
    await Promise.all([onsiteOff, onsiteOn, master].map((d) => fleet.waitConnected(d)));
  }, 60_000);
  afterAll(async () => {
    await fleet?.close();
  });

  test.each([
    [["connect", "site-1", "--tunnel", "sideways"], '--tunnel: expected routed or bridged, got "sideways"'],
    [["connect", "site-1", "--tunnel"], "--tunnel"],
    [["connect", "site-1"], "agent connect needs at least one --forward [BIND:]LPORT:HOST:PORT or --tunnel routed|bridged"],
    [["tunnel", "mode"], "missing argument SESSION for agent tunnel mode"],
    [["tunnel", "mode", "s-abcd1234", "L3"], 'agent tunnel mode: expected routed or bridged, got "L3"'],
    [["tunnel", "mode", "s-abcd1234"], "missing argument ROUTED|BRIDGED for agent tunnel mode"],
    [["tunnel", "sideways"], 'unknown command "agent tunnel sideways"'],
  ])("agent %j exits 2 naming the problem", async (args, message) => {
    const r = await fleet.cli(master, args);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(message);
    expect(r.stdout).toBe("");
  });

  test("a device without [tunnel] enabled = true refuses, naming the key (exit 2); nothing stays open", async () => {
    const r = await fleet.cli(master, ["connect", "site-1", "--tunnel", "routed"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("site-1: packet tunnels are off on this device; set [tunnel] enabled = true in its config to allow them");
    const relayView = await fleet.json<unknown[]>(fleet.daemons[0]!, ["sessions"]);
    expect(relayView).toEqual([]);
  });

  test("bridged on a device that allows tunnels but not bridged mode: refused naming [tunnel] bridged", async () => {
    const r = await fleet.cli(master, ["connect", "site-2", "--tunnel", "bridged"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("set [tunnel] bridged = true in its config");
  });

  test("switching a session that does not exist exits 4; one without a tunnel exits 2", async () => {
    const r = await fleet.cli(master, ["tunnel", "mode", "s-nope1234", "bridged"]);
    expect(r.code).toBe(4);
    expect(r.stderr).toContain('no session "s-nope1234"');
    const s = await fleet.json<{ session: string }>(master, ["connect", "site-1", "--forward", "127.0.0.1:0:192.168.1.50:80"]);
    const r2 = await fleet.cli(master, ["tunnel", "mode", s.session, "bridged"]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toContain(`session ${s.session} has no tunnel; open one with agent connect site-1 --tunnel bridged`);
  });
});

describe("the tunnel lines of connect and sessions (pure)", () => {
  const tunnel = {
    mode: "routed" as const,
    state: "up" as const,
    reason: "",
    master: { iface: "agt-t-1a2b", addresses: ["10.99.0.1/30"], routes: ["192.168.1.0/24"] },
    onsite: { iface: "agt-t-9z8y", addresses: ["10.99.0.2/30"], routes: [] },
    subnets: ["192.168.1.0/24"],
    addressing: { master: "10.99.0.1/30", onsite: "10.99.0.2/30" },
    packets: { ...noPacketStats(), packets_out: 1200, bytes_out: 1_704_000, packets_in: 900, bytes_in: 64_800, drops: { ...noPacketStats().drops, queue_full: 3, device: 1 } },
    warnings: ["secondary interface changed while the tunnel is up: eth1 went away"],
  };

  test("mode, both ends' interfaces, addresses and routes, packets and bytes each way, drops by reason", () => {
    expect(formatTunnel("s-k2j9x0aa", tunnel)).toEqual([
      "tunnel of s-k2j9x0aa: routed, up, to 192.168.1.0/24",
      "  master agt-t-1a2b  10.99.0.1/30  routes 192.168.1.0/24",
      "  onsite agt-t-9z8y  10.99.0.2/30",
      "  packets out 1200 (1.7 MB), in 900 (65 kB); drops: queue_full 3, device 1",
      "  warning: secondary interface changed while the tunnel is up: eth1 went away",
    ]);
    const bridged = { ...tunnel, mode: "bridged" as const, state: "waiting" as const, reason: "packet stream ended: connection closed", master: { iface: "agt-p-1", addresses: [], routes: [], bridge: "agt-br-eth1" }, onsite: null, subnets: [], packets: noPacketStats(), warnings: [] };
    expect(formatTunnel("s-1", bridged)).toEqual([
      "tunnel of s-1: bridged, waiting (packet stream ended: connection closed)",
      "  master agt-p-1  -  bridge agt-br-eth1",
      "  onsite -",
      "  packets out 0 (0 B), in 0 (0 B); drops: none",
    ]);
  });

  test("agent sessions lists the tunnel under the table", () => {
    const s: SessionView = { session: "s-k2j9x0aa", onsite: "site-1", state: "active", since: "", reason: "open", opened: "", expires: null, forwards: [], tunnel };
    const text = formatSessions([s]);
    expect(text).toContain("routed tunnel");
    expect(text).toContain("tunnel of s-k2j9x0aa: routed, up");
    expect(text).toContain("drops: queue_full 3, device 1");
  });

  test("the relay's sessions name the tunnel and the UDP targets, with the relay's drops", () => {
    const stats = { ...noPacketStats(), drops: { ...noPacketStats().drops, queue_full: 4 } };
    const text = formatSessions([{ session: "s-1", master: "tech-1", onsite: "site-1", targets: [], opened: new Date().toISOString(), expires: null, udp: ["192.168.1.1:53"], tunnel: { mode: "bridged", subnets: [], onsite: { iface: "agt-p-1", addresses: [], routes: [] }, relay: { to_onsite: stats, to_master: noPacketStats() } } }]);
    expect(text).toContain("udp:192.168.1.1:53 bridged tunnel (4 dropped at the relay)");
  });

  test.each([
    [{ SSH_CONNECTION: "192.168.77.20 51234 192.168.77.1 22" }, "192.168.77.20"],
    [{ SSH_CLIENT: "10.0.0.9 40000 22" }, "10.0.0.9"],
    [{ SSH_CONNECTION: "::ffff:10.1.2.3 5 ::ffff:10.1.2.4 22" }, "10.1.2.3"],
    [{}, undefined],
    [{ SSH_CONNECTION: "$(reboot) 1 2 3" }, undefined],
  ])("the SSH client of %j is %p", (env, want) => {
    expect(sshPeer(env)).toBe(want);
  });
});
