// netconnectd's wire protocol (seed 002), spoken on the agent's control socket so tools
// written for netconnectd (netconnectcli, OctoPrint-Netconnectd) keep working:
//
//   request  = one JSON object per connection, terminated by NUL; its single key is the
//              command, its value the parameters: {"list_wifi": {"force": true}}\0
//   reply    = {"result": <value>}\0  or  {"error": "<message>"}\0, then the server closes
//
// Commands and parameters, as netconnectd's protocol.py defines them:
export const NETCONNECTD_COMMANDS = {
  status: [],
  start_ap: [],
  stop_ap: [],
  list_wifi: ["force"],
  config_wifi: ["ssid", "psk", "force"],
  start_wifi: [],
  forget_wifi: [],
  reset: [],
} as const;
export type NetconnectdCommand = keyof typeof NETCONNECTD_COMMANDS;

/** A request not finished by NUL within this long gets an error and the connection closes. */
export const NETCONNECTD_REQUEST_TIMEOUT_MS = 5_000;
/** netconnectd requests are tiny; anything bigger is not one. */
export const NETCONNECTD_MAX_REQUEST = 64 * 1024;

/** The status shape of netconnectd's on_status_message. */
export interface NetconnectdStatus {
  link: boolean;
  devs: string[];
  connections: { wifi: boolean; ap: boolean; wired: boolean };
  wifi: { current_ssid: string | null; current_address: string | null; valid_config: boolean; present: boolean };
}

/** A cell as netconnectd's convert_cells reports it. */
export interface NetconnectdCell {
  ssid: string;
  channel: number;
  address: string;
  encrypted: boolean;
  signal: number | null;
}

export interface NetconnectdBackend {
  netconnectdStatus(): Promise<NetconnectdStatus> | NetconnectdStatus;
  startAp(): Promise<string>;
  stopAp(): Promise<string>;
  listWifi(force: boolean): Promise<NetconnectdCell[]>;
  configWifi(ssid: string, psk: string | undefined, force: boolean): Promise<string>;
  startWifi(): Promise<string>;
  forgetWifi(): Promise<string>;
  reset(): Promise<string>;
}

export type NetconnectdRequest = { cmd: NetconnectdCommand; params: Record<string, unknown> };

/** Decodes one request (without its NUL); an Error says what is wrong with it. */
export function parseNetconnectd(text: string): NetconnectdRequest | Error {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return new Error("request is not valid JSON");
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) return new Error("request must be a JSON object whose single key is the command");
  const keys = Object.keys(v);
  if (keys.length !== 1) return new Error(`request must have exactly one key (the command), got ${keys.length}`);
  const cmd = keys[0]!;
  if (!(cmd in NETCONNECTD_COMMANDS)) return new Error(`unknown message ${JSON.stringify(cmd.slice(0, 40))}; known: ${Object.keys(NETCONNECTD_COMMANDS).join(", ")}`);
  const p = (v as Record<string, unknown>)[cmd];
  if (p !== null && p !== undefined && (typeof p !== "object" || Array.isArray(p))) return new Error(`parameters of ${cmd} must be an object`);
  return { cmd: cmd as NetconnectdCommand, params: (p ?? {}) as Record<string, unknown> };
}

const optBool = (p: Record<string, unknown>, k: string): boolean | Error => {
  const v = p[k];
  if (v === undefined || v === null) return false;
  if (typeof v !== "boolean") return new Error(`${k} must be true or false`);
  return v;
};

/** Runs one request against the backend; never throws. */
export async function answerNetconnectd(b: NetconnectdBackend, text: string): Promise<{ result: unknown } | { error: string }> {
  const req = parseNetconnectd(text);
  if (req instanceof Error) return { error: req.message };
  const { cmd, params } = req;
  try {
    switch (cmd) {
      case "status":
        return { result: await b.netconnectdStatus() };
      case "start_ap":
        return { result: await b.startAp() };
      case "stop_ap":
        return { result: await b.stopAp() };
      case "list_wifi": {
        const force = optBool(params, "force");
        if (force instanceof Error) return { error: force.message };
        return { result: await b.listWifi(force) };
      }
      case "config_wifi": {
        const { ssid, psk } = params;
        if (typeof ssid !== "string") return { error: "Missing mandatory parameters: ['ssid'] (a string)" };
        if (psk !== undefined && psk !== null && typeof psk !== "string") return { error: "psk must be a string" };
        const force = optBool(params, "force");
        if (force instanceof Error) return { error: force.message };
        return { result: await b.configWifi(ssid, (psk ?? undefined) as string | undefined, force) };
      }
      case "start_wifi":
        return { result: await b.startWifi() };
      case "forget_wifi":
        return { result: await b.forgetWifi() };
      case "reset":
        return { result: await b.reset() };
    }
  } catch (e) {
    return { error: (e as Error).message };
  }
}

export function encodeNetconnectd(reply: { result: unknown } | { error: string }): string {
  return JSON.stringify(reply) + "\0";
}
