// One configuration schema for every role. Sources, lowest first: defaults, the TOML file
// (--config), then command-line flags. Validation is pure: unknown keys, wrong types and
// impossible values are all collected and reported with where they came from (the file or
// the flag), the key, and what was expected. Role-specific needs (a relay must listen, an
// onsite device must know its relay) are checked by `requireForRole`.
import { formatDuration, parseDuration } from "./duration.ts";
import { LOG_LEVELS, type LogLevel } from "./log.ts";
import {
  parseAllowEntry,
  parseCidr,
  parseHostPort,
  parsePort,
  parseIPv4,
  maskOf,
  PRIVATE_RANGES,
  type AllowEntry,
  type Cidr,
  type HostPort,
} from "./netaddr.ts";
import { UsageError } from "./errors.ts";
import { SERVICE_KINDS, SERVICE_LIMITS, type ServiceKind } from "./transport/messages.ts";
import { Timing } from "./transport/policy.ts";
import { stat } from "node:fs/promises";

export const ROLES = ["relay", "onsite", "master"] as const;
export type Role = (typeof ROLES)[number];

// Platform paths. Release builds bake in their target's paths from targets/targets.toml
// (OpenWRT keeps state on flash under /etc/agent/state, since its /var is a RAM disk);
// a run from source uses the Debian ones.
declare const AGENT_DEFAULT_CONFIG: string | undefined;
declare const AGENT_DEFAULT_STATE_DIR: string | undefined;
declare const AGENT_DEFAULT_CONTROL: string | undefined;

export const DEFAULT_CONFIG_FILE: string = typeof AGENT_DEFAULT_CONFIG === "string" ? AGENT_DEFAULT_CONFIG : "/etc/agent/agent.toml";
export const DEFAULT_CONTROL: string = typeof AGENT_DEFAULT_CONTROL === "string" ? AGENT_DEFAULT_CONTROL : "/run/agent/control.sock";
export const DEFAULT_STATE_DIR: string = typeof AGENT_DEFAULT_STATE_DIR === "string" ? AGENT_DEFAULT_STATE_DIR : "/var/lib/agent";

export interface NatConfig {
  backend: "auto" | "iptables" | "nft";
  min_ttl: number;
  max_ttl: number;
  max_rules: number;
  /** Rules one session (a master's NAT_REQUEST) may hold at once. */
  max_rules_per_session: number;
  /** Rules all sessions of one master may hold at once on this device. */
  max_rules_per_master: number;
  allow_any_source: boolean;
  keep_on_stop: boolean;
}

export interface UplinkConfig {
  name: string;
  kind: "ethernet" | "wifi" | "cellular";
  priority: number;
  gateway?: number;
  apn?: string;
  metered: boolean;
  keepalive?: number;
}

export interface TrackingConfig {
  targets: HostPort[];
  interval: number;
  timeout: number;
  down: number;
  up: number;
  /** Connect attempts per target per probe round (mwan3's `count`); one answer is enough. */
  count: number;
}

export interface ApConfig {
  interface: string;
  ssid: string;
  passphrase?: string;
  security: "wpa2" | "sae";
  country: string;
  channel: number;
  after: number;
  address: Cidr & { host: number };
  /** AP fallback and Wi-Fi client run only when true (a device without a radio has nothing to do). */
  enabled: boolean;
  /** Interface wpa_supplicant drives for the Wi-Fi client; the AP's by default (one radio). */
  wifi_interface?: string;
  /** wpa_supplicant's control socket; default /run/wpa_supplicant/<wifi_interface>. */
  wpa_ctrl?: string;
  hostapd: string;
  dnsmasq: string;
  /** dnsmasq answers every DNS name with the AP address, so a phone opens the setup page. */
  captive_dns: boolean;
  /** A healthy uplink ends AP mode. */
  stop_on_uplink: boolean;
  /** While in AP mode, how often the radio leaves it to retry the known networks. */
  retry: number;
  setup_port: number;
  /** Where AP clients may be forwarded to (masqueraded): "lan" (any interface but the uplinks
   * and the AP) and/or "uplinks" (the [[uplink]] interfaces). Empty: nowhere. */
  forward: ApForward[];
  /** A second socket at netconnectd's path that serves only netconnectd's commands (seed 002),
   * for unprivileged clients such as OctoPrint's netconnectd plugin. Unset: none. */
  netconnectd_socket?: string;
  /** Its file mode (netconnectd's is 0666: any local user may configure Wi-Fi). */
  netconnectd_socket_mode: number;
  /** Its group, when the mode should grant a group rather than everyone. */
  netconnectd_socket_group?: string;
}

/** `[ownline]`: ownline's Gen 1 service protocol (seed 001) served as an optional listener. */
export interface OwnlineConfig {
  /** TLS listener, e.g. 0.0.0.0:9999. */
  listen: HostPort;
  /** The one address allowed to send requests (ownline's known_srv_ip). */
  known_server: number;
  api_key_file: string;
  aes_key_file: string;
  /** The TLS certificate and key (PEM); default: the device's bundle. Both or neither. */
  cert_file?: string;
  key_file?: string;
  /** How long a connection may take to deliver its one message (TLS handshake included). */
  read_timeout: number;
}

/** Packet tunnels (issue 11): the master's keys and the onsite device's, in one [tunnel] table. */
export interface TunnelConfig {
  /** Master: the technician's port, where dnsmasq serves (routed) or the bridge joins (bridged). */
  secondary: string;
  /** Master, routed mode: run dnsmasq on `secondary`. */
  dhcp: boolean;
  /** Master: the addresses of tunnel ends, one /30 per tunnel. */
  pool: Cidr;
  /** Onsite: packet tunnels at all (false: TCP/UDP forwards only). */
  enabled: boolean;
  /** Onsite: bridged mode (a whole L2 segment) must be allowed explicitly. */
  bridged: boolean;
  /** Onsite: the LAN bridge a bridged tunnel's TAP joins. */
  lan_bridge: string;
}

export const AP_FORWARD = ["lan", "uplinks"] as const;
export type ApForward = (typeof AP_FORWARD)[number];

export interface Config {
  role?: Role;
  bundle?: string;
  relay?: HostPort;
  listen?: HostPort;
  proxy?: URL;
  /** Relay: the revocation list (`agent pki revoke` writes it as the CA's DIR/revoked). Unset:
   * STATE_DIR/revoked (see `revocationsFile`); a missing default file is an empty list and a
   * warning, a missing configured one an error. */
  revocations?: string;
  location?: string;
  hostname?: string;
  gui?: HostPort;
  /** The GUI's certificate: "bundle" (the daemon's own, signed by the fleet CA) or a PEM file with the chain and the key; unset: HTTP. */
  gui_cert?: string;
  /** A group that may use the control socket (mode 0660), like `tailscale up --operator`. */
  operator?: string;
  allow: AllowEntry[];
  control: string;
  state_dir: string;
  log_level: LogLevel;
  json_logs: boolean;
  nat: NatConfig;
  uplink: UplinkConfig[];
  tracking: TrackingConfig;
  ap: ApConfig;
  /** Onsite: ownline's listener, when the file has an [ownline] section. */
  ownline?: OwnlineConfig;
  /** Relay: which masters may open sessions to which onsite devices; empty = every master
   * of the fleet may reach every onsite device. */
  access: AccessRule[];
  // ---- fleet operations (issue 14) ----
  /** Relay: a session with no stream and no packet for this long ends (ms). */
  session_idle_timeout: number;
  /** Relay: a connection with bytes queued for its peer and none taken for this long is closed (ms; never below its keepalive timeout). */
  write_stall_timeout: number;
  /** Any role: serve Prometheus metrics (GET /metrics) on this address. Unset: no listener. */
  metrics?: HostPort;
  /** Relay: every connection starts with a PROXY protocol v2 header from a load balancer. */
  proxy_protocol: boolean;
  tunnel: TunnelConfig;
  /** Relay: the nymea-remoteproxy listener ([nymea]); undefined when not configured. */
  nymea?: NymeaConfig;
  /** Onsite: how often a heartbeat goes to the relay over UDP (ms; default 25 s). */
  heartbeat_interval?: number;
  /** Relay: the UDP port heartbeats arrive on (default: the listen port's number; 0: off). */
  heartbeat_port?: number;
  /** Onsite: the services behind it, advertised to the relay; master: its own catalogue entries (with `device`). */
  service: ServiceConfig[];
  /** Flash-and-run enrollment ([enroll], issue 14 §8): onsite asks, relay signs. */
  enroll?: EnrollConfig;
  // ---- relay scale-out (issue 16) ----
  /** Onsite, master: every relay to try (`relay = ["r1:443", "r2:443"]`), in a shuffled order;
   * `relay` is the first of them. Set whenever `relay` is. */
  relays?: HostPort[];
  /** Relay: cluster mode ([cluster]); undefined: a single relay, state in memory. */
  cluster?: ClusterConfig;
}

