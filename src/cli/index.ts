// The command tree and its dispatcher. Commands are citty definitions (arguments and usage
// text); dispatch walks subcommands by name, handles --help and --version, parses the rest
// strictly (./args.ts) and runs the command's `exec`. Nothing here exits the process.
import { renderUsage, type CommandDef } from "citty";
import { describeError, exitCodeOf, RuntimeError, UsageError } from "../errors.ts";
import { versionInfo, versionText, VERSION } from "../version.ts";
import { parseStrict, processOut, type AgentCommand, type CliContext } from "./args.ts";
import { daemonCommand } from "./daemon.ts";

const versionCommand: AgentCommand = {
  meta: { name: "version", description: "Print version, git commit, build target and Bun version" },
  args: { json: { type: "boolean", description: "print JSON" } },
  exec(args, { io }) {
    io.out(args.json ? JSON.stringify(versionInfo()) + "\n" : versionText() + "\n");
  },
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
    devices: () => import("./sessions.ts").then((m) => m.devicesCommand),
    connect: () => import("./sessions.ts").then((m) => m.connectCommand),
    sessions: () => import("./sessions.ts").then((m) => m.sessionsCommand),
    disconnect: () => import("./sessions.ts").then((m) => m.disconnectCommand),
    nat: () => import("./nat.ts").then((m) => m.natCommand),
    uplink: () => import("./uplink.ts").then((m) => m.uplinkCommand),
    version: versionCommand,
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
    const known = err instanceof UsageError || err instanceof RuntimeError;
    io.err(`agent: ${describeError(err)}\n`);
    if (known && err.hint) io.err(`hint: ${err.hint}\n`);
    if (!known && process.env.AGENT_DEBUG) io.err(`${(err as Error).stack ?? ""}\n`);
    return exitCodeOf(err);
  }
}

/** Runs the CLI; returns the exit code. Throws UsageError/RuntimeError for runMain to report. */
export async function runCli(argv: readonly string[], ctx: Partial<CliContext> = {}): Promise<number> {
  const full: CliContext = { ...ctx, io: ctx.io ?? processOut };
  const out = (text: string) => full.io.out(text);
  if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-V")) {
    out(versionText() + "\n");
    return 0;
  }
  let cmd: AgentCommand = rootCommand;
  const path: string[] = ["agent"];
  let rest = [...argv];
  while (cmd.subCommands && rest.length > 0 && !rest[0]!.startsWith("-")) {
    const subs = cmd.subCommands as Record<string, AgentCommand | (() => Promise<AgentCommand>)>;
    const entry = Object.hasOwn(subs, rest[0]!) ? subs[rest[0]!] : undefined;
    const next = typeof entry === "function" ? await entry() : entry;
    if (!next) {
      if (cmd === rootCommand) {
        throw new UsageError(`unknown command ${JSON.stringify(rest[0])}`, `commands: ${Object.keys(subs).join(", ")}; to run a daemon: agent --role relay|onsite|master`);
      }
      throw new UsageError(`unknown command ${JSON.stringify(`${path.join(" ")} ${rest[0]}`)}`, `\`${path.join(" ")}\` takes: ${Object.keys(subs).join(", ")}`);
    }
    cmd = next;
    path.push(rest[0]!);
    rest = rest.slice(1);
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    // citty names a command after its direct parent only; give it the whole path instead.
    const parentPath: CommandDef | undefined = path.length > 1 ? { meta: { name: path.slice(0, -1).join(" ") } } : undefined;
    const usage = await renderUsage(cmd as CommandDef, parentPath);
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
  const code = await cmd.exec(args, full);
  return typeof code === "number" ? code : 0;
}
