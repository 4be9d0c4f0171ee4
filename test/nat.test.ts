// Unit tests of the NAT module's pure pieces (validation, add decision, plan, renderers and
// parsers, conntrack argv, seed requests, state file) and of the service against the
// in-memory backend. Real firewalls are exercised in nat-system.test.ts.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ControlServer } from "../src/control.ts";
import { resolveConfig } from "../src/config.ts";
import { RuntimeError, UsageError } from "../src/errors.ts";
import { createLogger } from "../src/log.ts";
import { parseAllowEntry, parseIPv4, PRIVATE_RANGES } from "../src/netaddr.ts";
import { FakeBackend, verifyTags, type Exec, type ExecResult } from "../src/nat/backend.ts";
import { chooseBackend, createNatComponent, parseIpAddrJson } from "../src/nat/component.ts";
import { conntrackCutter, conntrackDeleteArgv, flowOf, parseConntrackList } from "../src/nat/conntrack.ts";
import { IptablesBackend, parseSave, renderRestore } from "../src/nat/iptables.ts";
import { NftBackend, parseNftJson, renderNft } from "../src/nat/nft.ts";
import { isNoop, plan, type InstalledRule } from "../src/nat/plan.ts";
import { decideAdd, FieldError, forbiddenTarget, fromSeedRequest, kernelExpiryS, parseTag, ruleTag, validateRequest, type NatLimits, type Rule, type RuleSpec } from "../src/nat/rule.ts";
import { NatService, SAVE_RETRY_MS } from "../src/nat/service.ts";
import { FakeClock } from "../src/clock.ts";
import { removeStaleTemps } from "../src/os/atomic.ts";
import { bindToSession, checkSessionCaps, type SessionBinding } from "../src/nat/session.ts";
import { mayAskNat } from "../src/tunnel/pairing.ts";
import { FileRuleStore, MemoryRuleStore, parseState } from "../src/nat/store.ts";
import { waitFor } from "./helpers/wait.ts";

const limits: NatLimits = {
  minTtlMs: 1000,
  maxTtlMs: 8 * 3_600_000,
  maxRules: 3,
  allowAnySource: false,
  allow: ["192.168.1.0/24", "10.0.0.5/32:22,80"].map(parseAllowEntry),
};
const own = [{ addr: parseIPv4("192.168.1.1"), prefix: 24 }, { addr: parseIPv4("203.0.113.9"), prefix: 24 }];
const good = { src: "203.0.113.7", port: "8080", to: "192.168.1.50:80", ttl: "30m" };

