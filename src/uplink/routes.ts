// Routing effects, mwan3 style: each uplink gets its own routing table holding a default
// route through its gateway, and a source rule (`from ADDR lookup TABLE`) so that anything
// bound to the uplink's address (the probes) leaves through that uplink whatever the main
// table says. The main table's default route (metric ACTIVE_METRIC) follows the active uplink.
// Everything goes through `ip` with argument arrays; a FakeRouteTable records for unit tests.
import { describeFailure, type Exec } from "../os/spawn.ts";

/** First per-uplink table id and rule preference; uplink i uses BASE + i. */
export const TABLE_BASE = 7100;
export const RULE_PREF_BASE = 7100;
/** Metric of the default route the manager owns in the main table (0 wins over DHCP's). */
export const ACTIVE_METRIC = 0;

export interface UplinkRoute {
  dev: string;
  table: number;
  pref: number;
  /** The uplink's IPv4 address (no prefix). */
  source: string;
  gateway: string;
}

export interface RouteTable {
  /** Installs (idempotently) the uplink's table route and source rule; `previous` is what was installed before. */
  ensureUplink(r: UplinkRoute, previous?: UplinkRoute): Promise<void>;
  /** Removes the uplink's rule and table. */
  removeUplink(r: { table: number; pref: number }): Promise<void>;
  /** Points the main table's default route at this uplink. */
  setDefault(r: { dev: string; gateway: string }): Promise<void>;
  /** Removes the default route the manager owns. */
  clearDefault(): Promise<void>;
}

export class IpRouteTable implements RouteTable {
  constructor(private readonly exec: Exec) {}

  private async run(argv: string[], tolerate = false): Promise<boolean> {
    const r = await this.exec(argv);
    if (r.code !== 0 && !tolerate) throw new Error(describeFailure(argv, r));
    return r.code === 0;
  }

  async ensureUplink(r: UplinkRoute, previous?: UplinkRoute): Promise<void> {
    // `onlink`: the per-uplink table has no connected route for the gateway's subnet.
    await this.run(["ip", "-4", "route", "replace", "default", "via", r.gateway, "dev", r.dev, "table", String(r.table), "onlink"]);
    if (previous && previous.source === r.source && previous.pref === r.pref) return;
    // A new address (or a first start after a crash): drop whatever rule holds this preference.
    for (let i = 0; i < 8 && (await this.run(["ip", "-4", "rule", "del", "pref", String(r.pref)], true)); i++);
    await this.run(["ip", "-4", "rule", "add", "from", `${r.source}/32`, "lookup", String(r.table), "pref", String(r.pref)]);
  }

  async removeUplink(r: { table: number; pref: number }): Promise<void> {
    for (let i = 0; i < 8 && (await this.run(["ip", "-4", "rule", "del", "pref", String(r.pref)], true)); i++);
    await this.run(["ip", "-4", "route", "flush", "table", String(r.table)], true);
  }

  async setDefault(r: { dev: string; gateway: string }): Promise<void> {
    await this.run(["ip", "-4", "route", "replace", "default", "via", r.gateway, "dev", r.dev, "metric", String(ACTIVE_METRIC), "onlink"]);
  }

  async clearDefault(): Promise<void> {
    await this.run(["ip", "-4", "route", "del", "default", "metric", String(ACTIVE_METRIC)], true);
  }
}

/** Records what would be installed; unit tests assert on it. */
export class FakeRouteTable implements RouteTable {
  readonly uplinks = new Map<number, UplinkRoute>();
  default: { dev: string; gateway: string } | undefined;
  readonly calls: string[] = [];
  async ensureUplink(r: UplinkRoute): Promise<void> {
    this.calls.push(`ensure ${r.dev} ${r.source} via ${r.gateway} table ${r.table}`);
    this.uplinks.set(r.table, r);
  }
  async removeUplink(r: { table: number; pref: number }): Promise<void> {
    this.calls.push(`remove table ${r.table}`);
    this.uplinks.delete(r.table);
  }
  async setDefault(r: { dev: string; gateway: string }): Promise<void> {
    this.calls.push(`default ${r.dev} via ${r.gateway}`);
    this.default = r;
  }
  async clearDefault(): Promise<void> {
    this.calls.push("clear default");
    this.default = undefined;
  }
}
