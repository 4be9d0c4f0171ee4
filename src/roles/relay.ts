// The relay role: TLS listener + RelayServer + revocation list (`revocations`, else
// STATE_DIR/revoked; a missing default is an empty list and a loud warning; reloaded on SIGHUP and when
// the file changes) + the audit log of refusals + `agent devices` / `agent sessions` on the
// relay's own control socket.
import { statSync } from "node:fs";
import { join } from "node:path";
import type { TCPSocketListener } from "bun";
import { revocationsFile, type Config } from "../config.ts";
import type { ControlServer } from "../control.ts";
import type { Logger } from "../log.ts";
import { formatHostPort } from "../netaddr.ts";
import { isRevoked, loadRevocations, parseRevocations, REVOCATIONS_HEADER, type Bundle, type RevocationList } from "../pki.ts";
import { listenTls, type ListenOptions } from "../transport/tls.ts";
import { listenTlsProxied } from "../transport/tls-proxied.ts";
import { fdLimit } from "../fdlimit.ts";
import { RelayServer } from "../tunnel/relay/server.ts";
import { RefusalCode, tlsRefusalCode } from "../tunnel/relay/refusals.ts";
import { AdmissionTable } from "../tunnel/relay/admission.ts";
import { BatchedRefusalFile, RefusalThrottle } from "../tunnel/relay/refusal-throttle.ts";
import { redialSpread } from "../transport/accept-pacer.ts";
import { AcceptGuard } from "../transport/accept-guard.ts";
import type { RelayApi } from "./api.ts";
import type { Component } from "./daemon.ts";
import { systemClock, type Clock } from "../clock.ts";
import { NymeaService } from "../tunnel/nymea/service.ts";
import { NotFoundError, UsageError } from "../errors.ts";
import type { Metrics } from "../metrics.ts";
import type { Events } from "../events.ts";
import { heartbeatSecret, listenHeartbeats, openInventoryStore } from "./fleet.ts";
import type { DatagramSocket } from "../transport/heartbeat/socket.ts";
import type { InventoryStore } from "../tunnel/relay/inventory-store.ts";
import { fleetApi } from "./fleet-api.ts";
import { guiComponent } from "../gui/attach.ts";
import { relayDigest } from "../gui/digest.ts";
import type { EventSource as GuiEvents } from "../gui/server.ts";
import { RelayCluster } from "../cluster/relay-cluster.ts";
import { startMesh, type Mesh } from "../cluster/mesh.ts";
import { VERSION } from "../version.ts";

const REVOCATION_POLL_MS = 1_000;
const AUDIT_MAX_BYTES = 10 * 1024 * 1024;

export class RelayRole implements Component {
  readonly name = "relay";
  readonly server: RelayServer;
  private listener: Pick<TCPSocketListener<unknown>, "port" | "stop"> | null = null;
  private revocations: RevocationList = parseRevocations(REVOCATIONS_HEADER + "\n");
  /** The file's list alone; `revocations` is it merged with the revoked enrolled certificates. */
  private fileRevocations: RevocationList = this.revocations;
  /** This relay's own revoked serials (its file's and the enrolled ones): what it shares in cluster mode. */
  private ownSerials: ReadonlySet<string> = new Set();
  /** Issue 14 §8: certificates this relay enrolled and then revoked (`agent enroll revoke`). */
  enrolledRevocations: () => readonly { serial: string; id: string; revoked: number }[] = () => [];
  private revocationsStamp = "";
  private revocationsLoaded = false;
  private poll: ReturnType<typeof setInterval> | null = null;
  /** Issue 17: who may start a handshake (caps, early drop, per-source rates and penalties, the accept pacer). */
  private readonly admission: AdmissionTable;
  private readonly throttle = new RefusalThrottle();
  private readonly auditLog: BatchedRefusalFile;
  private readonly clock: Clock;
  private guard: AcceptGuard | null = null;
  private fdLimit: number | null = null;
  /** Connections closed by their peer before TLS completed (probes, dropped links). */
  private abandoned = 0;
  /** [nymea]: the nymea-remoteproxy listeners, a world apart from the fleet's sessions. */
  private readonly nymea: NymeaService | null;
  /** Issue 14: the inventory kept in the state dir, and the heartbeat listener. */
  private readonly store: InventoryStore;
  private heartbeatSocket: DatagramSocket | null = null;
  /** Issue 16: cluster mode ([cluster]); null: a single relay. */
  readonly cluster: RelayCluster | null;
  /** The relay-to-relay mesh (cluster mode), bound at start. */
  private mesh: Mesh | null = null;

