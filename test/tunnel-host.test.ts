// The Linux tunnel hosts for real, as root, in namespaces this test makes (test/helpers/
// tunnel-lab.ts): each end's host runs in its namespace (test/fixtures/tunnel/host-end.ts)
// and the test itself is the wire, copying the two devices' packets between them. Shown:
// a laptop lease from the master, ping and TCP to the LAN through the routed tunnel, the
// allow list enforced in the onsite kernel (and the control: reachable once allowed), the
// iptables fallback, bridged mode (a lease from the LAN's DHCP across the bridge, ARP),
// the refusals, and that close() and, after kill -9, sweep() leave nothing behind.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { inNs, namespacePids, nsArgv } from "./helpers/netns.ts";
import { parseIperfJson } from "./helpers/iperf.ts";
import { programsPresent, spawnChild, type Child } from "./helpers/proc.ts";
import { buildTunnelLab, FAR_HOST, LAN_ROUTER, pingable, type TunnelLab } from "./helpers/tunnel-lab.ts";
import { HostEnd, joinEnds, refusal, sweepIn } from "./helpers/tunnel-end.ts";
import { waitFor } from "./helpers/wait.ts";

const root = process.getuid?.() === 0;
const run = root && programsPresent("test/tunnel-host.test.ts", ["ip", "nft", "iptables", "iptables-restore", "dnsmasq", "busybox", "iperf3"]);
if (!root) {
  if (process.env.CI) throw new Error("test/tunnel-host.test.ts needs root (namespaces, TUN/TAP); in CI this is a failure, not a skip");
  console.warn("skipping test/tunnel-host.test.ts: needs root");
}

const ADDR = { master: "10.99.0.1/30", onsite: "10.99.0.2/30" };

