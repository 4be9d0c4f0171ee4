// The relay's admin actions: `agent kick ID [--reason TEXT]` and `agent sessions end SESSION
// [--reason TEXT]`. Clients of the relay's control socket (src/roles/api.ts RelayApi).
import type { RelayApi } from "../roles/api.ts";
import { defineAgentCommand, flag, str } from "./args.ts";
import { configArgs, configFromArgs, daemonClient } from "./common.ts";

const json = { type: "boolean", description: "print JSON" } as const;
const reason = { type: "string", valueHint: "text", description: "why, told to the peer(s) and written to the relay's log" } as const;

export const kickCommand = defineAgentCommand({
  meta: { name: "kick", description: "Close the live relay connection of an onsite device or a master, saying why (relay). Its sessions end; the device dials again after its backoff (to keep it out, revoke it)" },
  args: { ...configArgs, id: { type: "positional", valueHint: "id", description: "device or master id (see `agent devices`, `agent sessions`)" }, reason, json },
  runsOn: ["relay"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const kicked = await daemonClient<Required<RelayApi>>(ctx, cfg.control).call("kick", { id: str(args, "id") ?? "", reason: str(args, "reason") ?? null });
    if (flag(args, "json")) ctx.io.out(JSON.stringify(kicked, null, 2) + "\n");
    else for (const k of kicked) ctx.io.out(`kicked ${k.role} ${k.id} (${k.address}); ${k.sessions} session(s) ended\n`);
    return 0;
  },
});

export const sessionsEndCommand = defineAgentCommand({
  meta: { name: "end", description: "End any master's session on the relay; both sides hear why and the master does not resume it (relay)" },
  args: { ...configArgs, session: { type: "positional", valueHint: "session", description: "session id (see `agent sessions`)" }, reason, json },
  runsOn: ["relay"],
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const s = await daemonClient<Required<RelayApi>>(ctx, cfg.control).call("sessionsEnd", { session: str(args, "session") ?? "", reason: str(args, "reason") ?? null });
    ctx.io.out(flag(args, "json") ? JSON.stringify(s, null, 2) + "\n" : `session ${s.session} (${s.master} → ${s.onsite}) ended\n`);
    return 0;
  },
});
