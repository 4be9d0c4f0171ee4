// issue 19, "A typo opens the access point": configured interfaces that do not exist are named
// at start and in `uplink status` ("missing interface", not just "down"); the AP does not open
// when they are missing but the relay answers through another interface; the AP's start
// failure, retried every 10 s, is logged once and then at most every 10 minutes with a count,
// in one sentence ("access point on X did not start: …", not "failed to start starting").
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FakeClock } from "../src/clock.ts";
import { defaults, type Config } from "../src/config.ts";
import { createLogger } from "../src/log.ts";
import { parseHostPort } from "../src/netaddr.ts";
import { fallbackHealthy, needsRelayCheck } from "../src/uplink/fallback.ts";
import { describeMissing, missingInterfaces } from "../src/uplink/interfaces.ts";
import { linkProblem, UplinkManager } from "../src/uplink/manager.ts";
import { FakeMonitor, type LinkInfo } from "../src/uplink/monitor.ts";
import type { Prober } from "../src/uplink/probe.ts";
import { noteRepeat, RepeatLimiter, type RepeatState } from "../src/uplink/repeat.ts";
import { FakeRouteTable } from "../src/uplink/routes.ts";
import { REPEAT_LOG_MS, WifiService } from "../src/uplink/wifi.ts";
import type { WpaControl } from "../src/uplink/wpa.ts";
import { unreachableWpa } from "./helpers/fake-wpa.ts";
import { stepper } from "./helpers/fake-time.ts";

const run = stepper(500);

describe("missingInterfaces", () => {
  test.each([
    [["eth0", "wlan0"], ["lo", "eth0", "wlan0"], []],
    [["eth0", "wlan0", "wwan0"], ["lo", "end0", "wlan0"], ["eth0", "wwan0"]],
    [["eth0", "eth0"], ["lo"], ["eth0"]],
    [[], ["lo"], []],
    [["wlan0"], [], ["wlan0"]],
  ] as [string[], string[], string[]][])("%p on a host with %p: missing %p", (configured, present, missing) => {
    expect(missingInterfaces(configured, present)).toEqual(missing);
  });

  test("the warning names the missing ones and what the host has, without lo", () => {
    expect(describeMissing("[[uplink]]", ["eth0"], ["lo", "wlan0", "end0"])).toBe("[[uplink]] eth0: no network interface of that name on this device (present: end0, wlan0)");
    expect(describeMissing("[[uplink]]", ["eth0", "wwan0"], ["lo"])).toBe("[[uplink]] eth0, wwan0: no network interfaces of those names on this device (present: none)");
  });
});

describe("linkProblem", () => {
  const l = (o: Partial<LinkInfo>): LinkInfo => ({ name: "eth0", index: 2, up: true, carrier: true, addrs: ["10.0.0.2/24"], gateways: [], ...o });
  test.each([
    [undefined, "missing interface"],
    [l({ up: false }), "link down"],
    [l({ carrier: false }), "no carrier"],
    [l({ addrs: [] }), "no IPv4 address"],
    [l({}), undefined],
  ] as [LinkInfo | undefined, string | undefined][])("%p → %p", (link, problem) => {
    expect(linkProblem(link)).toBe(problem);
  });
});

describe("fallbackHealthy: what keeps the setup AP off", () => {
  test.each([
    // healthy uplinks, missing, relay reachable → counts as healthy
    [["eth0"], [], undefined, true],
    [["eth0"], ["wwan0"], false, true],
    [[], [], undefined, false], // present but down: the AP comes as before
    [[], [], true, false], // the relay check is not asked for then, and does not count
    [[], ["eth0"], undefined, false], // not checked yet
    [[], ["eth0"], false, false], // missing and offline: the AP is what a technician needs
    [[], ["eth0"], true, true], // missing but online another way: no AP
  ] as [string[], string[], boolean | undefined, boolean][])("healthy %p, missing %p, relay reachable %p → %p", (healthy, missing, relayReachable, want) => {
    expect(fallbackHealthy({ healthy, missing, relayReachable }).healthy).toBe(want);
  });

  test("the reason names the missing interfaces", () => {
    expect(fallbackHealthy({ healthy: [], missing: ["eth0"], relayReachable: true }).reason).toContain("missing: eth0");
  });

  test.each([
    [[], ["eth0"], true],
    [["wlan0"], ["eth0"], false],
    [[], [], false],
  ] as [string[], string[], boolean][])("needsRelayCheck(healthy %p, missing %p) = %p", (healthy, missing, want) => {
    expect(needsRelayCheck({ healthy, missing })).toBe(want);
  });
});