describe.skipIf(!run)("tunnel hosts in namespaces", () => {
  let lab: TunnelLab;
  let iperf: Child;
  const ends: HostEnd[] = [];
  const start = (name: string, ns: string, spec: ConstructorParameters<typeof HostEnd>[2]) => {
    const e = new HostEnd(name, ns, spec);
    ends.push(e);
    return e;
  };
  const masterOpts = () => ({ stateDir: `${lab.dir}/master`, secondary: "eth1", dhcp: true });
  const onsiteRouted = (allow: string[], firewallKind?: string) => ({ allow, firewallKind });
  const onsiteBridged = { allow: ["192.168.1.0/24"], bridged: true, lanBridge: "br-lan", uplinks: ["wan0"] };

  /** What the agent owns in a namespace now: interfaces, nft tables, iptables chains. */
  async function leftovers(ns: string): Promise<string[]> {
    const links = (JSON.parse((await inNs(ns, ["ip", "-j", "link", "show"])).stdout) as { ifname: string }[]).map((l) => l.ifname).filter((n) => n.startsWith("agt-"));
    const tables = (await inNs(ns, ["nft", "list", "tables"])).stdout.split("\n").filter((l) => /agent_tun/.test(l));
    const chains = (await inNs(ns, ["iptables-save"])).stdout.split("\n").filter((l) => /AGT-TUN/.test(l));
    return [...links, ...tables, ...chains];
  }
  /** dnsmasq processes running in namespace `ns` (by /proc/PID/ns/net of `ip netns pids`). */
  async function dnsmasqIn(ns: string): Promise<number[]> {
    return (await namespacePids(ns)).filter((p) => {
      try {
        return readFileSync(`/proc/${p}/comm`, "utf8").trim() === "dnsmasq";
      } catch {
        return false;
      }
    });
  }

  async function openRouted(allow: string[], extraMasterSubnets: string[] = [], firewallKind?: string) {
    const onsite = start("onsite", lab.onsite, { role: "onsite", opts: onsiteRouted(allow, firewallKind), req: { session: "s-routed", mode: "routed", addressing: ADDR } });
    const ready = await onsite.waitCtl("ready");
    const subnets = [...(ready.subnets as string[]), ...extraMasterSubnets];
    const master = start("master", lab.master, { role: "master", opts: masterOpts(), req: { session: "s-routed", mode: "routed", addressing: ADDR, subnets } });
    await master.waitCtl("ready");
    joinEnds(onsite, master);
    return { onsite, master, subnets };
  }

  beforeAll(async () => {
    lab = await buildTunnelLab("th");
    iperf = spawnChild("iperf3 -s", nsArgv(lab.lan, "iperf3", "-s", "-B", LAN_ROUTER, "-p", "5201"));
    await waitFor(async () => (await inNs(lab.lan, ["ss", "-ltn"])).stdout.includes(`${LAN_ROUTER}:5201`), 10_000, "iperf3 -s in the LAN");
  }, 60_000);

  afterAll(async () => {
    for (const e of ends) await e.kill9();
    await iperf?.stop();
    await lab?.teardown();
  }, 60_000);

  test("routed: laptop lease from the master, ping and TCP to the LAN; outside the allow list dropped in the onsite kernel; close() leaves nothing", async () => {
    const { onsite, master, subnets } = await openRouted(["192.168.1.0/24"], ["192.168.2.0/24"]);
    expect(subnets).toEqual(["192.168.1.0/24", "192.168.2.0/24"]);
    const info = (await master.waitCtl("ready")).info as { iface: string; routes: string[] };
    expect(info.iface).toMatch(/^agt-m[0-9a-f]{8}$/);
    expect(info.routes).toEqual(subnets);

    const lease = await lab.lease();
    expect(lease.router).toBe("192.168.77.1");
    expect(lease.ip).toMatch(/^192\.168\.77\.\d+$/);
    // The LAN has no route back to the laptop or the tunnel: every answer proves both masquerades.
    expect(await pingable(lab.laptop, LAN_ROUTER)).toBe(true);
    const tcp = parseIperfJson((await inNs(lab.laptop, ["iperf3", "-c", LAN_ROUTER, "-p", "5201", "-t", "1", "-J", "--connect-timeout", "3000"])).stdout);
    expect(tcp.receivedBytes).toBeGreaterThan(100_000);

    // 192.168.2.1 is routed into the tunnel by the master but is not in the onsite allow list.
    expect((await inNs(lab.laptop, ["busybox", "ping", "-c", "2", "-W", "1", FAR_HOST], true)).code).not.toBe(0);
    const table = (await inNs(lab.onsite, ["nft", "list", "tables"])).stdout.match(/agent_tun_o[0-9a-f]{8}/)![0];
    const rules = (await inNs(lab.onsite, ["nft", "list", "table", "inet", table])).stdout;
    const drops = [...rules.matchAll(/counter packets (\d+) bytes \d+ drop/g)].map((m) => Number(m[1]));
    expect(drops.some((n) => n >= 2)).toBe(true);

    expect(await onsite.close()).toBe(0);
    expect(await master.close()).toBe(0);
    expect(await leftovers(lab.onsite)).toEqual([]);
    expect(await leftovers(lab.master)).toEqual([]);
    expect(await dnsmasqIn(lab.master)).toEqual([]);
  }, 60_000);

  test("control, on the iptables fallback: the same host is reachable once the allow list holds it; kill -9 then sweep() removes the chains", async () => {
    await lab.forgetLease();
    const { onsite, master } = await openRouted(["192.168.1.0/24", "192.168.2.0/24"], [], "iptables");
    await lab.lease();
    expect(await pingable(lab.laptop, FAR_HOST)).toBe(true);
    expect((await inNs(lab.onsite, ["iptables-save"])).stdout).toMatch(/AGT-TUN-o[0-9a-f]{8}-F/);
    await onsite.kill9();
    expect(await leftovers(lab.onsite)).not.toEqual([]);
    const swept = await sweepIn(lab.onsite, { role: "onsite", opts: { allow: ["192.168.1.0/24"], firewallKind: "iptables" } });
    expect(swept.some((s) => /iptables chain filter\/AGT-TUN-o/.test(s))).toBe(true);
    expect(await leftovers(lab.onsite)).toEqual([]);
    expect(await master.close()).toBe(0);
  }, 60_000);

  test("bridged: the laptop's lease comes from the LAN's DHCP server across both bridges, ARP crosses, dnsmasq is not running; close() frees eth1", async () => {
    await lab.forgetLease();
    const onsite = start("onsite", lab.onsite, { role: "onsite", opts: onsiteBridged, req: { session: "s-br", mode: "bridged" } });
    const oi = (await onsite.waitCtl("ready")).info as { iface: string; bridge: string };
    expect(oi.iface).toMatch(/^agt-p[0-9a-f]{8}$/);
    expect(oi.bridge).toBe("br-lan");
    const master = start("master", lab.master, { role: "master", opts: masterOpts(), req: { session: "s-br", mode: "bridged", requester: "10.0.0.9" } });
    const mi = (await master.waitCtl("ready")).info as { bridge: string };
    expect(mi.bridge).toMatch(/^agt-b[0-9a-f]{8}$/);
    joinEnds(onsite, master);
    expect(await dnsmasqIn(lab.master)).toEqual([]);

    const lease = await lab.lease();
    expect(lease.router).toBe(LAN_ROUTER);
    expect(lease.ip).toMatch(/^192\.168\.1\.1[0-5]\d$/);
    expect(await pingable(lab.laptop, LAN_ROUTER)).toBe(true);
    const mac = JSON.parse((await inNs(lab.lan, ["ip", "-j", "link", "show", "eth0"])).stdout)[0].address as string;
    const neigh = (await inNs(lab.laptop, ["ip", "neigh", "show", LAN_ROUTER, "dev", "lap0"])).stdout;
    expect(neigh).toContain(mac);

    expect(await onsite.close()).toBe(0);
    expect(await master.close()).toBe(0);
    expect(await leftovers(lab.onsite)).toEqual([]);
    expect(await leftovers(lab.master)).toEqual([]);
    const eth1 = JSON.parse((await inNs(lab.master, ["ip", "-j", "link", "show", "eth1"])).stdout)[0];
    expect(eth1.master).toBeUndefined();
    expect((await inNs(lab.onsite, ["ip", "-o", "link", "show", "master", "br-lan"])).stdout).toContain("lan0");
  }, 60_000);

  test("refusals say why: bridged from the secondary's subnet, bridged not allowed, an uplink in the bridge, a routed open without addresses", async () => {
    const fromSec = await refusal("master", lab.master, { role: "master", opts: masterOpts(), req: { session: "s-r1", mode: "bridged", requester: "192.168.77.50" } });
    expect(fromSec.refused).toBe("from_secondary");
    expect(fromSec.message).toContain("192.168.77.50");
    expect(fromSec.message).toContain("eth1");
    const notAllowed = await refusal("onsite", lab.onsite, { role: "onsite", opts: { ...onsiteBridged, bridged: false }, req: { session: "s-r2", mode: "bridged" } });
    expect(notAllowed.refused).toBe("bridged_not_allowed");
    expect(notAllowed.message).toContain("[tunnel] bridged");
    const uplink = await refusal("onsite", lab.onsite, { role: "onsite", opts: { ...onsiteBridged, uplinks: ["lan0"] }, req: { session: "s-r3", mode: "bridged" } });
    expect(uplink.refused).toBe("invalid");
    expect(uplink.message).toContain("lan0");
    const noAddr = await refusal("onsite", lab.onsite, { role: "onsite", opts: { allow: ["192.168.1.0/24"] }, req: { session: "s-r4", mode: "routed" } });
    expect(noAddr.refused).toBe("invalid");
    const badMode = await refusal("master", lab.master, { role: "master", opts: masterOpts(), req: { session: "s-r5", mode: "bridged; rm -rf /" } });
    expect(badMode.refused).toBe("invalid");
    expect(await leftovers(lab.onsite)).toEqual([]);
    expect(await leftovers(lab.master)).toEqual([]);
  }, 60_000);

  test("after kill -9 of both ends, sweep() removes their tables, dnsmasq and the master's bridge (eth1 freed), and says so", async () => {
    const { onsite, master } = await openRouted(["192.168.1.0/24"]);
    const dhcpPid = (await master.waitCtl("ready")).dhcpPid as number;
    expect(dhcpPid).toBeGreaterThan(0);
    await onsite.kill9();
    await master.kill9();
    // The TUN devices went with their fds; the rules and dnsmasq stayed.
    expect((await leftovers(lab.master)).some((l) => /agent_tun_m/.test(l))).toBe(true);
    expect(await dnsmasqIn(lab.master)).toEqual([dhcpPid]);
    const m = await sweepIn(lab.master, { role: "master", opts: masterOpts() });
    expect(m).toContain(`dnsmasq pid ${dhcpPid} on eth1`);
    expect(m.some((s) => /^nft table inet agent_tun_m/.test(s))).toBe(true);
    const o = await sweepIn(lab.onsite, { role: "onsite", opts: { allow: ["192.168.1.0/24"] } });
    expect(o.some((s) => /^nft table inet agent_tun_o/.test(s))).toBe(true);
    expect(await dnsmasqIn(lab.master)).toEqual([]);

    const br = start("master", lab.master, { role: "master", opts: masterOpts(), req: { session: "s-k", mode: "bridged" } });
    const bridge = ((await br.waitCtl("ready")).info as { bridge: string }).bridge;
    await br.kill9();
    expect(JSON.parse((await inNs(lab.master, ["ip", "-j", "link", "show", "eth1"])).stdout)[0].master).toBe(bridge);
    expect(await sweepIn(lab.master, { role: "master", opts: masterOpts() })).toContain(`interface ${bridge}`);
    expect(JSON.parse((await inNs(lab.master, ["ip", "-j", "link", "show", "eth1"])).stdout)[0].master).toBeUndefined();
    expect(await leftovers(lab.master)).toEqual([]);
    expect(await leftovers(lab.onsite)).toEqual([]);
    // A second sweep finds nothing: it removes only what is there, by name.
    expect(await sweepIn(lab.master, { role: "master", opts: masterOpts() })).toEqual([]);
  }, 60_000);

  test("a routed master end warns when its secondary interface is renamed, goes and comes back (netlink)", async () => {
    const master = start("master", lab.master, { role: "master", opts: { ...masterOpts(), dhcp: false }, req: { session: "s-mon", mode: "routed", addressing: ADDR, subnets: [] } });
    await master.waitCtl("ready");
    const said = () => master.ctl.filter((c) => "secondary" in c).map((c) => c.secondary as string);
    await inNs(lab.master, ["ip", "link", "set", "eth1", "down"]);
    await inNs(lab.master, ["ip", "link", "set", "eth1", "name", "eth9"]);
    await waitFor(() => said().some((w) => w.includes("eth1 was renamed to eth9")), 5_000, () => `the rename warning (${JSON.stringify(said())})`);
    await inNs(lab.master, ["ip", "link", "set", "eth9", "name", "eth1"]);
    await inNs(lab.master, ["ip", "link", "set", "eth1", "up"]);
    await waitFor(() => said().some((w) => w.includes("renamed from eth9 to eth1")), 5_000, () => `the rename-back warning (${JSON.stringify(said())})`);
    expect(await master.close()).toBe(0);
    expect(await leftovers(lab.master)).toEqual([]);
  }, 30_000);
});
