// scripts/leaks.ts: which leftovers count as ours, decided from names and a process table.
import { expect, test } from "bun:test";
import { agentRuleLines, isBun, leakedNamespaces, leakedProcesses, namespaceTag, ourTunDevices, startedByTests, type Proc } from "../scripts/leaks.ts";
import { nsName, RUN_TAG } from "./helpers/netns.ts";

test("the names netns.ts makes carry this run's pid, and the leak check reads it back", () => {
  const name = nsName("nt-rtr");
  expect(namespaceTag(name)).toBe(RUN_TAG);
  expect(parseInt(RUN_TAG, 36)).toBe(process.pid);
  // While this run lives, its namespaces are not leaks; once it is gone, they are.
  expect(leakedNamespaces([name], (pid) => pid === process.pid)).toEqual([]);
  expect(leakedNamespaces([name], () => false)).toEqual([name]);
});

test.each([
  ["agt-1x3k-nt-cli", "1x3k"],
  ["agt-1x3k-up-r1", "1x3k"],
  ["nt-cli", undefined], // a fixed name of an older checkout, maybe running now: not ours to judge
  ["ns-rtr", undefined],
  ["agt-", undefined],
  ["agt-UPPER-x", undefined],
  ["myagt-1x3k-x", undefined],
])("namespace %p has run tag %p", (name, tag) => {
  expect(namespaceTag(name)).toBe(tag);
});

const ROOT = "/work/wt";
const proc = (pid: number, ppid: number, argv: string[], state = "S", cwd = "/"): Proc => ({ pid, ppid, argv, state, cwd });

test.each([
  [["/usr/bin/bun", `${ROOT}/src/main.ts`, "--role", "relay"], "/", true],
  [["/usr/bin/bun", `${ROOT}/test/fixtures/nat/lan-server.ts`, "80", "7"], "/", true],
  [["ip", "netns", "exec", "agt-1x3k-up-on", "/usr/bin/bun", "x.ts"], ROOT, true],
  [["/usr/sbin/sshd", "-D", "-f", "/tmp/agent-sshd-Ab12Cd/sshd_config"], ROOT, true],
  [["iperf3", "-s", "--logfile=/tmp/agent-iperf-Zz99aa/log"], ROOT, true],
  // Temp dirs and namespace names are shared by every checkout: another one's are not ours.
  [["/usr/sbin/sshd", "-D", "-f", "/tmp/agent-sshd-Ab12Cd/sshd_config"], "/work/other", false],
  [["ip", "netns", "exec", "agt-1x3k-up-on", "/usr/bin/bun", "x.ts"], "/work/other", false],
  [["/x/bun.exe", "/work/other/src/main.ts", "--bundle", "/tmp/agent-bench-ours-RyvL4F/relay.bundle"], "/work/other", false],
  [["flock", "/tmp/agent-heavy.lock", "bun", "test"], ROOT, false], // the shared lock, not a temp dir
  [["bash"], ROOT, false],
  [["sleep", "30"], ROOT, false],
])("started by this checkout's tests: %p in %p → %p", (argv, cwd, ours) => {
  expect(startedByTests({ argv, cwd }, ROOT)).toBe(ours);
});

test("a process some live bun process owns (a test run, a benchmark) is not a leak; an orphan is", () => {
  const table = [
    proc(1, 0, ["/sbin/init"]),
    proc(100, 1, ["node_modules/.bin/bun", "test", "--timeout", "30000"], "S", ROOT),
    proc(101, 100, ["ip", "netns", "exec", "agt-2s-up-on", "bun", `${ROOT}/src/main.ts`], "S", ROOT),
    proc(102, 101, ["/usr/bin/dnsmasq", "--conf-file=/tmp/agent-up-lab-Qw12Er/ap/dnsmasq.conf"], "S", ROOT),
    proc(110, 1, ["/x/bun.exe", "bench/index.ts"], "S", ROOT), // a benchmark run owns its daemons
    proc(111, 110, ["/x/bun.exe", `${ROOT}/src/main.ts`, "--role", "relay"]),
    proc(200, 1, ["/usr/bin/bun", `${ROOT}/src/main.ts`, "--role", "onsite"]), // orphaned: its run is gone
    proc(201, 1, ["/usr/bin/bun", `${ROOT}/src/main.ts`], "Z"), // a zombie holds nothing
    proc(202, 1, ["/usr/sbin/sshd", "-f", "/tmp/agent-sshd-Ab12Cd/sshd_config"], "S", ROOT), // orphan, started here
    proc(203, 1, ["/usr/sbin/sshd", "-f", "/tmp/agent-sshd-Xy34Zz/sshd_config"], "S", "/work/other"), // another checkout's
    proc(300, 1, ["make", "test"], "S", ROOT),
    proc(301, 300, ["/usr/bin/bun", `${ROOT}/scripts/leaks.ts`], "S", ROOT),
  ];
  expect(leakedProcesses(table, ROOT, new Set([300, 301])).map((p) => p.pid)).toEqual([200, 202]);
  expect(isBun(["/x/node_modules/bun/bin/bun.exe", "test"])).toBe(true);
  expect(isBun(["/usr/bin/bash"])).toBe(false);
});

test("firewall lines: the agent's chains, tags and tables only", () => {
  const save = [
    "*nat",
    ":AGENT-NAT - [0:0]",
    "-A PREROUTING -j AGENT-NAT",
    '-A FOO -m comment --comment "agent-nat id=deadbeef exp=1" -j DNAT',
    "-A PREROUTING -p tcp --dport 80 -j DNAT --to-destination 10.0.0.1",
    "COMMIT",
  ].join("\n");
  expect(agentRuleLines(save)).toEqual([":AGENT-NAT - [0:0]", "-A PREROUTING -j AGENT-NAT", '-A FOO -m comment --comment "agent-nat id=deadbeef exp=1" -j DNAT']);
  expect(agentRuleLines("table ip agent_nat {\n}\ntable inet agent_ap {\n}\ntable ip filter {\n}")).toEqual(["table ip agent_nat {", "table inet agent_ap {"]);
  expect(agentRuleLines("table ip nt_foreign {\n comment \"user agent\"\n}")).toEqual([]);
  // Packet tunnels (src/tunnel/packet/names.ts): nft tables and iptables fallback chains.
  expect(agentRuleLines("table inet agent_tun_o1a2b3c4d {\ntable inet agent_tun_x {\n")).toEqual(["table inet agent_tun_o1a2b3c4d {"]);
  expect(agentRuleLines(":AGT-TUN-m1a2b3c4d-F - [0:0]\n-A FORWARD -j AGT-TUN-m1a2b3c4d-F\n:AGT-OTHER - [0:0]")).toEqual([":AGT-TUN-m1a2b3c4d-F - [0:0]", "-A FORWARD -j AGT-TUN-m1a2b3c4d-F"]);
});

test("TUN/TAP devices: ours by name", () => {
  const out = "5: agt0: <POINTOPOINT,NOARP> mtu 1500 qdisc noop state DOWN\\    link/none\n6: tun0: <POINTOPOINT> mtu 1500\n7: agent-tun1: <> mtu 1400\n";
  expect(ourTunDevices(out)).toEqual(["agt0", "agent-tun1"]);
});
