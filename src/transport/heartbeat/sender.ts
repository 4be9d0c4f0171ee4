// The onsite device's end of the heartbeat: every 25 s, one signed datagram to the relay over
// EVERY healthy uplink (a socket bound to each uplink's address, so the uplink manager's
// source rules carry it out of that interface), a metered one less often while on standby or
// while the TLS tunnel runs over it. The key
// comes from the relay inside TLS (HEARTBEAT_KEY) and is kept in the state dir, so a device
// that boots with its tunnel broken still says how it is.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "../../os/atomic.ts";
import { systemClock, type Clock, type TimerHandle } from "../../clock.ts";
import { BOOT_ID_SIZE, encodeHeartbeat, HeartbeatTiming, KEY_SIZE, type HeartbeatPayload, type UplinkBeat } from "./codec.ts";
import type { DatagramSocket, OpenDatagram } from "./socket.ts";

/** What the relay handed out: the key, where to send, and the relay it belongs to. */
export interface HeartbeatKey {
  relay: string;
  key: Uint8Array;
  port: number;
}

/** The uplinks as the uplink manager reports them (structurally: src/uplink/manager.ts UplinkReport). */
export interface UplinkView {
  active?: string;
  uplinks: {
    name: string;
    kind: string;
    metered: boolean;
    active: boolean;
    health: string;
    link: { addrs: string[] };
    probes: { loss: number; latency_ms?: number; sent: number };
    modem?: Record<string, unknown>;
  }[];
}

/** Everything a heartbeat reports but the uplink it goes over. */
export interface Diagnostics {
  uplinks?: UplinkView;
  wifi?: { ssid: string; signal: number | null };
  tunnel: string;
  lastError: string | null;
  uptime: number;
  load: number;
  diskFreeMiB: number;
}

/** Where one heartbeat goes out: an uplink (bound to its address) or the default route. */
export interface Path {
  uplink: string;
  source?: string;
  metered: boolean;
  active: boolean;
}

/** The payload of a heartbeat over `via`, from the diagnostics. Pure. */
export function payloadOf(d: Diagnostics, via: string, interval: number): HeartbeatPayload {
  const ul: UplinkBeat[] = (d.uplinks?.uplinks ?? []).map((u) => {
    const b: UplinkBeat = { n: u.name, s: u.health, l: u.probes.sent > 0 ? Math.round(u.probes.loss * 1000) / 10 : null, r: u.probes.latency_ms ?? null };
    if (u.metered) b.m = 1;
    return b;
  });
  const p: HeartbeatPayload = { up: d.uptime, act: d.uplinks?.active ?? "", via, iv: interval, tun: d.tunnel, ul, err: d.lastError, load: d.load, disk: d.diskFreeMiB };
  const cell = d.uplinks?.uplinks.find((u) => u.kind === "cellular" && u.modem);
  if (cell?.modem) {
    const m = cell.modem;
    p.cell = { sig: typeof m.signal === "number" ? m.signal : null, op: typeof m.operator === "string" ? m.operator : "", tech: typeof m.technology === "string" ? m.technology : "" };
  }
  if (d.wifi?.ssid) p.wifi = { ssid: d.wifi.ssid, sig: d.wifi.signal };
  return p;
}

/** The paths of this round: every healthy uplink with an address, or the default route when none is configured. Pure. */
export function pathsOf(view: UplinkView | undefined): Path[] {
  if (!view || view.uplinks.length === 0) return [{ uplink: "", metered: false, active: true }];
  return view.uplinks
    .filter((u) => u.health === "up" && u.link.addrs.length > 0)
    .map((u) => ({ uplink: u.name, source: u.link.addrs[0]!.split("/")[0], metered: u.metered, active: u.active }));
}

/**
 * How often a heartbeat goes over this path. Pure. A metered uplink on standby: the standby
 * rate. A metered ACTIVE uplink while the TLS tunnel is up (it goes over the active uplink):
 * the standby rate too, as the relay hears the device over TLS anyway (issue 13 §8); when the
 * tunnel is down, the full rate, as that is when the heartbeat is all the relay hears.
 */
export function intervalFor(path: Path, tunnelUp: boolean, t: { interval: number; meteredStandbyInterval: number } = HeartbeatTiming): number {
  if (path.metered && (!path.active || tunnelUp)) return t.meteredStandbyInterval;
  return t.interval;
}

/** Is a heartbeat due over this path, last sent at `last` (monotonic, or null)? Pure. */
export function due(path: Path, last: number | null, now: number, t: { interval: number; meteredStandbyInterval: number } = HeartbeatTiming, tunnelUp = false): boolean {
  if (last === null) return true;
  const every = intervalFor(path, tunnelUp, t);
  // A little early rather than a round late: the timer fires every `interval`.
  return now - last >= every - 1000;
}

// ---- the key file ---------------------------------------------------------------------------

export const KEY_FILE = "heartbeat.key";

export function saveKey(stateDir: string, k: HeartbeatKey): void {
  writeFileAtomic(join(stateDir, KEY_FILE), JSON.stringify({ relay: k.relay, key: Buffer.from(k.key).toString("base64"), port: k.port }) + "\n", { mode: 0o600 });
}

