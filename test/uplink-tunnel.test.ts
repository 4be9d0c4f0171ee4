// System test as root: the relay connection follows the active uplink. On the uplink lab
// (test/helpers/uplink-lab.ts) a REAL relay and a real master run in the relay namespace, the
// onsite daemon in the onsite namespace with three uplinks (each through its own NATing
// router), an HTTP server in the LAN namespace. A forward opened with `agent connect` must
// keep working across a cut of the primary (link down, then black-holed at its router) and the
// return to it: the onsite daemon re-dials over the new path as soon as the uplink manager
// switches (not after the 15 s keepalive timeout), the relay sees it from the backup router's
// NAT address with the new uplink in its inventory, and the master's session resumes with the
// same id on the same local port, with nobody touching it. Times are printed, never asserted
// (bench/uplink.bench.ts measures them over many cuts); the assertions are ordering facts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { LAN_HTTP, startLab, switchAfter, waitReport, type Lab, type LabFleet, labUntil } from "./helpers/uplink-lab.ts";
import { waitFor } from "./helpers/wait.ts";
import { controlRequest } from "../src/control.ts";
import { FLAP_HOLD_BASE_MS } from "../src/uplink/policy.ts";
import type { DeviceInfo } from "../src/transport/messages.ts";
import type { SessionView } from "../src/tunnel/master-forwarder.ts";

const isRoot = process.getuid?.() === 0;
if (!isRoot && process.env.CI) throw new Error("uplink tunnel system tests need root; CI runs as root, so this must not be skipped there");
const maybe = isRoot ? describe : describe.skip; // outside CI without root: skipped, since namespaces need root

const ETH = "ufeth0";
const WLAN = "ufwlan0";
const BODY = LAN_HTTP.body;
/** The keepalive timeout of the relay connection (src/transport/policy.ts), for the printout. */
const KEEPALIVE_TIMEOUT_S = 15;

