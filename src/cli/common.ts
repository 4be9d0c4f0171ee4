// Flag sets shared by several commands and the mapping from flags to config keys.
import type { ArgsDef } from "citty";
import { DEFAULT_CONFIG_FILE, DEFAULT_CONTROL, DEFAULT_STATE_DIR, loadConfigFile, resolveConfig, type Config, type ConfigSource, type RawConfig } from "../config.ts";
import { ControlClient, socketTransport, type ControlClientOptions } from "../control.ts";
import { str, strs, type CliContext, type ParsedArgs } from "./args.ts";

/** A typed client of the daemon at `path` (src/roles/api.ts names each role's API). */
export function daemonClient<Api>(ctx: CliContext, path: string, opts: ControlClientOptions = {}): ControlClient<Api> {
  return new ControlClient<Api>((ctx.transport ?? socketTransport)(path), opts);
}

export const configArgs = {
  config: { type: "string", valueHint: "file", description: `TOML config file (default ${DEFAULT_CONFIG_FILE} if it exists)` },
  control: { type: "string", valueHint: "socket", description: `control socket of the daemon (default ${DEFAULT_CONTROL})` },
} as const satisfies ArgsDef;

export const daemonArgs = {
  role: { type: "enum", options: ["relay", "onsite", "master"], description: "which daemon to run" },
  ...configArgs,
  bundle: { type: "string", valueHint: "file", description: "certificate bundle from `agent pki issue` (mode 0600)" },
  relay: { type: "string", valueHint: "host:port", description: "relay to dial (onsite, master)" },
  listen: { type: "string", valueHint: "host:port", description: "address to accept devices on (relay)" },
  proxy: { type: "string", valueHint: "url", description: "dial the relay through an HTTP CONNECT proxy: http://[user:pass@]host:port" },
  revocations: { type: "string", valueHint: "file", description: "revocation list written by `agent pki revoke` (relay)" },
  allow: { type: "string", valueHint: "cidr[:ports]", description: "LAN targets sessions and NAT rules may reach (onsite; repeatable)" },
  location: { type: "string", valueHint: "label", description: 'location label shown in the inventory (onsite), e.g. "Royal Champagne"' },
  gui: { type: "string", valueHint: "host:port", description: "serve the web GUI here (master)" },
  "state-dir": { type: "string", valueHint: "dir", description: `where state is kept (default ${DEFAULT_STATE_DIR})` },
  "log-level": { type: "enum", options: ["silent", "error", "warn", "info", "debug", "trace"], description: "log level (default info)" },
  "json-logs": { type: "boolean", description: "log one JSON object per line" },
} as const satisfies ArgsDef;

/** Flags → raw config values, keyed as in the TOML file. Only flags actually given. */
export function flagsToRaw(args: ParsedArgs): RawConfig {
  const raw: RawConfig = {};
  for (const key of ["role", "bundle", "relay", "listen", "proxy", "revocations", "location", "gui", "control"] as const) {
    const v = str(args, key);
    if (v !== undefined) raw[key] = v;
  }
  if (args.allow !== undefined) raw.allow = strs(args, "allow");
  if (str(args, "state-dir") !== undefined) raw.state_dir = str(args, "state-dir");
  if (str(args, "log-level") !== undefined) raw.log_level = str(args, "log-level");
  if (args["json-logs"] === true) raw.json_logs = true;
  return raw;
}

/** Defaults, then the config file, then flags. */
export async function configFromArgs(args: ParsedArgs): Promise<Config> {
  const path = str(args, "config");
  const sources: ConfigSource[] = [];
  const file = await loadConfigFile(path ?? DEFAULT_CONFIG_FILE, path !== undefined);
  if (file) sources.push(file);
  sources.push({ origin: { kind: "flag" }, raw: flagsToRaw(args) });
  return resolveConfig(sources);
}
