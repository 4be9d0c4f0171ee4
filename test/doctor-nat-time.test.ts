// `agent doctor`'s nat-time check: every DNAT rule `agent nat add` installs carries its expiry
// into the kernel (iptables -m time / nft meta time), so doctor asks the NAT backend to check a
// ruleset that uses the time match. The decision is table-tested on the answers the tools give;
// the probe itself runs against the real nft and iptables-restore inside a namespace of this
// test's own, and must leave nothing installed there. Heavy (a namespace): run under flock.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { NAT_TIME_PROBES, natTimeRow, probeNatTime, type NatTimeFact } from "../src/doctor-nat-time.ts";
import { evaluate, type CheckStatus, type HostFacts } from "../src/doctor.ts";
import { realExecSync, type ExecSync } from "../src/os/spawn.ts";
import { createNamespace, deleteNamespace, inNs, nsArgv, nsName } from "./helpers/netns.ts";
import { programsPresent } from "./helpers/proc.ts";

describe("the nat-time row (pure)", () => {
  test.each([
    ["nft works", { backend: "nft", ok: true }, "ok", "nft `meta time` works"],
    ["iptables works", { backend: "iptables", ok: true }, "ok", "iptables `-m time` (xt_time) works"],
    ["xt_time missing", { backend: "iptables", ok: false, error: "iptables-restore v1.8.7 (legacy): Couldn't load match `time':No such file or directory" }, "missing", "`agent nat add` cannot install its timed DNAT rules"],
    ["an nft too old for meta time", { backend: "nft", ok: false, error: "/dev/stdin:3:5-8: Error: syntax error, unexpected time" }, "missing", "nft `meta time` is not supported here (/dev/stdin:3:5-8: Error: syntax error, unexpected time)"],
    ["a kernel without it", { backend: "nft", ok: false, error: "Error: Could not process rule: Operation not supported" }, "missing", "Operation not supported"],
    ["not root: cannot tell", { backend: "nft", ok: false, error: "Error: Could not process rule: Operation not permitted" }, "warn", "could not test nft `meta time`"],
  ] as [string, NatTimeFact, CheckStatus, string][])("%s", (_name, fact, status, detail) => {
    const row = natTimeRow(fact, "debian")!;
    expect(row.status).toBe(status);
    expect(row.detail).toContain(detail);
    if (status === "ok") expect(row.fix).toBeUndefined();
    else expect(row.fix!.length).toBeGreaterThan(10);
  });

  test("the fix names the backend's own remedy, per OS", () => {
    const miss = (backend: "nft" | "iptables", os: "debian" | "openwrt") => natTimeRow({ backend, ok: false, error: "x" }, os)!.fix!;
    expect(miss("iptables", "debian")).toContain("modprobe xt_time");
    expect(miss("iptables", "openwrt")).toContain("opkg install");
    expect(miss("nft", "debian")).toContain("Linux 5.4 and nftables 0.9.4");
  });

  test("no backend probed: no row", () => {
    expect(natTimeRow(undefined, "debian")).toBeNull();
  });

  test("a missing time match fails the onsite role in the doctor report", () => {
    const f = { os: { family: "debian", name: "Debian" }, kernel: "6.1", uid: 0, caps: undefined, tools: {}, iptablesBackend: undefined, tun: { path: "/dev/net/tun", exists: true, openable: true }, stateDir: { path: "/tmp", writable: true, created: false }, natTime: { backend: "iptables", ok: false, error: "Couldn't load match `time'" } } as unknown as HostFacts;
    const row = evaluate(f, "onsite").checks.find((c) => c.check === "nat-time")!;
    expect(row).toMatchObject({ status: "missing", required: true });
  });
});

describe("probeNatTime through an injected runner", () => {
  test.each(["nft", "iptables"] as const)("%s: the checking tool gets the ruleset on stdin, and its first complaint line is kept", (backend) => {
    const seen: { argv: readonly string[]; stdin?: string }[] = [];
    const fake: ExecSync = (argv, o) => (seen.push({ argv, stdin: o?.stdin }), { code: 1, stdout: "", stderr: "\nfirst line\nsecond line\n" });
    expect(probeNatTime(backend, "/usr/sbin/tool", fake)).toEqual({ backend, ok: false, error: "first line" });
    expect(seen).toEqual([{ argv: ["/usr/sbin/tool", ...NAT_TIME_PROBES[backend].args], stdin: NAT_TIME_PROBES[backend].stdin }]);
    expect(seen[0]!.argv).toContain(backend === "nft" ? "--check" : "--test");
  });
});

const HAVE = process.getuid?.() === 0 && programsPresent("doctor-nat-time.test.ts", ["nft", "iptables-restore", "iptables"]);

describe.skipIf(!HAVE)("the real probe, in a namespace of its own", () => {
  const ns = nsName("nattime");
  const inside: ExecSync = (argv, o) => realExecSync(nsArgv(ns, ...argv), o);
  beforeAll(async () => {
    await createNamespace(ns);
  });
  afterAll(async () => {
    await deleteNamespace(ns);
  });

  test.each([
    ["nft", "nft"],
    ["iptables", "iptables-restore"],
  ] as const)("%s on this host: the time match checks out, and nothing is left installed", async (backend, tool) => {
    expect(probeNatTime(backend, Bun.which(tool)!, inside)).toEqual({ backend, ok: true });
    const tables = (await inNs(ns, ["nft", "list", "ruleset"])).stdout;
    expect(tables).not.toContain("agt_timeprobe");
    expect(tables).not.toContain("AGT-TIMEPROBE");
    expect((await inNs(ns, ["iptables", "-S"])).stdout).not.toContain("AGT-TIMEPROBE");
  });

  test("a ruleset the tool refuses is reported, not installed", () => {
    const broken: ExecSync = (argv, o) => inside(argv, { ...o, stdin: o!.stdin!.replace("meta time", "meta timex") });
    const got = probeNatTime("nft", Bun.which("nft")!, broken);
    expect(got.ok).toBe(false);
    expect(got.error).toMatch(/Error/);
  });
});