/** `[[service]]` (issue 15): a service behind an onsite device, for the GUI's catalogue. */
export interface ServiceConfig {
  name: string;
  /** HOST:PORT as written (a LAN address or a name the onsite device resolves). */
  target: string;
  kind: ServiceKind;
  description?: string;
  /** Master only: the onsite device the service is behind. */
  device?: string;
}

/** `[enroll]`: an onsite device without a bundle enrolls at the relay; the relay signs (src/pki-enroll.ts). */
export interface EnrollConfig {
  /** Onsite: the relay's enrollment endpoint. */
  address?: HostPort;
  /** Onsite: the fleet enrollment token, inline or in a file (one of the two). */
  token?: string;
  token_file?: string;
  /** Onsite: the fleet CA certificate (PEM) the relay's certificate must chain to. */
  ca?: string;
  /** Onsite: the id is this prefix + 16 hex digits of the device key's hash. */
  id_prefix: string;
  /** Relay: where the enrollment endpoint listens. */
  listen?: HostPort;
  /** Relay: the enroller file from `agent pki issue-enroller`. */
  enroller?: string;
  /** Relay: lifetime of the certificates it signs, in days. */
  days: number;
}

/** Where an enrolling device keeps its bundle: `bundle` if set, else STATE_DIR/enrolled.bundle. */
export function enrolledBundlePath(cfg: Pick<Config, "bundle" | "state_dir">): string {
  return cfg.bundle ?? `${cfg.state_dir.replace(/\/+$/, "")}/enrolled.bundle`;
}

/** `[cluster]`: presence and shared state in Redis, sessions carried relay-to-relay over the mesh. */
export interface ClusterConfig {
  /** redis://[:password@]host[:port][/db] or rediss:// (TLS). */
  redis: URL;
  /** The relay-to-relay mesh listener, which the other relays dial (mutual TLS, relay certificates). */
  mesh: HostPort;
  /** This relay's id in the cluster; default: its certificate's id. */
  node?: string;
  /** rediss://: the CA that signed Redis's certificate (PEM file); default: the system's CAs. */
  redis_ca?: string;
}

/** A Redis URL with its password hidden, for logs and status. Pure. */
export function redactRedisUrl(u: URL): string {
  const c = new URL(u.href);
  if (c.password) c.password = "***";
  return c.href;
}

/** `[nymea]`: the relay speaks nymea-remoteproxy's proxy protocol (src/tunnel/nymea/README.md). */
export interface NymeaConfig {
  /** TLS over TCP (plain when `plain`, loopback only). */
  tcp?: HostPort;
  /** TLS WebSocket (plain when `plain`, loopback only). */
  ws?: HostPort;
  /** RemoteProxy.Hello's "name". */
  name: string;
  /** One accepted token per line; re-read on SIGHUP. */
  tokens?: string;
  /** POST {"token": …}, expects {"isValid": bool}. */
  authorizer?: URL;
  /** Every token is accepted (upstream's -m); loopback listeners only. */
  dummy: boolean;
  /** No TLS (behind a TLS terminator); loopback listeners only. */
  plain: boolean;
  /** PEM certificate and key; default: the relay's own from its bundle. */
  certificate?: string;
  key?: string;
  /** Unix socket that pushes the statistics document every second. */
  monitor?: string;
  inactive_timeout: number;
  alone_timeout: number;
  authentication_timeout: number;
  jsonrpc_timeout: number;
}

/** Loopback hosts: where a plain or dummy nymea listener may be. */
export function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/** The cross-key rules of [nymea], pure: each problem with its key. */
export function nymeaProblems(n: NymeaConfig): { key: string; message: string }[] {
  const out: { key: string; message: string }[] = [];
  const listeners = [n.tcp && ["tcp", n.tcp], n.ws && ["ws", n.ws]].filter(Boolean) as [string, HostPort][];
  if (listeners.length === 0) out.push({ key: "nymea", message: 'needs a listener: set tcp = "0.0.0.0:2213" and/or ws = "0.0.0.0:2212"' });
  const auths = [n.tokens !== undefined && "tokens", n.authorizer !== undefined && "authorizer", n.dummy && "dummy"].filter(Boolean);
  if (auths.length === 0) out.push({ key: "nymea", message: 'needs an authenticator: tokens = "FILE", authorizer = "http://HOST:PORT/PATH" or (loopback only) dummy = true' });
  if (auths.length > 1) out.push({ key: "nymea", message: `set one authenticator, not ${auths.join(" and ")}` });
  for (const [what, on] of [["dummy", n.dummy], ["plain", n.plain]] as const) {
    if (!on) continue;
    for (const [k, hp] of listeners) {
      if (!isLoopbackHost(hp.host)) out.push({ key: `nymea.${k}`, message: `${what} = true is allowed only when every nymea listener is on loopback (127.0.0.1), not ${hp.host}` });
    }
  }
  if ((n.certificate === undefined) !== (n.key === undefined)) out.push({ key: n.certificate === undefined ? "nymea.certificate" : "nymea.key", message: "certificate and key go together: set both (PEM files) or neither (the relay's own)" });
  if (n.plain && n.certificate !== undefined) out.push({ key: "nymea.certificate", message: "plain = true uses no certificate; remove one or the other" });
  return out;
}

/** Default of `session_idle_timeout`: one hour. */
export const DEFAULT_SESSION_IDLE_TIMEOUT = 3_600_000;

/** The file name of the relay's default revocation list inside the state dir. */
export const DEFAULT_REVOCATIONS_NAME = "revoked";

/** The relay's revocation list: `revocations` when set, else STATE_DIR/revoked. */
export function revocationsFile(cfg: Pick<Config, "revocations" | "state_dir">): { path: string; configured: boolean } {
  if (cfg.revocations !== undefined) return { path: cfg.revocations, configured: true };
  const dir = cfg.state_dir.endsWith("/") ? cfg.state_dir : cfg.state_dir + "/";
  return { path: dir + DEFAULT_REVOCATIONS_NAME, configured: false };
}

export interface AccessRule {
  masters: string[];
  onsites: string[];
  /** Whether these masters may ask these devices for NAT rules (NAT_REQUEST); unset: no. */
  nat?: boolean;
}

/** A value failed its check; the message reads after "KEY: ". */
class Expected extends Error {}

type Check<T> = (v: unknown) => T;

function got(v: unknown): string {
  if (Array.isArray(v)) return "an array";
  if (v === null) return "null";
  if (typeof v === "object") return "a table";
  if (typeof v === "string") return JSON.stringify(v.length > 60 ? v.slice(0, 60) + "…" : v);
  return `${typeof v} ${String(v)}`;
}

const str =
  (what = "a string", test?: (s: string) => string | undefined): Check<string> =>
  (v) => {
    if (typeof v !== "string") throw new Expected(`expected ${what}, got ${got(v)}`);
    const problem = test?.(v);
    if (problem) throw new Expected(problem);
    return v;
  };

