// netconnectd drop-in, system test: the real onsite daemon (`agent --role onsite`, in its own
// network namespace so its Wi-Fi part touches nothing of the host) with `[ap]
// netconnectd_socket`, spoken to by socat with netconnectd's framing (PROTOCOLS.md §5) as the
// unprivileged user nobody (setpriv). Twice: with [ap] off (every netconnectd request, here and
// on the control socket, gets the setting at once instead of a 5 s timeout) and with [ap] on
// over a radio that is not there (the real Wi-Fi service answers; the mode and group decide
// who may ask). Agent control commands on the netconnectd socket are refused.
//
// With DROPIN_TRANSCRIPT=DIR the requests, replies and reply times go to DIR/netconnectd.txt.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { controlRequest } from "../src/control.ts";
import { agent, BUN, MAIN, ROOT, waitFor } from "./helpers/cli.ts";
import { createNamespace, deleteNamespaces, nsArgv, nsName } from "./helpers/netns.ts";
import { NOBODY, socat, type AsUser } from "./fixtures/netconnectd/client.ts";

const isRoot = process.getuid?.() === 0;
if (!isRoot && process.env.CI) throw new Error("the netconnectd system test needs root (a namespace, setpriv to nobody); CI must run it as root");
const maybe = isRoot ? describe : describe.skip; // skipped only outside CI when not root

const NS = nsName("ncd");
const USERS: AsUser = { uid: 65534, gid: 100 }; // nobody, but not in the socket's group