/** The saved key, or null when there is none (or it is damaged: the relay sends it again). */
export function loadKey(stateDir: string): HeartbeatKey | null {
  try {
    const o = JSON.parse(readFileSync(join(stateDir, KEY_FILE), "utf8")) as { relay?: unknown; key?: unknown; port?: unknown };
    const key = typeof o.key === "string" ? new Uint8Array(Buffer.from(o.key, "base64")) : null;
    if (!key || key.length !== KEY_SIZE || typeof o.port !== "number" || typeof o.relay !== "string") return null;
    return { relay: o.relay, key, port: o.port };
  } catch {
    return null;
  }
}

// ---- the sender ----------------------------------------------------------------------------

export interface SenderOptions {
  id: string;
  /** The relay's address (host name or IPv4) heartbeats go to. */
  host: string;
  open: OpenDatagram;
  diagnostics(): Promise<Diagnostics> | Diagnostics;
  /** Resolves the relay's host name (default: as given). */
  resolve?: (host: string) => Promise<string>;
  clock?: Clock;
  interval?: number;
  meteredStandbyInterval?: number;
  log?: { debug(m: string): void; warn(m: string): void };
}

export class HeartbeatSender {
  private key: HeartbeatKey | null = null;
  private readonly boot = new Uint8Array(randomBytes(BOOT_ID_SIZE));
  private seq = 0n;
  private timer: TimerHandle | null = null;
  private readonly sockets = new Map<string, Promise<DatagramSocket>>();
  private readonly last = new Map<string, number>();
  private readonly clock: Clock;
  private readonly interval: number;
  private running: Promise<void> | null = null;
  private closed = false;
  sent = 0;
  errors = 0;
  lastError: string | null = null;
  /** Per uplink: monotonic ms of the last heartbeat sent over it. */
  readonly lastSent = new Map<string, number>();

  constructor(private readonly o: SenderOptions) {
    this.clock = o.clock ?? systemClock;
    this.interval = o.interval ?? HeartbeatTiming.interval;
  }

  private started = false;

  /** A key (from the relay, or loaded): once started, heartbeats go out, the first one now. */
  setKey(k: HeartbeatKey): void {
    this.key = k;
    this.arm();
  }

  /** Heartbeats go out from now on (as soon as there is a key). */
  start(): void {
    this.started = true;
    this.arm();
  }

  private arm(): void {
    if (!this.started || this.closed || !this.key || this.timer !== null) return;
    this.timer = this.clock.setInterval(() => void this.tick(), this.interval);
    void this.tick();
  }

  get hasKey(): boolean {
    return this.key !== null;
  }

  /** One round: a heartbeat over every path that is due. Resolves when they left. */
  tick(): Promise<void> {
    this.running ??= this.round().finally(() => (this.running = null));
    return this.running;
  }

  private async round(): Promise<void> {
    const k = this.key;
    if (!k || this.closed) return;
    let d: Diagnostics;
    try {
      d = await this.o.diagnostics();
    } catch (e) {
      this.o.log?.warn(`heartbeat: cannot gather diagnostics: ${(e as Error).message}`);
      return;
    }
    let to: string;
    try {
      to = this.o.resolve ? await this.o.resolve(this.o.host) : this.o.host;
    } catch (e) {
      this.fail(`cannot resolve ${this.o.host}: ${(e as Error).message}`);
      return;
    }
    const now = this.clock.now();
    const paths = pathsOf(d.uplinks);
    const live = new Set(paths.map((p) => p.source ?? ""));
    for (const [src, s] of this.sockets) if (!live.has(src)) {
      this.sockets.delete(src);
      void s.then((x) => x.close(), () => {});
    }
    const t = { interval: this.interval, meteredStandbyInterval: this.o.meteredStandbyInterval ?? HeartbeatTiming.meteredStandbyInterval };
    await Promise.all(
      paths.filter((p) => due(p, this.last.get(p.uplink) ?? null, now, t, d.tunnel === "up")).map(async (p) => {
        const bytes = encodeHeartbeat({ id: this.o.id, boot: this.boot, seq: this.seq++, sentAt: this.clock.wall(), payload: payloadOf(d, p.uplink, this.interval) }, k.key);
        try {
          const sock = await this.socketFor(p.source ?? "");
          await sock.send(bytes, k.port, to);
          this.last.set(p.uplink, now);
          this.lastSent.set(p.uplink, now);
          this.sent++;
        } catch (e) {
          this.fail(`heartbeat over ${p.uplink || "the default route"}: ${(e as Error).message}`);
          // A socket that failed (address gone) is opened again next round.
          this.sockets.delete(p.source ?? "");
        }
      }),
    );
  }

  private fail(msg: string): void {
    this.errors++;
    if (msg !== this.lastError) this.o.log?.debug(msg);
    this.lastError = msg;
  }

  private socketFor(source: string): Promise<DatagramSocket> {
    let s = this.sockets.get(source);
    if (!s) {
      s = this.o.open(source ? { address: source, port: 0 } : { port: 0 });
      s.catch(() => this.sockets.delete(source));
      this.sockets.set(source, s);
    }
    return s;
  }

  status(): Record<string, unknown> {
    return { key: this.key ? { relay: this.key.relay, port: this.key.port } : null, sent: this.sent, errors: this.errors, last_error: this.lastError, interval_ms: this.interval };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.clock.clearInterval(this.timer);
    this.timer = null;
    await this.running;
    const all = [...this.sockets.values()];
    this.sockets.clear();
    await Promise.all(all.map((s) => s.then((x) => x.close(), () => {})));
  }
}
