// `agent doctor`: what each role needs on this host, and how to fix what is missing.
//
// Two halves, kept apart so the decisions are table-tested without touching the host:
//   - gatherFacts(opts): the thin adapter. Looks tools up on PATH (plus the sbin dirs, which
//     a non-root PATH often lacks), opens /dev/net/tun, runs `iptables -V` with an argument
//     array (never a shell), reads CapEff from /proc/self/status and net.ipv4.ip_forward,
//     checks the state dir with access(2) (never creating it: doctor changes nothing), and
//     reads the OS release files. gatherConfigFacts(cfg) adds what a config names: the
//     bundle, a TCP connect to the relay, whether the listen address binds, the revocation
//     list, the interfaces.
//   - evaluate(facts, role, opts): pure. Turns facts into one row per check with a status
//     and a fix worded for the OS (apt-get on Debian / Raspberry Pi OS, opkg on OpenWRT).
//
// Status meanings: "ok"; "missing" — a required check failed, the role cannot work;
// "optional-missing" — a feature (AP fallback, Wi-Fi client, cellular...) is unavailable,
// the role still works; "warn" — could not decide or works with a caveat. Only "missing"
// makes the report fail.
import { accessSync, closeSync, constants as fsConstants, existsSync, openSync, readFileSync, statSync } from "node:fs";
import { release } from "node:os";
import { dirname } from "node:path";
import { DEFAULT_STATE_DIR, ROLES, type Role } from "./config.ts";
import type { ConfigFacts } from "./doctor-config.ts";
import { formatMode } from "./pki.ts";
import { realExecSync, type ExecSync } from "./os/spawn.ts";
import { formatTable } from "./table.ts";
import { natTimeRow, probeNatTime, type NatTimeFact } from "./doctor-nat-time.ts";

export { gatherConfigFacts, RELAY_CONNECT_TIMEOUT_MS, type BundleFacts, type ConfigFacts, type ConfigGatherOptions } from "./doctor-config.ts";

// ---------------------------------------------------------------------------------------
// Facts

export const TOOLS = [
  "ip",
  "iptables",
  "iptables-restore",
  "nft",
  "hostapd",
  "dnsmasq",
  "wpa_supplicant",
  "wpa_cli",
  "mmcli",
  "conntrack",
  "ubus",
] as const;
export type Tool = (typeof TOOLS)[number];

/** Searched after PATH: system tools live here and a non-root PATH often lacks them. */
export const SBIN_DIRS = ["/sbin", "/usr/sbin", "/usr/local/sbin"] as const;

export const TUN_PATH = "/dev/net/tun";

// Capability bit numbers from <linux/capability.h>.
export const CAP_NET_BIND_SERVICE = 10;
export const CAP_NET_ADMIN = 12;
export const CAP_NET_RAW = 13;

export type OsFamily = "debian" | "openwrt" | "other";
export type IptablesBackend = "nf_tables" | "legacy" | "unknown";
export type NatBackend = "iptables" | "nft";

export interface Capabilities {
  /** CapEff as read from /proc/self/status, hex. */
  hex: string;
  netAdmin: boolean;
  netRaw: boolean;
  netBindService: boolean;
}

export interface HostFacts {
  os: { family: OsFamily; name: string };
  kernel: string;
  /** Effective uid; -1 when the platform has none. */
  uid: number;
  /** Undefined when /proc/self/status has no readable CapEff (not Linux, or /proc hidden). */
  caps: Capabilities | undefined;
  /** Path of each tool, or null when not found. */
  tools: Record<Tool, string | null>;
  /** Only set when iptables was found. */
  iptablesBackend: IptablesBackend | undefined;
  tun: { path: string; exists: boolean; openable: boolean; error?: string };
  /** `created` is always false: doctor creates nothing. `exists` false: the daemon would
   * create it, and `writable` says whether it could (its nearest existing parent is writable). */
  stateDir: { path: string; writable: boolean; created: boolean; exists?: boolean; error?: string };
  /** /proc/sys/net/ipv4/ip_forward ("1" forwards); absent when not gathered. */
  ipForward?: { value: string | null; error?: string };
  /** What the config file names, checked; absent when doctor ran without one. */
  config?: ConfigFacts;
  /** Whether the auto-picked NAT backend can match on time (doctor-nat-time.ts); absent when there is none. */
  natTime?: NatTimeFact;
}

/** Parses a CapEff/CapPrm hex field ("000001ffffffffff") into a bit mask. */
export function parseCapMask(hex: string): bigint {
  const t = hex.trim();
  if (!/^[0-9a-fA-F]{1,32}$/.test(t)) throw new Error(`expected a hexadecimal capability mask, got ${JSON.stringify(hex)}`);
  return BigInt("0x" + t);
}

