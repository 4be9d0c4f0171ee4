// The API of each role: what its control socket serves, what `agent ...` commands call, and
// what a web GUI will call. One interface per role, method name → request → result; the
// control socket serves the object (ControlServer.serve) under each method's wire name
// (`natAdd` is "nat.add", see control.ts wireName), and ControlClient<Api> is the typed
// client. Every method takes at most one request object. Requests reach a daemon from
// outside the process, so each implementation checks the fields it reads and throws a
// UsageError naming the bad one.
import type { AddResult, RuleView } from "../nat/service.ts";
import type { GrantView } from "./master-grants.ts";
import type { DeviceInfo, ServiceDecl, ServiceKind, SessionInfo } from "../transport/messages.ts";
import type { SessionView } from "../tunnel/master-forwarder.ts";
import type { Refusal, RefusalGroup } from "../tunnel/relay/refusals.ts";
import type { OnsiteTunnelView } from "../tunnel/packet/onsite-tunnels.ts";
import type { Kicked } from "../tunnel/relay/server.ts";
import type { DeviceRow } from "../tunnel/relay/inventory.ts";
import type { DeviceEventKind } from "../tunnel/relay/inventory-store.ts";
import type { UplinkReport } from "../uplink/manager.ts";
import type { WifiReport } from "../uplink/wifi.ts";
import type { WifiNetwork } from "../uplink/wpa.ts";
import type { DaemonStatus } from "./daemon.ts";

export type { DaemonStatus };

/** What every daemon answers, whatever its role. */
export interface DaemonApi {
  status(): DaemonStatus;
}

// ---- master ----

export interface ConnectRequest {
  /** Onsite device id (see `devices`). */
  onsite: string;
  /** `[BIND:]LPORT:HOST:PORT` (TCP) or `udp:[BIND:]LPORT:HOST:PORT`; at least one unless `tunnel` is given. */
  forwards: string[];
  /** Session lifetime in ms; absent or null: the relay's default. */
  ttl?: number | null;
  /** A packet tunnel: "routed" or "bridged" (then `forwards` may be empty). */
  tunnel?: string;
  /** The address the request came from (the CLI's SSH client, if any): bridged is refused from the secondary interface. */
  requester?: string;
}

/** `agent tunnel mode SESSION routed|bridged`. */
export interface TunnelModeRequest {
  session: string;
  mode: string;
  requester?: string;
}

export interface SessionRequest {
  session: string;
}

/**
 * A timed DNAT rule on a session's onsite device. The source is this master's public address
 * as the relay sees it, so there is no `src`. Values are passed through as typed by a user
 * (`port` "8080", `ttl` "30m"); the onsite device validates them.
 */
export interface MasterNatAddRequest {
  session: string;
  port: string | number;
  to: string;
  ttl: string | number;
  proto?: "tcp" | "udp";
  iface?: string;
  /** What the grant is for, as a page shows it (e.g. the service's name); kept on the master, not sent. */
  label?: string;
}

export interface MasterApi extends DaemonApi, Partial<MasterGuiApi> {
  /**
   * The onsite devices the relay lets this master see. A relay of issue 15 or later also sends
   * each device's state, status line, last heartbeat, heard_over, first_seen, cert_expires and
   * services (the optional fields of DeviceInfo); an older relay only the report.
   */
  devices(): Promise<DeviceInfo[]>;
  connect(req: ConnectRequest): Promise<SessionView>;
  /** This master's sessions, closed ones included until they are forgotten. */
  sessions(): SessionView[];
  disconnect(req: SessionRequest): Promise<SessionView>;
  natAdd(req: MasterNatAddRequest): Promise<AddResult>;
  /** Switches a live session's tunnel between routed and bridged (the session stays). */
  tunnelMode?(req: TunnelModeRequest): Promise<SessionView>;
}

// ---- master: what the web GUI needs besides (issue 15) ----

export type { ServiceDecl, ServiceKind };

/**
 * What a GUI offers for a service, by kind (src/roles/services.ts serviceOffer):
 * - "tab" (http, https): open a forward, then `url` in a new tab;
 * - "command" (ssh): open a forward, then show `command` to copy;
 * - "url" (rdp, vnc): open a forward, then show (and link) `url`;
 * - "forward" (tcp): open a forward and show its local port.
 * In `url` and `command`, "{port}" stands for the forward's local port (SessionView
 * forwards[].port) and the host is 127.0.0.1 (the forward's bind).
 */
export interface ServiceOffer {
  action: "tab" | "command" | "url" | "forward";
  /** The `forwards` entry for `connect`: "0:TARGET" (0: any free local port). */
  forward: string;
  url: string | null;
  command: string | null;
}

/** One entry of the catalogue `services` answers. */
export interface ServiceEntry extends ServiceDecl {
  /** The onsite device the service is behind. */
  device: string;
  /** "device": advertised by the device (its [[service]]); "master": this master's own [[service]] entry. */
  source: "device" | "master";
  /** The device's location and whether it is online now (false when the relay does not list it). */
  location: string;
  online: boolean;
  offer: ServiceOffer;
}

export interface ServicesRequest {
  /** Only this device's services. */
  onsite?: string;
}

/** `agent sessions extend SESSION --ttl D`: the session then ends `ttl` ms from now. */
export interface SessionExtendRequest {
  session: string;
  /** ms, at least 1000; the relay clamps it to its maximum (7 days) and the answer says the end. */
  ttl: number;
}

/**
 * The master's part of `status` (DaemonStatus.master), for the GUI's status card: the relay
 * connection (RelayClient.status: relay, state, since, attempt, connects, last_error,
 * next_retry, rtt_ms, keepalive_ms), live sessions, and the host facts below (refreshed in the
 * background; null until first read).
 */
