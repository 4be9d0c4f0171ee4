// What the master's status card shows of its own host (issue 15): its uplink (the interface
// and source address of its route to the relay) and the secondary interface of `[tunnel]`
// with what is on it (addresses, the bridge it is in, the DHCP leases the master handed out).
// Read with `ip -j` through the injected Exec and from dnsmasq's lease file, in the
// background: `status` is synchronous, so it shows the last reading (null before the first).
// Parsers are pure and table-tested; the reader is the thin adapter.
import { readFileSync } from "node:fs";
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { realExec, type Exec } from "../os/spawn.ts";
import { dhcpPaths } from "../tunnel/packet/dnsmasq.ts";
import type { MasterStatusPart, SecondaryView } from "./api.ts";

export type Uplink = MasterStatusPart["uplink"];

/** `ip -j route get ADDR` → the interface, source and gateway (pure; null when it says nothing). */
export function parseRouteGet(json: string): Uplink {
  const rows = JSON.parse(json || "[]") as { dev?: string; prefsrc?: string; gateway?: string }[];
  const r = rows[0];
  if (!r?.dev) return null;
  return { iface: r.dev, address: r.prefsrc ?? "", gateway: r.gateway ?? null };
}

/** dnsmasq's lease file: "EXPIRY MAC IP HOSTNAME CLIENT-ID" per line (pure). EXPIRY 0: never. */
export function parseLeases(text: string): SecondaryView["leases"] {
  const out: SecondaryView["leases"] = [];
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4 || !/^\d+$/.test(f[0]!)) continue;
    const at = Number(f[0]);
    out.push({ mac: f[1]!, address: f[2]!, hostname: f[3] === "*" ? "" : f[3]!, expires: at === 0 ? null : new Date(at * 1000).toISOString() });
  }
  return out;
}

/** `ip -j -d link show dev X` and `ip -j -4 addr show dev X` → the secondary's view (pure). */
export function secondaryView(iface: string, linkJson: string | null, addrJson: string | null, leases: SecondaryView["leases"]): SecondaryView {
  const link = linkJson ? ((JSON.parse(linkJson || "[]") as { operstate?: string; flags?: string[]; master?: string }[])[0] ?? null) : null;
  const addrs = addrJson ? ((JSON.parse(addrJson || "[]") as { addr_info?: { local: string; prefixlen: number }[] }[])[0]?.addr_info ?? []) : [];
  return {
    iface,
    present: link !== null,
    up: link !== null && (link.operstate === "UP" || (link.operstate === "UNKNOWN" && (link.flags ?? []).includes("LOWER_UP"))),
    addresses: addrs.map((a) => `${a.local}/${a.prefixlen}`),
    bridge: link?.master ?? null,
    leases,
  };
}

export interface MasterHostOptions {
  /** The relay's host (name or IPv4). */
  relayHost: string | undefined;
  secondary: string;
  stateDir: string;
  exec?: Exec;
}

/** Reads the host facts again on `refresh()`; `uplink`/`secondary` are the last reading. */
export class MasterHostFacts {
  uplink: Uplink = null;
  secondary: SecondaryView | null = null;
  private readonly exec: Exec;
  private running: Promise<void> | null = null;

  constructor(private readonly o: MasterHostOptions) {
    this.exec = o.exec ?? realExec;
  }

  /** One reading at a time; a refresh asked for meanwhile shares it. Never throws. */
  refresh(): Promise<void> {
    this.running ??= this.read().finally(() => (this.running = null));
    return this.running;
  }

  private async read(): Promise<void> {
    this.uplink = await this.readUplink().catch(() => null);
    const dev = this.o.secondary;
    const out = async (argv: string[]) => {
      const r = await this.exec(argv).catch(() => null);
      return r && r.code === 0 ? r.stdout : null;
    };
    const link = await out(["ip", "-j", "-d", "link", "show", "dev", dev]);
    const addr = link ? await out(["ip", "-j", "-4", "addr", "show", "dev", dev]) : null;
    let leases: SecondaryView["leases"] = [];
    try {
      leases = parseLeases(readFileSync(dhcpPaths(this.o.stateDir, dev).leases, "utf8"));
    } catch {
      // No lease file: no DHCP server running on it (bridged, or dhcp = false).
    }
    this.secondary = secondaryView(dev, link, addr, leases);
  }

  private async readUplink(): Promise<Uplink> {
    const host = this.o.relayHost;
    if (!host) return null;
    const addr = isIP(host) === 4 ? host : (await lookup(host, { family: 4 })).address;
    const r = await this.exec(["ip", "-j", "route", "get", addr]);
    return r.code === 0 ? parseRouteGet(r.stdout) : null;
  }
}