const nonEmpty = (what: string) =>
  str(what, (s) => (s.length === 0 ? `expected ${what}, got an empty string` : /[\0\n\r]/.test(s) ? `expected ${what} without control characters` : undefined));

const bool: Check<boolean> = (v) => {
  if (typeof v !== "boolean") throw new Expected(`expected true or false, got ${got(v)}`);
  return v;
};

const int =
  (min: number, max: number): Check<number> =>
  (v) => {
    const n = typeof v === "bigint" ? Number(v) : v;
    if (typeof n !== "number" || !Number.isInteger(n)) throw new Expected(`expected a whole number ${min}-${max}, got ${got(v)}`);
    if (n < min || n > max) throw new Expected(`expected a whole number ${min}-${max}, got ${n}`);
    return n;
  };

const oneOf =
  <T extends string>(options: readonly T[]): Check<T> =>
  (v) => {
    if (typeof v !== "string" || !(options as readonly string[]).includes(v)) {
      throw new Expected(`expected one of ${options.join(", ")}, got ${got(v)}`);
    }
    return v as T;
  };

const wrap =
  <T>(what: string, parse: (s: string) => T): Check<T> =>
  (v) => {
    if (typeof v !== "string") throw new Expected(`expected ${what}, got ${got(v)}`);
    try {
      return parse(v);
    } catch (e) {
      throw new Expected((e as Error).message);
    }
  };

const duration = (min: number, max: number, what = "a duration such as 10s, 30m or 8h") =>
  wrap(what, (s) => {
    const ms = parseDuration(s);
    if (ms < min || ms > max) {
      throw new Error(`expected a duration between ${formatDuration(min)} and ${formatDuration(max)}, got ${JSON.stringify(s)}`);
    }
    return ms;
  });

const hostPort = wrap("HOST:PORT such as relay.example.net:443", (s) => parseHostPort(s));
/** A listening address: port 0 lets the system choose (`agent status` then shows the port). */
const listenHostPort = wrap("HOST:PORT such as 0.0.0.0:443 (port 0: chosen by the system)", (s) => parseHostPort(s, "HOST:PORT", true));

/** `gui`: ":PORT" (or "PORT") is the LAN side (host "": loopback plus the master's [tunnel] secondary, src/gui/lan-bind.ts); "ADDR:PORT" as written. */
const guiListen = wrap('":PORT" (the LAN side) or "ADDR:PORT", such as ":8080" or "192.168.1.20:8080"', (s) => {
  const m = /^:?(\d*)$/.exec(s.trim());
  if (m) {
    if (m[1] === "0") return { host: "", port: 0 };
    try {
      return { host: "", port: parsePort(m[1]!) };
    } catch {
      throw new Error(`expected ":PORT" with a port 1-65535 (the LAN side) or "ADDR:PORT", got ${JSON.stringify(s)}`);
    }
  }
  try {
    return parseHostPort(s, "HOST:PORT", true);
  } catch (e) {
    throw new Error(`${(e as Error).message}; or ":PORT" alone for the LAN side (the master's [tunnel] secondary and 127.0.0.1), e.g. gui = ":8080"`);
  }
});



const redisUrl = wrap("a redis://[:password@]host:port or rediss://… URL", (s) => {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw new Error(`expected a redis://[:password@]host:port URL (rediss:// for TLS), got ${JSON.stringify(s.replace(/:[^:@/]*@/, ":***@"))}`);
  }
  const shown = JSON.stringify(redactRedisUrl(u));
  if (u.protocol !== "redis:" && u.protocol !== "rediss:") throw new Error(`expected a redis:// or rediss:// (TLS) URL, got ${shown}`);
  if (!u.hostname) throw new Error(`expected the Redis host in the URL, e.g. redis://10.0.0.5:6379, got ${shown}`);
  if (!/^(\/|\/\d{1,2})?$/.test(u.pathname) || u.search || u.hash) throw new Error(`expected only scheme, password, host, port and an optional /DB number in the Redis URL, got ${shown}`);
  return u;
});

const CLUSTER: Schema = {
  redis: redisUrl,
  mesh: wrap("HOST:PORT the other relays dial, such as 10.0.0.1:8444", (s) => {
    const hp = parseHostPort(s);
    if (hp.host === "0.0.0.0" || hp.host === "::" || hp.host === "[::]") throw new Error(`expected an address the other relays can dial (it is published to them), not the wildcard ${JSON.stringify(s)}`);
    return hp;
  }),
  redis_ca: nonEmpty("a path to the PEM CA certificate that signed Redis's TLS certificate"),
  node: str("a node id", (s) => (/^[a-z0-9][a-z0-9._-]{0,62}$/.test(s) ? undefined : `expected a node id (1-63 characters: lowercase letters, digits, '.', '_' or '-'), got ${got(s)}`)),
};

const proxyUrl = wrap("an http://[user:pass@]host:port proxy URL", (s) => {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw new Error(`expected an http://[user:pass@]host:port proxy URL, got ${JSON.stringify(s)}`);
  }
  if (u.protocol !== "http:") throw new Error(`expected an http:// proxy URL (HTTP CONNECT), got ${JSON.stringify(s)}`);
  if (!u.port) throw new Error(`expected the proxy's port in the URL, e.g. http://proxy.lan:3128, got ${JSON.stringify(s)}`);
  if ((u.pathname !== "/" && u.pathname !== "") || u.search || u.hash) {
    throw new Error(`expected only scheme, credentials, host and port in the proxy URL, got ${JSON.stringify(s)}`);
  }
  return u;
});

const ifname = str("an interface name (1-15 characters: letters, digits, . _ -)", (s) =>
  /^[A-Za-z0-9_.-]{1,15}$/.test(s) && s !== "." && s !== ".." ? undefined : `expected an interface name (1-15 characters: letters, digits, . _ -), got ${got(s)}`,
);

const list =
  <T>(item: Check<T>, what: string): Check<T[]> =>
  (v) => {
    if (!Array.isArray(v)) throw new Expected(`expected ${what}, got ${got(v)}`);
    return v.map((x, i) => {
      try {
        return item(x);
      } catch (e) {
        throw new Expected(`item ${i + 1}: ${(e as Error).message}`);
      }
    });
  };

/** Where a key's value came from, for error messages. */
export type Origin = { kind: "file"; path: string } | { kind: "flag" } | { kind: "default" };

export interface ConfigProblem {
  origin: Origin;
  key: string;
  message: string;
}

export class ConfigError extends UsageError {
  readonly problems: ConfigProblem[];
  constructor(problems: ConfigProblem[]) {
    const lines = problems.map(formatProblem);
    super(
      lines.length === 1 ? lines[0]! : `${lines.length} configuration problems:\n  ${lines.join("\n  ")}`,
      configHint(problems),
    );
    this.problems = problems;
  }
}

/**
 * The hint under a config error: self-contained (an installed binary has no targets/*.toml to
 * point at), quoting the expected form of the key that failed where there is one.
 */
export function configHint(problems: readonly ConfigProblem[]): string {
  const forms: string[] = [];
  for (const p of problems) {
    const form = exampleFor(p.key, p.origin);
    if (form && !forms.includes(form)) forms.push(form);
  }
  const base = "fix the value named above; `agent --help` lists the flags";
  return forms.length ? `${base}; expected form: ${forms.slice(0, 3).join("; ")}` : base;
}