export interface MasterStatusPart {
  relay: string;
  state: string;
  since: string;
  last_error: string | null;
  rtt_ms: number | null;
  sessions: number;
  /** The master's own uplink: the interface and source address its route to the relay uses. */
  uplink: { iface: string; address: string; gateway: string | null } | null;
  /** `[tunnel] secondary` and what is on it. */
  secondary: SecondaryView | null;
  [extra: string]: unknown;
}

export interface SecondaryView {
  iface: string;
  /** The interface exists. */
  present: boolean;
  /** Its link is up with a carrier (operstate UP). */
  up: boolean;
  /** IPv4 addresses with prefix. */
  addresses: string[];
  /** The bridge it is enslaved to (a bridged tunnel), or null. */
  bridge: string | null;
  /** DHCP leases the master's dnsmasq handed out on it (routed mode). */
  leases: { mac: string; address: string; hostname: string; expires: string | null }[];
}

/** Issue 15's master methods (served on the control socket as "services", "sessions.extend"). */
export interface MasterGuiApi {
  /** The service catalogue: what each device advertises merged with this master's [[service]] entries. */
  services(req?: ServicesRequest): Promise<ServiceEntry[]>;
  /** Moves a live session's end; the answer is the session as the master now holds it. */
  sessionsExtend(req: SessionExtendRequest): Promise<SessionView>;
  /** The timed-access grants this master holds (`agent nat list` on a master): each device rule, live or just expired. */
  natList(): MasterNatListing;
  /** Revokes a grant early (`agent nat del ID` on a master): the device removes the rule and cuts its connections. */
  natDel(req: { id: string }): Promise<GrantView>;
}

/** `agent nat list` on a master: the grants (src/roles/master-grants.ts), in NatListing's shape. */
export interface MasterNatListing {
  backend: "master";
  now: string;
  rules: GrantView[];
}

// ---- onsite ----

/** A timed DNAT rule asked for on the onsite device itself (`agent nat add --src`). */
export interface LocalNatAddRequest {
  src: string;
  port: string | number;
  to: string;
  ttl: string | number;
  proto?: "tcp" | "udp";
  iface?: string;
}

export interface NatListing {
  backend: string;
  /** The daemon's wall time when it answered, for reading `expires`. */
  now: string;
  rules: RuleView[];
}

/** The NAT service's part of the onsite API (src/nat). */
export interface NatApi {
  natAdd(req: LocalNatAddRequest): Promise<AddResult>;
  natList(): NatListing | Promise<NatListing>;
  natDel(req: { id: string }): Promise<RuleView>;
  natFlush(): Promise<{ removed: number }>;
}

/** Present when the config lists [[uplink]]s. */
export interface UplinkApi {
  uplinkStatus(): UplinkReport;
}

/** Present when the config has [ap] enabled = true. */
export interface WifiApi {
  wifiStatus(): Promise<WifiReport>;
  wifiList(req?: { force?: boolean }): Promise<WifiNetwork[]>;
  /** Answers what was done, as a sentence for a person. */
  wifiConfigure(req: { ssid: string; psk?: string; priority?: number }): Promise<string>;
  apStart(): Promise<string>;
  apStop(): Promise<string>;
}

/** A session the onsite device serves. */
export interface OnsiteSessionView {
  session: string;
  master: string;
  targets: string[];
  opened: string;
  streams: number;
  /** UDP forwards' targets, if any. */
  udp?: string[];
  /** The session's tunnel end on this device, if any. */
  tunnel?: OnsiteTunnelView;
}

export interface OnsiteApi extends DaemonApi, NatApi, Partial<UplinkApi>, Partial<WifiApi> {
  sessions(): OnsiteSessionView[];
  /** Drops the relay connection and dials again now (e.g. after a route change). */
  redial(req?: { reason?: string }): Record<string, never>;
}

// ---- relay ----

export interface RelayApi extends DaemonApi, Partial<RelayFleetApi> {
  /** Every device the relay has seen (stored across restarts); the relay's own rows carry state, heartbeat and certificate (DeviceRow). */
  devices(): DeviceInfo[] | DeviceRow[] | Promise<DeviceRow[]>;
  /** In cluster mode (issue 16) the whole fleet's, each row naming its relay. */
  sessions(): SessionInfo[] | Promise<SessionInfo[]>;
  /** The last 100 refused connections. */
  refusals(): Refusal[];
  // Admin actions (issue 14 §4). The relay role always serves them; optional only so the
  // API fakes of the CLI tests need not carry every method.
  /** `agent kick ID [--reason]`: closes the live connection of a device or master. */
  kick?(req: KickRequest): Kicked[];
  /** `agent sessions end SESSION`: ends any master's session. */
  sessionsEnd?(req: SessionEndRequest): SessionInfo;
}

export interface KickRequest {
  id: string;
  reason?: string | null;
}

export interface SessionEndRequest {
  session: string;
  reason?: string | null;
}

/** Issue 14: the relay's inventory and refusal commands (src/roles/fleet-api.ts). */
export interface RelayFleetApi {
  /** Forgets an offline device and its history. */
  devicesForget(req: { id: string }): { forgotten: string };
  /** A device's connects and disconnects, oldest first. */
  devicesHistory(req: { id: string }): { at: string; kind: DeviceEventKind; address: string; reason: string }[];
  /** Refused and unprovisioned peers, grouped by presented id and address; `since`: wall ms. */
  refusalsReport(req?: { since?: number }): { now: string; groups: RefusalGroup[] };
}

/** Any daemon: what a command that works against several roles may call. */
export type AnyApi = MasterApi | OnsiteApi | RelayApi;
