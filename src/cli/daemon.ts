// `agent --role relay|onsite|master ...`: builds the config and runs the daemon of that role
// (composed in src/roles/) until a signal stops it.
import { ignoredForRole, requireForRole, resolveConfig, type Role } from "../config.ts";
import { UsageError } from "../errors.ts";
import { createLogger } from "../log.ts";
import { bakedRole } from "../version.ts";
import { defineAgentCommand, type ParsedArgs } from "./args.ts";
import { configFromArgs, configSources, daemonArgs, flagsToRaw } from "./common.ts";

/**
 * One warning per flag given that does nothing for `role` (`--allow` on a master). Pure. The
 * same table (config.ts ignoredForRole) judges the config file's keys.
 */
export function flagsIgnoredForRole(args: ParsedArgs, role: Role): string[] {
  return ignoredForRole([{ origin: { kind: "flag" }, raw: flagsToRaw(args) }], role);
}

export const daemonCommand = defineAgentCommand({
  meta: { name: "agent", description: "Edge remote-access agent. Without a command, runs the daemon of --role; SIGHUP reloads allow and log_level (and the relay's revocations)." },
  args: daemonArgs,
  repeatable: ["allow"],
  async exec(args) {
    const sources = await configSources(args);
    const cfg = resolveConfig(sources);
    const role = (cfg.role ?? bakedRole()) as Role | undefined;
    if (!role) {
      throw new UsageError("no role given", "run `agent --role relay|onsite|master ...`, or a command such as `agent status` (see `agent --help`)");
    }
    requireForRole(cfg, role);
    const log = createLogger({ level: cfg.log_level, json: cfg.json_logs });
    // What the file or the flags set that this role does not use: said once, at start.
    for (const w of ignoredForRole(sources, role)) log.warn(w);
    for (const w of sources.flatMap((s) => s.warnings ?? [])) log.warn(w);
    const { runRole } = await import("../roles/daemon.ts");
    // SIGHUP reads the file and the same flags again (src/roles/daemon.ts Daemon.reload).
    return runRole(role, cfg, log, { operator: cfg.operator, reloadConfig: () => configFromArgs(args) });
  },
});
