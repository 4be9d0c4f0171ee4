// NAT system test: the real onsite daemon (`agent --role onsite`) in a router namespace
// applies real iptables / nft rules that carry real traffic between a client namespace
// (the remote peer, with two addresses) and a LAN namespace running an HTTP and an echo
// server. The same bodies run once per backend. Namespaces, processes and rules are
// removed in afterAll even when a test fails.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { controlRequest } from "../src/control.ts";
import { agent, BUN, MAIN, ROOT, waitFor } from "./helpers/cli.ts";
import { buildRouterTopology, must, rulesetOf, run, startLanServer, tagsIn } from "./helpers/nat-lab.ts";
import { deleteNamespaces, nsArgv, nsName } from "./helpers/netns.ts";

const isRoot = process.getuid?.() === 0;
// CI runs as root: there this must run, never skip.
if (!isRoot && process.env.CI) throw new Error("the NAT system test needs root (network namespaces); CI must run it as root");
const maybe = isRoot ? describe : describe.skip; // skipped only outside CI when not root: namespaces need root

const CLI = nsName("nt-cli");
const RTR = nsName("nt-rtr");
const LAN = nsName("nt-lan");
const PEER = "198.18.0.2"; // the client's primary address: the rule's source
const OTHER = "198.18.0.3"; // a second client address: "another source"
const PUBLIC = "198.18.0.1"; // the router's outside address
const ROUTER_LAN = "192.168.77.1";
const SERVER = "192.168.77.50";
const HTTP_PORT = 80;
const ECHO_PORT = 7;

/** The daemon's time zone in these tests (UTC+13:45 in December). */
const DAEMON_TZ = "Pacific/Chatham";

const TOPOLOGY = { cli: CLI, rtr: RTR, lan: LAN, veth: "ntv", clientAddrs: [PEER, OTHER], publicAddr: PUBLIC, routerLan: ROUTER_LAN, server: SERVER };

/** Real HTTP from the client namespace; "" when the connection fails. */
async function curl(port: number, from = PEER): Promise<string> {
  const r = await run(nsArgv(CLI, "curl", "-s", "--connect-timeout", "1", "-m", "2", "--interface", from, `http://${PUBLIC}:${port}/`));
  return r.code === 0 ? r.stdout : "";
}

interface Daemon {
  proc: Subprocess;
  logPath: string;
  log(): string;
}