/** How a key is written, in the file (TOML) or as a flag. */
const EXAMPLES: Record<string, string> = {
  role: 'role = "onsite"   (relay | onsite | master)',
  bundle: 'bundle = "/etc/agent/site-1.bundle"',
  relay: 'relay = "relay.example.net:443"',
  listen: 'listen = "0.0.0.0:443"',
  proxy: 'proxy = "http://proxy.lan:3128"',
  revocations: 'revocations = "/var/lib/agent/revoked.json"',
  location: 'location = "Building A, room 2"',
  hostname: 'hostname = "relay.example.net"',
  gui: 'gui = ":8080"   (the LAN side: the master\'s [tunnel] secondary and 127.0.0.1; or "ADDR:PORT")',
  gui_cert: 'gui_cert = "bundle"   (or a PEM file with certificate and key)',
  operator: 'operator = "support"   (a group name)',
  allow: 'allow = ["192.168.1.0/24", "10.0.0.5/32:22,80"]',
  control: 'control = "/run/agent/control.sock"',
  state_dir: 'state_dir = "/var/lib/agent"',
  log_level: 'log_level = "info"   (silent | error | warn | info | debug | trace)',
  json_logs: "json_logs = true",
  nat: '[nat] backend = "auto", min_ttl = "1m", max_ttl = "8h", max_rules = 256',
  uplink: '[[uplink]] name = "eth0", kind = "ethernet", priority = 10   (one table per interface; lower priority wins)',
  tracking: '[tracking] targets = ["1.1.1.1:443"], interval = "1s", timeout = "1s", down = 3, up = 5',
  ap: '[ap] enabled = true, interface = "wlan0", ssid = "agent-setup", country = "FR", address = "10.250.250.1/24"',
  "ap.netconnectd_socket": '[ap] netconnectd_socket = "/var/run/netconnectd.sock", netconnectd_socket_mode = "0666"',
  "ap.netconnectd_socket_mode": '[ap] netconnectd_socket_mode = "0660", netconnectd_socket_group = "octoprint"   (octal, as a string)',
  "ap.netconnectd_socket_group": '[ap] netconnectd_socket_mode = "0660", netconnectd_socket_group = "octoprint"   (a group in /etc/group)',
  ownline: '[ownline] listen = "0.0.0.0:9999", known_server = "203.0.113.7", api_key_file = "/etc/agent/ownline.api_key", aes_key_file = "/etc/agent/ownline.aes_key"',
  access: '[[access]] masters = ["tech-*"], onsites = ["site-*"]',
  service: '[[service]] name = "Router web UI", target = "192.168.1.1:80", kind = "http"   (kinds: http, https, ssh, rdp, vnc, tcp; optional description; on a master also device = "site-1")',
  cluster: '[cluster] redis = "redis://:PASSWORD@10.0.0.5:6379" (rediss:// for TLS), mesh = "10.0.0.1:8444", node = "relay-1"   (relay)',
  nymea: '[nymea] tcp = "0.0.0.0:2213", ws = "0.0.0.0:2212", tokens = "/etc/agent/nymea-tokens", inactive_timeout = "8s"',
  tunnel: '[tunnel] secondary = "eth1", dhcp = true, pool = "10.99.0.0/16" (master); enabled = true, bridged = false, lan_bridge = "br-lan" (onsite)',
  session_idle_timeout: 'session_idle_timeout = "1h"   (relay; 1s to 30d)',
  write_stall_timeout: 'write_stall_timeout = "20s"   (relay; 1s to 1h)',
  metrics: 'metrics = "127.0.0.1:9464"   (GET /metrics, Prometheus text format)',
  proxy_protocol: "proxy_protocol = true   (relay behind a load balancer that sends PROXY v2)",
  heartbeat_interval: 'heartbeat_interval = "25s"   (onsite: UDP heartbeat to the relay)',
  heartbeat_port: "heartbeat_port = 443   (relay: UDP port for heartbeats; 0: off; default: the listen port)",
  enroll: '[enroll] address = "relay.example.net:8443", token_file = "/etc/agent/enroll.token", ca = "/etc/agent/fleet-ca.crt" (onsite); listen = "0.0.0.0:8443", enroller = "/etc/agent/relay.enroller" (relay)',
  "(syntax)": 'key = "value" on one line; strings in double quotes, lists as ["a", "b"], [section] headers on their own line',
};

