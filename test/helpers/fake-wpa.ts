// A fake wpa_supplicant control interface for tests: a unix datagram socket answering the
// real ctrl_iface commands with the real reply formats, and sending the real events to
// ATTACHed clients. There is no radio here; the "air" is the list of cells the test gives,
// each with the passphrase that opens it. `onConnect`/`onDisconnect` let a system test move
// a real veth (the data path) when the fake associates.
import { UnixDgramSocket } from "../../src/uplink/unixdgram.ts";
import type { WpaControl, WpaEvent } from "../../src/uplink/wpa.ts";

export interface FakeCell {
  bssid: string;
  freq: number;
  signal: number;
  flags: string;
  ssid: string;
  /** The passphrase the cell accepts; undefined: open network. */
  psk?: string;
}

interface Net {
  id: number;
  ssid?: string;
  psk?: string;
  priority: number;
  keyMgmt?: string;
  enabled: boolean;
}

/** wpa_supplicant's printf_encode for SSIDs. */
function encodeSsid(s: string): string {
  let out = "";
  for (const b of Buffer.from(s)) {
    if (b === 0x5c) out += "\\\\";
    else if (b === 0x22) out += '\\"';
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += `\\x${b.toString(16).padStart(2, "0")}`;
  }
  return out;
}

/** SET_NETWORK values: "quoted" text or hex bytes. */
function decodeValue(v: string): string {
  if (v.startsWith('"')) return v.slice(1, v.lastIndexOf('"'));
  return Buffer.from(v, "hex").toString();
}

export class FakeWpaSupplicant {
  readonly sock: UnixDgramSocket;
  readonly commands: string[] = [];
  cells: FakeCell[] = [];
  readonly networks = new Map<number, Net>();
  private nextId = 0;
  private attached = new Set<string>();
  state: "DISCONNECTED" | "SCANNING" | "ASSOCIATING" | "COMPLETED" | "INACTIVE" = "DISCONNECTED";
  current: { id: number; bssid: string; ssid: string } | undefined;
  saved = 0;
  /** Delay of events after the command that causes them, as a real radio takes time. */
  eventDelayMs = 30;
  onConnect: (cell: FakeCell) => void | Promise<void> = () => {};
  onDisconnect: () => void | Promise<void> = () => {};

  constructor(readonly path: string) {
    this.sock = new UnixDgramSocket(path);
    this.sock.onMessage((d) => {
      const cmd = d.data.toString();
      this.commands.push(cmd);
      const reply = this.handle(cmd, d.from);
      if (reply === undefined || !d.from) return;
      try {
        this.sock.send(reply, d.from);
      } catch {
        // the client closed its socket right after sending (DETACH at close): nobody to answer
      }
    });
  }

  private event(level: number, text: string): void {
    setTimeout(() => {
      for (const to of this.attached) {
        try {
          this.sock.send(`<${level}>${text}`, to);
        } catch {
          this.attached.delete(to); // client gone
        }
      }
    }, this.eventDelayMs);
  }

  private attempt(candidates: Net[]): void {
    const net = candidates.filter((n) => n.enabled && n.ssid !== undefined).sort((a, b) => b.priority - a.priority);
    for (const n of net) {
      const cell = this.cells.find((c) => c.ssid === n.ssid);
      if (!cell) continue;
      if ((cell.psk ?? "") !== (n.psk ?? "")) {
        this.state = "DISCONNECTED";
        this.event(3, `CTRL-EVENT-SSID-TEMP-DISABLED id=${n.id} ssid="${encodeSsid(n.ssid!)}" auth_failures=1 duration=10 reason=WRONG_KEY`);
        return;
      }
      this.state = "COMPLETED";
      this.current = { id: n.id, bssid: cell.bssid, ssid: cell.ssid };
      setTimeout(async () => {
        await this.onConnect(cell);
        this.event(2, `CTRL-EVENT-CONNECTED - Connection to ${cell.bssid} completed [id=${n.id} id_str=]`);
      }, this.eventDelayMs);
      return;
    }
    this.state = "SCANNING";
    this.event(3, "CTRL-EVENT-NETWORK-NOT-FOUND");
  }

  private disconnect(): void {
    if (this.current) {
      const b = this.current.bssid;
      this.current = undefined;
      void this.onDisconnect();
      this.event(3, `CTRL-EVENT-DISCONNECTED bssid=${b} reason=3 locally_generated=1`);
    }
    this.state = "DISCONNECTED";
  }