  /** What the relay's control socket serves beside the daemon shell's status (src/roles/api.ts). */
  readonly api: Omit<RelayApi, "status">;

  constructor(private readonly cfg: Config, private readonly bundle: Bundle, private readonly log: Logger, control?: ControlServer, clock: Clock = systemClock, ops: { metrics?: Metrics; events?: Events } = {}) {
    // The audit trail: STATE_DIR/refusals.log, JSON lines, one old generation kept.
    const auditFile = join(cfg.state_dir, "refusals.log");
    this.clock = clock;
    this.admission = new AdmissionTable();
    // Written in batches, and beyond the first few refusals per source a minute as one summary line.
    this.auditLog = new BatchedRefusalFile(auditFile, { clock, throttle: this.throttle, maxBytes: AUDIT_MAX_BYTES, onError: (e) => this.log.warn(`cannot write ${auditFile}: ${e.message}`) });
    this.store = openInventoryStore(cfg.state_dir, log);
    if (cfg.cluster?.node && cfg.cluster.node !== bundle.id)
      throw new UsageError(`[cluster] node = ${JSON.stringify(cfg.cluster.node)} differs from the relay certificate's id ${JSON.stringify(bundle.id)}`, "the other relays authenticate the mesh by certificate id: remove node, or issue this relay's bundle with --id " + cfg.cluster.node);
    this.cluster = cfg.cluster ? new RelayCluster({ cfg: cfg.cluster, id: bundle.id, log: log.withTag("cluster"), access: () => this.cfg.access, clock }) : null;
    this.server = new RelayServer({
      cluster: this.cluster?.hooks,
      inventoryStore: this.store,
      heartbeat: cfg.heartbeat_port === 0 ? undefined : heartbeatOptions(cfg, log),
      id: bundle.id,
      log: log,
      access: () => this.cfg.access,
      clock,
      sessionIdleTimeout: cfg.session_idle_timeout,
      writeStallTimeout: cfg.write_stall_timeout,
      metrics: ops.metrics,
      events: ops.events,
      refusalLog: this.auditLog,
      admission: { throttle: this.throttle, unauthenticated: { hold: (a) => this.admission.hold(a, clock.now()), release: (a) => this.admission.release(a) } },
      redialSpread: (fleet) => redialSpread(fleet, this.admission.policy.acceptRate),
    });
    this.cluster?.attach(this.server, () => this.mergeClusterRevocations());
    const m = this.server.metrics.registry;
    m.collect("agent_relay_unauthenticated_connections", "Connections not yet past TLS (capped in total and per source).", "gauge", () => this.admission.total);
    m.collect("agent_relay_abandoned_handshakes_total", "Connections closed by their peer before TLS completed (probes, dropped links).", "counter", () => this.abandoned);
    this.api = {
      devices: () => (this.cluster ? this.cluster.devices() : this.server.deviceRows()),
      sessions: () => (this.cluster ? this.cluster.sessions() : this.server.sessionList()),
      refusals: () => this.server.refusals.slice(-100),
      kick: (req) => {
        const id = requiredText(req, "id", "a device or master id (see `agent devices`, `agent sessions`)");
        const kicked = this.server.kick(id, optionalText(req, "reason"));
        if (kicked.length === 0) throw new NotFoundError(`no device or master ${JSON.stringify(id)} is connected to this relay`, "see `agent devices` for the onsite devices online and `agent sessions` for the masters");
        return kicked;
      },
      sessionsEnd: (req) => {
        const id = requiredText(req, "session", "a session id (see `agent sessions`)");
        const info = this.server.endSession(id, optionalText(req, "reason"));
        if (!info) throw new NotFoundError(`no active session ${JSON.stringify(id)} on this relay`, "see `agent sessions`");
        return info;
      },
      ...fleetApi(this.server, auditFile),
    };
    control?.serve(this.api, "relay");
    this.nymea = cfg.nymea ? new NymeaService(cfg.nymea, { cert: bundle.certPem, key: bundle.keyPem }, log.withTag("nymea"), clock) : null;
  }

