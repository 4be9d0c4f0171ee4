// Pure pieces of the access point: hostapd and dnsmasq configuration files, the DHCP range,
// the per-device passphrase, and the nft ruleset that keeps AP clients off the LAN and the
// uplinks. Rendered here, written and run by ap.ts.
import { randomInt } from "node:crypto";
import type { ApConfig } from "../config.ts";
import { formatIPv4, maskOf, type Cidr } from "../netaddr.ts";

/** Letters and digits without look-alikes (0/O, 1/l/I): read off a label, typed on a phone. */
const PASS_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/** 16 characters of a 56-letter alphabet: ~93 bits, far beyond WPA2 offline guessing. */
export const GENERATED_PASSPHRASE_LENGTH = 16;
export const DHCP_LEASE = "1h";

export function generatePassphrase(len = GENERATED_PASSPHRASE_LENGTH): string {
  let s = "";
  for (let i = 0; i < len; i++) s += PASS_ALPHABET[randomInt(PASS_ALPHABET.length)];
  return s;
}

export interface DhcpRange {
  start: string;
  end: string;
  netmask: string;
}

/** From .100 to .200 in a /24 (netconnectd's range); the whole host range minus the AP in smaller subnets. */
export function dhcpRange(a: ApConfig["address"]): DhcpRange {
  const size = 2 ** (32 - a.prefix);
  const first = a.network + 1;
  const last = a.network + size - 2;
  let start = size >= 256 ? a.network + 100 : first;
  let end = size >= 256 ? Math.min(a.network + 200, last) : last;
  if (start === a.host) start++;
  if (end === a.host) end--;
  return { start: formatIPv4(start >>> 0), end: formatIPv4(end >>> 0), netmask: formatIPv4(maskOf(a.prefix)) };
}

/** hostapd.conf. Values were validated by the config schema (SSID without control characters, passphrase printable). */
export function renderHostapd(ap: ApConfig, passphrase: string, ctrlDir?: string): string {
  const lines = [
    "# written by the agent at each AP start; edits are overwritten",
    `interface=${ap.interface}`,
    "driver=nl80211",
    `ssid=${ap.ssid}`,
    "utf8_ssid=1",
    `country_code=${ap.country}`,
    "ieee80211d=1",
    `hw_mode=${ap.channel <= 14 ? "g" : "a"}`,
    `channel=${ap.channel}`,
    "ieee80211n=1",
    "wmm_enabled=1",
    "auth_algs=1",
    "ignore_broadcast_ssid=0",
    // Clients of the AP cannot talk to each other: one phone cannot attack another.
    "ap_isolate=1",
    "wpa=2",
    "rsn_pairwise=CCMP",
  ];
  if (ap.security === "sae") {
    // WPA3-Personal only: management frame protection is mandatory with SAE.
    lines.push("wpa_key_mgmt=SAE", "ieee80211w=2", "sae_require_mfp=1", `sae_password=${passphrase}`);
  } else {
    lines.push("wpa_key_mgmt=WPA-PSK", `wpa_passphrase=${passphrase}`);
  }
  if (ctrlDir) lines.push(`ctrl_interface=${ctrlDir}`);
  return lines.join("\n") + "\n";
}

/** The user dnsmasq runs as once it has bound its sockets (Debian's and OpenWrt's packages create it). */
export const DNSMASQ_USER = "dnsmasq";

/** What a DHCP-only (or DHCP + captive DNS) dnsmasq on one interface needs to know. */
export interface DhcpServerSpec {
  /** The one interface it serves (the AP, a master's secondary port). */
  interface: string;
  /** The interface's own address: listen address, router and DNS server of the leases. */
  address: Cidr & { host: number };
  leaseFile: string;
  /** Answer every DNS name with the address (a setup page); false: no DNS at all (port=0). */
  captiveDns: boolean;
  /** Whether clients are told the address is their DNS server (default: with captive DNS only). */
  advertiseDns?: boolean;
  /** The first comment line: who writes the file. */
  banner?: string;
  /** The user dnsmasq drops to after binding (default DNSMASQ_USER). */
  user?: string;
}

/**
 * dnsmasq.conf for one interface, shared by the access point and the master's packet tunnel
 * (`src/tunnel/packet/dnsmasq.ts`): bound to that interface only, never to the LAN or an
 * uplink; no pid file (the agent supervises it); leases with the address as the router.
 */
