// Packet tunnels and UDP across two relays of a cluster (issue 16: "packet tunnels and UDP work
// the same way"): real redis-server, two relay processes in cluster mode with their mesh, a real
// onsite device on relay-b with the customer's LAN behind it, a real master on relay-a, each in
// its own namespace of the tunnel lab (test/helpers/tunnel-lab.ts). Both relays and Redis share
// the lab's relay namespace (relay-a 10.200.0.1:7443, relay-b :7444, their mesh ports :8444 and
// :8445, Redis on its own 127.0.0.1:6379), so the device's and the master's only way to each
// other is relay-a → mesh → relay-b.
//
// A laptop on the master's secondary port: a routed tunnel (the master's DHCP lease, ping, curl
// and a 1 s iperf3 to a LAN host), switched to bridged in the same session (a lease from the
// LAN's own dnsmasq: L2 reach) and back; a UDP forward echoes through socat; then the mesh
// port is cut by an nft rule in the relay namespace: the master's session ends with the mesh's
// reason (resuming, not hanging), and once the rule is gone the link is redialled and the
// master's resume brings the routed tunnel back by itself.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { agent } from "./helpers/cli.ts";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { parseIperfJson } from "./helpers/iperf.ts";
import { inNs, nsArgv } from "./helpers/netns.ts";
import { programsPresent, run, spawnChild, type Child } from "./helpers/proc.ts";
import { TestRedis } from "./helpers/redis.ts";
import { buildTunnelLab, LAB_RELAY, LAN_ROUTER, MASTER_SECONDARY, pingable, type TunnelLab } from "./helpers/tunnel-lab.ts";
import { waitFor } from "./helpers/wait.ts";

const FILE = "test/cluster-tunnel.test.ts";
const root = process.getuid?.() === 0;
if (!root) {
  if (process.env.CI) throw new Error(`${FILE} needs root (namespaces, TUN/TAP); in CI this is a failure, not a skip`);
  console.warn(`skipping ${FILE}: needs root`);
}
const HAVE = root && programsPresent(FILE, ["ip", "nft", "dnsmasq", "busybox", "iperf3", "curl", "socat", "redis-server", "redis-cli"]);

const PORT = { "relay-a": 7443, "relay-b": 7444 } as const;
const MESH = { "relay-a": 8444, "relay-b": 8445 } as const;
const HTTP_PORT = 8080;
const UDP_ECHO = 7777;
const NO_SSH = { SSH_CONNECTION: "", SSH_CLIENT: "" };
const LAPTOP_GW = MASTER_SECONDARY.split("/")[0]!;

interface TunnelJson {
  mode: string;
  state: string;
  master?: { iface: string };
  onsite?: { iface: string };
}
interface SessionJson {
  session: string;
  state: string;
  reason?: string;
  tunnel?: TunnelJson;
  forwards: { port: number; proto?: string }[];
}

