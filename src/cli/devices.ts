// `agent devices [--all|--offline] [--json]`, `agent devices forget ID`, `agent devices history ID`
// and `agent refusals [--since D] [--json]`: the relay's inventory (kept across restarts) and
// its refusals. `agent devices` also answers on a master (what the relay lets it see).
import { formatDuration, parseDuration } from "../duration.ts";
import { UsageError } from "../errors.ts";
import type { MasterApi, RelayApi, RelayFleetApi } from "../roles/api.ts";
import { formatTable } from "../table.ts";
import type { DeviceInfo } from "../transport/messages.ts";
import type { DeviceRow } from "../tunnel/relay/inventory.ts";
import type { RefusalGroup } from "../tunnel/relay/refusals.ts";
import { defineAgentCommand, flag, str, type ParsedArgs } from "./args.ts";
import { configArgs, configFromArgs, daemonClient } from "./common.ts";
import { DEVICE_COLUMNS, ago, deviceCells, formatDevices } from "./sessions.ts";

const json = { type: "boolean", description: "print JSON" } as const;
/** Certificates that expire within this are called out under the table. */
export const CERT_WARN_MS = 30 * 86_400_000;

export type DeviceFilter = "default" | "all" | "offline";

const isRow = (d: DeviceInfo): d is DeviceRow => typeof (d as Partial<DeviceRow>).state === "string";

/**
 * Which devices a listing shows. Default: every device heard since the relay started, and any
 * stored one whose heartbeats say something (alive, lost); --all: every device ever seen;
 * --offline: those whose tunnel is not up. Pure.
 */
export function filterDevices<T extends DeviceInfo>(list: T[], filter: DeviceFilter, startedAt: number | null): T[] {
  if (filter === "offline") return list.filter((d) => !d.online);
  if (filter === "all" || startedAt === null) return list;
  return list.filter((d) => !isRow(d) || d.online || d.state === "alive" || d.state === "lost" || Date.parse(d.last_seen) >= startedAt);
}

/** Certificates that expire within `within` ms of `now` (expired ones too), soonest first. Pure. */
export function expiringSoon(list: DeviceInfo[], now: number, within = CERT_WARN_MS): DeviceRow[] {
  return list
    .filter(isRow)
    .filter((d) => d.cert_expires !== null && Date.parse(d.cert_expires) - now <= within)
    .sort((a, b) => Date.parse(a.cert_expires!) - Date.parse(b.cert_expires!));
}

/** The relay's table: state and heartbeat beside what DEVICES says, then status lines and expiring certificates. */
export function formatFleet(list: DeviceInfo[], now = Date.now(), asker: "master" | "relay" = "relay", filter: DeviceFilter = "default"): string {
  if (list.length === 0 || !list.every(isRow)) {
    if (list.length === 0 && filter !== "default") return filter === "offline" ? "no offline devices\n" : "no onsite devices have ever connected to this relay\n";
    return formatDevices(list, now, asker);
  }
  const rows = list as DeviceRow[];
  let out = formatTable(
    ["ID", "STATE", ...DEVICE_COLUMNS, "HEARTBEAT", "AGENT"],
    rows.map((d) => [
      d.id,
      d.state === "alive" ? "tunnel down" : d.state,
      ...deviceCells(d, now),
      d.heartbeat ? `${ago(d.heartbeat.at, now)} via ${d.heartbeat.via || "default"}` : "-",
      d.agent || "-",
    ]),
  );
  const notes = rows.filter((d) => d.state === "alive" || d.state === "lost" || d.duplicate);
  for (const d of notes) {
    out += `${d.id}: ${d.status}\n`;
    const hb = d.heartbeat?.payload;
    if (hb?.ul.length) out += `  uplinks: ${hb.ul.map((u) => `${u.n} ${u.s}${u.l !== null ? ` loss ${u.l}%` : ""}${u.r !== null ? ` ${u.r}ms` : ""}`).join(", ")}\n`;
    if (hb?.cell) out += `  cellular: signal ${hb.cell.sig ?? "?"}%, ${hb.cell.op || "?"} ${hb.cell.tech}\n`;
    if (hb?.wifi) out += `  wifi: ${hb.wifi.ssid}${hb.wifi.sig !== null ? ` (${hb.wifi.sig})` : ""}\n`;
  }
  for (const d of expiringSoon(rows, now)) {
    const left = Date.parse(d.cert_expires!) - now;
    out += left <= 0 ? `certificate of ${d.id} (serial ${d.serial}) EXPIRED on ${d.cert_expires}\n` : `certificate of ${d.id} (serial ${d.serial}) expires ${d.cert_expires} (in ${formatDuration(Math.ceil(left / 86_400_000) * 86_400_000)}): issue a new bundle (\`agent pki issue --force\`)\n`;
  }
  return out;
}

function filterOf(args: ParsedArgs): DeviceFilter {
  const all = flag(args, "all");
  const offline = flag(args, "offline");
  if (all && offline) throw new UsageError("--all and --offline exclude each other", "--all lists every device ever seen; --offline only those whose tunnel is down");
  return all ? "all" : offline ? "offline" : "default";
}

function idArg(args: ParsedArgs, cmd: string): string {
  const id = str(args, "id");
  if (!id) throw new UsageError(`\`agent devices ${cmd}\` needs a device id`, "see `agent devices --all`");
  return id;
}