export function renderDhcpServer(o: DhcpServerSpec): string {
  const addr = formatIPv4(o.address.host);
  const r = dhcpRange(o.address);
  const lines = [
    o.banner ?? "# written by the agent; edits are overwritten",
    `interface=${o.interface}`,
    // Only this interface: never answer DHCP or DNS on the LAN or an uplink.
    "bind-interfaces",
    `listen-address=${addr}`,
    "except-interface=lo",
    "no-resolv",
    "no-hosts",
    "no-poll",
    // No pid file of its own: the agent supervises the process and keeps its pid.
    "pid-file=",
    // Drops root after binding (Debian's package creates the user). It opens the lease file
    // and reads this file as root first, so both stay in the agent's 0700 directory.
    `user=${o.user ?? DNSMASQ_USER}`,
    `dhcp-leasefile=${o.leaseFile}`,
    "dhcp-authoritative",
    `dhcp-range=${r.start},${r.end},${r.netmask},${DHCP_LEASE}`,
    `dhcp-option=option:router,${addr}`,
  ];
  if (o.advertiseDns ?? o.captiveDns) lines.push(`dhcp-option=option:dns-server,${addr}`);
  if (o.captiveDns) lines.push("port=53", `address=/#/${addr}`);
  else lines.push("port=0");
  return lines.join("\n") + "\n";
}

export function renderDnsmasq(ap: ApConfig, o: { leaseFile: string; user?: string }): string {
  // The AP address as router and DNS server: phones treat the network as usable and probe
  // for a captive portal, which the setup page answers; nothing is forwarded past it.
  return renderDhcpServer({
    interface: ap.interface,
    address: ap.address,
    leaseFile: o.leaseFile,
    captiveDns: ap.captive_dns,
    advertiseDns: true,
    banner: "# written by the agent at each AP start; edits are overwritten",
    ...(o.user ? { user: o.user } : {}),
  });
}

export const NFT_TABLE = "agent_ap";

/**
 * nft ruleset (for `nft -f`): by default nothing is forwarded to or from the AP interface,
 * and AP clients reach the device only for DHCP, DNS and the setup page on the AP address;
 * the AP address answers nothing that arrives on another interface.
 * `ap.forward` opens the forward fence for what it lists, masqueraded behind the device's
 * address on the way out (the LAN and the uplinks' routers have no route to the AP subnet):
 * "uplinks" to the `uplinks` interfaces, "lan" to every other interface but the AP itself;
 * only answers come back in. Its own table, created and deleted as a whole, so it never
 * touches rules others own. Priority -300 runs it before the usual filter chains (0) and
 * NAT; a system firewall that drops forwarding still has the last word.
 */
export function renderNft(ap: ApConfig, uplinks: readonly string[] = []): string {
  const i = JSON.stringify(ap.interface);
  const addr = formatIPv4(ap.address.host);
  const subnet = `${formatIPv4(ap.address.network)}/${ap.address.prefix}`;
  const set = (names: readonly string[]) => `{ ${names.map((n) => JSON.stringify(n)).join(", ")} }`;
  const ups = uplinks.filter((u) => u !== ap.interface);
  // The outgoing interfaces each listed target stands for, as nft matches.
  const outs: string[] = [];
  if (ap.forward.includes("lan")) outs.push(`oifname != ${set([ap.interface, ...ups])}`);
  if (ap.forward.includes("uplinks") && ups.length > 0) outs.push(`oifname ${set(ups)}`);
  const lines = [`table inet ${NFT_TABLE} {`, `  chain forward {`, `    type filter hook forward priority -300; policy accept;`];
  for (const o of outs) lines.push(`    iifname ${i} ip saddr ${subnet} ${o} accept`);
  if (outs.length > 0) lines.push(`    oifname ${i} ip daddr ${subnet} ct state established,related accept`);
  lines.push(
    `    iifname ${i} drop`,
    `    oifname ${i} drop`,
    `  }`,
    `  chain input {`,
    `    type filter hook input priority -300; policy accept;`,
    // The AP address is for AP clients only: a LAN or uplink host that routes the AP subnet
    // via the device must not reach the setup page, DNS or anything else on it (Linux answers
    // for any local address on any interface). The device itself talks to it over lo.
    `    iifname != { ${i}, "lo" } ip daddr ${addr} drop`,
    `    iifname ${i} udp dport 67 accept`,
    `    iifname ${i} ip daddr ${addr} udp dport 53 accept`,
    `    iifname ${i} ip daddr ${addr} tcp dport { 53, ${ap.setup_port} } accept`,
    `    iifname ${i} ip daddr ${addr} icmp type echo-request accept`,
    `    iifname ${i} ct state established,related accept`,
    `    iifname ${i} drop`,
    `  }`,
  );
  if (outs.length > 0) {
    lines.push(`  chain postrouting {`, `    type nat hook postrouting priority 100; policy accept;`);
    for (const o of outs) lines.push(`    iifname ${i} ip saddr ${subnet} ${o} masquerade`);
    lines.push(`  }`);
  }
  lines.push(`}`, "");
  return lines.join("\n");
}
