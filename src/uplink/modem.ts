// Cellular modems behind one interface, with two adapters:
// - MmcliModem: ModemManager's `mmcli` in key-value mode (`-K`), as on Raspberry Pi OS.
// - OpenWrtModem: OpenWRT's netifd through `ifup`/`ifdown` and `ubus call network.interface.*`.
// The manager only needs to read the modem's state and bring its data connection up or down;
// the data interface then appears as a link and is probed like any other uplink.
import { describeFailure, type Exec } from "../os/spawn.ts";

export interface ModemStatus {
  /** ModemManager's modem state (connected, registered, searching, …) or netifd's up/down. */
  state: string;
  connected: boolean;
  registration?: string;
  /** Signal quality in percent. */
  signal?: number;
  operator?: string;
  technology?: string;
}

export interface Modem {
  readonly kind: "mmcli" | "openwrt";
  status(): Promise<ModemStatus>;
  connect(apn?: string): Promise<void>;
  disconnect(): Promise<void>;
}

/**
 * Parses `mmcli -K` output: "key<padding> : value" lines; "--" means empty. Array items
 * come as "key.length : N" and "key.value[i] : item".
 */
export function parseMmcliKeyValue(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split("\n")) {
    const sep = line.indexOf(" : ");
    const colon = sep >= 0 ? sep : line.indexOf(":");
    if (colon <= 0) continue;
    const key = line.slice(0, colon).trim();
    const value = line.slice(colon + (sep >= 0 ? 3 : 1)).trim();
    if (!key || value === "--" || value === "") continue;
    out.set(key, value);
  }
  return out;
}

export function modemStatusFromMmcli(kv: Map<string, string>): ModemStatus {
  const state = kv.get("modem.generic.state") ?? "unknown";
  const signal = Number(kv.get("modem.generic.signal-quality.value"));
  return {
    state,
    connected: state === "connected",
    registration: kv.get("modem.3gpp.registration-state"),
    signal: Number.isFinite(signal) ? signal : undefined,
    operator: kv.get("modem.3gpp.operator-name"),
    technology: kv.get("modem.generic.access-technologies.value[1]"),
  };
}

/** mmcli's `-m` wants a modem index; the list gives D-Bus paths ending in it. */
export function modemIndexFromList(kv: Map<string, string>): string | undefined {
  const path = kv.get("modem-list.value[1]");
  return path?.match(/\/Modem\/(\d+)$/)?.[1];
}

export class MmcliModem implements Modem {
  readonly kind = "mmcli" as const;
  constructor(
    private readonly exec: Exec,
    private readonly mmcli = "mmcli",
  ) {}

  private async run(args: string[]): Promise<string> {
    const argv = [this.mmcli, ...args];
    const r = await this.exec(argv, { timeoutMs: 60_000 }); // connecting can take tens of seconds
    if (r.code !== 0) throw new Error(describeFailure(argv, r));
    return r.stdout;
  }

  private async index(): Promise<string> {
    const idx = modemIndexFromList(parseMmcliKeyValue(await this.run(["-L", "-K"])));
    if (idx === undefined) throw new Error("ModemManager lists no modem (mmcli -L)");
    return idx;
  }

  async status(): Promise<ModemStatus> {
    return modemStatusFromMmcli(parseMmcliKeyValue(await this.run(["-m", await this.index(), "-K"])));
  }

  async connect(apn?: string): Promise<void> {
    if (apn !== undefined && !/^[A-Za-z0-9.\-_]{1,100}$/.test(apn)) throw new Error(`APN ${JSON.stringify(apn)} has characters mmcli's key=value syntax cannot carry`);
    await this.run(["-m", await this.index(), `--simple-connect=${apn ? `apn=${apn}` : ""}`]);
  }

  async disconnect(): Promise<void> {
    await this.run(["-m", await this.index(), "--simple-disconnect"]);
  }
}

export class OpenWrtModem implements Modem {
  readonly kind = "openwrt" as const;
  private uciName: string | undefined;
  /** `device` is the kernel interface (the uplink's name); netifd's interface is looked up. */
  constructor(
    private readonly exec: Exec,
    private readonly device: string,
  ) {}

  private async iface(): Promise<string> {
    if (this.uciName) return this.uciName;
    const argv = ["ubus", "call", "network.interface", "dump"];
    const r = await this.exec(argv);
    if (r.code !== 0) throw new Error(describeFailure(argv, r));
    const dump = JSON.parse(r.stdout) as { interface?: { interface: string; device?: string; l3_device?: string }[] };
    const hit = dump.interface?.find((i) => i.l3_device === this.device || i.device === this.device);
    this.uciName = hit?.interface ?? this.device;
    return this.uciName;
  }

  async status(): Promise<ModemStatus> {
    const argv = ["ubus", "call", `network.interface.${await this.iface()}`, "status"];
    const r = await this.exec(argv);
    if (r.code !== 0) throw new Error(describeFailure(argv, r));
    const s = JSON.parse(r.stdout) as { up?: boolean; pending?: boolean; available?: boolean };
    const state = s.up ? "connected" : s.pending ? "connecting" : s.available === false ? "unavailable" : "disconnected";
    return { state, connected: !!s.up };
  }

  async connect(): Promise<void> {
    const argv = ["ifup", await this.iface()];
    const r = await this.exec(argv);
    if (r.code !== 0) throw new Error(describeFailure(argv, r));
  }

  async disconnect(): Promise<void> {
    const argv = ["ifdown", await this.iface()];
    const r = await this.exec(argv);
    if (r.code !== 0) throw new Error(describeFailure(argv, r));
  }
}

/** ModemManager where mmcli exists, else OpenWRT's netifd where ubus exists, else none. */
export function detectModem(exec: Exec, device: string, which: (cmd: string) => string | null = Bun.which): Modem | undefined {
  if (which("mmcli")) return new MmcliModem(exec);
  if (which("ubus") && which("ifup")) return new OpenWrtModem(exec, device);
  return undefined;
}
