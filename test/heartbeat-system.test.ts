// System test as root: the heartbeat outside the tunnel, with real processes in namespaces. On
// the uplink lab (test/helpers/uplink-lab.ts) a REAL relay runs in the relay namespace and a
// real onsite daemon with two working uplinks in the onsite namespace, heartbeats every second.
// The TLS path alone is cut (an iptables rule in the onsite namespace drops TCP to the relay's
// port; the uplinks' probes go to another port, so they stay healthy): the relay must show
// "tunnel down, alive over …" with the uplink diagnostics and the last dial error. Then
// datagrams sent by hand from a router namespace: replayed, stale, forged, truncated and
// unknown ones are each counted by reason and dropped; a bounded flood from a stranger leaves
// no state behind and the device stays alive through it. A device restarted while its TLS path
// is cut still sends heartbeats: its key is kept in its state dir.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ECHO_PORT_BESIDE_RELAY, RELAY_PORT, startLab, type Lab, type LabFleet } from "./helpers/uplink-lab.ts";
import { nsArgv } from "./helpers/netns.ts";
import { BUN } from "./helpers/cli.ts";
import { waitFor } from "./helpers/wait.ts";
import { encodeHeartbeat, type HeartbeatPayload } from "../src/transport/heartbeat/codec.ts";
import { loadKey } from "../src/transport/heartbeat/sender.ts";
import type { DeviceRow } from "../src/tunnel/relay/inventory.ts";

const isRoot = process.getuid?.() === 0;
if (!isRoot && process.env.CI) throw new Error("heartbeat system tests need root; CI runs as root, so this must not be skipped there");
const maybe = isRoot ? describe : describe.skip; // outside CI without root: skipped, since namespaces need root

type Stats = { received: number; accepted: number; tracked: number; dropped: Record<"stale" | "forged" | "truncated" | "unknown" | "replay" | "malformed", number> };

