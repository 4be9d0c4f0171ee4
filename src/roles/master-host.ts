// What the master's status card shows of its own host (issue 15): its uplink (the interface
// and source address of its route to the relay) and the secondary interface of `[tunnel]`
// with what is on it (addresses, the bridge it is in, the DHCP leases the master handed out).
// Read with `ip -j` through the injected Exec in the background (a timer, the relay coming up,
// a tunnel end made or undone: refreshingHost): `status` is synchronous, so it shows the last
// reading (null before the first); the leases are read from dnsmasq's file at each look.
// Parsers are pure and table-tested; the reader is the thin adapter.
import { readFileSync } from "node:fs";
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { realExec, type Exec } from "../os/spawn.ts";
import { dhcpPaths } from "../tunnel/packet/dnsmasq.ts";
import type { MasterTunnelHost } from "../tunnel/packet/device.ts";
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
  private reading: SecondaryView | null = null;
  private readonly exec: Exec;
  private running: Promise<void> | null = null;

  constructor(private readonly o: MasterHostOptions) {
    this.exec = o.exec ?? realExec;
  }

  /** The last reading of the secondary interface, with the leases as dnsmasq's file holds them now
   * (a laptop's lease shows at the next look, not at the next reading). */
  get secondary(): SecondaryView | null {
    return this.reading ? { ...this.reading, leases: this.leases(this.reading.iface) } : null;
  }

  /** A reading that starts after this call (not one already under way): what a change just made shows. */
  async fresh(): Promise<void> {
    await this.running?.catch(() => undefined);
    await this.refresh().catch(() => undefined);
  }

  private leases(dev: string): SecondaryView["leases"] {
    try {
      return parseLeases(readFileSync(dhcpPaths(this.o.stateDir, dev).leases, "utf8"));
    } catch {
      return []; // No lease file: no DHCP server running on it (bridged, or dhcp = false).
    }
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
    this.reading = secondaryView(dev, link, addr, this.leases(dev));
  }

  private async readUplink(): Promise<Uplink> {
    const host = this.o.relayHost;
    if (!host) return null;
    const addr = isIP(host) === 4 ? host : (await lookup(host, { family: 4 })).address;
    const r = await this.exec(["ip", "-j", "route", "get", addr]);
    return r.code === 0 ? parseRouteGet(r.stdout) : null;
  }
}

/** The master's tunnel host, reading the host facts again once an end is made or undone: the
 * status card shows the bridge on the secondary interface (or its end) with the change, not at
 * the next timer (HOST_FACTS_MS in master.ts). */
export function refreshingHost(host: MasterTunnelHost, facts: Pick<MasterHostFacts, "fresh">): MasterTunnelHost {
  return {
    open: async (req) => {
      const end = await host.open(req);
      await facts.fresh();
      return {
        device: end.device,
        info: () => end.info(),
        close: async () => {
          try {
            await end.close();
          } finally {
            await facts.fresh();
          }
        },
      };
    },
    sweep: () => host.sweep(),
    onSecondaryChange: (h) => host.onSecondaryChange(h),
    ...(host.precheck ? { precheck: (req: Parameters<NonNullable<MasterTunnelHost["precheck"]>>[0]) => host.precheck!(req) } : {}),
  };
}
