// The daemons' tunnel hosts, from the config: the Linux hosts where the agent runs on Linux,
// the refusing ones elsewhere (no /dev/net/tun to open). One line each in the roles.
import type { Config } from "../../config.ts";
import type { Logger } from "../../log.ts";
import { parseIPv4 } from "../../netaddr.ts";
import type { MasterTunnelHost, OnsiteTunnelHost } from "./device.ts";
import { LinuxMasterHost } from "./host-master.ts";
import { LinuxOnsiteHost } from "./host-onsite.ts";
import { refusingMasterHost, refusingOnsiteHost } from "./refusing.ts";

/** The onsite host: the allow list, `[tunnel] bridged` / `lan_bridge`, and the `[[uplink]]` names (never bridged). */
export function onsiteTunnelHost(cfg: Config, log: Logger, platform: string = process.platform): OnsiteTunnelHost {
  if (platform !== "linux") return refusingOnsiteHost();
  return new LinuxOnsiteHost({ allow: cfg.allow, bridged: cfg.tunnel.bridged, lanBridge: cfg.tunnel.lan_bridge, uplinks: cfg.uplink.map((u) => u.name), log });
}

/** The addresses that must keep their own path: the relay's, when the config names it by address. */
export function keepOutOf(cfg: Pick<Config, "relay">): string[] {
  const h = cfg.relay?.host;
  if (!h) return [];
  try {
    parseIPv4(h);
    return [h];
  } catch {
    return [];
  }
}

/** The master host: `[tunnel] secondary` / `dhcp`, dnsmasq's files in the state directory, the relay kept out of its routes. */
export function masterTunnelHost(cfg: Config, log: Logger, platform: string = process.platform): MasterTunnelHost {
  if (platform !== "linux") return refusingMasterHost();
  return new LinuxMasterHost({ secondary: cfg.tunnel.secondary, dhcp: cfg.tunnel.dhcp, stateDir: cfg.state_dir, keepOut: keepOutOf(cfg), log });
}
