// NAT rules asked for by a master inside a session, end to end with real processes and real
// firewall rules carrying real traffic:
//
//   ns-rem (198.18.0.2: relay + master tech-1) ─┐
//   ns-oth (198.18.0.3: master tech-2)         ─┼─ bridge in ns-rtr (198.18.0.1: onsite site-1) ── ns-lan (HTTP server)
//
// (each namespace named per run: nsName("ns-rem") is "agt-<run>-ns-rem")
//
// The relay sees each master at its namespace's address, so a master's rule must carry that
// address as its source (whatever the master says), must let exactly that address through,
// and must vanish from `nat list` and from the firewall when the session ends: by
// `agent disconnect`, by the master's death, or by the onsite device losing the relay. The
// same bodies run with iptables and with nft. Everything is removed in afterAll, also when
// a test fails.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { must, rulesetOf, run, startLanServer, tagsIn, type NatBackendName } from "./helpers/nat-lab.ts";
import { createNamespace, deleteNamespaces, nsArgv, nsName } from "./helpers/netns.ts";
import { waitFor } from "./helpers/wait.ts";

const isRoot = process.getuid?.() === 0;
// CI runs as root: there this must run, never skip.
if (!isRoot && process.env.CI) throw new Error("the NAT session test needs root (network namespaces); CI must run it as root");

const REM = nsName("ns-rem");
const OTH = nsName("ns-oth");
const RTR = nsName("ns-rtr");
const LAN = nsName("ns-lan");
const REMOTE = "198.18.0.2"; // relay and master tech-1: the address the relay sees tech-1 at
const OTHER = "198.18.0.3"; // master tech-2: another source
const PUBLIC = "198.18.0.1"; // the router's outside address
const ROUTER_LAN = "192.168.78.1";
const SERVER = "192.168.78.50";
const ALLOW = "192.168.78.0/24";
// Small caps, so a test reaches them in a few requests.
const PER_SESSION = 2;
const PER_MASTER = 3;

async function buildTopology(): Promise<void> {
  for (const ns of [REM, OTH, RTR, LAN]) await createNamespace(ns);
  // The "internet": a bridge in the router namespace joining both remote namespaces.
  await must(nsArgv(RTR, "ip", "link", "add", "nsbr0", "type", "bridge"));
  await must(["ip", "link", "add", "nsv-rem", "netns", REM, "type", "veth", "peer", "name", "nsv-rr", "netns", RTR]);
  await must(["ip", "link", "add", "nsv-oth", "netns", OTH, "type", "veth", "peer", "name", "nsv-ro", "netns", RTR]);
  await must(["ip", "link", "add", "nsv-lan", "netns", LAN, "type", "veth", "peer", "name", "nsv-rl", "netns", RTR]);
  for (const port of ["nsv-rr", "nsv-ro"]) await must(nsArgv(RTR, "ip", "link", "set", port, "master", "nsbr0"));
  await must(nsArgv(REM, "ip", "addr", "add", `${REMOTE}/24`, "dev", "nsv-rem"));
  await must(nsArgv(OTH, "ip", "addr", "add", `${OTHER}/24`, "dev", "nsv-oth"));
  await must(nsArgv(RTR, "ip", "addr", "add", `${PUBLIC}/24`, "dev", "nsbr0"));
  await must(nsArgv(RTR, "ip", "addr", "add", `${ROUTER_LAN}/24`, "dev", "nsv-rl"));
  await must(nsArgv(LAN, "ip", "addr", "add", `${SERVER}/24`, "dev", "nsv-lan"));
  for (const [ns, dev] of [[REM, "nsv-rem"], [OTH, "nsv-oth"], [RTR, "nsbr0"], [RTR, "nsv-rr"], [RTR, "nsv-ro"], [RTR, "nsv-rl"], [LAN, "nsv-lan"]] as const) {
    await must(nsArgv(ns, "ip", "link", "set", dev, "up"));
  }
  await must(nsArgv(LAN, "ip", "route", "add", "default", "via", ROUTER_LAN));
  await must(nsArgv(RTR, "sysctl", "-qw", "net.ipv4.ip_forward=1"));
}

/** Real HTTP from a remote namespace to the router's public address; "" when it fails. */
async function curl(from: string, port: number): Promise<string> {
  const r = await run(nsArgv(from, "curl", "-s", "--connect-timeout", "1", "-m", "2", `http://${PUBLIC}:${port}/`));
  return r.code === 0 ? r.stdout : "";
}

interface RuleView {
  id: string;
  proto: string;
  src: string;
  port: number;
  to: string;
  owner: string;
  remaining_ms: number;
}

