// The command tree and its dispatcher. Commands are citty definitions (arguments and usage
// text); dispatch walks subcommands by name, handles --help and --version, parses the rest
// strictly (./args.ts) and runs the command's `exec`. Nothing here exits the process.
import { renderUsage, type CommandDef } from "citty";
import { describeError, exitCodeOf, NotFoundError, RuntimeError, UsageError } from "../errors.ts";
import { bakedRole, versionInfo, versionText, VERSION } from "../version.ts";
import { nearest, shellQuote } from "./format.ts";
import { parseStrict, processOut, type AgentCommand, type CliContext } from "./args.ts";
import { daemonCommand } from "./daemon.ts";

const versionCommand: AgentCommand = {
  meta: { name: "version", description: "Print version, git commit, build target and Bun version" },
  args: { json: { type: "boolean", description: "print JSON" } },
  exec(args, { io }) {
    io.out(args.json ? JSON.stringify(versionInfo()) + "\n" : versionText() + "\n");
  },
};

const helpCommand: AgentCommand = {
  meta: { name: "help", description: "Show the usage of agent or of a command: agent help [COMMAND...]" },
};

export const rootCommand: AgentCommand = {
  ...daemonCommand,
  meta: { name: "agent", version: VERSION, description: "Edge remote-access agent: relay, onsite and master roles in one executable" },
  // Loaded on use: node-forge alone costs ~40 ms of start-up, which every `agent status`
  // on a Raspberry Pi would otherwise pay several times over.
  subCommands: {
    status: () => import("./status.ts").then((m) => m.statusCommand),
    doctor: () => import("./doctor.ts").then((m) => m.doctorCommand),
    pki: () => import("./pki.ts").then((m) => m.pkiCommand),
    devices: () => import("./devices.ts").then((m) => m.devicesCommand),
    refusals: () => import("./devices.ts").then((m) => m.refusalsCommand),
    connect: () => import("./sessions.ts").then((m) => m.connectCommand),
    sessions: () => import("./sessions.ts").then((m) => m.sessionsCommand),
    disconnect: () => import("./sessions.ts").then((m) => m.disconnectCommand),
    nat: () => import("./nat.ts").then((m) => m.natCommand),
    tunnel: () => import("./tunnel.ts").then((m) => m.tunnelCommand),
    uplink: () => import("./uplink.ts").then((m) => m.uplinkCommand),
    kick: () => import("./kick.ts").then((m) => m.kickCommand),
    monitor: () => import("./monitor.ts").then((m) => m.monitorCommand),
    gui: () => import("./gui.ts").then((m) => m.guiCommand),
    services: () => import("./services.ts").then((m) => m.servicesCommand),
    enroll: () => import("./enroll.ts").then((m) => m.enrollCommand),
    version: versionCommand,
    help: helpCommand,
  },
};

/**
 * Runs the CLI as the program does: errors are reported on `io.err` ("agent: ..." and a
 * hint) and become the exit code (2 usage, 1 runtime). main.ts calls this; so do the
 * in-process CLI tests.
 */
export async function runMain(argv: readonly string[], ctx: Partial<CliContext> = {}): Promise<number> {
  const io = ctx.io ?? processOut;
  try {
    return await runCli(argv, { ...ctx, io });
  } catch (err) {
    const known = err instanceof UsageError || err instanceof RuntimeError || err instanceof NotFoundError;
    const suffix = reachFlagsOf(argv);
    io.err(`agent: ${withReach(describeError(err), suffix)}\n`);
    if (known && err.hint) io.err(`hint: ${withReach(err.hint, suffix)}\n`);
    if (!known && process.env.AGENT_DEBUG) io.err(`${(err as Error).stack ?? ""}\n`);
    return exitCodeOf(err);
  }
}

/** The commands that talk to a daemon: a hint naming one must reach the same daemon. */
const DAEMON_COMMANDS = new Set(["status", "devices", "connect", "sessions", "disconnect", "nat", "uplink", "tunnel", "kick", "monitor", "refusals", "services", "enroll"]);

