// `agent doctor`'s second gatherer: what a config names, read from the host without changing
// it. The bundle (mode, identity, dates, consistency), a TCP connect to the relay (or its
// proxy) with a short timeout, whether the listen address binds now (closed at once), the
// revocation list (configured, or the default STATE_DIR/revoked), and whether the host has
// the interfaces the config names. The decisions over these facts are in doctor.ts.
import { existsSync, statSync } from "node:fs";
import { createServer, Socket } from "node:net";
import { enrolledBundlePath, revocationsFile, type Config, type Role } from "./config.ts";
import { formatHostPort } from "./netaddr.ts";
import { loadRevocations, readBundleReport } from "./pki.ts";

function errCode(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === "string" ? code : e instanceof Error ? e.message : String(e);
}

export interface BundleFacts {
  path: string;
  /** Set when the file cannot be read or is not a bundle at all. */
  error?: string;
  mode?: number;
  role?: Role;
  id?: string;
  notBefore?: string;
  notAfter?: string;
  /** Consistency problems (signature, key, header), the mode excluded. */
  problems: string[];
}

export interface ConfigFacts {
  /** The config file read. Absent: doctor ran on flags alone, and what they do not name
   * (bundle, relay, listen) is not reported as missing. */
  file?: string;
  /** Problems in the config file itself (ConfigError); when set, nothing else was gathered. */
  problems?: string[];
  role?: Role;
  /** Wall-clock ms, for the bundle's validity dates. */
  now: number;
  /** null: no bundle configured. */
  bundle: BundleFacts | null;
  /** [enroll] without a bundle yet: where the device will write the one it enrolls for. */
  enrolls?: string;
  /** null: no relay configured. A TCP connect with a short timeout (to the proxy when one is set). */
  relay: { target: string; via?: string; ok: boolean; ms?: number; error?: string } | null;
  /** null: no listen address configured. Whether it binds now (then closed at once). */
  listen: { address: string; port: number; ok: boolean; error?: string } | null;
  revocations: { path: string; configured: boolean; exists: boolean; entries?: number; error?: string };
  /** The interfaces the config names for this device, and whether the host has them. */
  interfaces: Array<{ name: string; use: string; present: boolean; optional?: boolean }>;
}

/** A TCP connect to the relay must answer within this; doctor is run by a person waiting. */
export const RELAY_CONNECT_TIMEOUT_MS = 3000;

export interface ConfigGatherOptions {
  /** The config file the values came from, for the report. */
  file?: string;
  /** /sys/class/net by default: the host's interfaces. */
  sysNet?: string;
  connectTimeoutMs?: number;
  now?: number;
}

function tcpConnect(host: string, port: number, timeoutMs: number): Promise<{ ok: boolean; ms?: number; error?: string }> {
  return new Promise((resolve) => {
    const start = performance.now();
    const s = new Socket();
    const done = (r: { ok: boolean; ms?: number; error?: string }) => {
      clearTimeout(t);
      s.destroy();
      resolve(r);
    };
    const t = setTimeout(() => done({ ok: false, error: `ETIMEDOUT (no answer within ${timeoutMs} ms)` }), timeoutMs);
    s.once("connect", () => done({ ok: true, ms: Math.round(performance.now() - start) }));
    s.once("error", (e) => done({ ok: false, error: errCode(e) }));
    s.connect({ host, port });
  });
}

function tryBind(host: string, port: number): Promise<{ ok: boolean; error?: string }> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", (e) => resolve({ ok: false, error: errCode(e) }));
    srv.listen({ host, port, exclusive: true }, () => srv.close(() => resolve({ ok: true })));
  });
}

/** Reads what the config names. Changes nothing: the listen probe binds and closes at once. */
export async function gatherConfigFacts(cfg: Config, opts: ConfigGatherOptions = {}): Promise<ConfigFacts> {
  const sysNet = opts.sysNet ?? "/sys/class/net";
  const out: ConfigFacts = {
    ...(opts.file !== undefined ? { file: opts.file } : {}),
    ...(cfg.role !== undefined ? { role: cfg.role } : {}),
    now: opts.now ?? Date.now(),
    bundle: null,
    relay: null,
    listen: null,
    revocations: { ...revocationsFile(cfg), exists: false },
    interfaces: [],
  };
  // Flash-and-run ([enroll]): the bundle is the enrolled one once there, else made at first start.
  const bundlePath = cfg.bundle ?? (cfg.enroll?.address ? enrolledBundlePath(cfg) : undefined);
  if (bundlePath !== undefined && cfg.enroll?.address && !existsSync(bundlePath)) out.enrolls = bundlePath;
  else if (bundlePath !== undefined) {
    const b: BundleFacts = { path: bundlePath, problems: [] };
    try {
      const r = await readBundleReport(bundlePath);
      if (r.mode !== undefined) b.mode = r.mode;
      if (r.identity) {
        b.role = r.identity.role;
        b.id = r.identity.id;
        b.notBefore = r.identity.notBefore.toISOString();
        b.notAfter = r.identity.notAfter.toISOString();
      }
      b.problems = r.problems.filter((p) => !p.startsWith("mode "));
    } catch (e) {
      b.error = (e as Error).message;
    }
    out.bundle = b;
  }
  const timeout = opts.connectTimeoutMs ?? RELAY_CONNECT_TIMEOUT_MS;
  if (cfg.relay !== undefined) {
    const target = formatHostPort(cfg.relay);
    if (cfg.proxy) {
      const via = `${cfg.proxy.hostname}:${cfg.proxy.port}`;
      out.relay = { target, via, ...(await tcpConnect(cfg.proxy.hostname.replace(/^\[|\]$/g, ""), Number(cfg.proxy.port), timeout)) };
    } else {
      out.relay = { target, ...(await tcpConnect(cfg.relay.host, cfg.relay.port, timeout)) };
    }
  }
  if (cfg.listen !== undefined) out.listen = { address: formatHostPort(cfg.listen), port: cfg.listen.port, ...(await tryBind(cfg.listen.host, cfg.listen.port)) };
  try {
    statSync(out.revocations.path);
    out.revocations.exists = true;
    out.revocations.entries = (await loadRevocations(out.revocations.path)).entries.length;
  } catch (e) {
    if (errCode(e) !== "ENOENT") out.revocations.error = (e as Error).message;
  }
  const names: Array<{ name: string; use: string; optional?: boolean }> = cfg.uplink.map((u) => ({
    name: u.name,
    use: `[[uplink]] ${u.kind}`,
    // A modem's interface appears when it is plugged in and registered.
    ...(u.kind === "cellular" ? { optional: true } : {}),
  }));
  if (cfg.ap.enabled) {
    names.push({ name: cfg.ap.interface, use: "[ap] interface" });
    if (cfg.ap.wifi_interface !== undefined && cfg.ap.wifi_interface !== cfg.ap.interface) names.push({ name: cfg.ap.wifi_interface, use: "[ap] wifi_interface" });
  }
  out.interfaces = names.map((n) => ({ ...n, present: existsSync(`${sysNet}/${n.name}`) }));
  return out;
}