// The relay listens on its IPv4 address in one run and on [::] (dual stack: it then sees IPv4
// peers as ::ffff:a.b.c.d) in the other; the rule's source must be the plain IPv4 address.
const runs: { backend: NatBackendName; listen: string }[] = [
  { backend: "iptables", listen: `${REMOTE}:0` },
  { backend: "nft", listen: "[::]:0" },
];

describe.each(runs)("NAT rules inside sessions, $backend backend, relay on $listen", ({ backend, listen }) => {
  if (!isRoot) {
    test.skip("needs root to build network namespaces (CI runs as root and fails instead of skipping)", () => {});
    return;
  }
  let fleet: Fleet | undefined;
  let relay: Daemon;
  let onsite: Daemon;
  let tech1: Daemon;
  let tech2: Daemon;
  let lanServer: { kill(sig?: number | NodeJS.Signals): void; exited: Promise<number> } | undefined;
  /** The session of tech-1 the first tests share. */
  let s1 = "";

  const ruleset = () => rulesetOf(RTR, backend);
  const listed = async () => (await fleet!.json<{ rules: RuleView[] }>(onsite, ["nat", "list"])).rules;
  const natAdd = (master: Daemon, ...args: string[]) => fleet!.cli(master, ["nat", "add", ...args]);
  const addJson = async (master: Daemon, ...args: string[]) => {
    const r = await natAdd(master, ...args, "--json");
    if (r.code !== 0) throw new Error(`nat add ${args.join(" ")}: exit ${r.code}: ${r.stderr}`);
    return (JSON.parse(r.stdout) as { rule: RuleView; created: boolean }).rule;
  };

  /**
   * Waits for the onsite daemon's log line that follows the firewall change and the flow cut
   * (`nat list` drops a rule as its removal starts, so it alone would race the firewall).
   */
  const removed = (n: number, session: string, ms = 5000) =>
    waitFor(() => onsite.log().includes(`removed ${n} NAT rule(s) of session ${session}`), ms, `the ${n} rule(s) of session ${session} to be removed`, { detail: () => `--- onsite log tail:\n${onsite.log().slice(-2000)}` });

  beforeAll(async () => {
    await buildTopology();
    lanServer = await startLanServer(LAN, 80, 7);
    fleet = await Fleet.create();
    await fleet.issue("relay", "relay-1", ["--host", REMOTE]);
    // NAT from a master is granted by name: tech-1 and tech-2 may ask, tech-3 may only connect.
    const relayCfg = join(fleet.dir, "relay-1.toml");
    writeFileSync(
      relayCfg,
      ["[[access]]", 'masters = ["tech-1", "tech-2"]', 'onsites = ["site-*"]', "nat = true", "", "[[access]]", 'masters = ["tech-3"]', 'onsites = ["site-*"]', ""].join("\n"),
    );
    relay = await fleet.start("relay", "relay-1", ["--config", relayCfg, "--listen", listen], undefined, REM);
    const port = ((await fleet.status(relay)).relay as { port: number }).port;
    const cfg = join(fleet.dir, "site-1.toml");
    writeFileSync(cfg, [`allow = ["${ALLOW}"]`, "[nat]", `backend = "${backend}"`, `max_rules_per_session = ${PER_SESSION}`, `max_rules_per_master = ${PER_MASTER}`, ""].join("\n"));
    onsite = await fleet.start("onsite", "site-1", ["--config", cfg, "--relay", `${REMOTE}:${port}`], undefined, RTR);
    tech1 = await fleet.start("master", "tech-1", ["--relay", `${REMOTE}:${port}`], undefined, REM);
    tech2 = await fleet.start("master", "tech-2", ["--relay", `${REMOTE}:${port}`], undefined, OTH);
    await Promise.all([onsite, tech1, tech2].map((d) => fleet!.waitConnected(d)));
    const nat = (await fleet.status(onsite)).nat as { backend?: string };
    expect(nat.backend).toBe(backend);
  }, 60_000);

  afterAll(async () => {
    await fleet?.close();
    lanServer?.kill("SIGKILL");
    await lanServer?.exited;
    await deleteNamespaces([REM, OTH, RTR, LAN]);
  }, 30_000);

  test("a master's rule in its session takes the master's address as the relay sees it as its source", async () => {
    expect(await curl(REM, 8080)).toBe(""); // nothing forwards yet
    s1 = (await fleet!.connect(tech1, "site-1", [`${SERVER}:80`, `${SERVER}:7`])).session;
    const rule = await addJson(tech1, "--session", s1, "--port", "8080", "--to", `${SERVER}:80`, "--ttl", "5m");
    expect(rule).toMatchObject({ proto: "tcp", src: `${REMOTE}/32`, port: 8080, to: `${SERVER}:80`, owner: s1 });

    expect(await curl(REM, 8080)).toBe("lan-ok\n"); // real DNAT from the session's peer
    expect(await curl(OTH, 8080)).toBe(""); // another source is not forwarded

    const onDevice = await listed();
    expect(onDevice).toEqual([expect.objectContaining({ id: rule.id, owner: s1, src: `${REMOTE}/32`, port: 8080 })]);
    expect(onDevice[0]!.remaining_ms).toBeGreaterThan(290_000);
    const human = await fleet!.cli(onsite, ["nat", "list"]);
    expect(human.stdout).toMatch(new RegExp(`^${rule.id}\\s+tcp\\s+${REMOTE}/32\\s+\\*\\s+8080\\s+${SERVER}:80\\s+\\S+\\s+${s1}$`, "m"));
    expect(tagsIn(await ruleset())).toEqual([rule.id, rule.id]); // DNAT + forward accept

    // The same request again extends the rule instead of adding a second one.
    const again = await natAdd(tech1, "--session", s1, "--port", "8080", "--to", `${SERVER}:80`, "--ttl", "5m");
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(new RegExp(`^extended rule ${rule.id}: tcp ${REMOTE}/32 → port 8080 → ${SERVER}:80`));
    expect((await listed()).length).toBe(1);
  }, 30_000);

  test("a master cannot choose the source, reach another master's session or leave the allow list", async () => {
    const before = await ruleset();
    const cases: [Daemon, string[], RegExp][] = [
      [tech1, ["--src", OTHER, "--port", "8090", "--to", `${SERVER}:80`, "--ttl", "1m"], /--src is not taken on a master/],
      [tech1, ["--src", OTHER, "--session", s1, "--port", "8090", "--to", `${SERVER}:80`, "--ttl", "1m"], /exactly one of --src .* and --session/],
      [tech1, ["--session", s1, "--port", "8090", "--to", `${SERVER}:22`, "--ttl", "1m"], new RegExp(`to: 192\\.168\\.78\\.50:22 is not one of session ${s1}'s targets \\(192\\.168\\.78\\.50:80, 192\\.168\\.78\\.50:7\\)`)],
      [tech1, ["--session", s1, "--port", "8090", "--to", "10.9.9.9:80", "--ttl", "1m"], /to: 10\.9\.9\.9:80 is outside the LAN allow list/],
      [tech1, ["--session", s1, "--port", "8090", "--to", `${ROUTER_LAN}:80`, "--ttl", "1m"], /to: 192\.168\.78\.1 is one of this device's own addresses/],
      [tech1, ["--session", s1, "--port", "0x16", "--to", `${SERVER}:80`, "--ttl", "1m"], /port: expected a port number 1-65535/],
      [tech1, ["--session", s1, "--port", "8090", "--to", `${SERVER}:80;reboot`, "--ttl", "1m"], /to: contains a space or shell character/],
      [tech1, ["--session", s1, "--port", "8090", "--to", `${SERVER}:80`, "--ttl", "9h"], /ttl: 9h is longer than nat\.max_ttl \(8h\)/],
    ];
    for (const [master, args, message] of cases) {
      const r = await natAdd(master, ...args);
      expect({ args, code: r.code, stderr: r.stderr }).toEqual({ args, code: 2, stderr: expect.stringMatching(message) });
    }
    // A session this master does not have is "not found" (exit 4), as for `agent disconnect`.
    const notFound: [Daemon, string[], RegExp][] = [
      [tech2, ["--session", s1, "--port", "8090", "--to", `${SERVER}:80`, "--ttl", "1m"], new RegExp(`no session "${s1}" of tech-2`)],
      [tech1, ["--session", "nosuchsession", "--port", "8090", "--to", `${SERVER}:80`, "--ttl", "1m"], /no session "nosuchsession" of tech-1/],
    ];
    for (const [master, args, message] of notFound) {
      const r = await natAdd(master, ...args);
      expect({ args, code: r.code, stderr: r.stderr }).toEqual({ args, code: 4, stderr: expect.stringMatching(message) });
    }
    expect(await ruleset()).toBe(before);
    expect((await listed()).map((r) => r.port)).toEqual([8080]);
  }, 30_000);

  test("caps per session and per master, and the relay's nat policy: refused with the reason, the firewall byte-identical", async () => {
    // s1 holds one rule (8080). One more fills the session's cap; an extend is still fine.
    const second = await addJson(tech1, "--session", s1, "--port", "8085", "--to", `${SERVER}:80`, "--ttl", "5m");
    const sB = (await fleet!.connect(tech1, "site-1", [`${SERVER}:80`])).session;
    const third = await addJson(tech1, "--session", sB, "--port", "8086", "--to", `${SERVER}:80`, "--ttl", "5m");
    expect(await curl(REM, 8086)).toBe("lan-ok\n");
    const tech3 = await fleet!.start("master", "tech-3", ["--relay", `${REMOTE}:${((await fleet!.status(relay)).relay as { port: number }).port}`], undefined, REM);
    await fleet!.waitConnected(tech3);
    const s3 = (await fleet!.connect(tech3, "site-1", [`${SERVER}:80`])).session; // tech-3 may connect...
    const before = await ruleset();
    const cases: [Daemon, string[], RegExp][] = [
      [tech1, ["--session", s1, "--port", "8087", "--to", `${SERVER}:80`, "--ttl", "1m"], new RegExp(`rules: session ${s1} holds 2 NAT rule\\(s\\), the cap is nat\\.max_rules_per_session = ${PER_SESSION}`)],
      [tech1, ["--session", sB, "--port", "8087", "--to", `${SERVER}:80`, "--ttl", "1m"], new RegExp(`rules: master tech-1 holds 3 NAT rule\\(s\\) on this device, the cap is nat\\.max_rules_per_master = ${PER_MASTER}`)],
      // ...but not ask for NAT: the relay refuses before the device hears of it.
      [tech3, ["--session", s3, "--port", "8087", "--to", `${SERVER}:80`, "--ttl", "1m"], /tech-3 may not ask site-1 for NAT rules \(relay access policy: no \[\[access\]\] rule covering both has nat = true\)/],
    ];
    for (const [master, args, message] of cases) {
      const r = await natAdd(master, ...args);
      expect({ args, code: r.code, stderr: r.stderr }).toEqual({ args, code: 2, stderr: expect.stringMatching(message) });
    }
    expect(await ruleset()).toBe(before);
    // The relay's audit trail has it, as a policy refusal.
    // (The relay writes its audit file in batches, off the refusing path: wait for the batch.)
    const readAudit = () => readFileSync(join(fleet!.dir, "state-relay-1", "refusals.log"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { code: string; reason: string; presented: string });
    await waitFor(() => readAudit().some((r) => r.code === "policy"), 5_000, "the policy refusal in the audit file");
    const audit = readAudit();
    expect(audit).toContainEqual(expect.objectContaining({ code: "policy", presented: expect.stringContaining("tech-3"), reason: expect.stringMatching(/^tech-3 may not ask site-1 for NAT rules/) }));
    // At the cap, the same request again extends (it adds no rule).
    const again = await natAdd(tech1, "--session", s1, "--port", "8085", "--to", `${SERVER}:80`, "--ttl", "5m");
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(new RegExp(`^extended rule ${second.id}`));
    // Back to one rule (8080) in s1 for the tests after this one.
    expect((await fleet!.cli(onsite, ["nat", "del", second.id])).code).toBe(0);
    expect((await fleet!.cli(tech1, ["disconnect", sB])).code).toBe(0);
    await removed(1, sB);
    await fleet!.stop(tech3, "SIGTERM");
    expect((await listed()).map((r) => r.port)).toEqual([8080]);
    expect(third.owner).toBe(sB);
  }, 40_000);

  test("each session's rules carry its own peer; disconnect removes that session's rules only, from the list and the firewall", async () => {
    const udp = await addJson(tech1, "--session", s1, "--proto", "udp", "--port", "9000", "--to", `${SERVER}:7`, "--ttl", "5m");
    expect(udp).toMatchObject({ proto: "udp", src: `${REMOTE}/32`, owner: s1 });
    const udpEcho = await run(nsArgv(REM, "socat", "-T", "1", "-", `UDP4:${PUBLIC}:9000`), "ping\n");
    expect(udpEcho.stdout).toBe("ping\n");

    const s2 = (await fleet!.connect(tech2, "site-1", [`${SERVER}:80`])).session;
    const other = await addJson(tech2, "--session", s2, "--port", "8081", "--to", `${SERVER}:80`, "--ttl", "5m");
    expect(other).toMatchObject({ src: `${OTHER}/32`, owner: s2 });
    expect(await curl(OTH, 8081)).toBe("lan-ok\n");
    expect(await curl(REM, 8081)).toBe("");

    const d = await fleet!.cli(tech1, ["disconnect", s1]);
    expect(d.code).toBe(0);
    await removed(2, s1);
    expect((await listed()).map((r) => r.id)).toEqual([other.id]);
    expect(tagsIn(await ruleset())).toEqual([other.id, other.id]);
    expect(await curl(REM, 8080)).toBe("");
    expect((await run(nsArgv(REM, "socat", "-T", "1", "-", `UDP4:${PUBLIC}:9000`), "ping\n")).stdout).toBe("");
    expect(await curl(OTH, 8081)).toBe("lan-ok\n"); // the other session's rule stays
    // The session is gone: it cannot ask for more.
    const late = await natAdd(tech1, "--session", s1, "--port", "8080", "--to", `${SERVER}:80`, "--ttl", "1m");
    expect(late.code).toBe(4);
    expect(late.stderr).toContain(`no session "${s1}" of tech-1`);
  }, 30_000);

  test("a master killed with SIGKILL: the relay ends its session and the onsite device removes its rule", async () => {
    const [rule] = await listed();
    expect(rule).toMatchObject({ src: `${OTHER}/32`, port: 8081 });
    await fleet!.stop(tech2, "SIGKILL");
    await removed(1, rule!.owner);
    expect(await listed()).toEqual([]);
    expect(tagsIn(await ruleset())).toEqual([]);
    expect(await curl(OTH, 8081)).toBe("");
  }, 20_000);

  test("a session that reaches its TTL takes its rule with it", async () => {
    // The TTL must outlast the steps before it ends (a connect, an add and a curl, a few
    // seconds on a loaded machine), so it is long relative to them, not a tight 2 s.
    const ttlMs = 8_000;
    const opened = Date.now();
    const s = (await fleet!.connect(tech1, "site-1", [`${SERVER}:80`], `${ttlMs / 1000}s`)).session;
    const asked = await natAdd(tech1, "--session", s, "--port", "8084", "--to", `${SERVER}:80`, "--ttl", "5m", "--json");
    expect(asked.code).toBe(0);
    const { rule, capped } = JSON.parse(asked.stdout) as { rule: RuleView & { expires: string }; capped?: string };
    // Capped to the session: the rule never outlives it, in the agent nor in the kernel.
    expect(capped).toMatch(new RegExp(`^ttl 5m capped to \\d+s: the rule ends with session ${s} \\(`));
    expect(rule.remaining_ms).toBeLessThanOrEqual(ttlMs);
    const sessionEnds = Date.parse(/\((\S+)\)$/.exec(capped!)![1]!);
    expect(Date.parse(rule.expires)).toBeLessThanOrEqual(sessionEnds);
    expect(await curl(REM, 8084)).toBe("lan-ok\n");
    expect(Date.now() - opened).toBeLessThan(ttlMs); // the checks above ran inside the session
    // The rule and the session end at the same instant: either the rule's own timer or the
    // session's close removes it (the other then finds nothing), each logging after the apply.
    const gone = [`rule ${rule.id} expired`, `removed 1 NAT rule(s) of session ${s}`];
    await waitFor(() => gone.some((l) => onsite.log().includes(l)), ttlMs + 10_000, `rule ${rule.id} to go with session ${s}`, { detail: () => onsite.log().slice(-2000) });
    expect(await listed()).toEqual([]);
    expect(tagsIn(await ruleset())).toEqual([]);
    expect(await curl(REM, 8084)).toBe("");
  }, 45_000);

  test("the onsite device losing the relay ends its sessions and removes their rules", async () => {
    const s3 = (await fleet!.connect(tech1, "site-1", [`${SERVER}:80`])).session;
    const rule = await addJson(tech1, "--session", s3, "--port", "8083", "--to", `${SERVER}:80`, "--ttl", "5m");
    expect(await curl(REM, 8083)).toBe("lan-ok\n");
    // The relay dies: nobody is left to tell the onsite device that the session ended.
    await fleet!.stop(relay, "SIGKILL");
    await removed(1, s3);
    expect(await listed()).toEqual([]);
    expect(tagsIn(await ruleset())).toEqual([]);
    expect(await curl(REM, 8083)).toBe("");
    expect(rule.owner).toBe(s3);
  }, 20_000);
});

describe.if(isRoot)("NAT session test prerequisites", () => {
  test.each(["ip", "iptables", "iptables-save", "nft", "curl", "socat"])("%s is installed", (tool) => {
    expect(Bun.which(tool, { PATH: `${process.env.PATH}:/usr/sbin:/sbin` })).not.toBeNull();
  });
});
