// Strict argument parsing over citty command definitions. citty gives us the command tree,
// argument declarations and usage text; its own parser is lenient (unknown flags are
// ignored, repeated flags keep the last value), which would let a typo like `--relya`
// pass silently. This parser refuses unknown flags, missing values and stray positionals
// with a UsageError (exit 2), and collects flags listed as repeatable into arrays.
import type { ArgsDef, CommandDef } from "citty";
import type { ControlTransport } from "../control.ts";
import { UsageError } from "../errors.ts";
import { nearest } from "./format.ts";

/** Where a command's output goes: the process's stdout and stderr, or a test's buffers. */
export interface Out {
  out(text: string): void;
  err(text: string): void;
  /** A person at a terminal reads `out` (colours in usage text); default false. */
  tty?: boolean;
}

export const processOut: Out = {
  out: (text) => void process.stdout.write(text),
  err: (text) => void process.stderr.write(text),
  get tty() {
    return Boolean(process.stdout.isTTY);
  },
};

/** `text` ending in a newline (one added when it has none). */
export function line(text: string): string {
  return text.endsWith("\n") ? text : text + "\n";
}

/** What a command runs with besides its arguments. */
export interface CliContext {
  io: Out;
  /** How to reach the daemon at a control socket path; default: over the socket. */
  transport?: (path: string) => ControlTransport;
  /** The command being run (set by the dispatcher): named when a socket is another role's. */
  command?: { name: string; runsOn?: readonly DaemonRole[] };
  /** The role a per-role executable has built in; default version.ts bakedRole(). Tests set it. */
  bakedRole?: string;
}

export type DaemonRole = "relay" | "onsite" | "master";

export interface AgentCommand extends CommandDef<ArgsDef> {
  /** Flags that may be given more than once; their value is a string[]. */
  repeatable?: readonly string[];
  /** The roles whose daemon serves this command (for the answer a wrong socket gets). */
  runsOn?: readonly DaemonRole[];
  /** Runs the command with strictly parsed arguments. Returns the exit code (default 0). */
  exec?: (args: ParsedArgs, ctx: CliContext) => Promise<number | void> | number | void;
}

export type ParsedArgs = Record<string, string | boolean | string[] | undefined> & { _: string[] };

export function defineAgentCommand(def: AgentCommand): AgentCommand {
  return def;
}

export function parseStrict(cmd: AgentCommand, argv: readonly string[], usageName: string): ParsedArgs {
  const defs = (cmd.args ?? {}) as ArgsDef;
  const repeatable = new Set(cmd.repeatable ?? []);
  const byFlag = new Map<string, string>();
  const positionals: string[] = [];
  for (const [name, def] of Object.entries(defs)) {
    if (def.type === "positional") {
      positionals.push(name);
      continue;
    }
    byFlag.set(name, name);
    const aliases = "alias" in def && def.alias ? (Array.isArray(def.alias) ? def.alias : [def.alias]) : [];
    for (const a of aliases) byFlag.set(a, name);
  }
  const out: ParsedArgs = { _: [] };
  const hint = `see \`${usageName} --help\``;
  let onlyPositionals = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (onlyPositionals || !arg.startsWith("-") || arg === "-") {
      out._.push(arg);
      continue;
    }
    if (arg === "--") {
      onlyPositionals = true;
      continue;
    }
    const eq = arg.indexOf("=");
    const rawName = arg.replace(/^--?/, "").slice(0, eq < 0 ? undefined : eq - (arg.startsWith("--") ? 2 : 1));
    const name = byFlag.get(rawName);
    if (!name) {
      const near = nearest(rawName, [...byFlag.keys()].filter((k) => k.length > 1));
      throw new UsageError(`unknown option ${arg.slice(0, eq < 0 ? undefined : eq)} for ${usageName}`, near ? `did you mean --${near}? ${hint}` : hint);
    }
    const def = defs[name]!;
    let value: string | boolean;
    if (def.type === "boolean") {
      if (eq >= 0) {
        const v = arg.slice(eq + 1);
        if (v !== "true" && v !== "false") throw new UsageError(`--${name} takes no value (or =true/=false), got ${JSON.stringify(v)}`, hint);
        value = v === "true";
      } else value = true;
    } else {
      if (eq >= 0) value = arg.slice(eq + 1);
      else {
        const next = argv[i + 1];
        if (next === undefined || (next.startsWith("--") && next.length > 2)) throw new UsageError(`--${name} needs a value`, hint);
        value = next;
        i++;
      }
      if (def.type === "enum" && def.options && !def.options.includes(value)) {
        throw new UsageError(`--${name}: expected one of ${def.options.join(", ")}, got ${JSON.stringify(value)}`, hint);
      }
    }
    if (repeatable.has(name)) {
      const prev = out[name];
      out[name] = [...(Array.isArray(prev) ? prev : []), String(value)];
    } else {
      if (out[name] !== undefined) throw new UsageError(`--${name} given more than once`, hint);
      out[name] = value;
    }
  }
  const extra = out._.slice(positionals.length);
  positionals.forEach((name, idx) => {
    const def = defs[name]!;
    const v = out._[idx];
    if (v !== undefined) out[name] = v;
    else if (def.required !== false && def.default === undefined) {
      throw new UsageError(`missing argument ${(def.valueHint ?? name).toUpperCase()} for ${usageName}`, hint);
    }
  });
  if (extra.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])} for ${usageName}`, hint);
  for (const [name, def] of Object.entries(defs)) {
    if (def.type === "positional") continue;
    if (out[name] === undefined && def.default !== undefined) out[name] = def.default as string | boolean;
    if (def.required && out[name] === undefined) throw new UsageError(`--${name} is required for ${usageName}`, hint);
  }
  return out;
}

/** String flag value or undefined; repeatables return their last value. */
export function str(args: ParsedArgs, name: string): string | undefined {
  const v = args[name];
  if (Array.isArray(v)) return v.at(-1);
  return typeof v === "string" ? v : undefined;
}

export function strs(args: ParsedArgs, name: string): string[] {
  const v = args[name];
  return Array.isArray(v) ? v : typeof v === "string" ? [v] : [];
}

export function flag(args: ParsedArgs, name: string): boolean {
  return args[name] === true;
}
