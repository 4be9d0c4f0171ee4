// The kernel rules of one routed tunnel end, as pure renderings, and the thin adapter that
// loads and removes them. Each end owns its rules by name (names.ts): an nft table
// `agent_tun_<o|m><tag>` created and deleted as a whole, or, where nft is missing, iptables
// chains `AGT-TUN-<o|m><tag>-<F|I|M|N>` with one jump each from the built-in chains. Nothing
// else on the host is touched, and a sweep finds leftovers by these names alone.
//
// Onsite (routed): packets from the TUN reach only the allow list (CIDRs, with their ports
// when the entry has some), forwarded or to the device itself; the LAN cannot open
// connections into the tunnel (only answers go back); what goes out is masqueraded behind
// the device's LAN address, so the customer's router needs no route; TCP MSS is clamped to
// the path MTU both ways.
// Master (routed): what comes from the secondary interface (the technician's laptop) and
// leaves through the TUN is masqueraded behind the master's tunnel address, so the onsite end
// sees one address; the tunnel cannot open connections into the master's networks; MSS
// clamped.
import { formatCidr, type AllowEntry } from "../../netaddr.ts";
import { realExec, type Exec, type ExecResult } from "../../os/spawn.ts";
import { chainPrefix, isOwnedChain, isOwnedTable, tableName, type EndRole } from "./names.ts";

export type FirewallKind = "nft" | "iptables";

export interface OnsiteRules {
  role: "onsite";
  session: string;
  /** The TUN device. */
  dev: string;
  /** The onsite end's tunnel address without prefix, e.g. "10.99.0.2" (answers pings). */
  address: string;
  /** The tunnel's network, e.g. "10.99.0.0/30" (iptables: what to masquerade). */
  tunnelNet: string;
  allow: readonly AllowEntry[];
}

export interface MasterRules {
  role: "master";
  session: string;
  dev: string;
  /** The secondary interface whose traffic is masqueraded into the TUN. */
  secondary: string;
}

export type TunnelRules = OnsiteRules | MasterRules;

const q = (s: string) => JSON.stringify(s);

/** nft's match for one allow entry: its CIDR, and its ports when it has some. */
function nftAllowMatch(e: AllowEntry): string {
  const d = `ip daddr ${formatCidr(e.cidr)}`;
  if (e.ports.length === 0) return d;
  const ports = e.ports.map((r) => (r.from === r.to ? `${r.from}` : `${r.from}-${r.to}`)).join(", ");
  return `${d} meta l4proto { tcp, udp } th dport { ${ports} }`;
}

/** The nft script (for `nft -f -`) that creates the end's table. */
export function renderNft(r: TunnelRules): string {
  const t = tableName(r.role, r.session);
  const dev = q(r.dev);
  const clamp = [`    iifname ${dev} tcp flags syn tcp option maxseg size set rt mtu`, `    oifname ${dev} tcp flags syn tcp option maxseg size set rt mtu`];
  const lines = [`table inet ${t} {`, `  chain forward {`, `    type filter hook forward priority -300; policy accept;`, ...clamp];
  if (r.role === "onsite") {
    for (const e of r.allow) lines.push(`    iifname ${dev} ${nftAllowMatch(e)} accept`);
    lines.push(
      `    iifname ${dev} counter drop`,
      `    oifname ${dev} ct state established,related accept`,
      `    oifname ${dev} counter drop`,
      `  }`,
      `  chain input {`,
      `    type filter hook input priority -300; policy accept;`,
      `    iifname ${dev} ct state established,related accept`,
      `    iifname ${dev} ip daddr ${r.address} icmp type echo-request accept`,
    );
    for (const e of r.allow) lines.push(`    iifname ${dev} ${nftAllowMatch(e)} accept`);
    lines.push(
      `    iifname ${dev} counter drop`,
      `  }`,
      `  chain postrouting {`,
      `    type nat hook postrouting priority 100; policy accept;`,
      `    iifname ${dev} oifname != ${dev} masquerade`,
      `  }`,
    );
  } else {
    lines.push(
      `    iifname ${dev} ct state established,related accept`,
      `    iifname ${dev} counter drop`,
      `  }`,
      `  chain postrouting {`,
      `    type nat hook postrouting priority 100; policy accept;`,
      `    iifname ${q(r.secondary)} oifname ${dev} masquerade`,
      `  }`,
    );
  }
  lines.push(`}`, "");
  return lines.join("\n");
}

/** iptables' match for one allow entry: one rule per protocol and port range when it has ports. */
function iptAllowRules(chain: string, dev: string, e: AllowEntry): string[] {
  const d = `-A ${chain} -i ${dev} -d ${formatCidr(e.cidr)}`;
  if (e.ports.length === 0) return [`${d} -j ACCEPT`];
  const out: string[] = [];
  for (const p of ["tcp", "udp"]) for (const r of e.ports) out.push(`${d} -p ${p} -m ${p} --dport ${r.from === r.to ? r.from : `${r.from}:${r.to}`} -j ACCEPT`);
  return out;
}

