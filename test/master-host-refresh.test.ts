// The master's status card follows its tunnel ends (src/roles/master-host.ts): a tunnel end made
// or undone starts a fresh reading of the host facts before open/close return (so the bridge on
// the secondary interface shows with the change, not at the next 15 s timer), a reading already
// under way is not taken for a fresh one, and the leases come from dnsmasq's file at each look.
// The real path: test/gui-tunnel-real.test.ts (the Status page while a real tunnel switches).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import type { Exec } from "../src/os/spawn.ts";
import { MasterHostFacts, refreshingHost } from "../src/roles/master-host.ts";
import { TunnelRefused } from "../src/tunnel/packet/device.ts";
import { dhcpPaths } from "../src/tunnel/packet/dnsmasq.ts";
import { MemoryMasterTunnelHost } from "../src/tunnel/packet/memory.ts";

const dir = mkdtempSync(join(tmpdir(), "agent-hostfacts-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** `ip` answers for eth1: in the bridge `master` names, or in none. */
function fakeIp(): { exec: Exec; master: { v: string | null }; calls: string[][]; hold: { v: Promise<void> | null } } {
  const master = { v: null as string | null };
  const hold = { v: null as Promise<void> | null };
  const calls: string[][] = [];
  const exec: Exec = async (argv) => {
    calls.push([...argv]);
    const seen = master.v;
    if (hold.v) await hold.v;
    if (argv.includes("link")) return { code: 0, stdout: JSON.stringify([{ ifname: "eth1", operstate: "UP", ...(seen ? { master: seen } : {}) }]), stderr: "" };
    if (argv.includes("addr")) return { code: 0, stdout: JSON.stringify([{ addr_info: [{ local: "192.168.77.1", prefixlen: 24 }] }]), stderr: "" };
    return { code: 1, stdout: "", stderr: "" };
  };
  return { exec, master, calls, hold };
}

describe("the status card's host facts follow the tunnel ends", () => {
  test("open and close of an end each read the facts again before they return; precheck and sweep pass through", async () => {
    const ip = fakeIp();
    const facts = new MasterHostFacts({ relayHost: undefined, secondary: "eth1", stateDir: join(dir, "a"), exec: ip.exec });
    const inner = new MemoryMasterTunnelHost({ secondary: "eth1", secondarySubnet: "192.168.77.0/24" });
    let prechecks = 0;
    (inner as unknown as { precheck: () => Promise<null> }).precheck = async () => (prechecks++, null);
    const host = refreshingHost(inner, facts);
    await facts.refresh();
    expect(facts.secondary?.bridge).toBeNull();
    ip.master.v = "agt-b00000001";
    const end = await host.open({ session: "s-1", mode: "bridged" });
    expect(facts.secondary?.bridge).toBe("agt-b00000001");
    expect(end.info()).toEqual(inner.ends[0]!.info());
    expect(end.device).toBe(inner.ends[0]!.device);
    ip.master.v = null;
    await end.close();
    expect(inner.ends[0]!.closed).toBe(true);
    expect(facts.secondary?.bridge).toBeNull();
    expect(await host.precheck!({ session: "s-2", mode: "routed" })).toBeNull();
    expect(prechecks).toBe(1);
    expect(await host.sweep()).toEqual([]);
  });

  test("a refused open reads nothing and passes the refusal on", async () => {
    const ip = fakeIp();
    const facts = new MasterHostFacts({ relayHost: undefined, secondary: "eth1", stateDir: join(dir, "b"), exec: ip.exec });
    const host = refreshingHost(new MemoryMasterTunnelHost({ secondarySubnet: "192.168.77.0/24" }), facts);
    await expect(host.open({ session: "s-1", mode: "bridged", requester: "192.168.77.20" })).rejects.toBeInstanceOf(TunnelRefused);
    expect(ip.calls).toEqual([]);
  });

  test("fresh() does not take a reading already under way for one made after the change", async () => {
    const ip = fakeIp();
    const facts = new MasterHostFacts({ relayHost: undefined, secondary: "eth1", stateDir: join(dir, "c"), exec: ip.exec });
    let release!: () => void;
    ip.hold.v = new Promise((r) => (release = r));
    const early = facts.refresh(); // the timer's reading, started before the bridge existed
    for (let i = 0; i < 100 && ip.calls.length === 0; i++) await Promise.resolve();
    expect(ip.calls.length).toBe(1); // it asked `ip` already, and waits for the answer
    ip.master.v = "agt-b00000002";
    const after = facts.fresh();
    ip.hold.v = null;
    release();
    await early;
    expect(facts.secondary?.bridge).toBeNull();
    await after;
    expect(facts.secondary?.bridge).toBe("agt-b00000002");
  });

  test("the leases are dnsmasq's file at each look, not at the last reading", async () => {
    const ip = fakeIp();
    const stateDir = join(dir, "d");
    const facts = new MasterHostFacts({ relayHost: undefined, secondary: "eth1", stateDir, exec: ip.exec });
    await facts.refresh();
    expect(facts.secondary?.leases).toEqual([]);
    const file = dhcpPaths(stateDir, "eth1").leases;
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, "1900000000 02:00:00:00:00:01 192.168.77.120 laptop 01:02:00:00:00:00:01\n");
    expect(facts.secondary?.leases).toEqual([{ mac: "02:00:00:00:00:01", address: "192.168.77.120", hostname: "laptop", expires: new Date(1900000000_000).toISOString() }]);
    expect(ip.calls.length).toBe(2);
  });
});
