// Issue 15's console test "open a routed tunnel, switch it to bridged, and disconnect", against a
// real fleet: relay, master and onsite agent processes, each in its namespace of the tunnel lab
// (test/helpers/tunnel-lab.ts: the onsite device's LAN with the customer's router and dnsmasq
// behind it, a laptop on the master's secondary port), the Linux tunnel hosts with real TUN/TAP
// devices. Chromium runs on the master itself (in its namespace, test/helpers/browser-netns.ts)
// and opens the GUI on that namespace's loopback, as a browser on the master's terminal would:
// from the secondary port's subnet, bridged is refused by design (test/tunnel-system.test.ts).
//
// From the page: pick the device by its location, open a routed tunnel (the master's TUN and its
// route to the LAN exist; the laptop's lease comes from the master, its ping crosses to the LAN
// router), switch the live session to bridged (TAP and bridge at the master, TAP in the device's
// br-lan; the laptop's lease now comes from the LAN's own dnsmasq and the router's MAC is its
// neighbour: layer 2 reaches the LAN), then disconnect (nothing of the tunnel is left at either
// end, the laptop no longer reaches the LAN, the card leaves the page without a reload).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { chromiumPresent, expectShown, logIn, shot } from "./helpers/browser.ts";
import { launchChromiumIn } from "./helpers/browser-netns.ts";
import { BUN, MAIN } from "./helpers/cli.ts";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { inNs, namespacePids } from "./helpers/netns.ts";
import { programsPresent } from "./helpers/proc.ts";
import { buildTunnelLab, LAB_RELAY, LAN_ROUTER, pingable, type TunnelLab } from "./helpers/tunnel-lab.ts";
import { waitFor } from "./helpers/wait.ts";

const FILE = "test/gui-tunnel-real.test.ts";
const root = process.getuid?.() === 0;
if (!root) {
  if (process.env.CI) throw new Error(`${FILE} needs root (namespaces, TUN/TAP); in CI this is a failure, not a skip`);
  console.warn(`skipping ${FILE}: needs root`);
}
const run = root && programsPresent(FILE, ["ip", "nft", "dnsmasq", "busybox"]) && chromiumPresent(FILE);

const PORT = 7443;
const PASSWORD = "a long test password";
const LOCATION = "Cellar 2, rack B";

interface TunnelJson {
  mode: string;
  state: string;
  master?: { iface: string };
  onsite?: { iface: string };
  subnets?: string[];
}
interface SessionJson {
  session: string;
  state?: string;
  tunnel?: TunnelJson;
}
interface Link {
  ifname: string;
  address?: string;
  master?: string;
  linkinfo?: { info_kind?: string };
}

