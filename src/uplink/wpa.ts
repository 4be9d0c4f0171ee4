// The Wi-Fi client through wpa_supplicant's control interface (ctrl_iface): a unix datagram
// socket per interface, usually /run/wpa_supplicant/<ifname>. Protocol, as wpa_ctrl.c and
// wpa_cli speak it:
//
//   request  = one datagram, an ASCII command ("SCAN", "SET_NETWORK 0 ssid \"x\"", …)
//   reply    = one datagram: "OK\n", "FAIL\n", "FAIL-BUSY\n", "UNKNOWN COMMAND\n" or data
//   events   = after "ATTACH", unsolicited datagrams "<level>CTRL-EVENT-…" on that socket
//
// Like wpa_cli we open two sockets: one for requests (replies arrive in order) and one that
// is ATTACHed for events, so an event never lands where a reply is awaited. Each client
// socket is bound to its own path in a directory we own; the supplicant answers to it.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { UnixDgramSocket } from "./unixdgram.ts";
import { systemClock, type Clock } from "../clock.ts";

/** A reply that takes longer means a wedged supplicant (wpa_ctrl's own timeout is 10 s). */
export const WPA_REQUEST_TIMEOUT_MS = 10_000;
/** How long a scan may take before SCAN_RESULTS are read anyway (a 2.4+5 GHz scan takes 2-4 s). */
export const WPA_SCAN_WAIT_MS = 8_000;
/** How often the request socket is read while a reply is due. */
export const REPLY_POLL_MS = 1;
/** How long a connection attempt may take before it counts as failed. */
export const WPA_CONNECT_TIMEOUT_MS = 30_000;

// ---------------------------------------------------------------- pure parts

export interface WifiNetwork {
  ssid: string;
  bssid: string;
  frequency: number;
  channel: number;
  /** dBm. */
  signal: number;
  security: "open" | "wep" | "wpa" | "wpa2" | "wpa3" | "wpa2/wpa3" | "enterprise";
  flags: string;
}

/** 2.4 GHz, 5 GHz and 6 GHz channel numbers from the centre frequency in MHz. */
export function channelOf(freq: number): number {
  if (freq === 2484) return 14;
  if (freq >= 2412 && freq <= 2472) return (freq - 2407) / 5;
  if (freq >= 5955 && freq <= 7115) return (freq - 5950) / 5;
  if (freq >= 5000 && freq <= 5900) return (freq - 5000) / 5;
  return 0;
}

export function securityOf(flags: string): WifiNetwork["security"] {
  if (/EAP/.test(flags)) return "enterprise";
  const sae = /SAE/.test(flags);
  const psk = /\[(?:WPA2|RSN)-[A-Z0-9+-]*PSK/.test(flags);
  if (sae && psk) return "wpa2/wpa3";
  if (sae) return "wpa3";
  if (psk) return "wpa2";
  if (/\[WPA-/.test(flags)) return "wpa";
  if (/WEP/.test(flags)) return "wep";
  return "open";
}

/** Undoes wpa_supplicant's printf_encode (\\, \", \e, \n, \r, \t, \xNN) of SSIDs. */
export function decodeSsid(s: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c !== "\\" || i + 1 >= s.length) {
      bytes.push(...Buffer.from(c));
      continue;
    }
    const n = s[++i]!;
    const simple: Record<string, number> = { "\\": 0x5c, '"': 0x22, e: 0x1b, n: 0x0a, r: 0x0d, t: 0x09 };
    if (n in simple) bytes.push(simple[n]!);
    else if (n === "x" && /^[0-9a-fA-F]{2}$/.test(s.slice(i + 1, i + 3))) {
      bytes.push(parseInt(s.slice(i + 1, i + 3), 16));
      i += 2;
    } else bytes.push(0x5c, ...Buffer.from(n));
  }
  return Buffer.from(bytes).toString("utf8");
}

/** SCAN_RESULTS: a header line, then "bssid\tfreq\tsignal\tflags\tssid" per cell; strongest first, one entry per SSID. */
export function parseScanResults(text: string): WifiNetwork[] {
  const cells: WifiNetwork[] = [];
  for (const line of text.split("\n").slice(1)) {
    const f = line.split("\t");
    if (f.length < 4 || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(f[0]!)) continue;
    const frequency = Number(f[1]);
    const signal = Number(f[2]);
    const ssid = decodeSsid(f.slice(4).join("\t"));
    if (!ssid || !Number.isFinite(frequency) || !Number.isFinite(signal)) continue; // hidden networks have no name to offer
    cells.push({ ssid, bssid: f[0]!.toLowerCase(), frequency, channel: channelOf(frequency), signal, security: securityOf(f[3]!), flags: f[3]! });
  }
  cells.sort((a, b) => b.signal - a.signal);
  const seen = new Set<string>();
  return cells.filter((c) => (seen.has(c.ssid) ? false : (seen.add(c.ssid), true)));
}

