// The daemon shell every role runs in: state dir, control socket, `status`, signals.
// Roles add their parts as Components (started in order, closed in reverse); the shell
// owns the process lifecycle so a role never touches signals or the socket itself.
// `composeDaemon` builds the daemon of a role (each role's file composes its parts and
// serves its API object, src/roles/api.ts); `runRole` is what `agent --role R` runs.
import { mkdirSync, accessSync, constants } from "node:fs";
import type { Config, Role } from "../config.ts";
import { ControlServer } from "../control.ts";
import { RuntimeError, UsageError } from "../errors.ts";
import { setLogLevel, type Logger } from "../log.ts";
import type { Bundle } from "../pki.ts";
import { versionInfo } from "../version.ts";
import { formatAllowEntry } from "../netaddr.ts";
import type { DaemonApi } from "./api.ts";
import { Registry } from "../metrics.ts";
import { EventBus } from "../events.ts";
import { MetricsComponent } from "./metrics.ts";

export interface Component {
  readonly name: string;
  start(): Promise<void> | void;
  /** Idempotent; resolves once the component's loops have stopped. */
  close(): Promise<void> | void;
  /** Extra fields for `agent status`. */
  status?(): Record<string, unknown>;
  /**
   * Re-reads what may change under a running daemon (SIGHUP), e.g. a revocation list. `next`
   * is the config read again, when the daemon knows how to (DaemonOptions.reloadConfig).
   */
  reload?(next?: Config): Promise<void> | void;
}

export interface DaemonOptions {
  /** Reads the config again (file and flags) for SIGHUP; without it only components reload. */
  reloadConfig?: () => Promise<Config>;
  /** Group that may use the control socket (mode 0660); default: owner only (0600). */
  operator?: string;
}

export interface Identity {
  role: Role;
  id: string;
}

export interface DaemonStatus {
  role: Role;
  id: string;
  version: string;
  commit: string;
  target: string;
  pid: number;
  started: string;
  uptime_s: number;
  control: string;
  state_dir: string;
  [extra: string]: unknown;
}

export class Daemon {
  readonly control: ControlServer;
  /** Every part's metric families; served on `metrics` when configured (src/roles/metrics.ts). */
  readonly metrics = new Registry();
  /** What `agent monitor` streams from this daemon (src/events.ts). */
  readonly events = new EventBus();
  private readonly components: Component[] = [];
  private readonly startedAt = Date.now();
  private closing: Promise<void> | undefined;

  constructor(
    readonly identity: Identity,
    readonly config: Config,
    readonly log: Logger,
    private readonly opts: DaemonOptions = {},
  ) {
    this.control = new ControlServer(config.control, log.withTag("control"), opts.operator);
    this.control.handle("status", () => this.status());
    this.control.stream("monitor", (_args, emit) => this.events.subscribe(emit));
    const v = versionInfo();
    this.metrics.collect("agent_build_info", "This agent's role and version (always 1).", "gauge", () => [{ labels: { role: identity.role, version: v.version }, value: 1 }], { role: [identity.role], version: [v.version] });
    this.metrics.collect("agent_start_time_seconds", "When this daemon started, in seconds since the epoch.", "gauge", () => Math.floor(this.startedAt / 1000));
  }

  /** The part of every role's API object that the shell answers. */
  api(): DaemonApi {
    return { status: () => this.status() };
  }

  add(c: Component): this {
    this.components.push(c);
    return this;
  }

  status(): DaemonStatus {
    const v = versionInfo();
    const s: DaemonStatus = {
      role: this.identity.role,
      id: this.identity.id,
      version: v.version,
      commit: v.commit,
      target: v.target,
      pid: process.pid,
      started: new Date(this.startedAt).toISOString(),
      uptime_s: Math.floor((Date.now() - this.startedAt) / 1000),
      control: this.config.control,
      state_dir: this.config.state_dir,
    };
    for (const c of this.components) if (c.status) s[c.name] = c.status();
    return s;
  }

