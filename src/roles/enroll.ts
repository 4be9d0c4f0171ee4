// Flash-and-run enrollment (issue 14 §8), both ends' composition:
//  - onsite: `enrollDevice` runs before the daemon when [enroll] is set and no bundle is there
//    yet: key made on the device (kept in STATE_DIR/enroll.key, 0600; it never leaves), a
//    request with the fleet token sent to the relay's enrollment endpoint again and again
//    (the reconnect backoff; a waiting request at the relay's pace) until it is signed, then the
//    bundle written (STATE_DIR/enrolled.bundle, or `bundle`) and the daemon started with it.
//    A second start finds the bundle and goes straight on.
//  - relay: `relayEnrollment` opens STATE_DIR/enroll.db, loads the enroller and serves the
//    endpoint and `agent enroll …`.
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { hostname } from "node:os";
import type { TCPSocketListener } from "bun";
import { enrolledBundlePath, secretFileProblem, type Config } from "../config.ts";
import type { Logger } from "../log.ts";
import { UsageError } from "../errors.ts";
import { fingerprintSha256, formatBundle, parseBundle } from "../pki.ts";
import { createEnrollmentCsr, generateDeviceKey, loadEnroller } from "../pki-enroll.ts";
import { requestEnrollment, type EnrollAnswer } from "../transport/enroll-wire.ts";
import { backoffDelay, Timing } from "../transport/policy.ts";
import { writeFileAtomic } from "../os/atomic.ts";
import { EnrollService, listenEnroll } from "../tunnel/relay/enroll-service.ts";
import { ENROLL_DB, EnrollStore } from "../tunnel/relay/enroll-store.ts";
import { formatHostPort } from "../netaddr.ts";
import type { Component } from "./daemon.ts";

export const ENROLL_KEY_FILE = "enroll.key";

function readToken(cfg: NonNullable<Config["enroll"]>): string {
  if (cfg.token !== undefined) return cfg.token;
  let text: string;
  try {
    // The token lets any box join the fleet: group and others must not read it.
    const problem = secretFileProblem(cfg.token_file!, statSync(cfg.token_file!).mode, ["the fleet enrollment token"]);
    if (problem) throw new UsageError(`[enroll] token_file ${problem.message}`, problem.hint);
    text = readFileSync(cfg.token_file!, "utf8");
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`[enroll] token_file ${cfg.token_file}: ${(e as Error).message}`, "put the token from `agent enroll token add` (on the relay) in that file");
  }
  const t = text.trim();
  if (t.length < 8 || /\s/.test(t)) throw new UsageError(`[enroll] token_file ${cfg.token_file} does not hold an enrollment token`, "put the token from `agent enroll token add` (on the relay) in that file, alone");
  return t;
}

/** The device's enrollment key: made once on this device, kept 0600 in the state dir. */
function deviceKey(stateDir: string, log: Logger): string {
  const file = join(stateDir, ENROLL_KEY_FILE);
  if (existsSync(file)) return readFileSync(file, "utf8");
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const key = generateDeviceKey();
  writeFileAtomic(file, key, { mode: 0o600 });
  log.info(`generated this device's key in ${file} (RSA 2048; it never leaves the device)`);
  return key;
}

export interface EnrollDeviceOptions {
  /** Stops the retries (a signal); the promise then resolves null. */
  signal?: AbortSignal;
  random?: () => number;
}

/**
 * Returns the path of the device's bundle, enrolling first when there is none. Resolves null
 * when stopped by `signal` before it was signed.
 */
export async function enrollDevice(cfg: Config, log: Logger, opts: EnrollDeviceOptions = {}): Promise<string | null> {
  const e = cfg.enroll!;
  const out = enrolledBundlePath(cfg);
  if (existsSync(out)) return out;
  const token = readToken(e);
  let caPem: string;
  try {
    caPem = readFileSync(e.ca!, "utf8");
  } catch (err) {
    throw new UsageError(`[enroll] ca ${e.ca}: ${(err as Error).message}`, "put the fleet CA certificate (the CA directory's ca.crt) in the image");
  }
  const key = deviceKey(cfg.state_dir, log);
  const { csrPem, id } = createEnrollmentCsr(key, e.id_prefix);
  const where = formatHostPort(e.address!);
  log.info(`no bundle yet: enrolling as ${id} at ${where}`, { id, relay: where });
  let attempt = 0;
  let lastSaid = "";
  const say = (level: "info" | "warn", text: string) => {
    if (text !== lastSaid) log[level](text, { id });
    lastSaid = text;
  };
  while (!opts.signal?.aborted) {
    let answer: EnrollAnswer | null = null;
    try {
      answer = await requestEnrollment({ host: e.address!.host, port: e.address!.port, caPem, request: { v: 1, token, csr: csrPem, hostname: cfg.hostname ?? hostname() } });
    } catch (err) {
      say("warn", `enrollment at ${where}: ${(err as Error).message}; retrying`);
    }
    let wait = backoffDelay(attempt++, opts.random);
    if (answer?.status === "signed") {
      const text = formatBundle({ role: "onsite", id: answer.id, certPem: answer.cert, keyPem: key, caPem: answer.ca, chainPem: answer.chain });
      try {
        if (fingerprintSha256(answer.ca) !== fingerprintSha256(caPem)) throw new Error("the relay answered with another fleet CA than [enroll] ca");
        const b = parseBundle(text, out);
        if (b.id !== id) throw new Error(`the relay signed ${b.id}, not ${id}`);
      } catch (err) {
        say("warn", `enrollment at ${where}: the signed certificate is unusable: ${(err as Error).message}; retrying`);
        answer = null;
      }
      if (answer) {
        writeFileAtomic(out, text, { mode: 0o600 });
        log.info(`enrolled as ${id}: bundle written to ${out}`, { id, bundle: out });
        return out;
      }
    } else if (answer?.status === "pending") {
      say("info", `enrollment of ${id} waits for the operator's approval on the relay (\`agent enroll approve ${id}\`)`);
      attempt = 0;
      wait = answer.retry * 1000;
    } else if (answer?.status === "refused") {
      say("warn", `enrollment refused by the relay (${answer.code}): ${answer.reason}`);
      // Nothing this device can change: ask again only now and then.
      if (answer.code === "revoked" || answer.code === "denied" || answer.code === "csr") wait = Timing.backoffCap;
    }
    await sleep(wait, opts.signal);
  }
  return null;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done);
  });
}

