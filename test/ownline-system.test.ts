// ownline drop-in, system test: seed 001's protocol spoken by a client written from
// PROTOCOLS.md §6 (test/fixtures/ownline/client.ts: `openssl enc` for the AES with ownline's
// padding done by the client, `openssl s_client` for TLS, verifying a server.crt made the way
// seed 001's README makes one) to the real onsite daemon (`agent --role onsite` with an
// [ownline] section) in a router namespace. Its OK installs real iptables / nft DNAT that
// carries real HTTP from the client namespace to the LAN server; hostile requests get FAIL
// and leave the firewall byte-identical. The same bodies run once per backend.
//
// With DROPIN_TRANSCRIPT=DIR the request fields and replies are written to
// DIR/ownline-<backend>.txt (the api_key shown only as right/wrong).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { controlRequest } from "../src/control.ts";
import { agent, BUN, MAIN, ROOT, waitFor } from "./helpers/cli.ts";
import { buildRouterTopology, must, rulesetOf, run, startLanServer, tagsIn } from "./helpers/nat-lab.ts";
import { deleteNamespaces, nsArgv, nsName } from "./helpers/netns.ts";
import { badPadding, seal, sendRaw, type SendOptions } from "./fixtures/ownline/client.ts";

const isRoot = process.getuid?.() === 0;
// CI runs as root: there this must run, never skip.
if (!isRoot && process.env.CI) throw new Error("the ownline system test needs root (network namespaces); CI must run it as root");

const CLI = nsName("ol-cli");
const RTR = nsName("ol-rtr");
const LAN = nsName("ol-lan");
const KNOWN = "198.18.0.2"; // the known server (ownline's web side): the only one that may ask
const CLIENT = "198.18.0.3"; // the remote user ownline opens the door for (ip_src)
const PUBLIC = "198.18.0.1"; // the router's outside address; ownline listens here
const ROUTER_LAN = "192.168.77.1";
const SERVER = "192.168.77.50";
const PORT = 9999;
const AES = "aes-key-of-the-ownline-test-0123";
const API = "api-key-of-the-ownline-test-4567";

const TOPOLOGY = { cli: CLI, rtr: RTR, lan: LAN, veth: "olv", clientAddrs: [KNOWN, CLIENT], publicAddr: PUBLIC, routerLan: ROUTER_LAN, server: SERVER };

async function curl(port: number, from = CLIENT): Promise<string> {
  const r = await run(nsArgv(CLI, "curl", "-s", "--connect-timeout", "1", "-m", "2", "--interface", from, `http://${PUBLIC}:${port}/`));
  return r.code === 0 ? r.stdout : "";
}

