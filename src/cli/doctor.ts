// `agent doctor [--role R] [--json] [--state-dir DIR] [--listen HOST:PORT] [--config FILE]`:
// gathers host facts, evaluates them for the role(s) and prints the table or JSON.
// state_dir and listen come from the config file when it sets them; flags win.
import { ConfigError, DEFAULT_CONFIG_FILE, DEFAULT_STATE_DIR, formatProblem, loadConfigFile, resolveConfig, ROLES, type ConfigSource, type Role } from "../config.ts";
import { evaluate, formatReport, gatherConfigFacts, gatherFacts, type DoctorRole } from "../doctor.ts";
import { EXIT_OK, EXIT_RUNTIME } from "../errors.ts";
import { defineAgentCommand, flag, str } from "./args.ts";
import { flagsToRaw } from "./common.ts";

// Exit 0 when every required check for the chosen role(s) passes, 1 when one is missing;
// optional features (AP fallback, cellular, conntrack) never fail it. Changes nothing on the
// host: the state dir is checked, never created. With a config file (--config FILE, or the
// default one when it exists) it is also "test my config" (like nginx -t): every problem in
// the file, the bundle, the relay's reachability, the listen address, the revocation list and
// the interfaces it names, each with its fix.
export const doctorCommand = defineAgentCommand({
  meta: {
    name: "doctor",
    description: "Check this host and the config file for the role and print the fix for each problem (exit 1 if a required one fails); `agent doctor --config FILE` tests a config",
  },
  args: {
    role: { type: "enum", options: ["all", "relay", "onsite", "master"], description: "check only what this role needs (default: the config file's role, else all)" },
    json: { type: "boolean", description: 'print JSON: {"host", "role", "checks", "ok"}' },
    "state-dir": { type: "string", valueHint: "dir", description: `state dir to check (default: config file's state_dir, else ${DEFAULT_STATE_DIR})` },
    listen: { type: "string", valueHint: "host:port", description: "relay listen address; a port below 1024 needs CAP_NET_BIND_SERVICE" },
    config: { type: "string", valueHint: "file", description: `TOML config file to test (default ${DEFAULT_CONFIG_FILE} if it exists)` },
  },
  async exec(args, { io }) {
    // doctor's --role ("all" too) is not the daemon's role, so it stays out of the config.
    // A bad flag is a UsageError (exit 2); a broken config file is a failed check (exit 1).
    const path = str(args, "config");
    const file = await loadConfigFile(path ?? DEFAULT_CONFIG_FILE, path !== undefined).catch((e) => {
      if (e instanceof ConfigError) return e; // a TOML syntax error
      throw e;
    });
    const flags: ConfigSource = { origin: { kind: "flag" }, raw: flagsToRaw({ ...args, role: undefined }) };
    let fileProblems: string[] | undefined = file instanceof ConfigError ? file.problems.map(formatProblem) : undefined;
    let cfg;
    try {
      cfg = resolveConfig(file && !(file instanceof ConfigError) ? [file, flags] : [flags]);
    } catch (e) {
      if (!(e instanceof ConfigError) || e.problems.some((p) => p.origin.kind !== "file")) throw e;
      fileProblems = e.problems.map(formatProblem);
      cfg = resolveConfig([flags]);
    }
    // A broken file still names its role, most of the time.
    const rawRole = file && !(file instanceof ConfigError) ? file.raw.role : undefined;
    const fileRole = cfg.role ?? (typeof rawRole === "string" && (ROLES as readonly string[]).includes(rawRole) ? (rawRole as Role) : undefined);
    const role = (str(args, "role") ?? fileRole ?? "all") as DoctorRole;
    const facts = gatherFacts({ stateDir: cfg.state_dir });
    // Without a config file the flags still name a state dir (the relay's default revocation
    // list) and perhaps a listen address.
    const where = file ? (path ?? DEFAULT_CONFIG_FILE) : undefined;
    facts.config = fileProblems
      ? { file: where!, problems: fileProblems, now: Date.now(), bundle: null, relay: null, listen: null, revocations: { path: "", configured: false, exists: false }, interfaces: [] }
      : await gatherConfigFacts(cfg, where !== undefined ? { file: where } : {});
    const report = evaluate(facts, role, { ...(cfg.listen ? { listenPort: cfg.listen.port } : {}), tunnels: cfg.tunnel.enabled });
    io.out(flag(args, "json") ? JSON.stringify(report, null, 2) + "\n" : formatReport(report));
    return report.ok ? EXIT_OK : EXIT_RUNTIME;
  },
});
