// The onsite role: stays connected to the relay, reports its inventory, serves the streams of
// sessions towards LAN targets its allow list permits. composeOnsite builds the onsite
// daemon around it (timed DNAT rules, uplink failover, Wi-Fi and AP fallback) and serves
// the whole OnsiteApi on the control socket.
import { hostname, uptime } from "node:os";
import type { Config } from "../config.ts";
import type { ControlServer } from "../control.ts";
import type { Logger } from "../log.ts";
import type { Bundle } from "../pki.ts";
import type { RelayClient } from "../transport/client.ts";
import { Msg, type NatReply } from "../transport/messages.ts";
import { handle, send } from "../transport/typed.ts";
import { RemoteError, type Connection } from "../transport/mux.ts";
import { ErrorCode } from "../transport/messages.ts";
import { NotFoundError, UsageError } from "../errors.ts";
import type { NatComponent } from "../nat/component.ts";
import { SessionServer } from "../tunnel/onsite-server.ts";
import { VERSION } from "../version.ts";
import type { Component } from "./daemon.ts";
import { relayClientFor } from "./device.ts";
import type { NatComponentOptions } from "../nat/component.ts";
import type { OnsiteApi, NatApi, UplinkApi, WifiApi } from "./api.ts";
import type { Daemon } from "./daemon.ts";
import type { NetconnectdBackend } from "../uplink/netconnectd.ts";
import type { OnsiteTunnelHost } from "../tunnel/packet/device.ts";
import { OnsiteTunnels } from "../tunnel/packet/onsite-tunnels.ts";
import { refusingOnsiteHost } from "../tunnel/packet/refusing.ts";
import { gateOnsiteHost } from "../tunnel/packet/sweep-gate.ts";
import { OnsiteUdpServer } from "../tunnel/udp.ts";
import { watchNat, watchRelayLink, watchUplinks } from "./metrics.ts";
import { onsiteHeartbeat } from "./fleet.ts";
import { keepaliveRequestFor } from "../transport/policy.ts";
import type { HeartbeatSender, UplinkView } from "../transport/heartbeat/sender.ts";
import { onsiteTunnelHost } from "../tunnel/packet/linux.ts";

/** The inventory goes out again this often so the relay's view of uptime and uplink stays fresh. */
const INVENTORY_REFRESH_MS = 60_000;

export class OnsiteRole implements Component {
  readonly name = "onsite";
  readonly client: RelayClient;
  readonly sessions: SessionServer;
  /** Packet tunnels' ends on this device (refused unless [tunnel] enabled = true). */
  readonly tunnels: OnsiteTunnels;
  private readonly tunnelHost: OnsiteTunnelHost;
  /** UDP forwards' flows towards their targets. */
  readonly udp: OnsiteUdpServer;
  /** The active uplink's name; the uplink manager sets it. */
  uplink = "";
  private refresh: ReturnType<typeof setInterval> | null = null;
  /** Extra request handlers on the relay connection (NAT requests), set by other parts. */
  extraSetup: ((conn: Connection) => void)[] = [];

  /** Issue 14: the UDP heartbeat; composeOnsite points `heartbeatFrom` at the uplinks and Wi-Fi. */
  readonly heartbeat: HeartbeatSender;
  heartbeatFrom: { uplinks?: () => UplinkView | undefined; wifi?: () => Promise<{ ssid: string; signal: number | null } | undefined> } = {};

  /** The role's own part of the onsite API (composeOnsite adds status, NAT, uplink, Wi-Fi). */
  readonly api: Pick<OnsiteApi, "sessions" | "redial">;

