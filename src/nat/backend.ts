// The firewall behind one interface. A backend owns its chains (iptables) or its table
// (nft) and nothing else; `apply` replaces the agent's rules with exactly the given set in
// one transaction, so a plan lands all-or-nothing and a rule the state does not know
// cannot survive an apply. Commands run through an injected `exec(argv)`: argument arrays,
// never a shell string.
import { realExec, type Exec, type ExecResult } from "../os/spawn.ts";
import type { InstalledRule } from "./plan.ts";
import { parseTag, ruleTag, type Rule } from "./rule.ts";

export type { Exec, ExecResult } from "../os/spawn.ts";

/** A hung firewall tool must not freeze the daemon; iptables' own lock wait (-w) is shorter. */
export const FIREWALL_TIMEOUT_MS = 20_000;

/** The shared runner (src/exec.ts) with the firewall's longer timeout. */
export const spawnExec: Exec = (argv, opts = {}) => realExec(argv, { timeoutMs: FIREWALL_TIMEOUT_MS, ...opts });

/**
 * The firewalls a user can name in `[nat] backend` (besides "auto") and sees in `status` and
 * `agent nat list`. The in-memory FakeBackend is not one: configuration cannot reach it.
 */
export type BackendName = "iptables" | "nft";

export interface FirewallBackend {
  /** A real firewall's name; "memory" only for the unit tests' FakeBackend. */
  readonly name: BackendName | "memory";
  /** Makes the agent's rules exactly `rules` in one transaction, then checks they are there. */
  apply(rules: readonly Rule[]): Promise<void>;
  /** The agent's tagged rules as the firewall holds them now (empty when nothing exists). */
  list(): Promise<InstalledRule[]>;
  /** Removes the agent's chains or table and the jumps to them; leaves everything else. */
  teardown(): Promise<void>;
}

/** A firewall command failed; the message carries the command and what it printed. */
export class FirewallError extends Error {
  override readonly name = "FirewallError";
}

export function checkExec(what: string, argv: readonly string[], r: ExecResult): void {
  // iptables exits 4 for "resource problem" (the xtables lock, a kernel refusal): every
  // non-zero exit is a failure, never taken as success.
  if (r.code !== 0) {
    const detail = (r.stderr || r.stdout).trim().split("\n").slice(0, 5).join("; ");
    throw new FirewallError(`${what}: ${argv.join(" ")} exited ${r.code}${detail ? `: ${detail}` : ""}`);
  }
}

/** The ids and tags the firewall must show after applying `rules`. */
export function expectedTags(rules: readonly Rule[]): Map<string, number> {
  return new Map(rules.map((r) => [r.id, parseTag(ruleTag(r))!.expiresAt]));
}

/** Throws unless `found` (read back per table) holds exactly the expected tags. */
export function verifyTags(where: string, expected: Map<string, number>, found: readonly InstalledRule[]): void {
  const seen = new Map<string, number>();
  for (const f of found) {
    if (seen.has(f.id)) throw new FirewallError(`${where}: rule ${f.id} is installed twice after apply`);
    seen.set(f.id, f.expiresAt);
  }
  for (const [id, exp] of expected) {
    if (!seen.has(id)) throw new FirewallError(`${where}: rule ${id} is missing after apply`);
    if (seen.get(id) !== exp) throw new FirewallError(`${where}: rule ${id} carries expiry ${seen.get(id)} instead of ${exp} after apply`);
  }
  for (const id of seen.keys()) if (!expected.has(id)) throw new FirewallError(`${where}: unexpected rule ${id} is still installed after apply`);
}

/**
 * In-memory backend for unit tests: same contract, plus knobs to fail and to inspect. Only
 * code can construct it (chooseBackend picks nft or iptables; config accepts no other name).
 */
export class FakeBackend implements FirewallBackend {
  readonly name = "memory";
  installed = new Map<string, Rule>();
  /** Extra tagged entries, as a hand-added orphan would appear. */
  strays: InstalledRule[] = [];
  applies = 0;
  tornDown = 0;
  failNext: string | undefined;

  async apply(rules: readonly Rule[]): Promise<void> {
    if (this.failNext) {
      const m = this.failNext;
      this.failNext = undefined;
      throw new FirewallError(m);
    }
    this.applies++;
    this.installed = new Map(rules.map((r) => [r.id, { ...r }]));
    this.strays = [];
  }

  async list(): Promise<InstalledRule[]> {
    return [...[...this.installed.values()].map((r) => parseTag(ruleTag(r))!), ...this.strays];
  }

  async teardown(): Promise<void> {
    this.tornDown++;
    this.installed.clear();
    this.strays = [];
  }
}
