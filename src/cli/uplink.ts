// `agent uplink status [--json]`: the running onsite daemon's uplinks (state, probes, loss,
// latency), which one is active and since when, and the switch history.
import { isUnknownCommand, wireName, type MethodOf, type RequestOf, type ResultOf } from "../control.ts";
import { formatDuration } from "../duration.ts";
import { RuntimeError, UsageError } from "../errors.ts";
import type { UplinkApi, WifiApi } from "../roles/api.ts";
import { formatTable } from "../table.ts";
import type { UplinkReport } from "../uplink/manager.ts";
import type { WifiNetwork } from "../uplink/wpa.ts";
import { defineAgentCommand, flag, str, type CliContext } from "./args.ts";
import { configArgs, configFromArgs, daemonClient, readSecretArg } from "./common.ts";

const since = (iso: string | undefined, now: number) => (iso ? `${formatDuration(Math.max(0, Math.round((now - Date.parse(iso)) / 1000) * 1000)) || "0s"} ago` : "-");

export function formatUplinkReport(r: UplinkReport, now = Date.now()): string {
  const rows = r.uplinks.map((u) => [
    (u.active ? "* " : "  ") + u.name,
    u.kind + (u.metered ? " (metered)" : ""),
    String(u.priority),
    u.health,
    since(u.since, now),
    // A configured interface the host does not have is said so, not shown as a dead link.
    u.link.present ? `${u.link.carrier ? "carrier" : "no carrier"}${u.link.addrs.length ? " " + u.link.addrs.join(",") : ", no address"}` : u.problem === "missing interface" ? "MISSING (no such interface)" : "absent",
    u.probes.last ? `${u.probes.last.ok ? "ok" : "FAIL"}${u.probes.last.rtt_ms !== undefined ? ` ${u.probes.last.rtt_ms}ms` : ` (${u.probes.last.targets.map((t) => t.error).filter(Boolean).join(", ")})`}` : "-",
    `${Math.round(u.probes.loss * 100)}% of ${u.probes.sent}`,
    u.probes.latency_ms !== undefined ? `${u.probes.latency_ms}ms` : "-",
  ]);
  // PRIO as in [[uplink]] priority: the lowest healthy one is used.
  let text = formatTable(["UPLINK", "KIND", "PRIO", "HEALTH", "SINCE", "LINK", "LAST PROBE", "LOSS", "LATENCY"], rows);
  text += `\nactive: ${r.active ?? "none"}${r.active_since ? ` since ${r.active_since} (${since(r.active_since, now)})` : ""}\n`;
  text += `targets: ${r.targets.join(", ")}; every ${formatDuration(r.tracking.interval_ms)}, timeout ${formatDuration(r.tracking.timeout_ms)}, down ${r.tracking.down}, up ${r.tracking.up}; link monitor: ${r.monitor}\n`;
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
  runsOn: ["onsite"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    let r: UplinkReport;
    try {
      r = await daemonClient<UplinkApi>(ctx, cfg.control).call("uplinkStatus");
    } catch (e) {
      if (isUnknownCommand(e, "uplink.status")) {
        throw new RuntimeError("this daemon runs no uplink manager", "it starts on an onsite daemon whose config has [[uplink]] entries", { cause: e });
      }
      throw e;
    }
    ctx.io.out(flag(args, "json") ? JSON.stringify(r, null, 2) + "\n" : formatUplinkReport(r));
    return 0;
  },
});

/** Wi-Fi/AP commands: a daemon without `[ap] enabled = true` does not know them; say how to fix that. */
async function wifiCall<K extends MethodOf<WifiApi>>(ctx: CliContext, control: string, method: K, req?: RequestOf<WifiApi, K>): Promise<ResultOf<WifiApi, K>> {
  const client = daemonClient<WifiApi>(ctx, control, { timeoutMs: 60_000 });
  try {
    return await (client.call as (m: K, r?: RequestOf<WifiApi, K>) => Promise<ResultOf<WifiApi, K>>)(method, req);
  } catch (e) {
    if (isUnknownCommand(e, wireName(method))) {
      throw new RuntimeError("this daemon runs no Wi-Fi/AP service", "it starts on an onsite daemon whose config has [ap] enabled = true", { cause: e });
    }
    throw e;
  }
}

export function formatNetworks(nets: WifiNetwork[]): string {
  if (nets.length === 0) return "no networks found\n";
  return formatTable(
    ["SSID", "SIGNAL", "CHANNEL", "SECURITY", "BSSID"],
    nets.map((n) => [n.ssid, `${n.signal} dBm`, String(n.channel), n.security, n.bssid]),
  );
}

const json = { type: "boolean", description: "print JSON" } as const;

const listWifi = defineAgentCommand({
  meta: { name: "list-wifi", description: "Wi-Fi networks in range (SSID, signal, channel, security, BSSID); in AP mode the last scan unless --force" },
  args: { ...configArgs, force: { type: "boolean", description: "in AP mode: leave the AP for a fresh scan, then come back" }, json },
  runsOn: ["onsite"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const nets = await wifiCall(ctx, cfg.control, "wifiList", { force: flag(args, "force") });
    ctx.io.out(flag(args, "json") ? JSON.stringify(nets, null, 2) + "\n" : formatNetworks(nets));
    return 0;
  },
});

async function readStdin(): Promise<string> {
  const text = await new Response(Bun.stdin.stream()).text();
  return text.replace(/\r?\n$/, "");
}

