// The relay's heartbeat and packet-drop families are fed where the events happen: a judged
// heartbeat datagram and a packet the relay's bounded queue drops each move their counter.
import { describe, expect, test } from "bun:test";
import { Registry } from "../src/metrics.ts";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { PacketSender, noPacketStats, type DropReason } from "../src/transport/packet.ts";
import { FakeClock } from "../src/clock.ts";

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

describe("relay metrics fed by the heartbeat receiver", () => {
  test("each dropped datagram counts under its reason; nothing counts as received", () => {
    const metrics = new Registry();
    const r = new RelayServer({ id: "relay-1", log: quiet, access: () => [], clock: new FakeClock(), keepaliveInterval: 3_600_000, metrics, heartbeat: { secret: new Uint8Array(32).fill(7), port: 9 } });
    const from = { address: "198.51.100.7", port: 40000 };
    expect(r.heartbeats!.handle({ data: new Uint8Array([0x41, 0x47, 0x48, 0x31, 5, 0x73]), ...from })).toBe("truncated");
    expect(r.heartbeats!.handle({ data: new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"), ...from })).toBe("malformed");
    const text = metrics.render();
    expect(text).toContain('agent_relay_heartbeats_rejected_total{reason="truncated"} 1\n');
    expect(text).toContain('agent_relay_heartbeats_rejected_total{reason="malformed"} 1\n');
    expect(text).toMatch(/agent_relay_heartbeats_received_total 0\n/);
    r.close?.();
  });
});

describe("PacketSender tells its drops as they happen", () => {
  test("queue_full for each oldest packet pushed out, closed for what waited at close", () => {
    const told: DropReason[] = [];
    const link = { writeFrame() {}, packetRoom: false, block() {} };
    const stats = noPacketStats();
    const tx = new PacketSender(link, 3, { packets: 2, bytes: 1 << 20 }, stats, (why) => told.push(why));
    for (let i = 0; i < 5; i++) tx.send(new Uint8Array(100));
    expect(told).toEqual(["queue_full", "queue_full", "queue_full"]);
    tx.close();
    expect(told.slice(3)).toEqual(["closed", "closed"]);
    tx.send(new Uint8Array(1));
    expect(told.at(-1)).toBe("closed");
    expect(stats.drops.queue_full).toBe(3);
    expect(stats.drops.closed).toBe(3);
  });
});
