// `agent status [--json]`: asks the running daemon over its control socket. On a master or an
// onsite device it shows the relay link (connected since / last error / next retry), the
// active uplink and the session count, and exits 3 (EXIT_NOT_CONNECTED) when the daemon runs
// but its link to the relay is not up, as `tailscale status` does; scripts can test that.
import { EXIT_NOT_CONNECTED } from "../errors.ts";
import type { DaemonApi, DaemonStatus } from "../roles/api.ts";
import { formatPairs } from "../table.ts";
import { defineAgentCommand, flag } from "./args.ts";
import { configArgs, configFromArgs, daemonClient } from "./common.ts";
import { formatDuration as formatDurationForUser } from "../duration.ts";

/** The relay link as a role's status part reports it (RelayClient.status() and the session count). */
export interface LinkStatus {
  relay: string;
  state: "connecting" | "up" | "waiting" | "closed";
  since: string;
  attempt?: number;
  connects?: number;
  last_error: string | null;
  next_retry: string | null;
  rtt_ms?: number | null;
  sessions?: number;
}

/** The relay link of a master or onsite daemon's status; undefined for the relay itself. */
export function linkOf(s: DaemonStatus): LinkStatus | undefined {
  if (s.role !== "master" && s.role !== "onsite") return undefined;
  const part = s[s.role] as Partial<LinkStatus> | undefined;
  if (!part || typeof part !== "object" || typeof part.state !== "string") return undefined;
  return part as LinkStatus;
}

function ago(iso: string, now: number): string {
  const ms = Math.max(0, now - Date.parse(iso));
  return ms < 1000 ? "just now" : `${formatDurationForUser(Math.floor(ms / 1000) * 1000)} ago`;
}

function inTime(iso: string, now: number): string {
  const ms = Date.parse(iso) - now;
  return ms <= 0 ? "now" : `in ${formatDurationForUser(Math.ceil(ms / 1000) * 1000)}`;
}

/** The part of the relay's status that the nymea listeners report (src/tunnel/nymea/service.ts). */
interface NymeaStatusPart {
  tcp?: string | null;
  ws?: string | null;
  clients?: number;
  authenticated?: number;
  tunnels?: number;
  total_tunnels?: number;
}

/** One line: where nymea clients connect and how many there are, as `agent status` shows it. */
export function nymeaRow(n: NymeaStatusPart): string {
  const where = [n.tcp ? `tcp ${n.tcp}` : null, n.ws ? `ws ${n.ws}` : null].filter(Boolean).join(", ") || "no listener up";
  return `${where}; ${n.clients ?? 0} clients (${n.authenticated ?? 0} waiting), ${n.tunnels ?? 0} tunnels (${n.total_tunnels ?? 0} since start)`;
}

/** The status as aligned pairs, and whether the relay link is up (true for the relay). */
export function formatStatus(s: DaemonStatus, now = Date.now()): { text: string; connected: boolean } {
  const rows: [string, string][] = [
    ["role", s.role],
    ["id", s.id],
    ["version", `${s.version} (commit ${s.commit}, ${s.target})`],
    ["pid", String(s.pid)],
    ["uptime", `${formatDurationForUser(s.uptime_s * 1000)} (since ${s.started})`],
  ];
  const link = linkOf(s);
  let connected = true;
  if (link) {
    connected = link.state === "up";
    if (connected) {
      rows.push(["relay", `${link.relay}: connected since ${link.since} (${ago(link.since, now)})${typeof link.rtt_ms === "number" ? `, rtt ${link.rtt_ms}ms` : ""}`]);
    } else {
      const what = link.state === "connecting" ? "connecting" : link.state === "waiting" ? "not connected, waiting to dial again" : "not connected (closed)";
      rows.push(["relay", `${link.relay}: ${what} (since ${link.since}, ${ago(link.since, now)})`]);
    }
    if (link.last_error) rows.push(["last error", link.last_error]);
    if (!connected && link.next_retry) rows.push(["next retry", `${inTime(link.next_retry, now)} (${link.next_retry})`]);
    if (typeof link.sessions === "number") rows.push(["sessions", String(link.sessions)]);
  }
  if (s.role === "onsite") {
    const up = s.uplink as { active?: string | null; healthy?: string[] } | undefined;
    if (up && typeof up === "object") rows.push(["uplink", `${up.active ?? "none"} (healthy: ${up.healthy?.join(", ") || "none"}; see \`agent uplink status\`)`]);
    else rows.push(["uplink", "default route (no [[uplink]] configured)"]);
  }
  if (s.role === "relay") {
    const r = s.relay as { listen?: string | null } | undefined;
    if (r && typeof r === "object" && r.listen) rows.push(["listening", r.listen]);
    const n = (r as { nymea?: NymeaStatusPart } | undefined)?.nymea;
    if (n && typeof n === "object") rows.push(["nymea", nymeaRow(n)]);
  }
  rows.push(["control", s.control], ["state dir", s.state_dir]);
  return { text: formatPairs(rows), connected };
}

export const statusCommand = defineAgentCommand({
  meta: {
    name: "status",
    description: "Show the running daemon's role, id, version, uptime, pid and (master, onsite) its relay link, uplink and sessions; exit 3 when the daemon runs but is not connected to the relay",
  },
  runsOn: ["relay", "onsite", "master"],
  args: { ...configArgs, json: { type: "boolean", description: "print JSON" } },
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const s = await daemonClient<DaemonApi>(ctx, cfg.control).call("status");
    const { text, connected } = formatStatus(s);
    ctx.io.out(flag(args, "json") ? JSON.stringify(s, null, 2) + "\n" : text);
    return connected ? 0 : EXIT_NOT_CONNECTED;
  },
});