  /** With `control`, serves `api` there itself (composeOnsite serves the whole API instead). */
  constructor(private readonly cfg: Config, bundle: Bundle, private readonly log: Logger, control?: ControlServer, nat?: Pick<NatComponent, "add" | "removeByOwner" | "removeOwned">, tunnelHost?: OnsiteTunnelHost) {
    this.tunnelHost = gateOnsiteHost(tunnelHost ?? refusingOnsiteHost());
    this.tunnels = new OnsiteTunnels({ id: bundle.id, host: this.tunnelHost, policy: () => this.cfg.tunnel, log: log.withTag("tunnel") });
    this.udp = new OnsiteUdpServer(log.withTag("udp"));
    this.sessions = new SessionServer({
      tunnels: this.tunnels,
      udp: this.udp,
      id: bundle.id,
      allow: () => this.cfg.allow,
      log: log.withTag("sessions"),
      extra: (conn) => this.extraSetup.forEach((f) => f(conn)),
      // A session's NAT rules live as long as the session.
      onSessionClosed: (session) => {
        if (nat) void nat.removeByOwner(session).then((n) => n && log.info(`removed ${n} NAT rule(s) of session ${session}`, { session, removed: n }), (e) => log.warn(`removing NAT rules of ${session}: ${(e as Error).message}`, { session, reason: (e as Error).message }));
      },
    });
    if (nat) {
      this.extraSetup.push((conn) =>
        handle(conn, Msg.NAT_REQUEST, async (b) => {
          const session = b.session;
          const binding = this.sessions.natBinding(session);
          if (!binding) throw new RemoteError(ErrorCode.NO_SESSION, `no session ${JSON.stringify(session)} on ${bundle.id}`);
          // A master revoking its grant early: only a rule this session owns.
          if (b.revoke !== undefined) {
            const rule = await nat.removeOwned(session, b.revoke);
            if (!rule) throw new RemoteError(ErrorCode.NO_SESSION, `no NAT rule ${JSON.stringify(b.revoke)} of session ${session} on ${bundle.id} (expired or removed)`);
            log.info(`NAT rule ${rule.id} revoked by the session's master`, { session, rule: rule.id });
            return { rule, revoked: true } as unknown as NatReply;
          }
          // The source is the session's peer as the relay saw it; nothing the master said.
          // The rule is bound to the session: its targets, its end, the caps (src/nat/session.ts).
          let added;
          try {
            added = await nat.add({ proto: b.proto, src: b.source, port: b.port, to: b.to, ttl: b.ttl, iface: b.iface }, session, binding);
          } catch (e) {
            if (e instanceof UsageError) throw new RemoteError(ErrorCode.BAD_REQUEST, e.message);
            throw e;
          }
          // The session may have ended while the rule was being applied; its removeByOwner
          // then ran before the rule existed and would leave it until its TTL.
          if (!this.sessions.sessions.has(session)) {
            await nat.removeByOwner(session);
            throw new RemoteError(ErrorCode.NO_SESSION, `session ${session} ended while its NAT rule was being added; the rule was removed`);
          }
          return added as unknown as NatReply;
        }),
      );
    }
    const hb = onsiteHeartbeat({ cfg, id: bundle.id, client: () => this.client, uplinks: () => this.heartbeatFrom.uplinks?.(), wifi: () => this.heartbeatFrom.wifi?.() ?? Promise.resolve(undefined), log: log.withTag("heartbeat") });
    this.heartbeat = hb.sender;
    this.extraSetup.push(hb.setup);
    this.client = relayClientFor(cfg, bundle, log, "onsite", {
      setup: (conn) => this.sessions.setup(conn),
      onStream: (s) => this.sessions.serve(s),
      onUp: (conn) => this.sendInventory(conn),
      // Without this the sessions (and their NAT rules) of a lost connection would linger
      // until their TTL: no SESSION_CLOSE can arrive for them any more.
      onDown: (why) => this.sessions.endAll(`relay connection lost: ${why.message}`),
      // Issue 13 §8: over a metered active uplink, ask the relay for a longer keepalive. Each
      // uplink switch redials, so the HELLO of every connection speaks for its own uplink.
      keepaliveRequest: () => keepaliveRequestFor(this.heartbeatFrom.uplinks?.()?.uplinks.find((u) => u.active)),
    });
    this.api = {
      sessions: () =>
        [...this.sessions.sessions.entries()].map(([session, s]) => {
          const tunnel = this.tunnels.view(session);
          return { session, master: s.master, targets: s.targets, opened: new Date(s.opened).toISOString(), streams: s.streams, ...(s.udp ? { udp: s.udp } : {}), ...(tunnel ? { tunnel } : {}) };
        }),
      redial: (req) => {
        this.client.redial(typeof req?.reason === "string" ? req.reason : "asked over the control socket");
        return {};
      },
    };
    control?.serve(this.api, "onsite");
  }

