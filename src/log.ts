// One root logger for the process; every part takes a tagged child (`log.withTag("relay")`).
// Daemons log to stderr, one line per event:
//   - a JSON object per line with --json-logs (time, level, tag, msg, and fields), for journald/logd;
//   - a plain "time LEVEL [tag] message key=value" line when stderr is not a terminal;
//   - the same plain line with a coloured level on a terminal.
// Under journald (JOURNAL_STREAM set) lines carry no time: the journal stamps each itself.
// Facts go in fields, not only in the text: `log.info("device connected", { id, address })`
// (a trailing plain object) gives JSON keys `id` and `address` and plain `id=… address=…`.
// The level can change under a running daemon (SIGHUP): setLogLevel, for the root and every
// child made with withTag, which share it.
// consola/core is used rather than the package root: the root pulls in the fancy
// reporter and its dependencies, which cost ~30 ms at every start of every command.
import { createConsola, LogLevels, type ConsolaInstance, type ConsolaReporter, type LogObject } from "consola/core";
import { format } from "node:util";

export const LOG_LEVELS = ["silent", "error", "warn", "info", "debug", "trace"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export type Logger = ConsolaInstance;

const LEVEL_NUMBER: Record<LogLevel, number> = {
  silent: LogLevels.silent,
  error: LogLevels.error,
  warn: LogLevels.warn,
  info: LogLevels.info,
  debug: LogLevels.debug,
  trace: LogLevels.trace,
};

export interface LogOptions {
  level?: LogLevel;
  json?: boolean;
  /** Where lines go; stderr unless a test collects them. */
  write?: (line: string) => void;
  /** Whether the output is a terminal; decides fancy vs plain when not JSON. */
  tty?: boolean;
  /** Leave the time out of each line (journald stamps its own); default: JOURNAL_STREAM is set. */
  journald?: boolean;
}

/** The level a logger and all its tagged children share; the reporters filter by it. */
interface LevelState {
  level: number;
}

const LEVEL_STATE = Symbol("agent.logLevel");

function withLevel(r: ConsolaReporter, state: LevelState): ConsolaReporter {
  return Object.assign({ log: (obj: LogObject, ctx: Parameters<ConsolaReporter["log"]>[1]) => void (obj.level <= state.level && r.log(obj, ctx)) }, { [LEVEL_STATE]: state });
}

/**
 * Changes the level of the logger `createLogger` made and of every child of it (withTag);
 * returns the previous level's name. Loggers made otherwise are left alone (returns undefined).
 */
export function setLogLevel(log: Logger, level: LogLevel): LogLevel | undefined {
  const state = (log.options.reporters ?? []).map((r) => (r as { [LEVEL_STATE]?: LevelState })[LEVEL_STATE]).find(Boolean);
  if (!state) return undefined;
  const prev = (Object.entries(LEVEL_NUMBER).find(([, n]) => n === state.level)?.[0] ?? "info") as LogLevel;
  state.level = LEVEL_NUMBER[level];
  return prev;
}

/** Splits consola's args into a message and structured fields (a trailing plain object). */
function messageAndFields(args: unknown[]): { msg: string; fields: Record<string, unknown> } {
  const last = args.at(-1);
  const isFields = args.length > 1 && last !== null && typeof last === "object" && !Array.isArray(last) && !(last instanceof Error);
  const rest = isFields ? args.slice(0, -1) : args;
  const fields: Record<string, unknown> = isFields ? { ...(last as Record<string, unknown>) } : {};
  const parts: string[] = [];
  for (const a of rest) {
    if (a instanceof Error) {
      parts.push(errorText(a));
    } else parts.push(typeof a === "string" ? a : format("%o", a));
  }
  return { msg: parts.join(" "), fields };
}

function errorText(err: Error): string {
  const parts: string[] = [];
  let cur: unknown = err;
  for (let i = 0; cur instanceof Error && i < 8; i++) {
    parts.push(cur.message);
    cur = cur.cause;
  }
  return parts.join(": ");
}

export function jsonReporter(write: (line: string) => void, withTime = true): ConsolaReporter {
  return {
    log(obj: LogObject) {
      const { msg, fields } = messageAndFields(obj.args);
      const record: Record<string, unknown> = withTime ? { time: obj.date.toISOString(), level: obj.type, msg } : { level: obj.type, msg };
      if (obj.tag) record.tag = obj.tag;
      for (const [k, v] of Object.entries(fields)) if (!(k in record)) record[k] = v;
      // An error passed along is also a field, to query without parsing msg.
      const err = obj.args.find((x): x is Error => x instanceof Error);
      if (err && !("error" in record)) record.error = errorText(err);
      write(JSON.stringify(record, (_k, v) => (typeof v === "bigint" ? v.toString() : v)) + "\n");
    },
  };
}

const LEVEL_COLOUR: Record<string, string> = { fatal: "31", error: "31", warn: "33", info: "36", success: "32", debug: "90", trace: "90" };

export function plainReporter(write: (line: string) => void, colour = false, withTime = true): ConsolaReporter {
  return {
    log(obj: LogObject) {
      const { msg, fields } = messageAndFields(obj.args);
      const kv = Object.entries(fields)
        .map(([k, v]) => `${k}=${typeof v === "string" && !/\s/.test(v) ? v : JSON.stringify(v)}`)
        .join(" ");
      const tag = obj.tag ? ` [${obj.tag}]` : "";
      const level = obj.type.toUpperCase();
      const shown = colour ? `\x1b[${LEVEL_COLOUR[obj.type] ?? "0"}m${level}\x1b[0m` : level;
      write(`${withTime ? obj.date.toISOString() + " " : ""}${shown}${tag} ${msg}${kv ? " " + kv : ""}\n`);
    },
  };
}

export function createLogger(opts: LogOptions = {}): Logger {
  const write = opts.write ?? ((line: string) => void process.stderr.write(line));
  const tty = opts.tty ?? Boolean(process.stderr.isTTY);
  const state: LevelState = { level: LEVEL_NUMBER[opts.level ?? "info"] };
  const withTime = !(opts.journald ?? Boolean(process.env.JOURNAL_STREAM));
  // consola itself passes everything (trace); the reporter filters by the shared, changeable level.
  const reporter = opts.json ? jsonReporter(write, withTime) : plainReporter(write, tty && !opts.write && !process.env.NO_COLOR, withTime);
  return createConsola({ level: LogLevels.trace, reporters: [withLevel(reporter, state)] });
}