maybe("the relay connection follows the active uplink (needs root)", () => {
  let lab: Lab;
  let fleet: LabFleet;
  let forward: { session: string; port: number };
  const timings: string[] = [];

  const devices = () => fleet.json<DeviceInfo[]>(fleet.relayControl, ["devices"]);
  const site = async () => (await devices()).find((d) => d.id === "site-1");
  const curl = async (maxTime = 1) => {
    const r = await lab.topo.ns(lab.topo.relay, ["curl", "-sS", "--max-time", String(maxTime), `http://127.0.0.1:${forward.port}/`], true);
    return r.code === 0 ? r.stdout : undefined;
  };

  const until = (fn: () => Promise<boolean>, ms: number, what: string) => labUntil(lab, fn, ms, what);

  /**
   * After a switch to `to` (uplink index `i`, 1-based) at or after `t0`: the device is back at
   * the relay through that uplink's router, the forward answers again, and the onsite log says
   * it re-dialed on the switch. Returns the measured times.
   */
  async function followed(t0: number, logFrom: number, to: string, i: number, what: string) {
    const nat = lab.topo.uplinks[i - 1]!.routerRelaySide;
    const [tDevice, tCurl] = await Promise.all([
      until(async () => {
        const d = await site();
        return d?.online === true && d.uplink === to && d.address === nat;
      }, 20_000, `site-1 online at the relay via ${to} (${nat})`),
      until(async () => (await curl()) === BODY, 25_000, `the forward answering again after ${what}`),
    ]);
    const r = await lab.status();
    expect(r.active).toBe(to);
    const sw = switchAfter(r, t0, to)!;
    expect(sw).toBeDefined();

    // The same session on the same local port, resumed by itself.
    const sessions = await fleet.json<SessionView[]>(fleet.masterControl, ["sessions"]);
    const s = sessions.find((x) => x.session === forward.session)!;
    expect(s).toBeDefined();
    expect(s.state).toBe("active");
    expect(s.forwards.map((f) => f.port)).toEqual([forward.port]);
    expect(sessions.filter((x) => x.state !== "closed").length).toBe(1);

    // At once, not after the keepalive timeout: the re-dial follows the switch in the log and
    // comes before any keepalive timeout of the old connection.
    const log = lab.onsiteLog().slice(logFrom);
    const redial = log.indexOf(`redialing the relay now: uplink ${to}`);
    expect(redial).toBeGreaterThanOrEqual(0);
    const switchLine = log.indexOf(`uplink ${to} is now active`);
    expect(switchLine).toBeGreaterThanOrEqual(0);
    expect(switchLine).toBeLessThan(redial);
    const keepalive = log.indexOf("keepalive timeout");
    if (keepalive >= 0) expect(redial).toBeLessThan(keepalive);
    const connected = log.indexOf("connected to relay", redial);
    expect(connected).toBeGreaterThan(redial);
    expect(log.slice(connected, log.indexOf("\n", connected))).toContain(`seen as ${nat}`);

    const switchAt = Date.parse(sw.at);
    timings.push(
      `${what}: switch to ${to} after ${switchAt - t0} ms; device back at the relay via ${to} after ${tDevice - t0} ms ` +
        `(${tDevice - switchAt} ms after the switch; the ${KEEPALIVE_TIMEOUT_S} s keepalive would have taken ${KEEPALIVE_TIMEOUT_S * 1000 + (switchAt - t0)} ms or more); ` +
        `curl through the same forward after ${tCurl - t0} ms`,
    );
  }

  beforeAll(async () => {
    lab = await startLab({ prefix: "uf", relay: true });
    fleet = lab.fleet!;
  }, 90_000);

  afterAll(async () => {
    if (timings.length) console.log(`relay follows the uplink:\n  ${timings.join("\n  ")}`);
    await lab?.close();
  }, 30_000);

  test("onsite connects over the primary; a forward through the master reaches the LAN", async () => {
    await waitReport(lab, (r) => r.active === ETH && r.uplinks.every((u) => u.health === "up"), 30_000, "eth0 active, all uplinks healthy");
    await until(async () => {
      const d = await site();
      return d?.online === true && d.uplink === ETH && d.address === lab.topo.uplinks[0]!.routerRelaySide;
    }, 20_000, "site-1 online via eth0");
    await until(async () => (await fleet.json<DeviceInfo[]>(fleet.masterControl, ["devices"])).some((d) => d.id === "site-1" && d.online), 20_000, "the master sees site-1");
    const s = await fleet.json<SessionView>(fleet.masterControl, ["connect", "site-1", "--forward", `127.0.0.1:0:${fleet.lanHttp}`]);
    expect(s.state).toBe("active");
    forward = { session: s.session, port: s.forwards[0]!.port };
    expect(forward.port).toBeGreaterThan(0);
    expect(await curl(5)).toBe(BODY);
  }, 60_000);

  test("cut the primary: re-dialed over the backup at once, the same forward works again; back to the primary", async () => {
    expect(forward).toBeDefined();
    let logFrom = lab.onsiteLog().length;
    const t0 = Date.now();
    await lab.topo.setLink(1, false);
    try {
      await followed(t0, logFrom, WLAN, 2, "link down");
    } finally {
      logFrom = lab.onsiteLog().length;
      await lab.topo.setLink(1, true);
    }
    const t1 = Date.now();
    await waitReport(lab, (r) => r.active === ETH, 30_000, "return to eth0");
    await followed(t1, logFrom, ETH, 1, "link back (after its up count)");
  }, 80_000);

  test("black-hole the primary at its router: re-dialed over the backup at once, the same forward works again; back to the primary", async () => {
    expect(forward).toBeDefined();
    let logFrom = lab.onsiteLog().length;
    const t0 = Date.now();
    await lab.topo.blackhole(1, true);
    try {
      await followed(t0, logFrom, WLAN, 2, "black hole");
      // The link itself stayed up all along: only the probes saw the black hole.
      const eth = (await lab.status()).uplinks.find((u) => u.name === ETH)!;
      expect(eth.link.carrier).toBe(true);
    } finally {
      logFrom = lab.onsiteLog().length;
      await lab.topo.blackhole(1, false);
    }
    const t1 = Date.now();
    // Second flap of eth0 within the damping window: 5 good rounds + the hold, which the
    // return switch must show (it comes FLAP_HOLD_BASE_MS or more after the lift).
    const back = await waitReport(lab, (r) => r.active === ETH, 40_000, "return to eth0 after the black hole");
    const ret = switchAfter(back, t1, ETH);
    expect(ret).toBeDefined();
    expect(Date.parse(ret!.at) - t1).toBeGreaterThanOrEqual(FLAP_HOLD_BASE_MS);
    await followed(t1, logFrom, ETH, 1, "black hole lifted");
    // The relay replaced the old connections instead of waiting for them to time out.
    await waitFor(() => fleet.relayLog().includes("site-1: a new connection from"), 5000, "the relay to log the replaced connection");
  }, 90_000);

  test("a switch while a dial into the black-holed primary is in flight: that dial is dropped and the backup dialed at once", async () => {
    expect(forward).toBeDefined();
    await waitReport(lab, (r) => r.active === ETH, 5_000, "eth0 active");
    const logFrom = lab.onsiteLog().length;
    const t0 = Date.now();
    await lab.topo.blackhole(1, true);
    try {
      // Ask for a redial now: eth0 still carries the default route, so the new dial's SYNs go
      // into the black hole and would hang until the 15 s dial timeout.
      await controlRequest(lab.control, "redial", { reason: "test: dial into the black hole" });
      await followed(t0, logFrom, WLAN, 2, "black hole with a dial in flight");
      const log = lab.onsiteLog().slice(logFrom);
      const redial = log.indexOf(`redialing the relay now: uplink ${WLAN}`);
      const abandoned = log.indexOf(`dial abandoned to redial: uplink ${WLAN}`);
      expect(abandoned).toBeGreaterThan(redial);
      expect(log.indexOf("connected to relay", redial)).toBeGreaterThan(abandoned);
      // The hanging dial never got to its own timeout before the device was back.
      const connected = log.indexOf("connected to relay", redial);
      const timedOut = log.indexOf("no TLS connection to");
      if (timedOut >= 0) expect(connected).toBeLessThan(timedOut);
    } finally {
      await lab.topo.blackhole(1, false);
    }
  }, 60_000);

  test("every uplink down, then another one back: the tunnel and the same forward come back without a restart", async () => {
    expect(forward).toBeDefined();
    // Whichever uplink is active now (eth0 may still be held back after its third flap).
    await until(async () => (await curl()) === BODY, 10_000, "the forward answering before the cut");
    const before = (await lab.status()).active;
    // The uplink that comes back is not the one the old connection used: a connection that
    // merely survived the outage on its own link would prove nothing.
    const back = before === ETH ? 2 : 1;
    const backDev = lab.topo.uplinks[back - 1]!.dev;
    try {
      for (const i of [1, 2, 3]) await lab.topo.setLink(i, false);
      await waitReport(lab, (r) => r.active === undefined, 10_000, "no active uplink");
      expect(await curl()).toBeUndefined(); // nothing reaches the LAN now
      const logFrom = lab.onsiteLog().length;
      const t0 = Date.now();
      await lab.topo.setLink(back, true);
      await followed(t0, logFrom, backDev, back, `all down, then ${backDev} back`);
    } finally {
      for (const i of [1, 2, 3]) await lab.topo.setLink(i, true);
    }
  }, 60_000);
});
