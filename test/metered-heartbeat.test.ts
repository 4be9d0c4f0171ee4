// Issue 13 §8: the heartbeat on a metered ACTIVE uplink goes at the standby rate while the TLS
// tunnel is up (the relay hears the device over TLS anyway), at the full rate while it is down.
// The interval decision table-tested, then the sender on a fake clock over an in-memory network.
import { describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { HeartbeatTiming } from "../src/transport/heartbeat/codec.ts";
import { due, HeartbeatSender, intervalFor, type UplinkView } from "../src/transport/heartbeat/sender.ts";
import { MemoryDatagramNet } from "../src/transport/heartbeat/socket.ts";

const { interval, meteredStandbyInterval: standby } = HeartbeatTiming;

describe("intervalFor", () => {
  test.each([
    ["unmetered active, tunnel up", false, true, true, interval],
    ["unmetered active, tunnel down", false, true, false, interval],
    ["unmetered standby, tunnel up", false, false, true, interval],
    ["metered standby, tunnel down", true, false, false, standby],
    ["metered standby, tunnel up", true, false, true, standby],
    ["metered active, tunnel up: the relay hears it over TLS", true, true, true, standby],
    ["metered active, tunnel down: the heartbeat is all there is", true, true, false, interval],
  ])("%s", (_n, metered, active, tunnelUp, want) => {
    expect(intervalFor({ uplink: "u", metered, active }, tunnelUp)).toBe(want);
  });

  test("the configured timings are used, not the defaults", () => {
    expect(intervalFor({ uplink: "u", metered: true, active: true }, true, { interval: 10_000, meteredStandbyInterval: 40_000 })).toBe(40_000);
    expect(intervalFor({ uplink: "u", metered: true, active: true }, false, { interval: 10_000, meteredStandbyInterval: 40_000 })).toBe(10_000);
  });

  test.each([
    ["metered active, tunnel up, an interval ago", true, 25_000, false],
    ["metered active, tunnel up, 100 s ago", true, 100_000, true],
    ["metered active, tunnel down, an interval ago", false, 25_000, true],
  ])("due: %s", (_n, tunnelUp, now, want) => {
    expect(due({ uplink: "wwan0", metered: true, active: true }, 0, now, HeartbeatTiming, tunnelUp)).toBe(want);
  });
});

describe("the sender on a metered active uplink", () => {
  const view: UplinkView = {
    active: "wwan0",
    uplinks: [
      { name: "eth0", kind: "ethernet", metered: false, active: false, health: "down", link: { addrs: [] }, probes: { loss: 1, sent: 3 } },
      { name: "wwan0", kind: "cellular", metered: true, active: true, health: "up", link: { addrs: ["10.91.3.2/24"] }, probes: { loss: 0, latency_ms: 80, sent: 3 } },
    ],
  };

  test("sends every 100 s while the tunnel is up, every 25 s once it is down", async () => {
    const net = new MemoryDatagramNet();
    const clock = new FakeClock();
    let tunnel = "up";
    await net.open({ address: "10.99.0.1", port: 4443 });
    const tx = new HeartbeatSender({ id: "site-1", host: "10.99.0.1", open: net.open, clock, diagnostics: () => ({ uplinks: view, tunnel, lastError: null, uptime: 1, load: 0, diskFreeMiB: 1 }) });
    tx.setKey({ relay: "relay-1", key: new Uint8Array(32).fill(3), port: 4443 });
    tx.start();
    await tx.tick();
    const sentAt: number[] = [];
    let seen = 0;
    const step = async (to: number) => {
      while (clock.now() < to) {
        clock.advance(interval);
        await tx.tick();
        if (tx.sent > seen) {
          seen = tx.sent;
          sentAt.push(clock.now());
        }
      }
    };
    const t0 = clock.now();
    expect(tx.sent).toBe(1); // the first one at once
    seen = 1;
    await step(t0 + 200_000);
    expect(sentAt.map((t) => t - t0)).toEqual([100_000, 200_000]);
    tunnel = "waiting";
    sentAt.length = 0;
    await step(t0 + 300_000);
    expect(sentAt.map((t) => t - t0)).toEqual([225_000, 250_000, 275_000, 300_000]);
    await tx.close();
  });
});
