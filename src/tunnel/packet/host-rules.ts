// The decisions of the tunnel hosts, pure and table-tested (test/tunnel-host-unit.test.ts):
// whether an open is refused and why, which routes a master adds, and which leftovers a sweep
// removes. The hosts (host-onsite.ts, host-master.ts) only carry them out.
import { cidrContains, formatCidr, maskOf, parseCidr, parseIPv4, type AllowEntry, type Cidr } from "../../netaddr.ts";
import { TunnelRefused } from "./device.ts";
import type { IpLink } from "./host-ip.ts";
import { isOwnedInterface, type EndRole } from "./names.ts";

/** The subnets an onsite end advertises: its allow list's CIDRs, each once, in list order. */
export function advertisedSubnets(allow: readonly AllowEntry[]): string[] {
  return [...new Set(allow.map((e) => formatCidr(e.cidr)))];
}

/**
 * Onsite bridged mode: refused unless `[tunnel] bridged = true`; refused when the LAN bridge
 * is missing, is not a bridge, is an uplink, or has an uplink among its ports (bridging it
 * would put the tunnel on the internet side of the device).
 */
export function onsiteBridgedRefusal(o: { allowed: boolean; lanBridge: string | undefined; uplinks: readonly string[]; links: readonly IpLink[] }): TunnelRefused | null {
  if (!o.allowed) {
    return new TunnelRefused("bridged_not_allowed", "bridged mode exposes the whole LAN segment and is off on this device; set `[tunnel] bridged = true` in its config to allow it");
  }
  const br = o.lanBridge;
  if (!br) return new TunnelRefused("invalid", "bridged mode needs `[tunnel] lan_bridge` (the LAN bridge to join, e.g. br-lan) in the device's config");
  if (o.uplinks.includes(br)) return new TunnelRefused("invalid", `${br} is an uplink of this device: a tunnel is never bridged to an uplink`);
  const link = o.links.find((l) => l.ifname === br);
  if (!link) return new TunnelRefused("no_device", `the LAN bridge ${br} (\`[tunnel] lan_bridge\`) does not exist on this device`);
  if (link.kind !== "bridge") return new TunnelRefused("invalid", `${br} (\`[tunnel] lan_bridge\`) is not a bridge (it is ${link.kind ?? "a plain interface"})`);
  const ups = o.links.filter((l) => l.master === br && o.uplinks.includes(l.ifname)).map((l) => l.ifname);
  if (ups.length > 0) return new TunnelRefused("invalid", `the LAN bridge ${br} has the uplink ${ups.join(", ")} as a port: a tunnel is never bridged to an uplink`);
  return null;
}

/**
 * Seed 000's safety rule: going bridged takes the secondary interface away from the laptop
 * on it (the bridge replaces the master's address there with the customer's LAN), so a
 * request from an address in that interface's subnet (a terminal or SSH session from the
 * laptop itself) would cut its own connection. Such a request is refused, saying why.
 */
export function fromSecondaryRefusal(requester: string | undefined, secondary: string, secondaryAddrs: readonly string[]): TunnelRefused | null {
  if (!requester) return null;
  let addr: number;
  try {
    addr = parseIPv4(requester.replace(/^::ffff:/i, ""));
  } catch {
    return null; // IPv6 or a name: not on the IPv4 secondary subnet
  }
  for (const a of secondaryAddrs) {
    const c = subnetOf(a);
    if (c && cidrContains(c, addr)) {
      return new TunnelRefused(
        "from_secondary",
        `bridged mode refused: this request comes from ${requester}, on the secondary interface ${secondary} (${formatCidr(c)}); bridging ${secondary} would cut this very connection. Ask from another interface, or use routed mode`,
      );
    }
  }
  return null;
}

/** "192.168.77.1/24" → its subnet; undefined when unparsable. */
export function subnetOf(addrWithPrefix: string): Cidr | undefined {
  const [a, p] = addrWithPrefix.split("/");
  const prefix = p === undefined ? 32 : Number(p);
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > 32) return undefined;
  try {
    return { network: (parseIPv4(a!) & maskOf(prefix)) >>> 0, prefix };
  } catch {
    return undefined;
  }
}

/**
 * The routes a master adds through its TUN: the onsite end's subnets, less any that contains
 * an address that must keep its own path (the relay's: routing it into the tunnel would cut
 * the tunnel itself) or that is the default route. Each skipped one comes with a sentence.
 */
export function masterRoutes(subnets: readonly string[], keepOut: readonly string[]): { routes: string[]; skipped: string[] } {
  const routes: string[] = [];
  const skipped: string[] = [];
  for (const s of subnets) {
    let c: Cidr;
    try {
      c = parseCidr(s);
    } catch (e) {
      skipped.push(`${JSON.stringify(s)} is not a subnet: ${(e as Error).message}`);
      continue;
    }
    if (c.prefix === 0) {
      skipped.push(`${s}: a default route is never sent into a tunnel`);
      continue;
    }
    const hit = keepOut.find((k) => {
      try {
        return cidrContains(c, parseIPv4(k));
      } catch {
        return false;
      }
    });
    if (hit) {
      skipped.push(`${s} contains ${hit}, which must keep its own path (the relay); not routed through the tunnel`);
      continue;
    }
    const f = formatCidr(c);
    if (!routes.includes(f)) routes.push(f);
  }
  return { routes, skipped };
}

/** The point-to-point network of a tunnel address ("10.99.0.2/30" → "10.99.0.0/30"). */
export function tunnelNetwork(addr: string): string {
  const c = subnetOf(addr);
  if (!c) throw new TunnelRefused("invalid", `bad tunnel address ${JSON.stringify(addr)}`);
  return formatCidr(c);
}

/** The address without its prefix. */
export const bareAddress = (addr: string) => addr.split("/")[0]!;

/** The agent-owned interfaces of `role` among `links` (what a sweep deletes). */
export function ownedLinks(role: EndRole, links: readonly IpLink[]): string[] {
  return links.map((l) => l.ifname).filter((n) => isOwnedInterface(role, n));
}

/** Whether the master's secondary dnsmasq should run: some routed end is open and no bridged one. */
export function dhcpWanted(dhcp: boolean, ends: readonly { mode: "routed" | "bridged" }[]): boolean {
  return dhcp && ends.some((e) => e.mode === "routed") && !ends.some((e) => e.mode === "bridged");
}