describe.each(["iptables", "nft"] as const)("NAT with the %s backend", (backend) => {
  if (!isRoot) {
    test.skip("needs root to build network namespaces (CI runs as root and fails instead of skipping)", () => {});
    return;
  }
  let dir = "";
  let cfgPath = "";
  let sock = "";
  let daemon: Daemon | undefined;
  const procs: Subprocess[] = [];
  let starts = 0;
  let stateDir = "";
  let mounted = false;

  async function startDaemon(): Promise<Daemon> {
    const logPath = join(dir, `daemon-${++starts}.log`);
    // A zone far from UTC: nft reads a date string in its own local time, so a rule rendered
    // as local text would end hours off; the kernel must get the same instant anyway.
    const proc = Bun.spawn(nsArgv(RTR, BUN, MAIN, "--role", "onsite", "--config", cfgPath), { stdout: Bun.file(logPath), stderr: Bun.file(logPath + ".err"), cwd: ROOT, env: { ...process.env, TZ: DAEMON_TZ } });
    procs.push(proc);
    const d: Daemon = { proc, logPath, log: () => readFileSync(logPath, "utf8") + readFileSync(logPath + ".err", "utf8") };
    // Ready once `status` shows the NAT part started (its reconciliation is done by then).
    await waitFor(
      async () => {
        if (proc.exitCode !== null) throw new Error(`daemon exited ${proc.exitCode}: ${d.log()}`);
        try {
          const s = (await controlRequest(sock, "status", {}, 1000)) as { nat?: { backend?: string } };
          return s.nat?.backend === backend;
        } catch {
          return false;
        }
      },
      15_000,
      "the onsite daemon's NAT service",
    );
    return d;
  }

  async function stopDaemon(signal: "SIGTERM" | "SIGKILL"): Promise<void> {
    if (!daemon) return;
    daemon.proc.kill(signal);
    await daemon.proc.exited;
    daemon = undefined;
  }

  const ruleset = () => rulesetOf(RTR, backend);
  const nat = (...args: string[]) => agent(["nat", ...args, "--config", cfgPath]);
  const list = async () => ((await controlRequest(sock, "nat.list")) as { rules: { id: string; port: number; remaining_ms: number }[] }).rules;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "agent-nt-"));
    cfgPath = join(dir, "agent.toml");
    // The state dir is a small file system of its own, so one test can fill it to the brim.
    stateDir = join(dir, "state");
    mkdirSync(stateDir);
    await must(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "agent-nt-state", stateDir]);
    mounted = true;
    sock = join(dir, "control.sock");
    const ca = join(dir, "ca");
    const bundle = join(dir, "site.bundle");
    for (const args of [["pki", "init", "--dir", ca], ["pki", "issue", "--dir", ca, "--role", "onsite", "--id", "nt-site", "--out", bundle]]) {
      const r = await agent(args);
      if (r.code !== 0) throw new Error(`agent ${args.join(" ")}: ${r.stderr}`);
    }
    writeFileSync(
      cfgPath,
      [
        `bundle = "${bundle}"`,
        // Not dialled by this test; the onsite daemon retries it in the background.
        `relay = "127.0.0.1:9"`,
        `allow = ["192.168.77.0/24"]`,
        `control = "${sock}"`,
        `state_dir = "${stateDir}"`,
        `[nat]`,
        `backend = "${backend}"`,
        `max_ttl = "1m"`,
        "",
      ].join("\n"),
    );
    await buildRouterTopology(TOPOLOGY);
    procs.push(await startLanServer(LAN, HTTP_PORT, ECHO_PORT));
    daemon = await startDaemon();
  }, 60_000);

  afterAll(async () => {
    for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.exited));
    await deleteNamespaces([CLI, RTR, LAN]);
    if (mounted) await must(["umount", stateDir]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  test("a rule lets its source reach the LAN server, nobody else, and expiry cuts an open connection", async () => {
    expect(await curl(8080)).toBe(""); // nothing forwards yet
    // The TTL must outlast every step before the held connection opens (two adds, two curls,
    // a ruleset, a list: about a second here, a few on a loaded machine), so it is long beside them.
    const TTL_S = 8;
    const added = await nat("add", "--src", PEER, "--port", "8080", "--to", `${SERVER}:${HTTP_PORT}`, "--ttl", `${TTL_S}s`, "--json");
    expect(added.stderr).toBe("");
    expect(added.code).toBe(0);
    const { rule } = JSON.parse(added.stdout) as { rule: { id: string; expires: string } };
    const echo = JSON.parse((await nat("add", "--src", PEER, "--port", "8081", "--to", `${SERVER}:${ECHO_PORT}`, "--ttl", `${TTL_S}s`, "--json")).stdout) as { rule: { id: string } };

    expect(await curl(8080)).toBe("lan-ok\n");
    expect(await curl(8080, OTHER)).toBe(""); // another source is not forwarded
    expect(tagsIn(await ruleset()).sort()).toEqual([rule.id, rule.id, echo.rule.id, echo.rule.id].sort()); // one DNAT + one forward accept each

    const human = await nat("list");
    const rowRe = new RegExp(`^${rule.id}\\s+tcp\\s+${PEER}/32\\s+\\*\\s+8080\\s+${SERVER}:80\\s+(\\d+)s\\s+local$`, "m");
    expect(human.stdout).toMatch(rowRe);
    const row = rowRe.exec(human.stdout);
    expect(Number(row![1])).toBeGreaterThan(0);
    expect(Number(row![1])).toBeLessThanOrEqual(TTL_S);

    const hold = Bun.spawn(nsArgv(CLI, BUN, join(ROOT, "test/fixtures/nat/hold.ts"), PUBLIC, "8081"), { stdout: "pipe", stderr: "pipe" });
    procs.push(hold);
    const out = new Response(hold.stdout).text();
    await waitFor(() => hold.exitCode !== null, Date.parse(rule.expires) - Date.now() + 5000, "the held connection to be cut at the rule's expiry");
    await waitFor(async () => (await list()).length === 0, 3000, "both rules to expire");
    const text = await out;
    expect(text).toMatch(/^open$/m); // the connection worked through the rule...
    expect(text).toMatch(/^cut: /m); // ...and was cut when the rule expired
    expect(hold.exitCode).toBe(0);
    // The flow's conntrack entry is deleted, not left to time out (432000 s for an
    // established TCP flow): a kernel that keeps NAT bindings without their rule would
    // otherwise go on forwarding it.
    // (Waited for: `nat list` drops a rule as its removal starts, the cut follows the apply.)
    const tracked = async () => (await must(nsArgv(RTR, "conntrack", "-L", "-p", "tcp", "--orig-port-dst", "8081"))).trim();
    await waitFor(async () => (await tracked()) === "", 2000, "the expired flow's conntrack entry to be deleted");
    expect(tagsIn(await ruleset())).toEqual([]);
    expect(await curl(8080)).toBe("");
  }, 60_000);

  test("hostile input is refused with a specific message and changes no rule", async () => {
    const base = { src: PEER, port: "8090", to: `${SERVER}:80`, ttl: "30s" };
    const cases: [Partial<typeof base> & { proto?: string; iface?: string }, RegExp][] = [
      [{ src: `${PEER}; iptables -F` }, /src: contains a space or shell character/],
      [{ src: `${PEER}\n-A INPUT -j ACCEPT` }, /src: contains a control character/],
      [{ src: "$(reboot)" }, /src: contains a space or shell character/],
      [{ src: "client.example.net" }, /src: expected an IPv4 address/],
      [{ src: "198.018.0.2" }, /src: expected an IPv4 address/],
      [{ src: "0.0.0.0/0" }, /src: 0\.0\.0\.0\/0 would open the port to every address.*allow_any_source/],
      [{ port: "0" }, /port: expected a port number 1-65535/],
      [{ port: "65536" }, /port: expected a port number 1-65535/],
      [{ port: "-1" }, /port: expected a port number 1-65535/],
      [{ port: "22-80" }, /port: expected a port number 1-65535/],
      [{ port: "0x16" }, /port: expected a port number 1-65535/],
      [{ port: "80`id`" }, /port: contains a space or shell character/],
      [{ to: "lan-server:80" }, /to: expected an IPv4 address \(host names are not resolved\)/],
      [{ to: `${SERVER}:80|nc` }, /to: contains a space or shell character/],
      [{ to: "10.9.9.9:80" }, /to: 10\.9\.9\.9:80 is outside the LAN allow list/],
      [{ to: `${ROUTER_LAN}:80` }, /to: 192\.168\.77\.1 is one of this device's own addresses/],
      [{ to: "127.0.0.1:80" }, /to: 127\.0\.0\.1 is a loopback address/],
      [{ to: "255.255.255.255:80" }, /to: 255\.255\.255\.255 is the broadcast address/],
      [{ to: "192.168.77.255:80" }, /to: 192\.168\.77\.255 is the broadcast address of 192\.168\.77\.0\/24/],
      [{ to: "169.254.1.1:80" }, /to: 169\.254\.1\.1 is a link-local address/],
      [{ to: "224.0.0.1:80" }, /to: 224\.0\.0\.1 is a multicast address/],
      [{ to: `${SERVER}:0` }, /to: expected a port number 1-65535/],
      [{ ttl: "2m" }, /ttl: 2m is longer than nat\.max_ttl \(1m\)/],
      [{ ttl: "30s\n" }, /ttl: contains a control character/],
      [{ iface: "eth0;ls" }, /iface: contains a space or shell character/],
    ];
    const before = await ruleset();
    await Promise.all(
      cases.map(async ([override, message]) => {
        const req = { ...base, ...override };
        const argv = ["add", "--src", req.src, "--port", req.port, "--to", req.to, "--ttl", req.ttl];
        if (req.iface) argv.push("--iface", req.iface);
        const r = await nat(...argv);
        expect({ override, code: r.code, stderr: r.stderr }).toMatchObject({ override, code: 2, stderr: expect.stringMatching(message) });
      }),
    );
    // The same refusal through seed 001's request shape on the raw socket.
    const seedBad = await rawSocket({ ip_src: "0.0.0.0/0", port_dst: 8090, ip_dst_lan: SERVER, port_dst_lan: 80, rule_timeout: 1, action: "add", api_key: "x" });
    expect(seedBad).toMatchObject({ ok: false, code: "usage", error: expect.stringMatching(/allow_any_source/) });
    expect(await ruleset()).toBe(before);
    expect(await list()).toEqual([]);
  }, 60_000);

  test("seed 001's request shape adds and deletes a rule on the control socket", async () => {
    const seed = { ip_src: PEER, port_dst: 8095, ip_dst_lan: SERVER, port_dst_lan: 80, rule_timeout: 1, api_key: "ignored" };
    const added = (await rawSocket({ ...seed, action: "add" })) as { ok: boolean; result: { rule: { id: string; remaining_ms: number } } };
    expect(added.ok).toBe(true);
    expect(added.result.rule.remaining_ms).toBeGreaterThan(55_000);
    expect(await curl(8095)).toBe("lan-ok\n");
    const deleted = (await rawSocket({ ...seed, action: "del" })) as { ok: boolean; result: { deleted: { id: string } } };
    expect(deleted).toMatchObject({ ok: true, result: { deleted: { id: added.result.rule.id } } });
    expect(await curl(8095)).toBe("");
    expect(tagsIn(await ruleset())).toEqual([]);
  }, 20_000);

  test("a udp rule forwards datagrams from its source only", async () => {
    const ask = async (from: string) => {
      const r = await run(nsArgv(CLI, "socat", "-T", "1", "-", `UDP4:${PUBLIC}:9000,bind=${from}`), "ping\n");
      return r.stdout;
    };
    expect(await ask(PEER)).toBe("");
    const added = await nat("add", "--proto", "udp", "--src", PEER, "--port", "9000", "--to", `${SERVER}:${ECHO_PORT}`, "--ttl", "30s", "--json");
    expect(added.code).toBe(0);
    const { rule } = JSON.parse(added.stdout) as { rule: { id: string; proto: string } };
    expect(rule.proto).toBe("udp");
    expect(await ask(PEER)).toBe("ping\n");
    expect(await ask(OTHER)).toBe("");
    expect((await nat("del", rule.id)).stdout).toBe(`deleted rule ${rule.id}: udp ${PEER}/32 → port 9000 → ${SERVER}:${ECHO_PORT}\n`);
    expect(await ask(PEER)).toBe("");
    expect(tagsIn(await ruleset())).toEqual([]);
  }, 20_000);

  test("100 concurrent adds are applied exactly once, listed, and all expire", async () => {
    const N = 100;
    // Long relative to the checks below (200 requests, a list, a ruleset, a curl), which must
    // all run before the rules expire.
    const TTL_MS = 8_000;
    const req = (i: number) => ({ src: PEER, port: String(20000 + i), to: `${SERVER}:80`, ttl: `${TTL_MS / 1000}s` });
    const sent = Date.now();
    // Every request is sent twice at once: duplicates must extend, not duplicate.
    const results = (await Promise.all([...Array(2 * N).keys()].map((k) => controlRequest(sock, "nat.add", req(k % N))))) as { rule: { id: string }; created: boolean }[];
    const ids = new Set(results.map((r) => r.rule.id));
    expect(ids.size).toBe(N);
    expect(results.filter((r) => r.created).length).toBe(N);
    const listed = await list();
    expect(listed.map((r) => r.port).sort()).toEqual([...Array(N).keys()].map((i) => 20000 + i));
    const tags = tagsIn(await ruleset());
    expect(tags.length).toBe(2 * N); // DNAT + forward accept per rule, no more
    expect(new Set(tags)).toEqual(ids);
    expect(await curl(20042)).toBe("lan-ok\n");
    await waitFor(async () => (await list()).length === 0, sent + TTL_MS + 10_000 - Date.now(), "all 100 rules to expire");
    await waitFor(async () => tagsIn(await ruleset()).length === 0, 2000, "the firewall to drop them");
    expect(await curl(20042)).toBe("");
  }, 60_000);

  test("kill -9 with a rule about to expire: the kernel ends it (new and open connections) with no agent running; the next start removes it", async () => {
    // A few seconds: the control checks below (a curl, echoes after the kill) must fit before
    // the expiry on a loaded machine.
    const PORT = 8120;
    const added = await nat("add", "--src", PEER, "--port", String(PORT), "--to", `${SERVER}:${ECHO_PORT}`, "--ttl", "6s", "--json");
    expect(added.code).toBe(0);
    const rule = (JSON.parse(added.stdout) as { rule: { id: string; expires: string } }).rule;
    const kernelEnd = Math.ceil(Date.parse(rule.expires) / 1000) * 1000; // the second the kernel ends it at
    // The kernel holds the expiry in UTC whatever the zone of the daemon (TZ=${DAEMON_TZ}) and of the reader.
    const utc = new Date(kernelEnd).toISOString().slice(0, 19);
    if (backend === "nft") {
      const listed = await must(["env", "TZ=UTC", ...nsArgv(RTR, "nft", "list", "table", "ip", "agent_nat")]);
      expect(listed).toContain(`meta time < "${utc.replace("T", " ")}"`);
    } else {
      const saved = await must(nsArgv(RTR, "iptables-save"));
      expect(saved).toContain(`--datestop ${new Date(kernelEnd - 1000).toISOString().slice(0, 19)}`);
      expect(saved).toContain(`--datestart ${utc}`);
    }
    const ticker = Bun.spawn(nsArgv(CLI, BUN, join(ROOT, "test/fixtures/nat/ticker.ts"), PUBLIC, String(PORT)), { stdout: "pipe", stderr: "pipe" });
    procs.push(ticker);
    let out = "";
    void (async () => {
      for await (const chunk of ticker.stdout) out += new TextDecoder().decode(chunk);
    })();
    const echoes = () => [...out.matchAll(/^e (\d+) (\d+)$/gm)].map((m) => ({ n: Number(m[1]), at: Number(m[2]) }));
    const sends = () => [...out.matchAll(/^s (\d+) (\d+)$/gm)].map((m) => ({ n: Number(m[1]), at: Number(m[2]) }));
    await waitFor(() => echoes().length > 0, 5000, "the held connection to carry a first echo", { detail: () => out });

    await stopDaemon("SIGKILL");
    const killedAt = Date.now();
    // Control: with no agent, before the expiry, the same flow still works (new and open).
    const connect = await run(nsArgv(CLI, "socat", "-T", "1", "-", `TCP4:${PUBLIC}:${PORT},bind=${PEER}`), "ping\n");
    expect(connect.stdout).toBe("ping\n");
    await waitFor(() => echoes().some((e) => e.at > killedAt + 200), 3000, "echoes on the open connection after the kill");
    expect(Date.now()).toBeLessThan(kernelEnd); // the control checks above ran before the expiry

    // After the expiry, still no agent: the open connection carries nothing more...
    await waitFor(() => Date.now() > kernelEnd + 1000, kernelEnd + 2000 - Date.now(), "a second past the kernel's expiry");
    const stopped = echoes().length;
    await waitFor(() => sends().filter((x) => x.at > kernelEnd + 1000).length >= 10, 5000, "ten more ticks sent after the expiry");
    expect(echoes().length).toBe(stopped);
    const last = echoes().at(-1)!;
    const firstUnanswered = sends().find((x) => x.n > last.n)!;
    console.log(`[${backend}] kill -9 expiry: last echo ${last.at - kernelEnd} ms, first unanswered tick ${firstUnanswered.at - kernelEnd} ms after the kernel's expiry (${rule.expires} rounded up to the second)`);
    // ...and a new connection is refused (the DNAT no longer matches: the device's own closed port answers).
    const refused = await run(nsArgv(CLI, "socat", "-T", "1", "-", `TCP4:${PUBLIC}:${PORT},bind=${PEER}`), "ping\n");
    expect(refused.stdout).toBe("");
    expect(refused.stderr).toMatch(/Connection refused/);
    // The dead rule is still in the firewall: nobody removed it.
    expect(tagsIn(await ruleset())).toContain(rule.id);

    daemon = await startDaemon();
    expect(tagsIn(await ruleset())).not.toContain(rule.id);
    expect(await ruleset()).not.toContain(`agent-nat-end id=${rule.id}`);
    await waitFor(() => daemon!.log().includes(`removed rule ${rule.id} at start: it expired`), 5000, "the start to log the expired rule");
    ticker.kill("SIGKILL");
  }, 60_000);

  test("a full state disk: the add fails clearly, the firewall is byte-identical, no temp file is left, and freed space makes the next add work", async () => {
    const before = await ruleset();
    // To the brim: dd stops at ENOSPC (exit 1); then no page is left for a byte more.
    const fill = join(stateDir, "fill");
    const dd = await run(["dd", "if=/dev/zero", `of=${fill}`, "bs=4k"]);
    expect(dd.stderr).toMatch(/No space left on device/);
    try {
      const r = await nat("add", "--src", PEER, "--port", "8130", "--to", `${SERVER}:${HTTP_PORT}`, "--ttl", "30s");
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/could not add the rule: cannot write the NAT state file: ENOSPC: no space left on device.*; the firewall was not changed/);
      expect(r.stderr).toMatch(/hint: free space .*state_dir/);
      expect(await ruleset()).toBe(before);
      expect(await curl(8130)).toBe("");
      expect(readdirSync(stateDir).filter((n) => n.endsWith(".tmp"))).toEqual([]);
      await waitFor(() => daemon!.log().includes("cannot write the NAT state file: ENOSPC"), 5000, "the daemon to warn of the failed write");
      expect(daemon!.log()).toMatch(/warn.*cannot write the NAT state file/i);
    } finally {
      rmSync(fill, { force: true });
    }
    const ok = await nat("add", "--src", PEER, "--port", "8130", "--to", `${SERVER}:${HTTP_PORT}`, "--ttl", "30s", "--json");
    expect(ok.code).toBe(0);
    const { rule } = JSON.parse(ok.stdout) as { rule: { id: string } };
    expect(await curl(8130)).toBe("lan-ok\n");
    expect(readFileSync(join(stateDir, "nat-rules.json"), "utf8")).toContain(rule.id);
    expect((await nat("del", rule.id)).code).toBe(0);
    expect(await ruleset()).toBe(before);
  }, 30_000);

  test("after kill -9: expired rules go at start, others are re-armed and expire on time, orphans go, foreign rules stay", async () => {
    const add = async (port: number, ttl: string) =>
      (JSON.parse((await nat("add", "--src", PEER, "--port", String(port), "--to", `${SERVER}:80`, "--ttl", ttl, "--json")).stdout) as { rule: { id: string; expires: string } }).rule;
    // The short rule must expire while the daemon is dead, so it is added last, right before
    // the kill. The others must outlive the restart (seconds on a loaded machine): TTLs long beside it.
    const mid = await add(8102, "15s");
    const long = await add(8103, "17s");
    const short = await add(8101, "2s");
    await stopDaemon("SIGKILL");

    // While the agent is dead: a hand-added rule in the agent's own chain/table carrying a
    // tag the state does not know, and a foreign rule the agent must never touch.
    const orphanTag = `agent-nat id=deadbeef exp=${Math.ceil(Date.now() / 1000) + 3600}`;
    if (backend === "iptables") {
      await must(nsArgv(RTR, "iptables", "-w", "-t", "nat", "-A", "AGENT-NAT", "-p", "tcp", "--dport", "8109", "-m", "comment", "--comment", orphanTag, "-j", "DNAT", "--to-destination", `${SERVER}:80`));
      await must(nsArgv(RTR, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8110", "-m", "comment", "--comment", "foreign", "-j", "DNAT", "--to-destination", `${SERVER}:80`));
    } else {
      await must(nsArgv(RTR, "nft", "add", "rule", "ip", "agent_nat", "prerouting", "tcp", "dport", "8109", "dnat", "to", `${SERVER}:80`, "comment", `"${orphanTag}"`));
      await must(nsArgv(RTR, "nft", "-f", "-"), `table ip nt_foreign {\n chain pre { type nat hook prerouting priority -150; policy accept; tcp dport 8110 dnat to ${SERVER}:80 comment "foreign"; }\n}\n`);
    }
    expect(await curl(8109)).toBe("lan-ok\n");
    expect(await curl(8110)).toBe("lan-ok\n");

    await waitFor(() => Date.now() > Date.parse(short.expires) + 300, 5000, "the short rule's expiry");
    // The crash left it in the firewall: nobody removed it yet.
    expect(tagsIn(await ruleset())).toContain(short.id);

    daemon = await startDaemon(); // returns once the NAT part has reconciled
    const after = tagsIn(await ruleset());
    expect(after).not.toContain(short.id);
    expect(after).not.toContain("deadbeef");
    expect(after).toContain(mid.id);
    expect(after).toContain(long.id);
    const logs = (line: string) => waitFor(() => daemon!.log().includes(line), 5000, `the daemon to log "${line}"`, { detail: () => daemon!.log().slice(-2000) });
    await logs(`removed rule ${short.id} at start: it expired`);
    await logs("removed tagged rule deadbeef at start: the state does not know it");
    await logs(`re-armed rule ${mid.id}`);
    expect(await curl(8101)).toBe("");
    expect(await curl(8109)).toBe("");
    expect(await curl(8102)).toBe("lan-ok\n");
    expect(await curl(8103)).toBe("lan-ok\n");
    expect(await curl(8110)).toBe("lan-ok\n"); // foreign

    // On time: still there a while before its expiry (the re-armed timer did not fire early),
    // gone soon after it. The margins (3 s each side) are wide for a loaded machine and still
    // small beside the 15 s TTL, so "on time" stays a real claim.
    const midExp = Date.parse(mid.expires);
    await waitFor(() => Date.now() >= midExp - 3000, 30_000, "3 s before the middle rule's expiry", { every: 50 });
    expect(tagsIn(await ruleset())).toContain(mid.id);
    await waitFor(async () => !tagsIn(await ruleset()).includes(mid.id), midExp + 3000 - Date.now(), "the middle rule to expire on time");
    expect(await curl(8102)).toBe("");
    expect(await curl(8103)).toBe("lan-ok\n");
    await waitFor(async () => !tagsIn(await ruleset()).includes(long.id), Date.parse(long.expires) + 3000 - Date.now(), "the last rule to expire on time");

    // A clean stop removes the agent's chains/table and leaves the foreign rule.
    await nat("add", "--src", PEER, "--port", "8104", "--to", `${SERVER}:80`, "--ttl", "30s");
    expect(await curl(8104)).toBe("lan-ok\n");
    await stopDaemon("SIGTERM");
    const final = await ruleset();
    expect(tagsIn(final)).toEqual([]);
    expect(final).not.toMatch(backend === "iptables" ? /AGENT-NAT|AGENT-FWD/ : /agent_nat/);
    expect(final).toContain("foreign");
    expect(await curl(8104)).toBe("");
    expect(await curl(8110)).toBe("lan-ok\n");
    daemon = await startDaemon(); // leave a running daemon for any later test
  }, 60_000);

  /** One raw JSON line on the control socket, as seed 001's client would send it. */
  async function rawSocket(obj: Record<string, unknown>): Promise<unknown> {
    return new Promise((resolve, reject) => {
      let buf = "";
      Bun.connect({
        unix: sock,
        socket: {
          open(s) {
            s.write(JSON.stringify(obj) + "\n");
          },
          data(s, d) {
            buf += d.toString();
            if (buf.includes("\n")) {
              s.end();
              resolve(JSON.parse(buf.slice(0, buf.indexOf("\n"))));
            }
          },
          error(_s, e) {
            reject(e);
          },
        },
      }).catch(reject);
    });
  }
});

maybe("NAT system test prerequisites", () => {
  test.each(["ip", "iptables", "iptables-restore", "iptables-save", "nft", "conntrack", "curl"])("%s is installed", (tool) => {
    expect(Bun.which(tool, { PATH: `${process.env.PATH}:/usr/sbin:/sbin` })).not.toBeNull();
  });
});
