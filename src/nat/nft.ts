// nftables backend. The agent owns one table, `ip agent_nat`, with a prerouting NAT chain
// and a forward filter chain; an apply declares the table, flushes it and adds every rule in
// one `nft -f -` transaction (all or nothing), then reads the table back to check. Other
// tables (fw4's included) are never named.
import { checkExec, expectedTags, verifyTags, type Exec, type FirewallBackend } from "./backend.ts";
import type { InstalledRule } from "./plan.ts";
import { END_TAG_PREFIX, kernelExpiryS, parseTag, ruleTag, type Rule } from "./rule.ts";

export const NFT_TABLE = "agent_nat";
// dstnat (-100) and filter (0) priorities, written as numbers for older nft releases.
const SCRIPT_HEAD = [
  `table ip ${NFT_TABLE} {`,
  `  chain prerouting { type nat hook prerouting priority -100; policy accept; }`,
  `  chain forward { type filter hook forward priority 0; policy accept; }`,
  `}`,
  `flush table ip ${NFT_TABLE}`,
];

/**
 * The `nft -f` script that makes the agent's table hold exactly `rules`. Pure.
 *
 * As with iptables (see renderRestore), each rule carries its expiry into the kernel: the DNAT
 * and the forward accept match while `meta time < E`, and an end guard drops the flow (both
 * directions, by its conntrack tuple) from E on. E is written as epoch seconds: nft reads a
 * date string in the local time zone of the nft process, a number in no zone at all, so the
 * rule is right whatever TZ the agent and nft run in.
 */
export function renderNft(rules: readonly Rule[]): string {
  const lines = [...SCRIPT_HEAD];
  const guards: string[] = [];
  for (const r of rules) {
    const tag = `comment "${ruleTag(r)}"`;
    const iface = r.iface ? ` iifname "${r.iface}"` : "";
    const end = kernelExpiryS(r);
    lines.push(`add rule ip ${NFT_TABLE} prerouting${iface} ip saddr ${r.src} ${r.proto} dport ${r.port} meta time < ${end} dnat to ${r.toAddr}:${r.toPort} ${tag}`);
    lines.push(`add rule ip ${NFT_TABLE} forward${iface} ip saddr ${r.src} ip daddr ${r.toAddr} ${r.proto} dport ${r.toPort} ct status dnat meta time < ${end} accept ${tag}`);
    guards.push(
      `add rule ip ${NFT_TABLE} forward meta l4proto ${r.proto} ct status dnat ct original ip saddr ${r.src} ct original proto-dst ${r.port} ct reply ip saddr ${r.toAddr} ct reply proto-src ${r.toPort} meta time >= ${end} drop comment "${ruleTag(r, END_TAG_PREFIX)}"`,
    );
  }
  return [...lines, ...guards].join("\n") + "\n";
}

/** Tagged rules per chain from `nft -j list table` output. Pure. */
export function parseNftJson(text: string): { prerouting: InstalledRule[]; forward: InstalledRule[]; guards: InstalledRule[] } {
  const out = { prerouting: [] as InstalledRule[], forward: [] as InstalledRule[], guards: [] as InstalledRule[] };
  const doc = JSON.parse(text) as { nftables?: { rule?: { chain?: string; comment?: string } }[] };
  for (const item of doc.nftables ?? []) {
    const r = item.rule;
    if (!r || typeof r.comment !== "string") continue;
    const guard = r.chain === "forward" ? parseTag(r.comment, END_TAG_PREFIX) : undefined;
    if (guard) out.guards.push(guard);
    const tag = parseTag(r.comment);
    if (!tag) continue;
    if (r.chain === "prerouting") out.prerouting.push(tag);
    else if (r.chain === "forward") out.forward.push(tag);
  }
  return out;
}

export class NftBackend implements FirewallBackend {
  readonly name = "nft";

  constructor(
    private readonly exec: Exec,
    private readonly nft = "nft",
  ) {}

  async apply(rules: readonly Rule[]): Promise<void> {
    const argv = [this.nft, "-f", "-"];
    checkExec("apply NAT rules", argv, await this.exec(argv, { stdin: renderNft(rules) }));
    const found = await this.read();
    const expected = expectedTags(rules);
    verifyTags(`${NFT_TABLE} prerouting`, expected, found.prerouting);
    verifyTags(`${NFT_TABLE} forward`, expected, found.forward);
    verifyTags(`${NFT_TABLE} forward end guards`, expected, found.guards);
  }

  async list(): Promise<InstalledRule[]> {
    const found = await this.read();
    const seen = new Map<string, InstalledRule>();
    for (const r of [...found.prerouting, ...found.forward]) seen.set(r.id, r);
    return [...seen.values()];
  }

  async teardown(): Promise<void> {
    // Declaring the table first makes the delete succeed whether or not it exists.
    const argv = [this.nft, "-f", "-"];
    checkExec("remove NAT table", argv, await this.exec(argv, { stdin: `table ip ${NFT_TABLE} {}\ndelete table ip ${NFT_TABLE}\n` }));
  }

  private async read(): Promise<{ prerouting: InstalledRule[]; forward: InstalledRule[]; guards: InstalledRule[] }> {
    const argv = [this.nft, "-j", "list", "table", "ip", NFT_TABLE];
    const r = await this.exec(argv);
    if (r.code !== 0 && /No such file or directory/.test(r.stderr)) return { prerouting: [], forward: [], guards: [] };
    checkExec(`read table ${NFT_TABLE}`, argv, r);
    return parseNftJson(r.stdout);
  }
}