  private handle(cmd: string, from: string): string | undefined {
    const [verb, ...rest] = cmd.split(" ");
    const arg = rest.join(" ");
    const net = (s: string | undefined) => (s !== undefined && /^\d+$/.test(s) ? this.networks.get(Number(s)) : undefined);
    switch (verb) {
      case "PING":
        return "PONG\n";
      case "ATTACH":
        this.attached.add(from);
        return "OK\n";
      case "DETACH":
        this.attached.delete(from);
        return "OK\n";
      case "SCAN":
        this.event(2, "CTRL-EVENT-SCAN-STARTED ");
        setTimeout(() => this.event(2, "CTRL-EVENT-SCAN-RESULTS "), this.eventDelayMs);
        return "OK\n";
      case "SCAN_RESULTS":
        return "bssid / frequency / signal level / flags / ssid\n" + this.cells.map((c) => `${c.bssid}\t${c.freq}\t${c.signal}\t${c.flags}\t${encodeSsid(c.ssid)}\n`).join("");
      case "ADD_NETWORK": {
        const id = this.nextId++;
        this.networks.set(id, { id, priority: 0, enabled: false });
        return `${id}\n`;
      }
      case "SET_NETWORK": {
        const [id, key, ...v] = rest;
        const n = net(id);
        if (!n || !key || v.length === 0) return "FAIL\n";
        const value = v.join(" ");
        if (key === "ssid") n.ssid = decodeValue(value);
        else if (key === "psk" || key === "sae_password") {
          if (value.startsWith('"') && (value.length - 2 < 8 || value.length - 2 > 63)) return "FAIL\n";
          n.psk = decodeValue(value);
        } else if (key === "priority") n.priority = Number(value);
        else if (key === "key_mgmt") n.keyMgmt = value;
        else if (!["scan_ssid", "ieee80211w"].includes(key)) return "FAIL\n";
        return "OK\n";
      }
      case "ENABLE_NETWORK":
      case "DISABLE_NETWORK": {
        const targets = arg === "all" ? [...this.networks.values()] : [net(arg)].filter((x): x is Net => !!x);
        if (!targets.length) return "FAIL\n";
        for (const t of targets) t.enabled = verb === "ENABLE_NETWORK";
        return "OK\n";
      }
      case "SELECT_NETWORK": {
        const n = net(arg);
        if (!n) return "FAIL\n";
        for (const t of this.networks.values()) t.enabled = t.id === n.id; // as the real one does
        this.disconnect();
        this.attempt([n]);
        return "OK\n";
      }
      case "REASSOCIATE":
      case "RECONNECT":
        this.disconnect();
        this.attempt([...this.networks.values()]);
        return "OK\n";
      case "DISCONNECT":
        this.disconnect();
        return "OK\n";
      case "REMOVE_NETWORK": {
        if (arg === "all") this.networks.clear();
        else if (!this.networks.delete(Number(arg))) return "FAIL\n";
        if (this.current && !this.networks.has(this.current.id)) this.disconnect();
        return "OK\n";
      }
      case "LIST_NETWORKS":
        return (
          "network id / ssid / bssid / flags\n" +
          [...this.networks.values()].map((n) => `${n.id}\t${encodeSsid(n.ssid ?? "")}\tany\t${this.current?.id === n.id ? "[CURRENT]" : n.enabled ? "" : "[DISABLED]"}\n`).join("")
        );
      case "SAVE_CONFIG":
        this.saved++;
        return "OK\n";
      case "STATUS": {
        const c = this.current;
        return (c ? `bssid=${c.bssid}\nfreq=2412\nssid=${c.ssid}\nid=${c.id}\nmode=station\npairwise_cipher=CCMP\nkey_mgmt=WPA2-PSK\n` : "") + `wpa_state=${this.state}\naddress=02:00:00:00:00:01\n`;
      }
      default:
        return "UNKNOWN COMMAND\n";
    }
  }

  close(): void {
    this.sock.close();
  }
}

/**
 * An in-process WpaControl (no socket) for unit tests of the Wi-Fi service: no network is in
 * range, so every connection attempt fails at once with the events wpa_supplicant sends.
 * `known` lists the configured networks as LIST_NETWORKS rows ("0\thome\tany\t").
 */
export function unreachableWpa(known: readonly string[] = []): WpaControl {
  const listeners = new Set<(e: WpaEvent) => void>();
  const emit = (e: WpaEvent) => queueMicrotask(() => listeners.forEach((l) => l(e)));
  return {
    async request(cmd) {
      if (cmd === "SCAN") emit({ type: "scan-results" });
      if (cmd === "REASSOCIATE" || cmd.startsWith("SELECT_NETWORK")) emit({ type: "not-found" });
      if (cmd === "SCAN_RESULTS") return "bssid / frequency / signal level / flags / ssid\n";
      if (cmd === "LIST_NETWORKS") return ["network id / ssid / bssid / flags", ...known].join("\n") + "\n";
      if (cmd === "STATUS") return "wpa_state=DISCONNECTED\n";
      return "OK";
    },
    onEvent(cb) {
      listeners.add(cb);
      return () => listeners.delete(cb);
    },
    close() {},
  };
}
