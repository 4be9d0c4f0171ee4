// Issue 14 §5 through a real HAProxy (Debian's) in network namespaces: the devices' namespace
// (10.77.1.2) reaches a balancer namespace (10.77.1.1) where HAProxy forwards TCP to the relay
// with `send-proxy-v2`. The relay (proxy_protocol = true) shows the device's real address in its
// inventory, applies its admission caps per real source, and refuses a connection that comes
// around the balancer. A relay without proxy_protocol that gets a PROXY header refuses it and
// says what it probably was.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { BUN } from "./helpers/cli.ts";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { RUN_TAG, createNamespace, deleteNamespaces, inNs, nsArgv, nsName } from "./helpers/netns.ts";
import { programsPresent } from "./helpers/proc.ts";
import { waitFor } from "./helpers/wait.ts";

const LB = "10.77.1.1";
const DEV = "10.77.1.2";
const present = programsPresent("proxy-protocol-haproxy.test.ts", ["haproxy", "openssl", "socat", "ip"]);
const root = process.getuid?.() === 0;
if (!root && process.env.CI) throw new Error("proxy-protocol-haproxy.test.ts needs root (network namespaces); in CI this is a failure, not a skip");

interface Device {
  id: string;
  address: string;
  online: boolean;
}

describe.skipIf(!present || !root)("the relay behind HAProxy (PROXY protocol v2)", () => {
  const devNs = nsName("ppdev");
  const lbNs = nsName("pplb");
  let fleet: Fleet;
  let relay: Daemon;
  let plain: Daemon;
  let onsite: Daemon;
  let master: Daemon;
  let haproxy: Subprocess | undefined;
  let echo: Subprocess | undefined;
  const spawned: Subprocess[] = [];
  let relayPort = 0;

  const portOf = async (d: Daemon) => ((await fleet.status(d)).relay as { port: number }).port;

  beforeAll(async () => {
    await createNamespace(devNs);
    await createNamespace(lbNs);
    const [a, b] = [`p${RUN_TAG}d`, `p${RUN_TAG}l`];
    await inNs(devNs, ["ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", lbNs]);
    await inNs(devNs, ["ip", "addr", "add", `${DEV}/24`, "dev", a]);
    await inNs(devNs, ["ip", "link", "set", a, "up"]);
    await inNs(lbNs, ["ip", "addr", "add", `${LB}/24`, "dev", b]);
    await inNs(lbNs, ["ip", "link", "set", b, "up"]);

    fleet = await Fleet.create();
    const relayBundle = await fleet.issue("relay", "relay-1", ["--host", LB, "--host", "127.0.0.1"]);
    const ppCfg = join(fleet.dir, "pp.toml");
    writeFileSync(ppCfg, "proxy_protocol = true\n");
    relay = await fleet.start("relay", "relay-1", ["--listen", "127.0.0.1:0", "--config", ppCfg], relayBundle, lbNs);
    relayPort = await portOf(relay);
    plain = await fleet.start("relay", "relay-2", ["--listen", "127.0.0.1:0"], relayBundle, lbNs);
    const plainPort = await portOf(plain);

    const cfg = join(fleet.dir, "haproxy.cfg");
    writeFileSync(
      cfg,
      [
        "global",
        "  maxconn 512",
        "defaults",
        "  mode tcp",
        "  timeout connect 5s",
        "  timeout client 60s",
        "  timeout server 60s",
        "frontend to_relay",
        `  bind ${LB}:7443`,
        "  default_backend relay",
        "backend relay",
        `  server relay1 127.0.0.1:${relayPort} send-proxy-v2`,
        "frontend to_plain",
        `  bind ${LB}:7444`,
        "  default_backend plain",
        "backend plain",
        `  server relay2 127.0.0.1:${plainPort} send-proxy-v2`,
        "",
      ].join("\n"),
    );
    haproxy = Bun.spawn(nsArgv(lbNs, "haproxy", "-db", "-f", cfg), { stdout: "pipe", stderr: "pipe" });
    await waitFor(async () => (await inNs(devNs, ["socat", "-u", "/dev/null", `TCP:${LB}:7443,connect-timeout=1`], true)).code === 0 || haproxy!.exitCode !== null, 10_000, "haproxy listening");
    if (haproxy.exitCode !== null) throw new Error(`haproxy exited: ${await new Response(haproxy.stderr as ReadableStream).text()}`);

    // The LAN target behind the device: an echo server in the device's namespace.
    echo = Bun.spawn(nsArgv(devNs, "socat", "TCP-LISTEN:17001,bind=127.0.0.1,fork,reuseaddr", "EXEC:cat"), { stdout: "ignore", stderr: "ignore" });
    onsite = await fleet.start("onsite", "site-1", ["--relay", `${LB}:7443`, "--allow", "127.0.0.1/32"], undefined, devNs);
    master = await fleet.start("master", "tech-1", ["--relay", `${LB}:7443`], undefined, lbNs);
    await Promise.all([onsite, master].map((d) => fleet.waitConnected(d, 20_000)));
  }, 90_000);

  afterAll(async () => {
    for (const p of spawned) p.kill("SIGKILL");
    echo?.kill();
    haproxy?.kill();
    await Promise.all([echo?.exited, haproxy?.exited]);
    await fleet?.close();
    await deleteNamespaces([devNs, lbNs]);
  });

  test("the inventory shows the device's real address, and sessions work through the balancer", async () => {
    const devices = await fleet.json<Device[]>(relay, ["devices"]);
    expect(devices).toEqual([expect.objectContaining({ id: "site-1", address: DEV, online: true })]);
    expect((await fleet.status(relay)).relay).toMatchObject({ proxy_protocol: true });
    const s = await fleet.connect(master, "site-1", ["127.0.0.1:17001"]);
    // A real client in the master's namespace, through master → HAProxy → relay → device → LAN echo.
    const p = Bun.spawn(nsArgv(lbNs, "socat", "-t", "2", "-", `TCP:127.0.0.1:${s.ports[0]}`), { stdin: new Blob(["through haproxy\n"]), stdout: "pipe" });
    expect(await new Response(p.stdout).text()).toBe("through haproxy\n");
    await fleet.cli(relay, ["sessions", "end", s.session]);
  }, 30_000);

  test("a client that goes around the balancer is refused and logged", async () => {
    await inNs(lbNs, ["openssl", "s_client", "-connect", `127.0.0.1:${relayPort}`, "-tls1_3"], true);
    const line = await waitFor(() => readFileSync(join(fleet.dir, "state-relay-1", "refusals.log"), "utf8").split("\n").find((l) => l.includes("PROXY protocol")), 10_000, "the refusal in refusals.log");
    const r = JSON.parse(line);
    expect(r).toMatchObject({ address: "127.0.0.1", code: "proxy_protocol" });
    expect(r.reason).toContain("PROXY protocol: no v2 header, got a TLS ClientHello");
    expect(relay.log()).toContain("refused (no certificate) from 127.0.0.1: PROXY protocol: no v2 header");
  }, 30_000);

  test("admission caps apply per real source: one flooding address does not lock out another", async () => {
    // 40 connections from the device's address that never start TLS: HAProxy hands each to the
    // relay with the PROXY header, so the relay counts them all against 10.77.1.2.
    const holder = Bun.spawn(
      nsArgv(devNs, BUN, "-e", `const s=[];for(let i=0;i<40;i++)s.push(await Bun.connect({hostname:"${LB}",port:7443,socket:{data(){}}}));console.log("open");await Bun.sleep(20000);`),
      { stdout: "pipe", stderr: "pipe" },
    );
    spawned.push(holder);
    const refusals = join(fleet.dir, "state-relay-1", "refusals.log");
    await waitFor(() => readFileSync(refusals, "utf8").includes(`"address":"${DEV}","presented":null,"code":"capacity"`), 10_000, "a capacity refusal for the flooding source");
    const capped = readFileSync(refusals, "utf8").split("\n").filter((l) => l.includes('"code":"capacity"'));
    expect(capped.every((l) => l.includes(`"address":"${DEV}"`))).toBe(true);
    // Meanwhile the master (10.77.1.1 as the relay sees it) still gets in: kicked, it dials again.
    const before = ((await fleet.status(master)).master as { connects: number }).connects;
    await fleet.cli(relay, ["kick", "tech-1"]);
    await waitFor(async () => {
      const m = (await fleet.status(master)).master as { connects: number; state: string };
      return m.connects > before && m.state === "up";
    }, 15_000, () => `the master reconnects while the other source is capped\nmaster:\n${master.log().split("\n").slice(-8).join("\n")}\nrelay:\n${relay.log().split("\n").slice(-12).join("\n")}`);
    const devices = await fleet.json<Device[]>(relay, ["devices"]);
    expect(devices[0]).toMatchObject({ id: "site-1", online: true });
    holder.kill("SIGKILL");
  }, 40_000);

  test("a relay without proxy_protocol refuses a PROXY header and says what it probably was", async () => {
    await inNs(devNs, ["openssl", "s_client", "-connect", `${LB}:7444`, "-tls1_3"], true);
    await waitFor(() => plain.log().includes("a load balancer sending a PROXY protocol header? this relay has proxy_protocol off"), 10_000, () => `the refusal in relay-2's log:\n${plain.log()}`);
    expect(plain.log()).toMatch(/refused \(no certificate\) from 127\.0\.0\.1: TLS handshake failed .*WRONG_VERSION_NUMBER/);
  }, 30_000);
});
