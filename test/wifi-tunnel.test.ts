// System test as root, end to end through the Wi-Fi fallback with a REAL relay and master
// (test/helpers/uplink-lab.ts with `relay: true`): the onsite daemon's tunnel is up over eth0
// with a forward opened by the master; every uplink dies → AP mode (fake hostapd, real
// dnsmasq, the fence in nft); a phone namespace on the AP stand-in veth, with `ap.forward =
// ["lan"]`, reaches the LAN (masqueraded) but still not the uplinks or the relay; a network
// configured through the netconnectd protocol → the fake supplicant "associates" (the wlan
// veth comes up and carries traffic) → AP mode ends and the tunnel comes back over the Wi-Fi
// uplink: the relay lists site-1 online via it, and the same forward answers curl again.
// Then: a kill -9 during AP mode leaves nothing behind for the next daemon, and with
// `forward = ["uplinks"]` the phone gets out through the active uplink but not to the LAN.
// Times are printed, never asserted.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { DeviceInfo } from "../src/transport/messages.ts";
import type { SessionView } from "../src/tunnel/master-forwarder.ts";
import { defaults, type ApConfig } from "../src/config.ts";
import { renderNft } from "../src/uplink/apconf.ts";
import type { WifiReport } from "../src/uplink/wifi.ts";
import { agent, ROOT, tempDir, waitFor } from "./helpers/cli.ts";
import { FakeWpaSupplicant } from "./helpers/fake-wpa.ts";
import { netconnectd } from "./helpers/netconnectd.ts";
import { createNamespace, deleteNamespace, inNs, nsName } from "./helpers/netns.ts";
import { readFileSync, writeFileSync } from "node:fs";
import { ECHO_PORT_BESIDE_RELAY, LAN_HTTP, startLab, waitReport, type Lab, type LabFleet, labUntil } from "./helpers/uplink-lab.ts";

const isRoot = process.getuid?.() === 0;
if (!isRoot && process.env.CI) throw new Error("Wi-Fi tunnel system tests need root; CI runs as root, so this must not be skipped there");
const maybe = isRoot ? describe : describe.skip; // outside CI without root: skipped, since namespaces need root

const FIX = join(ROOT, "test", "fixtures", "wifi");
const ETH = "wgeth0";
const WLAN = "wgwlan0";
const AP_IF = "wgap0";
const PHONE = nsName("wg-ph");
const PHONE_IF = "wgph0";
const AP_ADDR = "10.250.250.1";
const PHONE_ADDR = "10.250.250.50";
const SSID = "Shop WiFi";
const PSK = "correct horse battery";



maybe("the real nft parser takes the AP fence for every ap.forward (needs root for the namespace)", () => {
  // `nft -c` parses and checks the whole ruleset against the kernel without applying it;
  // the system test below carries traffic through only the ["lan"] variant.
  const ns = nsName("wg-nft");
  const tmp = tempDir("wg-nft");
  beforeAll(async () => {
    await createNamespace(ns);
  });
  afterAll(async () => {
    await deleteNamespace(ns);
    tmp[Symbol.dispose]();
  });
  test.each([
    [[], ["eth0", "wwan0"]],
    [["lan"], ["eth0", "wwan0"]],
    [["uplinks"], ["eth0", "wwan0"]],
    [["lan", "uplinks"], ["eth0"]],
    [["lan", "uplinks"], []],
  ])("forward %j with uplinks %j", async (forward, uplinks) => {
    const f = join(tmp.path, "fence.nft");
    await Bun.write(f, renderNft({ ...defaults().ap, interface: "wlan1", forward: forward as ApConfig["forward"] }, uplinks));
    const r = await inNs(ns, ["nft", "-c", "-f", f], true);
    expect({ code: r.code, err: r.stderr }).toEqual({ code: 0, err: "" });
  });
  test("control: a broken rule is refused", async () => {
    const f = join(tmp.path, "bad.nft");
    await Bun.write(f, renderNft({ ...defaults().ap, interface: "wlan1", forward: ["uplinks"] }, ["eth0"]).replace("masquerade", "masquerad"));
    expect((await inNs(ns, ["nft", "-c", "-f", f], true)).code).not.toBe(0);
  });
});

