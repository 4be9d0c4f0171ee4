// The event bus (src/events.ts), the control socket's streaming commands (src/control.ts) and
// `agent monitor`'s line format (src/cli/monitor.ts), over a real unix socket.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatEvent } from "../src/cli/monitor.ts";
import { FakeClock } from "../src/clock.ts";
import { ControlServer, controlStream } from "../src/control.ts";
import { EVENT_TYPES, EventBus, parseEventTypes, type AgentEvent } from "../src/events.ts";
import { createLogger } from "../src/log.ts";
import { waitFor } from "./helpers/wait.ts";

const dir = mkdtempSync(join(tmpdir(), "agent-monitor-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const log = createLogger({ level: "silent", write: () => {} });

describe("EventBus", () => {
  test("subscribers get each event with the wall time and type; unsubscribing stops them", () => {
    const clock = new FakeClock();
    const bus = new EventBus(clock);
    const got: AgentEvent[] = [];
    const off = bus.subscribe((e) => void got.push(e));
    bus.publish("connect", { id: "site-1", role: "onsite" });
    off();
    bus.publish("disconnect", { id: "site-1" });
    expect(got).toEqual([{ id: "site-1", role: "onsite", type: "connect", time: new Date(clock.wall()).toISOString() }]);
    expect(bus.subscriberCount).toBe(0);
  });
  test("a subscriber that throws is dropped; the others still get the event", () => {
    const bus = new EventBus();
    const got: string[] = [];
    bus.subscribe(() => {
      throw new Error("broken");
    });
    bus.subscribe((e) => void got.push(e.type));
    bus.publish("kick");
    bus.publish("kick");
    expect(got).toEqual(["kick", "kick"]);
    expect(bus.subscriberCount).toBe(1);
  });
  test("fields cannot overwrite time or type", () => {
    const bus = new EventBus();
    let e: AgentEvent | undefined;
    bus.subscribe((x) => void (e = x));
    bus.publish("refusal", { type: "forged", time: "never" });
    expect(e!.type).toBe("refusal");
    expect(e!.time).not.toBe("never");
  });
});

test.each<[string | undefined, string[] | null | string]>([
  [undefined, null],
  ["", null],
  ["connect", ["connect"]],
  ["connect, refusal", ["connect", "refusal"]],
  ["connect,nope", 'unknown event type "nope"'],
])("parseEventTypes(%p)", (text, want) => {
  if (typeof want === "string") expect(() => parseEventTypes(text)).toThrow(want);
  else expect(parseEventTypes(text)).toEqual(want as typeof EVENT_TYPES[number][] | null);
});

test("formatEvent: time of day, type, then the fields (quoted where they hold spaces)", () => {
  expect(formatEvent({ time: "2026-12-01T10:11:12.345Z", type: "kick", id: "site-1", reason: "swap the SIM", sessions: 2, gone: null })).toBe('10:11:12Z kick          id=site-1 reason="swap the SIM" sessions=2');
});

describe("a streaming command over the control socket", () => {
  test("the client gets each emitted value as it happens; closing it unsubscribes", async () => {
    const bus = new EventBus();
    const server = new ControlServer(join(dir, "a.sock"), log);
    server.stream("monitor", (_a, emit) => bus.subscribe(emit));
    await server.start();
    try {
      const got: AgentEvent[] = [];
      const s = await controlStream(server.path, "monitor", {}, (v) => void got.push(v as AgentEvent));
      await waitFor(() => bus.subscriberCount === 1, 5000, "the daemon side subscribed");
      bus.publish("session_open", { session: "s1" });
      bus.publish("session_close", { session: "s1", reason: "TTL of 60 s reached" });
      await waitFor(() => got.length === 2, 5000, "two events");
      expect(got.map((e) => [e.type, e.session])).toEqual([["session_open", "s1"], ["session_close", "s1"]]);
      s.close();
      await s.done;
      await waitFor(() => bus.subscriberCount === 0, 5000, "unsubscribed once the client left");
    } finally {
      server.close();
    }
  });

  test("an unknown stream is an ordinary unknown command", async () => {
    const server = new ControlServer(join(dir, "b.sock"), log);
    await server.start();
    try {
      await expect(controlStream(server.path, "monitor", {}, () => {})).rejects.toThrow('unknown command "monitor"');
    } finally {
      server.close();
    }
  });

  test("a reader that does not keep up loses lines, not the daemon's memory, and hears how many", async () => {
    const bus = new EventBus();
    const server = new ControlServer(join(dir, "c.sock"), log);
    server.stream("monitor", (_a, emit) => bus.subscribe(emit));
    await server.start();
    try {
      const got: AgentEvent[] = [];
      const s = await controlStream(server.path, "monitor", {}, (v) => void got.push(v as AgentEvent));
      await waitFor(() => bus.subscriberCount === 1, 5000, "subscribed");
      // 8 MiB published in one go, faster than any socket takes it.
      const blob = "x".repeat(4096);
      for (let i = 0; i < 2048; i++) bus.publish("heartbeat", { i, blob });
      await waitFor(() => got.length > 0, 5000, "the first lines");
      await Bun.sleep(0);
      // Once the queue has drained, the next event comes after a "dropped" notice.
      await waitFor(async () => {
        bus.publish("kick", { id: "after" });
        await Bun.sleep(20);
        return got.some((e) => e.type === "kick");
      }, 10_000, "an event after the flood");
      const dropped = got.find((e) => e.type === "dropped");
      expect(dropped).toBeDefined();
      const delivered = got.filter((e) => e.type === "heartbeat").length;
      expect(delivered + Number(dropped!.count)).toBe(2048);
      expect(delivered).toBeLessThan(2048);
      s.close();
    } finally {
      server.close();
    }
  });
});