const forgetCommand = defineAgentCommand({
  meta: { name: "forget", description: "Forget an offline device and its history (relay)" },
  runsOn: ["relay"],
  args: { ...configArgs, id: { type: "positional", valueHint: "id", description: "onsite device id" }, json },
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const id = idArg(args, "forget");
    const r = await daemonClient<RelayFleetApi>(ctx, cfg.control).call("devicesForget", { id });
    ctx.io.out(flag(args, "json") ? JSON.stringify(r) + "\n" : `forgot ${r.forgotten} and its history\n`);
    return 0;
  },
});

const historyCommand = defineAgentCommand({
  meta: { name: "history", description: "A device's connects and disconnects with their reasons, oldest first (relay; the last 100 are kept)" },
  runsOn: ["relay"],
  args: { ...configArgs, id: { type: "positional", valueHint: "id", description: "onsite device id" }, json },
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const id = idArg(args, "history");
    const h = await daemonClient<RelayFleetApi>(ctx, cfg.control).call("devicesHistory", { id });
    if (flag(args, "json")) ctx.io.out(JSON.stringify(h, null, 2) + "\n");
    else if (h.length === 0) ctx.io.out(`no history of ${id} yet\n`);
    else ctx.io.out(formatTable(["TIME", "EVENT", "ADDRESS", "REASON"], h.map((e) => [e.at, e.kind, e.address, e.reason])));
    return 0;
  },
});

export const devicesCommand = defineAgentCommand({
  meta: {
    name: "devices",
    description:
      "List the onsite devices (master, or on the relay itself, which keeps every device ever seen across restarts). STATE: online, tunnel down (heartbeats arrive), lost (three heartbeats missed), offline; CONNECTED: how long its relay link is up; HOST UP: the device's own uptime; AGENT: its agent version. Certificates that expire within 30 days are named under the table",
  },
  runsOn: ["master", "relay"],
  args: {
    ...configArgs,
    all: { type: "boolean", description: "every device ever seen, also from before the relay's last restart" },
    offline: { type: "boolean", description: "only devices whose tunnel is down" },
    json,
  },
  subCommands: { forget: forgetCommand, history: historyCommand },
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const filter = filterOf(args);
    const client = daemonClient<MasterApi | RelayApi>(ctx, cfg.control, { timeoutMs: 20_000 });
    const all = await client.call("devices");
    // The daemon's start time only matters for the relay's own rows (the default filter), and
    // its role for what an empty list means.
    const needStatus = (filter === "default" && all.some(isRow)) || all.length === 0;
    const st = needStatus ? await client.call("status") : null;
    const list = filterDevices(all, filter, st ? Date.parse(st.started) : null);
    if (flag(args, "json")) ctx.io.out(JSON.stringify(list, null, 2) + "\n");
    else ctx.io.out(formatFleet(list, Date.now(), list.length === 0 && st?.role === "master" ? "master" : "relay", filter));
    return 0;
  },
});

// ---- refusals ------------------------------------------------------------------------------

/** `--since 1h` (a duration back from now) or an ISO time: wall ms. */
export function parseSince(v: string, now = Date.now()): number {
  if (/^\d{4}-\d{2}-\d{2}/.test(v)) {
    const t = Date.parse(v);
    if (Number.isNaN(t)) throw new UsageError(`--since: ${JSON.stringify(v)} is not a time`, "give a duration back from now (30m, 24h, 7d) or an ISO time (2026-12-01T08:00:00Z)");
    return t;
  }
  try {
    return now - parseDuration(v);
  } catch (e) {
    throw new UsageError(`--since: ${(e as Error).message}`, "give a duration back from now (30m, 24h, 7d) or an ISO time (2026-12-01T08:00:00Z)");
  }
}

export function formatRefusals(groups: RefusalGroup[], now = Date.now()): string {
  if (groups.length === 0) return "no refusals\n";
  return formatTable(
    ["PRESENTED", "ADDRESS", "COUNT", "REASONS", "FIRST", "LAST", "LAST REASON"],
    groups.map((g) => [
      g.presented ?? "(no certificate)",
      g.address,
      String(g.count),
      Object.entries(g.codes).map(([c, n]) => `${c} ${n}`).join(", "),
      ago(g.first, now),
      ago(g.last, now),
      g.reason.length > 100 ? `${g.reason.slice(0, 100)}…` : g.reason,
    ]),
  );
}

export const refusalsCommand = defineAgentCommand({
  meta: { name: "refusals", description: "Refused and unprovisioned devices (relay): presented id, address, how often and why, grouped by id and address; kept across restarts in STATE_DIR/refusals.log" },
  runsOn: ["relay"],
  args: { ...configArgs, since: { type: "string", valueHint: "duration|time", description: "only refusals since then: 1h, 7d, or an ISO time" }, json },
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const since = str(args, "since");
    const req = since !== undefined ? { since: parseSince(since) } : {};
    const r = await daemonClient<RelayFleetApi>(ctx, cfg.control).call("refusalsReport", req);
    ctx.io.out(flag(args, "json") ? JSON.stringify(r.groups, null, 2) + "\n" : formatRefusals(r.groups, Date.parse(r.now)));
    return 0;
  },
});
