import { describe, expect, test } from "bun:test";
import { decide, FLAP_HOLD_BASE_MS, initialState, METERED_ACTIVE_PERIOD_MS, probePeriod, requiredStableMs, type PolicyEvent, type PolicyState } from "../src/uplink/policy.ts";

const specs = [
  { name: "eth0", priority: 10, metered: false },
  { name: "wlan0", priority: 20, metered: false },
  { name: "wwan0", priority: 5, metered: true }, // best priority, but metered
];
const params = { down: 3, up: 5 };

/** Runs events at 1 s steps (or at given times) and returns the final state and every switch. */
function run(events: (PolicyEvent | [number, PolicyEvent])[], start?: PolicyState) {
  let s = start ?? initialState(specs, params);
  const switches: string[] = [];
  let t = 0;
  for (const e of events) {
    const [at, ev] = Array.isArray(e) ? e : [(t += 1000), e];
    t = at;
    const d = decide(s, ev, at);
    s = d.state;
    for (const a of d.actions) switches.push(`${a.from ?? "-"}>${a.to ?? "-"}: ${a.reason}`);
  }
  return { s, switches };
}

const ok = (uplink: string): PolicyEvent => ({ type: "probe", uplink, ok: true });
const fail = (uplink: string): PolicyEvent => ({ type: "probe", uplink, ok: false });
const link = (uplink: string, up: boolean): PolicyEvent => ({ type: "link", uplink, up });
const all = (e: (n: string) => PolicyEvent) => specs.map((s) => e(s.name));
const times = <T>(n: number, xs: T[]): T[] => Array.from({ length: n }, () => xs).flat();
const boot = [...all((n) => link(n, true)), ...all(ok)];

describe("decide", () => {
  test.each([
    ["first good round picks the best unmetered uplink", boot, "eth0", ["->eth0: initial choice"]],
    ["metered uplink is used only while nothing better is healthy", [link("wwan0", true), ok("wwan0"), link("eth0", true), ok("eth0")], "eth0", ["->wwan0: initial choice", "wwan0>eth0: eth0 is preferred and stable"]],
    ["down-1 failures keep the uplink", [...boot, ...times(2, [fail("eth0")])], "eth0", ["->eth0: initial choice"]],
    ["down failures switch to the next priority", [...boot, ...times(3, [fail("eth0")])], "wlan0", ["->eth0: initial choice", "eth0>wlan0: eth0 is down"]],
    ["a lost link switches at once", [...boot, link("eth0", false)], "wlan0", ["->eth0: initial choice", "eth0>wlan0: eth0 is down"]],
    ["interleaved failures never reach the down count", [...boot, ...times(10, [fail("eth0"), fail("eth0"), ok("eth0")])], "eth0", ["->eth0: initial choice"]],
    ["return only after `up` good rounds", [...boot, link("eth0", false), link("eth0", true), ...times(4, [ok("eth0")])], "wlan0", ["->eth0: initial choice", "eth0>wlan0: eth0 is down"]],
    [
      "return after the up count",
      [...boot, link("eth0", false), link("eth0", true), ...times(5, [ok("eth0")])],
      "eth0",
      ["->eth0: initial choice", "eth0>wlan0: eth0 is down", "wlan0>eth0: eth0 is preferred and stable"],
    ],
    ["everything down: no active uplink", [...boot, ...all((n) => link(n, false))], undefined, ["->eth0: initial choice", "eth0>wlan0: eth0 is down", "wlan0>wwan0: wlan0 is down", "wwan0>-: all uplinks down"]],
    [
      "recovers from everything down",
      [...boot, ...all((n) => link(n, false)), link("wlan0", true), ...times(5, [ok("wlan0")])],
      "wlan0",
      ["->eth0: initial choice", "eth0>wlan0: eth0 is down", "wlan0>wwan0: wlan0 is down", "wwan0>-: all uplinks down", "->wlan0: wlan0 recovered"],
    ],
    ["a link coming up is not trusted without probes", [...boot, link("eth0", false), link("eth0", true)], "wlan0", ["->eth0: initial choice", "eth0>wlan0: eth0 is down"]],
    ["failed probes of a standby uplink do not switch", [...boot, ...times(5, [fail("wlan0")])], "eth0", ["->eth0: initial choice"]],
  ] as const)("%s", (_name, events, active, switches) => {
    const r = run([...events]);
    expect(r.s.active).toBe(active);
    expect(r.switches).toEqual([...switches]);
  });

  test("history records each switch with its time", () => {
    const r = run([...boot, link("eth0", false)]);
    expect(r.s.history.map((h) => [h.from, h.to])).toEqual([
      [undefined, "eth0"],
      ["eth0", "wlan0"],
    ]);
    expect(r.s.history[1]!.at).toBe(r.s.activeSince!);
  });

  test("a flapping primary is held off longer each time", () => {
    // eth0 goes down and comes back (up count met) repeatedly, 1 s per event.
    const cycle = [link("eth0", false), link("eth0", true), ...times(5, [ok("eth0")])];
    const r = run([...boot, ...times(8, cycle)]);
    // Without damping it would switch twice per cycle (16 + 1). Returns stop once the
    // required stable time exceeds the cycle.
    const returns = r.switches.filter((s) => s.startsWith("wlan0>eth0")).length;
    expect(returns).toBeLessThanOrEqual(2);
    expect(r.switches.length).toBeLessThan(8);
  });

  test("a damped uplink returns once it has been stable long enough", () => {
    const cycle = [link("eth0", false), link("eth0", true), ...times(5, [ok("eth0")])];
    let { s } = run([...boot, ...times(4, cycle)]);
    expect(s.active).toBe("wlan0");
    const eth = s.uplinks.find((u) => u.name === "eth0")!;
    const need = requiredStableMs(eth, 40_000);
    expect(need).toBeGreaterThanOrEqual(FLAP_HOLD_BASE_MS);
    // Keep probing eth0 successfully until the hold has passed.
    let t = 40_000;
    while (s.active !== "eth0" && t < 40_000 + need + 5_000) {
      t += 1000;
      s = decide(s, ok("eth0"), t).state;
    }
    expect(s.active).toBe("eth0");
    expect(t - eth.since!).toBeGreaterThanOrEqual(need);
  });

  test("requiredStableMs grows with recent flaps and forgets old ones", () => {
    const u = { ...initialState(specs, params).uplinks[0]!, flaps: [0, 1000, 2000] };
    expect(requiredStableMs({ ...u, flaps: [0] }, 3000)).toBe(0);
    expect(requiredStableMs({ ...u, flaps: [0, 1000] }, 3000)).toBe(FLAP_HOLD_BASE_MS);
    expect(requiredStableMs(u, 3000)).toBe(2 * FLAP_HOLD_BASE_MS);
    expect(requiredStableMs(u, 10 * 60_000)).toBe(0);
  });
});