describe("noteRepeat", () => {
  const every = 600_000;
  test("first logged, repeats within the window counted, the next after the window carries the count", () => {
    let s: RepeatState | undefined;
    const seq: [string, number, unknown][] = [
      ["a", 0, { log: true, repeated: 0 }],
      ["a", 10_000, { log: false }],
      ["a", 20_000, { log: false }],
      ["a", every, { log: true, repeated: 2 }],
      ["a", every + 10_000, { log: false }],
      ["b", every + 20_000, { log: true, repeated: 0 }], // another message starts over
      ["b", 2 * every + 20_000, { log: true, repeated: 0 }],
    ];
    for (const [key, now, want] of seq) {
      const d = noteRepeat(s, key, now, every);
      expect(d.verdict).toEqual(want as never);
      s = d.state;
    }
  });

  test("RepeatLimiter.reset says how many times the run occurred", () => {
    const r = new RepeatLimiter(every);
    r.note("x", 0);
    r.note("x", 1);
    r.note("x", 2);
    expect(r.reset()).toBe(3);
    expect(r.reset()).toBe(0);
    expect(r.note("x", 3)).toEqual({ log: true, repeated: 0 });
  });
});

describe("UplinkManager with a configured interface the host does not have", () => {
  test("warns at start naming it, and reports it as \"missing interface\"", async () => {
    const clock = new FakeClock();
    const lines: string[] = [];
    const monitor = new FakeMonitor();
    // The device's wired interface is end0; the config says eth0 (the typo).
    monitor.set([{ name: "end0", index: 2, up: true, carrier: true, addrs: ["10.0.1.2/24"], gateways: ["10.0.1.1"] }, { name: "wwan0", index: 3, up: true, carrier: false, addrs: [], gateways: [] }]);
    const prober: Prober = async (_s, targets) => ({ ok: true, rttMs: 1, targets: targets.map((t) => ({ target: `${t.host}:${t.port}`, ok: true })) });
    const m = new UplinkManager({
      uplinks: [
        { name: "eth0", kind: "ethernet", priority: 10, metered: false },
        { name: "wwan0", kind: "cellular", priority: 30, metered: true },
      ],
      tracking: { ...defaults().tracking },
      relay: parseHostPort("10.99.0.1:443"),
      monitor,
      routes: new FakeRouteTable(),
      prober,
      log: createLogger({ level: "info", write: (l) => lines.push(l) }),
      clock,
    });
    await m.start();
    await run(clock, 2_000);
    const warn = lines.filter((l) => / WARN /.test(l));
    expect(warn.length).toBe(1);
    expect(warn[0]).toContain("[[uplink]] eth0: no network interface of that name on this device (present: end0, wwan0)");
    const r = m.report();
    expect(r.uplinks.find((u) => u.name === "eth0")).toMatchObject({ problem: "missing interface", link: { present: false } });
    expect(r.uplinks.find((u) => u.name === "wwan0")!.problem).toBe("no carrier");
    expect(m.status()).toMatchObject({ missing: ["eth0"] });
    // It appears later (renamed, hot-plugged): said, and no longer missing.
    monitor.set([{ name: "eth0", index: 4, up: true, carrier: true, addrs: ["10.0.1.2/24"], gateways: ["10.0.1.1"] }]);
    await run(clock, 1_000);
    expect(lines.some((l) => l.includes("uplink eth0: interface appeared"))).toBe(true);
    expect(m.report().uplinks.find((u) => u.name === "eth0")!.problem).toBeUndefined();
    const closing = m.close();
    await run(clock, 100);
    await closing;
  });
});