function exampleFor(key: string, origin: Origin): string | undefined {
  if (origin.kind === "flag") return undefined; // `agent --help` shows the flags' forms
  const section = /^(nat|tracking|ap|nymea|ownline|tunnel|enroll|cluster)\./.exec(key)?.[1] ?? /^(uplink|access|service|relay)\[/.exec(key)?.[1];
  return EXAMPLES[key] ?? (section ? EXAMPLES[section] : undefined);
}

export function formatProblem(p: ConfigProblem): string {
  if (p.origin.kind === "flag") return `--${p.key.replaceAll("_", "-")}: ${p.message}`;
  if (p.origin.kind === "file") return `${p.origin.path}: ${p.key}: ${p.message}`;
  return `${p.key}: ${p.message}`;
}

type Schema = Record<string, Check<unknown>>;

const TOP: Schema = {
  role: oneOf(ROLES),
  bundle: nonEmpty("a path to a bundle file"),
  relay: hostPort,
  listen: listenHostPort,
  proxy: proxyUrl,
  revocations: nonEmpty("a path to a revocation list"),
  location: str("a location label (up to 128 characters)", (s) =>
    s.length > 128 || /[\0-\x1f]/.test(s) ? `expected a location label up to 128 characters without control characters, got ${got(s)}` : undefined,
  ),
  hostname: str("a host name", (s) => (/^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$/.test(s) ? undefined : `expected a host name, got ${got(s)}`)),
  gui: guiListen,
  gui_cert: nonEmpty('"bundle" or a path to a PEM file with a certificate and its key'),
  operator: str("a group name", (s) => (/^[a-z_][a-z0-9_-]{0,31}\$?$/i.test(s) ? undefined : `expected a group name, got ${got(s)}`)),
  allow: list(wrap("CIDR[:PORTS]", parseAllowEntry), 'a list of "CIDR[:PORTS]" strings such as ["192.168.1.0/24", "10.0.0.5/32:22,80"]'),
  control: nonEmpty("a path to a unix socket"),
  state_dir: nonEmpty("a directory path"),
  log_level: oneOf(LOG_LEVELS),
  json_logs: bool,
  // fleet operations (issue 14)
  session_idle_timeout: duration(1000, 30 * 86_400_000),
  write_stall_timeout: duration(1000, 3_600_000),
  metrics: listenHostPort,
  proxy_protocol: bool,
  heartbeat_interval: duration(1000, 3_600_000),
  heartbeat_port: int(0, 65535),
};

const NAT: Schema = {
  backend: oneOf(["auto", "iptables", "nft"] as const),
  min_ttl: duration(1000, 7 * 86_400_000),
  max_ttl: duration(1000, 7 * 86_400_000),
  max_rules: int(1, 10_000),
  max_rules_per_session: int(1, 10_000),
  max_rules_per_master: int(1, 10_000),
  allow_any_source: bool,
  keep_on_stop: bool,
};

const UPLINK: Schema = {
  name: ifname,
  kind: oneOf(["ethernet", "wifi", "cellular"] as const),
  priority: int(0, 1000),
  gateway: wrap("an IPv4 address", parseIPv4),
  apn: nonEmpty("an APN name"),
  metered: bool,
  keepalive: duration(1000, 3_600_000),
};

/** Device ids or glob patterns ("site-*") naming who an [[access]] rule covers. */
const idPatterns = list(
  str("a device id or pattern", (s) => (/^[a-z0-9*][a-z0-9._*-]{0,62}$/.test(s) ? undefined : `expected a device id or a pattern with * such as "site-*", got ${got(s)}`)),
  'a list of device ids or patterns such as ["tech-*"]',
);

const ACCESS: Schema = {
  masters: idPatterns,
  onsites: idPatterns,
  nat: bool,
};

const SERVICE: Schema = {
  name: str(`a service name of 1-${SERVICE_LIMITS.name} characters`, (s) =>
    s.trim().length === 0 || s.length > SERVICE_LIMITS.name || /[\0-\x1f]/.test(s) ? `expected a service name of 1-${SERVICE_LIMITS.name} characters without control characters, got ${got(s)}` : undefined,
  ),
  target: wrap("HOST:PORT such as 192.168.1.1:80", (s) => {
    parseHostPort(s, "HOST:PORT such as 192.168.1.1:80");
    return s;
  }),
  kind: oneOf(SERVICE_KINDS),
  description: str(`a description of at most ${SERVICE_LIMITS.description} characters`, (s) =>
    s.length > SERVICE_LIMITS.description || /[\0-\x1f]/.test(s) ? `expected a description of at most ${SERVICE_LIMITS.description} characters without control characters, got ${got(s)}` : undefined,
  ),
  device: str("a device id", (s) => (/^[a-z0-9][a-z0-9._-]{0,62}$/.test(s) ? undefined : `expected a device id such as site-1, got ${got(s)}`)),
};

const TRACKING: Schema = {
  targets: list(hostPort, 'a list of "host:port" strings'),
  interval: duration(100, 600_000),
  timeout: duration(100, 600_000),
  down: int(1, 100),
  up: int(1, 100),
  count: int(1, 10),
};

const AP: Schema = {
  interface: ifname,
  ssid: str("an SSID of 1-32 bytes", (s) => {
    const n = Buffer.byteLength(s);
    return n >= 1 && n <= 32 && !/[\0-\x1f]/.test(s) ? undefined : `expected an SSID of 1-32 bytes without control characters, got ${got(s)}`;
  }),
  passphrase: str("a passphrase of 12-63 printable ASCII characters", (s) =>
    /^[\x20-\x7e]{12,63}$/.test(s) ? undefined : "expected a passphrase of 12-63 printable ASCII characters (value not shown)",
  ),
  security: oneOf(["wpa2", "sae"] as const),
  country: str("a two-letter country code", (s) => (/^[A-Z]{2}$/.test(s) ? undefined : `expected a two-letter country code such as DE, got ${got(s)}`)),
  channel: int(1, 196),
  after: duration(1000, 86_400_000),
  address: wrap("an address with prefix such as 10.250.250.1/24", (s) => {
    const slash = s.indexOf("/");
    if (slash < 0) throw new Error(`expected an address with prefix such as 10.250.250.1/24, got ${JSON.stringify(s)}`);
    const host = parseIPv4(s.slice(0, slash));
    const prefixText = s.slice(slash + 1);
    if (!/^(1[6-9]|2\d|30)$/.test(prefixText)) throw new Error(`expected a prefix length 16-30 for the AP subnet, got ${JSON.stringify(s)}`);
    const prefix = Number(prefixText);
    return { network: (host & maskOf(prefix)) >>> 0, prefix, host };
  }),
  enabled: bool,
  wifi_interface: ifname,
  wpa_ctrl: nonEmpty("a path such as /run/wpa_supplicant/wlan0"),
  hostapd: nonEmpty("a path to the hostapd executable"),
  dnsmasq: nonEmpty("a path to the dnsmasq executable"),
  captive_dns: bool,
  stop_on_uplink: bool,
  retry: duration(10_000, 86_400_000),
  setup_port: int(1, 65535),
  forward: (v) => {
    const items = list(oneOf(AP_FORWARD), 'a list of "lan" and/or "uplinks" such as ["lan"] (empty: AP clients reach nothing past the device)')(v);
    return [...new Set(items)];
  },
  netconnectd_socket: str("an absolute path to a unix socket such as /var/run/netconnectd.sock", (s) =>
    /^\/[^\0\n\r]{0,200}$/.test(s) && !s.endsWith("/") ? undefined : `expected an absolute path to a unix socket such as /var/run/netconnectd.sock, got ${got(s)}`,
  ),
  netconnectd_socket_mode: (v) => {
    // A string: TOML has no 0666 literal, and a bare 666 would be decimal.
    if (typeof v !== "string" || !/^0?[0-7]{3}$/.test(v)) throw new Expected(`expected an octal file mode as a string such as "0666" or "0660", got ${got(v)}`);
    return parseInt(v, 8);
  },
  netconnectd_socket_group: str("a group name", (s) => (/^[a-z_][a-z0-9_-]{0,31}\$?$/i.test(s) || /^\d{1,10}$/.test(s) ? undefined : `expected a group name or number, got ${got(s)}`)),
};

const NYMEA: Schema = {
  tcp: listenHostPort,
  ws: listenHostPort,
  name: nonEmpty("a server name"),
  tokens: nonEmpty("a path to a tokens file"),
  authorizer: wrap("an http:// or https:// URL", (s) => {
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      throw new Error(`expected an http:// or https:// URL such as http://127.0.0.1:8090/check, got ${JSON.stringify(s)}`);
    }
    if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error(`expected an http:// or https:// URL, got ${JSON.stringify(s)}`);
    return u;
  }),
  dummy: bool,
  plain: bool,
  certificate: nonEmpty("a path to a PEM certificate"),
  key: nonEmpty("a path to a PEM private key"),
  monitor: nonEmpty("a path to a unix socket"),
  inactive_timeout: duration(100, 3_600_000),
  alone_timeout: duration(100, 3_600_000),
  authentication_timeout: duration(100, 3_600_000),
  jsonrpc_timeout: duration(100, 3_600_000),
};

const ENROLL: Schema = {
  address: hostPort,
  token: str("the fleet enrollment token", (s) => (s.length >= 8 && s.length <= 256 && !/\s/.test(s) ? undefined : "expected the enrollment token from `agent enroll token add` (8-256 characters, no spaces)")),
  token_file: nonEmpty("a path to the file holding the enrollment token"),
  ca: nonEmpty("a path to the fleet CA certificate (PEM)"),
  id_prefix: str("an id prefix", (s) => (/^[a-z0-9][a-z0-9._-]{0,39}$/.test(s) ? undefined : `expected 1-40 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, got ${got(s)}`)),
  listen: listenHostPort,
  enroller: nonEmpty("a path to the enroller file from `agent pki issue-enroller`"),
  days: int(1, 3650),
};

/** [nymea] before any key is set: upstream's name and timeouts. */
export function nymeaDefaults(): NymeaConfig {
  return { name: "nymea-remoteproxy", dummy: false, plain: false, inactive_timeout: 8_000, alone_timeout: 8_000, authentication_timeout: 8_000, jsonrpc_timeout: 10_000 };
}
const OWNLINE: Schema = {
  listen: listenHostPort,
  known_server: wrap("the known server's IPv4 address such as 203.0.113.7", parseIPv4),
  api_key_file: nonEmpty("a path to the file holding ownline's api_key"),
  aes_key_file: nonEmpty("a path to the file holding ownline's aes_key"),
  cert_file: nonEmpty("a path to a PEM certificate"),
  key_file: nonEmpty("a path to a PEM private key"),
  read_timeout: duration(100, 60_000),
};
/** What an [ownline] section cannot go without. */
const OWNLINE_REQUIRED = ["listen", "known_server", "api_key_file", "aes_key_file"] as const;

const TUNNEL: Schema = {
  secondary: ifname,
  dhcp: bool,
  pool: wrap("an IPv4 network such as 10.99.0.0/16 (a /30 per tunnel)", (s) => {
    const c = parseCidr(s);
    if (c.prefix > 30) throw new Error(`expected a network of /30 or larger (each tunnel takes a /30), got ${JSON.stringify(s)}`);
    if (c.prefix < 8) throw new Error(`expected a network of /8 or smaller, got ${JSON.stringify(s)}`);
    return c;
  }),
  enabled: bool,
  bridged: bool,
  lan_bridge: ifname,
};

