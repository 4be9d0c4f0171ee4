// `agent services [ID] [--json]` (master, issue 15): the service catalogue, what each onsite
// device advertises ([[service]] in its config) merged with this master's own [[service]]
// entries, with what to open for each (a URL, a command) once a forward is up.
import { formatDuration, parseDuration } from "../duration.ts";
import { UsageError } from "../errors.ts";
import type { MasterGuiApi, ServiceEntry } from "../roles/api.ts";
import { MAX_SESSION_TTL } from "../transport/messages.ts";
import { formatTable } from "../table.ts";
import { defineAgentCommand, flag, str } from "./args.ts";
import { configArgs, configFromArgs, daemonClient } from "./common.ts";

/** The table `agent services` prints (pure). */
export function formatServices(list: readonly ServiceEntry[], onsite?: string): string {
  if (list.length === 0) {
    return onsite
      ? `no services listed for ${onsite}; add [[service]] tables to its config (or device = "${onsite}" entries to this master's)\n`
      : 'no services listed; an onsite device advertises [[service]] name = "…", target = "HOST:PORT", kind = "http" from its config\n';
  }
  let out = formatTable(
    ["DEVICE", "LOCATION", "NAME", "KIND", "TARGET", "FROM", "OPEN WITH"],
    list.map((s) => [s.device + (s.online ? "" : " (offline)"), s.location || "-", s.name, s.kind, s.target, s.source, s.offer.command ?? s.offer.url ?? "a forward"]),
  );
  out += `connect with: agent connect DEVICE --forward LPORT:TARGET, then open the above with {port} = LPORT\n`;
  return out;
}

export const servicesCommand = defineAgentCommand({
  meta: { name: "services", description: "The service catalogue: what the onsite devices advertise and this master's own [[service]] entries, with what to open for each (master)" },
  args: { ...configArgs, id: { type: "positional", valueHint: "id", description: "only this onsite device's services", required: false }, json: { type: "boolean", description: "print JSON" } },
  runsOn: ["master"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const onsite = str(args, "id");
    const list = await daemonClient<Required<MasterGuiApi>>(ctx, cfg.control).call("services", onsite ? { onsite } : {});
    ctx.io.out(flag(args, "json") ? JSON.stringify(list, null, 2) + "\n" : formatServices(list, onsite));
    return 0;
  },
});

/** `agent sessions extend SESSION --ttl D` (master): the session then ends D from now. */
export const sessionsExtendCommand = defineAgentCommand({
  meta: { name: "extend", description: "Move the end of a live session of this master: it then ends --ttl from now (the relay clamps to its longest TTL) (master)" },
  args: {
    ...configArgs,
    session: { type: "positional", valueHint: "session", description: "session id (see `agent sessions`)" },
    ttl: { type: "string", valueHint: "duration", description: "how long from now, e.g. 30m (1s to 7d)" },
    json: { type: "boolean", description: "print JSON" },
  },
  runsOn: ["master"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const session = str(args, "session");
    if (!session) throw new UsageError("`agent sessions extend` needs a session id", "`agent sessions` lists this master's sessions");
    const text = str(args, "ttl");
    if (text === undefined) throw new UsageError("`agent sessions extend` needs --ttl DURATION, e.g. --ttl 30m");
    let ttl: number;
    try {
      ttl = parseDuration(text);
    } catch (e) {
      throw new UsageError(`--ttl: ${(e as Error).message}`);
    }
    if (ttl < 1000) throw new UsageError("--ttl: at least 1s");
    if (ttl > MAX_SESSION_TTL) throw new UsageError(`--ttl: at most ${formatDuration(MAX_SESSION_TTL)}, got ${text}`, "a session lives at most that long from now");
    const v = await daemonClient<Required<MasterGuiApi>>(ctx, cfg.control).call("sessionsExtend", { session, ttl });
    ctx.io.out(flag(args, "json") ? JSON.stringify(v, null, 2) + "\n" : `session ${v.session} to ${v.onsite} now ends ${v.expires ?? "never"}\n`);
    return 0;
  },
});
