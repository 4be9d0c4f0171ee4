// scripts/leaks.ts: which leftovers count as ours, decided from names and a process table.
import { expect, test } from "bun:test";
import { agentRuleLines, isTestRunner, leakedNamespaces, leakedProcesses, namespaceTag, ourTunDevices, startedByTests, type Proc } from "../scripts/leaks.ts";
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
const proc = (pid: number, ppid: number, argv: string[], state = "S"): Proc => ({ pid, ppid, argv, state });

test.each([
  [["/usr/bin/bun", `${ROOT}/src/main.ts`, "--role", "relay"], true],
  [["ip", "netns", "exec", "agt-1x3k-up-on", "/usr/bin/bun", "x.ts"], true],
  [["/usr/bin/bun", `${ROOT}/test/fixtures/nat/lan-server.ts`, "80", "7"], true],
  [["/usr/sbin/sshd", "-D", "-f", "/tmp/agent-sshd-Ab12Cd/sshd_config"], true],
  [["iperf3", "-s", "--logfile=/tmp/agent-iperf-Zz99aa/log"], true],
  [["flock", "/tmp/agent-heavy.lock", "bun", "test"], false], // the shared lock, not a temp dir
  [["/usr/bin/bun", "/work/other/src/main.ts"], false], // another checkout's daemon
  [["bash"], false],
  [["sleep", "30"], false],
])("started by tests: %p → %p", (argv, ours) => {
  expect(startedByTests(argv, ROOT)).toBe(ours);
});

test("a process of a live `bun test` is that run's; one whose run ended (reparented) is a leak", () => {
  const table = [
    proc(1, 0, ["/sbin/init"]),
    proc(100, 1, ["node_modules/.bin/bun", "test", "--timeout", "30000"]),
    proc(101, 100, ["ip", "netns", "exec", "agt-2s-up-on", "bun", `${ROOT}/src/main.ts`]),
    proc(102, 101, ["/usr/bin/dnsmasq", "--conf-file=/tmp/agent-up-lab-Qw12Er/ap/dnsmasq.conf"]),
    proc(200, 1, ["/usr/bin/bun", `${ROOT}/src/main.ts`, "--role", "onsite"]), // orphaned: its run is gone
    proc(201, 1, ["/usr/bin/bun", `${ROOT}/src/main.ts`], "Z"), // a zombie holds nothing
    proc(300, 1, ["make", "test"]),
    proc(301, 300, ["/usr/bin/bun", `${ROOT}/scripts/leaks.ts`]),
  ];
  expect(leakedProcesses(table, ROOT, new Set([300, 301])).map((p) => p.pid)).toEqual([200]);
  expect(isTestRunner(["/x/node_modules/.bin/bun", "test", "test/a.test.ts"])).toBe(true);
  expect(isTestRunner(["/usr/bin/bun", "scripts/leaks.ts"])).toBe(false);
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
});

test("TUN/TAP devices: ours by name", () => {
  const out = "5: agt0: <POINTOPOINT,NOARP> mtu 1500 qdisc noop state DOWN\\    link/none\n6: tun0: <POINTOPOINT> mtu 1500\n7: agent-tun1: <> mtu 1400\n";
  expect(ourTunDevices(out)).toEqual(["agt0", "agent-tun1"]);
});
