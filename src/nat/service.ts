// The NAT service: the active rules in memory, the firewall kept equal to them, the state
// file kept equal to the firewall, and a timer that removes each rule at its expiry. The
// decisions are the pure pieces (validateRequest, decideAdd, plan); this class sequences
// them against an injected backend, store, flow cutter, clock and logger.
//
// Time. A rule has two expiries, and the rule picked is this one:
// - its persisted expiry, `Rule.expiresAt`: wall-clock epoch ms, in the state file and in
//   the firewall tag. It is what a restart reads (no monotonic clock survives a reboot), and
//   it is written only when the rule's deadline is set: at add (wall at add + ttl) and at an
//   extend that moves the deadline (wall then + the new time left);
// - its running deadline: a monotonic instant (clock.now()), kept in memory only. At add it is
//   mono at add + ttl; for a rule loaded at start it is mono at load + the time the rule had
//   left by the wall clock at load. The expiry timer, `remaining_ms`, the extend decision and
//   the order of `list()` all use it.
// A wall step while the daemon runs therefore changes no running rule: a rule of ten minutes
// ends after ten minutes of monotonic time, and the state file keeps saying what it said.
// (Only a restart judges the persisted expiry by the wall clock of that moment.)
import { readFileSync } from "node:fs";
import { RuntimeError, UsageError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { FirewallBackend } from "./backend.ts";
import type { FlowCutter } from "./conntrack.ts";
import { deadlineAtLoad, isNoop, persistedExpiry, plan } from "./plan.ts";
import { systemClock, type Clock, type TimerHandle } from "../clock.ts";
import type { RuleStore } from "./store.ts";
import { WriteFailures } from "../os/atomic.ts";
import { bindToSession, checkSessionCaps, type SessionBinding, type SessionCaps } from "./session.ts";
import { decideAdd, FieldError, newRuleId, sameForward, unknownIface, validateRequest, type NatLimits, type NatRequest, type OwnAddress, type Rule } from "./rule.ts";

/** Longest single setTimeout; a later expiry re-arms from there. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** After a failed expiry apply, try again this soon (the rule must not linger). */
export const EXPIRY_RETRY_MS = 1000;
/** After a failed write of the state file that nothing waits for, write it again this soon. */
export const SAVE_RETRY_MS = 5000;

/**
 * The state file could not be written before a firewall change that needed it; the firewall
 * was not changed. The message names the file and the system's reason (ENOSPC: disk full).
 */
export class StateSaveError extends Error {
  override readonly name = "StateSaveError";
}

export interface NatServiceDeps {
  backend: FirewallBackend;
  store: RuleStore;
  limits: NatLimits;
  keepOnStop: boolean;
  ownAddresses: () => Promise<OwnAddress[]>;
  /** The device's interface names, to refuse an --iface it lacks; undefined (or a failing
   * lister) leaves --iface unchecked. */
  interfaces?: () => Promise<string[]>;
  /** net.ipv4.ip_forward as the kernel says ("0"/"1"); null when it cannot be read. A DNAT
   * rule forwards nothing while it is 0, so an add then carries a warning. */
  ipForward?: () => string | null;
  cutFlows: FlowCutter;
  log: Logger;
  /** Monotonic now() for the running deadlines and the timer; wall() for persisted expiries. */
  clock?: Clock;
  /** Older seam: the wall clock alone (epoch ms); the monotonic side stays the system's. */
  now?: () => number;
  newId?: () => string;
  /** Caps on the rules of one session and of one master (config nat.max_rules_per_*). */
  sessionCaps?: SessionCaps;
}

/** The defaults of nat.max_rules_per_session and nat.max_rules_per_master. */
export const DEFAULT_SESSION_CAPS: SessionCaps = { perSession: 8, perMaster: 16 };

/** A rule as `nat list` shows it. */
export interface RuleView {
  id: string;
  proto: string;
  src: string;
  iface?: string;
  port: number;
  to: string;
  owner: string;
  created: string;
  expires: string;
  remaining_ms: number;
}

export interface AddResult {
  rule: RuleView;
  /** False when an identical rule existed and only its expiry moved. */
  created: boolean;
  /** Applied, but something keeps it from working (IPv4 forwarding off). */
  warning?: string;
  /** The TTL asked for was longer than the session has left: the rule ends with the session. */
  capped?: string;
}

/** Reads net.ipv4.ip_forward; null when /proc cannot be read (not Linux, no /proc). */
export function readIpForward(): string | null {
  try {
    return readFileSync("/proc/sys/net/ipv4/ip_forward", "utf8").trim();
  } catch {
    return null;
  }
}

/** The warning for an applied rule when the kernel does not forward IPv4 (pure). */
export function forwardingWarning(ipForward: string | null): string | undefined {
  if (ipForward === null || ipForward === "1") return undefined;
  return "IPv4 forwarding is off (net.ipv4.ip_forward=0): the rule is in place but forwards nothing; turn it on with `sysctl -w net.ipv4.ip_forward=1` (and in /etc/sysctl.d/ to keep it)";
}

export class NatService {
  private readonly rules = new Map<string, Rule>();
  /** Running deadline of each rule in `rules`: a monotonic instant (see "Time" above). */
  private readonly deadlines = new Map<string, number>();
  private readonly clock: Clock;
  private readonly newId: () => string;
  private timer: TimerHandle | undefined;
  /** True once the firewall holds (or held) agent rules; an idle agent never writes it. */
  private touched = false;
  private closed = false;
  private queue: Promise<void> = Promise.resolve();
  private pending: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  /**
   * What the state file holds (id → persisted expiry) after the last write that succeeded;
   * undefined when unknown (a damaged file). A change that adds or extends a rule writes it
   * first (see sync).
   */
  private saved: Map<string, number> | undefined = new Map();
  /** What the firewall holds after the last apply that succeeded. */
  private applied: Rule[] = [];
  /** A state write failed that nothing waits for: retried on a timer, and by the next sync. */
  private saveTimer: TimerHandle | undefined;
  private readonly writes: WriteFailures;

  constructor(private readonly d: NatServiceDeps) {
    this.clock = d.clock ?? (d.now ? { ...systemClock, wall: d.now } : systemClock);
    this.newId = d.newId ?? newRuleId;
    this.writes = new WriteFailures("the NAT state file", (m) => d.log.warn(m), { clock: this.clock, info: (m) => d.log.info(m) });
  }

  get backendName(): string {
    return this.d.backend.name;
  }

  /** Reconciles the firewall with the state file: drops expired and orphan rules, re-arms the rest. */
  async start(): Promise<void> {
    const log = this.d.log;
    let saved: Rule[] = [];
    try {
      saved = this.d.store.load();
      this.saved = new Map(saved.map((r) => [r.id, r.expiresAt]));
    } catch (e) {
      this.saved = undefined;
      log.error("NAT state file is damaged; starting without it (its tagged rules will be removed as orphans)", e);
    }
    const installed = await this.d.backend.list();
    // One reading of both clocks: a loaded rule keeps exactly the time it had left by the wall.
    const wall = this.clock.wall();
    const mono = this.clock.now();
    // Only local rules outlive the run: every session ended with the previous one.
    const p = plan(saved, installed, wall, (owner) => owner === "local");
    for (const r of p.desired) {
      this.rules.set(r.id, r);
      this.deadlines.set(r.id, deadlineAtLoad(r.expiresAt, wall, mono));
    }
    if (!isNoop(p)) {
      await this.d.backend.apply(p.desired);
      this.touched = true;
    } else if (installed.length > 0) {
      this.touched = true;
    }
    this.applied = p.desired;
    // Start removes or re-arms only, never adds a rule the file does not hold: the firewall
    // first, then the file (a failed write is retried; the firewall is already right).
    if (saved.length > 0 || p.expired.length > 0 || p.ownerless.length > 0) this.save(p.desired, false);
    for (const r of p.expired) log.info(`removed rule ${r.id} at start: it expired at ${new Date(r.expiresAt).toISOString()}`, describe(r));
    for (const r of p.ownerless) log.info(`removed rule ${r.id} at start: its session ${r.owner} ended with the previous run`, describe(r));
    for (const o of p.orphans) log.warn(`removed tagged rule ${o.id} at start: the state does not know it`);
    for (const r of p.desired) log.info(`re-armed rule ${r.id}: expires in ${Math.ceil(Math.round(this.deadlines.get(r.id)! - mono) / 1000)}s`, describe(r));
    if (p.add.length) log.warn(`restored ${p.add.length} rule(s) missing from the firewall: ${p.add.map((r) => r.id).join(", ")}`);
    log.info(`NAT ready (backend ${this.d.backend.name}): ${p.desired.length} active, ${p.expired.length} expired, ${p.ownerless.length} of ended sessions, ${p.orphans.length} orphan(s) removed`);
    await this.cut([...p.expired, ...p.ownerless]);
    this.arm();
  }

  /**
   * Validates and applies a request. Throws UsageError for a refused request. `session`: a
   * master's request inside that session (src/nat/session.ts): the target must be one of the
   * session's, the TTL is capped to the session's end, and the session and master caps hold.
   */
  async add(req: NatRequest, owner: string, session?: SessionBinding): Promise<AddResult> {
    this.assertOpen();
    if (typeof owner !== "string" || owner.length === 0 || owner.length > 128 || /[\u0000-\u001f]/.test(owner)) {
      throw new UsageError("owner: expected a session id or \"local\"");
    }
    let spec;
    try {
      spec = validateRequest(req, this.d.limits, await this.d.ownAddresses());
      if (spec.iface !== undefined && this.d.interfaces) {
        const present = await this.d.interfaces().catch(() => undefined);
        const why = present && unknownIface(spec.iface, present);
        if (why) throw new FieldError("iface", why);
      }
    } catch (e) {
      throw asUsage(e);
    }
    // The decision runs on the monotonic clock: the active rules as their running deadlines.
    const wall = this.clock.wall();
    const mono = this.clock.now();
    // Capped on the same reading of the wall clock the persisted expiry is computed from, so
    // the rule never ends even a millisecond after its session.
    let capped: string | undefined;
    if (session) {
      try {
        ({ spec, capped } = bindToSession(spec, session, wall));
      } catch (e) {
        throw asUsage(e);
      }
    }
    const running = [...this.rules.values()].map((r) => ({ ...r, expiresAt: this.deadlines.get(r.id)! }));
    const decision = decideAdd(spec, owner, running, mono, () => this.uniqueId(), this.d.limits.maxRules);
    if (decision.kind === "refuse") throw asUsage(decision.error);
    if (session && decision.kind === "new") {
      try {
        checkSessionCaps(session, running.filter((r) => r.expiresAt > mono), this.d.sessionCaps ?? DEFAULT_SESSION_CAPS);
      } catch (e) {
        throw asUsage(e);
      }
    }
    const id = decision.rule.id;
    const prev = this.rules.get(id);
    const prevDeadline = this.deadlines.get(id);
    const deadline = decision.rule.expiresAt;
    // Back to persisted (wall) times: a new rule from now; an extend keeps its creation time,
    // and its persisted expiry moves only when its deadline did.
    const rule: Rule =
      decision.kind === "new"
        ? { ...decision.rule, createdAt: wall, expiresAt: persistedExpiry(deadline, wall, mono) }
        : { ...decision.rule, createdAt: prev!.createdAt, expiresAt: deadline === prevDeadline ? prev!.expiresAt : persistedExpiry(deadline, wall, mono) };
    this.rules.set(id, rule);
    this.deadlines.set(id, deadline);
    try {
      await this.sync();
    } catch (e) {
      if (this.rules.get(id) === rule) {
        if (prev) {
          this.rules.set(id, prev);
          this.deadlines.set(id, prevDeadline!);
        } else {
          this.rules.delete(id);
          this.deadlines.delete(id);
        }
      }
      if (e instanceof StateSaveError) {
        throw new RuntimeError(`could not ${decision.kind === "new" ? "add" : "extend"} the rule: ${e.message}; the firewall was not changed`, "free space (or fix the file system) where the daemon's state_dir is, then ask again", { cause: e });
      }
      throw new RuntimeError(`could not apply rule: ${(e as Error).message}`, "see `agent doctor` for the firewall tools this host needs", { cause: e });
    }
    this.d.log.info(decision.kind === "new" ? `added rule ${rule.id}` : `extended rule ${rule.id}`, describe(rule));
    const warning = forwardingWarning((this.d.ipForward ?? readIpForward)());
    if (warning) this.d.log.warn(`rule ${rule.id}: ${warning}`);
    return { rule: this.view(rule), created: decision.kind === "new", ...(warning ? { warning } : {}), ...(capped ? { capped } : {}) };
  }

  list(): RuleView[] {
    return [...this.rules.values()].sort((a, b) => this.deadlineOf(a) - this.deadlineOf(b) || a.id.localeCompare(b.id)).map((r) => this.view(r));
  }

  async del(id: string): Promise<RuleView> {
    this.assertOpen();
    if (typeof id !== "string" || !this.rules.has(id)) {
      throw new UsageError(`no active rule ${JSON.stringify(id)}`, "`agent nat list` shows the ids");
    }
    const [r] = await this.removeWhere((x) => x.id === id, "deleted");
    return this.view(r!);
  }

  /** Deletes rule `id` if `owner` (a session) owns it; null when there is no such rule of that owner. */
  async removeOwned(owner: string, id: string): Promise<RuleView | null> {
    this.assertOpen();
    const r = this.rules.get(id);
    if (!r || r.owner !== owner) return null;
    const [gone] = await this.removeWhere((x) => x.id === id && x.owner === owner, "deleted");
    return gone ? this.view(gone) : null;
  }

  /** Deletes the rule matching a forward (seed 001's `action: del`); the TTL is not compared. */
  async delMatching(req: NatRequest): Promise<RuleView> {
    this.assertOpen();
    let spec;
    try {
      const anyTtl = { ...this.d.limits, minTtlMs: 0, maxTtlMs: Number.MAX_SAFE_INTEGER };
      spec = validateRequest({ ...req, ttl: "1s" }, anyTtl, await this.d.ownAddresses());
    } catch (e) {
      throw asUsage(e);
    }
    const same = [...this.rules.values()].find((r) => sameForward(r, spec));
    if (!same) throw new UsageError(`no active rule forwards ${spec.proto} port ${spec.port} from ${spec.src} to ${spec.toAddr}:${spec.toPort}`);
    return this.del(same.id);
  }

  async flush(): Promise<number> {
    this.assertOpen();
    return (await this.removeWhere(() => true, "flushed")).length;
  }

  /** Removes the rules a session asked for; called when that session ends. */
  async removeByOwner(owner: string): Promise<number> {
    if (this.closed) return 0;
    return (await this.removeWhere((r) => r.owner === owner, `owner ${owner} left`)).length;
  }

  status(): Record<string, unknown> {
    const next = this.nextRule();
    return { backend: this.d.backend.name, rules: this.rules.size, next_expiry: next ? new Date(next.expiresAt).toISOString() : null };
  }

  /** Clean stop: removes the agent's rules (or keeps the unexpired ones when configured). Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      this.clock.clearTimeout(this.timer);
      this.timer = undefined;
      this.clock.clearTimeout(this.saveTimer);
      this.saveTimer = undefined;
      await this.queue;
      if (!this.touched) return;
      if (this.d.keepOnStop) {
        this.d.log.info(`keeping ${this.rules.size} rule(s) across the stop (nat.keep_on_stop)`);
        return;
      }
      const all = [...this.rules.values()];
      this.rules.clear();
      this.deadlines.clear();
      await this.d.backend.apply([]);
      await this.d.backend.teardown();
      this.applied = [];
      this.save([], false);
      await this.cut(all);
      this.d.log.info(`removed ${all.length} rule(s) on stop`);
    })();
    return this.closing;
  }

  // --- internals -------------------------------------------------------------------------

  private assertOpen(): void {
    if (this.closed) throw new RuntimeError("the NAT service is stopping");
  }

  private deadlineOf(r: Rule): number {
    return this.deadlines.get(r.id)!;
  }

  /** The rule whose running deadline comes first. */
  private nextRule(): Rule | undefined {
    let best: Rule | undefined;
    for (const r of this.rules.values()) if (!best || this.deadlineOf(r) < this.deadlineOf(best)) best = r;
    return best;
  }

  private uniqueId(): string {
    for (let i = 0; i < 100; i++) {
      const id = this.newId();
      if (!this.rules.has(id)) return id;
    }
    throw new Error("could not find a free rule id");
  }

  private async removeWhere(pred: (r: Rule) => boolean, why: string): Promise<Rule[]> {
    const gone = [...this.rules.values()].filter(pred);
    if (gone.length === 0) return [];
    for (const r of gone) this.rules.delete(r.id);
    try {
      await this.sync();
    } catch (e) {
      for (const r of gone) if (!this.rules.has(r.id)) this.rules.set(r.id, r);
      throw new RuntimeError(`could not remove rule(s): ${(e as Error).message}`, undefined, { cause: e });
    }
    for (const r of gone) if (!this.rules.has(r.id)) this.deadlines.delete(r.id);
    for (const r of gone) this.d.log.info(`removed rule ${r.id} (${why})`, describe(r));
    await this.cut(gone);
    return gone;
  }

  /**
   * Applies the current rule set. Calls made while an apply runs share the next one, so a
   * burst of adds costs two transactions, not one per add; each caller learns the outcome
   * of the transaction that carried its change.
   */
  private sync(): Promise<void> {
    if (this.pending) return this.pending;
    const p = this.queue.then(async () => {
      this.pending = undefined;
      const rules = [...this.rules.values()].sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id));
      this.touched = true;
      // Nothing in the firewall without its line in the state file (a rule the file does not
      // know would have no owner and no timer after a crash). A change that adds or extends
      // a rule writes the file first - every rule it may leave in the firewall, the ones
      // leaving included - and a failed write refuses the change before the firewall is
      // touched: nothing to undo, no undo that could fail too. A change that only removes is
      // applied first and written after; a full disk never keeps a rule open.
      // "Adds or extends": a rule the firewall does not hold yet with this expiry, and the file
      // does not know either (a damaged file must not block a removal on a full disk).
      const known = this.saved;
      const inFirewall = new Map(this.applied.map((a) => [a.id, a.expiresAt]));
      const grows = rules.some((r) => inFirewall.get(r.id) !== r.expiresAt && known?.get(r.id) !== r.expiresAt);
      if (grows) {
        const staying = new Set(rules.map((r) => r.id));
        this.save([...rules, ...this.applied.filter((a) => !staying.has(a.id))], true);
      }
      try {
        await this.d.backend.apply(rules);
      } catch (e) {
        // The firewall kept its rules (one transaction): the file goes back to saying so.
        if (grows) this.save(this.applied, false);
        throw e;
      }
      this.applied = rules;
      this.save(rules, false);
      this.arm();
    });
    this.pending = p;
    this.queue = p.catch(() => {});
    return p;
  }

  /**
   * Writes the state file. `required`: a failure throws StateSaveError (the caller changes
   * nothing); otherwise it is reported (at most once a minute) and retried on a timer.
   */
  private save(rules: readonly Rule[], required: boolean): void {
    try {
      this.d.store.save(rules);
    } catch (e) {
      this.writes.failed(e as Error);
      if (required) throw new StateSaveError(`cannot write the NAT state file: ${(e as Error).message}`, { cause: e });
      this.retrySave();
      return;
    }
    this.saved = new Map(rules.map((r) => [r.id, r.expiresAt]));
    this.writes.succeeded();
    this.clock.clearTimeout(this.saveTimer);
    this.saveTimer = undefined;
  }

  private retrySave(): void {
    if (this.closed || this.saveTimer) return;
    this.saveTimer = this.clock.setTimeout(() => {
      this.saveTimer = undefined;
      // In the queue: never between another change's write and its apply.
      this.queue = this.queue.then(() => {
        if (!this.closed) this.save(this.applied, false);
      });
    }, SAVE_RETRY_MS);
  }

  private arm(): void {
    this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    const next = this.nextRule();
    if (this.closed || !next) return;
    const delay = Math.min(Math.max(0, this.deadlineOf(next) - this.clock.now()), MAX_TIMER_MS);
    this.timer = this.clock.setTimeout(() => void this.expireDue(), delay);
  }

  /** Timer callback: removes every rule whose time is up and cuts its flows. */
  private async expireDue(): Promise<void> {
    this.timer = undefined;
    if (this.closed) return;
    const now = this.clock.now();
    const due = [...this.rules.values()].filter((r) => this.deadlineOf(r) <= now);
    if (due.length === 0) return this.arm();
    for (const r of due) this.rules.delete(r.id);
    try {
      await this.sync();
    } catch (e) {
      for (const r of due) if (!this.rules.has(r.id)) this.rules.set(r.id, r);
      this.d.log.error(`removing expired rule(s) ${due.map((r) => r.id).join(", ")} failed; retrying`, e);
      if (!this.closed) this.timer = this.clock.setTimeout(() => void this.expireDue(), EXPIRY_RETRY_MS);
      return;
    }
    for (const r of due) if (!this.rules.has(r.id)) this.deadlines.delete(r.id);
    for (const r of due) this.d.log.info(`rule ${r.id} expired`, describe(r));
    await this.cut(due);
  }

  private async cut(rules: readonly Rule[]): Promise<void> {
    try {
      await this.d.cutFlows(rules);
    } catch (e) {
      this.d.log.warn(`could not cut open connections of rule(s) ${rules.map((r) => r.id).join(", ")}`, e);
    }
  }

  private view(r: Rule): RuleView {
    const v: RuleView = {
      id: r.id,
      proto: r.proto,
      src: r.src,
      port: r.port,
      to: `${r.toAddr}:${r.toPort}`,
      owner: r.owner,
      created: new Date(r.createdAt).toISOString(),
      expires: new Date(r.expiresAt).toISOString(),
      // Whole milliseconds: the monotonic clock has fractions, and a deadline of mono + 60000
      // read back as 60000.000001 would round a display of "60s" up to "61s".
      remaining_ms: Math.max(0, Math.round(this.deadlineOf(r) - this.clock.now())),
    };
    if (r.iface !== undefined) v.iface = r.iface;
    return v;
  }
}

function asUsage(e: unknown): Error {
  if (e instanceof FieldError) return new UsageError(e.message);
  return e as Error;
}

function describe(r: Rule): Record<string, unknown> {
  return { proto: r.proto, src: r.src, port: r.port, to: `${r.toAddr}:${r.toPort}`, owner: r.owner, expires: new Date(r.expiresAt).toISOString() };
}