const configureWifi = defineAgentCommand({
  meta: { name: "configure-wifi", description: "Add (or replace) a known Wi-Fi network and try it; --psk-file FILE or PSK \"-\" (stdin) keeps the passphrase out of ps" },
  args: {
    ...configArgs,
    ssid: { type: "positional", valueHint: "SSID", description: "network name, 1-32 bytes" },
    psk: { type: "positional", required: false, valueHint: "PSK", description: "passphrase (8-63 printable ASCII, or 64 hex digits); \"-\": read from stdin; omit for an open network" },
    "psk-file": { type: "string", valueHint: "file", description: "read the passphrase from FILE (mode 0600), \"-\": from stdin; instead of the PSK argument, which ps shows" },
    priority: { type: "string", valueHint: "n", description: "0-1000, HIGHER is preferred (as in wpa_supplicant; unlike [[uplink]] priority, where lower wins); default: above every known network" },
  },
  runsOn: ["onsite"],
  async exec(args, ctx) {
    const [ssid, pskArg, ...extra] = args._;
    if (ssid === undefined) throw new UsageError("agent uplink configure-wifi needs an SSID", "agent uplink configure-wifi SSID [PSK | --psk-file FILE] (PSK - or --psk-file - reads it from stdin; none: an open network)");
    if (extra.length) throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])}`, "quote an SSID or passphrase with spaces");
    const pskFile = str(args, "psk-file");
    if (pskFile !== undefined && pskArg !== undefined) throw new UsageError("a PSK argument and --psk-file both given", "pass one: --psk-file FILE (or -, stdin) keeps it out of ps");
    const psk = pskFile !== undefined ? await readSecretArg("--psk-file", pskFile, "the Wi-Fi passphrase") : pskArg === "-" ? await readStdin() : pskArg;
    const { checkPsk, checkSsid } = await import("../uplink/wpa.ts");
    const bad = checkSsid(ssid) ?? (psk ? checkPsk(psk) : undefined);
    if (bad) throw new UsageError(bad);
    let priority: number | undefined;
    const p = str(args, "priority");
    if (p !== undefined) {
      if (!/^\d{1,4}$/.test(p) || Number(p) > 1000) throw new UsageError(`--priority: expected 0-1000, got ${JSON.stringify(p)}`);
      priority = Number(p);
    }
    const cfg = await configFromArgs(args);
    const msg = await wifiCall(ctx, cfg.control, "wifiConfigure", { ssid, psk, priority });
    ctx.io.out(msg + "\n");
    return 0;
  },
});

const startAp = defineAgentCommand({
  meta: { name: "start-ap", description: "Start the setup access point now (held until stop-ap)" },
  args: { ...configArgs },
  runsOn: ["onsite"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    ctx.io.out((await wifiCall(ctx, cfg.control, "apStart")) + "\n");
    const r = await wifiCall(ctx, cfg.control, "wifiStatus");
    ctx.io.out(`ssid ${JSON.stringify(r.ap.ssid)} (${r.ap.security}) on ${r.ap.interface} ${r.ap.address}${r.setup_page ? `; setup page ${r.setup_page}` : ""}${r.passphrase_file ? `; passphrase in ${r.passphrase_file}` : ""}\n`);
    return 0;
  },
});

const stopAp = defineAgentCommand({
  meta: { name: "stop-ap", description: "Stop the setup access point" },
  args: { ...configArgs },
  runsOn: ["onsite"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    ctx.io.out((await wifiCall(ctx, cfg.control, "apStop")) + "\n");
    return 0;
  },
});

const wifiStatus = defineAgentCommand({
  meta: { name: "wifi-status", description: "Wi-Fi client and AP: mode, AP processes, known networks, recent decisions" },
  args: { ...configArgs, json },
  runsOn: ["onsite"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const r = await wifiCall(ctx, cfg.control, "wifiStatus");
    if (flag(args, "json")) {
      ctx.io.out(JSON.stringify(r, null, 2) + "\n");
      return 0;
    }
    const proc = (p?: { running: boolean; pid?: number; restarts: number }) => (p ? `${p.running ? `pid ${p.pid}` : "down"}, ${p.restarts} restarts` : "-");
    let t = `mode: ${r.mode}${r.manual_ap ? " (started by hand)" : ""}\n`;
    t += `ap: ${r.ap.running ? `up since ${r.ap.since}` : "down"}, ssid ${JSON.stringify(r.ap.ssid)} ${r.ap.security} on ${r.ap.interface} ${r.ap.address}; hostapd ${proc(r.ap.hostapd)}; dnsmasq ${proc(r.ap.dnsmasq)}${r.ap.error ? `; last error: ${r.ap.error}` : ""}\n`;
    t += `wifi: ${r.wifi.interface}${r.wifi.present ? "" : " (absent)"}, ${r.wifi.state ?? "unknown"}${r.wifi.ssid ? ` on ${JSON.stringify(r.wifi.ssid)}` : ""}${r.wifi.error ? `; last error: ${r.wifi.error}` : ""}\n`;
    t += `known: ${r.known.map((k) => `${k.ssid} (priority ${k.priority})`).join(", ") || "none"}\n`;
    if (r.history.length) t += "\n" + formatTable(["AT", "ACTION", "REASON"], r.history.map((h) => [h.at, h.action, h.reason]));
    ctx.io.out(t);
    return 0;
  },
});

export const uplinkCommand = defineAgentCommand({
  meta: { name: "uplink", description: "Uplink failover, Wi-Fi client and setup access point (onsite)" },
  subCommands: { status, "list-wifi": listWifi, "configure-wifi": configureWifi, "start-ap": startAp, "stop-ap": stopAp, "wifi-status": wifiStatus },
});