export function defaults(): Config {
  return {
    allow: PRIVATE_RANGES.map(parseAllowEntry),
    control: DEFAULT_CONTROL,
    state_dir: DEFAULT_STATE_DIR,
    log_level: "info",
    json_logs: false,
    nat: { backend: "auto", min_ttl: 1000, max_ttl: 8 * 3_600_000, max_rules: 256, max_rules_per_session: 8, max_rules_per_master: 16, allow_any_source: false, keep_on_stop: false },
    uplink: [],
    access: [],
    service: [],
    tunnel: { secondary: "eth1", dhcp: true, pool: parseCidr("10.99.0.0/16"), enabled: false, bridged: false, lan_bridge: "br-lan" },
    session_idle_timeout: DEFAULT_SESSION_IDLE_TIMEOUT,
    write_stall_timeout: Timing.writeStallTimeout,
    proxy_protocol: false,
    // Failover within ~4 s of a black hole (3 failed 1 s rounds), at once on link loss. Three
    // staggered connects per round keep a 10%-lossy link from failing 3 rounds in a row
    // (about once a month instead of every few minutes). See src/uplink/README.md.
    tracking: { targets: [], interval: 1000, timeout: 1000, down: 3, up: 5, count: 3 },
    ap: {
      interface: "wlan0",
      ssid: "agent-setup",
      security: "wpa2",
      country: "US",
      channel: 6,
      after: 60_000,
      address: { ...parseCidr("10.250.250.0/24"), host: parseIPv4("10.250.250.1") },
      enabled: false,
      hostapd: "hostapd",
      dnsmasq: "dnsmasq",
      captive_dns: true,
      stop_on_uplink: true,
      retry: 300_000,
      setup_port: 80,
      forward: [],
      netconnectd_socket_mode: 0o666,
    },
  };
}

/** Raw values from one source, keyed like the TOML file (top-level keys and sections). */
export type RawConfig = Record<string, unknown>;

export interface ConfigSource {
  origin: Origin;
  raw: RawConfig;
  /** Said at start (e.g. the keys of a nymea-remoteproxy.conf that have no equivalent here). */
  warnings?: string[];
}

function isTable(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Date);
}

/**
 * Builds the effective configuration from sources, lowest precedence first. Throws a
 * ConfigError listing every problem; returns only a complete, consistent Config.
 */
export function resolveConfig(sources: ConfigSource[]): Config {
  const cfg = defaults() as unknown as Record<string, unknown>;
  const problems: ConfigProblem[] = [];
  const originOf = new Map<string, Origin>();

  const applyTable = (schema: Schema, raw: Record<string, unknown>, target: Record<string, unknown>, prefix: string, origin: Origin) => {
    for (const [k, v] of Object.entries(raw)) {
      const key = prefix + k;
      const check = schema[k];
      if (!check) {
        problems.push({ origin, key, message: `unknown key; expected one of ${Object.keys(schema).join(", ")}` });
        continue;
      }
      try {
        target[k] = check(v);
        originOf.set(key, origin);
      } catch (e) {
        problems.push({ origin, key, message: (e as Error).message });
      }
    }
  };

  const sections: Record<string, Schema> = { nat: NAT, tracking: TRACKING, ap: AP, tunnel: TUNNEL };
  for (const { origin, raw } of sources) {
    for (const [k, v] of Object.entries(raw)) {
      if (k in sections) {
        if (!isTable(v)) {
          problems.push({ origin, key: k, message: `expected a table ([${k}]), got ${got(v)}` });
          continue;
        }
        applyTable(sections[k]!, v, cfg[k] as Record<string, unknown>, `${k}.`, origin);
      } else if (k === "uplink") {
        if (!Array.isArray(v) || !v.every(isTable)) {
          problems.push({ origin, key: k, message: `expected an array of tables ([[uplink]]), got ${got(v)}` });
          continue;
        }
        const uplinks: UplinkConfig[] = [];
        v.forEach((t, i) => {
          const u: Record<string, unknown> = {};
          const before = problems.length;
          applyTable(UPLINK, t, u, `uplink[${i}].`, origin);
          for (const req of ["name", "kind", "priority"]) {
            if (!(req in t)) problems.push({ origin, key: `uplink[${i}].${req}`, message: "missing; every [[uplink]] needs name, kind and priority" });
          }
          if (problems.length === before) {
            u.metered ??= u.kind === "cellular";
            uplinks.push(u as unknown as UplinkConfig);
          }
        });
        cfg.uplink = uplinks;
        originOf.set("uplink", origin);
      } else if (k === "cluster") {
        if (!isTable(v)) {
          problems.push({ origin, key: k, message: `expected a table ([cluster]), got ${got(v)}` });
          continue;
        }
        const before = problems.length;
        const o: Record<string, unknown> = { ...(cfg.cluster as Record<string, unknown> | undefined) };
        applyTable(CLUSTER, v, o, "cluster.", origin);
        for (const req of ["redis", "mesh"]) if (!(req in o)) problems.push({ origin, key: `cluster.${req}`, message: 'missing; [cluster] needs redis = "redis://HOST:PORT" and mesh = "HOST:PORT"' });
        if (o.redis_ca !== undefined && o.redis instanceof URL && o.redis.protocol !== "rediss:") problems.push({ origin, key: "cluster.redis_ca", message: "is for Redis over TLS: use a rediss:// URL, or remove redis_ca" });
        if (problems.length === before) cfg.cluster = o;
        originOf.set("cluster", origin);
      } else if (k === "relay" && Array.isArray(v)) {
        // Several relays (issue 16): the device tries them in a shuffled order.
        if (v.length === 0 || v.length > 16) {
          problems.push({ origin, key: k, message: `expected 1 to 16 relays such as ["r1.example.net:443", "r2.example.net:443"], got ${v.length}` });
          continue;
        }
        const all: unknown[] = [];
        v.forEach((x, i) => {
          try {
            all.push(hostPort(x));
          } catch (e) {
            problems.push({ origin, key: `relay[${i}]`, message: (e as Error).message });
          }
        });
        if (all.length === v.length) {
          cfg.relay = all[0];
          cfg.relays = all;
          originOf.set("relay", origin);
        }
      } else if (k === "nymea") {
        if (!isTable(v)) {
          problems.push({ origin, key: k, message: `expected a table ([nymea]), got ${got(v)}` });
          continue;
        }
        cfg.nymea ??= nymeaDefaults();
        applyTable(NYMEA, v, cfg.nymea as Record<string, unknown>, "nymea.", origin);
        originOf.set("nymea", origin);
      } else if (k === "ownline") {
        if (!isTable(v)) {
          problems.push({ origin, key: k, message: `expected a table ([ownline]), got ${got(v)}` });
          continue;
        }
        const before = problems.length;
        const o: Record<string, unknown> = { read_timeout: 5000, ...(cfg.ownline as Record<string, unknown> | undefined) };
        applyTable(OWNLINE, v, o, "ownline.", origin);
        for (const req of OWNLINE_REQUIRED) {
          if (!(req in o)) problems.push({ origin, key: `ownline.${req}`, message: "missing; [ownline] needs listen, known_server, api_key_file and aes_key_file" });
        }
        if (("cert_file" in o) !== ("key_file" in o)) {
          problems.push({ origin, key: "cert_file" in o ? "ownline.key_file" : "ownline.cert_file", message: "missing; cert_file and key_file go together (neither: the device's bundle)" });
        }
        if (problems.length === before) cfg.ownline = o;
      } else if (k === "enroll") {
        if (!isTable(v)) {
          problems.push({ origin, key: k, message: `expected a table ([enroll]), got ${got(v)}` });
          continue;
        }
        const e: Record<string, unknown> = { id_prefix: "onsite-", days: 825, ...(cfg.enroll as Record<string, unknown> | undefined) };
        applyTable(ENROLL, v, e, "enroll.", origin);
        if ("token" in e && "token_file" in e) problems.push({ origin, key: "enroll.token_file", message: "set token or token_file, not both" });
        cfg.enroll = e;
      } else if (k === "access") {
        if (!Array.isArray(v) || !v.every(isTable)) {
          problems.push({ origin, key: k, message: `expected an array of tables ([[access]] with masters and onsites), got ${got(v)}` });
          continue;
        }
        const rules: AccessRule[] = [];
        v.forEach((t, i) => {
          const r: Record<string, unknown> = {};
          const before = problems.length;
          applyTable(ACCESS, t, r, `access[${i}].`, origin);
          for (const req of ["masters", "onsites"]) {
            if (!(req in t)) problems.push({ origin, key: `access[${i}].${req}`, message: 'missing; every [[access]] needs masters and onsites, e.g. masters = ["tech-*"], onsites = ["site-*"]' });
          }
          if (problems.length === before) rules.push(r as unknown as AccessRule);
        });
        cfg.access = rules;
      } else if (k === "service") {
        if (!Array.isArray(v) || !v.every(isTable)) {
          problems.push({ origin, key: k, message: `expected an array of tables ([[service]] with name, target and kind), got ${got(v)}` });
          continue;
        }
        const services: ServiceConfig[] = [];
        v.forEach((t, i) => {
          const r: Record<string, unknown> = {};
          const before = problems.length;
          applyTable(SERVICE, t, r, `service[${i}].`, origin);
          for (const req of ["name", "target", "kind"]) {
            if (!(req in t)) problems.push({ origin, key: `service[${i}].${req}`, message: 'missing; every [[service]] needs name, target and kind, e.g. name = "Router web UI", target = "192.168.1.1:80", kind = "http"' });
          }
          if (problems.length === before) services.push(r as unknown as ServiceConfig);
        });
        if (services.length > SERVICE_LIMITS.count) problems.push({ origin, key: "service", message: `${services.length} services; at most ${SERVICE_LIMITS.count} are advertised` });
        cfg.service = services;
        originOf.set("service", origin);
      } else {
        applyTable(TOP, { [k]: v }, cfg, "", origin);
        if (k === "relay") cfg.relays = cfg.relay === undefined ? undefined : [cfg.relay];
      }
    }
  }

  const c = cfg as unknown as Config;
  const at = (key: string): Origin => originOf.get(key) ?? { kind: "default" };
  if (c.nat.min_ttl > c.nat.max_ttl) {
    problems.push({ origin: at("nat.max_ttl"), key: "nat.max_ttl", message: "must not be shorter than nat.min_ttl" });
  }
  if (c.tracking.timeout > c.tracking.interval * 10) {
    problems.push({ origin: at("tracking.timeout"), key: "tracking.timeout", message: "must be at most ten times tracking.interval" });
  }
  const seen = new Set<string>();
  c.uplink.forEach((u, i) => {
    if (seen.has(u.name)) problems.push({ origin: at("uplink"), key: `uplink[${i}].name`, message: `uplink ${JSON.stringify(u.name)} is listed twice` });
    seen.add(u.name);
  });
  if (c.nymea) for (const p of nymeaProblems(c.nymea)) problems.push({ origin: at(p.key.startsWith("nymea.") && originOf.has(p.key) ? p.key : "nymea"), ...p });
  if (c.ap.netconnectd_socket !== undefined && c.ap.netconnectd_socket === c.control) {
    problems.push({ origin: at("ap.netconnectd_socket"), key: "ap.netconnectd_socket", message: `must differ from control (${c.control}): the control socket serves every command, the netconnectd socket only netconnectd's` });
  }
  for (const p of serviceProblems(c.service, c.role)) problems.push({ origin: at("service"), ...p });
  if (problems.length > 0) throw new ConfigError(problems);
  return c;
}