  async start(): Promise<void> {
    const dir = this.config.state_dir;
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      accessSync(dir, constants.W_OK);
    } catch (e) {
      throw new RuntimeError(`state dir ${dir} is not usable: ${(e as Error).message}`, "pass --state-dir with a writable directory (see `agent doctor`)", { cause: e });
    }
    await this.control.start();
    for (const c of this.components) {
      try {
        await c.start();
      } catch (e) {
        await this.close();
        throw new RuntimeError(`start ${c.name}`, undefined, { cause: e });
      }
    }
    this.log.info(`${this.identity.role} daemon started`, { id: this.identity.id, pid: process.pid, control: this.config.control });
  }

  /**
   * SIGHUP: reads the config again and applies what can change live, a log line for each
   * change (log level; `allow`, which the session server and the NAT service read from this
   * daemon's config; the relay's `[[access]]`, which its pairing policy reads), then asks every component that can reload to do so. A config that no
   * longer parses changes nothing; one component's failure does not stop the rest.
   */
  async reload(): Promise<void> {
    let next: Config | undefined;
    if (this.opts.reloadConfig) {
      try {
        next = await this.opts.reloadConfig();
      } catch (e) {
        this.log.error("SIGHUP: the config does not load; keeping the running one", e);
        return;
      }
      this.applyLive(next);
    }
    for (const c of this.components) {
      if (!c.reload) continue;
      try {
        await c.reload(next);
        this.log.info(`reloaded ${c.name}`);
      } catch (e) {
        this.log.error(`reloading ${c.name} failed; keeping the previous state`, e);
      }
    }
  }

  /** The part of a re-read config that takes effect without a restart; logs what changed and what needs one. */
  private applyLive(next: Config): void {
    const cur = this.config as { log_level: Config["log_level"]; allow: Config["allow"] };
    if (next.log_level !== cur.log_level) {
      setLogLevel(this.log, next.log_level);
      this.log.info(`SIGHUP: log level ${cur.log_level} → ${next.log_level}`, { key: "log_level", from: cur.log_level, to: next.log_level });
      cur.log_level = next.log_level;
    }
    const text = (a: Config["allow"]) => JSON.stringify(a);
    if (text(next.allow) !== text(cur.allow)) {
      const from = cur.allow.map(formatAllowEntry);
      const to = next.allow.map(formatAllowEntry);
      // In place: the session server and the NAT service hold this very array.
      cur.allow.splice(0, cur.allow.length, ...next.allow);
      if (this.identity.role === "onsite") this.log.info(`SIGHUP: allow list ${from.join(", ") || "(empty)"} → ${to.join(", ") || "(empty)"}`, { key: "allow", from, to });
    }
    const access = cur as unknown as { access: Config["access"] };
    if (JSON.stringify(next.access) !== JSON.stringify(access.access)) {
      const from = access.access.length;
      // In place too: the relay's pairing policy reads this array at each decision.
      access.access.splice(0, access.access.length, ...next.access);
      if (this.identity.role === "relay") this.log.info(`SIGHUP: [[access]] ${from} → ${next.access.length} rule(s); new sessions and device lists follow them`, { key: "access", rules: next.access });
    }
    const restartOnly = ["relay", "listen", "control", "state_dir", "bundle", "json_logs", "proxy", "gui", "nymea", "metrics", "proxy_protocol", "session_idle_timeout", "write_stall_timeout"] as const;
    const changed = restartOnly.filter((k) => JSON.stringify(next[k as keyof Config]) !== JSON.stringify(this.config[k as keyof Config]));
    if (changed.length) this.log.warn(`SIGHUP: ${changed.join(", ")} changed; that takes a restart`, { keys: changed });
  }

  /** Stops components in reverse order, then the control socket. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const c of [...this.components].reverse()) {
        try {
          await c.close();
        } catch (e) {
          this.log.warn(`closing ${c.name} failed`, e);
        }
      }
      this.control.close();
    })();
    return this.closing;
  }
}

/**
 * The daemon of `role`, composed and with its API served on the control socket, not started.
 * The bundle must be the role's (see loadRoleBundle).
 */
export async function composeDaemon(role: Role, cfg: Config, bundle: Bundle, log: Logger, opts: DaemonOptions = {}): Promise<Daemon> {
  const daemon = new Daemon({ role, id: bundle.id }, cfg, log.withTag(role), opts);
  const rlog = log.withTag(role);
  if (role === "relay") {
    const { RelayRole } = await import("./relay.ts");
    const { systemClock } = await import("../clock.ts");
    const relay = new RelayRole(cfg, bundle, rlog, undefined, systemClock, { metrics: daemon.metrics, events: daemon.events });
    daemon.add(relay);
    // Issue 14 §8: the enrollment endpoint and `agent enroll …` (src/roles/enroll.ts).
    const { relayEnrollment, enrollApi } = await import("./enroll.ts");
    const enroll = await relayEnrollment(cfg, bundle, rlog.withTag("enroll"), relay.enrollHooks());
    if (enroll) daemon.add(enroll);
    relay.enrolledRevocations = () => enroll?.service.revokedSerials() ?? [];
    const relayApi = { ...daemon.api(), ...relay.api, ...enrollApi(enroll?.service ?? null) };
    daemon.control.serve(relayApi, "relay");
    const { relayGui } = await import("./relay.ts");
    const gui = relayGui(cfg, bundle, relayApi, daemon.events, rlog);
    if (gui) daemon.add(gui);
  } else if (role === "onsite") {
    const { composeOnsite } = await import("./onsite.ts");
    await composeOnsite(daemon, cfg, bundle, log);
  } else {
    const { composeMaster } = await import("./master.ts");
    composeMaster(daemon, cfg, bundle, log);
  }
  // Last: started after the role's parts (their families are registered), closed first.
  if (cfg.metrics) daemon.add(new MetricsComponent(cfg.metrics, daemon.metrics, rlog));
  return daemon;
}

