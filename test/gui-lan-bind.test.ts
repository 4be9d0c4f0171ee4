// `gui = ":PORT"`: which addresses the web GUI is served on (src/gui/lan-bind.ts guiBindPlan,
// pure, table-tested), the config forms (":PORT", "PORT", "ADDR:PORT" kept as written), and the
// LanGui component on a fake interface list and a fake clock: loopback first, the LAN side's
// address bound once it appears, closed when it goes. The real thing in namespaces (the uplink
// refused): test/gui-lan.test.ts.
import { describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { resolveConfig, type ConfigSource } from "../src/config.ts";
import { guiBindPlan, LanGui, POLL_MS } from "../src/gui/lan-bind.ts";
import { createLogger } from "../src/log.ts";
import { FakeIfAddrs, type IfAddrMap } from "../src/os/if-addrs.ts";

const v4 = (address: string, internal = false) => ({ address, family: "IPv4", internal });
const v6 = (address: string) => ({ address, family: "IPv6", internal: false });

describe("guiBindPlan: the LAN side's addresses, never the uplink's", () => {
  const ifs: IfAddrMap = {
    lo: [v4("127.0.0.1", true)],
    eth0: [v4("203.0.113.7")], // the uplink
    eth1: [v4("192.168.50.1"), v6("fe80::1"), v4("10.99.0.1")],
    eth2: [v6("fe80::2")],
    eth3: [],
    eth4: [{ address: "172.16.0.1", family: 4, internal: false }],
  };
  test.each([
    ["eth1", ["10.99.0.1", "192.168.50.1"], null],
    ["eth4", ["172.16.0.1"], null],
    ["eth2", [], "has no IPv4 address yet"],
    ["eth3", [], "has no IPv4 address yet"],
    ["eth9", [], "does not exist yet"],
    [undefined, [], "no LAN side here"],
  ] as const)("secondary %p → %p", (secondary, lan, waiting) => {
    const plan = guiBindPlan(secondary, ifs);
    expect(plan.lan).toEqual([...lan]);
    expect(plan.lan).not.toContain("203.0.113.7");
    if (waiting === null) expect(plan.waiting).toBeNull();
    else expect(plan.waiting).toContain(waiting);
  });
  test("the same address twice is bound once; loopback addresses on the LAN side are not bound again", () => {
    expect(guiBindPlan("x", { x: [v4("10.0.0.1"), v4("10.0.0.1"), v4("127.0.0.5")] }).lan).toEqual(["10.0.0.1"]);
  });
});

describe("gui config forms", () => {
  const gui = (v: unknown) => resolveConfig([{ origin: { kind: "file", path: "a.toml" }, raw: { role: "master", gui: v } } as ConfigSource]).gui;
  test.each([
    [":8080", { host: "", port: 8080 }],
    ["8080", { host: "", port: 8080 }],
    [":0", { host: "", port: 0 }],
    ["0.0.0.0:8080", { host: "0.0.0.0", port: 8080 }],
    ["192.168.1.20:8080", { host: "192.168.1.20", port: 8080 }],
    ["127.0.0.1:0", { host: "127.0.0.1", port: 0 }],
  ])("%p", (text, want) => expect(gui(text)).toEqual(want));
  test.each([
    [":65536", 'expected ":PORT" with a port 1-65535'],
    [":http", "or \":PORT\" alone for the LAN side"],
    ["10.0.0.300:80", "or \":PORT\" alone"],
    [8080, 'expected ":PORT" (the LAN side) or "ADDR:PORT"'],
  ])("%p is refused: %p", (text, msg) => expect(() => gui(text)).toThrow(msg));
  test("the flag form is the same", () => {
    expect(resolveConfig([{ origin: { kind: "flag" }, raw: { role: "master", gui: ":8080" } }]).gui).toEqual({ host: "", port: 8080 });
  });
});

describe("LanGui on a fake interface list and a fake clock", () => {
  class FakeGui {
    served: string[] = [];
    calls: string[][] = [];
    started = false;
    closed = false;
    failNext = "";
    readonly port = 8080;
    readonly url = "http://127.0.0.1:8080/";
    get alsoServed() {
      return [...this.served];
    }
    async start() {
      this.started = true;
    }
    async close() {
      this.closed = true;
    }
    status() {
      return { url: this.url };
    }
    async serveAlso(hosts: readonly string[]) {
      this.calls.push([...hosts]);
      const fail = hosts.filter((h) => h === this.failNext);
      this.failNext = "";
      this.served = hosts.filter((h) => !fail.includes(h));
      return fail.map((host) => ({ host, error: "EADDRINUSE" }));
    }
  }
  const setup = () => {
    const lines: string[] = [];
    const log = createLogger({ level: "info", write: (l) => lines.push(l) });
    const clock = new FakeClock();
    const ifs = new FakeIfAddrs({ eth0: [v4("203.0.113.7")], eth1: [] });
    const gui = new FakeGui();
    const lan = new LanGui(gui, "eth1", ifs, log, clock);
    const tick = async () => {
      clock.advance(POLL_MS);
      await clock.settle();
    };
    return { lines, clock, ifs, gui, lan, tick };
  };

  test("loopback at once and why; the LAN address once it appears; loopback only again when it goes", async () => {
    const { lines, ifs, gui, lan, tick } = setup();
    await lan.start();
    expect(gui.started).toBe(true);
    expect(gui.served).toEqual([]);
    expect(lan.status().waiting).toContain("eth1 ([tunnel] secondary) has no IPv4 address yet");
    expect(lines.filter((l) => l.includes("has no IPv4 address yet"))).toHaveLength(1);
    await tick();
    await tick();
    expect(lines.filter((l) => l.includes("has no IPv4 address yet"))).toHaveLength(1); // said once, not every poll
    ifs.map = { ...ifs.map, eth1: [v4("192.168.50.1")] };
    await tick();
    expect(gui.served).toEqual(["192.168.50.1"]);
    expect(lan.status()).toMatchObject({ lan: ["192.168.50.1"], waiting: null });
    expect(lines.join("\n")).toContain("web GUI on the LAN side eth1: http://192.168.50.1:8080/");
    const calls = gui.calls.length;
    await tick();
    expect(gui.calls.length).toBe(calls); // nothing changed: nothing rebound
    ifs.map = { ...ifs.map, eth1: [] };
    await tick();
    expect(gui.served).toEqual([]);
    expect(lines.join("\n")).toContain("lost its address");
    await lan.close();
    expect(gui.closed).toBe(true);
    const polls = ifs.calls;
    await tick();
    expect(ifs.calls).toBe(polls); // no poll after close
  });

  test("an address that cannot be bound is said and tried again at the next poll", async () => {
    const { lines, ifs, gui, lan, tick } = setup();
    ifs.map = { eth1: [v4("192.168.50.1")] };
    gui.failNext = "192.168.50.1";
    await lan.start();
    expect(gui.served).toEqual([]);
    expect(lines.join("\n")).toContain("cannot listen on 192.168.50.1:8080 (the LAN side eth1): EADDRINUSE");
    await tick();
    expect(gui.served).toEqual(["192.168.50.1"]);
    await lan.close();
  });

  test("no LAN side (a relay): loopback only, said, and no poll", async () => {
    const lines: string[] = [];
    const clock = new FakeClock();
    const ifs = new FakeIfAddrs({ eth0: [v4("203.0.113.7")] });
    const gui = new FakeGui();
    const lan = new LanGui(gui, undefined, ifs, createLogger({ level: "info", write: (l) => lines.push(l) }), clock);
    await lan.start();
    expect(gui.served).toEqual([]);
    expect(lines.join("\n")).toContain("no LAN side here");
    const polls = ifs.calls;
    clock.advance(POLL_MS * 3);
    await clock.settle();
    expect(ifs.calls).toBe(polls);
    await lan.close();
  });
});