/**
 * What is wrong with a list of [[service]] as a whole (pure): a name twice for one device; on
 * an onsite device a `device` key (its services are its own), on a master a missing one.
 */
export function serviceProblems(services: readonly ServiceConfig[], role: Role | undefined): { key: string; message: string }[] {
  const out: { key: string; message: string }[] = [];
  const seen = new Set<string>();
  services.forEach((sv, i) => {
    if (role === "onsite" && sv.device !== undefined) out.push({ key: `service[${i}].device`, message: "an onsite device advertises its own services; device is for a master's [[service]] entries" });
    if (role === "master" && sv.device === undefined) out.push({ key: `service[${i}].device`, message: 'missing; a master\'s [[service]] names the onsite device it is behind, e.g. device = "site-1"' });
    const key = `${sv.device ?? ""}\0${sv.name}`;
    if (seen.has(key)) out.push({ key: `service[${i}].name`, message: `service ${JSON.stringify(sv.name)} is listed twice${sv.device ? ` for ${sv.device}` : ""}` });
    seen.add(key);
  });
  return out;
}

/** Parses TOML text; syntax errors become a ConfigError naming the file. */
export function parseToml(text: string, path: string): RawConfig {
  let raw: unknown;
  try {
    raw = Bun.TOML.parse(text);
  } catch (e) {
    const why = (e as Error).message.replace(/^TOML Parse error: /, "");
    const at = tomlErrorLocation(text, why);
    const where = at ? ` at line ${at.line}, column ${at.column}` : "";
    const shown = at ? `\n    ${at.text}\n    ${" ".repeat(at.column - 1)}^` : "";
    throw new ConfigError([{ origin: { kind: "file", path }, key: "(syntax)", message: `not valid TOML${where}: ${why}${shown}` }]);
  }
  if (!isTable(raw)) throw new ConfigError([{ origin: { kind: "file", path }, key: "(file)", message: "expected a TOML table" }]);
  return raw;
}

/**
 * Where a TOML syntax error is: Bun's parser names no position (its error's line/column are
 * those of the JavaScript caller), so the line is the first one after the longest prefix of
 * whole lines that parses (an error never heals: a later line cannot make it valid), and
 * the column is that of the token the message names ("found 'x'", "key 'a'", an unterminated
 * quote), else the line's first non-blank character. 1-based; undefined for an empty text.
 */