/** STATUS: key=value lines. */
export function parseKeyValues(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

export type WpaEvent =
  | { type: "connected"; bssid?: string; id?: number }
  | { type: "disconnected"; bssid?: string; reason?: number }
  | { type: "temp-disabled"; id?: number; ssid?: string; reason: string }
  | { type: "not-found" }
  | { type: "scan-results" }
  | { type: "other"; text: string };

/** One event datagram ("<3>CTRL-EVENT-…"), level prefix removed. */
export function parseEvent(raw: string): WpaEvent {
  const text = raw.replace(/^<\d+>/, "").trim();
  const kv = (k: string) => new RegExp(`(?:^|\\s)${k}=("(?:[^"\\\\]|\\\\.)*"|\\S+)`).exec(text)?.[1];
  const num = (k: string) => {
    const v = kv(k)?.replace(/\]$/, "");
    return v === undefined || !/^\d+$/.test(v) ? undefined : Number(v);
  };
  if (text.startsWith("CTRL-EVENT-CONNECTED")) return { type: "connected", bssid: /([0-9a-f]{2}(?::[0-9a-f]{2}){5})/i.exec(text)?.[1], id: num("\\[id") };
  if (text.startsWith("CTRL-EVENT-DISCONNECTED")) return { type: "disconnected", bssid: kv("bssid"), reason: num("reason") };
  if (text.startsWith("CTRL-EVENT-SSID-TEMP-DISABLED")) {
    const ssid = kv("ssid");
    return { type: "temp-disabled", id: num("id"), ssid: ssid && decodeSsid(ssid.replace(/^"|"$/g, "")), reason: kv("reason") ?? "UNKNOWN" };
  }
  if (text.startsWith("CTRL-EVENT-NETWORK-NOT-FOUND")) return { type: "not-found" };
  if (text.startsWith("CTRL-EVENT-SCAN-RESULTS")) return { type: "scan-results" };
  return { type: "other", text };
}

/** A WPA passphrase: 8-63 printable ASCII characters, or 64 hex digits (a raw PSK). Message never contains the value. */
export function checkPsk(psk: string): string | undefined {
  if (/^[0-9a-fA-F]{64}$/.test(psk)) return undefined;
  if (!/^[\x20-\x7e]*$/.test(psk)) return "a Wi-Fi passphrase must be printable ASCII (value not shown)";
  if (psk.length < 8 || psk.length > 63) return `a Wi-Fi passphrase has 8 to 63 characters, this one has ${psk.length} (value not shown)`;
  return undefined;
}

export function checkSsid(ssid: string): string | undefined {
  const n = Buffer.byteLength(ssid);
  if (n < 1 || n > 32) return `an SSID has 1 to 32 bytes, got ${n}`;
  return undefined;
}

/**
 * The SET_NETWORK commands for one network. The SSID goes hex-encoded (any bytes, no
 * quoting problems); the passphrase quoted (wpa_supplicant takes everything between the
 * first and the last quote) or as 64 raw hex digits.
 */
export function networkCommands(id: number, n: { ssid: string; psk?: string; priority: number; security?: "wpa2" | "sae" }): string[] {
  const cmds = [`SET_NETWORK ${id} ssid ${Buffer.from(n.ssid).toString("hex")}`, `SET_NETWORK ${id} scan_ssid 1`, `SET_NETWORK ${id} priority ${n.priority}`];
  if (n.psk === undefined || n.psk === "") cmds.push(`SET_NETWORK ${id} key_mgmt NONE`);
  else {
    // A raw 64-hex PSK cannot do SAE (SAE needs the passphrase itself): WPA-PSK only, or
    // wpa_supplicant keeps the network in memory but leaves it out of SAVE_CONFIG.
    const raw = n.security !== "sae" && /^[0-9a-fA-F]{64}$/.test(n.psk);
    cmds.push(`SET_NETWORK ${id} key_mgmt ${n.security === "sae" ? "SAE" : raw ? "WPA-PSK" : "WPA-PSK SAE"}`);
    if (n.security !== "sae") cmds.push(`SET_NETWORK ${id} ieee80211w 1`);
    cmds.push(/^[0-9a-fA-F]{64}$/.test(n.psk) ? `SET_NETWORK ${id} psk ${n.psk}` : `SET_NETWORK ${id} ${n.security === "sae" ? "sae_password" : "psk"} "${n.psk}"`);
  }
  return cmds;
}

