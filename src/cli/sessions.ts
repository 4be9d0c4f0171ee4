// `agent devices`, `agent connect`, `agent sessions`, `agent disconnect`: clients of the
// daemon's control socket (master; `devices` and `sessions` also on the relay).
import { formatDuration, parseDuration } from "../duration.ts";
import { UsageError } from "../errors.ts";
import type { MasterApi, OnsiteSessionView, RelayApi, AnyApi } from "../roles/api.ts";
import { formatTable } from "../table.ts";
import type { DeviceInfo, SessionInfo } from "../transport/messages.ts";
import type { SessionView } from "../tunnel/master-forwarder.ts";
import { parseForward } from "../tunnel/master-forwarder.ts";
import { isUdpForward, parseUdpForward } from "../tunnel/udp.ts";
import { MAX_SESSION_TTL } from "../transport/messages.ts";
import { defineAgentCommand, flag, str, strs } from "./args.ts";
import { reachFlags } from "./format.ts";
import { configArgs, configFromArgs, daemonClient } from "./common.ts";
import { formatTunnel, parseModeArg, sshPeer } from "./tunnel.ts";

const json = { type: "boolean", description: "print JSON" } as const;

export function ago(iso: string, now = Date.now()): string {
  const ms = now - Date.parse(iso);
  return ms < 1000 ? "just now" : `${formatDuration(Math.floor(ms / 1000) * 1000)} ago`;
}

function left(iso: string | null, now = Date.now()): string {
  if (!iso) return "no TTL";
  const ms = Date.parse(iso) - now;
  return ms <= 0 ? "expired" : `${formatDuration(Math.ceil(ms / 1000) * 1000)} left`;
}

/**
 * The devices table. CONNECTED is how long the device's link to the relay has been up; HOST UP
 * is the device's own uptime (since it booted), as its inventory reports it. AGENT is the
 * agent version it runs (the JSON field `agent`).
 */
export function formatDevices(list: DeviceInfo[], now = Date.now(), asker: "master" | "relay" = "relay"): string {
  if (list.length === 0) {
    // A master sees what the relay's access policy lets it see, offline devices included.
    return asker === "master"
      ? "no onsite devices to show: none has connected to the relay since it started, or the relay's access policy lets this master see none\n"
      : "no onsite devices have connected to this relay since it started\n";
  }
  return formatTable(
    ["ID", "STATE", ...DEVICE_COLUMNS, "AGENT"],
    list.map((d) => [d.id, d.online ? "online" : "offline", ...deviceCells(d, now), d.agent || "-"]),
  );
}

/** The columns every devices table has between STATE and its own last ones (the relay's adds HEARTBEAT). */
export const DEVICE_COLUMNS: readonly string[] = ["LOCATION", "HOSTNAME", "ADDRESS", "UPLINK", "CONNECTED", "HOST UP", "LAST SEEN"];

/** A device's cells under DEVICE_COLUMNS. */
export function deviceCells(d: DeviceInfo, now: number): string[] {
  return [
    d.location || "-",
    d.hostname || "-",
    d.address,
    d.uplink || "-",
    d.online && d.connected_since ? formatDuration(Math.max(0, Math.floor((now - Date.parse(d.connected_since)) / 1000)) * 1000) : "-",
    d.online ? formatDuration(d.uptime * 1000) : "-",
    d.online ? "now" : ago(d.last_seen, now),
  ];
}

export const devicesCommand = defineAgentCommand({
  meta: {
    name: "devices",
    description: "List the onsite devices the relay knows (master, or on the relay itself). CONNECTED: how long its relay link is up; HOST UP: the device's own uptime; AGENT: its agent version",
  },
  runsOn: ["master", "relay"],
  args: { ...configArgs, json },
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const client = daemonClient<MasterApi | RelayApi>(ctx, cfg.control, { timeoutMs: 20_000 });
    const list = await client.call("devices");
    if (flag(args, "json")) ctx.io.out(JSON.stringify(list, null, 2) + "\n");
    else ctx.io.out(formatDevices(list, Date.now(), list.length === 0 ? ((await client.call("status")).role === "master" ? "master" : "relay") : "relay"));
    return 0;
  },
});

