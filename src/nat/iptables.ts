// iptables backend. The agent owns two chains: AGENT-NAT in the nat table (DNAT, jumped to
// from PREROUTING) and AGENT-FWD in the filter table (ACCEPT for the DNATed flow, jumped to
// from FORWARD). An apply rewrites both chains in one `iptables-restore --noflush -w` run:
// declaring a chain in the input flushes only that chain, so every other chain and rule
// is left as it was; then `iptables-save` is read back to check the rules are there.
import { checkExec, expectedTags, FirewallError, verifyTags, type Exec, type FirewallBackend } from "./backend.ts";
import type { InstalledRule } from "./plan.ts";
import { END_TAG_PREFIX, kernelExpiryS, parseTag, ruleTag, TAG_PREFIX, type Rule } from "./rule.ts";

export const NAT_CHAIN = "AGENT-NAT";
export const FWD_CHAIN = "AGENT-FWD";
/** Seconds iptables waits for the xtables lock held by another program. */
export const XTABLES_WAIT_S = "5";

export interface IptablesCommands {
  iptables: string;
  restore: string;
  save: string;
}

export const DEFAULT_IPTABLES: IptablesCommands = { iptables: "iptables", restore: "iptables-restore", save: "iptables-save" };

/**
 * The time-match argument for the last second a rule may match: `-m time` compares the
 * packet's time in whole UTC seconds (no --kerneltz) and --datestop is inclusive, so a rule
 * ending at second E matches up to E-1 and its end guard (--datestart E) from E on. Pure.
 */
export function utcStamp(epochS: number): string {
  return new Date(epochS * 1000).toISOString().slice(0, 19);
}

/**
 * The restore input that makes the agent's chains hold exactly `rules`. Pure.
 *
 * Each rule is three lines, all carrying its expiry, so the kernel ends it on its own when
 * no agent is left to (kill -9, a crash, a power cut mid-upgrade):
 * - the DNAT, matching until the expiry (new connections after it are not forwarded);
 * - the forward ACCEPT, per packet of the DNATed flow, until the expiry;
 * - the end guard: from the expiry on, a DROP of that flow in both directions (matched by
 *   its conntrack tuple), so an open connection stops too even where FORWARD accepts
 *   everything. The agent's next apply removes all three.
 */
export function renderRestore(rules: readonly Rule[]): string {
  const nat = [`*nat`, `:${NAT_CHAIN} - [0:0]`];
  const filter = [`*filter`, `:${FWD_CHAIN} - [0:0]`];
  const guards: string[] = [];
  for (const r of rules) {
    const tag = `-m comment --comment "${ruleTag(r)}"`;
    const iface = r.iface ? ` -i ${r.iface}` : "";
    const end = kernelExpiryS(r);
    const until = `-m time --datestop ${utcStamp(end - 1)}`;
    nat.push(`-A ${NAT_CHAIN} -s ${r.src}${iface} -p ${r.proto} -m ${r.proto} --dport ${r.port} ${until} ${tag} -j DNAT --to-destination ${r.toAddr}:${r.toPort}`);
    filter.push(`-A ${FWD_CHAIN} -s ${r.src}${iface} -d ${r.toAddr}/32 -p ${r.proto} -m ${r.proto} --dport ${r.toPort} -m conntrack --ctstate DNAT ${until} ${tag} -j ACCEPT`);
    guards.push(
      `-A ${FWD_CHAIN} -m conntrack --ctstate DNAT --ctproto ${r.proto} --ctorigsrc ${r.src} --ctorigdstport ${r.port} --ctreplsrc ${r.toAddr} --ctreplsrcport ${r.toPort} -m time --datestart ${utcStamp(end)} -m comment --comment "${ruleTag(r, END_TAG_PREFIX)}" -j DROP`,
    );
  }
  // The guards after every accept: one rule's guard never shadows another rule's live flow.
  return [...nat, "COMMIT", ...filter, ...guards, "COMMIT", ""].join("\n");
}

