// Issue 14 §6 and §7 with real processes on 127.0.0.1: every role's `metrics` listener scraped
// with curl and checked by `promtool check metrics`, values that move when traffic flows and when
// a stranger is refused; and `agent monitor --json` streaming the relay's and a device's events
// as they happen.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Socket, Subprocess, TCPSocketListener } from "bun";
import { BUN, MAIN } from "./helpers/cli.ts";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { monitorJson, type MonitorReader } from "./helpers/monitor.ts";
import { waitFor } from "./helpers/wait.ts";

const CI = process.env.CI === "true";

async function run(argv: string[], stdin?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn(argv, { stdin: stdin === undefined ? "ignore" : new Blob([stdin]), stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, stdout, stderr };
}

/** One sample's value from an exposition, by its full series text (`name{a="b"}`); 0 if absent. */
function value(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  return line ? Number(line.slice(series.length + 1)) : NaN;
}

describe("metrics and the live monitor", () => {
  let fleet: Fleet;
  let relay: Daemon;
  let onsite: Daemon;
  let master: Daemon;
  let echo: TCPSocketListener<undefined>;
  const port: Record<string, number> = {};
  const monitors: Subprocess[] = [];

  beforeAll(async () => {
    fleet = await Fleet.create();
    echo = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data: (s: Socket<undefined>, d) => void s.write(d) } });
    const cfg = join(fleet.dir, "metrics.toml");
    writeFileSync(cfg, 'metrics = "127.0.0.1:0"\n');
    relay = await fleet.startRelay("relay-1", ["--config", cfg]);
    onsite = await fleet.startOnsite("site-1", ["--allow", "127.0.0.1/32", "--config", cfg]);
    master = await fleet.startMaster("tech-1", ["--config", cfg]);
    await Promise.all([onsite, master].map((d) => fleet.waitConnected(d)));
    for (const d of [relay, onsite, master]) port[d.id] = ((await fleet.status(d)).metrics as { port: number }).port;
  }, 60_000);

  afterAll(async () => {
    for (const m of monitors) m.kill();
    echo?.stop(true);
    await fleet?.close();
  });

  async function scrape(d: Daemon): Promise<string> {
    const r = await run(["curl", "-sS", "--fail", `http://127.0.0.1:${port[d.id]}/metrics`]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    return r.stdout;
  }

  test("each role's /metrics passes promtool check metrics", async () => {
    if (!Bun.which("promtool")) {
      if (CI) throw new Error("promtool is missing (Debian package prometheus; scripts/deps.sh)");
      return console.warn("skipped: promtool not installed");
    }
    for (const d of [relay, onsite, master]) {
      const text = await scrape(d);
      const r = await run(["promtool", "check", "metrics"], text);
      expect(`${d.id}: ${r.stdout}${r.stderr}`).toBe(`${d.id}: `);
      expect(r.code).toBe(0);
    }
  });

  test("the relay's values move when traffic flows and a stranger is refused", async () => {
    const before = await scrape(relay);
    expect(value(before, 'agent_relay_connections{role="onsite"}')).toBe(1);
    expect(value(before, 'agent_relay_connections{role="master"}')).toBe(1);
    expect(value(before, "agent_relay_handshake_seconds_count")).toBeGreaterThanOrEqual(2);
    expect(before).toContain('agent_relay_heartbeats_rejected_total{reason="replay"} 0');
    expect(before).toContain('agent_build_info{role="relay",');
    expect(before).not.toMatch(/site-1|tech-1/); // no per-device labels

    const s = await fleet.connect(master, "site-1", [`127.0.0.1:${echo.port}`]);
    const payload = "x".repeat(256 * 1024);
    let got = 0;
    const sock = await Bun.connect({ hostname: "127.0.0.1", port: s.ports[0]!, socket: { data: (_s, d) => void (got += d.length) } });
    sock.write(payload);
    await waitFor(() => got >= payload.length, 10_000, "the echo of 256 KiB");
    // A TLS client with no certificate: refused, counted by its reason.
    await run(["openssl", "s_client", "-connect", `127.0.0.1:${fleet.relayPort}`, "-tls1_3"], "");

    const after = await waitFor(async () => {
      const t = await scrape(relay);
      return value(t, 'agent_relay_refusals_total{reason="no_certificate"}') >= 1 ? t : undefined;
    }, 10_000, "the refusal counted");
    expect(value(after, "agent_relay_sessions")).toBe(1);
    expect(value(after, "agent_relay_streams")).toBe(1);
    expect(value(after, "agent_relay_sessions_opened_total")).toBe(value(before, "agent_relay_sessions_opened_total") + 1);
    for (const [dir, role] of [["in", "master"], ["out", "onsite"], ["in", "onsite"], ["out", "master"]]) {
      const series = `agent_relay_bytes_total{direction="${dir}",role="${role}"}`;
      expect(value(after, series) - value(before, series)).toBeGreaterThanOrEqual(payload.length);
      const frames = `agent_relay_frames_total{direction="${dir}",role="${role}"}`;
      expect(value(after, frames)).toBeGreaterThan(value(before, frames));
    }
    sock.end();
    await fleet.cli(relay, ["sessions", "end", s.session]);
    const ended = await waitFor(async () => {
      const t = await scrape(relay);
      return value(t, 'agent_relay_sessions_closed_total{reason="operator"}') >= 1 ? t : undefined;
    }, 10_000, "the session's end counted");
    expect(value(ended, "agent_relay_sessions")).toBe(0);

    // The devices' side: the relay link, and the master's session count back to 0.
    const ons = await scrape(onsite);
    expect(value(ons, "agent_relay_link_up")).toBe(1);
    expect(value(ons, 'agent_relay_link_bytes_total{direction="out"}')).toBeGreaterThanOrEqual(payload.length);
    expect(value(ons, "agent_nat_rules")).toBe(0);
    expect(await scrape(master)).toContain("agent_master_sessions 0\n");
  }, 60_000);

  /** `agent monitor --json` against a daemon, its lines collected as they come. */
  function monitor(d: Daemon): MonitorReader {
    const m = monitorJson(d.sock);
    monitors.push(m.proc);
    return m;
  }

  test("agent monitor --json streams the relay's and the device's events as they happen", async () => {
    const onRelay = monitor(relay);
    const onSite = monitor(onsite);
    // Subscribed once the daemon counts a stream client: probe with an event we cause.
    await waitFor(async () => {
      await run(["openssl", "s_client", "-connect", `127.0.0.1:${fleet.relayPort}`, "-tls1_3"], "");
      return onRelay.events.some((e) => e.type === "refusal");
    }, 15_000, "the monitor sees a refusal");
    const refusal = onRelay.events.find((e) => e.type === "refusal")!;
    expect(refusal).toMatchObject({ code: "no_certificate", address: "127.0.0.1" });
    expect(Date.parse(refusal.time as string)).not.toBeNaN();

    const s = await fleet.connect(master, "site-1", [`127.0.0.1:${echo.port}`]);
    await waitFor(() => onRelay.events.some((e) => e.type === "session_open" && e.session === s.session), 10_000, () => `session_open in ${onRelay.text()}`);
    await fleet.cli(relay, ["kick", "site-1", "--reason", "monitor test"]);
    const want = (type: string, f: (e: Record<string, unknown>) => boolean) => waitFor(() => onRelay.events.find((e) => e.type === type && f(e)), 15_000, () => `${type} in ${onRelay.text()}`);
    await want("kick", (e) => e.id === "site-1" && String(e.reason).includes("monitor test"));
    await want("disconnect", (e) => e.id === "site-1" && e.role === "onsite");
    await want("session_close", (e) => e.session === s.session && e.why === "disconnect");
    await want("connect", (e) => e.id === "site-1");
    // In order: the kick before the disconnect before the reconnect.
    const order = onRelay.events.filter((e) => e.id === "site-1").map((e) => e.type);
    expect(order.indexOf("kick")).toBeLessThan(order.indexOf("disconnect"));
    expect(order.lastIndexOf("connect")).toBeGreaterThan(order.indexOf("disconnect"));
    // The device saw its own side of it.
    await waitFor(() => onSite.events.some((e) => e.type === "relay_down" && String(e.reason).includes("monitor test")), 15_000, () => `relay_down in ${onSite.text()}`);
    await waitFor(() => onSite.events.some((e) => e.type === "relay_up"), 15_000, () => `relay_up in ${onSite.text()}`);
    await fleet.cli(relay, ["sessions", "end", s.session]).catch(() => {});
  }, 60_000);

  test("agent monitor without --json prints one line per event; a bad --type is refused", async () => {
    const bad = await run([BUN, MAIN, "monitor", "--type", "connect,nope", "--control", relay.sock]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--type: unknown event type "nope"');
    const p = Bun.spawn([BUN, MAIN, "monitor", "--type", "refusal", "--control", relay.sock], { stdout: "pipe", stderr: "pipe" });
    monitors.push(p);
    let out = "";
    void (async () => {
      for await (const c of p.stdout) out += new TextDecoder().decode(c);
    })();
    await waitFor(async () => {
      await run(["openssl", "s_client", "-connect", `127.0.0.1:${fleet.relayPort}`, "-tls1_3"], "");
      return out.includes("refusal");
    }, 15_000, "a refusal line");
    expect(out).toMatch(/^\d\d:\d\d:\d\dZ refusal +address=127\.0\.0\.1 .*code=no_certificate/m);
    expect(out).not.toContain("connect ");
  }, 30_000);
});
