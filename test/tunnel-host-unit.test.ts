// The pure parts of the Linux tunnel hosts, table-tested: agent-owned names, the kernel rules
// as rendered, the refusals and routes, the secondary-interface change sentences, the DHCP
// file, and the TUN device's read loop and error mapping on fake system calls.
import { describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { parseAllowEntry } from "../src/netaddr.ts";
import { E, IFF_NO_PI, IFF_TAP, IFF_TUN, TUNSETIFF, tunIfreq } from "../src/os/libc.ts";
import { renderSecondaryDnsmasq } from "../src/tunnel/packet/dnsmasq.ts";
import { iptablesChains, iptablesRemoval, ownedChainsInSave, ownedTablesInList, pickFirewall, renderIptablesRestore, renderNft, type MasterRules, type OnsiteRules, type TunnelFirewall } from "../src/tunnel/packet/firewall.ts";
import { checkMode, checkSession, checkTunnelAddress, upRouted } from "../src/tunnel/packet/host-onsite.ts";
import { IpCommands, parseLinks, type IpLink } from "../src/tunnel/packet/host-ip.ts";
import { TUNNEL_MTU } from "../src/tunnel/packet/device.ts";
import { MemoryPacketDevice } from "../src/tunnel/packet/memory.ts";
import { advertisedSubnets, dhcpWanted, fromSecondaryRefusal, masterRoutes, onsiteBridgedRefusal, ownedLinks, tunnelNetwork } from "../src/tunnel/packet/host-rules.ts";
import { ANY_OWNED_INTERFACE, chainPrefix, deviceName, isOwnedInterface, isOwnedTable, sessionTag, tableName } from "../src/tunnel/packet/names.ts";
import { secondaryChanges } from "../src/tunnel/packet/netmon.ts";
import { LinuxTunDevice, READ_BATCH, type TunOps } from "../src/tunnel/packet/tun-linux.ts";
import type { LinkInfo } from "../src/uplink/monitor.ts";

describe("agent-owned names", () => {
  test.each([
    ["onsite", "tun", "s1", "agt-t"],
    ["onsite", "tap", "s1", "agt-p"],
    ["master", "tun", "s1", "agt-m"],
    ["master", "tap", "s1", "agt-q"],
    ["master", "bridge", "s1", "agt-b"],
  ] as const)("%s %s of %s starts %s, fits IFNAMSIZ, and only its role's sweep claims it", (role, kind, session, prefix) => {
    const n = deviceName(role, kind, session);
    expect(n.startsWith(prefix)).toBe(true);
    expect(Buffer.byteLength(n)).toBeLessThanOrEqual(15);
    expect(n).toBe(`${prefix}${sessionTag(session)}`);
    expect(isOwnedInterface(role, n)).toBe(true);
    expect(isOwnedInterface(role === "onsite" ? "master" : "onsite", n)).toBe(false);
    expect(ANY_OWNED_INTERFACE.test(n)).toBe(true);
  });
  test("pure: the same session gives the same names; another session another; any string maps to a legal name", () => {
    expect(deviceName("onsite", "tun", "abc")).toBe(deviceName("onsite", "tun", "abc"));
    expect(deviceName("onsite", "tun", "abc")).not.toBe(deviceName("onsite", "tun", "abd"));
    expect(deviceName("master", "tun", "a very long session id with spaces ✓ and more")).toMatch(/^agt-m[0-9a-f]{8}$/);
    expect(tableName("onsite", "abc")).toBe(`agent_tun_o${sessionTag("abc")}`);
    expect(chainPrefix("master", "abc")).toBe(`AGT-TUN-m${sessionTag("abc")}`);
    expect(() => deviceName("onsite", "bridge", "x")).toThrow("makes no bridge");
  });
  test.each([
    ["agt-t1a2b3c4d", true],
    ["agt-t1a2b3c4", false],
    ["agt-x1a2b3c4d", false],
    ["agt-97x-th-ons", false], // a test namespace's name, never an interface of ours
    ["br-lan", false],
  ])("sweep claims %s: %p", (name, ours) => {
    expect(isOwnedInterface("onsite", name)).toBe(ours);
  });
  test("tables and links found by name only", () => {
    expect(isOwnedTable("onsite", "agent_tun_o1a2b3c4d")).toBe(true);
    expect(isOwnedTable("onsite", "agent_tun_m1a2b3c4d")).toBe(false);
    expect(ownedTablesInList("master", "table inet agent_tun_m1a2b3c4d\ntable inet agent_ap\ntable ip agent_tun_m1a2b3c4d\n")).toEqual(["agent_tun_m1a2b3c4d"]);
    const links: IpLink[] = parseLinks(JSON.stringify([{ ifname: "eth1" }, { ifname: "agt-b1a2b3c4d", linkinfo: { info_kind: "bridge" } }, { ifname: "agt-t1a2b3c4d" }]));
    expect(ownedLinks("master", links)).toEqual(["agt-b1a2b3c4d"]);
    expect(links[1]!.kind).toBe("bridge");
  });
});

const onsite: OnsiteRules = {
  role: "onsite",
  session: "s",
  dev: "agt-t00000000",
  address: "10.99.0.2",
  tunnelNet: "10.99.0.0/30",
  allow: ["192.168.1.0/24", "10.0.0.5/32:22,8000-8100"].map(parseAllowEntry),
};
const master: MasterRules = { role: "master", session: "s", dev: "agt-m00000000", secondary: "eth1" };

describe("kernel rules", () => {
  test("onsite nft: only the allow list (with its ports) from the TUN, answers back only, masquerade out, MSS clamp", () => {
    const t = renderNft(onsite);
    expect(t).toStartWith(`table inet ${tableName("onsite", "s")} {`);
    const forward = t.slice(t.indexOf("chain forward"), t.indexOf("chain input"));
    expect(forward.split("\n").map((l) => l.trim()).filter(Boolean)).toEqual([
      "chain forward {",
      "type filter hook forward priority -300; policy accept;",
      'iifname "agt-t00000000" tcp flags syn tcp option maxseg size set rt mtu',
      'oifname "agt-t00000000" tcp flags syn tcp option maxseg size set rt mtu',
      'iifname "agt-t00000000" ip daddr 192.168.1.0/24 accept',
      'iifname "agt-t00000000" ip daddr 10.0.0.5/32 meta l4proto { tcp, udp } th dport { 22, 8000-8100 } accept',
      'iifname "agt-t00000000" counter drop',
      'oifname "agt-t00000000" ct state established,related accept',
      'oifname "agt-t00000000" counter drop',
      "}",
    ]);
    expect(t).toContain('iifname "agt-t00000000" ip daddr 10.99.0.2 icmp type echo-request accept');
    expect(t).toContain('iifname "agt-t00000000" oifname != "agt-t00000000" masquerade');
  });
  test("master nft: the secondary's traffic masqueraded into the TUN; nothing opened from the tunnel", () => {
    const t = renderNft(master);
    expect(t).toContain('iifname "eth1" oifname "agt-m00000000" masquerade');
    expect(t).toContain('iifname "agt-m00000000" ct state established,related accept\n    iifname "agt-m00000000" counter drop');
    expect(t).not.toContain("chain input");
  });
  test("iptables fallback: the same policy in the agent's own chains, one jump each", () => {
    const r = renderIptablesRestore(onsite);
    const p = chainPrefix("onsite", "s");
    expect(r).toContain(`-A ${p}-F -i agt-t00000000 -d 192.168.1.0/24 -j ACCEPT`);
    expect(r).toContain(`-A ${p}-F -i agt-t00000000 -d 10.0.0.5/32 -p udp -m udp --dport 8000:8100 -j ACCEPT`);
    expect(r).toContain(`-A ${p}-F -i agt-t00000000 -j DROP`);
    expect(r).toContain(`-A ${p}-N -s 10.99.0.0/30 ! -o agt-t00000000 -j MASQUERADE`);
    expect(r).toContain(`-A ${p}-M -o agt-t00000000 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu`);
    for (const c of iptablesChains(onsite)) expect(r).toContain(`-I ${c.from} 1 -j ${c.chain}`);
    expect(renderIptablesRestore(master)).toContain(`-A ${chainPrefix("master", "s")}-N -o agt-m00000000 -j MASQUERADE`);
    expect(iptablesRemoval(iptablesChains(master))[0]).toEqual(["iptables", "-w", "-t", "filter", "-D", "FORWARD", "-j", `${chainPrefix("master", "s")}-F`]);
  });
  test("a sweep finds this role's chains and their jumps in iptables-save, nothing else", () => {
    const p = chainPrefix("onsite", "s");
    const save = ["*filter", `:${p}-F - [0:0]`, ":AGENT-FWD - [0:0]", `-A FORWARD -j ${p}-F`, "-A FORWARD -j AGENT-FWD", "COMMIT", "*nat", `:${p}-N - [0:0]`, "COMMIT"].join("\n");
    expect(ownedChainsInSave("onsite", save)).toEqual([
      { table: "filter", chain: `${p}-F`, from: "FORWARD" },
      { table: "nat", chain: `${p}-N`, from: "" },
    ]);
    expect(ownedChainsInSave("master", save)).toEqual([]);
  });
  test.each([
    [{ nft: true, iptables: true, iptablesRestore: true }, "nft"],
    [{ nft: false, iptables: true, iptablesRestore: true }, "iptables"],
    [{ nft: false, iptables: true, iptablesRestore: false }, undefined],
    [{ nft: false, iptables: false, iptablesRestore: false }, undefined],
  ] as const)("firewall for %j: %p", (found, kind) => {
    expect(pickFirewall(found)).toBe(kind);
  });
});

const link = (ifname: string, extra: Partial<IpLink> = {}): IpLink => ({ ifname, ...extra });
const lanLinks = [link("br-lan", { kind: "bridge" }), link("lan0", { master: "br-lan", kind: "veth" }), link("wan0", { kind: "veth" }), link("eth0")];

describe("refusals and routes", () => {
  test.each([
    [{ allowed: false, lanBridge: "br-lan", uplinks: ["wan0"] }, "bridged_not_allowed", "[tunnel] bridged = true"],
    [{ allowed: true, lanBridge: undefined, uplinks: [] }, "invalid", "[tunnel] lan_bridge"],
    [{ allowed: true, lanBridge: "wan0", uplinks: ["wan0"] }, "invalid", "wan0 is an uplink"],
    [{ allowed: true, lanBridge: "br-x", uplinks: [] }, "no_device", "br-x"],
    [{ allowed: true, lanBridge: "eth0", uplinks: [] }, "invalid", "is not a bridge"],
    [{ allowed: true, lanBridge: "br-lan", uplinks: ["lan0"] }, "invalid", "has the uplink lan0 as a port"],
    [{ allowed: true, lanBridge: "br-lan", uplinks: ["wan0"] }, null, ""],
  ] as const)("onsite bridged %j → %p", (o, code, words) => {
    const r = onsiteBridgedRefusal({ ...o, links: lanLinks });
    expect(r?.code ?? null).toBe(code);
    if (r) expect(r.message).toContain(words);
  });
  test.each([
    ["192.168.77.50", ["192.168.77.1/24"], "from_secondary"],
    ["::ffff:192.168.77.50", ["192.168.77.1/24"], "from_secondary"],
    ["192.168.78.50", ["192.168.77.1/24"], null],
    ["10.0.0.9", ["192.168.77.1/24", "10.0.0.1/8"], "from_secondary"],
    [undefined, ["192.168.77.1/24"], null],
    ["fe80::1", ["192.168.77.1/24"], null],
    ["192.168.77.50", [], null],
  ] as const)("bridged asked from %p with secondary %j → %p", (who, addrs, code) => {
    const r = fromSecondaryRefusal(who, "eth1", addrs);
    expect(r?.code ?? null).toBe(code);
    if (r) expect(r.message).toMatch(/comes from .* on the secondary interface eth1 .* would cut this very connection/);
  });
  test("master routes: the onsite subnets, once each, never a default route nor one holding the relay", () => {
    expect(masterRoutes(["192.168.1.0/24", "192.168.1.0/24", "10.0.0.0/8", "0.0.0.0/0", "nonsense"], ["10.1.2.3"])).toEqual({
      routes: ["192.168.1.0/24"],
      skipped: [
        "10.0.0.0/8 contains 10.1.2.3, which must keep its own path (the relay); not routed through the tunnel",
        "0.0.0.0/0: a default route is never sent into a tunnel",
        expect.stringContaining('"nonsense" is not a subnet'),
      ],
    });
  });
  test("advertised subnets are the allow list's CIDRs, once each", () => {
    expect(advertisedSubnets(["192.168.1.0/24:22", "192.168.1.0/24:80", "10.0.0.5/32"].map(parseAllowEntry))).toEqual(["192.168.1.0/24", "10.0.0.5/32"]);
  });
  test.each([
    [true, [], false],
    [true, [{ mode: "routed" }], true],
    [false, [{ mode: "routed" }], false],
    [true, [{ mode: "routed" }, { mode: "bridged" }], false],
    [true, [{ mode: "bridged" }], false],
  ] as const)("dhcp=%p with ends %j: dnsmasq %p", (dhcp, ends, want) => {
    expect(dhcpWanted(dhcp, ends)).toBe(want);
  });
  test.each([
    ["10.99.0.2/30", "10.99.0.0/30"],
    ["10.99.0.1/31", "10.99.0.0/31"],
  ])("tunnel network of %s is %s", (a, n) => expect(tunnelNetwork(a)).toBe(n));
  test("hostile input is refused as invalid, with the value shown cut short", () => {
    expect(() => checkMode("bridged; rm -rf /")).toThrow('bad tunnel mode "bridged; rm -rf /"');
    expect(() => checkMode(undefined)).toThrow("bad tunnel mode");
    expect(() => checkSession("")).toThrow("bad session id");
    expect(() => checkSession("a\nb")).toThrow("bad session id");
    expect(() => checkSession("x".repeat(129))).toThrow("bad session id");
    expect(() => checkTunnelAddress("10.99.0.2", "onsite")).toThrow("bad onsite tunnel address");
    expect(() => checkTunnelAddress("10.99.0.2/33", "onsite")).toThrow("bad onsite tunnel address");
    expect(checkTunnelAddress("10.99.0.2/30", "onsite")).toBe("10.99.0.2/30");
  });
});

const li = (name: string, index: number): LinkInfo => ({ name, index, up: true, carrier: true, addrs: [], gateways: [] });
const snap = (...ls: LinkInfo[]) => new Map(ls.map((l) => [l.name, l]));

describe("the secondary interface's changes", () => {
  test.each([
    ["nothing", snap(li("eth1", 3)), snap(li("eth1", 3)), []],
    ["disappears", snap(li("eth1", 3)), snap(), ["the secondary interface eth1 disappeared"]],
    ["appears", snap(), snap(li("eth1", 4)), ["the secondary interface eth1 appeared"]],
    ["renamed away", snap(li("eth1", 3)), snap(li("enx00", 3)), ["the secondary interface eth1 was renamed to enx00; the tunnel's DHCP and bridge still name eth1"]],
    ["renamed to it", snap(li("usb0", 5)), snap(li("eth1", 5)), ["an interface was renamed from usb0 to eth1, the secondary interface"]],
    ["replaced (a new index)", snap(li("eth1", 3)), snap(li("eth1", 9)), ["the secondary interface eth1 disappeared", "the secondary interface eth1 appeared"]],
    ["another interface changes", snap(li("eth1", 3), li("eth0", 2)), snap(li("eth1", 3)), []],
  ])("%s", (_what, before, after, sentences) => {
    expect(secondaryChanges("eth1", before, after)).toEqual(sentences);
  });
});

test("the secondary interface's dnsmasq: DHCP only, on that interface, the master as the router", () => {
  const c = renderSecondaryDnsmasq("eth1", "192.168.77.1/24", "/s/leases");
  const lines = c.split("\n");
  for (const l of ["interface=eth1", "bind-interfaces", "listen-address=192.168.77.1", "dhcp-range=192.168.77.100,192.168.77.200,255.255.255.0,1h", "dhcp-option=option:router,192.168.77.1", "port=0", "dhcp-leasefile=/s/leases"]) {
    expect(lines).toContain(l);
  }
  expect(c).not.toContain("dns-server");
});

describe("TUN device on fake system calls", () => {
  class FakeTun implements TunOps {
    queue: Uint8Array[] = [];
    written: Uint8Array[] = [];
    last = 0;
    failOpen = 0;
    failIoctl = 0;
    failWrite = 0;
    ioctlArgs: { req: number; arg: Buffer }[] = [];
    closed: number[] = [];
    open() {
      if (this.failOpen) return this.err(this.failOpen);
      return 7;
    }
    ioctl(_fd: number, req: number, arg: Uint8Array) {
      this.ioctlArgs.push({ req, arg: Buffer.from(arg) });
      return this.failIoctl ? this.err(this.failIoctl) : 0;
    }
    read(_fd: number, buf: Uint8Array) {
      const p = this.queue.shift();
      if (!p) return this.err(E.EAGAIN);
      buf.set(p);
      return p.length;
    }
    write(_fd: number, buf: Uint8Array) {
      if (this.failWrite) return this.err(this.failWrite);
      this.written.push(Buffer.from(buf));
      return buf.length;
    }
    close(fd: number) {
      this.closed.push(fd);
      return 0;
    }
    errno() {
      return this.last;
    }
    private err(e: number) {
      this.last = e;
      return -1;
    }
  }

  test("TUNSETIFF gets the name and IFF_TUN|IFF_NO_PI (routed) or IFF_TAP|IFF_NO_PI (bridged)", () => {
    for (const [mode, flags, mtu] of [["routed", IFF_TUN | IFF_NO_PI, 1420], ["bridged", IFF_TAP | IFF_NO_PI, 1500]] as const) {
      const ops = new FakeTun();
      const d = LinuxTunDevice.open({ name: "agt-t1", mode, ops, clock: new FakeClock() });
      expect(d.mtu).toBe(mtu);
      expect(ops.ioctlArgs[0]!.req).toBe(TUNSETIFF);
      expect(ops.ioctlArgs[0]!.arg.equals(tunIfreq("agt-t1", flags))).toBe(true);
      expect(ops.ioctlArgs[0]!.arg.subarray(0, 7).toString()).toBe("agt-t1\0");
    }
    expect(() => tunIfreq("x".repeat(16), IFF_TUN)).toThrow("1 to 15 bytes");
  });

  test.each([
    ["open", E.ENOENT, "no_device", "modprobe tun"],
    ["open", E.EPERM, "no_device", "CAP_NET_ADMIN"],
    ["ioctl", E.EBUSY, "busy", "already in use"],
    ["ioctl", E.EPERM, "no_device", "permission denied"],
  ] as const)("%s failing with errno %p refuses %p saying %p (and closes the fd)", (step, e, code, words) => {
    const ops = new FakeTun();
    if (step === "open") ops.failOpen = e;
    else ops.failIoctl = e;
    let err: { code?: string; message: string } | undefined;
    try {
      LinuxTunDevice.open({ name: "agt-t1", mode: "routed", ops, clock: new FakeClock() });
    } catch (x) {
      err = x as never;
    }
    expect(err?.code).toBe(code);
    expect(err?.message).toContain(words);
    expect(ops.closed).toEqual(step === "ioctl" ? [7] : []);
  });

  test("reads in batches on its timer without waiting for the consumer; a full batch continues at once", () => {
    const ops = new FakeTun();
    const clock = new FakeClock();
    const d = LinuxTunDevice.open({ name: "agt-t1", mode: "routed", ops, clock, periodMs: 5 });
    const got: number[] = [];
    d.onPacket((p) => got.push(p[0]!));
    for (let i = 0; i < READ_BATCH + 10; i++) ops.queue.push(new Uint8Array([i & 0xff, 1, 2]));
    clock.advance(4);
    expect(got.length).toBe(0);
    // One period: a full batch, then the rest at once (a 0 ms timer), not a period later.
    clock.advance(1);
    expect(got.length).toBe(READ_BATCH + 10);
    expect(got.slice(0, 3)).toEqual([0, 1, 2]);
    expect(d.counters.rxPackets).toBe(READ_BATCH + 10);
    clock.advance(50);
    expect(got.length).toBe(READ_BATCH + 10);
  });

  test("write: true when the kernel took it; false and counted when refused, empty, or closed", async () => {
    const ops = new FakeTun();
    const d = LinuxTunDevice.open({ name: "agt-t1", mode: "routed", ops, clock: new FakeClock() });
    expect(d.write(new Uint8Array([0x45, 0]))).toBe(true);
    expect(d.write(new Uint8Array(0))).toBe(false);
    ops.failWrite = E.EAGAIN;
    expect(d.write(new Uint8Array([0x45]))).toBe(false);
    ops.failWrite = 0;
    await d.close();
    await d.close();
    expect(ops.closed).toEqual([7]);
    expect(d.write(new Uint8Array([0x45]))).toBe(false);
    expect(d.counters).toMatchObject({ txPackets: 1, txDropped: 3 });
  });

  test("a read error other than EAGAIN stops reading and is reported", () => {
    const ops = new FakeTun();
    const clock = new FakeClock();
    const errors: string[] = [];
    const d = LinuxTunDevice.open({ name: "agt-t1", mode: "routed", ops, clock, periodMs: 1, onError: (e) => errors.push(e.message) });
    d.onPacket(() => {});
    ops.read = () => {
      ops.last = E.EBADF;
      return -1;
    };
    clock.advance(1);
    clock.advance(10);
    expect(errors).toEqual([`recv on agt-t1 (errno ${E.EBADF})`]);
    expect(d.counters.readErrors).toBe(1);
  });
});

describe("the daemons' hosts from the config", () => {
  test("the relay's address is kept out of the master's tunnel routes; a host name cannot be", async () => {
    const { keepOutOf } = await import("../src/tunnel/packet/linux.ts");
    expect(keepOutOf({ relay: { host: "10.1.2.3", port: 443 } })).toEqual(["10.1.2.3"]);
    expect(keepOutOf({ relay: { host: "relay.example.net", port: 443 } })).toEqual([]);
    expect(keepOutOf({})).toEqual([]);
  });
  test("off Linux the hosts refuse, saying TUN/TAP tunnels are not there", async () => {
    const { onsiteTunnelHost, masterTunnelHost } = await import("../src/tunnel/packet/linux.ts");
    const { resolveConfig } = await import("../src/config.ts");
    const { createLogger } = await import("../src/log.ts");
    const cfg = resolveConfig([]);
    const log = createLogger({ level: "silent" });
    await expect(onsiteTunnelHost(cfg, log, "darwin").open({ session: "s", mode: "routed" })).rejects.toThrow("no packet tunnel host");
    await expect(masterTunnelHost(cfg, log, "darwin").open({ session: "s", mode: "routed" })).rejects.toThrow("no packet tunnel host");
    expect(onsiteTunnelHost(cfg, log, "linux").constructor.name).toBe("LinuxOnsiteHost");
    expect(masterTunnelHost(cfg, log, "linux").constructor.name).toBe("LinuxMasterHost");
  });
});

describe("upRouted: a routed end comes up behind its rules, or is undone", () => {
  const rules: MasterRules = { role: "master", session: "s-1", dev: "agt-mX", secondary: "eth1" };
  /** Every step as one line, in order; `failAt` makes the step whose line starts so fail. */
  async function attempt(failAt: string | null) {
    const steps: string[] = [];
    const exec = async (argv: readonly string[]) => {
      steps.push(argv.join(" "));
      return failAt && argv.join(" ").startsWith(failAt) ? { code: 2, stdout: "", stderr: "RTNETLINK answers: nope" } : { code: 0, stdout: "", stderr: "" };
    };
    const fw: TunnelFirewall = {
      kind: "nft",
      apply: async () => {
        steps.push("fw apply");
        if (failAt === "fw apply") throw new Error("nft: nope");
      },
      remove: async () => void steps.push("fw remove"),
      sweep: async () => [],
    };
    const device = new MemoryPacketDevice("agt-mX", "routed");
    const writeSysctl = (path: string, v: string) => void steps.push(`sysctl ${path}=${v.trim()}`);
    const run = upRouted({ ip: new IpCommands(exec), fw, rules, device, name: "agt-mX", address: "10.77.0.1/30", routes: ["192.168.1.0/24"], writeSysctl });
    const undo = await run.then((u) => u, (e: Error) => e);
    return { steps, undo, device };
  }
  const up = ["fw apply", "sysctl /proc/sys/net/ipv4/ip_forward=1", "ip addr add 10.77.0.1/30 dev agt-mX", `ip link set dev agt-mX mtu ${TUNNEL_MTU.routed} up`, "ip route replace 192.168.1.0/24 dev agt-mX"];
  const down = ["ip route del 192.168.1.0/24 dev agt-mX", "fw remove", "ip link del dev agt-mX"];

  test("all goes well: the rules before anything else, and the undo it returns takes it all down", async () => {
    const r = await attempt(null);
    expect(r.steps).toEqual(up);
    expect(typeof r.undo).toBe("function");
    await (r.undo as () => Promise<void>)();
    expect(r.steps.slice(up.length)).toEqual(down);
    expect(r.device.closed).toBe(true);
  });

  test.each([
    ["fw apply", 1],
    ["ip addr add", 3],
    ["ip link set", 4],
    ["ip route replace", 5],
  ] as const)("%s fails: the error is thrown and what was done is undone", async (failAt, done) => {
    const r = await attempt(failAt);
    expect(r.undo).toBeInstanceOf(Error);
    expect(r.steps).toEqual([...up.slice(0, done), ...down]);
    expect(r.device.closed).toBe(true);
  });
});