/** Redacts the secret of a command before it reaches any log or error message. */
export function redact(cmd: string): string {
  return cmd.replace(/^(SET_NETWORK \d+ (?:psk|sae_password|password|wep_key\d)) .*/, "$1 [redacted]");
}

// ---------------------------------------------------------------- the client

export interface WpaControl {
  request(cmd: string, timeoutMs?: number): Promise<string>;
  onEvent(cb: (e: WpaEvent) => void): () => void;
  close(): void;
}

export class WpaError extends Error {}

let clientSeq = 0;

/** wpa_ctrl over two datagram sockets; client sockets live in `clientDir`. */
export class WpaClient implements WpaControl {
  private readonly cmd: UnixDgramSocket;
  private readonly ev: UnixDgramSocket;
  private queue: Promise<unknown> = Promise.resolve();
  private pending: ((reply: string) => void) | undefined;
  private readonly listeners = new Set<(e: WpaEvent) => void>();
  private attached = false;

  constructor(
    readonly ctrlPath: string,
    clientDir: string,
    /** The reply deadline (the fast reply poll is socket I/O and stays on real timers). */
    private readonly clock: Clock = systemClock,
  ) {
    mkdirSync(clientDir, { recursive: true, mode: 0o700 });
    const base = join(clientDir, `wpa_ctrl_${process.pid}_${++clientSeq}`);
    this.cmd = new UnixDgramSocket(`${base}_c`);
    this.ev = new UnixDgramSocket(`${base}_e`);
    try {
      this.cmd.connect(ctrlPath);
      this.ev.connect(ctrlPath);
    } catch (e) {
      this.close();
      throw new WpaError(`cannot reach wpa_supplicant at ${ctrlPath}: ${(e as Error).message}; is it running with ctrl_interface?`, { cause: e });
    }
    this.cmd.onMessage((d) => {
      const s = d.data.toString();
      if (s.startsWith("<")) return; // an event on the request socket (not attached): ignore
      const p = this.pending;
      this.pending = undefined;
      p?.(s);
    });
    this.ev.onMessage((d) => {
      const e = parseEvent(d.data.toString());
      for (const l of this.listeners) l(e);
    });
  }

  /** Sends one command; resolves with the reply text. Requests are serialised. */
  request(cmd: string, timeoutMs = WPA_REQUEST_TIMEOUT_MS): Promise<string> {
    const run = () =>
      new Promise<string>((resolve, reject) => {
        // While a reply is due the socket is read every millisecond (most replies take
        // well under one), not at the idle POLL_MS: a configure is about ten requests.
        const fast = setInterval(() => this.cmd.drain(), REPLY_POLL_MS);
        const timer = this.clock.setTimeout(() => {
          clearInterval(fast);
          this.pending = undefined;
          reject(new WpaError(`wpa_supplicant at ${this.ctrlPath} did not answer ${redact(cmd).split(" ")[0]} within ${timeoutMs / 1000}s`));
        }, timeoutMs);
        this.pending = (r) => {
          clearInterval(fast);
          this.clock.clearTimeout(timer);
          resolve(r);
        };
        try {
          this.cmd.send(cmd);
          this.cmd.drain();
        } catch (e) {
          clearInterval(fast);
          this.clock.clearTimeout(timer);
          this.pending = undefined;
          reject(new WpaError(`sending ${redact(cmd).split(" ")[0]} to wpa_supplicant at ${this.ctrlPath}: ${(e as Error).message}`));
        }
      });
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => {});
    return p;
  }

  /** Attaches the event socket on first use. */
  onEvent(cb: (e: WpaEvent) => void): () => void {
    this.listeners.add(cb);
    if (!this.attached) {
      this.attached = true;
      this.ev.send("ATTACH");
    }
    return () => this.listeners.delete(cb);
  }

  close(): void {
    if (this.attached && !this.ev.closed) {
      try {
        this.ev.send("DETACH");
      } catch {
        // supplicant gone
      }
    }
    this.cmd.close();
    this.ev.close();
  }
}

/** The operations the agent needs, on top of a WpaControl. */
export class WifiClient {
  constructor(
    private readonly ctl: WpaControl,
    /** The scan wait and the connection timeout run on its timers. */
    private readonly clock: Clock = systemClock,
  ) {}

  private async ok(cmd: string): Promise<void> {
    const r = (await this.ctl.request(cmd)).trim();
    if (r !== "OK") throw new WpaError(`wpa_supplicant refused ${redact(cmd)}: ${r || "empty reply"}`);
  }

