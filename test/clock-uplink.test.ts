// Wall-clock steps against the uplink durations: the failover hold-down (flap damping) of the
// uplink manager and the AP fallback's `after` and `retry` in the Wi-Fi service. Both run on a
// FakeClock with in-memory fakes (link monitor, routes, prober; a fake wpa_supplicant control
// and a fake command runner): monotonic time moves only by advance(), the wall clock jumps by a
// day either way, and each duration must come out exactly as long as without the jump.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FakeClock } from "../src/clock.ts";
import { defaults, type Config, type UplinkConfig } from "../src/config.ts";
import { createLogger } from "../src/log.ts";
import { parseHostPort } from "../src/netaddr.ts";
import { UplinkManager, type ActiveChange } from "../src/uplink/manager.ts";
import { FakeMonitor, type LinkInfo } from "../src/uplink/monitor.ts";
import { FLAP_HOLD_BASE_MS } from "../src/uplink/policy.ts";
import type { Prober } from "../src/uplink/probe.ts";
import { FakeRouteTable } from "../src/uplink/routes.ts";
import { WifiService } from "../src/uplink/wifi.ts";
import type { WpaControl } from "../src/uplink/wpa.ts";
import { unreachableWpa } from "./helpers/fake-wpa.ts";
import { flush, stepper } from "./helpers/fake-time.ts";

const DAY = 24 * 3600_000;

const run = stepper(100);
async function runUntil(clock: FakeClock, cond: () => boolean, maxMs: number, step = 100): Promise<number> {
  for (let t = 0; t <= maxMs; t += step) {
    if (cond()) return clock.now();
    clock.advance(step);
    await flush();
  }
  throw new Error(`condition not met within ${maxMs} ms of fake time`);
}

describe("uplink hold-down under wall-clock steps", () => {
  const uplinks: UplinkConfig[] = [
    { name: "eth0", kind: "ethernet", priority: 10, metered: false },
    { name: "wwan0", kind: "cellular", priority: 30, metered: true, gateway: (10 << 24) | (3 << 8) | 1 },
  ];
  const link = (name: string, i: number): LinkInfo => ({ name, index: i + 2, up: true, carrier: true, addrs: [`10.0.${i + 1}.2/24`], gateways: name === "eth0" ? ["10.0.1.1"] : [] });

  function rig(clock: FakeClock) {
    const monitor = new FakeMonitor();
    const healthy = new Map([["10.0.1.2", true], ["10.0.2.2", true]]);
    const prober: Prober = async (source, targets) => {
      const ok = healthy.get(source) ?? false;
      return { ok, rttMs: ok ? 5 : undefined, targets: targets.map((t) => ({ target: `${t.host}:${t.port}`, ok })) };
    };
    const m = new UplinkManager({
      uplinks,
      tracking: { ...defaults().tracking }, // 1 s rounds, down after 3, up after 5
      relay: parseHostPort("10.99.0.1:443"),
      monitor,
      routes: new FakeRouteTable(),
      prober,
      log: createLogger({ level: "silent" }),
      clock,
    });
    const changes: (ActiveChange & { at: number })[] = [];
    m.onActiveChange((ev) => changes.push({ ...ev, at: clock.now() }));
    monitor.set([link("eth0", 0), link("wwan0", 1)]);
    return { m, healthy, changes };
  }

  const health = (m: UplinkManager, name: string) => m.report().uplinks.find((u) => u.name === name)!.health;

  for (const step of [DAY, -DAY]) {
    test(`a flapping uplink waits out its hold-down exactly, across a wall step of ${step > 0 ? "+" : "-"}1 day`, async () => {
      const clock = new FakeClock();
      const { m, healthy, changes } = rig(clock);
      await m.start();
      await runUntil(clock, () => m.active === "eth0", 2_000);
      // Two flaps of eth0 within the flap window...
      for (let flap = 0; flap < 2; flap++) {
        healthy.set("10.0.1.2", false);
        await runUntil(clock, () => m.active === "wwan0", 10_000);
        healthy.set("10.0.1.2", true);
        if (flap === 0) await runUntil(clock, () => m.active === "eth0", 10_000); // one flap: no hold-down
      }
      // ...so the second recovery must stay stable for FLAP_HOLD_BASE_MS before eth0 takes over.
      const upAt = await runUntil(clock, () => health(m, "eth0") === "up", 10_000);
      expect(m.active).toBe("wwan0");
      clock.stepWall(step);
      await run(clock, FLAP_HOLD_BASE_MS - 1_000);
      expect(m.active).toBe("wwan0"); // a forward step did not end the hold-down early
      clock.stepWall(-step);
      const back = await runUntil(clock, () => m.active === "eth0", 3_000);
      // Taken at the first probe round past the hold-down: not a day later (nor earlier).
      expect(back - upAt).toBeGreaterThanOrEqual(FLAP_HOLD_BASE_MS);
      expect(back - upAt).toBeLessThanOrEqual(FLAP_HOLD_BASE_MS + 1_100);
      expect(changes.at(-1)).toMatchObject({ from: "wwan0", to: "eth0", reason: "eth0 is preferred and stable" });
      // The report shows the switch on the wall clock of now (stepped there and back).
      const last = m.report().history.at(-1)!;
      expect(Math.abs(Date.parse(last.at) - (clock.wall() - (clock.now() - back)))).toBeLessThanOrEqual(100);
      const closing = m.close();
      await run(clock, 100);
      await closing;
    });
  }
});