maybe("Wi-Fi fallback end to end with a real relay and master (needs root)", () => {
  let lab: Lab;
  let fleet: LabFleet;
  let fake: FakeWpaSupplicant;
  let forward: { session: string; port: number };
  const tmp = tempDir("wg-tun");
  const timings: string[] = [];
  let forwardingBefore: string;
  const apForwarding = async () => (await inNs(lab.topo.onsite, ["cat", `/proc/sys/net/ipv4/conf/${AP_IF}/forwarding`])).stdout.trim();

  const site = async () => (await fleet.json<DeviceInfo[]>(fleet.relayControl, ["devices"])).find((d) => d.id === "site-1");
  const curlForward = async (maxTime = 1) => {
    const r = await inNs(lab.topo.relay, ["curl", "-sS", "--max-time", String(maxTime), `http://127.0.0.1:${forward.port}/`], true);
    return r.code === 0 ? r.stdout : undefined;
  };
  const wifiStatus = async () => {
    const r = await agent(["uplink", "wifi-status", "--json", "--control", lab.control]);
    if (r.code !== 0) throw new Error(`wifi-status: ${r.stderr}`);
    return JSON.parse(r.stdout) as WifiReport;
  };
  const until = (fn: () => Promise<boolean>, ms: number, what: string) => labUntil(lab, fn, ms, what);
  const phonePing = async (target: string) => (await inNs(PHONE, ["busybox", "ping", "-c", "1", "-W", "1", target], true)).code;

  beforeAll(async () => {
    fake = new FakeWpaSupplicant(join(tmp.path, "wpa.ctrl"));
    fake.cells = [{ bssid: "02:00:00:00:03:01", freq: 2437, signal: -50, flags: "[WPA2-PSK-CCMP][ESS]", ssid: SSID, psk: PSK }];
    lab = await startLab({
      prefix: "wg",
      relay: true,
      tracking: 'interval = "300ms"\ntimeout = "300ms"\ndown = 2\nup = 2',
      extraConfig: `[ap]
enabled = true
interface = "${AP_IF}"
wifi_interface = "${WLAN}"
ssid = "wg-setup"
passphrase = "wg-test-passphrase"
after = "3s"
retry = "10m"
address = "${AP_ADDR}/24"
hostapd = "${join(FIX, "fake-hostapd")}"
wpa_ctrl = "${fake.path}"
forward = ["lan"]
`,
    });
    fleet = lab.fleet!;
    // The fake's association is the wlan uplink's veth coming up; leaving is it going down.
    fake.onConnect = () => lab.topo.setLink(2, true);
    fake.onDisconnect = () => lab.topo.setLink(2, false);
    // The AP stand-in: a veth from onsite to the phone's namespace; the phone takes a fixed
    // address (the DHCP lease itself is tested in test/wifi-system.test.ts).
    await createNamespace(PHONE);
    await inNs(lab.topo.onsite, ["ip", "link", "add", AP_IF, "type", "veth", "peer", "name", PHONE_IF, "netns", PHONE]);
    await inNs(lab.topo.onsite, ["ip", "link", "set", AP_IF, "up"]);
    await inNs(PHONE, ["ip", "addr", "add", `${PHONE_ADDR}/24`, "dev", PHONE_IF]);
    await inNs(PHONE, ["ip", "link", "set", PHONE_IF, "up"]);
    await inNs(PHONE, ["ip", "route", "add", "default", "via", AP_ADDR]);
    // The lab's onsite namespace forwards (ip_forward=1), so a new interface starts with 1:
    // set 0 here so that the AP's own "1" and its restore at the end are both visible.
    await inNs(lab.topo.onsite, ["sysctl", "-qw", `net.ipv4.conf.${AP_IF}.forwarding=0`]);
    forwardingBefore = await apForwarding();
  }, 90_000);

  afterAll(async () => {
    if (timings.length) console.log(`Wi-Fi fallback with the real relay:\n  ${timings.join("\n  ")}`);
    try {
      await lab?.close();
      await deleteNamespace(PHONE);
    } finally {
      fake?.close();
      tmp[Symbol.dispose]();
    }
  }, 30_000);

  test("the tunnel is up over eth0 and a forward through the master reaches the LAN", async () => {
    await waitReport(lab, (r) => r.active === ETH, 30_000, "eth0 active");
    await until(async () => (await site())?.online === true && (await site())?.uplink === ETH, 20_000, "site-1 online via eth0");
    await until(async () => (await fleet.json<DeviceInfo[]>(fleet.masterControl, ["devices"])).some((d) => d.id === "site-1" && d.online), 20_000, "the master sees site-1");
    const s = await fleet.json<SessionView>(fleet.masterControl, ["connect", "site-1", "--forward", `127.0.0.1:0:${fleet.lanHttp}`]);
    forward = { session: s.session, port: s.forwards[0]!.port };
    expect(await curlForward(5)).toBe(LAN_HTTP.body);
    // Before the AP: the phone's side has no address on the device, nothing answers.
    expect(await phonePing(AP_ADDR)).toBe(1);
  }, 60_000);

  test("all uplinks dead → AP mode; with forward = [\"lan\"] the phone reaches the LAN, masqueraded, but not the uplinks or the relay", async () => {
    expect(forward).toBeDefined();
    const t0 = Date.now();
    await lab.topo.setLink(1, false);
    await lab.topo.setLink(2, false);
    await lab.topo.blackhole(3, true);
    let r: WifiReport | undefined;
    const tAp = await until(async () => {
      r = await wifiStatus();
      return r.mode === "ap" && r.ap.running && !!r.ap.dnsmasq?.running;
    }, 30_000, "AP mode");
    timings.push(`all uplinks dead → AP up (dnsmasq running): ${tAp - t0} ms (ap.after = 3s, tracking 300 ms × down 2)`);
    expect(r!.history.find((h) => h.action === "start-ap")?.reason).toMatch(/^no healthy uplink for \d+s$/);
    expect(await curlForward()).toBeUndefined(); // no way out: the forward is dead
    const on = lab.topo.onsite;
    expect(forwardingBefore).toBe("0");
    expect(await apForwarding()).toBe("1"); // forward = ["lan"] asks the AP interface to forward

    expect(await phonePing(AP_ADDR)).toBe(0);
    // The LAN: ping, and the LAN's HTTP server over TCP.
    expect(await phonePing(lab.topo.lanAddr)).toBe(0);
    const http = await inNs(PHONE, ["curl", "-sS", "--max-time", "5", `http://${fleet.lanHttp}/`], true);
    expect({ code: http.code, out: http.stdout, err: http.stderr }).toEqual({ code: 0, out: LAN_HTTP.body, err: "" });
    // Masqueraded: without its route to the device the LAN host still answers, since it
    // only ever sees the device's LAN address.
    await inNs(lab.topo.lan, ["ip", "route", "del", "default"]);
    try {
      expect(await phonePing(lab.topo.lanAddr)).toBe(0);
    } finally {
      await inNs(lab.topo.lan, ["ip", "route", "add", "default", "via", "192.168.77.1"]);
    }
    // Not the uplinks: the wwan uplink is still up at link level (only black-holed further
    // on), so its gateway would answer if the fence let the packet out.
    const wwanGw = lab.topo.uplinks[2]!.gateway;
    expect((await inNs(on, ["busybox", "ping", "-c", "1", "-W", "1", wwanGw], true)).code).toBe(0); // control: the device reaches it
    expect(await phonePing(wwanGw)).toBe(1);
    expect(await phonePing(lab.topo.relayAddr)).toBe(1);
    const nc = await inNs(PHONE, ["busybox", "nc", "-w", "2", lab.topo.relayAddr, "4443"], true);
    expect(nc.stdout).toBe("");
    expect((await inNs(on, ["nft", "list", "table", "inet", "agent_ap"])).stdout).toContain(`iifname "${AP_IF}" drop`);
  }, 60_000);

  test("a network configured through netconnectd → connected, AP mode ends, the tunnel is back via Wi-Fi and the same forward answers", async () => {
    expect(forward).toBeDefined();
    const t0 = Date.now();
    expect(await netconnectd(lab.control, { config_wifi: { ssid: SSID, psk: PSK } })).toEqual({ result: `configured wifi as "${SSID}"` });
    const nat = lab.topo.uplinks[1]!.routerRelaySide;
    const [tClient, tDevice, tCurl] = await Promise.all([
      until(async () => {
        const r = await wifiStatus();
        return r.mode === "client" && !r.ap.running;
      }, 30_000, "AP mode ended"),
      until(async () => {
        const d = await site();
        return d?.online === true && d.uplink === WLAN && d.address === nat;
      }, 40_000, `site-1 online at the relay via ${WLAN} (${nat})`),
      until(async () => (await curlForward()) === LAN_HTTP.body, 45_000, "the forward answering again"),
    ]);
    timings.push(
      `configured → AP mode over ${tClient - t0} ms; device online at the relay via ${WLAN} ${tDevice - t0} ms; curl through the same forward ${tCurl - t0} ms`,
    );
    const r = await lab.status();
    expect(r.active).toBe(WLAN);
    expect(r.uplinks.find((u) => u.name === WLAN)?.health).toBe("up");
    const w = await wifiStatus();
    expect(w.wifi.ssid).toBe(SSID);
    // The radio left the AP for the configured network and stayed with it.
    expect(w.history.slice(-2).map((h) => [h.action, h.reason])).toEqual([
      ["stop-ap", "a network was configured"],
      ["try-wifi", "a network was configured"],
    ]);
    // The AP is gone with its fence and its forwarding.
    expect((await inNs(lab.topo.onsite, ["nft", "list", "table", "inet", "agent_ap"], true)).code).not.toBe(0);
    expect(await apForwarding()).toBe(forwardingBefore);
    // The master's session resumed by itself: the same id on the same port.
    const sessions = await fleet.json<SessionView[]>(fleet.masterControl, ["sessions"]);
    const s = sessions.find((x) => x.session === forward.session)!;
    expect(s.state).toBe("active");
    expect(s.forwards.map((f) => f.port)).toEqual([forward.port]);
    await waitFor(() => lab.onsiteLog().includes(`access point on ${AP_IF} down`), 5_000, "the AP down in the log");
    expect(lab.onsiteLog()).not.toContain(PSK);
  }, 90_000);

  test("agent killed with -9 while the AP runs, restarted with a healthy uplink: no AP address, forwarding and fence left behind", async () => {
    expect(await netconnectd(lab.control, { start_ap: {} })).toEqual({ result: "started ap" });
    const on = lab.topo.onsite;
    expect((await inNs(on, ["ip", "-4", "-o", "addr", "show", "dev", AP_IF])).stdout).toContain(`${AP_ADDR}/24`);
    expect(await apForwarding()).toBe("1");
    // The AP took the radio from the Wi-Fi uplink: the cellular one is the way out for the
    // next daemon, healthy before it starts, so it never opens the AP itself.
    const WWAN = lab.topo.uplinks[2]!.dev;
    await lab.topo.blackhole(3, false);
    await waitReport(lab, (r) => r.uplinks.find((u) => u.name === WWAN)?.health === "up", 20_000, "the cellular uplink healthy");
    const d = lab.daemon();
    d.kill("SIGKILL");
    await d.exited;
    lab.restartDaemon();
    await waitReport(lab, (r) => r.active === WWAN, 30_000, "the cellular uplink active after the restart");
    await until(async () => !(await inNs(on, ["ip", "-4", "-o", "addr", "show", "dev", AP_IF])).stdout.includes(AP_ADDR), 10_000, "the stale AP address removed");
    const w = await wifiStatus();
    expect(w.ap.running).toBe(false);
    expect(w.history.map((h) => h.action)).not.toContain("start-ap"); // removed by the orphan cleanup, not by an AP stop
    expect(await apForwarding()).toBe(forwardingBefore);
    expect((await inNs(on, ["nft", "list", "table", "inet", "agent_ap"], true)).code).not.toBe(0);
    expect(await phonePing(AP_ADDR)).toBe(1);
  }, 60_000);

  test('forward = ["uplinks"] (daemon restarted with it): the phone reaches the outside through the active uplink, masqueraded, and not the LAN', async () => {
    const WWAN = lab.topo.uplinks[2]!.dev;
    const cfg = join(lab.dir, "agent.toml");
    const text = readFileSync(cfg, "utf8");
    expect(text).toContain('forward = ["lan"]');
    writeFileSync(cfg, text.replace('forward = ["lan"]', 'forward = ["uplinks"]'));
    const d = lab.daemon();
    d.kill("SIGTERM");
    await d.exited;
    lab.restartDaemon();
    await waitReport(lab, (r) => r.active === WWAN, 30_000, "the cellular uplink active after the restart");
    expect(await netconnectd(lab.control, { start_ap: {} })).toEqual({ result: "started ap" });
    expect(await apForwarding()).toBe("1");
    // The peer echo beside the relay answers with the address it sees: the cellular router's
    // NAT address, so the phone's packets left through the uplink (masqueraded there and by
    // the router; the router has no route to the AP subnet).
    const nc = await inNs(PHONE, ["busybox", "nc", "-w", "3", lab.topo.relayAddr, String(ECHO_PORT_BESIDE_RELAY)], true);
    expect(nc.stdout.trim()).toBe(lab.topo.uplinks[2]!.routerRelaySide);
    expect(await phonePing(lab.topo.uplinks[2]!.gateway)).toBe(0);
    // Not the LAN.
    expect(await phonePing(lab.topo.lanAddr)).toBe(1);
    const http = await inNs(PHONE, ["curl", "-sS", "--max-time", "2", `http://${fleet.lanHttp}/`], true);
    expect(http.code).not.toBe(0);
    expect(await netconnectd(lab.control, { stop_ap: {} })).toEqual({ result: "stopped ap" });
    expect(await apForwarding()).toBe(forwardingBefore);
  }, 60_000);
});
