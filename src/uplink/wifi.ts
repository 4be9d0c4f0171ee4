// The Wi-Fi client and the access-point fallback as one daemon component ("wifi"): the
// policy of fallback.ts fed every TICK_MS with the uplink manager's health, the AP of ap.ts,
// wpa_supplicant through wpa.ts, the known networks (a 0600 file in the state directory),
// the setup page while the AP is up, and the backend of netconnectd's protocol.
import { existsSync, mkdirSync, readFileSync, renameSync } from "node:fs";
import { writeFileAtomic } from "../os/atomic.ts";
import { join } from "node:path";
import type { Config } from "../config.ts";
import { RuntimeError, UsageError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { formatIPv4 } from "../netaddr.ts";
import { AccessPoint, type ApStatus } from "./ap.ts";
import { decideAp, fallbackHealthy, initialApState, needsRelayCheck, type ApAction, type ApEvent, type ApState } from "./fallback.ts";
import { describeMissing, listInterfaces, missingInterfaces } from "./interfaces.ts";
import { tcpProber } from "./probe.ts";
import { RepeatLimiter, repeatedSuffix } from "./repeat.ts";
import { formatDuration } from "../duration.ts";
import type { Exec } from "../os/spawn.ts";
import type { NetconnectdBackend, NetconnectdCell, NetconnectdStatus } from "./netconnectd.ts";
import { SetupPage } from "./setup-page.ts";
import { checkPsk, checkSsid, WifiClient, WpaClient, type WifiNetwork, type WpaControl } from "./wpa.ts";
import { systemClock, wallOf, type Clock, type TimerHandle } from "../clock.ts";

/** How often the policy hears the uplinks' health. */
export const TICK_MS = 500;
/** An AP that failed to start is tried again this often while the policy wants AP mode. */
export const AP_RETRY_START_MS = 10_000;
/** How long close() waits for a running step (a scan, a connection attempt) before tearing down. */
export const CLOSE_WAIT_MS = 3_000;
/** Scan wait before the AP comes up (the radio is about to be busy). */
export const PRE_AP_SCAN_MS = 4_000;
/** While configured uplinks are missing and none is healthy: how often the relay is tried through the main routing table. */
export const RELAY_CHECK_MS = 10_000;
/** A failure that repeats (the AP restart every AP_RETRY_START_MS) is logged at most this often. */
export const REPEAT_LOG_MS = 10 * 60_000;

export interface KnownNetwork {
  ssid: string;
  psk?: string;
  priority: number;
  added: string;
}

export interface WifiReport {
  mode: ApState["mode"];
  manual_ap: boolean;
  ap: ApStatus;
  passphrase_file?: string;
  setup_page?: string;
  wifi: { interface: string; present: boolean; ctrl: string; state?: string; ssid?: string; bssid?: string; ip?: string; error?: string };
  known: { ssid: string; priority: number; added: string }[];
  last_scan?: { at: string; count: number };
  history: { at: string; action: string; reason: string }[];
}

export interface WifiServiceOptions {
  cfg: Config;
  log: Logger;
  exec: Exec;
  /** Names of healthy uplinks (the uplink manager's view); [] when there is none. */
  healthy: () => string[];
  /** Uplink kinds by name, for netconnectd's "wired". */
  kinds?: Map<string, string>;
  /** Test seam: the supplicant's control; default a WpaClient on the configured socket. */
  wpa?: () => WpaControl;
  /** The fallback's `after` and `retry`, the AP restart pace and the supplicant's timeouts run
   * on its monotonic now() and timers; wall() only stamps what people read. */
  clock?: Clock;
  /** Test seam: the network interfaces of this host; default /sys/class/net. */
  interfaces?: () => string[];
  /** Test seam: whether the relay answers through the main routing table (any interface);
   * default a TCP connect to `relay`. Asked only while configured uplinks are missing and
   * none is healthy (fallback.ts: fallbackHealthy). */
  reachRelay?: () => Promise<boolean>;
}

/** Loads the known networks; a broken file is moved aside, never silently overwritten. */
function loadKnown(file: string, log: Logger): KnownNetwork[] {
  if (!existsSync(file)) return [];
  try {
    const v = JSON.parse(readFileSync(file, "utf8")) as KnownNetwork[];
    if (!Array.isArray(v)) throw new Error("not a list");
    return v.filter((n) => typeof n.ssid === "string" && typeof n.priority === "number");
  } catch (e) {
    const aside = `${file}.broken-${Date.now()}`;
    renameSync(file, aside);
    log.error(`known Wi-Fi networks in ${file} unreadable (${(e as Error).message}); moved to ${aside}`);
    return [];
  }
}

export class WifiService implements NetconnectdBackend {
  readonly name = "wifi";
  readonly ap: AccessPoint;
  private state: ApState;
  private readonly knownFile: string;
  private known: KnownNetwork[];
  private cells: WifiNetwork[] = [];
  /** Monotonic instant of the last scan. */
  private lastScan: number | undefined;
  private timer: TimerHandle | undefined;
  private readonly clock: Clock;
  private apStarting = false;
  private apAttempt = 0;
  private chain: Promise<void> = Promise.resolve();
  private closed = false;
  private wpaCtl: WpaControl | undefined;
  private wpaError: string | undefined;
  private page: SetupPage | undefined;
  private pendingSsid: string | undefined;
  private lastTry: { ok: boolean; at: number } | undefined;
  private readonly history: WifiReport["history"] = [];
  private readonly ifname: string;
  private readonly ctrlPath: string;
  /** Configured uplinks this host does not have (refreshed with the relay check). */
  private missing: string[] = [];
  private relayReachable: boolean | undefined;
  private lastRelayCheck = -Infinity;
  private checkingRelay = false;
  private fallbackReason: string | undefined;
  private readonly apFailures: RepeatLimiter;

  constructor(private readonly o: WifiServiceOptions) {
    this.clock = o.clock ?? systemClock;
    const ap = o.cfg.ap;
    this.ifname = ap.wifi_interface ?? ap.interface;
    this.ctrlPath = ap.wpa_ctrl ?? `/run/wpa_supplicant/${this.ifname}`;
    mkdirSync(o.cfg.state_dir, { recursive: true, mode: 0o700 });
    this.ap = new AccessPoint(ap, o.cfg.state_dir, o.exec, o.log.withTag("ap"), o.cfg.uplink.map((u) => u.name), this.clock);
    this.knownFile = join(o.cfg.state_dir, "wifi-networks.json");
    this.known = loadKnown(this.knownFile, o.log);
    this.state = initialApState(this.clock.now());
    this.apFailures = new RepeatLimiter(REPEAT_LOG_MS);
  }

  private interfaces(): string[] {
    return (this.o.interfaces ?? listInterfaces)();
  }

  private opts() {
    const ap = this.o.cfg.ap;
    return { after: ap.after, retry: ap.retry, stopOnUplink: ap.stop_on_uplink };
  }

  async start(): Promise<void> {
    // hostapd/dnsmasq of a killed agent, and its firewall table, go first.
    await this.ap.cleanupOrphans();
    // A typo in [ap] must be named now, not found out from a retry loop.
    const present = this.interfaces();
    // An empty list is an unreadable /sys/class/net, not a host without interfaces: no claim then.
    const apMissing = present.length ? missingInterfaces([this.o.cfg.ap.interface, this.ifname], present) : [];
    if (apMissing.length > 0) this.o.log.warn(`${describeMissing("[ap] interface", apMissing, present)}: the access point cannot start; check [ap] interface / wifi_interface`);
    this.state = initialApState(this.clock.now());
    this.timer = this.clock.setInterval(() => this.tick(), TICK_MS);
    // Networks configured while the supplicant was away are handed to it now.
    void this.serial(() => this.syncKnown());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.clock.clearInterval(this.timer);
    // A connection attempt may wait up to its timeout: do not hold the daemon's stop for it.
    let wait: TimerHandle | undefined;
    await Promise.race([this.chain, new Promise<void>((r) => (wait = this.clock.setTimeout(r, CLOSE_WAIT_MS)))]);
    this.clock.clearTimeout(wait);
    await this.page?.stop();
    this.page = undefined;
    await this.ap.stop();
    this.wpaCtl?.close();
    this.wpaCtl = undefined;
  }

  // ------------------------------------------------------------ policy and effects

  private tick(): void {
    const names = this.o.healthy();
    this.checkRelay(names);
    const v = fallbackHealthy({ healthy: names, missing: this.missing, relayReachable: this.relayReachable });
    // Online through an interface the config does not name: said once per change, not per tick.
    const note = v.healthy && names.length === 0 ? v.reason : undefined;
    if (note !== this.fallbackReason) {
      if (note) this.o.log.warn(`${note}: the setup access point stays off; fix the [[uplink]] names`);
      this.fallbackReason = note;
    }
    this.feed({ type: "tick", healthy: v.healthy, known: this.known.length });
    // AP mode whose AP failed to start (interface missing, hostapd refused): try again now and then.
    const now = this.clock.now();
    if (this.state.mode === "ap" && !this.ap.running && !this.apStarting && now - this.apAttempt >= AP_RETRY_START_MS) {
      this.apAttempt = now;
      this.o.log.debug("AP mode without a running access point: starting it again");
      void this.serial(() => this.bringUpAp(false));
    }
  }

  /** Refreshes `missing` and, while no configured uplink is healthy and some are missing, whether the relay answers anyway. */
  private checkRelay(healthy: readonly string[]): void {
    const now = this.clock.now();
    if (this.checkingRelay || now - this.lastRelayCheck < RELAY_CHECK_MS) return;
    this.lastRelayCheck = now;
    const present = this.interfaces();
    this.missing = present.length ? missingInterfaces(this.o.cfg.uplink.map((u) => u.name), present) : [];
    if (!needsRelayCheck({ healthy, missing: this.missing })) {
      this.relayReachable = undefined;
      return;
    }
    const relay = this.o.cfg.relay;
    const reach =
      this.o.reachRelay ??
      (relay ? async () => (await tcpProber("0.0.0.0", [relay], { timeoutMs: this.o.cfg.tracking.timeout, count: this.o.cfg.tracking.count, clock: this.clock })).ok : undefined);
    if (!reach) return;
    this.checkingRelay = true;
    void reach()
      .then(
        (ok) => (this.relayReachable = ok),
        () => (this.relayReachable = false),
      )
      .finally(() => (this.checkingRelay = false));
  }

  private feed(ev: ApEvent): ApAction[] {
    if (this.closed) return [];
    const d = decideAp(this.state, ev, this.clock.now(), this.opts());
    this.state = d.state;
    for (const a of d.actions) {
      this.history.push({ at: new Date(this.clock.wall()).toISOString(), action: a.type, reason: a.reason });
      if (this.history.length > 50) this.history.shift();
      this.o.log.info(`${a.type}: ${a.reason}`);
      void this.serial(() => this.apply(a));
    }
    return d.actions;
  }

  /** Effects run one at a time, in order. */
  private serial(fn: () => Promise<void>): Promise<void> {
    const p = this.chain.then(fn).catch((e) => this.o.log.error("Wi-Fi/AP step failed", e));
    this.chain = p;
    return p;
  }

  private async apply(a: ApAction): Promise<void> {
    if (this.closed && a.type !== "stop-ap") return;
    if (a.type === "start-ap") await this.bringUpAp();
    else if (a.type === "stop-ap") await this.bringDownAp();
    else {
      let ok = false;
      const want = this.pendingSsid;
      try {
        const wifi = this.client();
        await this.syncKnown();
        const id = want === undefined ? undefined : (await wifi.networks()).find((n) => n.ssid === want)?.id;
        const r = await wifi.connect(id);
        this.o.log.info(`Wi-Fi client connected${r.bssid ? ` to ${r.bssid}` : ""}`);
        ok = true;
      } catch (e) {
        this.o.log.warn(`Wi-Fi client could not connect: ${(e as Error).message}`);
        this.wpaError = (e as Error).message;
      }
      // A network configured during this try is tried next, by name.
      if (this.pendingSsid === want) this.pendingSsid = undefined;
      this.lastTry = { ok, at: this.clock.now() };
      // A failed try of one network (SELECT_NETWORK) left the others: back to any known one in range.
      if (!ok && this.state.resume === "client") await this.wpaCtl?.request("REASSOCIATE").catch(() => {});
      this.feed({ type: "try_result", ok });
    }
  }

  private async bringUpAp(scanFirst = true): Promise<void> {
    this.apStarting = true;
    this.apAttempt = this.clock.now();
    try {
      await this.bringUpApOnce(scanFirst);
    } finally {
      this.apStarting = false;
    }
  }

  private async bringUpApOnce(scanFirst: boolean): Promise<void> {
    if (this.ap.running && this.page) return; // a queued retry behind a start that worked
    // Last look around before the radio becomes an AP: the setup page lists these.
    try {
      if (scanFirst) await this.scan(PRE_AP_SCAN_MS);
      await this.client().disconnect();
    } catch (e) {
      this.o.log.debug(`no scan before the AP: ${(e as Error).message}`);
    }
    try {
      await this.ap.start();
    } catch (e) {
      // Retried every AP_RETRY_START_MS while the policy wants the AP: the same failure is
      // logged once, then at most every REPEAT_LOG_MS with its count.
      const text = errorChain(e);
      const v = this.apFailures.note(text, this.clock.now());
      if (v.log) this.o.log.error(`${text}${repeatedSuffix(v, REPEAT_LOG_MS, formatDuration)}`);
      else this.o.log.debug(text);
      return;
    }
    const failed = this.apFailures.reset();
    if (failed > 0) this.o.log.info(`access point started after ${failed} failed attempt${failed > 1 ? "s" : ""}`);
    try {
      this.page = new SetupPage({
        hostname: formatIPv4(this.o.cfg.ap.address.host),
        port: this.o.cfg.ap.setup_port,
        passphrase: this.ap.passphrase,
        subnet: { network: this.o.cfg.ap.address.network, prefix: this.o.cfg.ap.address.prefix },
        clock: this.clock,
        log: this.o.log.withTag("setup"),
        backend: {
          networks: () => this.cells,
          statusLines: () => this.statusLines(),
          configure: (ssid, psk) => this.configure(ssid, psk, {}),
        },
      });
      this.page.start();
    } catch (e) {
      this.o.log.error("setup page failed to start", e);
      this.page = undefined;
    }
  }

  private async bringDownAp(): Promise<void> {
    await this.page?.stop();
    this.page = undefined;
    await this.ap.stop();
  }

  // ------------------------------------------------------------ wpa_supplicant

  private client(): WifiClient {
    if (!this.wpaCtl) {
      try {
        this.wpaCtl = this.o.wpa ? this.o.wpa() : new WpaClient(this.ctrlPath, join(this.o.cfg.state_dir, "wpa-client"), this.clock);
        this.wpaError = undefined;
      } catch (e) {
        this.wpaError = (e as Error).message;
        throw e;
      }
    }
    return new WifiClient(this.wpaCtl, this.clock);
  }

  private async scan(waitMs?: number): Promise<WifiNetwork[]> {
    this.cells = await this.client().scan(waitMs);
    this.lastScan = this.clock.now();
    return this.cells;
  }

  private async syncKnown(): Promise<void> {
    if (this.known.length === 0) return;
    let wifi: WifiClient;
    try {
      wifi = this.client();
    } catch {
      return;
    }
    const have = new Set((await wifi.networks()).map((n) => n.ssid));
    for (const n of this.known) if (!have.has(n.ssid)) await wifi.upsert(n);
  }

  private saveKnown(): void {
    writeFileAtomic(this.knownFile, JSON.stringify(this.known, null, 2) + "\n", { mode: 0o600 });
  }

  // ------------------------------------------------------------ API (CLI, setup page, netconnectd)

  /** Validates, stores (0600) and hands the network to the supplicant, then tries it. The PSK is never logged. */
  async configure(ssid: string, psk: string | undefined, o: { priority?: number; force?: boolean }): Promise<string> {
    const bad = checkSsid(ssid) ?? (psk === undefined || psk === "" ? undefined : checkPsk(psk));
    if (bad) throw new UsageError(bad);
    if (o.priority !== undefined && (!Number.isInteger(o.priority) || o.priority < 0 || o.priority > 1000)) throw new UsageError("priority must be an integer 0-1000");
    const priority = o.priority ?? Math.max(0, ...this.known.map((n) => n.priority)) + 1;
    this.known = this.known.filter((n) => n.ssid !== ssid);
    this.known.push({ ssid, psk: psk || undefined, priority, added: new Date(this.clock.wall()).toISOString() });
    this.saveKnown();
    this.o.log.info(`Wi-Fi network ${JSON.stringify(ssid)} configured (priority ${priority})`);
    let saved = "";
    try {
      const r = await this.client().upsert({ ssid, psk: psk || undefined, priority });
      saved = r.saved ? "" : " (wpa_supplicant could not save its config; the agent re-adds it at start)";
    } catch (e) {
      saved = ` (wpa_supplicant not reachable now: ${(e as Error).message}; handed over when it is)`;
    }
    this.pendingSsid = ssid;
    this.feed({ type: "configured" });
    return `configured wifi as "${ssid}"${saved}`;
  }

  async startAp(): Promise<string> {
    if (this.ap.running) {
      this.feed({ type: "start_ap" });
      return "access point is already running";
    }
    this.feed({ type: "start_ap" });
    await this.chain;
    if (!this.ap.running) throw new RuntimeError(`access point did not start: ${this.ap.status().error ?? "see the daemon log"}`);
    return "started ap";
  }

  async stopAp(): Promise<string> {
    const was = this.ap.running;
    this.feed({ type: "stop_ap" });
    await this.chain;
    return was ? "stopped ap" : "access point is not running";
  }

  async listNetworks(force: boolean): Promise<WifiNetwork[]> {
    if (this.state.mode === "ap" || this.ap.running) {
      if (!force) {
        if (this.lastScan !== undefined) return this.cells;
        throw new RuntimeError("access point is running, cannot scan for wifis (use force option)");
      }
      // One radio: leave AP mode for the scan, come back.
      let out: WifiNetwork[] = [];
      await this.serial(async () => {
        await this.bringDownAp();
        try {
          out = await this.scan();
        } finally {
          if (this.state.mode === "ap") await this.bringUpAp(false);
        }
      });
      return out;
    }
    return this.scan();
  }

  async listWifi(force: boolean): Promise<NetconnectdCell[]> {
    const cells = await this.listNetworks(force);
    return cells.map((c) => ({ ssid: c.ssid, channel: c.channel, address: c.bssid, encrypted: c.security !== "open", signal: c.signal }));
  }

  configWifi(ssid: string, psk: string | undefined, force: boolean): Promise<string> {
    if (!force && this.lastScan !== undefined && !this.cells.some((c) => c.ssid === ssid)) {
      return Promise.reject(new RuntimeError(`could not find wifi cell with ssid ${ssid}`));
    }
    return this.configure(ssid, psk, { force });
  }

  async startWifi(): Promise<string> {
    if (this.known.length === 0) throw new RuntimeError("wifi is not yet configured");
    const asked = this.clock.now();
    if (this.state.mode !== "trying") this.feed({ type: "start_wifi" });
    // The try runs on the effects chain; a failed one queues the AP again behind it.
    while (!this.lastTry || this.lastTry.at < asked) {
      if (this.closed) throw new Error("daemon stopping");
      await this.chain;
      await Bun.sleep(20);
    }
    if (this.lastTry.ok) return "connected to wifi";
    throw new RuntimeError(`could not connect${this.wpaError ? `: ${this.wpaError}` : ""}`);
  }

  async forgetWifi(): Promise<string> {
    if (this.known.length === 0) return "wifi was not configured yet";
    const ssids = this.known.map((n) => n.ssid);
    this.known = [];
    this.saveKnown();
    try {
      const wifi = this.client();
      for (const s of ssids) await wifi.remove(s);
    } catch (e) {
      this.o.log.warn(`forgetting networks in wpa_supplicant: ${(e as Error).message}`);
    }
    return "forgot configured wifi";
  }

  async reset(): Promise<string> {
    await this.forgetWifi();
    this.feed({ type: "reset" });
    return "reset daemon";
  }

  private async wifiStatus(): Promise<Record<string, string> | undefined> {
    try {
      return await this.client().status();
    } catch {
      return undefined;
    }
  }

  async netconnectdStatus(): Promise<NetconnectdStatus> {
    const healthy = this.o.healthy();
    const st = this.ap.running ? undefined : await this.wifiStatus();
    const wifiUp = !this.ap.running && st?.wpa_state === "COMPLETED";
    return {
      link: healthy.length > 0,
      devs: healthy,
      connections: {
        wifi: wifiUp && healthy.includes(this.ifname),
        ap: this.ap.running,
        wired: healthy.some((n) => (this.o.kinds?.get(n) ?? "ethernet") === "ethernet"),
      },
      wifi: {
        current_ssid: wifiUp ? (st?.ssid ?? null) : null,
        current_address: wifiUp ? (st?.bssid ?? null) : null,
        valid_config: this.known.length > 0,
        present: existsSync(`/sys/class/net/${this.ifname}`),
      },
    };
  }

  private statusLines(): [string, string][] {
    const h = this.o.healthy();
    return [
      ["Mode", this.state.mode === "ap" ? "access point (setup)" : this.state.mode],
      ["Healthy uplinks", h.length ? h.join(", ") : "none"],
      ["Known Wi-Fi networks", this.known.map((n) => n.ssid).join(", ") || "none"],
      ["Last Wi-Fi error", this.wpaError ?? "-"],
    ];
  }

  async report(): Promise<WifiReport> {
    const st = this.ap.running ? undefined : await this.wifiStatus();
    return {
      mode: this.state.mode,
      manual_ap: this.state.manual,
      ap: this.ap.status(),
      passphrase_file: this.o.cfg.ap.passphrase ? undefined : join(this.o.cfg.state_dir, "ap-passphrase"),
      setup_page: this.page?.url,
      wifi: { interface: this.ifname, present: existsSync(`/sys/class/net/${this.ifname}`), ctrl: this.ctrlPath, state: st?.wpa_state, ssid: st?.ssid, bssid: st?.bssid, ip: st?.ip_address, error: this.wpaError },
      known: this.known.map((n) => ({ ssid: n.ssid, priority: n.priority, added: n.added })),
      last_scan: this.lastScan === undefined ? undefined : { at: new Date(wallOf(this.clock, this.lastScan)).toISOString(), count: this.cells.length },
      history: [...this.history],
    };
  }

  /** `agent status`: the short form. */
  status(): Record<string, unknown> {
    return { mode: this.state.mode, ap: this.ap.running, known: this.known.length };
  }
}

/** "a: b: c" from an error and its causes (the logger's own form, as one string to compare). */
function errorChain(e: unknown): string {
  const parts: string[] = [];
  let cur: unknown = e;
  for (let i = 0; cur instanceof Error && i < 8; i++, cur = cur.cause) parts.push(cur.message);
  return parts.length ? parts.join(": ") : String(e);
}
