// Cuts the connections of removed forwards: removing the DNAT rule stops new flows only, and
// a kernel may keep translating flows it already tracks. Deleting their conntrack entries
// makes the next packet of such a flow meet no rule, so it is reset. One `conntrack -L`
// finds which of the removed rules have flows at all, so flushing 1,000 idle rules costs one
// process, not 1,000; each rule with flows then gets one precise `conntrack -D`.
import { cidrContains, formatIPv4, maskOf, parseCidr, parseIPv4 } from "../netaddr.ts";
import type { Exec } from "./backend.ts";
import type { Rule } from "./rule.ts";

type FlowRule = Pick<Rule, "proto" | "src" | "port" | "toAddr" | "toPort">;

/** The `conntrack -D` argv matching the flows a rule created. Pure. */
export function conntrackDeleteArgv(r: FlowRule, conntrack = "conntrack"): string[] {
  const src = parseCidr(r.src);
  const argv = [conntrack, "-D", "-p", r.proto, "-s", formatIPv4(src.network)];
  if (src.prefix < 32) argv.push("--mask-src", formatIPv4(maskOf(src.prefix)));
  argv.push("--orig-port-dst", String(r.port), "--reply-src", r.toAddr, "--reply-port-src", String(r.toPort));
  return argv;
}

/** One tracked flow: original source and destination port, reply source and port. */
export interface Flow {
  proto: string;
  src: string;
  dport: number;
  replySrc: string;
  replySport: number;
}

/** Parses `conntrack -L` lines ("tcp 6 431999 ESTABLISHED src=.. dst=.. sport=.. dport=.. src=.. ..."). Pure. */
export function parseConntrackList(text: string): Flow[] {
  const flows: Flow[] = [];
  for (const line of text.split("\n")) {
    const proto = line.split(/\s+/, 1)[0];
    if (proto !== "tcp" && proto !== "udp") continue;
    const src = [...line.matchAll(/\bsrc=(\S+)/g)].map((m) => m[1]!);
    const sport = [...line.matchAll(/\bsport=(\d+)/g)].map((m) => Number(m[1]));
    const dport = [...line.matchAll(/\bdport=(\d+)/g)].map((m) => Number(m[1]));
    if (src.length < 2 || sport.length < 2 || dport.length < 1) continue;
    flows.push({ proto, src: src[0]!, dport: dport[0]!, replySrc: src[1]!, replySport: sport[1]! });
  }
  return flows;
}

/** Whether a flow went through a rule's forward. Pure. */
export function flowOf(r: FlowRule, f: Flow): boolean {
  if (f.proto !== r.proto || f.dport !== r.port || f.replySrc !== r.toAddr || f.replySport !== r.toPort) return false;
  try {
    return cidrContains(parseCidr(r.src), parseIPv4(f.src));
  } catch {
    return false;
  }
}

export type FlowCutter = (rules: readonly Rule[]) => Promise<void>;

/**
 * Deletes the tracked flows of `rules`. Failures are thrown as one Error for the caller to
 * log: the rules are already gone from the firewall either way.
 */
export function conntrackCutter(exec: Exec, conntrack = "conntrack"): FlowCutter {
  return async (rules) => {
    if (rules.length === 0) return;
    const list = await exec([conntrack, "-L"]);
    if (list.code !== 0) throw new Error(`${conntrack} -L exited ${list.code}: ${list.stderr.trim()}`);
    const flows = parseConntrackList(list.stdout);
    const hit = rules.filter((r) => flows.some((f) => flowOf(r, f)));
    const problems: string[] = [];
    for (const r of hit) {
      const argv = conntrackDeleteArgv(r, conntrack);
      const res = await exec(argv);
      // "0 flow entries" (exit 1): the flow ended on its own since the listing.
      if (res.code !== 0 && !/0 flow entries/.test(res.stderr)) problems.push(`${argv.join(" ")} exited ${res.code}: ${res.stderr.trim()}`);
    }
    if (problems.length) throw new Error(problems.join("; "));
  };
}
