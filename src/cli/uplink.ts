// `agent uplink status [--json]`: the running onsite daemon's uplinks (state, probes, loss,
// latency), which one is active and since when, and the switch history.
import { controlRequest } from "../control.ts";
import { formatDuration } from "../duration.ts";
import { RuntimeError } from "../errors.ts";
import { formatTable } from "../table.ts";
import type { UplinkReport } from "../uplink/manager.ts";
import { defineAgentCommand, flag } from "./args.ts";
import { configArgs, configFromArgs } from "./common.ts";

const since = (iso: string | undefined, now: number) => (iso ? `${formatDuration(Math.max(0, Math.round((now - Date.parse(iso)) / 1000) * 1000)) || "0s"} ago` : "-");

export function formatUplinkReport(r: UplinkReport, now = Date.now()): string {
  const rows = r.uplinks.map((u) => [
    (u.active ? "* " : "  ") + u.name,
    u.kind + (u.metered ? " (metered)" : ""),
    String(u.priority),
    u.health,
    since(u.since, now),
    u.link.present ? `${u.link.carrier ? "carrier" : "no carrier"}${u.link.addrs.length ? " " + u.link.addrs.join(",") : ", no address"}` : "absent",
    u.probes.last ? `${u.probes.last.ok ? "ok" : "FAIL"}${u.probes.last.rtt_ms !== undefined ? ` ${u.probes.last.rtt_ms}ms` : ` (${u.probes.last.targets.map((t) => t.error).filter(Boolean).join(", ")})`}` : "-",
    `${Math.round(u.probes.loss * 100)}% of ${u.probes.sent}`,
    u.probes.latency_ms !== undefined ? `${u.probes.latency_ms}ms` : "-",
  ]);
  let text = formatTable(["UPLINK", "KIND", "PRIO", "HEALTH", "SINCE", "LINK", "LAST PROBE", "LOSS", "LATENCY"], rows);
  text += `\nactive: ${r.active ?? "none"}${r.active_since ? ` since ${r.active_since} (${since(r.active_since, now)})` : ""}\n`;
  text += `targets: ${r.targets.join(", ")}; every ${r.tracking.interval_ms}ms, timeout ${r.tracking.timeout_ms}ms, down ${r.tracking.down}, up ${r.tracking.up}; link monitor: ${r.monitor}\n`;
  for (const u of r.uplinks) {
    if (!u.modem) continue;
    const m = u.modem as Record<string, unknown>;
    text += `modem of ${u.name}: ${[m.state, m.registration, m.operator, m.technology, m.signal !== undefined ? `signal ${m.signal}%` : undefined, m.error].filter(Boolean).join(", ")}\n`;
  }
  if (r.history.length) {
    text += "\nswitches:\n" + formatTable(["AT", "FROM", "TO", "REASON"], r.history.map((h) => [h.at, h.from ?? "-", h.to ?? "-", h.reason]));
  }
  return text;
}

const status = defineAgentCommand({
  meta: { name: "status", description: "Uplinks of the running onsite daemon: health, probes, loss, latency, the active one and switch history" },
  args: { ...configArgs, json: { type: "boolean", description: "print JSON" } },
  async exec(args) {
    const cfg = await configFromArgs(args);
    let r: UplinkReport;
    try {
      r = (await controlRequest(cfg.control, "uplink.status")) as UplinkReport;
    } catch (e) {
      if ((e as Error).message.includes('unknown command "uplink.status"')) {
        throw new RuntimeError("this daemon runs no uplink manager", "it starts on an onsite daemon whose config has [[uplink]] entries", { cause: e });
      }
      throw e;
    }
    process.stdout.write(flag(args, "json") ? JSON.stringify(r, null, 2) + "\n" : formatUplinkReport(r));
    return 0;
  },
});

export const uplinkCommand = defineAgentCommand({
  meta: { name: "uplink", description: "Uplink failover (onsite): status" },
  subCommands: { status },
});
