// The daemon shell every role runs in: state dir, control socket, `status`, signals.
// Roles add their parts as Components (started in order, closed in reverse); the shell
// owns the process lifecycle so a role never touches signals or the socket itself.
// `composeDaemon` builds the daemon of a role (each role's file composes its parts and
// serves its API object, src/roles/api.ts); `runRole` is what `agent --role R` runs.
import { mkdirSync, accessSync, constants } from "node:fs";
import type { Config, Role } from "../config.ts";
import { ControlServer } from "../control.ts";
import { RuntimeError, UsageError } from "../errors.ts";
import type { Logger } from "../log.ts";
import type { Bundle } from "../pki.ts";
import { versionInfo } from "../version.ts";
import type { DaemonApi } from "./api.ts";

export interface Component {
  readonly name: string;
  start(): Promise<void> | void;
  /** Idempotent; resolves once the component's loops have stopped. */
  close(): Promise<void> | void;
  /** Extra fields for `agent status`. */
  status?(): Record<string, unknown>;
  /** Re-reads what may change under a running daemon (SIGHUP), e.g. a revocation list. */
  reload?(): Promise<void> | void;
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
  private readonly components: Component[] = [];
  private readonly startedAt = Date.now();
  private closing: Promise<void> | undefined;

  constructor(
    readonly identity: Identity,
    readonly config: Config,
    readonly log: Logger,
  ) {
    this.control = new ControlServer(config.control, log.withTag("control"));
    this.control.handle("status", () => this.status());
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

  /** SIGHUP: asks every component that can reload to do so; one failure does not stop the rest. */
  async reload(): Promise<void> {
    for (const c of this.components) {
      if (!c.reload) continue;
      try {
        await c.reload();
        this.log.info(`reloaded ${c.name}`);
      } catch (e) {
        this.log.error(`reloading ${c.name} failed; keeping the previous state`, e);
      }
    }
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
export async function composeDaemon(role: Role, cfg: Config, bundle: Bundle, log: Logger): Promise<Daemon> {
  const daemon = new Daemon({ role, id: bundle.id }, cfg, log.withTag(role));
  const rlog = log.withTag(role);
  if (role === "relay") {
    // The relay role registers devices/sessions/refusals itself; serving the shell's part
    // names the role in the answer to an unknown command.
    const { RelayRole } = await import("./relay.ts");
    daemon.add(new RelayRole(cfg, bundle, rlog, daemon.control));
    daemon.control.serve(daemon.api(), "relay");
  } else if (role === "onsite") {
    const { composeOnsite } = await import("./onsite.ts");
    await composeOnsite(daemon, cfg, bundle, log);
  } else {
    const { composeMaster } = await import("./master.ts");
    composeMaster(daemon, cfg, bundle, log);
  }
  return daemon;
}

/**
 * Loads the bundle a daemon of `role` runs with: refused when it is another role's. An
 * expired or not-yet-valid certificate is logged, not fatal: a Pi has no RTC and may boot
 * with a wrong clock until NTP answers, and the relay decides with its own clock.
 */
export async function loadRoleBundle(role: Role, cfg: Config, log: Logger, now = Date.now()): Promise<Bundle> {
  const { loadBundle } = await import("../pki.ts"); // node-forge: loaded only when a daemon starts
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

/** `agent --role R`: loads the bundle, composes the daemon and runs it until a signal. */
export async function runRole(role: Role, cfg: Config, log: Logger): Promise<number> {
  const bundle = await loadRoleBundle(role, cfg, log);
  return runUntilSignal(await composeDaemon(role, cfg, bundle, log));
}

/** Runs a daemon until SIGTERM or SIGINT; returns the exit code. */
export async function runUntilSignal(d: Daemon): Promise<number> {
  await d.start();
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