/** Tagged rules in `chain` from `iptables-save` output. Pure. */
export function parseSave(text: string, chain: string, prefix: string = TAG_PREFIX): InstalledRule[] {
  const out: InstalledRule[] = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(`-A ${chain} `)) continue;
    const m = /--comment (?:"([^"]*)"|(\S+))/.exec(line);
    const tag = m ? parseTag(m[1] ?? m[2]!, prefix) : undefined;
    if (tag) out.push(tag);
  }
  return out;
}

export class IptablesBackend implements FirewallBackend {
  readonly name = "iptables";

  constructor(
    private readonly exec: Exec,
    private readonly cmd: IptablesCommands = DEFAULT_IPTABLES,
  ) {}

  async apply(rules: readonly Rule[]): Promise<void> {
    const restore = [this.cmd.restore, "--noflush", "-w", XTABLES_WAIT_S];
    checkExec("apply NAT rules", restore, await this.exec(restore, { stdin: renderRestore(rules) }));
    // The two tables are independent: check them side by side (each step is a process).
    await Promise.all([this.ensureJump("nat", "PREROUTING", NAT_CHAIN), this.ensureJump("filter", "FORWARD", FWD_CHAIN)]);
    const expected = expectedTags(rules);
    const [nat, filterText] = await Promise.all([this.read("nat", NAT_CHAIN), this.saveText("filter")]);
    verifyTags(`nat ${NAT_CHAIN}`, expected, nat);
    verifyTags(`filter ${FWD_CHAIN}`, expected, parseSave(filterText, FWD_CHAIN));
    verifyTags(`filter ${FWD_CHAIN} end guards`, expected, parseSave(filterText, FWD_CHAIN, END_TAG_PREFIX));
  }

  async list(): Promise<InstalledRule[]> {
    const seen = new Map<string, InstalledRule>();
    for (const r of [...(await this.read("nat", NAT_CHAIN)), ...(await this.read("filter", FWD_CHAIN))]) seen.set(r.id, r);
    return [...seen.values()];
  }

  async teardown(): Promise<void> {
    for (const [table, from, chain] of [["nat", "PREROUTING", NAT_CHAIN], ["filter", "FORWARD", FWD_CHAIN]] as const) {
      // A jump may have been added twice by hand; remove every copy, bounded.
      for (let i = 0; i < 16; i++) {
        const r = await this.exec([this.cmd.iptables, "-w", XTABLES_WAIT_S, "-t", table, "-D", from, "-j", chain]);
        if (r.code !== 0) break;
      }
      const exists = await this.exec([this.cmd.iptables, "-w", XTABLES_WAIT_S, "-t", table, "-n", "-L", chain]);
      if (exists.code !== 0) continue;
      for (const op of ["-F", "-X"]) {
        const argv = [this.cmd.iptables, "-w", XTABLES_WAIT_S, "-t", table, op, chain];
        checkExec(`remove chain ${chain}`, argv, await this.exec(argv));
      }
    }
  }

  private async read(table: string, chain: string): Promise<InstalledRule[]> {
    return parseSave(await this.saveText(table), chain);
  }

  private async saveText(table: string): Promise<string> {
    const argv = [this.cmd.save, "-t", table];
    const r = await this.exec(argv);
    checkExec(`read ${table} table`, argv, r);
    return r.stdout;
  }

  private async ensureJump(table: string, from: string, chain: string): Promise<void> {
    const check = [this.cmd.iptables, "-w", XTABLES_WAIT_S, "-t", table, "-C", from, "-j", chain];
    const c = await this.exec(check);
    if (c.code === 0) return;
    if (c.code !== 1) checkExec(`check jump to ${chain}`, check, c);
    // First in the chain: a foreign ACCEPT or DNAT earlier in PREROUTING must not shadow it.
    const insert = [this.cmd.iptables, "-w", XTABLES_WAIT_S, "-t", table, "-I", from, "1", "-j", chain];
    checkExec(`add jump to ${chain}`, insert, await this.exec(insert));
    const again = await this.exec(check);
    if (again.code !== 0) throw new FirewallError(`jump from ${from} to ${chain} is missing right after adding it`);
  }
}