maybe("netconnectd's clients on the onsite daemon", () => {
  let dir = "";
  let bundle = "";
  const procs: Subprocess[] = [];
  const transcript: string[] = [];
  let cfgPath = "";
  let control = "";
  let ncSock = "";
  let logPath = "";

  /** One exchange as `who`; request, reply and how long it took go to the transcript. */
  async function ask(what: string, path: string, bytes: string, as?: AsUser) {
    const t0 = performance.now();
    const r = await socat(path, bytes, { as });
    const ms = Math.round(performance.now() - t0);
    const who = as ? `uid ${as.uid} gid ${as.gid}` : "root";
    transcript.push(`${what}\n  ${who} → ${path.replace(dir, "$DIR")}: ${JSON.stringify(bytes)}\n  reply (${ms} ms, socat exit ${r.code}): ${JSON.stringify(r.stdout || r.stderr.trim().split("\n").at(-1))}`);
    return r;
  }
  /**
   * The same on the control socket, as netconnectcli talks (it keeps its side open until the
   * answer): the control socket closes a connection whose client shut down its sending side,
   * so socat's half-close would race the answer there.
   */
  async function askControl(what: string, bytes: string) {
    const t0 = performance.now();
    const stdout = await new Promise<string>((resolve, reject) => {
      let text = "";
      const timer = setTimeout(() => reject(new Error(`no answer on ${control} within 10 s`)), 10_000);
      void Bun.connect({
        unix: control,
        socket: {
          open: (s) => void s.write(bytes),
          data: (_s, d) => void (text += d.toString()),
          close: () => (clearTimeout(timer), resolve(text)),
        },
      }).catch(reject);
    });
    transcript.push(`${what}\n  root → ${control.replace(dir, "$DIR")}: ${JSON.stringify(bytes)}\n  reply (${Math.round(performance.now() - t0)} ms): ${JSON.stringify(stdout)}`);
    return { stdout };
  }
  const json = (r: { stdout: string }) => {
    expect(r.stdout).toEndWith("\0");
    expect(r.stdout.indexOf("\0")).toBe(r.stdout.length - 1);
    return JSON.parse(r.stdout.slice(0, -1)) as { result?: unknown; error?: string };
  };

  async function startDaemon(name: string, ap: string[]): Promise<Subprocess> {
    cfgPath = join(dir, `${name}.toml`);
    control = join(dir, `${name}-control.sock`);
    ncSock = join(dir, "run", `${name}-netconnectd.sock`);
    logPath = join(dir, `${name}.log`);
    writeFileSync(
      cfgPath,
      [`bundle = "${bundle}"`, `relay = "127.0.0.1:9"`, `control = "${control}"`, `state_dir = "${join(dir, `${name}-state`)}"`, "[ap]", `netconnectd_socket = "${ncSock}"`, ...ap, ""].join("\n"),
    );
    const proc = Bun.spawn(nsArgv(NS, BUN, MAIN, "--role", "onsite", "--config", cfgPath), { stdout: Bun.file(logPath), stderr: Bun.file(logPath + ".err"), cwd: ROOT });
    procs.push(proc);
    await waitFor(
      async () => {
        if (proc.exitCode !== null) throw new Error(`daemon exited ${proc.exitCode}: ${readFileSync(logPath + ".err", "utf8")}`);
        try {
          const s = (await controlRequest(control, "status", {}, 1000)) as { netconnectd?: { socket?: string; unavailable?: string } };
          if (s.netconnectd?.unavailable && s.netconnectd.unavailable !== "not started") throw new Error(`netconnectd socket unavailable: ${s.netconnectd.unavailable}`);
          return s.netconnectd?.socket === ncSock;
        } catch (e) {
          if ((e as Error).message.startsWith("netconnectd socket unavailable")) throw e;
          return false;
        }
      },
      15_000,
      `the ${name} daemon's netconnectd socket`,
    );
    return proc;
  }

  async function stop(p: Subprocess) {
    p.kill("SIGTERM");
    await p.exited;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "agent-ncs-"));
    chmodSync(dir, 0o755); // nobody must reach the sockets; their own modes decide
    mkdirSync(join(dir, "run"), { mode: 0o755 });
    bundle = join(dir, "site.bundle");
    for (const args of [["pki", "init", "--dir", join(dir, "ca")], ["pki", "issue", "--dir", join(dir, "ca"), "--role", "onsite", "--id", "ncd-site", "--out", bundle]]) {
      const r = await agent(args);
      if (r.code !== 0) throw new Error(`agent ${args.join(" ")}: ${r.stderr}`);
    }
    await createNamespace(NS);
  }, 60_000);

  afterAll(async () => {
    for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.exited));
    await deleteNamespaces([NS]);
    const out = process.env.DROPIN_TRANSCRIPT;
    if (out && transcript.length) {
      mkdirSync(out, { recursive: true });
      writeFileSync(join(out, "netconnectd.txt"), `# netconnectd drop-in transcript (test/netconnectd-system.test.ts); requests as socat sends them, \\u0000 is netconnectd's NUL\n${transcript.join("\n")}\n`);
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  test("[ap] off: every netconnectd request hears ap.enabled at once, on its socket (as nobody) and on the control socket", async () => {
    transcript.push("## [ap] enabled = false, netconnectd_socket with the default mode");
    const d = await startDaemon("off", []);
    expect(statSync(ncSock).mode & 0o777).toBe(0o666);
    expect(statSync(control).mode & 0o777).toBe(0o600);
    const off = "Wi-Fi and the access point are off on this device: set enabled = true in the [ap] section of the agent's config (ap.enabled) and restart the agent";
    for (const req of ['{"status":{}}\0', '{"list_wifi":{"force":false}}\0', '{"config_wifi":{"ssid":"shop","psk":"secret-psk","options":null,"force":false}}\0']) {
      expect(json(await ask("a netconnectd request, [ap] off", ncSock, req, NOBODY))).toEqual({ error: off });
    }
    // The control socket (root only) gave a 5 s timeout here before; now the same answer.
    const viaControl = json(await askControl("the same on the control socket (root)", '{"status":{}}\0'));
    expect(viaControl).toEqual({ error: off });
    // An agent control command on the netconnectd socket is refused, in either framing.
    const refused = json(await ask("an agent control command on the netconnectd socket", ncSock, '{"cmd":"nat.flush"}\0', NOBODY));
    expect(refused.error).toContain(`agent control commands such as "nat.flush" go to the agent's control socket ${control}`);
    const line = await ask("the same, in the agent's own framing (a line)", ncSock, '{"cmd":"status"}\n', NOBODY);
    expect(JSON.parse(line.stdout)).toMatchObject({ ok: false, code: "usage", error: expect.stringContaining("this is the netconnectd socket") });
    // nobody cannot use the control socket at all: only the netconnectd one is open to it.
    const denied = await ask("nobody on the control socket", control, '{"cmd":"status"}\n', NOBODY);
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toContain("Permission denied");
    // The agent itself is unaffected, and reports the socket.
    const st = await agent(["status", "--json", "--control", control]);
    expect(st.code).toBe(3); // running, not connected: the test's relay address answers nothing
    expect(JSON.parse(st.stdout).netconnectd).toMatchObject({ socket: ncSock, mode: "0666", served: 3, refused: 2 });
    await stop(d);
    expect(() => statSync(ncSock)).toThrow(); // removed at stop
  }, 60_000);

  test("[ap] on (no radio here): the real Wi-Fi service answers nobody through the group; others and agent commands are refused", async () => {
    transcript.push("## [ap] enabled = true (interface absent), netconnectd_socket_mode = \"0660\", netconnectd_socket_group = \"nogroup\"");
    const d = await startDaemon("on", ["enabled = true", `interface = "ncwlan0"`, `after = "1h"`, `wpa_ctrl = "${join(dir, "no-wpa")}"`, `netconnectd_socket_mode = "0660"`, `netconnectd_socket_group = "nogroup"`]);
    expect(statSync(ncSock).mode & 0o777).toBe(0o660);
    expect(statSync(ncSock).gid).toBe(65534);
    const status = json(await ask("status", ncSock, '{"status":{}}\0', NOBODY));
    expect(status).toEqual({ result: { link: false, devs: [], connections: { wifi: false, ap: false, wired: false }, wifi: { current_ssid: null, current_address: null, valid_config: false, present: false } } });
    expect(json(await ask("forget_wifi", ncSock, '{"forget_wifi":{}}\0', NOBODY))).toEqual({ result: "wifi was not configured yet" });
    expect(json(await ask("start_wifi (select_wifi)", ncSock, '{"start_wifi":{}}\0', NOBODY))).toEqual({ error: "wifi is not yet configured" });
    expect(json(await ask("an unknown command", ncSock, '{"explode":{}}\0', NOBODY)).error).toContain('unknown message "explode"');
    expect(json(await ask("an agent control command", ncSock, '{"cmd":"wifi.configure","args":{"ssid":"x","psk":"12345678"}}\0', NOBODY)).error).toContain("this is the netconnectd socket");
    const other = await ask("a user outside the group", ncSock, '{"status":{}}\0', USERS);
    expect(other.code).not.toBe(0);
    expect(other.stderr).toContain("Permission denied");
    // The control socket's netconnectd protocol answers the same (it did before; unchanged).
    expect(json(await askControl("status on the control socket (root)", '{"status":{}}\0'))).toEqual(status);
    await stop(d);
  }, 60_000);
});
