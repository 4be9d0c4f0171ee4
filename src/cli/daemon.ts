// `agent --role relay|onsite|master ...`: builds the config and runs the daemon of that role
// (composed in src/roles/) until a signal stops it.
import { requireForRole, type Role } from "../config.ts";
import { UsageError } from "../errors.ts";
import { createLogger } from "../log.ts";
import { bakedRole } from "../version.ts";
import { defineAgentCommand } from "./args.ts";
import { configFromArgs, daemonArgs } from "./common.ts";

export const daemonCommand = defineAgentCommand({
  meta: { name: "agent", description: "Edge remote-access agent. Without a command, runs the daemon of --role." },
  args: daemonArgs,
  repeatable: ["allow"],
  async exec(args) {
    const cfg = await configFromArgs(args);
    const role = (cfg.role ?? bakedRole()) as Role | undefined;
    if (!role) {
      throw new UsageError("no role given", "run `agent --role relay|onsite|master ...`, or a command such as `agent status` (see `agent --help`)");
    }
    requireForRole(cfg, role);
    const log = createLogger({ level: cfg.log_level, json: cfg.json_logs });
    const { runRole } = await import("../roles/daemon.ts");
    return runRole(role, cfg, log);
  },
});