/** Runs enrollDevice until signed or SIGTERM/SIGINT (null). */
export async function enrollUntilSignal(cfg: Config, log: Logger): Promise<string | null> {
  const ac = new AbortController();
  const stop = () => ac.abort();
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
  try {
    return await enrollDevice(cfg, log, { signal: ac.signal });
  } finally {
    process.off("SIGTERM", stop);
    process.off("SIGINT", stop);
  }
}

// ---- relay ------------------------------------------------------------------------------------

/** The relay's enrollment endpoint as a daemon part. */
export class RelayEnrollment implements Component {
  readonly name = "enroll";
  private listener: TCPSocketListener<unknown> | null = null;

  constructor(
    private readonly cfg: Config,
    readonly service: EnrollService,
    private readonly store: EnrollStore,
    private readonly tls: { certPem: string; keyPem: string },
    private readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    const l = this.cfg.enroll!.listen!;
    this.listener = listenEnroll({ hostname: l.host, port: l.port, tls: this.tls, service: this.service, log: this.log }) as TCPSocketListener<unknown>;
    this.log.info(`enrollment endpoint listening on ${l.host}:${this.listener.port}`);
  }

  status(): Record<string, unknown> {
    const all = this.service.list();
    return {
      listen: this.listener ? `${this.cfg.enroll!.listen!.host}:${this.listener.port}` : null,
      port: this.listener?.port ?? null,
      pending: all.filter((e) => e.state === "pending").length,
      enrolled: all.filter((e) => e.state === "signed").length,
      tokens: this.service.tokenList().length,
    };
  }

  async close(): Promise<void> {
    this.listener?.stop(true);
    this.listener = null;
    try {
      this.store.close();
    } catch {
      /* closed already */
    }
  }
}

/** The relay's enrollment part, or null without [enroll]. */
export async function relayEnrollment(
  cfg: Config,
  tls: { certPem: string; keyPem: string },
  log: Logger,
  hooks: { refuse(address: string, presented: string | null, reason: string): void; revoked(): void },
): Promise<RelayEnrollment | null> {
  if (!cfg.enroll?.listen || !cfg.enroll.enroller) return null;
  const enroller = await loadEnroller(cfg.enroll.enroller);
  mkdirSync(cfg.state_dir, { recursive: true, mode: 0o700 });
  const store = new EnrollStore(join(cfg.state_dir, ENROLL_DB));
  const service = new EnrollService({ store, enroller, days: cfg.enroll.days, log, refuse: hooks.refuse, revoked: hooks.revoked });
  return new RelayEnrollment(cfg, service, store, tls, log);
}

/** `agent enroll …` on the relay's control socket; without [enroll] each says how to turn it on. */
export function enrollApi(service: EnrollService | null): Record<string, (req: unknown) => unknown> {
  const s = (): EnrollService => {
    if (!service) throw new UsageError("this relay does not enroll devices: its config has no [enroll] section", 'add [enroll] listen = "0.0.0.0:8443" and enroller = "FILE" (from `agent pki issue-enroller`), then restart the relay');
    return service;
  };
  const req = (r: unknown) => (r ?? {}) as Record<string, unknown>;
  return {
    enrollPending: () => s().list("pending"),
    enrollList: () => s().list(),
    enrollApprove: (r) => s().approve(req(r)),
    enrollDeny: (r) => s().deny(req(r)),
    enrollRevoke: (r) => s().revoke(req(r)),
    enrollTokenAdd: (r) => s().tokenAdd(req(r)),
    enrollTokenList: () => s().tokenList(),
    enrollTokenDel: (r) => s().tokenDel(req(r)),
  };
}