describe("AP fallback under wall-clock steps", () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  const fakeWpa = (): WpaControl => unreachableWpa(["0\thome\tany\t"]);

  function rig(clock: FakeClock) {
    const dir = mkdtempSync(join(tmpdir(), "agent-clock-ap-"));
    dirs.push(dir);
    // One known network: the AP retries it every `retry`.
    writeFileSync(join(dir, "wifi-networks.json"), JSON.stringify([{ ssid: "home", psk: "correct horse", priority: 1, added: "2026-01-01T00:00:00.000Z" }]));
    const base = defaults();
    // An interface this host does not have: the AP itself fails to start, the policy goes on.
    const cfg: Config = { ...base, state_dir: dir, ap: { ...base.ap, interface: "wlclk9", passphrase: "correct horse battery", enabled: true } };
    const actions: { at: number; line: string }[] = [];
    const log = createLogger({
      level: "info",
      write: (line) => {
        if (/(start-ap|stop-ap|try-wifi): /.test(line)) actions.push({ at: clock.now(), line: line.trim() });
      },
    });
    const svc = new WifiService({ cfg, log, exec: async () => ({ code: 0, stdout: "", stderr: "" }), healthy: () => [], wpa: fakeWpa, clock });
    return { svc, actions, cfg };
  }

  for (const step of [DAY, -DAY]) {
    test(`the AP comes after exactly \`after\` and retries Wi-Fi after exactly \`retry\`, across wall steps of ${step > 0 ? "+" : "-"}1 day`, async () => {
      const clock = new FakeClock();
      const { svc, actions, cfg } = rig(clock);
      const t0 = clock.now();
      await svc.start();
      await run(clock, cfg.ap.after / 2, 500);
      clock.stepWall(step);
      await run(clock, cfg.ap.after / 2 - 500, 500);
      expect(actions).toEqual([]); // a forward step did not bring the AP early
      await run(clock, 500, 500);
      expect(actions.map((a) => [a.at - t0, a.line.replace(/^.*?(start-ap|stop-ap|try-wifi)/, "$1")])).toEqual([[cfg.ap.after, "start-ap: no healthy uplink for 60s"]]);
      // In AP mode: the known network is retried `retry` after the AP came, whatever the wall says.
      clock.stepWall(-step);
      await run(clock, cfg.ap.retry - 500, 500);
      expect(actions.length).toBe(1);
      await run(clock, 500, 500);
      expect(actions.slice(1, 3).map((a) => [a.at - t0, a.line.replace(/^.*?(start-ap|stop-ap|try-wifi)/, "$1")])).toEqual([
        [cfg.ap.after + cfg.ap.retry, "stop-ap: retrying the known Wi-Fi networks"],
        [cfg.ap.after + cfg.ap.retry, "try-wifi: retrying the known Wi-Fi networks"],
      ]);
      // The try fails (nothing in range): back to the AP.
      await run(clock, 1_000, 100);
      expect(actions.at(-1)!.line).toContain("start-ap: the Wi-Fi client could not connect");
      expect(svc.status()).toMatchObject({ mode: "ap" });
      const closing = svc.close();
      await run(clock, 4_000, 500);
      await closing;
    });
  }
});
