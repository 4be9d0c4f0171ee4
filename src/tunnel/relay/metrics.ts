// The relay's metric families (src/metrics.ts), registered once per relay. Live counts are read
// at scrape time from the parts that keep them; events are counted where they happen. Families
// that other parts feed are registered here too, so their names, help and bounded reasons live
// in one place: heartbeats (the UDP heartbeat receiver), packet drops (packet streams), and the
// nymea listener's gauges (registered when that listener asks for them).
import type { Counter, Gauge, Histogram, Metrics } from "../../metrics.ts";
import { HANDSHAKE_BUCKETS } from "../../metrics.ts";
import { REFUSAL_CODES } from "./refusals.ts";
import { DROP_REASONS } from "../../transport/heartbeat/codec.ts";
import { DROP_REASONS as PACKET_DROPS } from "../../transport/packet.ts";

export const ROLE_LABEL = ["onsite", "master"] as const;
export const DIRECTION_LABEL = ["in", "out"] as const;

/** Why a session ended, in one word (the label of agent_relay_sessions_closed_total). */
export const SESSION_END_REASONS = ["ttl", "idle", "ended", "operator", "disconnect", "reopened", "refused", "shutdown"] as const;
export type SessionEndReason = (typeof SESSION_END_REASONS)[number];

/** Why a heartbeat datagram was dropped (issue 14 §1): fed by the heartbeat receiver. */
export const HEARTBEAT_REJECT_REASONS = DROP_REASONS;
/** Why a packet of a packet stream was dropped: fed by the packet router. */
export const PACKET_DROP_REASONS = PACKET_DROPS;

export class RelayMetrics {
  readonly sessionsOpened: Counter;
  readonly sessionsClosed: Counter;
  readonly refusals: Counter;
  readonly handshake: Histogram;
  readonly kicks: Counter;
  /** `inc()` per datagram accepted. */
  readonly heartbeatsReceived: Counter;
  /** `inc({ reason })` with one of HEARTBEAT_REJECT_REASONS. */
  readonly heartbeatsRejected: Counter;
  /** `inc({ reason })` with one of PACKET_DROP_REASONS. */
  readonly packetDrops: Counter;
  private nymeaGauges: { clients: Gauge; tunnels: Gauge } | null = null;

  constructor(readonly registry: Metrics) {
    const r = registry;
    this.sessionsOpened = r.counter("agent_relay_sessions_opened_total", "Sessions the relay opened between a master and an onsite device.");
    this.sessionsClosed = r.counter("agent_relay_sessions_closed_total", "Sessions that ended, by why.", { reason: SESSION_END_REASONS });
    this.refusals = r.counter("agent_relay_refusals_total", "Connections, HELLOs and requests the relay refused, by reason code.", { reason: REFUSAL_CODES });
    this.handshake = r.histogram("agent_relay_handshake_seconds", "TLS handshake of device connections, from TCP accept to the verified client certificate.", HANDSHAKE_BUCKETS);
    this.kicks = r.counter("agent_relay_kicks_total", "Connections closed by `agent kick`.");
    this.heartbeatsReceived = r.counter("agent_relay_heartbeats_received_total", "Heartbeat datagrams accepted.");
    this.heartbeatsRejected = r.counter("agent_relay_heartbeats_rejected_total", "Heartbeat datagrams dropped, by reason.", { reason: HEARTBEAT_REJECT_REASONS });
    this.packetDrops = r.counter("agent_relay_packet_drops_total", "Packets of packet streams the relay dropped, by reason.", { reason: PACKET_DROP_REASONS });
  }

  /** The nymea listener's gauges; registered on first use, so a relay without it shows none. */
  nymea(): { clients: Gauge; tunnels: Gauge } {
    this.nymeaGauges ??= {
      clients: this.registry.gauge("agent_relay_nymea_clients", "Clients connected to the nymea remote-proxy listener."),
      tunnels: this.registry.gauge("agent_relay_nymea_tunnels", "Tunnels paired by the nymea remote-proxy listener."),
    };
    return this.nymeaGauges;
  }
}

/** The label of a session's end, from the reason text the relay gives both sides. Pure. */
export function sessionEndReason(reason: string): SessionEndReason {
  if (reason.startsWith("TTL of")) return "ttl";
  if (reason.startsWith("idle for")) return "idle";
  if (reason.startsWith("ended by the relay operator")) return "operator";
  if (reason.startsWith("ended by")) return "ended";
  if (reason.startsWith("re-opened")) return "reopened";
  if (reason.startsWith("relay is shutting down")) return "shutdown";
  return "disconnect";
}