  async start(): Promise<void> {
    try {
      this.fdLimit = fdLimit().soft;
      if (this.fdLimit < 4096) this.log.warn(`open-files limit is ${this.fdLimit}: the relay can hold fewer devices than that; raise it (systemd LimitNOFILE=, ulimit -n)`);
    } catch (e) {
      this.log.warn(`cannot read the open-files limit: ${(e as Error).message}`);
    }
    await this.reloadRevocations(true);
    this.mergeEnrolled(); // also when there is no revocation file
    this.cluster?.publishRevoked(this.ownSerials); // shared once Redis answers (kept and sent again on every reconnect)
    if (this.cluster) {
      this.cluster.start();
      this.mesh = startMesh({
        server: this.server,
        directory: this.cluster.directory,
        listen: this.cluster.self.mesh,
        tls: this.bundle,
        revocations: () => this.revocations,
        log: this.log.withTag("mesh"),
        agent: `agent/${VERSION}`,
        metrics: this.server.metrics.registry,
      });
      this.mesh.start();
    }
    const listen = this.cfg.listen!;
    try {
      const opts: ListenOptions = {
        hostname: listen.host,
        port: listen.port,
        tls: this.bundle,
        trust: () => ({ revocations: this.revocations, roles: ["onsite", "master"] }),
        accept: ({ link, verdict, handshakeMs }) => {
          if (handshakeMs !== undefined) this.server.metrics.handshake.observe(handshakeMs / 1000);
          this.admission.succeeded(link.remoteAddress, this.clock.now());
          this.server.accept(link, verdict);
        },
        refuse: (r) => {
          // A failed handshake costs its source (issue 17); being turned away for capacity does not,
          // nor a handshake that never came (the deadline): that is what a device's dial over a
          // path that died looks like, and silent connections are bounded by the caps and rates.
          const code = tlsRefusalCode(r.reason);
          if (code !== RefusalCode.CAPACITY && code !== RefusalCode.DEADLINE) this.admission.failed(r.address, this.clock.now());
          this.server.refusedAtTls(r.address, r.presented, this.cfg.proxy_protocol ? r.reason : notTlsHint(r.reason));
        },
        abandoned: () => void this.abandoned++,
        admit: (source) => {
          const v = this.admission.admit(source, this.clock.now());
          return v.ok || v.reason;
        },
        release: (source) => this.admission.release(source),
        deadlineNow: () => this.admission.deadline(),
      };
      // Behind a load balancer every connection starts with its PROXY v2 header (src/transport/tls-proxied.ts).
      // Issue 17: out of descriptors, the Bun listener pauses accepting instead of spinning (src/transport/accept-guard.ts).
      const limit = this.fdLimit;
      this.listener = this.cfg.proxy_protocol
        ? await listenTlsProxied(opts)
        : limit === null
          ? (listenTls(opts) as TCPSocketListener<unknown>)
          : (this.guard = new AcceptGuard({ listen: (port) => listenTls({ ...opts, port }), port: listen.port, limit, clock: this.clock, log: this.log }));
    } catch (e) {
      throw new Error(`cannot listen on ${formatHostPort(listen)}: ${(e as Error).message}`, { cause: e });
    }
    this.log.info(`relay ${this.bundle.id} listening on ${listen.host}:${this.listener.port}${this.cfg.proxy_protocol ? " (PROXY protocol v2 required: behind a load balancer)" : ""}`);
    this.nymea?.start();
    if (this.cfg.heartbeat_port !== 0) {
      // Devices learn the port in HEARTBEAT_KEY: with `listen` on port 0 (tests) it is the port the TCP listener got.
      const port = this.cfg.heartbeat_port ?? this.listener.port;
      this.server.setHeartbeatPort(port);
      try {
        this.heartbeatSocket = await listenHeartbeats(this.server, listen.host, port, this.log);
      } catch (e) {
        this.log.error(`cannot receive heartbeats on udp ${listen.host}:${port}: ${(e as Error).message}; devices whose tunnel is down will not be heard`);
      }
    }
    // Polled whether configured or the default: a list copied into place later takes effect
    // within a second, without a restart.
    this.poll = setInterval(() => {
      void this.reloadRevocations(false).catch((e) => this.log.error(`revocation list: ${(e as Error).message}; keeping the previous one`));
      this.admissionTick();
    }, REVOCATION_POLL_MS);
  }

