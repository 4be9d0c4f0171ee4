// The onsite role: stays connected to the relay, reports its inventory, serves the streams of
// sessions towards LAN targets its allow list permits.
import { hostname, uptime } from "node:os";
import type { Config } from "../config.ts";
import type { ControlServer } from "../control.ts";
import type { Logger } from "../log.ts";
import type { Bundle } from "../pki.ts";
import type { RelayClient } from "../transport/client.ts";
import { Msg } from "../transport/messages.ts";
import { RemoteError, type Connection } from "../transport/mux.ts";
import { ErrorCode } from "../transport/messages.ts";
import { UsageError } from "../errors.ts";
import type { NatComponent } from "../nat/component.ts";
import { SessionServer } from "../tunnel/onsite-server.ts";
import { VERSION } from "../version.ts";
import type { Component } from "./daemon.ts";
import { relayClientFor } from "./device.ts";

/** The inventory goes out again this often so the relay's view of uptime and uplink stays fresh. */
const INVENTORY_REFRESH_MS = 60_000;

export class OnsiteRole implements Component {
  readonly name = "onsite";
  readonly client: RelayClient;
  readonly sessions: SessionServer;
  /** The active uplink's name; the uplink manager sets it. */
  uplink = "";
  private refresh: ReturnType<typeof setInterval> | null = null;
  /** Extra request handlers on the relay connection (NAT requests), set by other parts. */
  extraSetup: ((conn: Connection) => void)[] = [];

  constructor(private readonly cfg: Config, bundle: Bundle, log: Logger, control: ControlServer, nat?: Pick<NatComponent, "add" | "removeByOwner">) {
    this.sessions = new SessionServer({
      id: bundle.id,
      allow: () => this.cfg.allow,
      log: log.withTag("sessions"),
      extra: (conn) => this.extraSetup.forEach((f) => f(conn)),
      // A session's NAT rules live as long as the session.
      onSessionClosed: (session) => {
        if (nat) void nat.removeByOwner(session).then((n) => n && log.info(`removed ${n} NAT rule(s) of session ${session}`), (e) => log.warn(`removing NAT rules of ${session}: ${(e as Error).message}`));
      },
    });
    if (nat) {
      this.extraSetup.push((conn) =>
        conn.handle(Msg.NAT_REQUEST, async (b) => {
          const session = String(b.session ?? "");
          if (!this.sessions.sessions.has(session)) throw new RemoteError(ErrorCode.NO_SESSION, `no session ${JSON.stringify(session)} on ${bundle.id}`);
          // The source is the session's peer as the relay saw it; nothing the master said.
          let added;
          try {
            added = await nat.add({ proto: b.proto, src: b.source, port: b.port, to: b.to, ttl: b.ttl, iface: b.iface }, session);
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
          return added;
        }),
      );
    }
    this.client = relayClientFor(cfg, bundle, log, "onsite", {
      setup: (conn) => this.sessions.setup(conn),
      onStream: (s) => this.sessions.serve(s),
      onUp: (conn) => this.sendInventory(conn),
      // Without this the sessions (and their NAT rules) of a lost connection would linger
      // until their TTL: no SESSION_CLOSE can arrive for them any more.
      onDown: (why) => this.sessions.endAll(`relay connection lost: ${why.message}`),
    });
    control.handle("sessions", () => [...this.sessions.sessions.entries()].map(([session, s]) => ({ session, master: s.master, targets: s.targets, opened: new Date(s.opened).toISOString(), streams: s.streams })));
    control.handle("redial", (args) => {
      this.client.redial(typeof args.reason === "string" ? args.reason : "asked over the control socket");
      return {};
    });
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
    conn?.send(Msg.INVENTORY, {
      hostname: this.cfg.hostname ?? hostname(),
      location: this.cfg.location ?? "",
      agent: VERSION,
      uptime: Math.floor(uptime()),
      uplink: this.uplink,
    });
  }

  start(): void {
    this.client.start();
    this.refresh = setInterval(() => this.sendInventory(), INVENTORY_REFRESH_MS);
  }

  status(): Record<string, unknown> {
    return { ...this.client.status(), sessions: this.sessions.sessions.size, streams_served: this.sessions.streamsServed };
  }

  async close(): Promise<void> {
    if (this.refresh) clearInterval(this.refresh);
    await this.client.close();
  }
}