maybe("heartbeat outside the tunnel (needs root)", () => {
  let lab: Lab;
  let fleet: LabFleet;
  const eth = "hbeth0";
  const wlan = "hbwlan0";

  const rows = () => fleet.json<DeviceRow[]>(fleet.relayControl, ["devices", "--all"]);
  const site = async () => (await rows()).find((d) => d.id === "site-1");
  const hbStats = async () => ((await fleet.json<{ relay: { heartbeats: Stats } }>(fleet.relayControl, ["status"])).relay.heartbeats);

  /** Sends datagrams (base64, one per line in a file) to the relay's UDP port from router 1's namespace, then `flood` random ones. */
  async function sendFromRouter(datagrams: Uint8Array[], flood = 0): Promise<void> {
    const file = join(lab.dir, `dgrams-${Math.random().toString(36).slice(2)}.txt`);
    writeFileSync(file, datagrams.map((d) => Buffer.from(d).toString("base64")).join("\n"));
    const script = `
      import dgram from "node:dgram";
      import { readFileSync } from "node:fs";
      const s = dgram.createSocket("udp4");
      const lines = readFileSync(${JSON.stringify(file)}, "utf8").split("\\n").filter(Boolean);
      const send = (b) => new Promise((r, j) => s.send(b, ${RELAY_PORT}, ${JSON.stringify(lab.topo.relayAddr)}, (e) => (e ? j(e) : r())));
      for (const l of lines) { await send(Buffer.from(l, "base64")); await Bun.sleep(20); }
      // A stranger's flood: random bytes and well-formed datagrams of ids nobody knows (bounded).
      for (let i = 0; i < ${flood}; i++) {
        const b = i % 2 ? crypto.getRandomValues(new Uint8Array(1 + (i % 1100))) : Buffer.concat([Buffer.from("AGH1"), Buffer.from([8]), Buffer.from("stranger"), crypto.getRandomValues(new Uint8Array(34 + 32)).fill(0, 32, 34)]);
        await send(b);
        if (i % 200 === 199) await Bun.sleep(5);
      }
      s.close();`;
    const p = Bun.spawn(nsArgv(lab.topo.routers[0]!, BUN, "-e", script), { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    const code = await p.exited;
    if (code !== 0) throw new Error(`sender in ${lab.topo.routers[0]}: exit ${code}: ${await new Response(p.stderr).text()}`);
  }

  beforeAll(async () => {
    lab = await startLab({
      prefix: "hb",
      relay: true,
      topConfig: 'heartbeat_interval = "1s"',
      // Probes go to the peer echo beside the relay: cutting the relay's TCP port leaves the uplinks healthy.
      tracking: `targets = ["${"10.99.0.1"}:${ECHO_PORT_BESIDE_RELAY}"]\ninterval = "500ms"\ntimeout = "500ms"`,
    });
    fleet = lab.fleet!;
  }, 90_000);

  afterAll(async () => {
    await lab?.close();
  }, 30_000);

  test("with the tunnel up: online, and heartbeats arrive over both healthy uplinks", async () => {
    await waitFor(async () => (await site())?.online === true, 30_000, "site-1 online at the relay", { every: 200, detail: () => lab.onsiteLog().slice(-2000) });
    let seen: string[] = [];
    await waitFor(async () => {
      seen = Object.keys((await site())?.heard_over ?? {});
      return seen.includes(eth) && seen.includes(wlan);
    }, 20_000, () => `heartbeats over ${eth} and ${wlan} (seen: ${seen.join(", ")})`, { every: 200 });
    const d = (await site())!;
    expect(d.state).toBe("online");
    expect(d.heartbeat!.payload.ul.map((u) => u.n)).toEqual([eth, wlan, "hbwwan0"]);
    // The key the relay handed out inside TLS is kept in the device's state dir, 0600.
    const key = loadKey(join(lab.dir, "state"));
    expect(key?.port).toBe(RELAY_PORT);
    const { statSync } = await import("node:fs");
    expect(statSync(join(lab.dir, "state", "heartbeat.key")).mode & 0o777).toBe(0o600);
  }, 60_000);

  test("TLS path cut (TCP to the relay port dropped): the relay shows 'tunnel down, alive over …' with the uplinks and the last error", async () => {
    await lab.topo.ns(lab.topo.onsite, ["iptables", "-I", "OUTPUT", "-p", "tcp", "-d", lab.topo.relayAddr, "--dport", String(RELAY_PORT), "-j", "DROP"]);
    try {
      // The relay notices the dead connection by its keepalive (15 s); the heartbeats keep coming.
      const d = await waitFor(async () => {
        const x = await site();
        return x && x.state === "alive" && x.status.includes("last error:") ? x : undefined;
      }, 45_000, "site-1 shown as tunnel down, alive, with its last error", { every: 250, detail: () => lab.onsiteLog().slice(-1500) });
      expect(d.online).toBe(false);
      expect(d.status).toMatch(new RegExp(`^tunnel down, alive over (${eth}|${wlan}), last error: .+`));
      const ul = d.heartbeat!.payload.ul;
      expect(ul.find((u) => u.n === eth)).toMatchObject({ s: "up" });
      expect(ul.find((u) => u.n === wlan)).toMatchObject({ s: "up" });
      expect(typeof ul.find((u) => u.n === eth)!.r).toBe("number");
      expect(d.heartbeat!.payload.tun).not.toBe("up");
      // The CLI says it as a technician reads it.
      const r = await import("./helpers/cli.ts").then((m) => m.agent(["devices", "--offline", "--control", fleet.relayControl]));
      expect(r.stdout).toMatch(/site-1\s+tunnel down/);
      expect(r.stdout).toMatch(new RegExp(`site-1: tunnel down, alive over (${eth}|${wlan}), last error: `));
      expect(r.stdout).toMatch(new RegExp(`uplinks: ${eth} up`));

      // A device that starts while its TLS path is broken still sends: the key is in its state dir.
      const old = lab.daemon();
      old.kill("SIGTERM");
      await old.exited;
      const restartedAt = Date.now();
      lab.restartDaemon();
      const again = await waitFor(async () => {
        const x = await site();
        return x && x.state === "alive" && Date.parse(x.heartbeat!.at) > restartedAt ? x : undefined;
      }, 30_000, "a heartbeat from the restarted device, whose tunnel never came up", { every: 250 });
      expect(again.online).toBe(false);
      expect(again.heartbeat!.payload.up).toBeGreaterThan(0);
    } finally {
      await lab.topo.ns(lab.topo.onsite, ["iptables", "-D", "OUTPUT", "-p", "tcp", "-d", lab.topo.relayAddr, "--dport", String(RELAY_PORT), "-j", "DROP"], true);
    }
  }, 90_000);

  test("replayed, stale, forged, truncated and unknown datagrams are counted by reason and dropped; a stranger's flood leaves no state", async () => {
    const key = loadKey(join(lab.dir, "state"))!.key;
    const payload: HeartbeatPayload = { up: 1, act: eth, via: "by-hand", iv: 1000, tun: "up", ul: [], err: null, load: 0, disk: 1 };
    const boot = crypto.getRandomValues(new Uint8Array(16));
    const now = Date.now();
    const good = encodeHeartbeat({ id: "site-1", boot, seq: 1n, sentAt: now, payload }, key);
    const stale = encodeHeartbeat({ id: "site-1", boot, seq: 2n, sentAt: now - 200_000, payload }, key);
    const forged = encodeHeartbeat({ id: "site-1", boot, seq: 3n, sentAt: now, payload }, key);
    forged[60] = forged[60]! ^ 0x20;
    const unknown = encodeHeartbeat({ id: "site-404", boot, seq: 1n, sentAt: now, payload }, key);
    const truncated = encodeHeartbeat({ id: "site-1", boot, seq: 4n, sentAt: now, payload }, key).subarray(0, 40);
    const before = await hbStats();
    await sendFromRouter([good, good, stale, forged, truncated, unknown]);
    const after = await waitFor(async () => {
      const s = await hbStats();
      return s.dropped.stale > before.dropped.stale && s.dropped.forged > before.dropped.forged && s.dropped.truncated > before.dropped.truncated && s.dropped.unknown > before.dropped.unknown && s.dropped.replay > before.dropped.replay ? s : undefined;
    }, 10_000, "each bad datagram counted");
    expect(after.dropped.stale - before.dropped.stale).toBe(1);
    expect(after.dropped.forged - before.dropped.forged).toBe(1);
    expect(after.dropped.truncated - before.dropped.truncated).toBe(1);
    expect(after.dropped.unknown - before.dropped.unknown).toBe(1);
    expect(after.dropped.replay - before.dropped.replay).toBeGreaterThanOrEqual(1);

    // The flood: 4,000 datagrams from a stranger (bounded). Nothing is kept per source.
    const rss = () => Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${relayPid()}/status`, "utf8"))![1]);
    const rss0 = rss();
    await sendFromRouter([], 4000);
    const flooded = await waitFor(async () => {
      const s = await hbStats();
      return s.received - after.received >= 2000 ? s : undefined; // UDP may lose some under load; most arrive
    }, 20_000, "the flood received");
    expect(flooded.tracked).toBe(1); // only site-1 has a replay window
    expect(flooded.accepted - after.accepted).toBeLessThan(1000); // the device's own, never the stranger's
    console.log(`heartbeat flood: ${flooded.received - after.received} datagrams, relay RSS ${rss0} → ${rss()} KiB, dropped ${JSON.stringify(flooded.dropped)}`);
    // And the device is still heard through it.
    const acc = flooded.accepted;
    await waitFor(async () => (await hbStats()).accepted > acc, 10_000, "site-1's heartbeats still accepted after the flood");
  }, 60_000);

  function relayPid(): number {
    // The relay runs in the relay namespace; its pid is the one `ip netns pids` lists running main.ts --role relay.
    const r = Bun.spawnSync(["ip", "netns", "pids", lab.topo.relay]);
    for (const pid of r.stdout.toString().split(/\s+/).filter(Boolean)) {
      try {
        if (readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("relay\0--bundle")) return Number(pid);
      } catch {
        /* gone */
      }
    }
    throw new Error("no relay process in the relay namespace");
  }
});