  /**
   * The uplink changed: dial again over the new path at once (the old connection's packets
   * would go nowhere until its keepalive gave up), and the new inventory names the uplink.
   * With no uplink left there is nothing to dial over: the backoff loop keeps trying.
   */
  uplinkChanged(name: string, reason: string): void {
    this.uplink = name;
    if (name) this.client.redial(`uplink ${name}: ${reason}`);
  }

  sendInventory(conn: Connection | null = this.client.connection): void {
    if (conn) send(conn, Msg.INVENTORY, {
      hostname: this.cfg.hostname ?? hostname(),
      location: this.cfg.location ?? "",
      agent: VERSION,
      uptime: Math.floor(uptime()),
      uplink: this.uplink,
      // Issue 15: the [[service]] tables, for the masters' catalogue (absent when there are none).
      ...(this.cfg.service.length ? { services: this.cfg.service.map(({ name, target, kind, description }) => ({ name, target, kind, ...(description !== undefined ? { description } : {}) })) } : {}),
    });
  }

  start(): void {
    // What an earlier run left behind (a kill -9 leaves devices and rules) goes before anything new is made.
    if (this.cfg.tunnel.enabled) void this.tunnelHost.sweep().then((gone) => gone.length && this.log.info(`removed leftovers of an earlier run: ${gone.join(", ")}`), (e: Error) => this.log.warn(`sweeping tunnel leftovers: ${e.message}`));
    this.client.start();
    this.heartbeat.start();
    this.refresh = setInterval(() => this.sendInventory(), INVENTORY_REFRESH_MS);
  }

  status(): Record<string, unknown> {
    return { ...this.client.status(), sessions: this.sessions.sessions.size, streams_served: this.sessions.streamsServed, tunnels: this.tunnels.size, heartbeat: this.heartbeat.status() };
  }

  async close(): Promise<void> {
    if (this.refresh) clearInterval(this.refresh);
    await this.heartbeat.close();
    await this.client.close();
    await this.tunnels.closeAll("the onsite daemon is stopping");
    this.udp.closeAll();
  }
}

export interface OnsiteOptions {
  /** The firewall backend and command runner of the NAT service (tests: fakes). */
  nat?: Pick<NatComponentOptions, "backend" | "exec">;
  /** Where tunnel ends are made. Default: the Linux host (src/tunnel/packet/linux.ts), from `[tunnel]` and the allow list. */
  tunnelHost?: OnsiteTunnelHost;
}

export interface OnsiteDaemon {
  role: OnsiteRole;
  nat: NatComponent;
  api: OnsiteApi;
}

/**
 * The onsite daemon: timed DNAT rules first (the role hands them the requests masters make
 * inside sessions and removes them when those sessions end), the uplink manager when the
 * config lists [[uplink]]s (the relay connection follows the active uplink), Wi-Fi and AP
 * fallback when [ap] is enabled (also spoken as netconnectd's NUL-terminated protocol on the
 * same socket), then the role. Serves the whole OnsiteApi on the daemon's control socket.
 */
