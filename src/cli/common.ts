// Flag sets shared by several commands and the mapping from flags to config keys.
import type { ArgsDef } from "citty";
import { DEFAULT_CONFIG_FILE, DEFAULT_CONTROL, DEFAULT_STATE_DIR, loadConfigFile, resolveConfig, secretFileProblem, type Config, type ConfigSource, type RawConfig } from "../config.ts";
import { UsageError } from "../errors.ts";
import { stat } from "node:fs/promises";
import { ControlClient, socketTransport, type ControlClientOptions, type ControlResponse, type ControlTransport } from "../control.ts";
import { str, strs, type CliContext, type DaemonRole, type ParsedArgs } from "./args.ts";

/**
 * A typed client of the daemon at `path` (src/roles/api.ts names each role's API). When the
 * daemon there is of a role that does not serve the running command, its "unknown command"
 * answer (internal RPC names) becomes one that says whose socket it is and where the command
 * runs.
 */
export function daemonClient<Api>(ctx: CliContext, path: string, opts: ControlClientOptions = {}): ControlClient<Api> {
  return new ControlClient<Api>(wrongSocketAware((ctx.transport ?? socketTransport)(path), path, ctx.command), opts);
}

const article = (role: string) => (role === "onsite" ? "an onsite" : role === "relay" ? "the relay" : `a ${role}`);

/** "a master", "a master or the relay", "the relay, an onsite or a master" */
export function rolesText(roles: readonly string[]): string {
  const parts = roles.map(article);
  return parts.length <= 1 ? (parts[0] ?? "") : `${parts.slice(0, -1).join(", ")} or ${parts.at(-1)}`;
}

/** The answer to a command the daemon does not know, reworded when the daemon is of another role. */
export function wrongSocketAnswer(res: ControlResponse, cmd: string, path: string, command: CliContext["command"]): ControlResponse {
  if (res.ok || res.code !== "usage" || !command?.runsOn || !res.error?.startsWith(`unknown command ${JSON.stringify(cmd)}`)) return res;
  const role = /; this (relay|onsite|master) daemon knows/.exec(res.error)?.[1] as DaemonRole | undefined;
  if (!role || command.runsOn.includes(role)) return res;
  return {
    ok: false,
    code: "usage",
    error: `the socket ${path} belongs to ${article(role)} daemon; "${command.name}" runs on ${rolesText(command.runsOn)}`,
    hint: `run it where that daemon runs, or pass --control with its socket`,
  };
}

function wrongSocketAware(t: ControlTransport, path: string, command: CliContext["command"]): ControlTransport {
  if (!command?.runsOn) return t;
  return async (cmd, args, timeoutMs) => wrongSocketAnswer(await t(cmd, args, timeoutMs), cmd, path, command);
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
  "proxy-file": { type: "string", valueHint: "file", description: "read the proxy URL with its credentials from FILE (mode 0600), \"-\": from stdin; keeps the password out of ps" },
  revocations: { type: "string", valueHint: "file", description: "revocation list written by `agent pki revoke` (relay)" },
  allow: { type: "string", valueHint: "cidr[:ports]", description: "LAN targets sessions and NAT rules may reach (onsite; repeatable)" },
  location: { type: "string", valueHint: "label", description: 'location label shown in the inventory (onsite), e.g. "Royal Champagne"' },
  gui: { type: "string", valueHint: "host:port", description: "serve the web GUI here (master, relay)" },
  "state-dir": { type: "string", valueHint: "dir", description: `where state is kept (default ${DEFAULT_STATE_DIR})` },
  "log-level": { type: "enum", options: ["silent", "error", "warn", "info", "debug", "trace"], description: "log level (default info)" },
  "json-logs": { type: "boolean", description: "log one JSON object per line (under journald without a time: the journal has its own)" },
  operator: { type: "string", valueHint: "group", description: "let this group use the control socket (mode 0660) without sudo, e.g. `agent devices` by a technician" },
  "nymea-conf": { type: "string", valueHint: "file", description: "read nymea-remoteproxy's INI config as [nymea] (relay), e.g. /etc/nymea/nymea-remoteproxy.conf" },
} as const satisfies ArgsDef;

/** Flags → raw config values, keyed as in the TOML file. Only flags actually given. */
export function flagsToRaw(args: ParsedArgs): RawConfig {
  const raw: RawConfig = {};
  for (const key of ["role", "bundle", "relay", "listen", "proxy", "revocations", "location", "gui", "control", "operator"] as const) {
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
  return resolveConfig(await configSources(args));
}

/** The config file (when there is one) and the flags, in the order they apply. */
export async function configSources(args: ParsedArgs): Promise<ConfigSource[]> {
  const path = str(args, "config");
  const sources: ConfigSource[] = [];
  const file = await loadConfigFile(path ?? DEFAULT_CONFIG_FILE, path !== undefined);
  if (file) sources.push(file);
  const nymeaConf = str(args, "nymea-conf");
  if (nymeaConf !== undefined) sources.push(await (await import("../tunnel/nymea/ini.ts")).loadNymeaConf(nymeaConf));
  const flags = flagsToRaw(args);
  const proxyFile = str(args, "proxy-file");
  if (proxyFile !== undefined) {
    if (flags.proxy !== undefined) throw new UsageError("--proxy and --proxy-file both given", "pass one: --proxy-file keeps the credentials out of ps");
    flags.proxy = await readSecretArg("--proxy-file", proxyFile, "the proxy's credentials");
  }
  sources.push({ origin: { kind: "flag" }, raw: flags });
  return sources;
}

/**
 * A secret from a file or, for "-", from stdin: one line, its newline dropped. A file others
 * can read is refused with the chmod that fixes it. Never on the command line: ps shows argv.
 */
export async function readSecretArg(flag: string, value: string, what: string): Promise<string> {
  let text: string;
  if (value === "-") {
    text = await new Response(Bun.stdin.stream()).text();
  } else {
    let mode: number;
    try {
      mode = (await stat(value)).mode;
    } catch (e) {
      throw new UsageError(`${flag} ${value}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (e as Error).message}`, `${flag} FILE reads ${what} from FILE; ${flag} - reads it from stdin`);
    }
    const problem = secretFileProblem(value, mode, [what]);
    if (problem) throw new UsageError(`${flag}: ${problem.message}`, problem.hint);
    text = await Bun.file(value).text();
  }
  const secret = text.replace(/\r?\n$/, "");
  if (secret === "" || secret.includes("\n")) throw new UsageError(`${flag} ${value === "-" ? "(stdin)" : value}: expected ${what} on one line, got ${secret === "" ? "nothing" : "several lines"}`);
  return secret;
}
