// `agent doctor [--role R] [--json] [--state-dir DIR] [--listen HOST:PORT] [--config FILE]`:
// gathers host facts, evaluates them for the role(s) and prints the table or JSON.
// state_dir and listen come from the config file when it sets them; flags win.
import { DEFAULT_CONFIG_FILE, DEFAULT_STATE_DIR } from "../config.ts";
import { evaluate, formatReport, gatherFacts, type DoctorRole } from "../doctor.ts";
import { EXIT_OK, EXIT_RUNTIME } from "../errors.ts";
import { defineAgentCommand, flag, str } from "./args.ts";
import { configFromArgs } from "./common.ts";

// Exit 0 when every required check for the chosen role(s) passes, 1 when one is missing;
// optional features (AP fallback, cellular, conntrack) never fail it. Creates the state
// dir (mode 0700) if it does not exist, as the daemon would.
export const doctorCommand = defineAgentCommand({
  meta: {
    name: "doctor",
    description: "Check what each role needs on this host and print the fix for each missing piece (exit 1 if a required one is missing)",
  },
  args: {
    role: { type: "enum", options: ["all", "relay", "onsite", "master"], default: "all", description: "check only what this role needs" },
    json: { type: "boolean", description: 'print JSON: {"host", "role", "checks", "ok"}' },
    "state-dir": { type: "string", valueHint: "dir", description: `state dir to check (default: config file's state_dir, else ${DEFAULT_STATE_DIR})` },
    listen: { type: "string", valueHint: "host:port", description: "relay listen address; a port below 1024 needs CAP_NET_BIND_SERVICE" },
    config: { type: "string", valueHint: "file", description: `TOML config file to take state_dir and listen from (default ${DEFAULT_CONFIG_FILE} if it exists)` },
  },
  async exec(args, { io }) {
    const role = (str(args, "role") ?? "all") as DoctorRole;
    // state_dir and listen from the config file, flags winning; doctor's --role ("all" too)
    // is not the daemon's role, so it stays out of the config. A bad --listen or a broken
    // config file is a UsageError: exit 2.
    const cfg = await configFromArgs({ ...args, role: undefined });

    const facts = gatherFacts({ stateDir: cfg.state_dir });
    const report = evaluate(facts, role, cfg.listen ? { listenPort: cfg.listen.port } : {});
    io.out(flag(args, "json") ? JSON.stringify(report, null, 2) + "\n" : formatReport(report));
    return report.ok ? EXIT_OK : EXIT_RUNTIME;
  },
});