/**
 * Loads the bundle a daemon of `role` runs with: refused when it is another role's. An
 * expired or not-yet-valid certificate is logged, not fatal: a Pi has no RTC and may boot
 * with a wrong clock until NTP answers, and the relay decides with its own clock.
 */
export async function loadRoleBundle(role: Role, cfg: Config, log: Logger, now = Date.now()): Promise<Bundle> {
  const { loadBundle } = await import("../pki.ts"); // loaded when a daemon starts (certificates read with node:crypto, src/x509.ts)
  const bundle = await loadBundle(cfg.bundle!);
  if (bundle.role !== role) {
    throw new UsageError(
      `bundle ${cfg.bundle} is for role ${bundle.role} (id ${bundle.id}), not ${role}`,
      `issue one with \`agent pki issue --role ${role} ...\` or start with --role ${bundle.role}`,
    );
  }
  if (now > bundle.notAfter.getTime()) {
    log.error(`certificate in ${cfg.bundle} expired on ${bundle.notAfter.toISOString()}; the relay will refuse it`, { hint: "issue a new bundle with `agent pki issue --force`" });
  } else if (now < bundle.notBefore.getTime()) {
    log.warn(`certificate in ${cfg.bundle} is valid only from ${bundle.notBefore.toISOString()}; is this clock right?`, { now: new Date(now).toISOString() });
  }
  return bundle;
}

/** After start-up, once: the executable's code pages this process touched while starting are
 * dropped from its RSS (src/os/text-trim.ts; issue 18's footprint, docs/performance.md). */
const TEXT_TRIM_DELAY_MS = 10_000;
function trimTextLater(log: Logger): void {
  if (process.platform !== "linux") return;
  const t = setTimeout(() => {
    void import("../os/text-trim.ts")
      .then((m) => {
        const r = m.trimTextPages();
        if (r.error) log.debug(`text pages not trimmed: ${r.error}`);
        else log.debug(`text pages trimmed: ${r.mappings} mapping(s), ${Math.round(r.bytes / 1024)} KiB`);
      })
      .catch((e: Error) => log.debug(`text pages not trimmed: ${e.message}`));
  }, TEXT_TRIM_DELAY_MS);
  t.unref?.();
}

/** `agent --role R`: loads the bundle, composes the daemon and runs it until a signal. */
export async function runRole(role: Role, cfg: Config, log: Logger, opts: DaemonOptions = {}): Promise<number> {
  if (role === "onsite" && cfg.enroll) {
    // Flash-and-run: no bundle yet? Enroll at the relay first (src/roles/enroll.ts).
    const { enrollUntilSignal } = await import("./enroll.ts");
    const enrolled = await enrollUntilSignal(cfg, log.withTag("enroll"));
    if (enrolled === null) return 0;
    cfg = { ...cfg, bundle: enrolled };
    const reread = opts.reloadConfig;
    // SIGHUP reads the file again, which names no bundle: the enrolled one is still the one in use.
    if (reread) opts = { ...opts, reloadConfig: async () => ({ ...(await reread()), bundle: enrolled }) };
  }
  const bundle = await loadRoleBundle(role, cfg, log);
  return runUntilSignal(await composeDaemon(role, cfg, bundle, log, opts));
}

/** Runs a daemon until SIGTERM or SIGINT; returns the exit code. */
export async function runUntilSignal(d: Daemon): Promise<number> {
  await d.start();
  trimTextLater(d.log);
  const sig = await new Promise<NodeJS.Signals>((resolve) => {
    const on = (s: NodeJS.Signals) => resolve(s);
    process.once("SIGTERM", on);
    process.once("SIGINT", on);
    process.on("SIGHUP", () => void d.reload());
  });
  d.log.info(`received ${sig}, stopping`);
  await d.close();
  d.log.info("stopped");
  return 0;
}
