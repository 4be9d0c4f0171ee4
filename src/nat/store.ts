// The active rules on disk, so a crash or reboot neither loses nor leaks a forward. Written
// atomically (`src/os/atomic.ts`: a temp file beside the target, fsync, rename, fsync of the
// directory); a reader sees the old file or the new one, never half of one.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { removeStaleTemps, writeFileAtomic, type AtomicFs } from "../os/atomic.ts";
import { ID_PATTERN, PROTOCOLS, type Rule } from "./rule.ts";

export const STATE_FILE = "nat-rules.json";
export const STATE_VERSION = 1;

export interface RuleStore {
  load(): Rule[];
  save(rules: readonly Rule[]): void;
}

function isRule(v: unknown): v is Rule {
  const r = v as Rule;
  return (
    r !== null &&
    typeof r === "object" &&
    typeof r.id === "string" &&
    ID_PATTERN.test(r.id) &&
    (PROTOCOLS as readonly string[]).includes(r.proto) &&
    typeof r.src === "string" &&
    (r.iface === undefined || typeof r.iface === "string") &&
    Number.isInteger(r.port) &&
    typeof r.toAddr === "string" &&
    Number.isInteger(r.toPort) &&
    Number.isFinite(r.ttlMs) &&
    typeof r.owner === "string" &&
    Number.isFinite(r.createdAt) &&
    Number.isFinite(r.expiresAt)
  );
}

/** Parses a state file's text; throws with the reason when it is not ours or is damaged. */
export function parseState(text: string): Rule[] {
  const doc = JSON.parse(text) as { version?: unknown; rules?: unknown };
  if (doc?.version !== STATE_VERSION) throw new Error(`unsupported state version ${JSON.stringify(doc?.version)}`);
  if (!Array.isArray(doc.rules)) throw new Error(`"rules" is not a list`);
  const bad = doc.rules.findIndex((r) => !isRule(r));
  if (bad >= 0) throw new Error(`rule ${bad} is malformed`);
  return doc.rules as Rule[];
}

export class FileRuleStore implements RuleStore {
  readonly path: string;

  /** `fs` only for tests that make a write fail. */
  constructor(
    stateDir: string,
    private readonly fs?: AtomicFs,
  ) {
    this.path = join(stateDir, STATE_FILE);
  }

  /** Missing file: no rules. A damaged file throws (the caller decides what to log). Removes
   * temp files of writers that died mid-write. */
  load(): Rule[] {
    // A daemon killed mid-write left its temp file; a write that failed removed its own.
    removeStaleTemps(this.path);
    if (!existsSync(this.path)) return [];
    return parseState(readFileSync(this.path, "utf8"));
  }

  save(rules: readonly Rule[]): void {
    writeFileAtomic(this.path, JSON.stringify({ version: STATE_VERSION, rules }, null, 1) + "\n", { mode: 0o600, fs: this.fs });
  }
}

export class MemoryRuleStore implements RuleStore {
  rules: Rule[] = [];
  saves = 0;
  load(): Rule[] {
    return this.rules.map((r) => ({ ...r }));
  }
  save(rules: readonly Rule[]): void {
    this.saves++;
    this.rules = rules.map((r) => ({ ...r }));
  }
}