/** " --control X --config Y" as given in `argv` (either spelling, before or after the command). */
function reachFlagsOf(argv: readonly string[]): string {
  let out = "";
  for (const name of ["control", "config"]) {
    const i = argv.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`));
    if (i < 0) continue;
    const v = argv[i]!.includes("=") ? argv[i]!.slice(name.length + 3) : argv[i + 1];
    if (v !== undefined) out += ` --${name} ${shellQuote(v)}`;
  }
  return out;
}

/**
 * `text` whose quoted commands (`agent sessions`) that talk to a daemon carry `suffix`, so a
 * daemon's "see `agent sessions`" works when pasted by a user who gave --control.
 */
export function withReach(text: string, suffix: string): string {
  if (!suffix) return text;
  return text.replace(/`agent ([a-z-]+)([^`]*)`/g, (whole, word: string, rest: string) =>
    DAEMON_COMMANDS.has(word) && !/--control|--config|--help/.test(rest) ? `\`agent ${word}${rest}${suffix}\`` : whole,
  );
}

/**
 * `argv` with the options given before the command moved after it: `agent --control X devices`
 * is `agent devices --control X`, as the usage line (options before the command) promises.
 * Only options the root knows are moved (a value is taken with those that have one); an
 * unknown one stops the scan, and the root's strict parser names it.
 */
async function hoistOptions(argv: readonly string[]): Promise<string[]> {
  const defs = (rootCommand.args ?? {}) as Record<string, { type?: string }>;
  const pre: string[] = [];
  let i = 0;
  while (i < argv.length && argv[i]!.startsWith("-") && argv[i] !== "--" && argv[i] !== "-") {
    const arg = argv[i]!;
    if (arg === "--help" || arg === "-h") {
      pre.push(arg);
      i++;
      continue;
    }
    const eq = arg.indexOf("=");
    const name = arg.replace(/^--?/, "").split("=")[0]!;
    const def = defs[name];
    if (!def) return [...argv];
    const takesValue = def.type !== "boolean" && eq < 0;
    pre.push(...argv.slice(i, i + (takesValue ? 2 : 1)));
    i += takesValue ? 2 : 1;
  }
  // The root takes no positionals: a word after its options is meant as a command (a typo
  // among them then gets "unknown command …, did you mean").
  if (pre.length === 0 || i >= argv.length || argv[i]!.startsWith("-")) return [...argv];
  // The command path (`nat add`) first, then the options that came before it, then the rest.
  const words: string[] = [];
  let j = i;
  while (j < argv.length && !argv[j]!.startsWith("-")) words.push(argv[j++]!);
  return [...words, ...pre, ...argv.slice(j)];
}

/** Runs the CLI; returns the exit code. Throws UsageError/RuntimeError for runMain to report. */
export async function runCli(argv: readonly string[], ctx: Partial<CliContext> = {}): Promise<number> {
  const full: CliContext = { ...ctx, io: ctx.io ?? processOut };
  const out = (text: string) => full.io.out(text);
  if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-V")) {
    out(versionText() + "\n");
    return 0;
  }
  // `agent help [CMD...]` is `agent [CMD...] --help`.
  let rest = argv[0] === "help" ? [...argv.slice(1).filter((a) => a !== "--help" && a !== "-h"), "--help"] : await hoistOptions(argv);
  let cmd: AgentCommand = rootCommand;
  const path: string[] = ["agent"];
  while (cmd.subCommands && rest.length > 0 && !rest[0]!.startsWith("-")) {
    const subs = cmd.subCommands as Record<string, AgentCommand | (() => Promise<AgentCommand>)>;
    const entry = Object.hasOwn(subs, rest[0]!) ? subs[rest[0]!] : undefined;
    const next = typeof entry === "function" ? await entry() : entry;
    if (!next) {
      const near = nearest(rest[0]!, Object.keys(subs));
      const dym = near ? `did you mean \`${path.join(" ")} ${near}\`? ` : "";
      if (cmd === rootCommand) {
        throw new UsageError(`unknown command ${JSON.stringify(rest[0])}`, `${dym}commands: ${Object.keys(subs).join(", ")}; to run a daemon: agent --role relay|onsite|master`);
      }
      throw new UsageError(`unknown command ${JSON.stringify(`${path.join(" ")} ${rest[0]}`)}`, `${dym}\`${path.join(" ")}\` takes: ${Object.keys(subs).join(", ")}`);
    }
    cmd = next;
    path.push(rest[0]!);
    rest = rest.slice(1);
  }
  if (rest.includes("--help") || rest.includes("-h") || cmd === helpCommand) {
    if (cmd === helpCommand) cmd = rootCommand;
    // citty names a command after its direct parent only; give it the whole path instead.
    const parentPath: CommandDef | undefined = path.length > 1 ? { meta: { name: path.slice(0, -1).join(" ") } } : undefined;
    let usage = await renderUsage(cmd as CommandDef, parentPath);
    const baked = full.bakedRole ?? bakedRole();
    if (cmd === rootCommand && baked) {
      usage += `\n\nThis executable has the ${baked} role built in: without --role it runs the ${baked} daemon (\`agent --role R\` still picks another).`;
    }
    // Colours only for a person at a terminal, not for pipes, files or tests.
    out((full.io.tty ? usage : usage.replace(/\x1b\[[0-9;]*m/g, "")) + "\n");
    return 0;
  }
  const name = path.join(" ");
  if (!cmd.exec) {
    const subs = Object.keys((cmd.subCommands ?? {}) as Record<string, unknown>);
    throw new UsageError(`\`${name}\` needs a command: ${subs.join(", ")}`, `see \`${name} --help\``);
  }
  const args = parseStrict(cmd, rest, name);
  full.command = { name, runsOn: cmd.runsOn };
  const code = await cmd.exec(args, full);
  return typeof code === "number" ? code : 0;
}