describe.skipIf(!run)("web GUI: a real routed tunnel, switched to bridged, disconnected", () => {
  let lab: TunnelLab;
  let fleet: Fleet;
  let master: Daemon;
  let onsite: Daemon;
  let browser: Browser | undefined;
  let p: Page;
  /** The Status page, open beside the sessions page in the same login. */
  let st: Page;
  let url = "";

  const links = async (ns: string) => JSON.parse((await inNs(ns, ["ip", "-d", "-j", "link", "show"])).stdout) as Link[];
  const agentLinks = async (ns: string) => (await links(ns)).filter((l) => l.ifname.startsWith("agt-"));
  const agentRoutes = async (ns: string) => (JSON.parse((await inNs(ns, ["ip", "-j", "route", "show"])).stdout) as { dst: string; dev: string }[]).filter((r) => r.dev.startsWith("agt-")).map((r) => `${r.dst} dev ${r.dev}`);
  /** What the agent owns in a namespace: interfaces, routes through them, nft tables, its dnsmasq. */
  async function leftovers(ns: string): Promise<string[]> {
    const tables = (await inNs(ns, ["nft", "list", "tables"])).stdout.split("\n").filter((l) => /agent_tun/.test(l));
    const dnsmasq = (await namespacePids(ns)).filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("agent-tun-dnsmasq");
      } catch {
        return false;
      }
    });
    return [...(await agentLinks(ns)).map((l) => l.ifname), ...(await agentRoutes(ns)), ...tables, ...dnsmasq.map((pid) => `dnsmasq ${pid}`)];
  }
  const logs = () => `\n--- master\n${master?.log().slice(-1500)}\n--- onsite\n${onsite?.log().slice(-1500)}`;
  const sessions = () => fleet.json<SessionJson[]>(master, ["sessions"]);
  /** The session's card says "MODE, up" (the page re-rendered on the change, no reload); the API agrees. */
  async function tunnelUp(id: string, mode: string): Promise<TunnelJson> {
    const card = p.locator(`.session[data-session="${id}"]`);
    let shown: string | null = null;
    await waitFor(async () => {
      shown = await card.textContent({ timeout: 1_000 }).catch(() => null);
      return ((await card.locator(`.pill.${mode}`).count()) === 1 && (await card.locator("dl.kv").textContent({ timeout: 1_000 }))?.includes(`${mode}, up`)) || undefined;
    }, 20_000, () => `the card showing the ${mode} tunnel up (it shows ${JSON.stringify(shown)})${logs()}`);
    const t = (await sessions()).find((s) => s.session === id)?.tunnel;
    expect(t?.mode).toBe(mode);
    expect(t?.state).toBe("up");
    return t!;
  }

  /** The Status page's "Secondary interface" card, as text. */
  const secondaryCard = () => st.locator(".card", { has: st.locator("h2", { hasText: "Secondary interface" }) });
  /** Waits until the card's text passes `ok`: on the live page, or after reloads when `reload`. */
  async function secondaryShows(ok: (text: string) => boolean, what: string, reload = false): Promise<string> {
    let text = "";
    return waitFor(async () => {
      if (reload) await st.reload();
      text = (await secondaryCard().textContent({ timeout: 2_000 }).catch(() => "")) ?? "";
      return ok(text) ? text : undefined;
    }, 10_000, () => `the Status page's secondary interface card ${what} (it shows ${JSON.stringify(text)})${logs()}`, { every: 200 });
  }

  beforeAll(async () => {
    lab = await buildTunnelLab("gt", { relay: true });
    fleet = await Fleet.create();
    await fleet.issue("relay", "relay-1", ["--host", LAB_RELAY]);
    const onsiteConf = join(fleet.dir, "onsite.toml");
    writeFileSync(onsiteConf, `location = ${JSON.stringify(LOCATION)}\n[tunnel]\nenabled = true\nbridged = true\nlan_bridge = "br-lan"\n`);
    const masterConf = join(fleet.dir, "master.toml");
    writeFileSync(masterConf, `[tunnel]\nsecondary = "eth1"\ndhcp = true\npool = "10.98.0.0/16"\n`);
    const add = Bun.spawn([BUN, MAIN, "gui", "user", "add", "alice", "--state-dir", join(fleet.dir, "state-tech-1")], { stdin: new Blob([PASSWORD + "\n"]), stdout: "pipe", stderr: "pipe" });
    if ((await add.exited) !== 0) throw new Error(`gui user add: ${await new Response(add.stderr).text()}`);
    await fleet.start("relay", "relay-1", ["--listen", `${LAB_RELAY}:${PORT}`], join(fleet.dir, "relay-1.bundle"), lab.relay);
    onsite = await fleet.start("onsite", "site-1", ["--relay", `${LAB_RELAY}:${PORT}`, "--allow", "192.168.1.0/24", "--config", onsiteConf], undefined, lab.onsite);
    master = await fleet.start("master", "tech-1", ["--relay", `${LAB_RELAY}:${PORT}`, "--config", masterConf, "--gui", "127.0.0.1:0"], undefined, lab.master);
    const [b] = await Promise.all([launchChromiumIn(lab.master), fleet.waitConnected(onsite), fleet.waitConnected(master)]);
    browser = b;
    url = ((await fleet.status(master)).gui as { url: string }).url;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    p = await ctx.newPage();
    await logIn(p, url + "#/devices", "alice", PASSWORD);
    st = await ctx.newPage();
    await st.goto(url + "#/status");
  }, 60_000);

  afterAll(async () => {
    await browser?.close().catch(() => undefined);
    await fleet?.close();
    await lab?.teardown();
  }, 30_000);

  test("pick the device by its location, open a routed tunnel, switch it to bridged, disconnect: real packets each way, nothing left", async () => {
    // The device, shown with its location.
    const device = p.locator('.device[data-id="site-1"]');
    await device.waitFor({ timeout: 15_000 });
    expect(await device.locator(".loc").textContent()).toBe(LOCATION);

    // Routed, from the connect dialog.
    await device.locator("button.connect").click();
    await p.selectOption("#connect-dialog select[name=tunnel]", "routed");
    await p.click("#connect-ok");
    await expectShown(p, ".session");
    const id = (await p.locator(".session").getAttribute("data-session"))!;
    expect(id).toBeTruthy();
    const routed = await tunnelUp(id, "routed");
    // The master's TUN exists in its namespace, with the route to the device's LAN through it.
    const tun = routed.master?.iface ?? "";
    expect(tun).toMatch(/^agt-m[0-9a-f]{8}$/);
    expect((await agentLinks(lab.master)).find((l) => l.ifname === tun)?.linkinfo?.info_kind).toBe("tun");
    expect(await agentRoutes(lab.master)).toContain(`192.168.1.0/24 dev ${tun}`);
    expect((await agentLinks(lab.onsite)).map((l) => l.ifname)).toContain(routed.onsite?.iface ?? "none");
    // Real traffic: the laptop's lease comes from the master, its ping crosses the TUN to the LAN router.
    const lease = await lab.lease();
    expect(lease.router).toBe("192.168.77.1");
    expect(await pingable(lab.laptop, LAN_ROUTER, 10_000)).toBe(true);
    // The card's byte counts follow the traffic without a reload (the digest leaves counts out).
    const counts = p.locator(`.session[data-session="${id}"] .traffic`);
    const sent = (await sessions()).find((s) => s.session === id)?.tunnel as { packets?: { bytes_out: number } } | undefined;
    expect(sent?.packets?.bytes_out).toBeGreaterThan(0);
    let out = 0;
    await waitFor(async () => (out = Number(await counts.getAttribute("data-bytes-out", { timeout: 1_000 }))) >= sent!.packets!.bytes_out || undefined, 15_000, () => `the card's bytes out (${out}) reaching the API's ${sent!.packets!.bytes_out}`);
    // The Status page lists the laptop's lease on the secondary interface (dnsmasq's file at each look).
    const laptopMac = (await links(lab.laptop)).find((l) => l.ifname === "lap0")?.address ?? "none";
    await secondaryShows((t) => t.includes(lease.ip) && t.includes(laptopMac) && !t.includes("bridge"), `listing the lease ${lease.ip} of ${laptopMac}`, true);

    // Bridged, by the live session's switch.
    await p.locator(`.session[data-session="${id}"] button.switch`).click();
    const bridged = await tunnelUp(id, "bridged");
    expect((await sessions()).filter((s) => s.state !== "closed").map((s) => s.session)).toEqual([id]);
    const tap = bridged.master?.iface ?? "";
    expect(tap).toMatch(/^agt-q[0-9a-f]{8}$/);
    const mlinks = await agentLinks(lab.master);
    const bridge = mlinks.find((l) => l.linkinfo?.info_kind === "bridge");
    expect(bridge?.ifname).toMatch(/^agt-b[0-9a-f]{8}$/);
    expect(mlinks.find((l) => l.ifname === tap)?.master).toBe(bridge!.ifname);
    expect((await links(lab.master)).find((l) => l.ifname === "eth1")?.master).toBe(bridge!.ifname);
    // The routed end is gone: no TUN, no route into it.
    expect(mlinks.map((l) => l.ifname)).not.toContain(tun);
    expect(await agentRoutes(lab.master)).toEqual([]);
    // The device's TAP is a port of its LAN bridge.
    const otap = bridged.onsite?.iface ?? "";
    expect(otap).toMatch(/^agt-p[0-9a-f]{8}$/);
    expect((await agentLinks(lab.onsite)).find((l) => l.ifname === otap)?.master).toBe("br-lan");
    // Layer 2 reaches the LAN: the laptop's DHCP is answered by the LAN's own dnsmasq, and the
    // router's MAC is the laptop's neighbour.
    await lab.forgetLease();
    const lan = await lab.lease();
    expect(lan.router).toBe(LAN_ROUTER);
    expect(lan.ip).toMatch(/^192\.168\.1\.1[0-5]\d$/);
    expect(await pingable(lab.laptop, LAN_ROUTER, 10_000)).toBe(true);
    const routerMac = (await links(lab.lan)).find((l) => l.ifname === "eth0")?.address;
    const neigh = JSON.parse((await inNs(lab.laptop, ["ip", "-j", "neigh", "show", LAN_ROUTER, "dev", "lap0"])).stdout) as { lladdr?: string }[];
    expect(routerMac).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
    expect(neigh.map((n) => n.lladdr)).toContain(routerMac);
    // The Status page, live (no reload), shows eth1 in the bridge: the facts were read again with the switch.
    await secondaryShows((t) => t.includes(`bridge${bridge!.ifname}`), `showing eth1 in ${bridge!.ifname}`);
    await shot(p, "master-tunnel");

    // Disconnect: the card leaves the page without a reload, nothing of the tunnel is left.
    await p.locator(`.session[data-session="${id}"] button.disconnect`).click();
    await p.locator(`.session[data-session="${id}"]`).waitFor({ state: "detached", timeout: 15_000 });
    await p.locator("#no-sessions").waitFor({ timeout: 15_000 });
    expect((await sessions()).filter((s) => s.state !== "closed")).toEqual([]);
    for (const [ns, what] of [[lab.master, "master"], [lab.onsite, "onsite"]] as const) {
      let last: string[] = [];
      await waitFor(async () => (last = await leftovers(ns)).length === 0, 15_000, () => `nothing of the tunnel left at the ${what} (${JSON.stringify(last)})${logs()}`);
    }
    expect((await links(lab.master)).find((l) => l.ifname === "eth1")?.master).toBeUndefined();
    await secondaryShows((t) => t.includes("linkup") && !t.includes("bridge"), "showing eth1 out of the bridge", true);
    expect((await links(lab.onsite)).filter((l) => l.master === "br-lan").map((l) => l.ifname)).toEqual(["lan0"]);
    expect((await inNs(lab.laptop, ["busybox", "ping", "-c", "1", "-W", "1", LAN_ROUTER], true)).code).not.toBe(0);
  }, 90_000);
});
