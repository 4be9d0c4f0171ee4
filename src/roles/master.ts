// The master role: stays connected to the relay, lists onsite devices, opens sessions with
// local port forwards (`agent connect`), lists and ends them.
import type { Config } from "../config.ts";
import type { ControlServer } from "../control.ts";
import { RuntimeError, UsageError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { Bundle } from "../pki.ts";
import type { RelayClient } from "../transport/client.ts";
import { ErrorCode, Msg } from "../transport/messages.ts";
import { RemoteError } from "../transport/mux.ts";
import { MasterSessions, parseForward, type ForwardSpec } from "../tunnel/master-forwarder.ts";
import type { Component } from "./daemon.ts";
import { relayClientFor } from "./device.ts";

export class MasterRole implements Component {
  readonly name = "master";
  readonly client: RelayClient;
  readonly sessions: MasterSessions;

  constructor(cfg: Config, bundle: Bundle, log: Logger, control: ControlServer) {
    if (cfg.gui) log.warn(`the web GUI is not built yet: ${cfg.gui.host}:${cfg.gui.port} serves nothing; use agent devices / connect / sessions`);
    this.sessions = new MasterSessions({
      log: log.withTag("sessions"),
      relay: () => this.client.connection,
      relayState: () => `${this.client.state}${this.client.lastError ? `: ${this.client.lastError}` : ""}`,
    });
    this.client = relayClientFor(cfg, bundle, log, "master", {
      setup: (conn) => this.sessions.setup(conn),
      onUp: () => this.sessions.relayUp(),
      onDown: (why) => this.sessions.relayDown(why.message),
    });
    control.handle("devices", async () => {
      const conn = this.client.connection;
      if (!conn) throw new RemoteError(ErrorCode.OFFLINE, `not connected to the relay (${this.client.state}${this.client.lastError ? `: ${this.client.lastError}` : ""})`);
      return conn.request(Msg.DEVICES, {});
    });
    control.handle("connect", (args) => {
      const onsite = args.onsite;
      if (typeof onsite !== "string" || !onsite) throw new UsageError("connect: missing device id");
      const forwards = Array.isArray(args.forwards) ? args.forwards : [];
      if (forwards.length === 0) throw new UsageError("connect: give at least one --forward [BIND:]LPORT:HOST:PORT");
      let specs: ForwardSpec[];
      try {
        specs = forwards.map((f) => parseForward(String(f)));
      } catch (e) {
        throw new UsageError((e as Error).message);
      }
      const ttl = typeof args.ttl === "number" ? args.ttl : null;
      return this.sessions.connect(onsite, specs, ttl);
    });
    control.handle("sessions", () => this.sessions.list());
    // `agent nat add --session S ...` on the master: a timed DNAT rule on the session's onsite
    // device whose source is this master's public address as the relay sees it.
    control.handle("nat.add", async (args) => {
      // --src first: a user who gave it must learn that a master cannot choose the source,
      // not merely that --session is missing.
      if (args.src !== undefined) throw new UsageError("--src is not taken on a master: the relay sets the source to this master's public address; give --session SESSION (see `agent sessions`)");
      const session = args.session;
      if (typeof session !== "string" || !session) throw new UsageError("on a master, nat add needs --session SESSION (see `agent sessions`); the rule's source is the session's peer");
      const conn = this.client.connection;
      if (!conn) throw new RuntimeError(`not connected to the relay (${this.client.state}${this.client.lastError ? `: ${this.client.lastError}` : ""})`);
      try {
        return await conn.request(Msg.NAT_REQUEST, { session, proto: args.proto, port: args.port, to: args.to, ttl: args.ttl, iface: args.iface });
      } catch (e) {
        throw natRefusal(e);
      }
    });
    control.handle("disconnect", (args) => this.sessions.disconnect(String(args.session ?? "")));
  }

  start(): void {
    this.client.start();
  }

  status(): Record<string, unknown> {
    const list = this.sessions.list();
    return { ...this.client.status(), sessions: list.filter((s) => s.state !== "closed").length };
  }

  async close(): Promise<void> {
    this.sessions.close();
    await this.client.close();
  }
}

/**
 * What the relay or the onsite device answered to a NAT request, as the control socket's
 * error kinds: a refused request (bad field, target outside the allow list, a session this
 * master does not own) is the user's to fix (exit 2, like `nat add` on the device itself);
 * the rest (device offline, firewall failure) is exit 1. Either way the message is theirs.
 */
export function natRefusal(e: unknown): Error {
  if (!(e instanceof RemoteError)) return e as Error;
  const user: string[] = [ErrorCode.BAD_REQUEST, ErrorCode.NO_SESSION, ErrorCode.FORBIDDEN, ErrorCode.REFUSED];
  return user.includes(e.code) ? new UsageError(e.message) : new RuntimeError(e.message);
}
