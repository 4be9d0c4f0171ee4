// The device-side families (src/roles/metrics.ts) over fakes that speak the real interfaces: an
// uplink manager's report and switch events, a relay client's states and connections. The
// rendered exposition goes through promtool like the relay's.
import { expect, test } from "bun:test";
import { EventBus, type AgentEvent } from "../src/events.ts";
import { Registry } from "../src/metrics.ts";
import { registerRelayLinkMetrics, watchNat, watchUplinks } from "../src/roles/metrics.ts";
import type { RelayClient } from "../src/transport/client.ts";
import type { ActiveChange, UplinkReport } from "../src/uplink/manager.ts";

const CI = process.env.CI === "true";

async function promtool(text: string): Promise<{ code: number; out: string } | null> {
  if (!Bun.which("promtool")) {
    if (CI) throw new Error("promtool is missing (Debian package prometheus; scripts/deps.sh)");
    return null;
  }
  const p = Bun.spawn(["promtool", "check", "metrics"], { stdin: new Blob([text]), stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, out: out + err };
}

const line = (text: string, series: string) => Number(text.split("\n").find((l) => l.startsWith(series + " "))?.slice(series.length + 1));

function uplink(name: string, health: string, active: boolean, loss: number, latency?: number): UplinkReport["uplinks"][number] {
  return { name, kind: "ethernet", priority: 10, metered: false, active, health, link: { present: true, up: true, carrier: true, addrs: [] }, probes: { sent: 10, lost: 0, loss, latency_ms: latency }, ok_streak: 0, fail_streak: 0 };
}

test("uplinks: health, the active one, loss, latency per configured uplink; switches counted and published", async () => {
  const m = new Registry();
  const bus = new EventBus();
  const seen: AgentEvent[] = [];
  bus.subscribe((e) => void seen.push(e));
  let report: UplinkReport = { monitor: "netlink", targets: [], tracking: { interval_ms: 1000, timeout_ms: 1000, down: 3, up: 5, count: 3 }, history: [], uplinks: [uplink("eth0", "up", true, 0, 12), uplink("wwan0", "down", false, 1)] };
  let fire: ((ev: ActiveChange) => void) | undefined;
  watchUplinks(m, bus, ["eth0", "wwan0"], { report: () => report, onActiveChange: (fn) => void (fire = fn) });
  watchNat(m, { status: () => ({ rules: 2 }) });
  let text = m.render();
  expect(line(text, 'agent_uplink_up{uplink="eth0"}')).toBe(1);
  expect(line(text, 'agent_uplink_up{uplink="wwan0"}')).toBe(0);
  expect(line(text, 'agent_uplink_active{uplink="eth0"}')).toBe(1);
  expect(line(text, 'agent_uplink_latency_seconds{uplink="eth0"}')).toBe(0.012);
  expect(text).not.toContain('agent_uplink_latency_seconds{uplink="wwan0"}'); // no probe answered: no sample, not 0
  expect(line(text, "agent_nat_rules")).toBe(2);
  // The switch: eth0 fails, wwan0 takes over.
  report = { ...report, uplinks: [uplink("eth0", "down", false, 1), uplink("wwan0", "up", true, 0, 80)] };
  fire!({ from: "eth0", to: "wwan0", reason: "eth0 down (3 probe rounds failed)" });
  text = m.render();
  expect(line(text, "agent_uplink_switches_total")).toBe(1);
  expect(line(text, 'agent_uplink_active{uplink="wwan0"}')).toBe(1);
  expect(seen).toEqual([expect.objectContaining({ type: "uplink", from: "eth0", to: "wwan0", reason: "eth0 down (3 probe rounds failed)" })]);
  const r = await promtool(text);
  if (r) expect([r.code, r.out]).toEqual([0, ""]);
});

test("relay link: bytes and frames of every connection count, also one that came and went between scrapes", () => {
  type Conn = { bytesIn: number; bytesOut: number; framesIn: number; framesOut: number };
  let watcher: ((s: string, e: string | null) => void) | undefined;
  const fake = { state: "connecting", connection: null as Conn | null, connects: 0, status: () => ({ connects: fake.connects }), watch: (fn: typeof watcher) => void (watcher = fn) };
  const m = new Registry();
  registerRelayLinkMetrics(m, fake as unknown as RelayClient);
  const up = (c: Conn) => {
    fake.connection = c;
    fake.state = "up";
    fake.connects++;
    watcher!("up", null);
  };
  const down = () => {
    fake.connection = null;
    fake.state = "waiting";
    watcher!("waiting", "connection lost");
  };
  const a = { bytesIn: 100, bytesOut: 10, framesIn: 3, framesOut: 1 };
  up(a);
  a.bytesIn = 150; // it carried more before it went
  down();
  up({ bytesIn: 7, bytesOut: 5, framesIn: 1, framesOut: 1 });
  const text = m.render();
  expect(line(text, 'agent_relay_link_bytes_total{direction="in"}')).toBe(157);
  expect(line(text, 'agent_relay_link_bytes_total{direction="out"}')).toBe(15);
  expect(line(text, 'agent_relay_link_frames_total{direction="in"}')).toBe(4);
  expect(line(text, "agent_relay_link_connects_total")).toBe(2);
  expect(line(text, 'agent_relay_link_state{state="up"}')).toBe(1);
});
