// `agent nat add|list|del|flush`: timed DNAT rules on the running onsite daemon, over its
// control socket. Parsing and printing only; the daemon validates and applies.
import { formatDuration } from "../duration.ts";
import type { RuleView } from "../nat/service.ts";
import type { LocalNatAddRequest, MasterApi, MasterNatAddRequest, MasterNatListing, NatListing, OnsiteApi } from "../roles/api.ts";
import { formatTable } from "../table.ts";
import { UsageError } from "../errors.ts";
import { defineAgentCommand, flag, line, str } from "./args.ts";
import { configArgs, configFromArgs, daemonClient } from "./common.ts";

/** --json output: pretty, as every other command's. */
const pretty = (v: unknown) => JSON.stringify(v, null, 2) + "\n";

const jsonArg = { json: { type: "boolean", description: "print JSON" } } as const;

/** Whole seconds left, rounded up: a rule with 200 ms left still shows 1s. */
function left(ms: number): string {
  return formatDuration(Math.ceil(ms / 1000) * 1000);
}

function describeRule(r: RuleView): string {
  return `${r.proto} ${r.src}${r.iface ? ` on ${r.iface}` : ""} → port ${r.port} → ${r.to}`;
}

const add = defineAgentCommand({
  meta: { name: "add", description: "Forward a public port to a LAN target for one source, for a limited time" },
  args: {
    ...configArgs,
    src: { type: "string", valueHint: "ip[/len]", description: "the only source address (or CIDR) allowed through (on the onsite daemon)" },
    session: { type: "string", valueHint: "session", description: "on a master: ask the session's onsite device; the source is then this master's public address" },
    port: { type: "string", required: true, valueHint: "n", description: "public port on this device, 1-65535" },
    to: { type: "string", required: true, valueHint: "host:port", description: "LAN target, inside the allow list" },
    proto: { type: "enum", options: ["tcp", "udp"], description: "protocol (default tcp)" },
    ttl: { type: "string", required: true, valueHint: "duration", description: "how long the rule lives, e.g. 30s, 15m, 2h (nat.min_ttl..nat.max_ttl)" },
    iface: { type: "string", valueHint: "name", description: "only for packets arriving on this interface" },
    ...jsonArg,
  },
  runsOn: ["onsite", "master"],
  async exec(args, ctx) {
    const session = str(args, "session");
    if ((session === undefined) === (str(args, "src") === undefined)) {
      throw new UsageError("agent nat add needs exactly one of --src (on the onsite daemon) and --session (on a master)", "see `agent nat add --help`");
    }
    const cfg = await configFromArgs(args);
    // Required flags: parseStrict has made sure they are there.
    const common = { port: str(args, "port")!, to: str(args, "to")!, ttl: str(args, "ttl")!, proto: (str(args, "proto") ?? "tcp") as "tcp" | "udp" };
    const iface = str(args, "iface");
    const req: MasterNatAddRequest | LocalNatAddRequest = session !== undefined ? { ...common, session } : { ...common, src: str(args, "src")! };
    if (iface !== undefined) req.iface = iface;
    const res = await daemonClient<MasterApi | OnsiteApi>(ctx, cfg.control).call("natAdd", req);
    if (flag(args, "json")) ctx.io.out(pretty(res));
    else ctx.io.out(line(`${res.created ? "added" : "extended"} rule ${res.rule.id}: ${describeRule(res.rule)}, expires in ${left(res.rule.remaining_ms)} (${res.rule.expires})`));
    // Applied but not working (IPv4 forwarding off): said on stderr, the exit stays 0.
    if (res.warning) ctx.io.err(line(`warning: ${res.warning}`));
    // A master's rule lives no longer than its session: said when the TTL was cut to fit.
    if (res.capped) ctx.io.err(line(`note: ${res.capped}`));
    return 0;
  },
});

export function formatNatListing(res: NatListing | MasterNatListing): string {
  if (res.backend === "master") {
    // A master's timed-access grants (src/roles/master-grants.ts): the rules it asked its sessions' devices for.
    const rules = (res as MasterNatListing).rules;
    if (rules.length === 0) return "no timed-access grants on this master (agent nat add --session S ... makes one)\n";
    const rows = rules.map((r) => [r.id, r.onsite, r.proto, r.src, String(r.port), r.to, r.state === "expired" ? "expired" : left(r.remaining_ms), r.owner, r.label]);
    return formatTable(["ID", "DEVICE", "PROTO", "SOURCE", "PORT", "TO", "LEFT", "SESSION", "FOR"], rows);
  }
  if (res.rules.length === 0) return `no active rules (backend ${res.backend})\n`;
  const rows = res.rules.map((r) => [r.id, r.proto, r.src, r.iface ?? "*", String(r.port), r.to, left(r.remaining_ms), r.owner]);
  return formatTable(["ID", "PROTO", "SOURCE", "IN", "PORT", "TO", "LEFT", "OWNER"], rows);
}

const list = defineAgentCommand({
  meta: { name: "list", description: "Show the active NAT rules with the time each has left (on a master: its timed-access grants)" },
  args: { ...configArgs, ...jsonArg },
  runsOn: ["onsite", "master"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const res: NatListing | MasterNatListing = await daemonClient<OnsiteApi>(ctx, cfg.control).call("natList");
    ctx.io.out(flag(args, "json") ? pretty(res) : formatNatListing(res));
    return 0;
  },
});

const del = defineAgentCommand({
  meta: { name: "del", description: "Remove one rule now and cut its open connections (on a master: revoke a grant on its device)" },
  args: { ...configArgs, id: { type: "positional", valueHint: "ID", description: "rule id from `agent nat list`" }, ...jsonArg },
  runsOn: ["onsite", "master"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const r = await daemonClient<OnsiteApi>(ctx, cfg.control).call("natDel", { id: str(args, "id")! });
    ctx.io.out(line(flag(args, "json") ? JSON.stringify(r, null, 2) : `deleted rule ${r.id}: ${describeRule(r)}`));
    return 0;
  },
});

const flush = defineAgentCommand({
  meta: { name: "flush", description: "Remove every rule the agent added (other firewall rules are left alone)" },
  args: { ...configArgs, ...jsonArg },
  runsOn: ["onsite"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const r = await daemonClient<OnsiteApi>(ctx, cfg.control).call("natFlush");
    ctx.io.out(line(flag(args, "json") ? JSON.stringify(r, null, 2) : `removed ${r.removed} rule(s)`));
    return 0;
  },
});

export const natCommand = defineAgentCommand({
  meta: { name: "nat", description: "Timed port forwards (DNAT) on the onsite daemon: add, list, del, flush" },
  subCommands: { add, list, del, flush },
});