  /** Issue 17, every second: the refusal summaries of sources whose minute ended, and forgetting recovered sources. */
  private admissionTick(): void {
    const time = new Date(this.clock.wall()).toISOString();
    for (const s of this.server.summarizeRefusals()) this.auditLog.summary(s, this.throttle.policy.perSource, time);
    this.admission.sweep(this.clock.now());
  }

  /** SIGHUP */
  async reload(): Promise<void> {
    this.nymea?.reload();
    await this.reloadRevocations(true);
  }

  private async reloadRevocations(force: boolean): Promise<void> {
    const { path: file, configured } = revocationsFile(this.cfg);
    let stamp: string;
    try {
      const st = statSync(file);
      stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (configured || code !== "ENOENT") throw new Error(`cannot read revocation list ${file}: ${(e as Error).message}`, { cause: e });
      // The default file is missing: no list, said loudly once (at start, or when it goes).
      if (this.revocationsStamp === "missing") return;
      this.revocationsStamp = "missing";
      this.log.warn(this.revocationsLoaded ? `revocation list ${file} was removed; keeping the ${this.revocations.entries.length} revoked certificate(s) loaded before` : missingRevocationsWarning(file));
      return;
    }
    if (!force && stamp === this.revocationsStamp) return;
    // Remembered before parsing: a damaged file is reported once, not at every poll, and the
    // previous list stays in force until the file changes again (or SIGHUP).
    this.revocationsStamp = stamp;
    this.fileRevocations = await loadRevocations(file);
    const list = this.mergeEnrolled();
    this.revocationsLoaded = true;
    this.cluster?.publishRevoked(this.ownSerials);
    this.mesh?.reload();
    const closed = this.server.enforceRevocations((serial) => isRevoked(list, serial));
    this.log.info(`revocation list ${file}: ${list.entries.length} revoked certificate(s)${closed ? `; closed ${closed} live connection(s)` : ""}`);
  }

  /** The file's revocations plus the enrolled ones (and the cluster's): the list every handshake is judged by. */
  private mergeEnrolled(): RevocationList {
    const extra = this.enrolledRevocations().map((r) => ({ serial: r.serial, id: r.id, revokedAt: new Date(r.revoked) }));
    const own = extra.length === 0 ? this.fileRevocations : { entries: [...this.fileRevocations.entries, ...extra], serials: new Set([...this.fileRevocations.serials, ...extra.map((r) => r.serial)]) };
    this.ownSerials = own.serials;
    // Cluster mode: the serials any relay of the cluster revoked, too.
    const shared = this.cluster?.directory.revokedSerials;
    const list = !shared || shared.size === 0 ? own : { entries: own.entries, serials: new Set([...own.serials, ...shared]) };
    this.revocations = list;
    return list;
  }

  /** What the enrollment part (src/roles/enroll.ts) reports back: its refusals, and a revocation taking effect now. */
  enrollHooks(): { refuse(address: string, presented: string | null, reason: string): void; revoked(): void } {
    return {
      refuse: (address, presented, reason) => this.server.refusedAtTls(address, presented, reason, RefusalCode.ENROLL),
      revoked: () => {
        const list = this.mergeEnrolled();
        this.cluster?.publishRevoked(this.ownSerials); // cluster mode: every relay closes it too
        this.server.enforceRevocations((serial) => isRevoked(list, serial));
      },
    };
  }

  /** Another relay revoked serials: refused at TLS from now on, and live connections closed. */
  private mergeClusterRevocations(): void {
    const list = this.mergeEnrolled();
    const closed = this.server.enforceRevocations((serial) => isRevoked(list, serial));
    this.mesh?.reload();
    if (closed) this.log.info(`cluster: revoked on another relay: closed ${closed} live connection(s)`);
  }

  status(): Record<string, unknown> {
    return {
      ...(this.cluster ? { cluster: this.cluster.status() } : {}),
      ...(this.mesh ? { mesh: this.mesh.status() } : {}),
      listen: this.listener ? `${this.cfg.listen!.host}:${this.listener.port}` : null,
      port: this.listener?.port ?? null,
      unauthenticated: this.admission.total,
      admission: { dropped: { ...this.admission.dropped }, sources: this.admission.tracked, held_off: this.admission.held(this.clock.now()) },
      proxy_protocol: this.cfg.proxy_protocol,
      open_files_limit: this.fdLimit,
      accepting: this.guard ? this.guard.accepting : this.listener !== null,
      accept_pauses: this.guard?.paused ?? 0,
      abandoned_handshakes: this.abandoned,
      refusals: this.server.refusals.length,
      revoked: this.revocations.entries.length,
      revocations_file: revocationsFile(this.cfg).path,
      revocations_loaded: this.revocationsLoaded,
      heartbeats: this.server.heartbeats ? { port: this.heartbeatSocket?.local().port ?? null, ...this.server.heartbeats.stats() } : null,
      ...this.server.stats(),
      ...(this.nymea ? { nymea: this.nymea.status() } : {}),
    };
  }