describe("WifiService with missing uplinks", () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  const fakeWpa = (): WpaControl => unreachableWpa();

  function rig(clock: FakeClock, relayReachable: boolean, interfaces: string[] = ["lo", "eth0"]) {
    const dir = mkdtempSync(join(tmpdir(), "agent-ux-ap-"));
    dirs.push(dir);
    writeFileSync(join(dir, "wifi-networks.json"), "[]");
    const base = defaults();
    // The shipped onsite.toml's shape with a typo'd wired uplink; wlux9 does not exist here
    // either, so a started AP fails (the retry loop of the issue).
    const cfg: Config = {
      ...base,
      state_dir: dir,
      relay: parseHostPort("10.99.0.1:443"),
      uplink: [{ name: "eht0", kind: "ethernet", priority: 10, metered: false }],
      ap: { ...base.ap, interface: "wlux9", passphrase: "correct horse battery", enabled: true },
    };
    const lines: string[] = [];
    const log = createLogger({ level: "info", write: (l) => lines.push(l) });
    let asked = 0;
    const svc = new WifiService({
      cfg,
      log,
      exec: async () => ({ code: 0, stdout: "", stderr: "" }),
      healthy: () => [],
      wpa: fakeWpa,
      clock,
      interfaces: () => interfaces,
      reachRelay: async () => (asked++, relayReachable),
    });
    return { svc, lines, cfg, asked: () => asked };
  }

  test("missing uplinks but the relay answers another way: no AP, one warning that says why", async () => {
    const clock = new FakeClock();
    const { svc, lines, cfg, asked } = rig(clock, true);
    await svc.start();
    // The [ap] interface typo is named at start.
    expect(lines.filter((l) => / WARN /.test(l) && l.includes("[ap] interface wlux9: no network interface of that name on this device (present: eth0)")).length).toBe(1);
    await run(clock, cfg.ap.after * 3);
    expect(lines.filter((l) => /start-ap/.test(l))).toEqual([]);
    expect(svc.status()).toMatchObject({ mode: "client", ap: false });
    const why = lines.filter((l) => l.includes("the relay answers through an interface the config does not name (missing: eht0)"));
    expect(why.length).toBe(1);
    expect(asked()).toBeGreaterThan(1); // checked again and again, said once
    const closing = svc.close();
    await run(clock, 4_000);
    await closing;
  });

  test("an unreadable interface list claims nothing missing: no warning, no relay check, the AP comes as before", async () => {
    const clock = new FakeClock();
    const { svc, lines, cfg, asked } = rig(clock, true, []);
    await svc.start();
    await run(clock, cfg.ap.after + 1_000);
    expect(lines.filter((l) => / WARN /.test(l))).toEqual([]);
    expect(asked()).toBe(0);
    expect(lines.filter((l) => /start-ap: no healthy uplink/.test(l)).length).toBe(1);
    const closing = svc.close();
    await run(clock, 4_000);
    await closing;
  });

  test("missing uplinks and the relay unreachable: the AP comes; its repeated start failure is one ERROR, then one per 10 minutes with a count", async () => {
    const clock = new FakeClock();
    const { svc, lines, cfg } = rig(clock, false);
    await svc.start();
    await run(clock, cfg.ap.after + 5 * 60_000);
    expect(lines.filter((l) => /start-ap: no healthy uplink/.test(l)).length).toBe(1);
    const errors = () => lines.filter((l) => / ERROR /.test(l));
    expect(errors().length).toBe(1);
    expect(errors()[0]).toContain("access point on wlux9 did not start: AP interface wlux9 not found");
    expect(lines.join("")).not.toContain("failed to start starting");
    await run(clock, REPEAT_LOG_MS);
    expect(errors().length).toBe(2);
    expect(errors()[1]).toMatch(/did not start: .*\(repeated \d+ times in the last 10m\)/);
    const closing = svc.close();
    await run(clock, 4_000);
    await closing;
  });
});
