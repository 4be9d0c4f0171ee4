// netconnectd's own socket (src/uplink/netconnectd-socket.ts) in this process, with a
// recording backend that speaks the real NetconnectdBackend interface: netconnectd's framing
// as PROTOCOLS.md §5 gives it (socat as the client, test/fixtures/netconnectd/client.ts),
// agent control commands refused, bounds, the file mode and group as an unprivileged user
// would meet them (setpriv to nobody, as root). The real daemon: test/netconnectd-system.test.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "../src/log.ts";
import { NETCONNECTD_MAX_REQUEST, type NetconnectdBackend, type NetconnectdStatus } from "../src/uplink/netconnectd.ts";
import { controlRequestRefusal, disabledReply, NETCONNECTD_MAX_CONNECTIONS, NetconnectdSocket, netconnectdAnswerer } from "../src/uplink/netconnectd-socket.ts";
import { waitFor } from "./helpers/wait.ts";
import { netconnectdRequest, NOBODY, socat } from "./fixtures/netconnectd/client.ts";

const isRoot = process.getuid?.() === 0;
// CI runs as root: the unprivileged-client checks (setpriv) must run there, never skip.
if (!isRoot && process.env.CI) throw new Error("the netconnectd socket test needs root (setpriv to nobody, chown to a group); CI must run it as root");
const asRoot = isRoot ? test : test.skip; // skipped only outside CI when not root: setpriv needs root

const STATUS: NetconnectdStatus = { link: true, devs: ["eth0"], connections: { wifi: false, ap: false, wired: true }, wifi: { current_ssid: null, current_address: null, valid_config: false, present: true } };

class RecordingBackend implements NetconnectdBackend {
  calls: string[] = [];
  netconnectdStatus() {
    this.calls.push("status");
    return STATUS;
  }
  async startAp() {
    this.calls.push("start_ap");
    return "started ap";
  }
  async stopAp() {
    this.calls.push("stop_ap");
    return "access point is not running";
  }
  async listWifi(force: boolean) {
    this.calls.push(`list_wifi ${force}`);
    return [{ ssid: "shop", channel: 6, address: "02:00:00:00:01:00", encrypted: true, signal: -40 }];
  }
  async configWifi(ssid: string, psk: string | undefined, force: boolean) {
    this.calls.push(`config_wifi ${ssid} ${psk} ${force}`);
    return `configured wifi as "${ssid}"`;
  }
  async startWifi(): Promise<string> {
    this.calls.push("start_wifi");
    throw new Error("could not connect");
  }
  async forgetWifi() {
    this.calls.push("forget_wifi");
    return "wifi was not configured yet";
  }
  async reset() {
    this.calls.push("reset");
    return "reset daemon";
  }
}

describe("pure pieces", () => {
  test("an agent control request is recognised by its cmd and refused with the control socket's path", () => {
    const why = controlRequestRefusal('{"cmd":"nat.add","args":{}}', "/run/agent/control.sock");
    expect(why).toContain('agent control commands such as "nat.add" go to the agent\'s control socket /run/agent/control.sock');
    expect(why).toContain("status, start_ap, stop_ap, list_wifi, config_wifi, start_wifi, forget_wifi, reset");
    expect(controlRequestRefusal('{"status":{}}', "/c")).toBeUndefined();
    expect(controlRequestRefusal("{nope", "/c")).toBeUndefined();
  });
  test("with Wi-Fi/AP off every request gets the setting that turns it on, NUL-terminated", async () => {
    const answer = netconnectdAnswerer(undefined);
    for (const req of ['{"status":{}}', '{"list_wifi":{"force":false}}', "{nope"]) expect(await answer(req)).toBe(disabledReply());
    expect(disabledReply()).toEndWith("\0");
    expect(JSON.parse(disabledReply().slice(0, -1)).error).toContain("set enabled = true in the [ap] section of the agent's config (ap.enabled)");
  });
});