export async function composeOnsite(daemon: Daemon, cfg: Config, bundle: Bundle, log: Logger, opts: OnsiteOptions = {}): Promise<OnsiteDaemon> {
  const control = daemon.control;
  const { createNatComponent } = await import("../nat/component.ts");
  const nat = createNatComponent({ control, config: cfg, log: log.withTag("nat"), ...opts.nat });
  daemon.add(nat);
  const natApi = natApiOf(control);
  const role = new OnsiteRole(cfg, bundle, log.withTag("onsite"), undefined, nat, opts.tunnelHost ?? onsiteTunnelHost(cfg, log.withTag("tunnel")));
  if (cfg.ownline) {
    // Seed 001's own client: ownline's protocol, answered through the same NAT calls as `agent nat add|del`.
    const { OwnlineListener } = await import("../ownline/listener.ts");
    daemon.add(new OwnlineListener({ config: cfg.ownline, tls: bundle, log: log.withTag("ownline"), nat: { add: (r, o) => nat.add(r, o), removeByOwner: (o) => nat.removeByOwner(o), list: async () => (await natApi.natList()).rules, del: (id) => natApi.natDel({ id }) } }));
  }
  let uplinkApi: UplinkApi | undefined;
  let healthy: () => string[] = () => [];
  if (cfg.uplink.length > 0) {
    const { createUplinkManager } = await import("../uplink/index.ts");
    const uplinks = createUplinkManager(cfg, log.withTag("uplink"));
    daemon.add(uplinks);
    uplinkApi = { uplinkStatus: () => uplinks.report() };
    // After a switch the relay connection is dialed again at once over the new uplink.
    uplinks.onActiveChange((ev) => role.uplinkChanged(ev.to ?? "", ev.reason));
    watchUplinks(daemon.metrics, daemon.events, cfg.uplink.map((u) => u.name), uplinks);
    healthy = () => (uplinks.status().healthy as string[]) ?? [];
    role.heartbeatFrom.uplinks = () => uplinks.report();
  }
  let wifiApi: WifiApi | undefined;
  let netconnectdBackend: NetconnectdBackend | undefined;
  if (cfg.ap.enabled) {
    const { createWifiService, answerNetconnectd, encodeNetconnectd } = await import("../uplink/index.ts");
    const wifi = await createWifiService(cfg, log.withTag("wifi"), () => healthy());
    daemon.add(wifi);
    wifiApi = {
      wifiStatus: () => wifi.report(),
      wifiList: (req) => wifi.listNetworks(req?.force === true),
      wifiConfigure: (req) => {
        if (typeof req?.ssid !== "string" || (req.psk !== undefined && typeof req.psk !== "string")) throw new UsageError("wifi.configure needs a string ssid and psk");
        if (req.priority !== undefined && typeof req.priority !== "number") throw new UsageError("priority must be a number");
        return wifi.configure(req.ssid, req.psk, { priority: req.priority });
      },
      apStart: () => wifi.startAp(),
      apStop: () => wifi.stopAp(),
    };
    control.nulProtocol(async (text) => encodeNetconnectd(await answerNetconnectd(wifi, text)));
    role.heartbeatFrom.wifi = async () => {
      const w = (await wifi.report()).wifi;
      return w.ssid ? { ssid: w.ssid, signal: null } : undefined;
    };
    netconnectdBackend = wifi;
  }
  {
    // netconnectd's clients (seed 002): with [ap] off they hear why at once, not a timeout; and
    // [ap] netconnectd_socket serves them at netconnectd's own path, without root.
    const { netconnectdAnswerer, NetconnectdSocket } = await import("../uplink/netconnectd-socket.ts");
    const answer = netconnectdAnswerer(netconnectdBackend);
    if (!netconnectdBackend) control.nulProtocol(answer);
    const path = cfg.ap.netconnectd_socket;
    if (path) daemon.add(new NetconnectdSocket({ path, mode: cfg.ap.netconnectd_socket_mode, group: cfg.ap.netconnectd_socket_group, controlPath: cfg.control, answer, log: log.withTag("netconnectd") }));
  }
  daemon.add(role);
  watchRelayLink(daemon.metrics, daemon.events, role.client);
  watchNat(daemon.metrics, nat);
  const api: OnsiteApi = { ...daemon.api(), ...natApi, ...uplinkApi, ...wifiApi, ...role.api };
  control.serve(api, "onsite");
  return { role, nat, api };
}

/**
 * The NAT service's commands as typed methods. src/nat/component.ts registers them as
 * handlers on the control socket (its request checks and the seed-001 request shape live
 * there); this takes those handlers and types their answers, so that the served API object
 * is whole. When the NAT component exposes the methods itself, this goes.
 */
function natApiOf(control: ControlServer): NatApi {
  const handler = (cmd: string) => {
    const h = control.handlerOf(cmd);
    if (!h) throw new Error(`the NAT component registered no ${cmd}`);
    return h;
  };
  const add = handler("nat.add");
  const list = handler("nat.list");
  const del = handler("nat.del");
  const flush = handler("nat.flush");
  return {
    natAdd: async (req) => (await add({ ...req })) as Awaited<ReturnType<NatApi["natAdd"]>>,
    natList: async () => (await list({})) as Awaited<ReturnType<NatApi["natList"]>>,
    natDel: async (req) => {
      try {
        return (await del({ ...req })) as Awaited<ReturnType<NatApi["natDel"]>>;
      } catch (e) {
        // One exit code for every "not found" (sessions, devices, rules): see errors.ts.
        if (e instanceof UsageError && e.message.startsWith("no active rule")) throw new NotFoundError(e.message, e.hint);
        throw e;
      }
    },
    natFlush: async () => (await flush({})) as Awaited<ReturnType<NatApi["natFlush"]>>,
  };
}