describe("validateRequest", () => {
  test.each([
    [{}, { proto: "tcp", src: "203.0.113.7/32", port: 8080, toAddr: "192.168.1.50", toPort: 80, ttlMs: 1_800_000 }],
    [{ proto: "udp", src: "198.51.100.0/24", iface: "eth0.2" }, { proto: "udp", src: "198.51.100.0/24", iface: "eth0.2" }],
    [{ port: 8080, ttl: "1s" }, { port: 8080, ttlMs: 1000 }], // a JSON number port is fine
    [{ to: "10.0.0.5:22" }, { toAddr: "10.0.0.5", toPort: 22 }], // the allow list's port list
    [{ ttl: "8h" }, { ttlMs: 8 * 3_600_000 }],
  ])("accepts %j", (override, expected) => {
    expect(validateRequest({ ...good, ...override }, limits, own)).toMatchObject(expected);
  });

  test.each([
    [{ proto: "icmp" }, "proto", /expected tcp or udp/],
    [{ src: undefined }, "src", /missing/],
    [{ src: "" }, "src", /empty/],
    [{ src: 1234 }, "src", /as a string, got number/],
    [{ src: "203.0.113.7;reboot" }, "src", /shell character ";"/],
    [{ src: "203.0.113.7\n" }, "src", /control character/],
    [{ src: "203.0.113.7 " }, "src", /space or shell character/],
    [{ src: "host.example.com" }, "src", /expected an IPv4 address/],
    [{ src: "203.0.113.07" }, "src", /expected an IPv4 address/],
    [{ src: "203.0.113.7/33" }, "src", /prefix length/],
    [{ src: "203.0.113.7/24" }, "src", /host bits set/],
    [{ src: "0.0.0.0/0" }, "src", /allow_any_source/],
    [{ src: "224.0.0.1" }, "src", /not a unicast source/],
    [{ iface: "eth0;ls" }, "iface", /shell character/],
    [{ iface: "-eth0" }, "iface", /interface name/],
    [{ iface: "averyveryverylongname" }, "iface", /interface name/],
    [{ port: "0" }, "port", /1-65535/],
    [{ port: "65536" }, "port", /1-65535/],
    [{ port: "-1" }, "port", /1-65535/],
    [{ port: "22-80" }, "port", /1-65535/],
    [{ port: "0x16" }, "port", /1-65535/],
    [{ port: "080" }, "port", /1-65535/],
    [{ port: 80.5 }, "port", /as a string/],
    [{ to: "nas.lan:80" }, "to", /host names are not resolved/],
    [{ to: "192.168.1.50" }, "to", /IPv4:PORT/],
    [{ to: "192.168.1.50:0" }, "to", /1-65535/],
    [{ to: "192.168.2.50:80" }, "to", /outside the LAN allow list/],
    [{ to: "10.0.0.5:443" }, "to", /outside the LAN allow list/],
    [{ to: "192.168.1.1:80" }, "to", /this device's own addresses/],
    [{ to: "203.0.113.9:80" }, "to", /this device's own addresses/],
    [{ to: "127.0.0.1:80" }, "to", /loopback/],
    [{ to: "169.254.0.1:80" }, "to", /link-local/],
    [{ to: "239.1.1.1:80" }, "to", /multicast/],
    [{ to: "255.255.255.255:80" }, "to", /the broadcast address/],
    [{ to: "192.168.1.255:80" }, "to", /broadcast address of 192\.168\.1\.0\/24/],
    [{ to: "192.168.1.0:80" }, "to", /network address/],
    [{ ttl: "0s" }, "ttl", /shorter than nat\.min_ttl \(1s\)/],
    [{ ttl: "9h" }, "ttl", /longer than nat\.max_ttl \(8h\)/],
    [{ ttl: "30" }, "ttl", /expected a duration/],
    [{ ttl: "-5m" }, "ttl", /expected a duration/],
  ])("refuses %j in field %s", (override, field, message) => {
    let err: unknown;
    try {
      validateRequest({ ...good, ...override }, limits, own);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FieldError);
    expect((err as FieldError).field).toBe(field as FieldError["field"]);
    expect((err as FieldError).message).toMatch(message);
  });

  test("0.0.0.0/0 is accepted only with nat.allow_any_source", () => {
    expect(validateRequest({ ...good, src: "0.0.0.0/0" }, { ...limits, allowAnySource: true }, own).src).toBe("0.0.0.0/0");
  });

  test("the default allow list is the private ranges", () => {
    const priv = { ...limits, allow: PRIVATE_RANGES.map(parseAllowEntry) };
    expect(validateRequest({ ...good, to: "172.16.3.4:22" }, priv, own).toAddr).toBe("172.16.3.4");
    expect(() => validateRequest({ ...good, to: "8.8.8.8:53" }, priv, own)).toThrow(/outside the LAN allow list/);
  });

  test.each([
    ["10.0.0.1", undefined],
    ["0.1.2.3", "is a reserved address"],
    ["250.0.0.1", "is a reserved address"],
  ])("forbiddenTarget(%s)", (addr, why) => {
    expect(forbiddenTarget(parseIPv4(addr), [])).toBe(why);
  });
});

const spec = (over: Partial<RuleSpec> = {}): RuleSpec => ({ proto: "tcp", src: "203.0.113.7/32", port: 8080, toAddr: "192.168.1.50", toPort: 80, ttlMs: 60_000, ...over });
const rule = (id: string, over: Partial<Rule> = {}): Rule => ({ id, ...spec(), owner: "local", createdAt: 0, expiresAt: 60_000, ...over });

describe("decideAdd", () => {
  let n = 0;
  const ids = () => `0000000${++n}`.slice(-8);
  test("a new forward gets a new rule", () => {
    const d = decideAdd(spec(), "local", [], 1000, ids, 3);
    expect(d).toMatchObject({ kind: "new", rule: { owner: "local", createdAt: 1000, expiresAt: 61_000 } });
  });
  test("an identical request extends the same rule, never shortens it", () => {
    const active = [rule("aaaaaaaa", { expiresAt: 50_000 })];
    expect(decideAdd(spec(), "local", active, 10_000, ids, 3)).toMatchObject({ kind: "extend", rule: { id: "aaaaaaaa", expiresAt: 70_000 } });
    expect(decideAdd(spec({ ttlMs: 1000 }), "local", active, 10_000, ids, 3)).toMatchObject({ kind: "extend", rule: { id: "aaaaaaaa", expiresAt: 50_000 } });
  });
  test.each([
    [{ toAddr: "192.168.1.51" }, "refuse"], // same port and source, other target
    [{ src: "203.0.113.0/24", toPort: 81 }, "refuse"], // overlapping source
    [{ src: "198.51.100.1/32", toPort: 81 }, "new"], // other source: both may coexist
    [{ proto: "udp" as const }, "new"],
    [{ port: 8081 }, "new"],
  ])("against an active rule, %j is %s", (over, kind) => {
    expect(decideAdd(spec(over), "local", [rule("aaaaaaaa")], 0, ids, 3).kind).toBe(kind as "new" | "refuse");
  });
  test("the cap counts live rules only", () => {
    const three = [rule("a0000001", { port: 1 }), rule("a0000002", { port: 2 }), rule("a0000003", { port: 3 })];
    expect(decideAdd(spec(), "local", three, 0, ids, 3)).toMatchObject({ kind: "refuse", error: { field: "rules", message: expect.stringMatching(/nat\.max_rules = 3/) } });
    expect(decideAdd(spec(), "local", three, 60_000, ids, 3).kind).toBe("new");
  });
});

describe("plan", () => {
  const tag = (r: Rule): InstalledRule => parseTag(ruleTag(r))!;
  const a = rule("aaaaaaaa", { expiresAt: 10_000 });
  const b = rule("bbbbbbbb", { expiresAt: 20_000 });
  const orphan: InstalledRule = { id: "cccccccc", expiresAt: 99_000 };
  test.each([
    ["nothing", [], [], 0, { desired: [], add: [], remove: [], expired: [], orphans: [], nextExpiry: undefined }],
    ["in sync", [a, b], [tag(a), tag(b)], 0, { desired: [a, b], add: [], remove: [], expired: [], nextExpiry: 10_000 }],
    ["expired while down", [a, b], [tag(a), tag(b)], 10_000, { desired: [b], remove: [tag(a)], expired: [a], nextExpiry: 20_000 }],
    ["lost from the firewall", [a, b], [tag(b)], 0, { add: [a], remove: [] }],
    ["orphan in the firewall", [a], [tag(a), orphan], 0, { remove: [orphan], orphans: [orphan] }],
    ["state lost", [], [tag(a), orphan], 0, { desired: [], remove: [tag(a), orphan], orphans: [tag(a), orphan] }],
    ["expired and already gone", [a], [], 15_000, { desired: [], add: [], remove: [], expired: [a] }],
    ["extended expiry", [{ ...a, expiresAt: 30_000 }], [tag(a)], 0, { retag: [{ ...a, expiresAt: 30_000 }] }],
  ] as const)("%s", (_name, wanted, installed, now, expected) => {
    expect(plan([...wanted], [...installed], now)).toMatchObject(expected as object);
  });
  test("rules whose owner is gone are removed like expired ones, not as orphans", () => {
    const s = { ...b, owner: "s-gone" };
    const p = plan([a, s], [tag(a), tag(s)], 0, (owner) => owner === "local");
    expect(p).toMatchObject({ desired: [a], ownerless: [s], remove: [tag(s)], orphans: [], expired: [] });
    // An expired one is just expired.
    expect(plan([a, s], [tag(a), tag(s)], 25_000, (owner) => owner === "local")).toMatchObject({ ownerless: [], expired: [a, s] });
  });
  test("isNoop", () => {
    expect(isNoop(plan([a], [tag(a)], 0))).toBe(true);
    expect(isNoop(plan([a], [tag(a)], 10_000))).toBe(false);
  });
});

describe("tags", () => {
  test("round trip, rounding the expiry up to a second", () => {
    expect(ruleTag({ id: "0123abcd", expiresAt: 1_700_000_000_001 })).toBe("agent-nat id=0123abcd exp=1700000001");
    expect(parseTag("agent-nat id=0123abcd exp=1700000001")).toEqual({ id: "0123abcd", expiresAt: 1_700_000_001_000 });
  });
  test.each(["foreign", "agent-nat id=XYZ exp=1", "agent-nat id=0123abcd exp=1 extra", "agent-nat id=0123abcd"])("%j is not ours", (c) => {
    expect(parseTag(c)).toBeUndefined();
  });
});

const r1 = rule("0123abcd", { expiresAt: 1_700_000_000_000 });
const r2 = rule("89abcdef", { proto: "udp", src: "198.51.100.0/24", iface: "wan", port: 5000, toAddr: "192.168.1.60", toPort: 5001, expiresAt: 1_700_000_100_000 });

describe("the kernel's copy of the expiry", () => {
  // Whatever the process's time zone, the kernel gets the same instant: iptables a UTC stamp,
  // nft a number of seconds (nft would read a date string in its own local time).
  const zones = ["UTC", "America/New_York", "Asia/Kathmandu", "Pacific/Chatham"];
  test.each([
    // [expiresAt ms, the second the kernel ends it, iptables' last matching second, guard start]
    [1_700_000_000_000, 1_700_000_000, "2023-11-14T22:13:19", "2023-11-14T22:13:20"],
    [1_700_000_000_001, 1_700_000_001, "2023-11-14T22:13:20", "2023-11-14T22:13:21"],
    [1_798_761_599_500, 1_798_761_600, "2026-12-31T23:59:59", "2027-01-01T00:00:00"],
  ])("expiry %d ends at second %d", (expiresAt, end, stop, start) => {
    const r = rule("0123abcd", { expiresAt });
    const saved = process.env.TZ;
    try {
      for (const tz of zones) {
        process.env.TZ = tz;
        expect(kernelExpiryS(r)).toBe(end);
        const ipt = renderRestore([r]).split("\n").filter((l) => l.startsWith("-A"));
        expect(ipt.map((l) => /--date(?:stop|start) (\S+)/.exec(l)![1])).toEqual([stop, stop, start]);
        const nft = renderNft([r]).split("\n").filter((l) => l.startsWith("add rule"));
        expect(nft.map((l) => /meta time (<|>=) (\d+)/.exec(l)!.slice(1).join(" "))).toEqual([`< ${end}`, `< ${end}`, `>= ${end}`]);
      }
    } finally {
      if (saved === undefined) delete process.env.TZ;
      else process.env.TZ = saved;
    }
  });
});

describe("iptables rendering", () => {
  test("one restore input declares (and so flushes) only the agent's chains", () => {
    expect(renderRestore([r1, r2])).toBe(
      [
        "*nat",
        ":AGENT-NAT - [0:0]",
        // 1700000000 is 2023-11-14T22:13:20Z: the last matching second is :19, the guard starts at :20.
        '-A AGENT-NAT -s 203.0.113.7/32 -p tcp -m tcp --dport 8080 -m time --datestop 2023-11-14T22:13:19 -m comment --comment "agent-nat id=0123abcd exp=1700000000" -j DNAT --to-destination 192.168.1.50:80',
        '-A AGENT-NAT -s 198.51.100.0/24 -i wan -p udp -m udp --dport 5000 -m time --datestop 2023-11-14T22:14:59 -m comment --comment "agent-nat id=89abcdef exp=1700000100" -j DNAT --to-destination 192.168.1.60:5001',
        "COMMIT",
        "*filter",
        ":AGENT-FWD - [0:0]",
        '-A AGENT-FWD -s 203.0.113.7/32 -d 192.168.1.50/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT -m time --datestop 2023-11-14T22:13:19 -m comment --comment "agent-nat id=0123abcd exp=1700000000" -j ACCEPT',
        '-A AGENT-FWD -s 198.51.100.0/24 -i wan -d 192.168.1.60/32 -p udp -m udp --dport 5001 -m conntrack --ctstate DNAT -m time --datestop 2023-11-14T22:14:59 -m comment --comment "agent-nat id=89abcdef exp=1700000100" -j ACCEPT',
        '-A AGENT-FWD -m conntrack --ctstate DNAT --ctproto tcp --ctorigsrc 203.0.113.7/32 --ctorigdstport 8080 --ctreplsrc 192.168.1.50 --ctreplsrcport 80 -m time --datestart 2023-11-14T22:13:20 -m comment --comment "agent-nat-end id=0123abcd exp=1700000000" -j DROP',
        '-A AGENT-FWD -m conntrack --ctstate DNAT --ctproto udp --ctorigsrc 198.51.100.0/24 --ctorigdstport 5000 --ctreplsrc 192.168.1.60 --ctreplsrcport 5001 -m time --datestart 2023-11-14T22:15:00 -m comment --comment "agent-nat-end id=89abcdef exp=1700000100" -j DROP',
        "COMMIT",
        "",
      ].join("\n"),
    );
    expect(renderRestore([])).toBe("*nat\n:AGENT-NAT - [0:0]\nCOMMIT\n*filter\n:AGENT-FWD - [0:0]\nCOMMIT\n");
  });
  test("parseSave reads tags from the agent's chain only", () => {
    const save = readFileSync(join(import.meta.dir, "fixtures/nat/iptables-save.txt"), "utf8");
    expect(parseSave(save, "AGENT-NAT")).toEqual([{ id: "0123abcd", expiresAt: 1_700_000_000_000 }, { id: "deadbeef", expiresAt: 1_700_000_500_000 }]);
    expect(parseSave(save, "AGENT-FWD")).toEqual([{ id: "0123abcd", expiresAt: 1_700_000_000_000 }]);
  });
});

describe("nft rendering", () => {
  test("one transaction: declare, flush, add", () => {
    const s = renderNft([r2]);
    expect(s.split("\n").slice(4)).toEqual([
      "flush table ip agent_nat",
      'add rule ip agent_nat prerouting iifname "wan" ip saddr 198.51.100.0/24 udp dport 5000 meta time < 1700000100 dnat to 192.168.1.60:5001 comment "agent-nat id=89abcdef exp=1700000100"',
      'add rule ip agent_nat forward iifname "wan" ip saddr 198.51.100.0/24 ip daddr 192.168.1.60 udp dport 5001 ct status dnat meta time < 1700000100 accept comment "agent-nat id=89abcdef exp=1700000100"',
      'add rule ip agent_nat forward meta l4proto udp ct status dnat ct original ip saddr 198.51.100.0/24 ct original proto-dst 5000 ct reply ip saddr 192.168.1.60 ct reply proto-src 5001 meta time >= 1700000100 drop comment "agent-nat-end id=89abcdef exp=1700000100"',
      "",
    ]);
  });
  test("end guards come after every accept", () => {
    const lines = renderNft([r1, r2]).split("\n");
    const lastAccept = lines.findLastIndex((l) => l.includes(" accept "));
    const firstDrop = lines.findIndex((l) => l.includes(" drop "));
    expect(firstDrop).toBeGreaterThan(lastAccept);
  });
  test("parseNftJson keeps our tags per chain and ignores others", () => {
    const json = readFileSync(join(import.meta.dir, "fixtures/nat/nft-list.json"), "utf8");
    expect(parseNftJson(json)).toEqual({ prerouting: [{ id: "0123abcd", expiresAt: 1_700_000_000_000 }], forward: [{ id: "0123abcd", expiresAt: 1_700_000_000_000 }], guards: [] });
  });
});

/** An exec that answers from a script and records every argv. */
function scriptedExec(answer: (argv: readonly string[], stdin?: string) => Partial<ExecResult>): Exec & { calls: string[][] } {
  const calls: string[][] = [];
  const exec = (async (argv: readonly string[], opts?: { stdin?: string }) => {
    calls.push([...argv]);
    return { code: 0, stdout: "", stderr: "", ...answer(argv, opts?.stdin) };
  }) as Exec & { calls: string[][] };
  exec.calls = calls;
  return exec;
}

describe("iptables backend with a scripted exec", () => {
  test("applies with restore --noflush -w, adds missing jumps, verifies", async () => {
    let saved = "";
    const jumps = new Set<string>();
    const exec = scriptedExec((argv, stdin) => {
      if (argv[0] === "iptables-restore") saved = stdin!;
      if (argv[0] === "iptables-save") return { stdout: saved.split("\n").filter((l) => l.startsWith("-A")).join("\n") };
      if (argv.includes("-I")) jumps.add(argv.at(-1)!);
      if (argv.includes("-C")) return { code: jumps.has(argv.at(-1)!) ? 0 : 1 };
      return {};
    });
    await new IptablesBackend(exec).apply([r1]);
    expect(exec.calls[0]).toEqual(["iptables-restore", "--noflush", "-w", "5"]);
    expect(exec.calls).toContainEqual(["iptables", "-w", "5", "-t", "nat", "-I", "PREROUTING", "1", "-j", "AGENT-NAT"]);
    expect(exec.calls).toContainEqual(["iptables", "-w", "5", "-t", "filter", "-I", "FORWARD", "1", "-j", "AGENT-FWD"]);
    // A second apply finds the jumps and does not add them again.
    const before = exec.calls.filter((c) => c.includes("-I")).length;
    await new IptablesBackend(exec).apply([r1, r2]);
    expect(exec.calls.filter((c) => c.includes("-I")).length).toBe(before);
  });
  test("exit code 4 from iptables-restore is a failure", async () => {
    const exec = scriptedExec((argv) => (argv[0] === "iptables-restore" ? { code: 4, stderr: "Another app is currently holding the xtables lock" } : {}));
    await expect(new IptablesBackend(exec).apply([r1])).rejects.toThrow(/exited 4: Another app is currently holding the xtables lock/);
  });
  test("a rule missing after a successful restore is a failure", async () => {
    const exec = scriptedExec(() => ({}));
    await expect(new IptablesBackend(exec).apply([r1])).rejects.toThrow(/rule 0123abcd is missing after apply/);
  });
});

describe("nft backend with a scripted exec", () => {
  test("a missing table lists as empty", async () => {
    const exec = scriptedExec(() => ({ code: 1, stderr: "Error: No such file or directory; did you mean table 'nat' in family ip?" }));
    expect(await new NftBackend(exec).list()).toEqual([]);
  });
  test("apply is one nft -f - run fed the script", async () => {
    const exec = scriptedExec((argv) => (argv[1] === "-j" ? { stdout: '{"nftables":[]}' } : {}));
    await new NftBackend(exec).apply([]);
    expect(exec.calls).toEqual([["nft", "-f", "-"], ["nft", "-j", "list", "table", "ip", "agent_nat"]]);
  });
});

test("verifyTags names duplicates and stale expiries", () => {
  expect(() => verifyTags("t", new Map([["a1b2c3d4", 1000]]), [{ id: "a1b2c3d4", expiresAt: 1000 }, { id: "a1b2c3d4", expiresAt: 1000 }])).toThrow(/installed twice/);
  expect(() => verifyTags("t", new Map([["a1b2c3d4", 1000]]), [{ id: "a1b2c3d4", expiresAt: 2000 }])).toThrow(/carries expiry 2000 instead of 1000/);
});

describe("conntrack", () => {
  test.each([
    [rule("0123abcd"), ["conntrack", "-D", "-p", "tcp", "-s", "203.0.113.7", "--orig-port-dst", "8080", "--reply-src", "192.168.1.50", "--reply-port-src", "80"]],
    [r2, ["conntrack", "-D", "-p", "udp", "-s", "198.51.100.0", "--mask-src", "255.255.255.0", "--orig-port-dst", "5000", "--reply-src", "192.168.1.60", "--reply-port-src", "5001"]],
  ])("argv for %j", (r, argv) => {
    expect(conntrackDeleteArgv(r)).toEqual(argv);
  });
  const listing = [
    "tcp      6 431999 ESTABLISHED src=203.0.113.7 dst=198.18.0.1 sport=33014 dport=8080 src=192.168.1.50 dst=203.0.113.7 sport=80 dport=33014 [ASSURED] mark=0 use=1",
    "udp      17 29 src=198.51.100.9 dst=198.18.0.1 sport=4000 dport=5000 [UNREPLIED] src=192.168.1.60 dst=198.51.100.9 sport=5001 dport=4000 mark=0 use=1",
    "tcp      6 431999 ESTABLISHED src=203.0.113.8 dst=198.18.0.1 sport=1000 dport=8080 src=192.168.1.50 dst=203.0.113.8 sport=80 dport=1000 [ASSURED] mark=0 use=1",
    "tcp      6 100 ESTABLISHED src=10.0.0.2 dst=10.0.0.1 sport=22 dport=50000 src=10.0.0.1 dst=10.0.0.2 sport=50000 dport=22 mark=0 use=1",
  ].join("\n");
  test("parseConntrackList and flowOf pick the flows a rule forwarded", () => {
    const flows = parseConntrackList(listing);
    expect(flows[0]).toEqual({ proto: "tcp", src: "203.0.113.7", dport: 8080, replySrc: "192.168.1.50", replySport: 80 });
    expect(flows.map((f) => flowOf(r1, f))).toEqual([true, false, false, false]);
    expect(flows.map((f) => flowOf(r2, f))).toEqual([false, true, false, false]);
  });
  test("one listing, then one delete per rule that has flows", async () => {
    const exec = scriptedExec((argv) => (argv[1] === "-L" ? { stdout: listing } : {}));
    const idle = rule("0000aaaa", { port: 9999 });
    await conntrackCutter(exec)([r1, r2, idle]);
    expect(exec.calls).toEqual([["conntrack", "-L"], conntrackDeleteArgv(r1), conntrackDeleteArgv(r2)]);
  });
  test("a flow gone since the listing is not an error; a real failure is", async () => {
    const gone = scriptedExec((argv) => (argv[1] === "-L" ? { stdout: listing } : { code: 1, stderr: "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted." }));
    await conntrackCutter(gone)([r1]);
    const denied = scriptedExec((argv) => (argv[1] === "-L" ? { stdout: listing } : { code: 1, stderr: "Operation not permitted" }));
    await expect(conntrackCutter(denied)([r1])).rejects.toThrow(/Operation not permitted/);
  });
});

describe("seed 001 requests", () => {
  test("the seed's example maps to a request with minutes as TTL", () => {
    const seed = { ip_src: "1.1.1.1", port_dst: 7890, ip_dst_lan: "192.168.1.50", port_dst_lan: 80, rule_timeout: 30, action: "add", api_key: "zzzz" };
    expect(fromSeedRequest(seed)).toEqual({ action: "add", request: { proto: undefined, src: "1.1.1.1", port: "7890", to: "192.168.1.50:80", ttl: "30m" } });
    expect(validateRequest(fromSeedRequest(seed).request, limits, own)).toMatchObject({ src: "1.1.1.1/32", port: 7890, ttlMs: 1_800_000 });
  });
  test.each([
    [{ action: "drop" }, /action: expected "add" or "del"/],
    [{ action: "add", ip_src: "1.1.1.1", port_dst: 1, ip_dst_lan: "192.168.1.50", port_dst_lan: 80, rule_timeout: 0 }, /whole minutes > 0/],
    [{ action: "add", ip_src: "1.1.1.1", port_dst: 1, ip_dst_lan: "192.168.1.50", port_dst_lan: 80, rule_timeout: 1.5 }, /whole minutes > 0/],
    [{ action: "add", ip_src: "1.1.1.1", port_dst: 1, port_dst_lan: 80, rule_timeout: 1 }, /ip_dst_lan/],
    [{ action: "add", cmd2: 1 }, /unknown field "cmd2"/],
  ])("%j is refused", (req, message) => {
    expect(() => fromSeedRequest(req)).toThrow(message);
  });
});

describe("state file", () => {
  test("written atomically, read back, damaged files are reported", () => {
    const dir = mkdtempSync(join(tmpdir(), "agent-nt-store-"));
    try {
      const store = new FileRuleStore(dir);
      expect(store.load()).toEqual([]);
      store.save([r1, r2]);
      expect(store.load()).toEqual([r1, r2]);
      expect(readdirSync(dir)).toEqual(["nat-rules.json"]); // no temp file left behind
      writeFileSync(store.path, '{"version":1,"rules":[{"id":"nope"}]}');
      expect(() => store.load()).toThrow(/rule 0 is malformed/);
      expect(() => parseState('{"version":2,"rules":[]}')).toThrow(/unsupported state version 2/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test("parseIpAddrJson reads IPv4 addresses with their prefixes", () => {
  const text = JSON.stringify([
    { ifname: "lo", addr_info: [{ family: "inet", local: "127.0.0.1", prefixlen: 8 }] },
    { ifname: "eth0", addr_info: [{ family: "inet", local: "192.168.1.1", prefixlen: 24 }, { family: "inet6", local: "fe80::1", prefixlen: 64 }] },
  ]);
  expect(parseIpAddrJson(text)).toEqual([{ addr: parseIPv4("127.0.0.1"), prefix: 8 }, { addr: parseIPv4("192.168.1.1"), prefix: 24 }]);
});

// ---------------------------------------------------------------------------------------
// The service against the in-memory backend.

function setup(opts: { now?: () => number; keepOnStop?: boolean; store?: MemoryRuleStore; backend?: FakeBackend; minTtlMs?: number } = {}) {
  const lines: string[] = [];
  const backend = opts.backend ?? new FakeBackend();
  const store = opts.store ?? new MemoryRuleStore();
  const cut: string[] = [];
  const svc = new NatService({
    backend,
    store,
    limits: { ...limits, maxRules: 200, minTtlMs: opts.minTtlMs ?? limits.minTtlMs },
    keepOnStop: opts.keepOnStop ?? false,
    ownAddresses: async () => own,
    cutFlows: async (rs) => void cut.push(...rs.map((r) => r.id)),
    log: createLogger({ level: "info", write: (l) => void lines.push(l) }),
    ...(opts.now ? { now: opts.now } : {}),
  });
  return { svc, backend, store, cut, lines };
}

/** A store whose writes fail with ENOSPC while `full` is set, as a full state disk does. */
class FullDiskStore extends MemoryRuleStore {
  full = false;
  damaged = false;
  failures = 0;
  override load(): Rule[] {
    if (this.damaged) throw new Error("rule 0 is malformed");
    return super.load();
  }
  override save(rules: readonly Rule[]): void {
    if (this.full) {
      this.failures++;
      throw Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
    }
    super.save(rules);
  }
}

test("NatService start: a session's rule from the previous run goes, a local one is re-armed", async () => {
  const store = new MemoryRuleStore();
  const backend = new FakeBackend();
  const wall = Date.now();
  const local = rule("aaaaaaaa", { owner: "local", createdAt: wall, expiresAt: wall + 60_000 });
  const session = rule("bbbbbbbb", { owner: "s-abcd1234", port: 8081, createdAt: wall, expiresAt: wall + 60_000 });
  store.rules = [local, session];
  backend.installed = new Map([[local.id, local], [session.id, session]]);
  const { svc, lines } = setup({ store, backend });
  await svc.start();
  expect(svc.list().map((r) => r.id)).toEqual([local.id]);
  expect([...backend.installed.keys()]).toEqual([local.id]);
  expect(store.rules.map((r) => r.id)).toEqual([local.id]);
  expect(lines.join("")).toContain(`removed rule ${session.id} at start: its session s-abcd1234 ended with the previous run`);
  await svc.close();
});

describe("NatService on a full disk", () => {
  function full() {
    const clock = new FakeClock();
    const lines: string[] = [];
    const backend = new FakeBackend();
    const store = new FullDiskStore();
    const svc = new NatService({
      backend,
      store,
      limits: { ...limits, maxRules: 200 },
      keepOnStop: false,
      ownAddresses: async () => own,
      cutFlows: async () => {},
      log: createLogger({ level: "info", write: (l) => void lines.push(l) }),
      clock,
    });
    const warnings = () => lines.filter((l) => /WARN/i.test(l) && l.includes("cannot write the NAT state file"));
    return { clock, lines, backend, store, svc, warnings };
  }

  test("an add whose intent cannot be written fails clearly and never touches the firewall", async () => {
    const { svc, backend, store, warnings } = full();
    await svc.start();
    store.full = true;
    const err = await svc.add(good, "local").then(() => null, (e: unknown) => e as RuntimeError);
    expect(err).toBeInstanceOf(RuntimeError);
    expect(err!.message).toMatch(/^could not add the rule: cannot write the NAT state file: ENOSPC: no space left on device, write; the firewall was not changed$/);
    expect(err!.hint).toMatch(/free space .*state_dir/);
    expect(backend.applies).toBe(0);
    expect(backend.installed.size).toBe(0);
    expect(svc.list()).toEqual([]);
    expect(warnings().length).toBe(1);
    // Space again: the next request works.
    store.full = false;
    const ok = await svc.add(good, "local");
    expect(backend.installed.has(ok.rule.id)).toBe(true);
    expect(store.rules.map((r) => r.id)).toEqual([ok.rule.id]);
    await svc.close();
  });

  test("an extend is written first too; a refused extend keeps the old expiry everywhere", async () => {
    const { svc, backend, store, clock } = full();
    await svc.start();
    const a = await svc.add(good, "local");
    clock.advance(10_000);
    store.full = true;
    await expect(svc.add(good, "local")).rejects.toThrow(/could not extend the rule: cannot write the NAT state file/);
    expect(backend.installed.get(a.rule.id)!.expiresAt).toBe(Date.parse(a.rule.expires));
    expect(store.rules[0]!.expiresAt).toBe(Date.parse(a.rule.expires));
    expect(svc.list()[0]!.expires).toBe(a.rule.expires);
    await svc.close();
  });

  test("removals never wait for the disk: applied at once, the file written later, warnings at most once a minute", async () => {
    const { svc, backend, store, clock, warnings, lines } = full();
    await svc.start();
    const a = await svc.add(good, "local");
    const b = await svc.add({ ...good, port: "8081" }, "local");
    store.full = true;
    await svc.del(a.rule.id);
    expect(backend.installed.has(a.rule.id)).toBe(false);
    expect(store.rules.map((r) => r.id).sort()).toEqual([a.rule.id, b.rule.id].sort()); // not written yet
    expect(warnings().length).toBe(1);
    // A retry is queued behind other changes: step the clock a second at a time and let it run.
    const step = async (ms: number) => {
      for (let t = 0; t < ms; t += 1000) {
        clock.advance(1000);
        await Bun.sleep(0);
      }
    };
    // Retried every few seconds; said again only after a minute.
    await step(30_000);
    expect(store.failures).toBeGreaterThan(3);
    expect(warnings().length).toBe(1);
    await step(31_000);
    expect(warnings().length).toBe(2);
    expect(warnings()[1]).toMatch(/more failure\(s\) since the last report/);
    store.full = false;
    await step(SAVE_RETRY_MS);
    expect(store.rules.map((r) => r.id)).toEqual([b.rule.id]);
    expect(lines.some((l) => l.includes("writing the NAT state file works again"))).toBe(true);
    await svc.close();
  });

  test("a damaged state file and a full disk: a removal still goes through", async () => {
    const { svc, backend, store } = full();
    await svc.start();
    const a = await svc.add(good, "local");
    await svc.close();
    // The next run finds the file damaged (its rule is an orphan, removed at start) and adds one...
    store.damaged = true;
    const next = new NatService({ backend, store, limits: { ...limits, maxRules: 200 }, keepOnStop: false, ownAddresses: async () => own, cutFlows: async () => {}, log: createLogger({ level: "error", write: () => {} }) });
    await next.start();
    const b = await next.add(good, "local");
    expect(b.rule.id).not.toBe(a.rule.id);
    // ...then the disk fills: deleting needs no write first.
    store.full = true;
    await next.del(b.rule.id);
    expect(backend.installed.size).toBe(0);
    await next.close();
  });

  test("a firewall failure after the intent was written puts the file back", async () => {
    const { svc, backend, store } = full();
    await svc.start();
    const a = await svc.add(good, "local");
    backend.failNext = "nft exited 1";
    await expect(svc.add({ ...good, port: "8081" }, "local")).rejects.toThrow(/could not apply rule: nft exited 1/);
    expect(store.rules.map((r) => r.id)).toEqual([a.rule.id]);
    await svc.close();
  });
});

describe("stale temp files", () => {
  test("removeStaleTemps removes a dead writer's temp file only", () => {
    const dir = mkdtempSync(join(tmpdir(), "agent-nat-tmp-"));
    try {
      const target = join(dir, "nat-rules.json");
      writeFileSync(join(dir, ".nat-rules.json.999999.abcdef.tmp"), "half");
      writeFileSync(join(dir, `.nat-rules.json.${process.pid}.abcdef.tmp`), "mine, being written");
      writeFileSync(join(dir, ".other.json.999999.abcdef.tmp"), "not this file's");
      expect(removeStaleTemps(target, (pid) => pid === process.pid)).toEqual([".nat-rules.json.999999.abcdef.tmp"]);
      expect(readdirSync(dir).sort()).toEqual([`.nat-rules.json.${process.pid}.abcdef.tmp`, ".other.json.999999.abcdef.tmp"].sort());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("NatService", () => {
  test("an idle agent never writes the firewall", async () => {
    const { svc, backend } = setup();
    await svc.start();
    await svc.close();
    expect(backend.applies).toBe(0);
    expect(backend.tornDown).toBe(0);
  });

  test("add, extend, list, del, flush", async () => {
    const { svc, backend, store, cut } = setup();
    await svc.start();
    const a = await svc.add(good, "local");
    expect(a.created).toBe(true);
    expect(backend.installed.has(a.rule.id)).toBe(true);
    expect(store.rules.map((r) => r.id)).toEqual([a.rule.id]);
    const again = await svc.add(good, "local");
    expect(again).toMatchObject({ created: false, rule: { id: a.rule.id } });
    const b = await svc.add({ ...good, port: "8081" }, "session-1");
    expect(svc.list().map((r) => r.id).sort()).toEqual([a.rule.id, b.rule.id].sort());
    expect((await svc.del(a.rule.id)).id).toBe(a.rule.id);
    expect(cut).toEqual([a.rule.id]);
    await expect(svc.del(a.rule.id)).rejects.toThrow(/no active rule/);
    expect(await svc.flush()).toBe(1);
    expect(backend.installed.size).toBe(0);
    expect(store.rules).toEqual([]);
    await svc.close();
  });

  test("refusals are UsageErrors and change nothing", async () => {
    const { svc, backend } = setup();
    await svc.start();
    await svc.add(good, "local");
    const applies = backend.applies;
    await expect(svc.add({ ...good, to: "192.168.1.1:80" }, "local")).rejects.toBeInstanceOf(UsageError);
    await expect(svc.add({ ...good, to: "192.168.1.51:80" }, "local")).rejects.toThrow(/already forwarded/);
    expect(backend.applies).toBe(applies);
    await svc.close();
  });

  test("a failed apply rolls the add back and reports a RuntimeError", async () => {
    const { svc, backend, store } = setup();
    await svc.start();
    backend.failNext = "iptables-restore exited 4";
    await expect(svc.add(good, "local")).rejects.toBeInstanceOf(RuntimeError);
    expect(svc.list()).toEqual([]);
    expect(store.rules).toEqual([]);
    await svc.close();
  });

  test("concurrent adds share transactions and are each applied once", async () => {
    const { svc, backend } = setup();
    await svc.start();
    const res = await Promise.all([...Array(100).keys()].map((i) => svc.add({ ...good, port: String(10000 + i) }, "local")));
    expect(new Set(res.map((r) => r.rule.id)).size).toBe(100);
    expect(backend.installed.size).toBe(100);
    expect(backend.applies).toBeLessThanOrEqual(3);
    await svc.close();
  });

  test("removeByOwner removes only that session's rules", async () => {
    const { svc } = setup();
    await svc.start();
    await svc.add(good, "session-1");
    await svc.add({ ...good, port: "8081" }, "session-2");
    expect(await svc.removeByOwner("session-1")).toBe(1);
    expect(svc.list().map((r) => r.owner)).toEqual(["session-2"]);
    await svc.close();
  });

  test("rules expire on their timer and their flows are cut", async () => {
    const { svc, backend, cut } = setup({ minTtlMs: 10 });
    await svc.start();
    const r = await svc.add({ ...good, ttl: "50ms" }, "local");
    await waitFor(() => backend.installed.size === 0, 2000, "the rule's timer to remove it", { every: 10 }).catch(() => {});
    expect(backend.installed.size).toBe(0);
    expect(cut).toEqual([r.rule.id]);
    expect(svc.list()).toEqual([]);
    await svc.close();
  });

  test("start reconciles: expired removed, unexpired re-armed, orphans removed, all logged", async () => {
    const now = 1_000_000;
    const store = new MemoryRuleStore();
    store.rules = [rule("aaaaaaaa", { expiresAt: now - 1 }), rule("bbbbbbbb", { port: 9, expiresAt: now + 60_000 })];
    const backend = new FakeBackend();
    backend.strays = [{ id: "cccccccc", expiresAt: now + 5000 }, parseTag(ruleTag(store.rules[0]!))!];
    const { svc, cut, lines } = setup({ now: () => now, store, backend });
    await svc.start();
    expect([...backend.installed.keys()]).toEqual(["bbbbbbbb"]);
    expect(store.rules.map((r) => r.id)).toEqual(["bbbbbbbb"]);
    expect(cut).toEqual(["aaaaaaaa"]);
    const log = lines.join("");
    expect(log).toContain("removed rule aaaaaaaa at start: it expired");
    expect(log).toContain("removed tagged rule cccccccc at start: the state does not know it");
    expect(log).toContain("re-armed rule bbbbbbbb: expires in 60s");
    await svc.close();
  });

  test("clean stop removes the rules unless nat.keep_on_stop", async () => {
    for (const keep of [false, true]) {
      const { svc, backend, store } = setup({ keepOnStop: keep });
      await svc.start();
      await svc.add(good, "local");
      await svc.close();
      await svc.close(); // idempotent
      expect(backend.installed.size).toBe(keep ? 1 : 0);
      expect(backend.tornDown).toBe(keep ? 0 : 1);
      expect(store.rules.length).toBe(keep ? 1 : 0);
      await expect(svc.add(good, "local")).rejects.toThrow(/stopping/);
    }
  });
});

describe("NAT component on a control server", () => {
  const cfg = resolveConfig([{ origin: { kind: "flag" }, raw: { state_dir: "/nonexistent-agent-nt", allow: ["192.168.1.0/24"] } }]);
  test("registers nat.* and the seed fallback; refuses clearly while unavailable", async () => {
    const control = new ControlServer("/nonexistent/sock", createLogger({ level: "silent", write: () => {} }));
    const c = createNatComponent({ control, config: cfg, log: createLogger({ level: "silent", write: () => {} }), backend: new FakeBackend() });
    const before = await control.dispatch('{"cmd":"nat.list"}');
    expect(before).toMatchObject({ ok: false, code: "runtime", error: expect.stringMatching(/NAT is unavailable/) });
    const seed = JSON.stringify({ ip_src: "1.1.1.1", port_dst: 7890, ip_dst_lan: "192.168.1.50", port_dst_lan: 80, rule_timeout: 30, action: "add", api_key: "z" });
    expect(await control.dispatch(seed)).toMatchObject({ ok: false, code: "runtime" });
    expect(await control.dispatch('{"action":"add","ip_src":"x"}')).toMatchObject({ ok: false, code: "usage" });
    expect(await control.dispatch('{"hello":1}')).toMatchObject({ ok: false, code: "usage", error: expect.stringMatching(/string "cmd"/) });
    expect(c.status()).toEqual({ unavailable: "the NAT service has not started" });
  });
  test.each([["iptables", "iptables"], ["nft", "nft"]] as const)("nat.backend = %s picks %s", (name, expected) => {
    expect(chooseBackend({ ...cfg, nat: { ...cfg.nat, backend: name } }, async () => ({ code: 0, stdout: "", stderr: "" })).name).toBe(expected);
  });
});

describe("a master's request bound to its session", () => {
  const WALL = Date.UTC(2026, 11, 1, 12, 0, 0);
  const spec: RuleSpec = { proto: "tcp", src: "203.0.113.7/32", port: 8080, toAddr: "192.168.1.50", toPort: 80, ttlMs: 30 * 60_000 };
  const binding = (o: Partial<SessionBinding> = {}): SessionBinding => ({ session: "s-1", master: "tech-1", endpoints: ["192.168.1.50:80", "192.168.1.60:22"], endsAt: null, masterSessions: ["s-1"], ...o });
  test.each([
    ["a target of the session, no end: unchanged", binding(), spec, undefined],
    ["a session ending later than the rule: unchanged", binding({ endsAt: WALL + 60 * 60_000 }), spec, undefined],
    ["a session ending sooner: capped to its end", binding({ endsAt: WALL + 10 * 60_000 }), { ...spec, ttlMs: 10 * 60_000 }, /ttl 30m capped to 10m: the rule ends with session s-1 \(2026-12-01T12:10:00\.000Z\)/],
  ] as const)("%s", (_name, b, want, note) => {
    const r = bindToSession(spec, b, WALL);
    expect(r.spec).toEqual(want);
    if (note) expect(r.capped).toMatch(note);
    else expect(r.capped).toBeUndefined();
  });
  test.each([
    ["a target outside the session", { ...spec, toPort: 81 }, binding(), /^to: 192\.168\.1\.50:81 is not one of session s-1's targets \(192\.168\.1\.50:80, 192\.168\.1\.60:22\)/],
    ["a session without targets", spec, binding({ endpoints: [] }), /not one of session s-1's targets \(none\)/],
    ["a session that has ended", spec, binding({ endsAt: WALL - 1 }), /^ttl: session s-1 ends now; no rule can outlive it$/],
    ["a session with under a second left", spec, binding({ endsAt: WALL + 500 }), /^ttl: session s-1 ends within a second/],
  ] as const)("refused: %s", (_name, s, b, message) => {
    expect(() => bindToSession(s, b, WALL)).toThrow(message);
  });
  test.each([
    ["under both caps", [{ owner: "s-1" }, { owner: "s-2" }], undefined],
    ["the session's cap", [{ owner: "s-1" }, { owner: "s-1" }], /^rules: session s-1 holds 2 NAT rule\(s\), the cap is nat\.max_rules_per_session = 2/],
    ["the master's cap, over its sessions", [{ owner: "s-1" }, { owner: "s-2" }, { owner: "s-2" }], /^rules: master tech-1 holds 3 NAT rule\(s\) on this device, the cap is nat\.max_rules_per_master = 3/],
    ["other masters' and local rules do not count", [{ owner: "s-9" }, { owner: "local" }, { owner: "s-9" }, { owner: "s-1" }], undefined],
  ] as const)("caps: %s", (_name, live, message) => {
    const b = binding({ masterSessions: ["s-1", "s-2"] });
    const run = () => checkSessionCaps(b, live, { perSession: 2, perMaster: 3 });
    if (message) expect(run).toThrow(message);
    else expect(run).not.toThrow();
  });

  test("NatService: a refused session request changes nothing; an extend at the cap is fine", async () => {
    const clock = new FakeClock({ wall: WALL });
    const backend = new FakeBackend();
    const svc = new NatService({
      backend,
      store: new MemoryRuleStore(),
      limits,
      keepOnStop: false,
      ownAddresses: async () => own,
      cutFlows: async () => {},
      log: createLogger({ level: "error", write: () => {} }),
      clock,
      sessionCaps: { perSession: 1, perMaster: 5 },
    });
    await svc.start();
    const b = binding({ endsAt: WALL + 5 * 60_000 });
    const first = await svc.add(good, "s-1", b);
    expect(first.rule.remaining_ms).toBe(5 * 60_000);
    expect(first.capped).toMatch(/capped to 5m/);
    const applies = backend.applies;
    await expect(svc.add({ ...good, port: "8081" }, "s-1", b)).rejects.toThrow(/nat\.max_rules_per_session = 1/);
    await expect(svc.add({ ...good, to: "192.168.1.51:80" }, "s-1", b)).rejects.toBeInstanceOf(UsageError);
    expect(backend.applies).toBe(applies);
    expect((await svc.add(good, "s-1", b)).created).toBe(false);
    await svc.close();
  });
});

describe("the relay's [[access]] nat key", () => {
  const access = (raw: unknown) => resolveConfig([{ origin: { kind: "flag" }, raw: { access: raw } as Record<string, unknown> }]).access;
  test.each([
    ["no rules at all: every master reaches every device, none may ask for NAT", [], "tech-1", "site-1", false],
    ["a rule without the key: no", [{ masters: ["tech-*"], onsites: ["site-*"] }], "tech-1", "site-1", false],
    ["nat = false: no", [{ masters: ["tech-*"], onsites: ["site-*"], nat: false }], "tech-1", "site-1", false],
    ["nat = true for both: yes", [{ masters: ["tech-*"], onsites: ["site-*"], nat: true }], "tech-1", "site-1", true],
    ["nat = true, another master: no", [{ masters: ["tech-1"], onsites: ["site-*"], nat: true }], "tech-2", "site-1", false],
    ["nat = true, another device: no", [{ masters: ["tech-*"], onsites: ["site-2"], nat: true }], "tech-1", "site-1", false],
    ["one of several rules grants it", [{ masters: ["*"], onsites: ["*"] }, { masters: ["tech-1"], onsites: ["site-1"], nat: true }], "tech-1", "site-1", true],
  ] as const)("%s", (_name, rules, master, onsite, want) => {
    expect(mayAskNat(access(rules), master, onsite)).toBe(want);
  });
  test("a nat key that is not a boolean is refused by name", () => {
    expect(() => access([{ masters: ["*"], onsites: ["*"], nat: "yes" }])).toThrow(/access\[0\]\.nat/);
  });
});