describe.skipIf(!HAVE)("packet tunnels and UDP across two relays of a cluster", () => {
  let lab: TunnelLab;
  let fleet: Fleet;
  let redis: TestRedis;
  const relays = new Map<string, Daemon>();
  let onsite: Daemon;
  let master: Daemon;
  const servers: Child[] = [];
  let session = "";

  const cli = (d: Daemon, args: string[]) => agent([...args, "--control", d.sock], { env: NO_SSH });
  const logs = () => `\n--- master\n${master?.log().slice(-1500)}\n--- relay-a\n${relays.get("relay-a")?.log().slice(-1200)}\n--- relay-b\n${relays.get("relay-b")?.log().slice(-1200)}\n--- onsite\n${onsite?.log().slice(-1000)}`;
  async function sessions(): Promise<SessionJson[]> {
    const r = await cli(master, ["sessions", "--json"]);
    if (r.code !== 0) throw new Error(`sessions: ${r.stderr}`);
    return JSON.parse(r.stdout) as SessionJson[];
  }
  const sessionOf = async (id = session) => (await sessions()).find((s) => s.session === id);
  const waitTunnel = (mode: string, ms = 20_000) => {
    let last: SessionJson | undefined;
    return waitFor(async () => {
      const s = (last = await sessionOf());
      return s?.state === "active" && s.tunnel?.mode === mode && s.tunnel.state === "up" ? s.tunnel : undefined;
    }, ms, () => `the ${mode} tunnel up across the mesh (${JSON.stringify(last)})${logs()}`);
  };
  const curl = async () => {
    const r = await inNs(lab.laptop, ["curl", "-sS", "--max-time", "5", `http://${LAN_ROUTER}:${HTTP_PORT}/`], true);
    return r.code === 0 ? r.stdout : `curl exit ${r.code}: ${r.stderr}`;
  };
  /** The mesh port of relay-b, cut both ways with TCP resets (packets to it and from it). */
  const meshCut = async (on: boolean) => {
    if (on) {
      await inNs(lab.relay, ["nft", "add", "table", "inet", "meshcut"]);
      await inNs(lab.relay, ["nft", "add", "chain", "inet", "meshcut", "in", "{ type filter hook input priority 0 ; }"]);
      // The resets themselves (sport 8445 too) must pass, or both ends just retransmit.
      await inNs(lab.relay, ["nft", "add", "rule", "inet", "meshcut", "in", "tcp", "flags", "rst", "accept"]);
      for (const dir of ["dport", "sport"]) await inNs(lab.relay, ["nft", "add", "rule", "inet", "meshcut", "in", "tcp", dir, String(MESH["relay-b"]), "reject", "with", "tcp", "reset"]);
    } else await inNs(lab.relay, ["nft", "delete", "table", "inet", "meshcut"]);
  };

  const startRelay = async (id: "relay-a" | "relay-b") => {
    const conf = join(fleet.dir, `${id}.toml`);
    writeFileSync(conf, `[cluster]\nredis = "${redis.url}"\nmesh = "${LAB_RELAY}:${MESH[id]}"\n`);
    // Started again after kill -9: its old control socket file goes first, its bundle stays.
    rmSync(join(fleet.dir, `${id}.sock`), { force: true });
    const bundle = existsSync(join(fleet.dir, `${id}.bundle`)) ? join(fleet.dir, `${id}.bundle`) : await fleet.issue("relay", id, ["--host", LAB_RELAY]);
    relays.set(id, await fleet.start("relay", id, ["--listen", `${LAB_RELAY}:${PORT[id]}`, "--config", conf], bundle, lab.relay));
  };

  beforeAll(async () => {
    lab = await buildTunnelLab("xt", { relay: true });
    redis = await TestRedis.create({ ns: lab.relay });
    fleet = await Fleet.create();
    const www = join(fleet.dir, "www");
    mkdirSync(www);
    writeFileSync(join(www, "index.html"), "hello from the LAN behind relay-b\n");
    servers.push(spawnChild("busybox httpd", nsArgv(lab.lan, "busybox", "httpd", "-f", "-p", `${LAN_ROUTER}:${HTTP_PORT}`, "-h", www)));
    servers.push(spawnChild("iperf3 -s", nsArgv(lab.lan, "iperf3", "-s", "-B", LAN_ROUTER, "-p", "5201")));
    servers.push(spawnChild("socat UDP echo", nsArgv(lab.lan, "socat", `UDP4-RECVFROM:${UDP_ECHO},bind=${LAN_ROUTER},fork`, "PIPE")));
    await startRelay("relay-a");
    await startRelay("relay-b");
    const onsiteConf = join(fleet.dir, "onsite.toml");
    writeFileSync(onsiteConf, `[tunnel]\nenabled = true\nbridged = true\nlan_bridge = "br-lan"\n`);
    onsite = await fleet.start("onsite", "site-1", ["--relay", `${LAB_RELAY}:${PORT["relay-b"]}`, "--allow", "192.168.1.0/24", "--config", onsiteConf], undefined, lab.onsite);
    const masterConf = join(fleet.dir, "master.toml");
    writeFileSync(masterConf, `[tunnel]\nsecondary = "eth1"\ndhcp = true\npool = "10.98.0.0/16"\n`);
    master = await fleet.start("master", "tech-1", ["--relay", `${LAB_RELAY}:${PORT["relay-a"]}`, "--config", masterConf], undefined, lab.master);
    await fleet.waitConnected(onsite);
    await fleet.waitConnected(master);
    // relay-a knows the device is on relay-b (Redis presence) before the master asks for it.
    await waitFor(async () => {
      const rows = await fleet.json<{ id: string; online: boolean; relay?: string }[]>(relays.get("relay-a")!, ["devices", "--all"]);
      return rows.some((r) => r.id === "site-1" && r.online && r.relay === "relay-b");
    }, 15_000, () => `relay-a listing site-1 online on relay-b${logs()}`);
  }, 60_000);

  afterAll(async () => {
    await fleet?.close();
    for (const s of servers) await s.stop();
    await redis?.close();
    await lab?.teardown(); // the namespaces go with the nft rule, the TUN/TAP ends and the veths
  }, 40_000);

  test("routed: the laptop behind the master on relay-a reaches the LAN behind the device on relay-b: lease, ping, curl, iperf3", async () => {
    const r = await cli(master, ["connect", "site-1", "--tunnel", "routed", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    session = (JSON.parse(r.stdout) as SessionJson).session;
    const t = await waitTunnel("routed");
    expect(t.master?.iface).toMatch(/^agt-m[0-9a-f]{8}$/);
    expect(t.onsite?.iface).toMatch(/^agt-t[0-9a-f]{8}$/);
    // The session is carried over the mesh: relay-b lists it with the master's relay.
    const onB = await fleet.json<{ session: string; master: string }[]>(relays.get("relay-b")!, ["sessions"]);
    expect(onB.some((s) => s.session === session && s.master === "tech-1")).toBe(true);
    const mesh = (await fleet.status(relays.get("relay-a")!)).relay as { mesh?: { out: { node: string; up: boolean }[] } };
    expect(mesh.mesh?.out.find((l) => l.node === "relay-b")?.up).toBe(true);

    expect((await lab.lease()).router).toBe(LAPTOP_GW);
    expect(await pingable(lab.laptop, LAN_ROUTER, 10_000)).toBe(true);
    expect(await curl()).toBe("hello from the LAN behind relay-b\n");
    const ip = parseIperfJson((await inNs(lab.laptop, ["iperf3", "-c", LAN_ROUTER, "-p", "5201", "-t", "1", "-J", "--connect-timeout", "3000"], true)).stdout);
    console.log(`cluster tunnel: iperf3 laptop → master@relay-a → mesh → site-1@relay-b → LAN, routed: ${(ip.receivedBps / 1e6).toFixed(0)} Mbit/s`);
    expect(ip.receivedBytes).toBeGreaterThan(200_000);
  }, 45_000);

  test("bridged across the mesh: `agent tunnel mode` switches the same session; the laptop's lease comes from the LAN's own dnsmasq; back to routed", async () => {
    expect(session).not.toBe("");
    const sw = await cli(master, ["tunnel", "mode", session, "bridged"]);
    expect(sw.code, sw.stderr).toBe(0);
    const b = await waitTunnel("bridged");
    expect(b.master?.iface).toMatch(/^agt-q[0-9a-f]{8}$/);
    await lab.forgetLease();
    // DHCP is broadcast: only an L2 path to the LAN answers it.
    const lan = await lab.lease();
    expect(lan.router).toBe(LAN_ROUTER);
    expect(lan.ip).toMatch(/^192\.168\.1\.1[0-5]\d$/);
    expect(await pingable(lab.laptop, LAN_ROUTER, 10_000)).toBe(true);

    expect((await cli(master, ["tunnel", "mode", session, "routed"])).code).toBe(0);
    await waitTunnel("routed");
    await lab.forgetLease();
    expect((await lab.lease()).router).toBe(LAPTOP_GW);
    expect(await pingable(lab.laptop, LAN_ROUTER, 10_000)).toBe(true);
  }, 45_000);

  test("a UDP forward across the mesh: socat's datagrams echo back from the LAN", async () => {
    const r = await cli(master, ["connect", "site-1", "--forward", `udp:127.0.0.1:0:${LAN_ROUTER}:${UDP_ECHO}`, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout) as SessionJson;
    expect(s.forwards[0]?.proto).toBe("udp");
    const port = s.forwards[0]!.port;
    const payload = `datagram across relay-a and relay-b ${Date.now()}`;
    // The first datagram may race the packet stream's opening: sent again until answered (bounded).
    let got = "";
    await waitFor(async () => {
      const e = await run(nsArgv(lab.master, "socat", "-t", "2", "-", `UDP4:127.0.0.1:${port}`), { stdin: payload, timeoutMs: 5_000 });
      got = e.stdout;
      return got === payload;
    }, 15_000, () => `the echo through the UDP forward (last: ${JSON.stringify(got)})${logs()}`);
    // Carried over the mesh, not by some other path: relay-a handed it to relay-b.
    expect(relays.get("relay-a")!.log()).toContain(`session ${s.session}: tech-1 → site-1 via relay relay-b (udp ${LAN_ROUTER}:${UDP_ECHO})`);
    const view = (await sessionOf(s.session))!;
    expect((view.forwards[0] as unknown as { datagrams_out: number }).datagrams_out).toBeGreaterThanOrEqual(1);
    expect((await cli(master, ["disconnect", s.session])).code).toBe(0);
  }, 30_000);

  test("the mesh link cut: the tunnel's session ends with the mesh's reason on the master; the link back, the master's resume brings the tunnel back", async () => {
    expect(session).not.toBe("");
    await meshCut(true);
    // Traffic (or the link's keepalive) meets the reset at once.
    void pingable(lab.laptop, LAN_ROUTER, 2_000);
    let last: SessionJson | undefined;
    await waitFor(async () => (last = await sessionOf())?.state === "resuming", 15_000, () => `the master seeing its session interrupted (${JSON.stringify(last)})${logs()}`);
    expect(last!.reason).toMatch(/relay-b/);
    await waitFor(() => /interrupted \(mesh link to relay relay-b lost: /.test(master.log()), 5_000, () => `the master logging the mesh's reason${logs()}`);
    // While the link is cut no packet crosses: nothing pretends to be up.
    expect(await pingable(lab.laptop, LAN_ROUTER, 1_500)).toBe(false);
    expect((await sessionOf())?.state).toBe("resuming");

    await meshCut(false);
    await waitTunnel("routed", 30_000);
    expect((await sessionOf())?.session).toBe(session);
    expect(await pingable(lab.laptop, LAN_ROUTER, 10_000)).toBe(true);
    expect(await curl()).toBe("hello from the LAN behind relay-b\n");
    // The device's end heard it too, from relay-b, and made its end again at the resume.
    expect(onsite.log()).toContain(`session ${session} closed: mesh link from relay relay-a lost: `);
    expect(onsite.log().slice(onsite.log().indexOf(`session ${session} closed: mesh link`))).toContain(`session ${session} from tech-1 accepted: routed tunnel`);
    expect(relays.get("relay-a")!.log()).toMatch(/mesh: link to relay relay-b at .* is up[\s\S]*mesh link to relay relay-b lost[\s\S]*mesh: link to relay relay-b at .* is up/);
  }, 60_000);

  test("kill -9 of the device's relay: the master's session waits, resuming; relay-b back, the device redials it and the routed tunnel is back across the mesh untouched", async () => {
    await waitTunnel("routed");
    await fleet.stop(relays.get("relay-b")!, "SIGKILL");
    let last: SessionJson | undefined;
    await waitFor(async () => (last = await sessionOf())?.state === "resuming", 15_000, () => `the master seeing relay-b gone (${JSON.stringify(last)})${logs()}`);
    expect(last!.reason).toBeTruthy();
    expect(await pingable(lab.laptop, LAN_ROUTER, 1_000)).toBe(false);
    await startRelay("relay-b");
    await fleet.waitConnected(onsite, 30_000);
    await waitTunnel("routed", 40_000);
    expect((await sessionOf())?.session).toBe(session);
    expect(await pingable(lab.laptop, LAN_ROUTER, 10_000)).toBe(true);
    const onB = await fleet.json<{ session: string }[]>(relays.get("relay-b")!, ["sessions"]);
    expect(onB.map((s) => s.session)).toContain(session);
  }, 60_000);
});
