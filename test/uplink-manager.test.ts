// The uplink manager against in-memory fakes (link monitor, route table, prober, modem), and
// the modem adapters against recorded command output.
import { describe, expect, test } from "bun:test";
import { defaults, type UplinkConfig } from "../src/config.ts";
import { createLogger } from "../src/log.ts";
import { parseHostPort } from "../src/netaddr.ts";
import type { Exec } from "../src/os/spawn.ts";
import { UplinkManager, type ActiveChange } from "../src/uplink/manager.ts";
import { MmcliModem, modemIndexFromList, modemStatusFromMmcli, OpenWrtModem, parseMmcliKeyValue, type Modem, type ModemStatus } from "../src/uplink/modem.ts";
import { FakeMonitor, type LinkInfo } from "../src/uplink/monitor.ts";
import type { Prober } from "../src/uplink/probe.ts";
import { FakeRouteTable } from "../src/uplink/routes.ts";
import { holdsFor, waitFor } from "./helpers/wait.ts";

const log = createLogger({ level: "silent" });
const uplinks: UplinkConfig[] = [
  { name: "eth0", kind: "ethernet", priority: 10, metered: false },
  { name: "wwan0", kind: "cellular", priority: 30, metered: true, apn: "internet", gateway: (10 << 24) | (3 << 8) | 1 },
];
const link = (name: string, i: number, up = true): LinkInfo => ({ name, index: i + 2, up, carrier: up, addrs: [`10.0.${i + 1}.2/24`], gateways: name === "eth0" ? ["10.0.1.1"] : [] });

function rig(opts: { modem?: Modem; targets?: string[]; uplinks?: UplinkConfig[] } = {}) {
  const monitor = new FakeMonitor();
  const routes = new FakeRouteTable();
  const healthy = new Map<string, boolean>([
    ["10.0.1.2", true],
    ["10.0.2.2", true],
  ]);
  const probes: string[] = [];
  const prober: Prober = async (source, targets) => {
    probes.push(`${source}>${targets.map((t) => `${t.host}:${t.port}`).join(",")}`);
    const ok = healthy.get(source) ?? false;
    return { ok, rttMs: ok ? 5 : undefined, targets: targets.map((t) => ({ target: `${t.host}:${t.port}`, ok, rttMs: ok ? 5 : undefined, error: ok ? undefined : "timeout" })) };
  };
  const tracking = { ...defaults().tracking, interval: 20, timeout: 20, targets: (opts.targets ?? []).map((t) => parseHostPort(t)) };
  const m = new UplinkManager({
    uplinks: opts.uplinks ?? uplinks,
    tracking,
    relay: parseHostPort("10.99.0.1:443"),
    monitor,
    routes,
    prober,
    modems: opts.modem ? new Map([["wwan0", opts.modem]]) : undefined,
    log,
  });
  const changes: ActiveChange[] = [];
  m.onActiveChange((ev) => changes.push(ev));
  monitor.set([link("eth0", 0), link("wwan0", 1)]);
  return { m, monitor, routes, healthy, probes, changes };
}