export function hasCap(mask: bigint, cap: number): boolean {
  return ((mask >> BigInt(cap)) & 1n) === 1n;
}

export function capabilitiesFromHex(hex: string): Capabilities {
  const mask = parseCapMask(hex);
  return {
    hex: hex.trim(),
    netAdmin: hasCap(mask, CAP_NET_ADMIN),
    netRaw: hasCap(mask, CAP_NET_RAW),
    netBindService: hasCap(mask, CAP_NET_BIND_SERVICE),
  };
}

/** The CapEff line of /proc/self/status, parsed; undefined when absent or malformed. */
export function capabilitiesFromProcStatus(text: string): Capabilities | undefined {
  const m = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(text);
  if (!m) return undefined;
  try {
    return capabilitiesFromHex(m[1]!);
  } catch {
    return undefined;
  }
}

/** `iptables -V` prints e.g. "iptables v1.8.9 (nf_tables)" or "iptables v1.8.7 (legacy)". */
export function parseIptablesVersion(text: string): IptablesBackend {
  if (/\(nf_tables\)/.test(text)) return "nf_tables";
  if (/\(legacy\)/.test(text)) return "legacy";
  return "unknown";
}

function releaseFields(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) continue;
    out[m[1]!] = m[2]!.trim().replace(/^(["'])(.*)\1$/, "$2");
  }
  return out;
}

/**
 * The OS from /etc/openwrt_release (preferred when present) or /etc/os-release. Debian,
 * Raspberry Pi OS (ID=raspbian, or ID=debian on the 64-bit images) and other Debian
 * derivatives are "debian": they share apt-get and package names.
 */
export function detectOs(osRelease: string | undefined, openwrtRelease: string | undefined): HostFacts["os"] {
  if (openwrtRelease !== undefined) {
    const f = releaseFields(openwrtRelease);
    return { family: "openwrt", name: f.DISTRIB_DESCRIPTION || f.DISTRIB_ID || "OpenWrt" };
  }
  if (osRelease === undefined) return { family: "other", name: "unknown" };
  const f = releaseFields(osRelease);
  const id = (f.ID ?? "").toLowerCase();
  const like = (f.ID_LIKE ?? "").toLowerCase().split(/\s+/);
  const name = f.PRETTY_NAME || f.NAME || id || "unknown";
  if (id === "openwrt") return { family: "openwrt", name };
  if (id === "debian" || id === "raspbian" || like.includes("debian")) return { family: "debian", name };
  return { family: "other", name };
}

export interface GatherOptions {
  /** State dir to check; default DEFAULT_STATE_DIR. Never created. */
  stateDir?: string;
  /** PATH to search before SBIN_DIRS; default process.env.PATH. */
  PATH?: string;
  /** Runs `iptables -V`; default the real synchronous runner. */
  execSync?: ExecSync;
  /** /proc/sys by default (tests point it elsewhere). */
  procSys?: string;
}

/** `iptables -V` answers at once; a hung one must not hang `agent doctor`. */
export const IPTABLES_VERSION_TIMEOUT_MS = 5000;

function errCode(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === "string" ? code : e instanceof Error ? e.message : String(e);
}

function readOptional(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/** Reads the host. Changes nothing (the state dir is checked with access(2), never created). */
export function gatherFacts(opts: GatherOptions = {}): HostFacts {
  const searchPath = [...(opts.PATH ?? process.env.PATH ?? "").split(":").filter(Boolean), ...SBIN_DIRS];
  const PATH = [...new Set(searchPath)].join(":");
  const tools = Object.fromEntries(TOOLS.map((t) => [t, Bun.which(t, { PATH }) ?? null])) as Record<Tool, string | null>;

  let iptablesBackend: IptablesBackend | undefined;
  if (tools.iptables) {
    // A program that cannot be started answers code 127 with no version text: "unknown".
    const r = (opts.execSync ?? realExecSync)([tools.iptables, "-V"], { timeoutMs: IPTABLES_VERSION_TIMEOUT_MS });
    iptablesBackend = parseIptablesVersion(r.stdout + r.stderr);
  }

  const tun: HostFacts["tun"] = { path: TUN_PATH, exists: existsSync(TUN_PATH), openable: false };
  try {
    closeSync(openSync(TUN_PATH, "r+"));
    tun.openable = true;
  } catch (e) {
    tun.error = errCode(e);
  }

  const status = readOptional("/proc/self/status");
  const caps = status === undefined ? undefined : capabilitiesFromProcStatus(status);
  const nat = autoNatBackend({ tools, iptablesBackend });
  const natTime = nat ? probeNatTime(nat, (nat === "nft" ? tools.nft : tools["iptables-restore"])!, opts.execSync ?? realExecSync) : undefined;

  return {
    os: detectOs(readOptional("/etc/os-release"), readOptional("/etc/openwrt_release")),
    kernel: release(),
    uid: typeof process.geteuid === "function" ? process.geteuid() : -1,
    caps,
    tools,
    iptablesBackend,
    tun,
    stateDir: probeStateDir(opts.stateDir ?? DEFAULT_STATE_DIR),
    ipForward: readIpForward(opts.procSys ?? "/proc/sys"),
    natTime,
  };
}

function readIpForward(procSys: string): HostFacts["ipForward"] {
  try {
    return { value: readFileSync(`${procSys}/net/ipv4/ip_forward`, "utf8").trim() };
  } catch (e) {
    return { value: null, error: errCode(e) };
  }
}

/** Whether the daemon could use the state dir, by access(2): nothing is created or written. */
function probeStateDir(path: string): HostFacts["stateDir"] {
  const out: HostFacts["stateDir"] = { path, writable: false, created: false, exists: existsSync(path) };
  try {
    // A missing dir: the daemon creates it (mkdir -p), so its nearest existing parent decides.
    let at = path;
    while (!existsSync(at) && dirname(at) !== at) at = dirname(at);
    if (!statSync(at).isDirectory()) throw Object.assign(new Error("not a directory"), { code: "ENOTDIR" });
    accessSync(at, fsConstants.W_OK | fsConstants.X_OK);
    out.writable = true;
  } catch (e) {
    out.error = errCode(e);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Decisions

export type CheckStatus = "ok" | "missing" | "optional-missing" | "warn";
export type DoctorRole = Role | "all";

export interface CheckRow {
  /** Stable id: state-dir, cap-net-bind-service, tun, ip, cap-net-admin, nat, nat-time, ip-forward, config, bundle, relay, listen, revocations, interfaces, conntrack, hostapd, dnsmasq, wifi-client, cellular. */
  check: string;
  /** Roles that use it (restricted to the chosen role when one is given). */
  roles: Role[];
  /** A required check that is not ok makes the role unusable; optional ones never fail. */
  required: boolean;
  status: CheckStatus;
  detail: string;
  /** Empty when status is ok. */
  fix: string;
}

export interface HostSummary {
  os: string;
  os_family: OsFamily;
  kernel: string;
  uid: number;
  cap_eff: string | null;
  capabilities: { net_admin: boolean; net_raw: boolean; net_bind_service: boolean } | null;
  tools: Record<Tool, string | null>;
  iptables_backend: IptablesBackend | null;
  nat_backend_auto: NatBackend | null;
  tun: HostFacts["tun"];
  state_dir: HostFacts["stateDir"];
}

export interface DoctorReport {
  host: HostSummary;
  role: DoctorRole;
  checks: CheckRow[];
  /** True when no required check for the chosen role(s) is missing. */
  ok: boolean;
}

export interface EvaluateOptions {
  /** The relay's listen port (from --listen); decides whether CAP_NET_BIND_SERVICE matters. */
  listenPort?: number;
  /** Packet tunnels are enabled here (`[tunnel] enabled`): /dev/net/tun, ip and CAP_NET_ADMIN become required (also on a master). */
  tunnels?: boolean;
}

/**
 * What `[nat] backend = "auto"` would pick here: nft when nft exists and iptables is absent,
 * incomplete (no iptables-restore) or itself the nf_tables variant (then both write the same
 * kernel tables and nft is the native tool); iptables when it and iptables-restore exist;
 * otherwise nothing.
 */
export function autoNatBackend(f: Pick<HostFacts, "tools" | "iptablesBackend">): NatBackend | undefined {
  const iptablesUsable = f.tools.iptables !== null && f.tools["iptables-restore"] !== null;
  if (f.tools.nft !== null && (!iptablesUsable || f.iptablesBackend === "nf_tables")) return "nft";
  if (iptablesUsable) return "iptables";
  return undefined;
}

type FixKey = "ip" | "nat" | "tun-missing" | "conntrack" | "hostapd" | "dnsmasq" | "wifi-client" | "cellular";

const FIXES: Record<FixKey, Record<OsFamily, string>> = {
  ip: { debian: "apt-get install iproute2", openwrt: "opkg install ip-full", other: "install iproute2 (the `ip` command)" },
  nat: {
    debian: "apt-get install iptables (or apt-get install nftables)",
    openwrt: "opkg install nftables (or opkg install iptables-nft)",
    other: "install iptables (with iptables-restore) or nftables",
  },
  "tun-missing": {
    debian: "modprobe tun (in a container: mkdir -p /dev/net && mknod /dev/net/tun c 10 200)",
    openwrt: "opkg install kmod-tun",
    other: "load the tun kernel module: modprobe tun",
  },
  conntrack: { debian: "apt-get install conntrack", openwrt: "opkg install conntrack", other: "install conntrack-tools (the `conntrack` command)" },
  hostapd: { debian: "apt-get install hostapd", openwrt: "opkg install hostapd", other: "install hostapd" },
  // dnsmasq-base is the binary alone: the `dnsmasq` package also starts a system DNS server
  // that would hold port 53 on the interfaces the agent wants to serve.
  dnsmasq: { debian: "apt-get install dnsmasq-base", openwrt: "opkg install dnsmasq", other: "install dnsmasq" },
  "wifi-client": { debian: "apt-get install wpasupplicant", openwrt: "opkg install wpa-supplicant wpa-cli", other: "install wpa_supplicant (with wpa_cli)" },
  cellular: { debian: "apt-get install modemmanager", openwrt: "opkg install modemmanager", other: "install ModemManager (the `mmcli` command)" },
};

function privilegeFix(os: OsFamily, cap: "CAP_NET_ADMIN" | "CAP_NET_BIND_SERVICE"): string {
  if (os === "openwrt") return `run as root (the procd service in targets/ does)`;
  return `run as root or grant ${cap} (the systemd units in targets/ do: AmbientCapabilities=${cap})`;
}

interface Spec {
  check: string;
  roles: Role[];
  required: boolean;
  /** The roles for which `required` holds (default: all of `roles`); for the others a failure
   * is optional-missing. */
  requiredFor?: Role[];
  /** null: the check does not apply (its facts were not gathered). */
  run: (f: HostFacts, roles: Role[]) => { status: CheckStatus; detail: string; fix?: string } | null;
}

const found = (f: HostFacts, t: Tool) => f.tools[t] !== null;
const at = (f: HostFacts, t: Tool) => `${t} at ${f.tools[t]}`;

function toolCheck(f: HostFacts, tool: Tool, fixKey: FixKey, required: boolean, why: string) {
  if (found(f, tool)) return { status: "ok" as const, detail: at(f, tool) };
  return {
    status: required ? ("missing" as const) : ("optional-missing" as const),
    detail: `${tool} not found on PATH or in ${SBIN_DIRS.join(" ")}${why ? `; ${why}` : ""}`,
    fix: FIXES[fixKey][f.os.family],
  };
}

function capCheck(f: HostFacts, cap: "CAP_NET_ADMIN" | "CAP_NET_BIND_SERVICE", have: (c: Capabilities) => boolean) {
  const who = f.uid === 0 ? "root" : `uid ${f.uid}`;
  if (f.caps === undefined) {
    // No CapEff to read (not Linux, or /proc hidden): root is the best evidence left.
    if (f.uid === 0) return { status: "warn" as const, detail: `running as root; CapEff unreadable, assuming ${cap}` };
    return { status: "missing" as const, detail: `running as ${who}; CapEff unreadable`, fix: privilegeFix(f.os.family, cap) };
  }
  if (have(f.caps)) return { status: "ok" as const, detail: `${who}, ${cap} in CapEff ${f.caps.hex}` };
  const note = f.uid === 0 ? " (root without it: a container or a capability bounding set dropped it)" : "";
  return { status: "missing" as const, detail: `${who}, ${cap} not in CapEff ${f.caps.hex}${note}`, fix: privilegeFix(f.os.family, cap) };
}

/** The tun check's row from what opening the device said. */
function tunRow(f: HostFacts): { status: CheckStatus; detail: string; fix?: string } {
  const t = f.tun;
  if (t.openable) return { status: "ok", detail: `${t.path} opens read-write` };
  if (t.error === "ENOENT" || t.error === "ENODEV" || t.error === "ENXIO") {
    return { status: "missing", detail: `${t.path}: ${t.error} (the tun module is not loaded or the device node is missing)`, fix: FIXES["tun-missing"][f.os.family] };
  }
  if (t.error === "EACCES" || t.error === "EPERM") {
    return {
      status: "missing",
      detail: `${t.path}: ${t.error} (no permission to open it)`,
      fix: `${privilegeFix(f.os.family, "CAP_NET_ADMIN")}; a non-root user also needs ${t.path} mode 0666 (the stock mode)`,
    };
  }
  return { status: "missing", detail: `${t.path} cannot be opened: ${t.error ?? "unknown error"}`, fix: FIXES["tun-missing"][f.os.family] };
}

function specs(opts: EvaluateOptions): Spec[] {
  return [
    {
      check: "state-dir",
      roles: ["relay", "onsite", "master"],
      required: true,
      run: (f) => {
        const d = f.stateDir;
        if (d.writable && d.exists === false) return { status: "ok", detail: `${d.path} does not exist yet; the daemon creates it (mode 0700)` };
        if (d.writable) return { status: "ok", detail: `${d.path} is writable${d.created ? " (created, mode 0700)" : ""}` };
        const why: Record<string, string> = {
          EACCES: "permission denied",
          EPERM: "permission denied",
          ENOTDIR: "a component of the path is not a directory",
          EROFS: "read-only file system",
          ENOSPC: "no space left on device",
        };
        const reason = d.error ? (why[d.error] ? `${why[d.error]} (${d.error})` : d.error) : "unknown error";
        const fix =
          d.error === "EACCES" || d.error === "EPERM"
            ? `run as root, or give the agent's user the directory: mkdir -p ${d.path} && chown USER ${d.path} && chmod 700 ${d.path}; or pass --state-dir`
            : `pass --state-dir with a writable directory (or set state_dir in the config file)`;
        return { status: "missing", detail: `${d.path} is not writable: ${reason}`, fix };
      },
    },
    {
      check: "cap-net-bind-service",
      roles: ["relay"],
      required: true,
      run: (f) => {
        const port = opts.listenPort;
        if (port === 0) return { status: "ok", detail: "not needed: listening on a port the system chooses (port 0)" };
        if (port !== undefined && port >= 1024) return { status: "ok", detail: `not needed: listening on port ${port}` };
        const r = capCheck(f, "CAP_NET_BIND_SERVICE", (c) => c.netBindService);
        if (port === undefined) {
          // Without --listen we cannot tell whether a privileged port is wanted.
          if (r.status === "ok") return { status: "ok", detail: `${r.detail}; needed to listen on a port below 1024` };
          return {
            status: "warn",
            detail: `${r.detail}; needed only if the relay listens on a port below 1024 (pass --listen to decide)`,
            fix: `${privilegeFix(f.os.family, "CAP_NET_BIND_SERVICE")}, or listen on a port ≥ 1024`,
          };
        }
        if (r.status === "missing") return { ...r, detail: `${r.detail}; needed to listen on port ${port}`, fix: `${r.fix}, or listen on a port ≥ 1024` };
        return r;
      },
    },
    {
      check: "tun",
      roles: ["onsite", "master"],
      // Only packet tunnels (issue 11) open TUN/TAP devices: port forwards are plain sockets.
      // Required where tunnels are enabled; elsewhere a missing device fails nothing.
      required: opts.tunnels === true,
      run: (f) => {
        const unless = opts.tunnels === true ? "" : "; needed only for packet tunnels ([tunnel] enabled = true)";
        const r = tunRow(f);
        return r.status === "ok" ? r : { ...r, detail: r.detail + unless };
      },
    },
    {
      check: "ip",
      roles: ["onsite", "master"],
      required: true,
      // A master's port forwards are plain sockets: it runs as any user (even nobody). Only
      // packet tunnels need these there.
      requiredFor: opts.tunnels === true ? undefined : ["onsite"],
      run: (f) => toolCheck(f, "ip", "ip", true, "needed to configure tunnel interfaces and routes"),
    },
    {
      check: "cap-net-admin",
      roles: ["onsite", "master"],
      required: true,
      // A master's port forwards are plain sockets: it runs as any user (even nobody). Only
      // packet tunnels need these there.
      requiredFor: opts.tunnels === true ? undefined : ["onsite"],
      run: (f) => capCheck(f, "CAP_NET_ADMIN", (c) => c.netAdmin),
    },
    {
      check: "nat",
      roles: ["onsite"],
      required: true,
      run: (f) => {
        const have: string[] = [];
        if (found(f, "iptables")) {
          have.push(`iptables${f.iptablesBackend ? ` (${f.iptablesBackend})` : ""}${found(f, "iptables-restore") ? "" : " without iptables-restore"}`);
        }
        if (found(f, "nft")) have.push("nft");
        const pick = autoNatBackend(f);
        if (pick) return { status: "ok", detail: `${have.join(", ")}; backend auto → ${pick}` };
        return {
          status: "missing",
          detail: have.length ? `${have.join(", ")}: neither iptables with iptables-restore nor nft is usable` : "neither iptables nor nft found",
          fix: FIXES.nat[f.os.family],
        };
      },
    },
    {
      check: "nat-time",
      roles: ["onsite"],
      required: true,
      run: (f) => natTimeRow(f.natTime, f.os.family),
    },
    {
      check: "ip-forward",
      roles: ["onsite"],
      required: true,
      run: (f) => {
        const v = f.ipForward;
        if (v === undefined) return null;
        if (v.value === "1") return { status: "ok", detail: "net.ipv4.ip_forward = 1" };
        const fix =
          f.os.family === "openwrt"
            ? "uci set network.globals.ip_forward=1 or sysctl -w net.ipv4.ip_forward=1 (and in /etc/sysctl.conf)"
            : "sysctl -w net.ipv4.ip_forward=1, and keep it: echo net.ipv4.ip_forward=1 > /etc/sysctl.d/90-agent.conf";
        if (v.value === null) return { status: "warn", detail: `cannot read net.ipv4.ip_forward: ${v.error ?? "unknown error"}; NAT rules forward only when it is 1`, fix };
        return { status: "missing", detail: `net.ipv4.ip_forward = ${v.value}: DNAT rules (\`agent nat add\`) would be installed but nothing is forwarded`, fix };
      },
    },
    ...configSpecs(),
    {
      check: "conntrack",
      roles: ["onsite"],
      required: false,
      run: (f) => toolCheck(f, "conntrack", "conntrack", false, "used to cut the flows of expired NAT rules; without it they run until they close"),
    },
    {
      check: "hostapd",
      roles: ["onsite"],
      required: false,
      run: (f) => toolCheck(f, "hostapd", "hostapd", false, "needed only for the AP fallback"),
    },
    {
      check: "dnsmasq",
      roles: ["onsite", "master"],
      required: false,
      run: (f, roles) => {
        const why = [
          roles.includes("onsite") ? "the AP fallback (onsite)" : undefined,
          roles.includes("master") ? "DHCP on the secondary interface (master)" : undefined,
        ].filter(Boolean);
        return toolCheck(f, "dnsmasq", "dnsmasq", false, `needed only for ${why.join(" and ")}`);
      },
    },
    {
      check: "wifi-client",
      roles: ["onsite"],
      required: false,
      run: (f) => {
        if (found(f, "wpa_supplicant") && found(f, "wpa_cli")) return { status: "ok", detail: `${at(f, "wpa_supplicant")}, ${at(f, "wpa_cli")}` };
        const lacking = (["wpa_supplicant", "wpa_cli"] as const).filter((t) => !found(f, t));
        return {
          status: "optional-missing",
          detail: `${lacking.join(" and ")} not found; needed only for Wi-Fi client uplinks`,
          fix: FIXES["wifi-client"][f.os.family],
        };
      },
    },
    {
      check: "cellular",
      roles: ["onsite"],
      required: false,
      run: (f) => {
        // OpenWRT drives modems as netifd interfaces over ubus; elsewhere through ModemManager.
        if (f.os.family === "openwrt" && found(f, "ubus")) return { status: "ok", detail: `${at(f, "ubus")} (netifd)` };
        if (found(f, "mmcli")) return { status: "ok", detail: at(f, "mmcli") };
        const tool = f.os.family === "openwrt" ? "ubus and mmcli" : "mmcli";
        return { status: "optional-missing", detail: `${tool} not found; needed only for cellular uplinks`, fix: FIXES.cellular[f.os.family] };
      },
    },
  ];
}

/** Bundles that expire sooner than this are a warning. */
export const BUNDLE_EXPIRY_WARN_DAYS = 30;

const dayMs = 86_400_000;

/** The checks of what a config names; each applies only when doctor read a config. */
function configSpecs(): Spec[] {
  const c = (f: HostFacts) => f.config;
  return [
    {
      check: "config",
      roles: ["relay", "onsite", "master"],
      required: true,
      run: (f) => {
        const cf = c(f);
        if (!cf || cf.file === undefined) return null;
        const where = cf.file;
        if (cf.problems && cf.problems.length > 0) {
          // Each problem already names the file and the key.
          return { status: "missing", detail: cf.problems.join("; "), fix: "fix each value named; `agent --help` lists the keys as flags" };
        }
        return { status: "ok", detail: `${where} parses${cf.role ? `; role ${cf.role}` : "; no role set"}` };
      },
    },
    {
      check: "bundle",
      roles: ["relay", "onsite", "master"],
      required: true,
      run: (f, roles) => {
        const cf = c(f);
        if (!cf || cf.problems?.length) return null;
        const b = cf.bundle;
        const issue = `agent pki issue --dir DIR --role ${cf.role ?? roles[0]} --id ID --out FILE.bundle`;
        if (b === null && cf.enrolls !== undefined) return { status: "ok", detail: `no bundle yet: enrolls at the relay ([enroll]) at first start and writes ${cf.enrolls}` };
        if (b === null && cf.file === undefined) return null; // flags only: nothing to say
        if (b === null) return { status: "missing", detail: "no bundle configured", fix: `set bundle = "FILE" in the config (or --bundle FILE); issue one with \`${issue}\`` };
        if (b.error !== undefined) return { status: "missing", detail: b.error, fix: `check the path, or issue a new bundle: \`${issue}\`` };
        if (b.mode !== undefined && (b.mode & 0o077) !== 0) {
          return { status: "missing", detail: `${b.path} has mode ${formatMode(b.mode)}: the daemon refuses a private key that group or others can read`, fix: `chmod 600 ${b.path} (owned by the user the daemon runs as)` };
        }
        if (b.problems.length > 0) return { status: "missing", detail: `${b.path}: ${b.problems.join("; ")}`, fix: `issue a new bundle: \`${issue}\`` };
        const want = cf.role ?? (roles.length === 1 ? roles[0] : undefined);
        if (want !== undefined && b.role !== want) {
          return { status: "missing", detail: `${b.path} is a ${b.role} bundle (id ${b.id}), but the role is ${want}`, fix: `use a ${want} bundle: \`agent pki issue --dir DIR --role ${want} --id ID --out FILE.bundle\`` };
        }
        const notBefore = Date.parse(b.notBefore ?? "");
        const notAfter = Date.parse(b.notAfter ?? "");
        const renew = `issue a new one: \`agent pki issue --dir DIR --role ${b.role} --id ${b.id} --force --out NEW.bundle\`, then replace ${b.path}`;
        if (cf.now < notBefore) return { status: "missing", detail: `${b.path} is not valid before ${b.notBefore} (check this host's clock)`, fix: "set the clock (NTP), or wait" };
        if (cf.now > notAfter) return { status: "missing", detail: `${b.path} expired at ${b.notAfter}`, fix: renew };
        const left = Math.floor((notAfter - cf.now) / dayMs);
        const what = `${b.role} ${b.id}, valid until ${b.notAfter}`;
        if (left < BUNDLE_EXPIRY_WARN_DAYS) return { status: "warn", detail: `${b.path}: ${what}: expires in ${left} day${left === 1 ? "" : "s"}`, fix: renew };
        return { status: "ok", detail: `${b.path}: ${what}, mode ${b.mode !== undefined ? formatMode(b.mode) : "?"}` };
      },
    },
    {
      check: "relay",
      roles: ["onsite", "master"],
      required: true,
      run: (f) => {
        const cf = c(f);
        if (!cf || cf.problems?.length) return null;
        const r = cf.relay;
        if (r === null && cf.file === undefined) return null;
        if (r === null) return { status: "missing", detail: "no relay configured", fix: 'set relay = "HOST:PORT" in the config (or --relay HOST:PORT)' };
        const via = r.via ? ` through the proxy ${r.via}` : "";
        if (r.ok) return { status: "ok", detail: `${r.via ?? r.target} accepts TCP connections${via ? ` (proxy for ${r.target})` : ""} (${r.ms} ms)` };
        const why: Record<string, string> = {
          ECONNREFUSED: "connection refused: nothing listens there",
          ENOTFOUND: "the name does not resolve",
          EAI_AGAIN: "the name cannot be resolved now (DNS unreachable)",
          EHOSTUNREACH: "no route to the host",
          ENETUNREACH: "the network is unreachable",
        };
        const reason = why[r.error ?? ""] ?? r.error ?? "unknown error";
        // The daemon keeps retrying, so this is a warning: the link may come up later.
        return { status: "warn", detail: `cannot reach ${r.via ?? r.target}${via ? ` (proxy for ${r.target})` : ""}: ${reason}`, fix: "check the relay address and port, DNS, and that a firewall lets this host out to it" };
      },
    },
    {
      check: "listen",
      roles: ["relay"],
      required: true,
      run: (f) => {
        const cf = c(f);
        if (!cf || cf.problems?.length) return null;
        const l = cf.listen;
        if (l === null && cf.file === undefined) return null;
        if (l === null) return { status: "missing", detail: "no listen address configured", fix: 'set listen = "0.0.0.0:443" in the config (or --listen HOST:PORT)' };
        if (l.ok) return { status: "ok", detail: `${l.address} can be bound` };
        if (l.error === "EADDRINUSE") return { status: "warn", detail: `${l.address} is in use (is the relay already running? \`agent status\`)`, fix: "stop what holds the port, or choose another listen address" };
        if (l.error === "EACCES" || l.error === "EPERM") {
          return { status: "missing", detail: `${l.address}: permission denied`, fix: `${privilegeFix(f.os.family, "CAP_NET_BIND_SERVICE")}, or listen on a port ≥ 1024` };
        }
        if (l.error === "EADDRNOTAVAIL") return { status: "missing", detail: `${l.address}: this host has no such address`, fix: "listen on one of this host's addresses (`ip -br addr`), or 0.0.0.0" };
        return { status: "missing", detail: `${l.address} cannot be bound: ${l.error ?? "unknown error"}`, fix: "choose another listen address" };
      },
    },
    {
      check: "revocations",
      roles: ["relay"],
      required: true,
      run: (f) => {
        const cf = c(f);
        if (!cf || cf.problems?.length) return null;
        const r = cf.revocations;
        const copy = `copy the CA's DIR/revoked (\`agent pki revoke\` updates it) to ${r.path}${r.configured ? "" : ', or set revocations = "FILE"'}`;
        if (r.error !== undefined) return { status: "missing", detail: r.error, fix: copy };
        if (r.exists) return { status: "ok", detail: `${r.path}: ${r.entries} revoked certificate(s)${r.configured ? "" : " (the default, STATE_DIR/revoked)"}` };
        if (r.configured) return { status: "missing", detail: `${r.path} does not exist: the relay will not start`, fix: copy };
        return { status: "warn", detail: `no revocation list: ${r.path} does not exist and revocations is not set, so the relay accepts revoked certificates`, fix: copy };
      },
    },
    {
      check: "interfaces",
      roles: ["onsite"],
      required: true,
      run: (f) => {
        const cf = c(f);
        if (!cf || cf.problems?.length || cf.interfaces.length === 0) return null;
        const absent = cf.interfaces.filter((i) => !i.present);
        if (absent.length === 0) return { status: "ok", detail: cf.interfaces.map((i) => `${i.name} (${i.use})`).join(", ") };
        const list = absent.map((i) => `${i.name} (${i.use})`).join(", ");
        const fix = "name interfaces this host has (`ip -br link`), or plug in the device";
        if (absent.every((i) => i.optional)) return { status: "warn", detail: `no such interface yet: ${list}; a modem's appears when it is plugged in`, fix };
        return { status: "missing", detail: `no such interface: ${list}`, fix };
      },
    },
  ];
}

export function summarizeHost(f: HostFacts): HostSummary {
  return {
    os: f.os.name,
    os_family: f.os.family,
    kernel: f.kernel,
    uid: f.uid,
    cap_eff: f.caps?.hex ?? null,
    capabilities: f.caps ? { net_admin: f.caps.netAdmin, net_raw: f.caps.netRaw, net_bind_service: f.caps.netBindService } : null,
    tools: { ...f.tools },
    iptables_backend: f.iptablesBackend ?? null,
    nat_backend_auto: autoNatBackend(f) ?? null,
    tun: { ...f.tun },
    state_dir: { ...f.stateDir },
  };
}

/** Pure: every check the chosen role(s) need, with status, detail and fix. */
export function evaluate(facts: HostFacts, role: DoctorRole, opts: EvaluateOptions = {}): DoctorReport {
  const chosen: Role[] = role === "all" ? [...ROLES] : [role];
  const checks: CheckRow[] = [];
  for (const s of specs(opts)) {
    const roles = s.roles.filter((r) => chosen.includes(r));
    if (roles.length === 0) continue;
    const r = s.run(facts, roles);
    if (r === null) continue;
    const required = s.required && roles.some((x) => (s.requiredFor ?? s.roles).includes(x));
    const status: CheckStatus = r.status === "missing" && !required ? "optional-missing" : r.status;
    const detail = status !== r.status && roles.includes("master") ? `${r.detail} (the master's port forwards need none of this)` : r.detail;
    checks.push({ check: s.check, roles, required, status, detail, fix: status === "ok" ? "" : (r.fix ?? "") });
  }
  const ok = !checks.some((c) => c.required && c.status === "missing");
  return { host: summarizeHost(facts), role, checks, ok };
}

// ---------------------------------------------------------------------------------------
// Presentation

/** An aligned table (CHECK, [ROLES,] STATUS, DETAIL, FIX), a host line and a summary line. */
export function formatReport(report: DoctorReport): string {
  const h = report.host;
  const withRoles = report.role === "all";
  const header = withRoles ? ["CHECK", "ROLES", "STATUS", "DETAIL", "FIX"] : ["CHECK", "STATUS", "DETAIL", "FIX"];
  const rows = report.checks.map((c) =>
    withRoles ? [c.check, c.roles.join(","), c.status, c.detail, c.fix] : [c.check, c.status, c.detail, c.fix],
  );

  const roleText = report.role === "all" ? ROLES.join(", ") : report.role;
  const missing = report.checks.filter((c) => c.required && c.status === "missing").map((c) => c.check);
  const optional = report.checks.filter((c) => c.status === "optional-missing").map((c) => c.check);
  const warns = report.checks.filter((c) => c.status === "warn").map((c) => c.check);
  const extras = [
    optional.length ? `${optional.length} optional missing (${optional.join(", ")})` : "",
    warns.length ? `${warns.length} warning${warns.length > 1 ? "s" : ""} (${warns.join(", ")})` : "",
  ].filter(Boolean);
  const summary = report.ok
    ? `ok: every required check passes for ${roleText}${extras.length ? `; ${extras.join("; ")}` : ""}`
    : `FAIL: ${missing.length} required check${missing.length > 1 ? "s" : ""} missing for ${roleText} (${missing.join(", ")})${extras.length ? `; ${extras.join("; ")}` : ""}`;

  const hostLine = `host: ${h.os}, kernel ${h.kernel}, uid ${h.uid}${h.cap_eff ? `, CapEff ${h.cap_eff}` : ""}`;
  return `${hostLine}\n\n${formatTable(header, rows)}\n${summary}\n`;
}