export function tomlErrorLocation(text: string, message: string): { line: number; column: number; text: string } | undefined {
  const lines = text.split("\n");
  const parses = (n: number) => {
    try {
      Bun.TOML.parse(lines.slice(0, n).join("\n"));
      return true;
    } catch {
      return false;
    }
  };
  let good = 0;
  for (let n = 1; n <= lines.length; n++) if (parses(n)) good = n;
  if (good >= lines.length) return undefined;
  let idx = good;
  // A blank or comment line "after" the last good prefix cannot hold the error: the next real one does.
  while (idx < lines.length - 1 && /^\s*(#.*)?$/.test(lines[idx]!)) idx++;
  const raw = lines[idx]!.replace(/\r$/, "");
  // The line is quoted back; a secret on it (an AP passphrase, a Wi-Fi key) is not.
  const line = /passphrase|psk|password|secret|key\s*=/i.test(raw) ? raw.replace(/=.*$/, "= …") : raw;
  return { line: idx + 1, column: Math.min(errorColumn(raw, message), line.length + 1), text: line };
}

function errorColumn(line: string, message: string): number {
  const first = Math.max(0, line.search(/\S/));
  const quoted = /(?:found|key) '([^']+)'/.exec(message)?.[1];
  if (quoted) {
    const i = line.indexOf(quoted, message.includes("found") ? first + 1 : first);
    if (i >= 0) return i + 1;
  }
  if (/unterminated string/i.test(message)) {
    const i = line.search(/["']/);
    if (i >= 0) return i + 1;
  }
  if (/after '='/.test(message)) {
    const i = line.indexOf("=");
    if (i >= 0) return i + 2;
  }
  if (/found \(0x0A\)|end of (line|input)/i.test(message)) return line.replace(/\s+$/, "").length + 1;
  return first + 1;
}

/** Reads a config file. A missing default file is no error; a missing named file is. */
export async function loadConfigFile(path: string, explicit: boolean): Promise<ConfigSource | undefined> {
  const file = Bun.file(path);
  if (!(await file.exists())) {
    if (!explicit) return undefined;
    throw new UsageError(`config file ${path} does not exist`, "check the --config path, or leave --config out to use defaults");
  }
  let text: string;
  try {
    text = await file.text();
  } catch (e) {
    throw new UsageError(`cannot read config file ${path}: ${(e as Error).message}`, "check the file's permissions", { cause: e });
  }
  const raw = parseToml(text, path);
  const problem = secretFileProblem(path, (await stat(path)).mode, secretsIn(raw));
  if (problem) throw new UsageError(`config file ${problem.message}`, problem.hint);
  return { origin: { kind: "file", path }, raw };
}

// ---------------------------------------------------------------- secrets in config files

/** The secrets a raw config holds, named as people know them ([ap] passphrase, proxy credentials). Pure. */
export function secretsIn(raw: RawConfig): string[] {
  const out: string[] = [];
  const ap = (raw as Record<string, unknown>).ap;
  if (ap && typeof ap === "object" && typeof (ap as Record<string, unknown>).passphrase === "string") out.push("[ap] passphrase");
  const proxy = (raw as Record<string, unknown>).proxy;
  if (typeof proxy === "string" && proxyHasCredentials(proxy)) out.push("the proxy's credentials (proxy = \"http://user:pass@…\")");
  const enroll = (raw as Record<string, unknown>).enroll;
  if (enroll && typeof enroll === "object" && typeof (enroll as Record<string, unknown>).token === "string") out.push("[enroll] token");
  return out;
}

function proxyHasCredentials(text: string): boolean {
  try {
    const u = new URL(text);
    return u.username !== "" || u.password !== "";
  } catch {
    return /\/\/[^/@]*@/.test(text); // not a URL the schema takes either; still do not spread it
  }
}

/**
 * A file that holds a secret must be readable by its owner only: the refusal with the exact
 * fix, or undefined. `mode` is the file's st_mode. Pure. Also used for --psk-file/--proxy-file.
 */
export function secretFileProblem(path: string, mode: number, secrets: readonly string[]): { message: string; hint: string } | undefined {
  if (secrets.length === 0 || (mode & 0o044) === 0) return undefined;
  const who = (mode & 0o040 ? ["group"] : []).concat(mode & 0o004 ? ["others"] : []).join(" and ");
  return {
    message: `${path} holds ${secrets.join(" and ")} and is readable by ${who} (mode ${(mode & 0o777).toString(8).padStart(4, "0")}): refused`,
    hint: `chmod 600 ${path}`,
  };
}

/** Which roles use a key; absent: every role. */
const ROLE_KEYS: Record<string, { roles: readonly Role[]; why: string; shown: string }> = {
  allow: { roles: ["onsite"], why: "only an onsite device serves LAN targets", shown: "allow" },
  nat: { roles: ["onsite"], why: "only an onsite device installs NAT rules", shown: "[nat]" },
  uplink: { roles: ["onsite"], why: "only an onsite device manages uplinks", shown: "[[uplink]]" },
  tracking: { roles: ["onsite"], why: "only an onsite device probes uplinks", shown: "[tracking]" },
  ap: { roles: ["onsite"], why: "only an onsite device runs the setup access point", shown: "[ap]" },
  ownline: { roles: ["onsite"], why: "only an onsite device serves ownline's requests", shown: "[ownline]" },
  location: { roles: ["onsite"], why: "only an onsite device reports a location", shown: "location" },
  hostname: { roles: ["onsite"], why: "only an onsite device reports a host name", shown: "hostname" },
  listen: { roles: ["relay"], why: "only the relay listens; devices dial `relay`", shown: "listen" },
  revocations: { roles: ["relay"], why: "only the relay checks certificates against a revocation list", shown: "revocations" },
  access: { roles: ["relay"], why: "only the relay enforces [[access]] rules", shown: "[[access]]" },
  service: { roles: ["onsite", "master"], why: "services are advertised by onsite devices and listed by masters", shown: "[[service]]" },
  nymea: { roles: ["relay"], why: "only the relay speaks nymea-remoteproxy's protocol", shown: "[nymea]" },
  gui: { roles: ["master", "relay"], why: "only a master and a relay serve the GUI", shown: "gui" },
  gui_cert: { roles: ["master", "relay"], why: "only a master and a relay serve the GUI", shown: "gui_cert" },
  cluster: { roles: ["relay"], why: "only relays form a cluster (devices list several relays with relay = [...])", shown: "[cluster]" },
  tunnel: { roles: ["onsite", "master"], why: "packet tunnels run between a master and an onsite device; the relay only routes them", shown: "[tunnel]" },
  heartbeat_interval: { roles: ["onsite"], why: "only an onsite device sends heartbeats", shown: "heartbeat_interval" },
  heartbeat_port: { roles: ["relay"], why: "only the relay receives heartbeats", shown: "heartbeat_port" },
  relay: { roles: ["onsite", "master"], why: "the relay dials no relay; it listens on `listen`", shown: "relay" },
  proxy: { roles: ["onsite", "master"], why: "the relay dials nothing; only onsite devices and masters go through a proxy", shown: "proxy" },
  session_idle_timeout: { roles: ["relay"], why: "only the relay holds sessions between masters and devices", shown: "session_idle_timeout" },
  write_stall_timeout: { roles: ["relay"], why: "it is the relay's limit on peers that stop reading", shown: "write_stall_timeout" },
  proxy_protocol: { roles: ["relay"], why: "only the relay accepts connections from a load balancer", shown: "proxy_protocol" },
  enroll: { roles: ["onsite", "relay"], why: "a master is issued its bundle with `agent pki issue`; only onsite devices enroll", shown: "[enroll]" },
};

const A_ROLE: Record<Role, string> = { relay: "a relay", onsite: "an onsite device", master: "a master" };

/**
 * Warnings for what the file or the flags set that `role` does not use ("allow has no effect
 * on a master: only an onsite device serves LAN targets"), each naming where it was set.
 * Pure; the daemon logs them at start. Defaults never warn.
 */
export function ignoredForRole(sources: readonly ConfigSource[], role: Role): string[] {
  const out: string[] = [];
  for (const { origin, raw } of sources) {
    if (origin.kind === "default") continue;
    for (const k of Object.keys(raw)) {
      const r = ROLE_KEYS[k];
      if (!r || r.roles.includes(role)) continue;
      const name = origin.kind === "flag" ? `--${k.replaceAll("_", "-")}` : r.shown;
      const where = origin.kind === "file" ? `${origin.path}: ` : "";
      out.push(`${where}${name} has no effect on ${A_ROLE[role]}: ${r.why}`);
    }
  }
  return out;
}

/** What each role cannot start without. */
export function requireForRole(cfg: Config, role: Role): void {
  const missing: ConfigProblem[] = [];
  const need = (key: keyof Config, why: string) => {
    if (cfg[key] === undefined) missing.push({ origin: { kind: "flag" }, key, message: `required for --role ${role} (${why}); pass --${key} or set ${key} in the config file` });
  };
  // An onsite device with [enroll] gets its bundle by enrolling (src/roles/enroll.ts).
  if (!(role === "onsite" && cfg.enroll)) need("bundle", "the device's certificate bundle from `agent pki issue`");
  const e = cfg.enroll;
  const needEnroll = (key: keyof EnrollConfig, why: string) => {
    if (e && e[key] === undefined) missing.push({ origin: { kind: "default" }, key: `enroll.${key}`, message: `required in [enroll] for --role ${role} (${why})` });
  };
  if (e && role === "onsite") {
    needEnroll("address", 'the relay\'s enrollment endpoint, e.g. address = "relay.example.net:8443"');
    needEnroll("ca", "the fleet CA certificate the relay's certificate is checked against");
    if (e.token === undefined && e.token_file === undefined) missing.push({ origin: { kind: "default" }, key: "enroll.token", message: "required in [enroll] for --role onsite: token = \"…\" or token_file = \"FILE\" (from `agent enroll token add` on the relay)" });
  }
  if (e && role === "relay") {
    needEnroll("listen", 'where devices enroll, e.g. listen = "0.0.0.0:8443"');
    needEnroll("enroller", "the enroller file from `agent pki issue-enroller` on the CA host");
  }
  if (role === "relay") need("listen", "the address the relay accepts devices on");
  else need("relay", "the relay to dial, HOST:PORT");
  if (missing.length > 0) throw new ConfigError(missing);
}