describe("UplinkManager with fakes", () => {
  test("chooses the unmetered uplink, installs per-uplink tables and the default route, tells listeners", async () => {
    const { m, routes, changes } = rig();
    await m.start();
    try {
      await waitFor(() => changes.length > 0 && routes.default !== undefined, 2000, "first choice");
      expect(changes[0]).toEqual({ from: undefined, to: "eth0", reason: "initial choice" });
      expect(routes.default).toEqual({ dev: "eth0", gateway: "10.0.1.1" }); // learned gateway
      expect([...routes.uplinks.values()].map((r) => [r.dev, r.source, r.gateway, r.table, r.pref])).toEqual([
        ["eth0", "10.0.1.2", "10.0.1.1", 7100, 7100],
        ["wwan0", "10.0.2.2", "10.0.3.1", 7101, 7101], // configured gateway
      ]);
    } finally {
      await m.close();
    }
  });

  test("failed probes move traffic to the metered backup; recovery brings it back", async () => {
    const { m, routes, healthy, changes } = rig();
    await m.start();
    try {
      await waitFor(() => m.active === "eth0", 2000, "eth0 active");
      healthy.set("10.0.1.2", false);
      await waitFor(() => m.active === "wwan0", 2000, "failover");
      await waitFor(() => routes.default?.dev === "wwan0", 1000, "route on wwan0");
      expect(changes.at(-1)).toEqual({ from: "eth0", to: "wwan0", reason: "eth0 is down" });
      const r = m.report();
      const eth = r.uplinks.find((u) => u.name === "eth0")!;
      expect(eth.health).toBe("down");
      expect(eth.probes.loss).toBeGreaterThan(0);
      expect(eth.probes.last?.targets[0]).toMatchObject({ target: "10.99.0.1:443", ok: false, error: "timeout" });
      healthy.set("10.0.1.2", true);
      await waitFor(() => m.active === "eth0", 2000, "return");
      expect(m.report().history.map((h) => h.to)).toEqual(["eth0", "wwan0", "eth0"]);
    } finally {
      await m.close();
    }
  });

  test("a lost link switches without waiting for probes", async () => {
    const { m, monitor, changes } = rig();
    await m.start();
    try {
      await waitFor(() => m.active === "eth0", 2000, "eth0 active");
      monitor.set([link("eth0", 0, false), link("wwan0", 1)]);
      expect(m.active).toBe("wwan0"); // decided synchronously on the snapshot
      // Listeners hear it once the route is switched (so a redial takes the new path).
      await waitFor(() => changes.length === 2, 1000, "listener");
      expect(changes.at(-1)).toEqual({ from: "eth0", to: "wwan0", reason: "eth0 is down" });
    } finally {
      await m.close();
    }
  });

  test("targets: the relay first, extra targets after, duplicates once", async () => {
    const { m, probes } = rig({ targets: ["10.99.0.1:443", "192.0.2.7:80"] });
    await m.start();
    try {
      await waitFor(() => probes.length > 0, 2000, "a probe");
      expect(m.report().targets).toEqual(["10.99.0.1:443", "192.0.2.7:80"]);
      expect(probes[0]).toMatch(/>10\.99\.0\.1:443,192\.0\.2\.7:80$/);
    } finally {
      await m.close();
    }
  });

  test("a metered uplink is probed only every keepalive on standby and while active and healthy", async () => {
    // A keepalive far longer than the 20 rounds of eth0 waited for below (400 ms at 20 ms each,
    // seconds on a loaded machine): no second wwan0 round can fall inside them.
    const { m, probes, healthy } = rig({ uplinks: [uplinks[0]!, { ...uplinks[1]!, keepalive: 60_000 }] });
    await m.start();
    try {
      const ethRounds = () => probes.filter((p) => p.startsWith("10.0.1.2>")).length;
      await waitFor(() => ethRounds() >= 20, 10_000, "20 rounds of eth0");
      const wwan = probes.filter((p) => p.startsWith("10.0.2.2>")).length;
      expect(wwan).toBe(1); // its first round, then nothing until the keepalive
      // Once it carries the traffic it is probed at once, then, healthy and metered, with
      // a period that doubles per good round up to the keepalive (policy.ts probePeriod,
      // table-tested there): far fewer rounds than eth0's every interval.
      healthy.set("10.0.1.2", false);
      await waitFor(() => m.active === "wwan0", 2000, "failover to the metered uplink");
      const wwanRounds = () => probes.filter((p) => p.startsWith("10.0.2.2>")).length;
      await waitFor(() => wwanRounds() >= 3, 2000, "wwan0 probed at once and soon after on becoming active");
      const ethAt = ethRounds();
      const wwanAt = wwanRounds();
      await waitFor(() => ethRounds() >= ethAt + 64, 20_000, "64 more rounds of eth0");
      // At 20 ms doubling: 40, 80, 160, 320, 640 ms … : at most 6 rounds while eth0 had 64.
      expect(wwanRounds() - wwanAt).toBeLessThanOrEqual(6);
    } finally {
      await m.close();
    }
  });

  test("close is idempotent and stops probing", async () => {
    const { m, probes } = rig();
    await m.start();
    await waitFor(() => probes.length > 2, 2000, "probes");
    await m.close();
    await m.close();
    const n = probes.length;
    await holdsFor(() => probes.length !== n, 200, () => `probes went on after close: ${probes.length - n} more`);
  });

  test("without any target it refuses to start", async () => {
    const m = new UplinkManager({ uplinks, tracking: defaults().tracking, monitor: new FakeMonitor(), routes: new FakeRouteTable(), prober: async () => ({ ok: true, targets: [] }), log });
    await expect(m.start()).rejects.toThrow("no target");
    await m.close();
  });

  test("a disconnected modem is connected with the uplink's APN", async () => {
    const calls: string[] = [];
    let state: ModemStatus = { state: "registered", connected: false, registration: "home" };
    const modem: Modem = {
      kind: "mmcli",
      async status() {
        return state;
      },
      async connect(apn) {
        calls.push(`connect ${apn}`);
        state = { ...state, state: "connected", connected: true };
      },
      async disconnect() {
        calls.push("disconnect");
      },
    };
    const { m } = rig({ modem });
    await m.start();
    try {
      await waitFor(() => m.report().uplinks[1]!.modem?.connected === true, 2000, "modem connected");
      expect(calls).toEqual(["connect internet"]);
      expect(m.report().uplinks[1]!.modem).toMatchObject({ state: "connected", registration: "home" });
    } finally {
      await m.close();
    }
  });
});