  /** Triggers a scan, waits for its results (or WPA_SCAN_WAIT_MS), returns the cells. */
  async scan(waitMs = WPA_SCAN_WAIT_MS): Promise<WifiNetwork[]> {
    let off: () => void = () => {};
    const done = new Promise<void>((resolve) => {
      const t = this.clock.setTimeout(resolve, waitMs);
      off = this.ctl.onEvent((e) => {
        if (e.type === "scan-results") {
          this.clock.clearTimeout(t);
          resolve();
        }
      });
    });
    try {
      const r = (await this.ctl.request("SCAN")).trim();
      // FAIL-BUSY: a scan is already running; its results serve us as well.
      if (r !== "OK" && r !== "FAIL-BUSY") throw new WpaError(`wpa_supplicant refused SCAN: ${r}`);
      await done;
    } finally {
      off();
    }
    return parseScanResults(await this.ctl.request("SCAN_RESULTS"));
  }

  async status(): Promise<Record<string, string>> {
    return parseKeyValues(await this.ctl.request("STATUS"));
  }

  /** Configured networks: id, ssid, flags. */
  async networks(): Promise<{ id: number; ssid: string; flags: string }[]> {
    const text = await this.ctl.request("LIST_NETWORKS");
    return text
      .split("\n")
      .slice(1)
      .map((l) => l.split("\t"))
      .filter((f) => f.length >= 2 && /^\d+$/.test(f[0]!))
      .map((f) => ({ id: Number(f[0]), ssid: decodeSsid(f[1]!), flags: f[3] ?? "" }));
  }

  /**
   * Adds (or replaces: same SSID) a network, enables it and saves the supplicant's config.
   * Returns its id. SAVE_CONFIG failing (update_config=0) is not fatal: the agent keeps its
   * own copy and re-adds its networks at start.
   */
  async upsert(n: { ssid: string; psk?: string; priority: number; security?: "wpa2" | "sae" }): Promise<{ id: number; saved: boolean }> {
    for (const old of await this.networks()) if (old.ssid === n.ssid) await this.ok(`REMOVE_NETWORK ${old.id}`);
    const idText = (await this.ctl.request("ADD_NETWORK")).trim();
    if (!/^\d+$/.test(idText)) throw new WpaError(`wpa_supplicant refused ADD_NETWORK: ${idText}`);
    const id = Number(idText);
    for (const c of networkCommands(id, n)) await this.ok(c);
    await this.ok(`ENABLE_NETWORK ${id}`);
    const saved = (await this.ctl.request("SAVE_CONFIG")).trim() === "OK";
    return { id, saved };
  }

  async remove(ssid: string): Promise<number> {
    let n = 0;
    for (const old of await this.networks()) if (old.ssid === ssid) (await this.ok(`REMOVE_NETWORK ${old.id}`), n++);
    if (n) await this.ctl.request("SAVE_CONFIG");
    return n;
  }

  /**
   * Connects: SELECT_NETWORK id (or REASSOCIATE for "any known"), then waits for the outcome.
   * Resolves on CTRL-EVENT-CONNECTED; rejects on WRONG_KEY, on network-not-found, or after the timeout.
   */
  async connect(id: number | undefined, timeoutMs = WPA_CONNECT_TIMEOUT_MS): Promise<{ bssid?: string }> {
    let off: () => void = () => {};
    const outcome = new Promise<{ bssid?: string }>((resolve, reject) => {
      const t = this.clock.setTimeout(() => reject(new WpaError(`no connection within ${timeoutMs / 1000}s`)), timeoutMs);
      off = this.ctl.onEvent((e) => {
        if (e.type === "connected" && (id === undefined || e.id === undefined || e.id === id)) {
          this.clock.clearTimeout(t);
          resolve({ bssid: e.bssid });
        } else if (e.type === "temp-disabled" && (id === undefined || e.id === undefined || e.id === id)) {
          this.clock.clearTimeout(t);
          reject(new WpaError(e.reason === "WRONG_KEY" ? `wrong passphrase for ${e.ssid ?? "the network"}` : `network ${e.ssid ?? ""} disabled: ${e.reason}`.replace("  ", " ")));
        } else if (e.type === "not-found") {
          this.clock.clearTimeout(t);
          reject(new WpaError("network not found (out of range, or the SSID is wrong)"));
        }
      });
    });
    try {
      if (id === undefined) {
        for (const n of await this.networks()) await this.ok(`ENABLE_NETWORK ${n.id}`);
        await this.ok("REASSOCIATE");
      } else await this.ok(`SELECT_NETWORK ${id}`);
      return await outcome;
    } finally {
      off();
      outcome.catch(() => {});
      // SELECT_NETWORK disables every other network: enable them again so the supplicant
      // keeps roaming between all known networks by priority.
      if (id !== undefined) await this.ctl.request("ENABLE_NETWORK all").catch(() => {});
    }
  }

  /** Leaves the network (the radio goes to the AP). */
  async disconnect(): Promise<void> {
    await this.ok("DISCONNECT");
  }
}
