// `agent status [--json]`: asks the running daemon over its control socket.
import type { DaemonApi } from "../roles/api.ts";
import { formatDuration } from "../duration.ts";
import { formatPairs } from "../table.ts";
import { defineAgentCommand, flag } from "./args.ts";
import { configArgs, configFromArgs, daemonClient } from "./common.ts";

export const statusCommand = defineAgentCommand({
  meta: { name: "status", description: "Show the running daemon's role, id, version, uptime and pid" },
  args: { ...configArgs, json: { type: "boolean", description: "print JSON" } },
  async exec(args, ctx) {
    const cfg = await configFromArgs(args);
    const s = await daemonClient<DaemonApi>(ctx, cfg.control).call("status");
    if (flag(args, "json")) {
      ctx.io.out(JSON.stringify(s, null, 2) + "\n");
      return 0;
    }
    const rows: [string, string][] = [
      ["role", s.role],
      ["id", s.id],
      ["version", `${s.version} (commit ${s.commit}, ${s.target})`],
      ["pid", String(s.pid)],
      ["uptime", `${formatDuration(s.uptime_s * 1000)} (since ${s.started})`],
      ["control", s.control],
      ["state dir", s.state_dir],
    ];
    ctx.io.out(formatPairs(rows));
    return 0;
  },
});
