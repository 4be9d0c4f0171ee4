// The `metrics = "HOST:PORT"` listener of any role (src/metrics.ts serves the scrape), and the
// families of the onsite device and the master that are read from their parts at scrape time.
import { formatHostPort, type HostPort } from "../netaddr.ts";
import type { Logger } from "../log.ts";
import { serveMetrics, type Metrics, type MetricsServer, type Registry } from "../metrics.ts";
import { listenError } from "../transport/listen-error.ts";
import type { RelayClient } from "../transport/client.ts";
import type { Component } from "./daemon.ts";
import type { Events } from "../events.ts";
import type { ActiveChange, UplinkReport } from "../uplink/manager.ts";

export class MetricsComponent implements Component {
  readonly name = "metrics";
  private server: MetricsServer | null = null;

  constructor(private readonly at: HostPort, private readonly registry: Registry, private readonly log: Logger) {}

  start(): void {
    try {
      this.server = serveMetrics(this.at.host, this.at.port, this.registry);
    } catch (e) {
      throw listenError(e, this.at.host, this.at.port);
    }
    this.log.info(`metrics on http://${formatHostPort({ host: this.at.host, port: this.server.port })}/metrics`);
  }

  status(): Record<string, unknown> {
    return { listen: this.server ? formatHostPort({ host: this.at.host, port: this.server.port }) : null, port: this.server?.port ?? null };
  }

  close(): void {
    this.server?.stop();
    this.server = null;
  }
}

const LINK_STATES = ["connecting", "up", "waiting", "closed"] as const;

/** The relay link of an onsite device or a master: state, connects, bytes and frames. */
export function registerRelayLinkMetrics(m: Metrics, client: RelayClient): void {
  m.collect("agent_relay_link_up", "1 while the connection to the relay is up.", "gauge", () => (client.connection ? 1 : 0));
  m.collect("agent_relay_link_state", "The relay link's state (1 for the current one).", "gauge", () => LINK_STATES.map((state) => ({ labels: { state }, value: client.state === state ? 1 : 0 })), { state: LINK_STATES });
  m.collect("agent_relay_link_connects_total", "Times the relay connection came up.", "counter", () => Number((client.status() as { connects?: number }).connects ?? 0));
  // Totals over every connection this client made: the live one is read at scrape time, each
  // one that went down was added when it left "up" (every connection passes through "up").
  const done = { bytesIn: 0, bytesOut: 0, framesIn: 0, framesOut: 0 };
  let current: NonNullable<RelayClient["connection"]> | null = null;
  client.watch((state) => {
    if (state === "up") current = client.connection;
    else if (current) {
      done.bytesIn += current.bytesIn;
      done.bytesOut += current.bytesOut;
      done.framesIn += current.framesIn;
      done.framesOut += current.framesOut;
      current = null;
    }
  });
  const totals = () => ({
    bytes: [{ labels: { direction: "in" }, value: done.bytesIn + (current?.bytesIn ?? 0) }, { labels: { direction: "out" }, value: done.bytesOut + (current?.bytesOut ?? 0) }],
    frames: [{ labels: { direction: "in" }, value: done.framesIn + (current?.framesIn ?? 0) }, { labels: { direction: "out" }, value: done.framesOut + (current?.framesOut ?? 0) }],
  });
  m.collect("agent_relay_link_bytes_total", "Bytes over the relay connection, by direction (scrape-time totals).", "counter", () => totals().bytes, { direction: ["in", "out"] });
  m.collect("agent_relay_link_frames_total", "Frames over the relay connection, by direction (scrape-time totals).", "counter", () => totals().frames, { direction: ["in", "out"] });
}

/** An onsite device's or master's relay link: its metrics, and relay_up / relay_down events. */
export function watchRelayLink(m: Metrics, events: Events, client: RelayClient): void {
  registerRelayLinkMetrics(m, client);
  client.watch((state, lastError) => {
    if (state === "up") events.publish("relay_up", { relay: (client.status() as { relay?: string }).relay ?? null });
    else if (state === "waiting") events.publish("relay_down", { reason: lastError });
  });
}

/** The onsite device's uplinks: health, activity, loss and latency per configured uplink; switches. */
export function watchUplinks(m: Metrics, events: Events, names: readonly string[], uplinks: { report(): UplinkReport; onActiveChange(fn: (ev: ActiveChange) => void): void }): void {
  const labels = { uplink: names };
  const per = (f: (u: UplinkReport["uplinks"][number]) => number | undefined) => () =>
    uplinks
      .report()
      .uplinks.map((u) => ({ labels: { uplink: u.name }, value: f(u) }))
      .filter((s): s is { labels: { uplink: string }; value: number } => s.value !== undefined);
  m.collect("agent_uplink_up", "1 while the uplink is healthy (its probes answer).", "gauge", per((u) => (u.health === "up" ? 1 : 0)), labels);
  m.collect("agent_uplink_active", "1 for the uplink that carries the traffic.", "gauge", per((u) => (u.active ? 1 : 0)), labels);
  m.collect("agent_uplink_loss_ratio", "Probe loss over the recent window (0-1).", "gauge", per((u) => u.probes.loss), labels);
  m.collect("agent_uplink_latency_seconds", "Probe round-trip time.", "gauge", per((u) => (u.probes.latency_ms === undefined ? undefined : u.probes.latency_ms / 1000)), labels);
  const switches = m.counter("agent_uplink_switches_total", "Times the active uplink changed.");
  uplinks.onActiveChange((ev) => {
    switches.inc();
    events.publish("uplink", { from: ev.from ?? null, to: ev.to ?? null, reason: ev.reason });
  });
}

/** The onsite device's timed DNAT rules. */
export function watchNat(m: Metrics, nat: { status(): Record<string, unknown> }): void {
  m.collect("agent_nat_rules", "Timed DNAT rules installed.", "gauge", () => Number(nat.status().rules ?? 0));
}