/** The chains of the iptables fallback, and the built-in chain each is jumped to from. */
export function iptablesChains(r: TunnelRules): { table: "filter" | "mangle" | "nat"; chain: string; from: string }[] {
  const p = chainPrefix(r.role, r.session);
  const out: { table: "filter" | "mangle" | "nat"; chain: string; from: string }[] = [
    { table: "filter", chain: `${p}-F`, from: "FORWARD" },
    { table: "mangle", chain: `${p}-M`, from: "FORWARD" },
    { table: "nat", chain: `${p}-N`, from: "POSTROUTING" },
  ];
  if (r.role === "onsite") out.splice(1, 0, { table: "filter", chain: `${p}-I`, from: "INPUT" });
  return out;
}

/** The `iptables-restore --noflush` script that creates the chains and their jumps. */
export function renderIptablesRestore(r: TunnelRules): string {
  const chains = iptablesChains(r);
  const c = (t: string, suffix: string) => chains.find((x) => x.table === t && x.chain.endsWith(suffix))!.chain;
  const dev = r.dev;
  const filter: string[] = [];
  const F = c("filter", "-F");
  if (r.role === "onsite") {
    const I = c("filter", "-I");
    for (const e of r.allow) filter.push(...iptAllowRules(F, dev, e));
    filter.push(
      `-A ${F} -i ${dev} -j DROP`,
      `-A ${F} -o ${dev} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
      `-A ${F} -o ${dev} -j DROP`,
      `-A ${I} -i ${dev} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`,
      `-A ${I} -i ${dev} -d ${r.address}/32 -p icmp -m icmp --icmp-type echo-request -j ACCEPT`,
    );
    for (const e of r.allow) filter.push(...iptAllowRules(I, dev, e));
    filter.push(`-A ${I} -i ${dev} -j DROP`);
  } else {
    filter.push(`-A ${F} -i ${dev} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`, `-A ${F} -i ${dev} -j DROP`);
  }
  const M = c("mangle", "-M");
  const N = c("nat", "-N");
  // POSTROUTING cannot match the incoming interface: the onsite end masquerades by the
  // tunnel's source network, the master by the outgoing TUN (only the laptop's traffic is forwarded into it).
  const nat = r.role === "onsite" ? `-A ${N} -s ${r.tunnelNet} ! -o ${dev} -j MASQUERADE` : `-A ${N} -o ${dev} -j MASQUERADE`;
  const section = (table: string, body: string[]) => {
    const mine = chains.filter((x) => x.table === table);
    return [`*${table}`, ...mine.map((x) => `:${x.chain} - [0:0]`), ...body, ...mine.map((x) => `-I ${x.from} 1 -j ${x.chain}`), "COMMIT"];
  };
  return [
    ...section("filter", filter),
    ...section("mangle", [`-A ${M} -i ${dev} -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu`, `-A ${M} -o ${dev} -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu`]),
    ...section("nat", [nat]),
    "",
  ].join("\n");
}

/** The iptables commands (argv) that remove chains of this role: the jumps, then flush and delete. */
export function iptablesRemoval(chains: readonly { table: string; chain: string; from: string }[]): string[][] {
  const out: string[][] = [];
  for (const x of chains) out.push(["iptables", "-w", "-t", x.table, "-D", x.from, "-j", x.chain]);
  for (const x of chains) out.push(["iptables", "-w", "-t", x.table, "-F", x.chain], ["iptables", "-w", "-t", x.table, "-X", x.chain]);
  return out;
}

/** This role's chains in an `iptables-save` dump, with the built-in chains that jump to them. */
export function ownedChainsInSave(role: EndRole, save: string): { table: string; chain: string; from: string }[] {
  const out: { table: string; chain: string; from: string }[] = [];
  let table = "";
  for (const line of save.split("\n")) {
    const t = /^\*(\w+)/.exec(line);
    if (t) {
      table = t[1]!;
      continue;
    }
    const decl = /^:(\S+) /.exec(line);
    if (decl && isOwnedChain(role, decl[1]!) && !out.some((x) => x.table === table && x.chain === decl[1])) out.push({ table, chain: decl[1]!, from: "" });
    const jump = /^-A (\S+) -j (\S+)$/.exec(line.trim());
    if (jump && isOwnedChain(role, jump[2]!)) {
      const found = out.find((x) => x.table === table && x.chain === jump[2]);
      if (found) found.from = jump[1]!;
      else out.push({ table, chain: jump[2]!, from: jump[1]! });
    }
  }
  return out;
}

/** This role's tables in `nft list tables` output ("table inet agent_tun_o1a2b3c4d" lines). */
export function ownedTablesInList(role: EndRole, list: string): string[] {
  return [...list.matchAll(/^table inet (\S+)$/gm)].map((m) => m[1]!).filter((n) => isOwnedTable(role, n));
}

/** A firewall command failed. */
export class TunnelFirewallError extends Error {
  override name = "TunnelFirewallError";
}

function check(what: string, argv: readonly string[], r: ExecResult): void {
  if (r.code !== 0) throw new TunnelFirewallError(`${what}: ${argv.join(" ")} exited ${r.code}: ${(r.stderr || r.stdout).trim().split("\n").slice(0, 3).join("; ")}`);
}

/** Loads and removes one end's rules; `sweep` removes every leftover of a role by name. */
export interface TunnelFirewall {
  readonly kind: FirewallKind;
  apply(r: TunnelRules): Promise<void>;
  remove(r: TunnelRules): Promise<void>;
  sweep(role: EndRole): Promise<string[]>;
}

export class NftTunnelFirewall implements TunnelFirewall {
  readonly kind = "nft" as const;
  constructor(private readonly exec: Exec = realExec) {}

  async apply(r: TunnelRules): Promise<void> {
    const t = tableName(r.role, r.session);
    // Delete a table of the same name first (a crash between creating and recording it):
    // `nft -f` with both in one script is one transaction.
    const have = await this.exec(["nft", "list", "tables"]);
    const pre = ownedTablesInList(r.role, have.stdout).includes(t) ? `delete table inet ${t}\n` : "";
    const argv = ["nft", "-f", "-"];
    check(`loading ${t}`, argv, await this.exec(argv, { stdin: pre + renderNft(r) }));
  }

  async remove(r: TunnelRules): Promise<void> {
    const t = tableName(r.role, r.session);
    const argv = ["nft", "delete", "table", "inet", t];
    const res = await this.exec(argv);
    if (res.code !== 0 && !/No such file or directory/.test(res.stderr)) check(`removing ${t}`, argv, res);
  }

  async sweep(role: EndRole): Promise<string[]> {
    const list = await this.exec(["nft", "list", "tables"]);
    check("listing nft tables", ["nft", "list", "tables"], list);
    const gone: string[] = [];
    for (const t of ownedTablesInList(role, list.stdout)) {
      const argv = ["nft", "delete", "table", "inet", t];
      check(`removing ${t}`, argv, await this.exec(argv));
      gone.push(`nft table inet ${t}`);
    }
    return gone;
  }
}

export class IptablesTunnelFirewall implements TunnelFirewall {
  readonly kind = "iptables" as const;
  constructor(private readonly exec: Exec = realExec) {}

  async apply(r: TunnelRules): Promise<void> {
    await this.remove(r);
    const argv = ["iptables-restore", "-w", "--noflush"];
    check(`loading ${chainPrefix(r.role, r.session)}`, argv, await this.exec(argv, { stdin: renderIptablesRestore(r) }));
  }

  async remove(r: TunnelRules): Promise<void> {
    // Tolerant: a chain that is not there (never made, or already gone) is what we want.
    for (const argv of iptablesRemoval(iptablesChains(r))) await this.exec(argv);
  }

  async sweep(role: EndRole): Promise<string[]> {
    const save = await this.exec(["iptables-save"]);
    check("reading iptables", ["iptables-save"], save);
    const chains = ownedChainsInSave(role, save.stdout);
    for (const argv of iptablesRemoval(chains.filter((c) => c.from !== ""))) await this.exec(argv);
    for (const c of chains.filter((x) => x.from === "")) {
      await this.exec(["iptables", "-w", "-t", c.table, "-F", c.chain]);
      await this.exec(["iptables", "-w", "-t", c.table, "-X", c.chain]);
    }
    return chains.map((c) => `iptables chain ${c.table}/${c.chain}`);
  }
}

/**
 * The backend as `[nat] backend = "auto"` picks it (src/doctor.ts autoNatBackend): nft where
 * it exists, iptables where only it (with iptables-restore) does. Pure over what was found.
 */
export function pickFirewall(found: { nft: boolean; iptables: boolean; iptablesRestore: boolean }): FirewallKind | undefined {
  if (found.nft) return "nft";
  if (found.iptables && found.iptablesRestore) return "iptables";
  return undefined;
}

/** The firewall of this host, or an error naming what to install. */
export function hostFirewall(exec: Exec = realExec, which: (t: string) => boolean = (t) => Bun.which(t, { PATH: `${process.env.PATH ?? ""}:/usr/sbin:/sbin` }) !== null, prefer?: FirewallKind): TunnelFirewall {
  const kind = prefer ?? pickFirewall({ nft: which("nft"), iptables: which("iptables"), iptablesRestore: which("iptables-restore") });
  if (kind === "nft") return new NftTunnelFirewall(exec);
  if (kind === "iptables") return new IptablesTunnelFirewall(exec);
  throw new TunnelFirewallError("routed tunnels need nft or iptables (with iptables-restore) to enforce the allow list; install nftables or iptables");
}

/** The firewall a sweep looks at, or undefined when this host has none (no nft, no iptables). */
export function firewallIfAny(make: () => TunnelFirewall): TunnelFirewall | undefined {
  try {
    return make();
  } catch {
    return undefined;
  }
}
