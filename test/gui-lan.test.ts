// `gui = ":PORT"` for real: a master in its own namespace with a LAN side (its [tunnel]
// secondary, a veth to a "laptop" namespace) and an uplink (a veth to an "uplink" namespace).
// The LAN side has no address when the master starts: the GUI is on loopback and says why;
// once the address is added it is served there too. curl from the laptop gets the page; curl
// from the uplink side is refused (connection refused: nothing listens there).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { createNamespace, deleteNamespaces, inNs, nsName } from "./helpers/netns.ts";
import { programsPresent } from "./helpers/proc.ts";
import { waitFor } from "./helpers/wait.ts";

const FILE = "test/gui-lan.test.ts";
const root = process.getuid?.() === 0;
if (!root) {
  if (process.env.CI) throw new Error(`${FILE} needs root (namespaces); in CI this is a failure, not a skip`);
  console.warn(`skipping ${FILE}: needs root`);
}
const run = root && programsPresent(FILE, ["ip", "curl"]);

const LAN_M = "10.77.1.1";
const LAN_L = "10.77.1.2";
const UP_M = "10.77.2.1";
const UP_U = "10.77.2.2";

describe.skipIf(!run)("gui = \":PORT\" on the LAN side, in namespaces", () => {
  const M = nsName("gm");
  const L = nsName("gl");
  const U = nsName("gu");
  let fleet: Fleet;
  let master: Daemon;
  let port = 0;

  const curl = (ns: string, url: string) => inNs(ns, ["curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", url], true);
  const gui = async () => (await fleet.status(master)).gui as { url: string; lan: string[]; waiting: string | null };

  beforeAll(async () => {
    for (const n of [M, L, U]) await createNamespace(n);
    // veths are made in M and their peers moved out: nothing is created in the root namespace.
    await inNs(M, ["ip", "link", "add", "glan0", "type", "veth", "peer", "name", "glanp"]);
    await inNs(M, ["ip", "link", "add", "gup0", "type", "veth", "peer", "name", "gupp"]);
    await inNs(M, ["ip", "link", "set", "glanp", "netns", L]);
    await inNs(M, ["ip", "link", "set", "gupp", "netns", U]);
    await inNs(M, ["ip", "addr", "add", `${UP_M}/24`, "dev", "gup0"]);
    await inNs(M, ["ip", "link", "set", "gup0", "up"]);
    await inNs(M, ["ip", "link", "set", "glan0", "up"]); // the LAN side: up, no address yet
    await inNs(L, ["ip", "addr", "add", `${LAN_L}/24`, "dev", "glanp"]);
    await inNs(L, ["ip", "link", "set", "glanp", "up"]);
    await inNs(U, ["ip", "addr", "add", `${UP_U}/24`, "dev", "gupp"]);
    await inNs(U, ["ip", "link", "set", "gupp", "up"]);
    fleet = await Fleet.create();
    const conf = join(fleet.dir, "tech-1.toml");
    await Bun.write(conf, `gui = ":0"\n\n[tunnel]\nsecondary = "glan0"\ndhcp = false\n`);
    // No relay reachable from M (the console still serves its page; the master keeps dialling).
    master = await fleet.start("master", "tech-1", ["--relay", "127.0.0.1:9", "--config", conf], undefined, M);
    await waitFor(async () => !!(await gui().catch(() => null))?.url, 15_000, "the master's GUI up");
    port = Number(new URL((await gui()).url).port);
  }, 60_000);

  afterAll(async () => {
    await fleet?.close();
    await deleteNamespaces([M, L, U]);
  });

  test("no LAN address yet: loopback only, and the master says why", async () => {
    expect(port).toBeGreaterThan(0);
    const g = await gui();
    expect(g.url).toBe(`http://127.0.0.1:${port}/`);
    expect(g.lan).toEqual([]);
    expect(g.waiting).toContain("glan0 ([tunnel] secondary) has no IPv4 address yet");
    expect(master.log()).toContain("has no IPv4 address yet");
    const local = await curl(M, `http://127.0.0.1:${port}/`);
    expect(local.stdout).toContain("<title>agent</title>");
    expect(local.stdout.trim().endsWith("200")).toBe(true);
    const fromLaptop = await curl(L, `http://${LAN_M}:${port}/`);
    expect(fromLaptop.code).not.toBe(0); // not served yet
  });

  test("the LAN address appears: the laptop gets the page, the uplink side is refused", async () => {
    await inNs(M, ["ip", "addr", "add", `${LAN_M}/24`, "dev", "glan0"]);
    await waitFor(async () => (await gui()).lan.includes(LAN_M), 15_000, "the GUI bound on the LAN side");
    expect(master.log()).toContain(`web GUI on the LAN side glan0: http://${LAN_M}:${port}/`);
    const fromLaptop = await curl(L, `http://${LAN_M}:${port}/`);
    expect(fromLaptop.code).toBe(0);
    expect(fromLaptop.stdout).toContain("<title>agent</title>"); // the Host allow-list took the new address
    expect(fromLaptop.stdout.trim().endsWith("200")).toBe(true);
    const info = await curl(L, `http://${LAN_M}:${port}/api/info`);
    expect(info.stdout).toContain('"role":"master"');
    // The uplink side: nothing listens there.
    const fromUplink = await curl(U, `http://${UP_M}:${port}/`);
    // curl exit 7 is "failed to connect" (a reset: a timeout would be 28), said as refused or "Couldn't connect".
    expect(fromUplink.code).toBe(7);
    expect(fromUplink.stderr).toMatch(/Connection refused|Couldn't connect to server/);
    // The uplink address from the master itself is not served either.
    expect((await curl(M, `http://${UP_M}:${port}/`)).code).toBe(7);
  });

  test("the LAN address goes: its listener is closed", async () => {
    await inNs(M, ["ip", "addr", "del", `${LAN_M}/24`, "dev", "glan0"]);
    await waitFor(async () => (await gui()).lan.length === 0, 15_000, "the LAN listener closed");
    expect(master.log()).toContain("lost its address");
    expect((await curl(M, `http://127.0.0.1:${port}/`)).stdout).toContain("<title>agent</title>");
  });
});
