// `agent --role relay|onsite|master ...`: builds the config and runs the daemon of that role
// (composed in src/roles/) until a signal stops it.
import { requireForRole, type Role } from "../config.ts";
import { UsageError } from "../errors.ts";
import { createLogger } from "../log.ts";
import { bakedRole } from "../version.ts";
import { defineAgentCommand, type ParsedArgs } from "./args.ts";
import { configFromArgs, daemonArgs } from "./common.ts";

/** The daemon flags that mean something for some roles only. */
const FLAG_ROLES: Record<string, readonly Role[]> = {
  relay: ["onsite", "master"],
  proxy: ["onsite", "master"],
  listen: ["relay"],
  revocations: ["relay"],
  allow: ["onsite"],
  location: ["onsite"],
  gui: ["master"],
};

/**
 * One warning per flag given that does nothing for `role` (`--allow` on a master). Pure.
 * The config file's keys are checked by config.ts; these are the command line's.
 */
export function flagsIgnoredForRole(args: ParsedArgs, role: Role): string[] {
  const out: string[] = [];
  for (const [name, roles] of Object.entries(FLAG_ROLES)) {
    if (args[name] === undefined || roles.includes(role)) continue;
    out.push(`--${name} does nothing for ${role === "onsite" ? "an onsite device" : `a ${role}`} (it is for ${roles.join(" and ")}); ignored`);
  }
  return out;
}

export const daemonCommand = defineAgentCommand({
  meta: { name: "agent", description: "Edge remote-access agent. Without a command, runs the daemon of --role; SIGHUP reloads allow and log_level (and the relay's revocations)." },
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
    for (const w of flagsIgnoredForRole(args, role)) log.warn(w);
    const { runRole } = await import("../roles/daemon.ts");
    const operator = typeof args.operator === "string" ? args.operator : undefined;
    // SIGHUP reads the file and the same flags again (src/roles/daemon.ts Daemon.reload).
    return runRole(role, cfg, log, { operator, reloadConfig: () => configFromArgs(args) });
  },
});