describe("the socket", () => {
  let dir = "";
  const backend = new RecordingBackend();
  const sockets: NetconnectdSocket[] = [];
  const lines: string[] = [];
  const log = createLogger({ level: "info", write: (l) => void lines.push(l) });
  const open = async (name: string, o: { mode?: number; group?: string; requestTimeoutMs?: number } = {}) => {
    const s = new NetconnectdSocket({ path: join(dir, name), mode: o.mode ?? 0o666, group: o.group, controlPath: "/run/agent/control.sock", answer: netconnectdAnswerer(backend), log, requestTimeoutMs: o.requestTimeoutMs });
    sockets.push(s);
    await s.start();
    expect(s.status().unavailable).toBeUndefined();
    return join(dir, name);
  };
  let path = "";

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "agent-ncd-"));
    chmodSync(dir, 0o755); // nobody must reach the socket file; its own mode decides
    path = await open("netconnectd.sock");
  });
  afterAll(() => {
    for (const s of sockets) s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("netconnectd's mode by default (0666), removed on close", () => {
    expect(statSync(path).mode & 0o777).toBe(0o666);
    expect(statSync(path).isSocket()).toBe(true);
  });

  test("every netconnectd command, as netconnectcli sends it, reaches the backend; the reply is compact JSON and one NUL", async () => {
    backend.calls = [];
    const r = await socat(path, '{"status":{}}\0');
    expect(r.stdout).toBe(JSON.stringify({ result: STATUS }) + "\0");
    expect(await netconnectdRequest(path, { list_wifi: { force: false } })).toEqual({ result: [{ ssid: "shop", channel: 6, address: "02:00:00:00:01:00", encrypted: true, signal: -40 }] });
    expect(await netconnectdRequest(path, { config_wifi: { ssid: "shop", psk: "secret-psk", options: null, force: false } })).toEqual({ result: 'configured wifi as "shop"' });
    expect(await netconnectdRequest(path, { start_wifi: {} })).toEqual({ error: "could not connect" });
    expect(await netconnectdRequest(path, { start_ap: {} })).toEqual({ result: "started ap" });
    expect(await netconnectdRequest(path, { stop_ap: {} })).toEqual({ result: "access point is not running" });
    expect(await netconnectdRequest(path, { forget_wifi: {} })).toEqual({ result: "wifi was not configured yet" });
    expect(await netconnectdRequest(path, { reset: {} })).toEqual({ result: "reset daemon" });
    expect(backend.calls).toEqual(["status", "list_wifi false", "config_wifi shop secret-psk false", "start_wifi", "start_ap", "stop_ap", "forget_wifi", "reset"]);
  });

  test("agent control commands and anything else are refused and reach nothing", async () => {
    backend.calls = [];
    const nul = await netconnectdRequest(path, { cmd: "nat.add", args: { src: "1.2.3.4", port: 22, to: "192.168.1.2:22", ttl: "1h" } });
    expect(nul.error).toContain("this is the netconnectd socket: it serves only netconnectd's commands");
    expect(nul.error).toContain('"nat.add" go to the agent\'s control socket /run/agent/control.sock');
    // The agent's own framing (a line) is answered in that framing, so `agent`-style clients read it.
    const line = await socat(path, '{"cmd":"status"}\n');
    expect(JSON.parse(line.stdout)).toMatchObject({ ok: false, code: "usage", error: expect.stringContaining('"status" go to the agent\'s control socket') });
    expect(await netconnectdRequest(path, { "nat.flush": {} })).toEqual({ error: expect.stringContaining('unknown message "nat.flush"') });
    expect(await netconnectdRequest(path, { status: {}, reset: {} })).toEqual({ error: expect.stringContaining("exactly one key") });
    expect(backend.calls).toEqual([]);
  });

  test("bounds: a request without NUL, one left open, one too large", async () => {
    const short = await open("short.sock", { requestTimeoutMs: 300 });
    expect((await socat(short, '{"status":{}}')).stdout).toBe(JSON.stringify({ error: "request ended without its NUL terminator (netconnectd's framing: JSON, then \\0)" }) + "\0");
    // socat -t 0 would close at once; an open client that never sends NUL is cut at the timeout.
    const held = Bun.spawn(["socat", "-", `UNIX-CONNECT:${short}`], { stdin: "pipe", stdout: "pipe" });
    held.stdin.write('{"status":');
    await held.stdin.flush();
    const text = await new Response(held.stdout).text();
    held.stdin.end();
    await held.exited;
    expect(text).toBe(JSON.stringify({ error: "request not terminated by NUL within 0.3s (netconnectd's framing: JSON, then \\0)" }) + "\0");
    const big = await socat(path, "x".repeat(NETCONNECTD_MAX_REQUEST + 10));
    expect(big.stdout).toBe(JSON.stringify({ error: `request larger than ${NETCONNECTD_MAX_REQUEST} bytes` }) + "\0");
  });

  test("at most NETCONNECTD_MAX_CONNECTIONS at once: the next hears it is busy", async () => {
    const busy = await open("busy.sock");
    const s = sockets.at(-1)!;
    const idle = await Promise.all([...Array(NETCONNECTD_MAX_CONNECTIONS).keys()].map(() => Bun.connect({ unix: busy, socket: { data() {} } })));
    await waitFor(() => s.status().open === NETCONNECTD_MAX_CONNECTIONS, 5000, "the idle connections to be counted");
    expect((await socat(busy, '{"status":{}}\0')).stdout).toBe(JSON.stringify({ error: `busy: ${NETCONNECTD_MAX_CONNECTIONS} requests are being served; try again` }) + "\0");
    for (const c of idle) c.end();
    await waitFor(() => s.status().open === 0, 5000, "the idle connections to close");
    expect((await netconnectdRequest(busy, { reset: {} })).result).toBe("reset daemon");
  });

  test("a stale socket file is replaced; a live one (netconnectd itself) is left alone and named", async () => {
    const stale = join(dir, "stale.sock");
    const l = Bun.listen({ unix: stale, socket: { data() {} } });
    const other = new NetconnectdSocket({ path: stale, mode: 0o666, controlPath: "/c", answer: netconnectdAnswerer(backend), log });
    await other.start();
    expect(other.status().unavailable).toContain(`another program is listening on ${stale} (netconnectd itself?)`);
    l.stop(true); // Bun leaves the file: now stale
    writeFileSync(join(dir, "not-a-socket"), "x");
    const plain = new NetconnectdSocket({ path: join(dir, "not-a-socket"), mode: 0o666, controlPath: "/c", answer: netconnectdAnswerer(backend), log });
    await plain.start();
    expect(plain.status().unavailable).toContain("exists and is not a socket");
    await open("stale.sock");
    expect((await netconnectdRequest(stale, { forget_wifi: {} })).result).toBe("wifi was not configured yet");
  });

  asRoot("an unprivileged user (nobody) is served on 0666, refused on 0600, served on 0660 through the group", async () => {
    expect(await netconnectdRequest(path, { status: {} }, { as: NOBODY })).toEqual({ result: STATUS });
    const closed = await open("closed.sock", { mode: 0o600 });
    const denied = await socat(closed, '{"status":{}}\0', { as: NOBODY });
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toContain("Permission denied");
    const grp = await open("group.sock", { mode: 0o660, group: "nogroup" });
    expect(statSync(grp).gid).toBe(65534);
    expect(statSync(grp).mode & 0o777).toBe(0o660);
    expect(await netconnectdRequest(grp, { status: {} }, { as: NOBODY })).toEqual({ result: STATUS });
    expect((await socat(grp, '{"status":{}}\0', { as: { uid: 65534, gid: 100 } })).stderr).toContain("Permission denied");
  });

  asRoot("an unknown group is named at start", async () => {
    const s = new NetconnectdSocket({ path: join(dir, "g.sock"), mode: 0o660, group: "no-such-group-xyz", controlPath: "/c", answer: netconnectdAnswerer(backend), log });
    await s.start();
    expect(s.status().unavailable).toContain('cannot set group "no-such-group-xyz"');
  });

  test("status counts what was served and refused", () => {
    const st = sockets[0]!.status();
    expect(st).toMatchObject({ socket: path, mode: "0666", open: 0 });
    expect(Number(st.served)).toBeGreaterThanOrEqual(8);
    expect(Number(st.refused)).toBeGreaterThanOrEqual(3);
  });
});