export const connectCommand = defineAgentCommand({
  meta: { name: "connect", description: "Open a session to an onsite device with local port forwards and/or a packet tunnel (master)" },
  args: {
    ...configArgs,
    id: { type: "positional", valueHint: "id", description: "onsite device id (see `agent devices`)" },
    forward: { type: "string", valueHint: "[udp:][bind:]lport:host:port", description: "listen on BIND:LPORT (default bind 127.0.0.1; port 0: any) and carry each connection to HOST:PORT behind the device (repeatable); udp: carries datagrams, each client's flow forgotten after 60 s without traffic" },
    tunnel: { type: "string", valueHint: "routed|bridged", description: "a packet tunnel: routed (TUN, routes to the device's LAN) or bridged (TAP in the LAN's bridge)" },
    ttl: { type: "string", valueHint: "duration", description: "end the session after this long, e.g. 30m" },
    json,
  },
  repeatable: ["forward"],
  runsOn: ["master"],
  async exec(args, ctx) {
    const forwards = strs(args, "forward");
    const tunnelText = str(args, "tunnel");
    const tunnel = tunnelText === undefined ? undefined : parseModeArg(tunnelText, "--tunnel");
    if (forwards.length === 0 && !tunnel) throw new UsageError("agent connect needs at least one --forward [BIND:]LPORT:HOST:PORT or --tunnel routed|bridged", "e.g. agent connect site-1 --forward 8080:192.168.1.50:80, or agent connect site-1 --tunnel routed");
    for (const f of forwards) {
      try {
        if (isUdpForward(f)) parseUdpForward(f);
        else parseForward(f);
      } catch (e) {
        throw new UsageError((e as Error).message);
      }
    }
    let ttl: number | undefined;
    const ttlText = str(args, "ttl");
    if (ttlText !== undefined) {
      try {
        ttl = parseDuration(ttlText);
      } catch (e) {
        throw new UsageError(`--ttl: ${(e as Error).message}`);
      }
      if (ttl < 1000) throw new UsageError("--ttl: at least 1s");
      if (ttl > MAX_SESSION_TTL) throw new UsageError(`--ttl: at most ${formatDuration(MAX_SESSION_TTL)}, got ${ttlText}`, "a session lives at most that long; open a new one when it ends");
    }
    const cfg = await configFromArgs(args);
    const requester = tunnel ? sshPeer(process.env) : undefined;
    const s = await daemonClient<MasterApi>(ctx, cfg.control, { timeoutMs: 30_000 }).call("connect", { onsite: str(args, "id") ?? "", forwards, ttl, ...(tunnel ? { tunnel } : {}), ...(requester ? { requester } : {}) });
    if (flag(args, "json")) {
      ctx.io.out(JSON.stringify(s, null, 2) + "\n");
      return 0;
    }
    const lines = [`session ${s.session} to ${s.onsite} (${left(s.expires)})`];
    for (const f of s.forwards) lines.push(`  ${f.proto === "udp" ? "udp " : ""}${f.bind}:${f.port} → ${f.target}`);
    if (s.tunnel) lines.push(...formatTunnel(s.session, s.tunnel));
    // What the device found when it tried each target (refused, no answer): said at once.
    for (const w of s.warnings ?? []) lines.push(`warning: ${w}`);
    lines.push(`end it with: agent disconnect ${s.session}${reachFlags(args)}`);
    ctx.io.out(lines.join("\n") + "\n");
    return 0;
  },
});

