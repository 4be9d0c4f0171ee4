// Secrets stay secret in a full scenario (issue 13 §7), as root: the uplink lab with a real
// relay and master; the onsite daemon's config (0600) holds the AP passphrase and dials the
// relay through an HTTP CONNECT proxy with a password; a Wi-Fi network is configured with
// --psk-file and with --psk-file - (stdin); the master opens a forward and curl uses it; the
// setup AP is started. Then every log, the /proc/*/cmdline of every process on the host and
// every API answer are searched for the private keys, the PSKs and the passwords: none.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import type { SessionView } from "../src/tunnel/master-forwarder.ts";
import { agent, BUN, MAIN, ROOT, tempDir, waitFor } from "./helpers/cli.ts";
import { FakeWpaSupplicant } from "./helpers/fake-wpa.ts";
import { inNs, nsArgv } from "./helpers/netns.ts";
import { lines, startLab, type Lab, type LabFleet } from "./helpers/uplink-lab.ts";

const isRoot = process.getuid?.() === 0;
if (!isRoot && process.env.CI) throw new Error("the secrets system test needs root; CI runs as root, so this must not be skipped there");
const maybe = isRoot ? describe : describe.skip; // outside CI without root: skipped, since namespaces need root

const word = (p: string) => `${p}-${randomBytes(9).toString("base64url")}`;
const AP_PASS = word("appass");
const PROXY_PASS = word("proxypw");
const PSK_FILE = word("pskfile");
const PSK_STDIN = word("pskstdin");
const PROXY_PORT = 3128;
const FIX = join(ROOT, "test", "fixtures");