test("several links lost in one snapshot are decided together", () => {
  const r = run([...boot, { type: "links", up: { eth0: false, wlan0: false, wwan0: false } }]);
  expect(r.switches).toEqual(["->eth0: initial choice", "eth0>-: all uplinks down"]);
});

describe("probe period (issue 13 §8: a metered uplink's probes are billed)", () => {
  const I = 1000;
  test.each([
    ["unmetered, active", { active: true, metered: false, health: "up", failStreak: 0 }, I],
    ["unmetered, standby", { active: false, metered: false, health: "up", failStreak: 0 }, I],
    ["unmetered, standby, keepalive", { active: false, metered: false, keepalive: 30_000, health: "up", failStreak: 0 }, 30_000],
    ["metered, standby, no keepalive", { active: false, metered: true, health: "up", failStreak: 0 }, I],
    ["metered, standby, keepalive", { active: false, metered: true, keepalive: 60_000, health: "up", failStreak: 0 }, 60_000],
    ["metered, standby, keepalive below the interval", { active: false, metered: true, keepalive: 500, health: "up", failStreak: 0 }, I],
    ["metered, active, healthy, just switched to", { active: true, metered: true, health: "up", failStreak: 0, activeOk: 0 }, I],
    ["metered, active, 1 good round", { active: true, metered: true, health: "up", failStreak: 0, activeOk: 1 }, 2 * I],
    ["metered, active, 5 good rounds", { active: true, metered: true, health: "up", failStreak: 0, activeOk: 5 }, 32 * I],
    ["metered, active, 6 good rounds: the minute", { active: true, metered: true, health: "up", failStreak: 0, activeOk: 6 }, METERED_ACTIVE_PERIOD_MS],
    ["metered, active, long healthy", { active: true, metered: true, health: "up", failStreak: 0, activeOk: 5000 }, METERED_ACTIVE_PERIOD_MS],
    ["metered, active, long healthy, keepalive", { active: true, metered: true, keepalive: 300_000, health: "up", failStreak: 0, activeOk: 5000 }, 300_000],
    ["metered, active, long healthy, keepalive below the interval", { active: true, metered: true, keepalive: 500, health: "up", failStreak: 0, activeOk: 9 }, I],
    ["metered, active, one failed round: confirmed at the interval", { active: true, metered: true, health: "up", failStreak: 1, activeOk: 0 }, I],
    ["metered, active, down", { active: true, metered: true, health: "down", failStreak: 3 }, I],
    ["metered, active, not yet known", { active: true, metered: true, health: "unknown", failStreak: 0 }, I],
  ] as const)("%s", (_n, u, want) => expect(probePeriod(u, I)).toBe(want));
  test("the active default is a minute", () => expect(METERED_ACTIVE_PERIOD_MS).toBe(60_000));
});
