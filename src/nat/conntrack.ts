// Cuts the connections of an expired forward: removing the DNAT rule stops new flows only,
// the kernel keeps translating flows it already tracks. Deleting their conntrack entries
// makes the next packet of such a flow meet no rule, so it is reset.
import { formatIPv4, maskOf, parseCidr } from "../netaddr.ts";
import type { Exec } from "./backend.ts";
import type { Rule } from "./rule.ts";

/** The `conntrack -D` argv matching the flows a rule created. Pure. */
export function conntrackDeleteArgv(r: Pick<Rule, "proto" | "src" | "port" | "toAddr" | "toPort">, conntrack = "conntrack"): string[] {
  const src = parseCidr(r.src);
  const argv = [conntrack, "-D", "-p", r.proto, "-s", formatIPv4(src.network)];
  if (src.prefix < 32) argv.push("--mask-src", formatIPv4(maskOf(src.prefix)));
  argv.push("--orig-port-dst", String(r.port), "--reply-src", r.toAddr, "--reply-port-src", String(r.toPort));
  return argv;
}

export type FlowCutter = (r: Rule) => Promise<void>;

/**
 * Runs conntrack; "no entries" (exit 1 with "0 flow entries") is success. Any other failure
 * is returned as an Error for the caller to log: the rule is already gone either way.
 */
export function conntrackCutter(exec: Exec, conntrack = "conntrack"): FlowCutter {
  return async (r) => {
    const argv = conntrackDeleteArgv(r, conntrack);
    const res = await exec(argv);
    if (res.code === 0 || /0 flow entries/.test(res.stderr)) return;
    throw new Error(`${argv.join(" ")} exited ${res.code}: ${res.stderr.trim()}`);
  };
}