// Recorded from the mmcli -K format: keys padded to a column, " : ", "--" for empty.
const MMCLI_MODEM = `modem.dbus-path                                 : /org/freedesktop/ModemManager1/Modem/3
modem.generic.state                             : registered
modem.generic.state-failed-reason               : --
modem.generic.access-technologies.length        : 1
modem.generic.access-technologies.value[1]      : lte
modem.generic.signal-quality.value              : 29
modem.generic.signal-quality.recent             : no
modem.3gpp.operator-name                        : Dark Star
modem.3gpp.registration-state                   : roaming
`;

describe("mmcli adapter", () => {
  test("parses -K output; -- is empty", () => {
    const kv = parseMmcliKeyValue(MMCLI_MODEM);
    expect(kv.get("modem.generic.state-failed-reason")).toBeUndefined();
    expect(modemStatusFromMmcli(kv)).toEqual({ state: "registered", connected: false, registration: "roaming", signal: 29, operator: "Dark Star", technology: "lte" });
  });

  test.each([
    ["modem-list.length : 1\nmodem-list.value[1] : /org/freedesktop/ModemManager1/Modem/3\n", "3"],
    ["modem-list.length : 0\n", undefined],
  ])("modem index from the list %#", (text, idx) => {
    expect(modemIndexFromList(parseMmcliKeyValue(text))).toBe(idx);
  });

  test("runs mmcli with the modem index and the APN", async () => {
    const seen: string[] = [];
    const exec: Exec = async (argv) => {
      seen.push(argv.join(" "));
      if (argv.includes("-L")) return { code: 0, stdout: "modem-list.value[1] : /org/freedesktop/ModemManager1/Modem/3\n", stderr: "" };
      if (argv.includes("-K")) return { code: 0, stdout: MMCLI_MODEM, stderr: "" };
      return { code: 0, stdout: "successfully connected the modem\n", stderr: "" };
    };
    const m = new MmcliModem(exec);
    expect((await m.status()).state).toBe("registered");
    await m.connect("internet");
    await m.disconnect();
    expect(seen).toEqual(["mmcli -L -K", "mmcli -m 3 -K", "mmcli -L -K", "mmcli -m 3 --simple-connect=apn=internet", "mmcli -L -K", "mmcli -m 3 --simple-disconnect"]);
    await expect(m.connect("a,b=c")).rejects.toThrow("APN");
  });

  test("a failing mmcli is reported with its command and message", async () => {
    const m = new MmcliModem(async () => ({ code: 1, stdout: "", stderr: "error: couldn't find modem" }));
    await expect(m.status()).rejects.toThrow("mmcli -L -K: exit 1: error: couldn't find modem");
  });
});

describe("OpenWRT adapter", () => {
  test("finds netifd's interface for the device, reads ubus status, runs ifup/ifdown", async () => {
    const seen: string[] = [];
    let up = false;
    const exec: Exec = async (argv) => {
      seen.push(argv.join(" "));
      if (argv[2] === "network.interface" && argv[3] === "dump")
        return { code: 0, stdout: JSON.stringify({ interface: [{ interface: "lan", l3_device: "br-lan" }, { interface: "wwan", l3_device: "wwan0", device: "cdc-wdm0" }] }), stderr: "" };
      if (argv[0] === "ubus") return { code: 0, stdout: JSON.stringify({ up, pending: false, available: true }), stderr: "" };
      if (argv[0] === "ifup") up = true;
      return { code: 0, stdout: "", stderr: "" };
    };
    const m = new OpenWrtModem(exec, "wwan0");
    expect(await m.status()).toEqual({ state: "disconnected", connected: false });
    await m.connect();
    expect(await m.status()).toEqual({ state: "connected", connected: true });
    await m.disconnect();
    expect(seen).toEqual([
      "ubus call network.interface dump",
      "ubus call network.interface.wwan status",
      "ifup wwan",
      "ubus call network.interface.wwan status",
      "ifdown wwan",
    ]);
  });
});