maybe("no secret in a log, a command line or an API answer (needs root)", () => {
  let lab: Lab;
  let fleet: LabFleet;
  let fake: FakeWpaSupplicant;
  let proxy: ReturnType<typeof Bun.spawn> | undefined;
  const proxyLines: string[] = [];
  const tmp = tempDir("sx-sec");
  const answers: string[] = [];

  beforeAll(async () => {
    fake = new FakeWpaSupplicant(join(tmp.path, "wpa.ctrl"));
    fake.cells = [{ bssid: "02:00:00:00:03:01", freq: 2437, signal: -50, flags: "[WPA2-PSK-CCMP][ESS]", ssid: "Office", psk: PSK_FILE }];
    lab = await startLab({
      prefix: "sx",
      relay: true,
      tracking: 'interval = "300ms"\ntimeout = "300ms"\ndown = 2\nup = 2',
      rootConfig: `proxy = "http://tech:${PROXY_PASS}@10.99.0.1:${PROXY_PORT}"`,
      extraConfig: `[ap]
enabled = true
interface = "sxap0"
wifi_interface = "sxwlan0"
ssid = "sx-setup"
passphrase = "${AP_PASS}"
after = "10m"
address = "10.250.251.1/24"
hostapd = "${join(FIX, "wifi", "fake-hostapd")}"
wpa_ctrl = "${fake.path}"
`,
    });
    fleet = lab.fleet!;
    // The proxy beside the relay; the onsite daemon retries until it is there.
    proxy = Bun.spawn(nsArgv(lab.topo.relay, BUN, join(FIX, "secrets", "connect-proxy.ts"), lab.topo.relayAddr, String(PROXY_PORT)), { stdin: "ignore", stdout: "pipe", stderr: "inherit", env: { ...process.env, PROXY_AUTH: `tech:${PROXY_PASS}` } });
    void lines(proxy.stdout as ReadableStream<Uint8Array>, (l) => proxyLines.push(l));
    await inNs(lab.topo.onsite, ["ip", "link", "add", "sxap0", "type", "veth", "peer", "name", "sxap1"]);
    await inNs(lab.topo.onsite, ["ip", "link", "set", "sxap0", "up"]);
  }, 90_000);

  afterAll(async () => {
    try {
      proxy?.kill();
      await proxy?.exited;
      await lab?.close();
    } finally {
      fake?.close();
      tmp[Symbol.dispose]();
    }
  }, 30_000);

  const json = async (control: string, args: string[]) => {
    const r = await agent([...args, "--json", "--control", control]);
    answers.push(`$ agent ${args.join(" ")} --json (exit ${r.code})\n${r.stdout}${r.stderr}`);
    return r;
  };

  test("the scenario: through the proxy to the relay, Wi-Fi configured from a file and stdin, a forward used, the AP up", async () => {
    expect(statSync(join(lab.dir, "agent.toml")).mode & 0o777).toBe(0o600);
    await waitFor(async () => (await fleet.json<{ id: string; online: boolean }[]>(fleet.relayControl, ["devices"])).some((d) => d.id === "site-1" && d.online), 40_000, "site-1 online through the proxy", { detail: () => `proxy: ${proxyLines.join(", ")}\n${lab.onsiteLog().slice(-2000)}` });
    expect(proxyLines.some((l) => l.startsWith("ok "))).toBe(true);
    expect(proxyLines).not.toContain("refused");

    // Wi-Fi from a 0600 file and from stdin.
    const f = join(tmp.path, "office.psk");
    writeFileSync(f, PSK_FILE + "\n", { mode: 0o600 });
    const r1 = await agent(["uplink", "configure-wifi", "Office", "--psk-file", f, "--control", lab.control]);
    expect({ code: r1.code, err: r1.stderr }).toEqual({ code: 0, err: "" });
    const p = Bun.spawn([BUN, MAIN, "uplink", "configure-wifi", "Backroom", "--psk-file", "-", "--control", lab.control], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    p.stdin.write(PSK_STDIN + "\n");
    p.stdin.end();
    expect(await p.exited).toBe(0);
    const nets = [...fake.networks.values()];
    expect(nets.find((n) => n.ssid === "Office")?.psk).toBe(PSK_FILE);
    expect(nets.find((n) => n.ssid === "Backroom")?.psk).toBe(PSK_STDIN);

    // A forward through the master to the LAN.
    const s = await fleet.json<SessionView>(fleet.masterControl, ["connect", "site-1", "--forward", `127.0.0.1:0:${fleet.lanHttp}`]);
    const port = s.forwards[0]!.port;
    const c = await inNs(lab.topo.relay, ["curl", "-sS", "--max-time", "5", `http://127.0.0.1:${port}/`], true);
    expect(c.stdout).toContain("hello from the LAN");

    // The AP, which writes the passphrase into hostapd's config (0600).
    expect((await agent(["uplink", "start-ap", "--control", lab.control])).code).toBe(0);
    await waitFor(async () => JSON.parse((await agent(["uplink", "wifi-status", "--json", "--control", lab.control])).stdout).ap?.running === true, 20_000, "AP up");
    expect(readFileSync(join(lab.dir, "state", "ap", "hostapd.conf"), "utf8")).toContain(AP_PASS); // the control: it is used

    // Every API answer of the three daemons.
    for (const a of [["status"], ["uplink", "status"], ["uplink", "wifi-status"], ["uplink", "list-wifi"], ["nat", "list"]]) await json(lab.control, a);
    for (const a of [["status"], ["devices"], ["sessions"]]) await json(fleet.relayControl, a);
    for (const a of [["status"], ["devices"], ["sessions"]]) await json(fleet.masterControl, a);
    const doc = await agent(["doctor", "--role", "onsite", "--config", join(lab.dir, "agent.toml"), "--json"], { timeoutMs: 60_000 });
    answers.push(`$ agent doctor --config … --json (exit ${doc.code})\n${doc.stdout}${doc.stderr}`);
    expect(answers.join("\n")).toContain("site-1"); // the answers are real
  }, 120_000);

  test("none of the secrets in any log, any /proc/*/cmdline or any answer", async () => {
    // The private keys: a line from the middle of each bundle's key (PEM base64).
    const keyLines = ["site.bundle", "relay.bundle", "tech.bundle"].map((b) => {
      const text = readFileSync(join(lab.dir, b), "utf8");
      const key = /-----BEGIN (?:RSA )?PRIVATE KEY-----\n([\s\S]+?)-----END/.exec(text)![1]!.split("\n").filter(Boolean);
      return key[Math.floor(key.length / 2)]!;
    });
    const secrets: Record<string, string> = { "AP passphrase": AP_PASS, "proxy password": PROXY_PASS, "PSK (file)": PSK_FILE, "PSK (stdin)": PSK_STDIN };
    keyLines.forEach((l, i) => (secrets[`private key ${i + 1}`] = l));

    // Every log the lab's daemons wrote (stdout and stderr of each run), and the proxy's.
    const logs: Record<string, string> = { "proxy output": proxyLines.join("\n") };
    const walk = (d: string) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        const p = join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (/\.(log|err|out)(\.\d+)?$|\.log\.\d+(\.err)?$/.test(e.name)) logs[p] = readFileSync(p, "utf8");
      }
    };
    walk(lab.dir);
    expect(Object.keys(logs).length).toBeGreaterThanOrEqual(5);
    expect(Object.values(logs).join("")).toContain("relay"); // logs with content

    // Every process's command line on this host (the daemons, hostapd, dnsmasq, curl, …).
    const cmdlines: Record<string, string> = {};
    for (const pid of readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
      try {
        cmdlines[pid] = readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
      } catch {
        // gone
      }
    }
    const ours = Object.values(cmdlines).filter((c) => c.includes(lab.dir));
    expect(ours.length).toBeGreaterThanOrEqual(3); // the onsite, relay and master daemons at least

    const found: string[] = [];
    for (const [what, secret] of Object.entries(secrets)) {
      for (const [where, text] of Object.entries(logs)) if (text.includes(secret)) found.push(`${what} in ${where}`);
      for (const [pid, text] of Object.entries(cmdlines)) if (text.includes(secret)) found.push(`${what} in /proc/${pid}/cmdline: ${text.slice(0, 200)}`);
      answers.forEach((a, i) => a.includes(secret) && found.push(`${what} in answer ${i}: ${a.split("\n")[0]}`));
    }
    console.log(`searched ${Object.keys(logs).length} logs (${Object.values(logs).reduce((n, t) => n + t.length, 0)} bytes), ${Object.keys(cmdlines).length} command lines, ${answers.length} API answers for ${Object.keys(secrets).length} secrets: ${found.length} found\n  logs: ${Object.entries(logs).map(([k, v]) => `${k.replace(lab.dir + "/", "")} ${v.length} B`).join(", ")}`);
    expect(found).toEqual([]);
    // The control: the same search does find a secret where one is (the 0600 hostapd config).
    expect(readFileSync(join(lab.dir, "state", "ap", "hostapd.conf"), "utf8").includes(secrets["AP passphrase"]!)).toBe(true);
  }, 30_000);
});