describe.each(["iptables", "nft"] as const)("ownline with the %s backend", (backend) => {
  if (!isRoot) {
    test.skip("needs root to build network namespaces (CI runs as root and fails instead of skipping)", () => {});
    return;
  }
  let dir = "";
  let cfgPath = "";
  let sock = "";
  let logPath = "";
  let proc: Subprocess | undefined;
  const procs: Subprocess[] = [];
  const transcript: string[] = [];
  let client: SendOptions;

  const ruleset = () => rulesetOf(RTR, backend);
  const daemonLog = () => readFileSync(logPath, "utf8") + readFileSync(logPath + ".err", "utf8");
  const ownlineLines = () => daemonLog().split("\n").filter((l) => /\[ownline\] ownline: (OK|FAIL) to /.test(l));

  /** One request as the known server (or `from`) sends it; the fields and the reply go to the transcript. */
  async function ask(what: string, fields: Record<string, unknown> | string, opts: { from?: string; aes?: string; raw?: string } = {}): Promise<string> {
    const message = opts.raw ?? (await seal(typeof fields === "string" ? fields : JSON.stringify(fields), opts.aes ?? AES));
    const seen = ownlineLines().length;
    const reply = await sendRaw(message, { ...client, bind: opts.from ?? KNOWN });
    // The daemon logs each answer (with the reason of a FAIL) as it sends it.
    const said = await waitFor(() => ownlineLines()[seen] ?? false, 5000, `the daemon's log line for "${what}"`);
    const shown = typeof fields === "string" ? fields.replaceAll(API, "<right>") : JSON.stringify({ ...fields, ...("api_key" in fields ? { api_key: fields.api_key === API ? "<right>" : `<wrong: ${String(fields.api_key)}>` } : {}) });
    transcript.push(`${what}\n  from ${opts.from ?? KNOWN}${opts.aes ? " (wrong aes_key)" : ""}: ${shown}\n  reply: ${JSON.stringify(reply)}\n  agent log: ${said.replace(/^\S+ /, "")}`);
    return reply;
  }

  const forward = (o: Record<string, unknown> = {}) => ({ ip_src: CLIENT, port_dst: 8080, ip_dst_lan: SERVER, port_dst_lan: 80, rule_timeout: 5, action: "add", api_key: API, ...o });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "agent-ol-"));
    cfgPath = join(dir, "agent.toml");
    sock = join(dir, "control.sock");
    logPath = join(dir, "daemon.log");
    const ca = join(dir, "ca");
    const bundle = join(dir, "site.bundle");
    for (const args of [["pki", "init", "--dir", ca], ["pki", "issue", "--dir", ca, "--role", "onsite", "--id", "ol-site", "--out", bundle]]) {
      const r = await agent(args);
      if (r.code !== 0) throw new Error(`agent ${args.join(" ")}: ${r.stderr}`);
    }
    // ownline's server.crt/server.key, made as seed 001's README shows (self-signed), here in one step.
    await must(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2", "-subj", `/CN=${PUBLIC}`, "-addext", `subjectAltName=IP:${PUBLIC}`, "-keyout", join(dir, "server.key"), "-out", join(dir, "server.crt")]);
    writeFileSync(join(dir, "ownline.aes_key"), AES + "\n", { mode: 0o600 });
    writeFileSync(join(dir, "ownline.api_key"), API + "\n", { mode: 0o600 });
    writeFileSync(
      cfgPath,
      [
        `bundle = "${bundle}"`,
        `relay = "127.0.0.1:9"`, // not dialled by this test; retried in the background
        `allow = ["192.168.77.0/24"]`,
        `control = "${sock}"`,
        `state_dir = "${join(dir, "state")}"`,
        `[nat]`,
        `backend = "${backend}"`,
        `max_ttl = "10m"`,
        `[ownline]`,
        `listen = "${PUBLIC}:${PORT}"`,
        `known_server = "${KNOWN}"`,
        `api_key_file = "${join(dir, "ownline.api_key")}"`,
        `aes_key_file = "${join(dir, "ownline.aes_key")}"`,
        `cert_file = "${join(dir, "server.crt")}"`,
        `key_file = "${join(dir, "server.key")}"`,
        `read_timeout = "1s"`,
        "",
      ].join("\n"),
    );
    client = { address: `${PUBLIC}:${PORT}`, caFile: join(dir, "server.crt"), wrap: (argv) => nsArgv(CLI, ...argv) };
    await buildRouterTopology(TOPOLOGY);
    procs.push(await startLanServer(LAN, 80, 7));
    proc = Bun.spawn(nsArgv(RTR, BUN, MAIN, "--role", "onsite", "--config", cfgPath), { stdout: Bun.file(logPath), stderr: Bun.file(logPath + ".err"), cwd: ROOT });
    procs.push(proc);
    await waitFor(
      async () => {
        if (proc!.exitCode !== null) throw new Error(`daemon exited ${proc!.exitCode}: ${daemonLog()}`);
        try {
          const s = (await controlRequest(sock, "status", {}, 1000)) as { nat?: { backend?: string }; ownline?: { listen?: string; unavailable?: string } };
          if (s.ownline?.unavailable && s.ownline.unavailable !== "not started") throw new Error(`ownline unavailable: ${s.ownline.unavailable}`);
          return s.nat?.backend === backend && s.ownline?.listen === `${PUBLIC}:${PORT}`;
        } catch (e) {
          if ((e as Error).message.startsWith("ownline unavailable")) throw e;
          return false;
        }
      },
      15_000,
      "the onsite daemon's NAT service and ownline listener",
    );
  }, 60_000);

  afterAll(async () => {
    for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.exited));
    await deleteNamespaces([CLI, RTR, LAN]);
    const out = process.env.DROPIN_TRANSCRIPT;
    if (out && transcript.length) {
      mkdirSync(out, { recursive: true });
      writeFileSync(join(out, `ownline-${backend}.txt`), `# ownline drop-in transcript, ${backend} backend (test/ownline-system.test.ts)\n${transcript.join("\n")}\n`);
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  test("seed 001's add opens a real forward for ip_src only; del and flush close it", async () => {
    expect(await curl(8080)).toBe(""); // nothing forwards yet
    expect(await ask("add (seed 001's request)", forward())).toBe("OK");
    expect(await curl(8080)).toBe("lan-ok\n"); // a real connection through the DNAT
    expect(await curl(8080, KNOWN)).toBe(""); // only ip_src is forwarded
    const listed = ((await controlRequest(sock, "nat.list")) as { rules: { id: string; owner: string; src: string; to: string; remaining_ms: number }[] }).rules;
    expect(listed).toHaveLength(1);
    expect(listed[0]).toMatchObject({ owner: "ownline", src: `${CLIENT}/32`, to: `${SERVER}:80` });
    expect(listed[0]!.remaining_ms).toBeGreaterThan(4 * 60_000);
    expect(listed[0]!.remaining_ms).toBeLessThanOrEqual(5 * 60_000);
    expect(tagsIn(await ruleset())).toEqual([listed[0]!.id, listed[0]!.id]); // DNAT + forward accept

    expect(await ask("del", forward({ action: "del" }))).toBe("OK");
    expect(await curl(8080)).toBe("");
    expect(await ask("del again (nothing to delete)", forward({ action: "del" }))).toBe("FAIL");

    // A connection held open through an ownline rule is cut by its del (conntrack), not left running.
    const echo = forward({ ip_src: KNOWN, port_dst: 8083, port_dst_lan: 7 });
    expect(await ask("add (a forward to the LAN echo server, for a held connection)", echo)).toBe("OK");
    const hold = Bun.spawn(nsArgv(CLI, BUN, join(ROOT, "test/fixtures/nat/hold.ts"), PUBLIC, "8083"), { stdout: "pipe", stderr: "pipe" });
    procs.push(hold);
    let held = "";
    void (async () => {
      for await (const chunk of hold.stdout) held += new TextDecoder().decode(chunk);
    })();
    await waitFor(() => held.includes("open\n"), 10_000, () => `the held connection to carry echoes (so far: ${JSON.stringify(held)})`);
    expect(await ask("del (while a connection is open through it)", { ...echo, action: "del" })).toBe("OK");
    await waitFor(() => hold.exitCode !== null, 10_000, "the held connection to be cut by the del");
    expect(held).toMatch(/^cut: /m);

    // ownline's defaults: port_dst_lan = port_dst, rule_timeout = 5 minutes.
    expect(await ask("add, port_dst_lan and rule_timeout left out", { ip_src: CLIENT, port_dst: 8081, ip_dst_lan: SERVER, action: "add", api_key: API })).toBe("OK");
    const rules = ((await controlRequest(sock, "nat.list")) as { rules: { to: string; remaining_ms: number }[] }).rules;
    expect(rules.map((r) => r.to)).toEqual([`${SERVER}:8081`]);
    expect(rules[0]!.remaining_ms).toBeLessThanOrEqual(5 * 60_000);

    // flush removes ownline's rules, not the CLI's.
    const cli = await agent(["nat", "add", "--src", KNOWN, "--port", "8090", "--to", `${SERVER}:80`, "--ttl", "2m", "--json", "--config", cfgPath]);
    expect(cli.code).toBe(0);
    const local = (JSON.parse(cli.stdout) as { rule: { id: string } }).rule.id;
    expect(await ask("add", forward())).toBe("OK");
    expect(await ask("flush", { action: "flush", api_key: API })).toBe("OK");
    expect(await curl(8080)).toBe("");
    expect(await curl(8090, KNOWN)).toBe("lan-ok\n");
    expect(tagsIn(await ruleset())).toEqual([local, local]);
    expect((await agent(["nat", "del", local, "--config", cfgPath])).code).toBe(0);
  }, 60_000);

  test("hostile requests get FAIL and leave the firewall byte-identical", async () => {
    // An active ownline rule, so that a flush that got through would show.
    expect(await ask("add (the rule the hostile requests must not touch)", forward())).toBe("OK");
    const before = await ruleset();
    expect(tagsIn(before)).toHaveLength(2);
    const json = JSON.stringify(forward({ port_dst: 8082 }));
    const cases: [string, () => Promise<string>][] = [
      ["wrong api_key", () => ask("wrong api_key", forward({ port_dst: 8082, api_key: "guess" }))],
      ["flush with a wrong api_key (upstream accepts it)", () => ask("flush with a wrong api_key (upstream accepts it)", { action: "flush", api_key: "guess" })],
      ["flush without an api_key", () => ask("flush without an api_key", { action: "flush" })],
      ["wrong aes_key", () => ask("wrong aes_key", forward({ port_dst: 8082 }), { aes: "not-the-aes-key" })],
      ["from another address than known_server", () => ask("from another address than known_server", forward({ port_dst: 8082 }), { from: CLIENT })],
      ["bad padding", async () => ask("bad padding (last byte 0)", json, { raw: await seal("", AES, badPadding(json)) })],
      ["oversized", () => ask("oversized (64 KiB of base64)", "<64 KiB of 'A'>", { raw: "A".repeat(64 * 1024) })],
      ["not base64", () => ask("not base64, shell metacharacters", "$(reboot);`id`|&", { raw: "$(reboot);`id`|&" })],
      ["shell in ip_src", () => ask("shell metacharacters in ip_src", forward({ ip_src: `${CLIENT};iptables -F` }))],
      ["shell in ip_dst_lan", () => ask("shell metacharacters in ip_dst_lan", forward({ ip_dst_lan: "$(reboot)" }))],
      ["shell in port_dst", () => ask("shell metacharacters in port_dst", forward({ port_dst: "8082`id`" }))],
      ["newline in port_dst_lan", () => ask("a newline in port_dst_lan", forward({ port_dst_lan: "80\n-A INPUT -j ACCEPT" }))],
      ["target outside the allow list", () => ask("target outside the allow list (agent nat add refuses it)", forward({ port_dst: 8082, ip_dst_lan: "10.9.9.9" }))],
      ["target is the device itself", () => ask("target is the device itself (agent nat add refuses it)", forward({ port_dst: 8082, ip_dst_lan: ROUTER_LAN }))],
      ["rule_timeout over nat.max_ttl", () => ask("rule_timeout 30 > nat.max_ttl 10m (agent nat add refuses it)", forward({ port_dst: 8082, rule_timeout: 30 }))],
      ["unknown action", () => ask("unknown action", forward({ action: "open" }))],
      ["a field ownline does not have", () => ask("a field ownline does not have", forward({ port_dst: 8082, iface: "eth0" }))],
    ];
    for (const [what, go] of cases) expect([what, await go()]).toEqual([what, "FAIL"]);
    // A message that never completes: FAIL at read_timeout.
    expect(await ask("half a message (FAIL at read_timeout)", "<first 40 characters>", { raw: (await seal(json, AES)).slice(0, 40) })).toBe("FAIL");
    expect(await ruleset()).toBe(before);
    expect(await curl(8080)).toBe("lan-ok\n"); // the rule is still there and works
    expect(await curl(8082)).toBe("");
    const log = daemonLog();
    for (const reason of ["wrong api_key", "only the known server 198.18.0.2 may send requests", "bad padding", "over 4096 bytes", "not base64", "ip_src", "outside the LAN allow list", "longer than nat.max_ttl", "no whole message within 1s"]) expect(log).toContain(reason);
    expect(log).not.toContain(API);
    expect(log).not.toContain(AES);
    expect(await ask("flush (the right key)", { action: "flush", api_key: API })).toBe("OK");
    expect(tagsIn(await ruleset())).toEqual([]);
  }, 90_000);
});
