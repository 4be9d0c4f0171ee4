// Builds the uplink manager from the configuration with the real adapters: netlink link
// monitor (polling fallback), `ip` routes, TCP probes and, for cellular uplinks, the modem
// found on this system (ModemManager or OpenWRT's netifd).
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import { realExec, type Exec } from "../os/spawn.ts";
import { UplinkManager } from "./manager.ts";
import { detectModem, type Modem } from "./modem.ts";
import { createLinkMonitor } from "./monitor.ts";
import { tcpProber } from "./probe.ts";
import { IpRouteTable } from "./routes.ts";

export { UplinkManager, type ActiveChange, type UplinkReport } from "./manager.ts";

/** Set AGENT_UPLINK_MONITOR=poll to force the polling fallback (tests, odd kernels). */
export function createUplinkManager(cfg: Config, log: Logger, exec: Exec = realExec): UplinkManager {
  const monitorLog = log.withTag("linkmon");
  const prefer = process.env.AGENT_UPLINK_MONITOR === "poll" ? "poll" : "netlink";
  const monitor = createLinkMonitor(exec, (e) => monitorLog.warn("netlink link monitor problem", e), prefer);
  const modems = new Map<string, Modem>();
  for (const u of cfg.uplink) {
    if (u.kind !== "cellular") continue;
    const m = detectModem(exec, u.name);
    if (m) modems.set(u.name, m);
    else log.warn(`cellular uplink ${u.name}: neither mmcli (ModemManager) nor ubus/ifup (OpenWRT) found; its link is used only if something else brings it up`);
  }
  return new UplinkManager({ uplinks: cfg.uplink, tracking: cfg.tracking, relay: cfg.relay, monitor, routes: new IpRouteTable(exec), prober: tcpProber, modems, log });
}

export { WifiService, type WifiReport } from "./wifi.ts";
export { answerNetconnectd, encodeNetconnectd } from "./netconnectd.ts";

/**
 * The Wi-Fi client and AP fallback (`[ap] enabled = true`). `healthy` gives the names of the
 * healthy uplinks: the uplink manager's view, or [] on a device without [[uplink]]s.
 */
export async function createWifiService(cfg: Config, log: Logger, healthy: () => string[], exec: Exec = realExec) {
  const { WifiService } = await import("./wifi.ts");
  return new WifiService({ cfg, log, exec, healthy, kinds: new Map(cfg.uplink.map((u) => [u.name, u.kind])) });
}
