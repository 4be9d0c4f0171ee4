// The master role: stays connected to the relay, lists onsite devices, opens sessions with
// local port forwards (`agent connect`), lists and ends them. Its API (MasterApi) is what the
// control socket serves and the web GUI will call.
import type { Config } from "../config.ts";
import type { ControlServer } from "../control.ts";
import { NotFoundError, RuntimeError, UsageError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { Bundle } from "../pki.ts";
import type { RelayClient } from "../transport/client.ts";
import { ErrorCode, Msg, type DeviceInfo } from "../transport/messages.ts";
import { RemoteError } from "../transport/mux.ts";
import { request } from "../transport/typed.ts";
import { MasterSessions, parseForward, type ForwardSpec } from "../tunnel/master-forwarder.ts";
import type { Component } from "./daemon.ts";
import { relayClientFor } from "./device.ts";
import type { AddResult } from "../nat/service.ts";
import type { MasterApi } from "./api.ts";
import { MasterGrants } from "./master-grants.ts";
import type { Daemon } from "./daemon.ts";
import { parseTunnelMode, type MasterTunnelHost } from "../tunnel/packet/device.ts";
import { gateMasterHost } from "../tunnel/packet/sweep-gate.ts";
import { isUdpForward, parseUdpForward, type UdpForwardSpec } from "../tunnel/udp.ts";
import { masterTunnelHost } from "../tunnel/packet/linux.ts";

/** What composeMaster may be handed instead of the defaults (tests: a memory tunnel host). */
export interface MasterDeps {
  /** Where tunnel ends are made. Default: the Linux host (src/tunnel/packet/linux.ts), from `[tunnel]`. */
  tunnelHost?: MasterTunnelHost;
  /** Where session_open/close/mode/extend go (issue 15; composeMaster: the daemon's bus). */
  events?: Events;
  /** The host facts of `status` (tests: one with a fake Exec). */
  hostFacts?: MasterHostFacts;
}

/** The mode a user or a client asked for, or a usage error naming it (pure). */
export function tunnelModeOf(v: unknown, what: string): "routed" | "bridged" {
  const mode = parseTunnelMode(v);
  if (!mode) throw new UsageError(`${what}: expected routed or bridged, got ${typeof v === "string" ? JSON.stringify(v.slice(0, 40)) : String(v)}`, "routed: a TUN device and routes to the device's LAN; bridged: a TAP device in the LAN's bridge");
  return mode;
}
import { watchRelayLink } from "./metrics.ts";
import { guiComponent } from "../gui/attach.ts";
import { masterDigest } from "../gui/digest.ts";
import { noEvents, type Events } from "../events.ts";
import { mergeCatalogue } from "./services.ts";
import { MasterHostFacts, refreshingHost } from "./master-host.ts";
import { MAX_SESSION_TTL } from "../transport/messages.ts";
import type { SessionView } from "../tunnel/master-forwarder.ts";

/** How often the status card's host facts (uplink, secondary) are read again. */
const HOST_FACTS_MS = 15_000;

export class MasterRole implements Component {
  readonly name = "master";
  readonly client: RelayClient;
  readonly sessions: MasterSessions;
  private readonly tunnelHost: MasterTunnelHost;
  /** The role's own part of its API (the daemon shell adds `status`; see composeMaster). */
  readonly api: Omit<MasterApi, "status">;

  private readonly log: Logger;
  private readonly events: Events;
  readonly hostFacts: MasterHostFacts;
  /** The timed-access grants of this master's sessions (issue 15). */
  readonly grants = new MasterGrants();
  private hostTimer: ReturnType<typeof setInterval> | null = null;

  /** With `control`, serves `api` there itself (composeMaster serves the whole API instead). */

  constructor(cfg: Config, bundle: Bundle, log: Logger, control?: ControlServer, deps: MasterDeps = {}) {
    this.log = log;
    this.events = deps.events ?? noEvents;
    this.hostFacts = deps.hostFacts ?? new MasterHostFacts({ relayHost: cfg.relay?.host, secondary: cfg.tunnel.secondary, stateDir: cfg.state_dir });
    this.tunnelHost = refreshingHost(gateMasterHost(deps.tunnelHost ?? masterTunnelHost(cfg, log.withTag("tunnel"))), this.hostFacts);
    this.sessions = new MasterSessions({
      log: log.withTag("sessions"),
      relay: () => this.client.connection,
      relayState: () => this.relayState(),
      tunnelHost: this.tunnelHost,
      tunnelPool: cfg.tunnel.pool,
      onPhase: (v, from, to) => this.phaseEvent(v, from, to),
    });
    this.client = relayClientFor(cfg, bundle, log, "master", {
      setup: (conn) => this.sessions.setup(conn),
      onUp: () => {
        this.sessions.relayUp();
        void this.hostFacts.refresh();
      },
      onDown: (why) => this.sessions.relayDown(why.message),
    });
    this.api = {
      devices: async () => {
        const conn = this.client.connection;
        if (!conn) throw new RemoteError(ErrorCode.OFFLINE, `not connected to the relay (${this.relayState()})`);
        return request(conn, Msg.DEVICES, {});
      },
      connect: (req) => {
        const onsite = req?.onsite;
        if (typeof onsite !== "string" || !onsite) throw new UsageError("connect: missing device id");
        const forwards = Array.isArray(req.forwards) ? req.forwards : [];
        const tunnel = req.tunnel === undefined || req.tunnel === null ? undefined : tunnelModeOf(req.tunnel, "--tunnel");
        if (forwards.length === 0 && !tunnel) throw new UsageError("connect: give at least one --forward [BIND:]LPORT:HOST:PORT, or --tunnel routed|bridged");
        let specs: ForwardSpec[];
        let udp: UdpForwardSpec[];
        try {
          specs = forwards.filter((f) => !isUdpForward(String(f))).map((f) => parseForward(String(f)));
          udp = forwards.filter((f) => isUdpForward(String(f))).map((f) => parseUdpForward(String(f)));
        } catch (e) {
          throw new UsageError((e as Error).message);
        }
        const ttl = typeof req.ttl === "number" ? req.ttl : null;
        const requester = typeof req.requester === "string" && req.requester ? req.requester : undefined;
        return this.sessions.connect(onsite, specs, ttl, { ...(tunnel ? { tunnel } : {}), ...(requester ? { requester } : {}), ...(udp.length ? { udp } : {}) }).catch((e: unknown) => {
          throw userError(notFound(e));
        });
      },
      tunnelMode: async (req) => {
        const mode = tunnelModeOf(req?.mode, "tunnel mode");
        const requester = typeof req?.requester === "string" && req.requester ? req.requester : undefined;
        try {
          const v = await this.sessions.switchMode(String(req?.session ?? ""), mode, requester);
          this.events.publish("session_mode", { session: v.session, onsite: v.onsite, mode: v.tunnel?.mode ?? mode });
          return v;
        } catch (e) {
          throw userError(notFound(e));
        }
      },
      // Issue 15: the service catalogue and extending a session's TTL (src/roles/api.ts MasterGuiApi).
      services: async (req) => {
        const onsite = req?.onsite;
        if (onsite !== undefined && onsite !== null && (typeof onsite !== "string" || onsite.length === 0 || onsite.length > 63)) throw new UsageError("services: onsite: expected a device id (1-63 characters)");
        const devices = await this.api.devices();
        return mergeCatalogue(devices, cfg.service, typeof onsite === "string" ? onsite : undefined);
      },
      sessionsExtend: async (req) => {
        const session = req?.session;
        if (typeof session !== "string" || !session) throw new UsageError("sessions extend: missing session id", "`agent sessions` lists this master's sessions");
        const ttl = req.ttl;
        if (typeof ttl !== "number" || !Number.isInteger(ttl) || ttl < 1000) throw new UsageError("sessions extend: ttl: expected milliseconds, at least 1000 (--ttl 30m)");
        if (ttl > MAX_SESSION_TTL) throw new UsageError(`sessions extend: ttl: at most 7 days (${MAX_SESSION_TTL} ms)`, "a session lives at most that long from now");
        try {
          const v = await this.sessions.extend(session, ttl);
          this.events.publish("session_extend", { session: v.session, onsite: v.onsite, expires: v.expires });
          return v;
        } catch (e) {
          throw userError(notFound(e));
        }
      },
      sessions: () => this.sessions.list(),
      disconnect: async (req) => {
        try {
          return await this.sessions.disconnect(String(req?.session ?? ""));
        } catch (e) {
          throw notFound(e);
        }
      },
      // `agent nat add --session S ...` on the master: a timed DNAT rule on the session's
      // onsite device whose source is this master's public address as the relay sees it.
      natAdd: async (req) => {
        // --src first: a user who gave it must learn that a master cannot choose the source,
        // not merely that --session is missing.
        if ((req as { src?: unknown })?.src !== undefined) throw new UsageError("--src is not taken on a master: the relay sets the source to this master's public address; give --session SESSION (see `agent sessions`)");
        const session = req?.session;
        if (typeof session !== "string" || !session) throw new UsageError("on a master, nat add needs --session SESSION (see `agent sessions`); the rule's source is the session's peer");
        const conn = this.client.connection;
        if (!conn) throw new RuntimeError(`not connected to the relay (${this.relayState()})`);
        try {
          // The onsite device answers with its NAT service's AddResult (NatReply is an open object).
          const res = (await request(conn, Msg.NAT_REQUEST, { session, proto: req.proto, port: req.port, to: req.to, ttl: req.ttl, iface: req.iface })) as unknown as AddResult;
          const onsite = this.sessions.list().find((s) => s.session === session)?.onsite ?? "";
          this.grants.add(onsite, res, typeof req.label === "string" ? req.label.slice(0, 80) : undefined);
          if (res?.rule) this.events.publish("nat_grant", { id: res.rule.id, onsite, session, port: res.rule.port, to: res.rule.to, src: res.rule.src, expires: res.rule.expires });
          return res;
        } catch (e) {
          throw natRefusal(e);
        }
      },
      // Issue 15: the grants above, for every browser and `agent nat list|del` (src/roles/master-grants.ts).
      natList: () => {
        this.grants.keepSessions(new Set(this.sessions.list().filter((s) => s.state !== "closed").map((s) => s.session)));
        return { backend: "master", now: new Date().toISOString(), rules: this.grants.list(Date.now()) };
      },
      natDel: async (req) => {
        const id = req?.id;
        if (typeof id !== "string" || !id) throw new UsageError("nat del: missing rule id", "`agent nat list` shows this master's grants");
        const g = this.grants.get(id);
        if (!g) throw new NotFoundError(`no grant ${JSON.stringify(id)} on this master`, "`agent nat list` shows this master's grants");
        const conn = this.client.connection;
        if (!conn) throw new RuntimeError(`not connected to the relay (${this.relayState()})`);
        const view = this.grants.list(Date.now()).find((x) => x.id === id) ?? { ...g.rule, onsite: g.onsite, label: g.label, state: "expired" as const };
        try {
          await request(conn, Msg.NAT_REQUEST, { session: g.rule.owner, revoke: id });
        } catch (e) {
          // Gone on the device already (expired, its session ended): gone here too.
          if (!(e instanceof RemoteError && e.code === ErrorCode.NO_SESSION)) throw natRefusal(e);
        }
        this.grants.remove(id);
        this.events.publish("nat_revoke", { id, onsite: g.onsite, session: g.rule.owner });
        return view;
      },
    };
    control?.serve(this.api, "master");
  }

  /** The master's own session events (issue 15): opened (or resumed) and closed; an interruption shows as relay_down. */
  private phaseEvent(v: SessionView, from: string, to: string): void {
    const base = { session: v.session, onsite: v.onsite, state: v.state, expires: v.expires };
    if (to === "closed") this.events.publish("session_close", { ...base, reason: v.reason });
    else if (to === "active") this.events.publish("session_open", { ...base, resumed: from !== "opening", forwards: v.forwards.map((f) => `${f.bind}:${f.port} → ${f.target}`), ...(v.tunnel ? { tunnel: v.tunnel.mode } : {}) });
  }

  private relayState(): string {
    return `${this.client.state}${this.client.lastError ? `: ${this.client.lastError}` : ""}`;
  }

  start(): void {
    // What a killed master left (its bridge holding the secondary port, rules, dnsmasq) goes first.
    // A master without CAP_NET_ADMIN (port forwards only) cannot list rules: that is no news.
    void this.tunnelHost.sweep().then(
      (gone) => gone.length && this.log.info(`removed leftovers of an earlier run: ${gone.join(", ")}`),
      (e: Error) => this.log.debug(`sweeping tunnel leftovers: ${e.message}`),
    );
    this.client.start();
    void this.hostFacts.refresh();
    this.hostTimer = setInterval(() => void this.hostFacts.refresh(), HOST_FACTS_MS);
    this.hostTimer.unref?.();
  }

  status(): Record<string, unknown> {
    const list = this.sessions.list();
    // Issue 15: the status card's host facts (src/roles/api.ts MasterStatusPart).
    return { ...this.client.status(), sessions: list.filter((s) => s.state !== "closed").length, uplink: this.hostFacts.uplink, secondary: this.hostFacts.secondary };
  }

  async close(): Promise<void> {
    if (this.hostTimer) clearInterval(this.hostTimer);
    this.hostTimer = null;
    this.sessions.close();
    await this.sessions.tunnelsClosed();
    await this.client.close();
  }
}

/** The master daemon: its role on the daemon shell, and the whole MasterApi on the control socket. */
export function composeMaster(daemon: Daemon, cfg: Config, bundle: Bundle, log: Logger, deps: MasterDeps = {}): { role: MasterRole; api: MasterApi } {
  const role = new MasterRole(cfg, bundle, log.withTag("master"), undefined, { events: daemon.events, ...deps });
  daemon.add(role);
  watchRelayLink(daemon.metrics, daemon.events, role.client);
  daemon.metrics.collect("agent_master_sessions", "This master's sessions that are not closed.", "gauge", () => role.sessions.list().filter((s) => s.state !== "closed").length);
  const api: MasterApi = { ...daemon.api(), ...role.api };
  daemon.control.serve(api, "master");
  // The web GUI (issue 15): one more client of the same API object.
  const gui = guiComponent(cfg, {
    role: "master",
    id: bundle.id,
    api,
    events: daemon.events,
    bundle,
    digest: async () => masterDigest(role.sessions.list() as unknown as Record<string, unknown>[], role.client.connection ? ((await api.devices().catch(() => null)) as unknown as Record<string, unknown>[] | null) : null) + `|grants:${role.grants.digest()}`,
    // Bridged is refused from the secondary interface: the browser's address is the requester, whatever the page says.
    shape: (method, req, peer) => (method === "connect" || method === "tunnelMode" ? { ...req, requester: peer } : req),
  }, log);
  if (gui) daemon.add(gui);
  return { role, api };
}

/**
 * What the relay or the onsite device answered to a NAT request, as the control socket's
 * error kinds: a refused request (bad field, target outside the allow list, a session this
 * master does not own) is the user's to fix (exit 2, like `nat add` on the device itself);
 * the rest (device offline, firewall failure) is exit 1. Either way the message is theirs.
 */
export function natRefusal(e: unknown): Error {
  if (!(e instanceof RemoteError)) return e as Error;
  // A session the relay or the device does not know is "not found" (exit 4), as for disconnect.
  if (e.code === ErrorCode.NO_SESSION) return notFound(e) as Error;
  const user: string[] = [ErrorCode.BAD_REQUEST, ErrorCode.FORBIDDEN, ErrorCode.REFUSED];
  if (!user.includes(e.code)) return new RuntimeError(e.message);
  // The onsite device words its refusals for its own operator ("add it with --allow"); on a
  // master that advice is wrong: the allow list is the onsite device's, not this daemon's.
  const allow = /;?\s*add it with --allow or the config key allow\.?$/;
  if (allow.test(e.message)) {
    return new UsageError(e.message.replace(allow, ""), "the onsite device's allow list decides which targets it forwards to; whoever runs that device can extend it (its `allow` config key); --allow on a master does nothing");
  }
  return new UsageError(e.message);
}

/** A session or device the relay does not know: one exit code (4) for every "not found". */
function notFound(e: unknown): unknown {
  if (e instanceof RemoteError && (e.code === ErrorCode.NO_SESSION || e.code === ErrorCode.UNKNOWN_DEVICE)) {
    const hint = e.code === ErrorCode.NO_SESSION ? "`agent sessions` lists this master's sessions" : "`agent devices` lists the devices this master may reach";
    return new NotFoundError(e.message, e.message.includes("`agent ") ? undefined : hint);
  }
  return e;
}

/**
 * A refusal that is the user's to fix (bridging from the secondary interface, a mode the device
 * does not allow, a session without a tunnel) as a usage error (exit 2); the rest unchanged.
 */
function userError(e: unknown): unknown {
  if (e instanceof RemoteError && (e.code === ErrorCode.BAD_REQUEST || e.code === ErrorCode.REFUSED) && /tunnel|bridg/i.test(e.message)) return new UsageError(e.message);
  return e;
}