  async close(): Promise<void> {
    if (this.poll) clearInterval(this.poll);
    this.poll = null;
    // The others hear this relay leave (a bye) before its devices go.
    await this.cluster?.close();
    await this.mesh?.close();
    this.mesh = null;
    this.nymea?.close();
    await this.server.close();
    this.auditLog.closeSync();
    this.listener?.stop(true);
    this.listener = null;
    await this.heartbeatSocket?.close();
    this.heartbeatSocket = null;
    try {
      this.store.close();
    } catch {
      /* closed already */
    }
  }
}

/** The heartbeat's secret and port; none (said loudly) when the secret cannot be kept: the daemon's state-dir check says why. */
function heartbeatOptions(cfg: Config, log: Logger): { secret: Uint8Array; port: number } | undefined {
  try {
    return { secret: heartbeatSecret(cfg.state_dir), port: cfg.heartbeat_port ?? cfg.listen?.port ?? 0 };
  } catch (e) {
    log.error(`heartbeats are off: cannot keep the heartbeat secret in ${cfg.state_dir}: ${(e as Error).message}`);
    return undefined;
  }
}

/**
 * A handshake that failed at the first byte says what it may have been: a load balancer's PROXY
 * header reaching a relay without proxy_protocol (the usual cause after a set-up change). Pure.
 */
export function notTlsHint(reason: string): string {
  if (!/WRONG_VERSION_NUMBER/.test(reason)) return reason;
  return `${reason}: not TLS from the first byte (a load balancer sending a PROXY protocol header? this relay has proxy_protocol off)`;
}

/** A required string field of a control request, or a UsageError naming it. */
function requiredText(req: unknown, key: string, what: string): string {
  const v = (req as Record<string, unknown> | undefined)?.[key];
  if (typeof v !== "string" || v.length === 0) throw new UsageError(`${key}: expected ${what}, got ${v === undefined ? "nothing" : JSON.stringify(v)}`);
  return v;
}

function optionalText(req: unknown, key: string): string | null {
  const v = (req as Record<string, unknown> | undefined)?.[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== "string") throw new UsageError(`${key}: expected text, got ${JSON.stringify(v)}`);
  return v;
}

/** The start-up warning of a relay with no revocation list: what it means and how to fix it. */
export function missingRevocationsWarning(file: string): string {
  return (
    `NO REVOCATION LIST: ${file} does not exist and \`revocations\` is not set, so this relay accepts every certificate the fleet CA signed, revoked ones too. ` +
    `\`agent pki revoke --dir DIR --id ID\` updates DIR/revoked on the CA machine: copy that file to ${file} (the relay reads it within a second), or point revocations = "FILE" (--revocations FILE) at it`
  );
}

/** The nymea listener's counts in a daemon status (clients, authenticated, tunnels), or "" without [nymea]. */
export function nymeaDigest(status: Record<string, unknown>): string {
  const n = (status.relay as { nymea?: Record<string, unknown> } | undefined)?.nymea;
  return n ? `|nymea:${[n.clients, n.authenticated, n.tunnels, n.total_clients, n.total_tunnels].join(",")}` : "";
}

/** The relay's web GUI (issue 15) for `gui = "ADDR:PORT"`: the fleet view over the relay's API object. */
export function relayGui(cfg: Config, bundle: Bundle, api: RelayApi, events: GuiEvents, log: Logger): Component | null {
  return guiComponent(cfg, {
    role: "relay",
    id: bundle.id,
    api,
    events,
    bundle,
    // The nymea listener's counts too, so its card follows clients coming and going.
    digest: () => relayDigest(api.devices() as unknown as Record<string, unknown>[], api.sessions() as unknown as Record<string, unknown>[], api.refusals().length) + nymeaDigest(api.status() as unknown as Record<string, unknown>),
  }, log);
}