/** The three shapes of `sessions`: a master's (with forwards), the relay's, an onsite device's. */
export function formatSessions(list: SessionView[] | SessionInfo[] | OnsiteSessionView[], now = Date.now()): string {
  if (list.length === 0) return "no sessions\n";
  const first = list[0]!;
  if ("forwards" in first) {
    const rows = (list as SessionView[]).map((s) => [
      s.session,
      s.onsite,
      s.state,
      [...s.forwards.map((f) => `${f.proto === "udp" ? "udp:" : ""}${f.bind}:${f.port}→${f.target}`), ...(s.tunnel ? [`${s.tunnel.mode} tunnel`] : [])].join(" ") || "-",
      s.state === "closed" ? "-" : left(s.expires, now),
      // A forward whose connections failed says how often, and the last reason, as ssh -L would.
      [s.reason, ...s.forwards.filter((f) => f.errors).map((f) => `${f.target}: ${f.errors} failed, last: ${f.last_error}`)].join("; "),
    ]);
    const table = formatTable(["SESSION", "ONSITE", "STATE", "FORWARDS", "TTL", "NOTE"], rows);
    const tunnels = (list as SessionView[]).filter((s) => s.tunnel && s.state !== "closed").flatMap((s) => formatTunnel(s.session, s.tunnel!));
    return tunnels.length ? `${table}\n${tunnels.join("\n")}\n` : table;
  }
  if ("onsite" in first) {
    const carried = (s: SessionInfo) => {
      const drops = s.tunnel?.relay ? s.tunnel.relay.to_onsite.drops.queue_full + s.tunnel.relay.to_master.drops.queue_full : 0;
      const tunnel = s.tunnel ? [`${s.tunnel.mode} tunnel${drops ? ` (${drops} dropped at the relay)` : ""}`] : [];
      return [...s.targets, ...(s.udp ?? []).map((t) => `udp:${t}`), ...tunnel].join(" ") || "-";
    };
    const rows = (list as SessionInfo[]).map((s) => [s.session, s.master, s.onsite, carried(s), ago(s.opened, now), left(s.expires, now)]);
    return formatTable(["SESSION", "MASTER", "ONSITE", "TARGETS", "OPENED", "TTL"], rows);
  }
  const rows = (list as OnsiteSessionView[]).map((s) => [s.session, s.master, [...s.targets, ...(s.udp ?? []).map((t) => `udp:${t}`), ...(s.tunnel ? [`${s.tunnel.mode} tunnel${s.tunnel.onsite ? ` on ${s.tunnel.onsite.iface}` : ""}`] : [])].join(" ") || "-", String(s.streams)]);
  return formatTable(["SESSION", "MASTER", "TARGETS", "STREAMS"], rows);
}

export const sessionsCommand = defineAgentCommand({
  meta: { name: "sessions", description: "List sessions (master: its own with forwards; relay: all; onsite: those it serves)" },
  args: { ...configArgs, json },
  runsOn: ["master", "relay", "onsite"],
  // `agent sessions end SESSION` (relay): src/cli/kick.ts
  subCommands: { end: () => import("./kick.ts").then((m) => m.sessionsEndCommand), extend: () => import("./services.ts").then((m) => m.sessionsExtendCommand) },
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const list = await daemonClient<AnyApi>(ctx, cfg.control).call("sessions");
    ctx.io.out(flag(args, "json") ? JSON.stringify(list, null, 2) + "\n" : formatSessions(list));
    return 0;
  },
});

export const disconnectCommand = defineAgentCommand({
  meta: { name: "disconnect", description: "End a session and close its forwards (master)" },
  args: { ...configArgs, session: { type: "positional", valueHint: "session", description: "session id (see `agent sessions`)" }, json },
  runsOn: ["master"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const s = await daemonClient<MasterApi>(ctx, cfg.control).call("disconnect", { session: str(args, "session") ?? "" });
    ctx.io.out(flag(args, "json") ? JSON.stringify(s, null, 2) + "\n" : `session ${s.session} to ${s.onsite} closed\n`);
    return 0;
  },
});
