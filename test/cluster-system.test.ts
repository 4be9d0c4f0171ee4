// Three real relay processes and one real redis-server on 127.0.0.1 (issue 16): every relay,
// and a master on any of them, lists the whole fleet; kill -9 of a relay moves its devices to
// another; Redis stopped: same-relay sessions go on, cross-relay opens are refused with the
// reason, and everything converges when it is back; a revocation on one relay closes the device
// on whichever relay holds it; the same id on two relays resolves to one.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { TestRedis, redisPresent } from "./helpers/redis.ts";
import { freePort } from "./helpers/proc.ts";
import { agent } from "./helpers/cli.ts";
import { waitFor } from "./helpers/wait.ts";
import { caPaths } from "../src/pki.ts";
import { runIperf, startIperfServer, type IperfServer } from "./helpers/iperf.ts";
import { programsPresent } from "./helpers/proc.ts";
import type { DeviceRow } from "../src/tunnel/relay/inventory.ts";
import type { SessionInfo } from "../src/transport/messages.ts";

const HAVE = redisPresent("test/cluster-system.test.ts") && programsPresent("test/cluster-system.test.ts", ["iperf3"]);

type Row = DeviceRow & { relay?: string };

describe.skipIf(!HAVE)("a cluster of three relays on one Redis", () => {
  let fleet: Fleet;
  let redis: TestRedis;
  const relays = new Map<string, Daemon>();
  const ports = new Map<string, number>();
  const revocations = new Map<string, string>();
  let web: ReturnType<typeof Bun.serve>;
  let iperf: IperfServer;
  const get = async (port: number) => (await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(5_000) })).text();
  let master: Daemon;
  const onsites = new Map<string, Daemon>();

  const startRelay = async (id: string, port = 0) => {
    const conf = join(fleet.dir, `${id}.toml`);
    const mesh = await freePort();
    writeFileSync(conf, `[cluster]\nredis = "${redis.url}"\nmesh = "127.0.0.1:${mesh}"\n`);
    // A relay started again after kill -9 finds its old control socket file: gone first.
    rmSync(join(fleet.dir, `${id}.sock`), { force: true });
    const rev = join(fleet.dir, `${id}.revoked`);
    writeFileSync(rev, "# agent revocations v1\n");
    revocations.set(id, rev);
    const d = await fleet.startRelay(id, ["--config", conf, "--revocations", rev], port);
    relays.set(id, d);
    ports.set(id, fleet.relayPort);
    return d;
  };
  /** A device (or master) dialing the listed relays, in a shuffled order. */
  const startDevice = async (role: "onsite" | "master", id: string, on: string[], name = id, bundle?: string) => {
    const conf = join(fleet.dir, `${name}.toml`);
    writeFileSync(conf, `relay = [${on.map((r) => `"127.0.0.1:${ports.get(r)}"`).join(", ")}]\n${role === "onsite" ? 'allow = ["127.0.0.1/32"]\n' : ""}`);
    if (!bundle) await fleet.issue(role, id);
    return fleet.start(role, name, ["--config", conf], bundle);
  };
  const devices = (d: Daemon) => fleet.json<Row[]>(d, ["devices", "--all"]);
  const row = async (d: Daemon, id: string) => (await devices(d)).find((r) => r.id === id);
  /** Every one of `ids` is listed online by relay `d`. */
  const allOnline = async (d: Daemon, ids: string[]) => {
    const l = await devices(d);
    return ids.every((id) => l.some((x) => x.id === id && x.online));
  };
  const onlineOn = async (d: Daemon, id: string) => {
    const r = await row(d, id);
    return r?.online ? (r.relay ?? "?") : null;
  };

  beforeAll(async () => {
    redis = await TestRedis.create();
    fleet = await Fleet.create();
    web = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("hello from the LAN\n") });
    iperf = await startIperfServer();
    for (const id of ["relay-a", "relay-b", "relay-c"]) await startRelay(id);
    onsites.set("site-a", await startDevice("onsite", "site-a", ["relay-a"]));
    onsites.set("site-c", await startDevice("onsite", "site-c", ["relay-c"]));
    onsites.set("site-m", await startDevice("onsite", "site-m", ["relay-b", "relay-c"]));
    master = await startDevice("master", "tech-1", ["relay-a"]);
  }, 60_000);
  afterAll(async () => {
    await fleet?.close();
    await redis?.close();
    web?.stop(true);
    await iperf?.stop();
  }, 30_000);

  test("`agent devices` on each relay, and on a master, lists every device of the fleet with its relay", async () => {
    for (const r of relays.values())
      await waitFor(() => allOnline(r, ["site-a", "site-c", "site-m"]), 15_000, `${r.id} listing all three devices online`);
    const onA = await devices(relays.get("relay-a")!);
    expect(onA.find((x) => x.id === "site-a")!.relay).toBe("relay-a");
    expect(onA.find((x) => x.id === "site-c")!.relay).toBe("relay-c");
    expect(["relay-b", "relay-c"]).toContain(onA.find((x) => x.id === "site-m")!.relay!);
    await fleet.waitConnected(master);
    const seen = await fleet.json<{ id: string; online: boolean }[]>(master, ["devices"]);
    expect(seen.filter((d) => d.online).map((d) => d.id).sort()).toEqual(["site-a", "site-c", "site-m"]);
    const st = (await fleet.status(relays.get("relay-b")!)).relay as { cluster: { redis: string; relays: string[]; redis_url: string } };
    expect(st.cluster.redis).toBe("up");
    expect(st.cluster.relays.sort()).toEqual(["relay-a", "relay-b", "relay-c"]);
  }, 30_000);

  test("a same-relay session carries bytes; `agent sessions` on another relay lists it", async () => {
    await waitFor(async () => (await onlineOn(relays.get("relay-a")!, "site-a")) === "relay-a", 10_000, "site-a on relay-a");
    const { session, ports: [p] } = await fleet.connect(master, "site-a", [`127.0.0.1:${web.port}`]);
    expect(await (await fetch(`http://127.0.0.1:${p}/`)).text()).toBe("hello from the LAN\n");
    await waitFor(async () => (await fleet.json<(SessionInfo & { relay?: string })[]>(relays.get("relay-c")!, ["sessions"])).some((s) => s.session === session && s.relay === "relay-a"), 10_000, "relay-c listing relay-a's session");
  }, 30_000);

  test("a master on relay-a reaches devices on relay-b and relay-c over the mesh: curl and iperf3", async () => {
    const a = relays.get("relay-a")!;
    await waitFor(() => allOnline(a, ["site-c", "site-m"]), 10_000, "site-c and site-m online");
    for (const dev of ["site-c", "site-m"]) {
      const { ports: [p] } = await fleet.connect(master, dev, [`127.0.0.1:${web.port}`]);
      expect(await get(p!)).toBe("hello from the LAN\n");
    }
    const { ports: [ip] } = await fleet.connect(master, "site-c", [`127.0.0.1:${iperf.port}`]);
    for (const reverse of [false, true]) {
      const r = await runIperf({ host: "127.0.0.1", port: ip!, seconds: 2, reverse });
      console.log(`cluster: iperf3 master@relay-a → site-c@relay-c${reverse ? " (reverse)" : ""}: ${(r.receivedBps / 1e6).toFixed(0)} Mbit/s`);
      // The sender's count includes what was still in flight when -t ran out: only the receiver's is what crossed.
      expect(r.receivedBytes).toBeGreaterThan(1_000_000);
    }
  }, 40_000);

  test("Redis stopped: the same-relay session goes on, a cross-relay open is refused saying why; Redis back: the listings converge", async () => {
    const a = relays.get("relay-a")!;
    const forward = await fleet.connect(master, "site-a", [`127.0.0.1:${web.port}`]);
    const across = await fleet.connect(master, "site-c", [`127.0.0.1:${web.port}`]);
    await redis.kill();
    await waitFor(async () => ((await fleet.status(a)).relay as { cluster: { redis: string } }).cluster.redis === "unreachable", 10_000, "relay-a noticing Redis gone");
    expect(await get(forward.ports[0]!)).toBe("hello from the LAN\n");
    // A session already carried over the mesh needs no Redis either.
    expect(await get(across.ports[0]!)).toBe("hello from the LAN\n");
    const r = await fleet.cli(master, ["connect", "site-c", "--forward", `127.0.0.1:0:127.0.0.1:${web.port}`, "--json"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("cannot look for device site-c on the other relays: the cluster store is unreachable");
    // Its own devices are still listed while Redis is away; nothing crashed.
    expect((await devices(a)).find((x) => x.id === "site-a")?.online).toBe(true);
    await redis.start(); // empty: every relay writes its part again
    for (const rel of relays.values())
      await waitFor(() => allOnline(rel, ["site-a", "site-c", "site-m"]), 20_000, `${rel.id} listing all three online after Redis is back`);
    for (const d of relays.values()) expect(d.proc.exitCode).toBeNull();
  }, 60_000);

  test("kill -9 of the relay holding a device: it reappears on the other relay of its list, and the master's session answers again untouched", async () => {
    const a = relays.get("relay-a")!;
    const holder = (await waitFor(() => onlineOn(a, "site-m"), 10_000, "site-m online somewhere"))!;
    const other = holder === "relay-b" ? "relay-c" : "relay-b";
    const { ports: [p] } = await fleet.connect(master, "site-m", [`127.0.0.1:${web.port}`]);
    expect(await get(p!)).toBe("hello from the LAN\n");
    const t0 = performance.now();
    await fleet.stop(relays.get(holder)!, "SIGKILL");
    await waitFor(async () => (await onlineOn(a, "site-m")) === other, 20_000, `site-m online on ${other}`);
    const moved = performance.now() - t0;
    // The same local port, nobody touching the master: its session resumes through relay-a to the other relay.
    await waitFor(() => get(p!).then((t) => t === "hello from the LAN\n", () => false), 30_000, "the master's forward to site-m answering again");
    console.log(`cluster: kill -9 of ${holder} → site-m online on ${other} after ${Math.round(moved)} ms, the master's forward answering again after ${Math.round(performance.now() - t0)} ms`);
    // The dead relay's own devices are listed, offline (its inventory stays in Redis).
    if (holder === "relay-c") await waitFor(async () => (await row(a, "site-c"))?.online === false, 10_000, "site-c offline with its relay gone");
    await waitFor(async () => !(((await fleet.status(a)).relay as { cluster: { relays: string[] } }).cluster.relays.includes(holder)), 10_000, `relay-a dropping ${holder}`);
    // Back on its port: the cluster has three relays again.
    await startRelay(holder, ports.get(holder));
    await waitFor(async () => (((await fleet.status(a)).relay as { cluster: { relays: string[] } }).cluster.relays.length === 3), 10_000, "three relays again");
  }, 60_000);

  test("revoked on one relay: closed on the relay that holds it", async () => {
    const c = relays.get("relay-c")!;
    await waitFor(async () => (await onlineOn(c, "site-c")) === "relay-c", 20_000, "site-c on relay-c");
    const r = await agent(["pki", "revoke", "--dir", fleet.ca, "--id", "site-c"]);
    expect(r.code).toBe(0);
    const t0 = performance.now();
    copyFileSync(caPaths(fleet.ca).revoked, revocations.get("relay-a")!);
    await waitFor(() => onsites.get("site-c")!.log().includes("revoked"), 10_000, "site-c hearing it is revoked", { detail: () => c.log().slice(-2000) });
    console.log(`cluster: revoked on relay-a → site-c closed on relay-c after ${Math.round(performance.now() - t0)} ms`);
    await waitFor(async () => (await row(c, "site-c"))?.online === false, 10_000, "site-c offline");
    expect(c.log()).toContain("revoked on another relay: closed 1 live connection(s)");
  }, 30_000);

  test("the same id on two relays resolves to one: the older connection is closed", async () => {
    const a = relays.get("relay-a")!;
    await waitFor(async () => (await onlineOn(a, "site-a")) === "relay-a", 10_000, "site-a on relay-a");
    const clone = await startDevice("onsite", "site-a", ["relay-b"], "site-a-clone", join(fleet.dir, "site-a.bundle"));
    await waitFor(() => a.log().includes("site-a connected to another relay more recently"), 15_000, "relay-a closing its older connection of site-a", { detail: () => a.log().slice(-2000) });
    // One row for it in the fleet's listing, whichever relay holds it now.
    const all = (await devices(a)).filter((x) => x.id === "site-a");
    expect(all.length).toBe(1);
    await fleet.stop(clone);
    await waitFor(async () => (await onlineOn(a, "site-a")) === "relay-a", 20_000, "site-a back on relay-a alone");
  }, 40_000);
});
