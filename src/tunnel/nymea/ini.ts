// Upstream's configuration file (/etc/nymea/nymea-remoteproxy.conf, QSettings INI) read as a
// config source: its [ProxyServer], [SSL], [WebSocketServer] and [TcpServer] keys become our
// [nymea] keys, so `agent --role relay --nymea-conf FILE` replaces `nymea-remoteproxy -c FILE`.
// Every key or section without an equivalent here is named in a warning, never dropped quietly.
import { ConfigError, type ConfigProblem, type ConfigSource, type RawConfig } from "../../config.ts";
import { UsageError } from "../../errors.ts";

export type Ini = Record<string, Record<string, string>>;

/** QSettings' INI: [section], key=value, ';' or '#' comments, optional double quotes. */
export function parseIni(text: string, path: string): Ini {
  const out: Ini = {};
  let section = "General";
  const problems: ConfigProblem[] = [];
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith(";") || line.startsWith("#")) return;
    const sec = /^\[([^\]]+)\]$/.exec(line);
    if (sec) {
      section = sec[1]!.trim();
      out[section] ??= {};
      return;
    }
    const eq = line.indexOf("=");
    if (eq <= 0) {
      problems.push({ origin: { kind: "file", path }, key: `line ${i + 1}`, message: `expected [Section] or key=value, got ${JSON.stringify(line.slice(0, 60))}` });
      return;
    }
    let value = line.slice(eq + 1).trim();
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
    (out[section] ??= {})[line.slice(0, eq).trim()] = value;
  });
  if (problems.length) throw new ConfigError(problems);
  return out;
}

/** What each known upstream key becomes; null: known, no equivalent (with why, for the warning). */
const KNOWN: Record<string, Record<string, string | null>> = {
  ProxyServer: {
    name: "name",
    monitorSocket: "monitor",
    jsonRpcTimeout: "jsonrpc_timeout",
    authenticationTimeout: "authentication_timeout",
    inactiveTimeout: "inactive_timeout",
    aloneTimeout: "alone_timeout",
    writeLogs: null,
    logFile: null,
    logEngineEnabled: null,
  },
  SSL: { enabled: "plain", certificate: "certificate", certificateKey: "key", certificateChain: null },
  WebSocketServer: { host: "ws", port: "ws" },
  TcpServer: { host: "tcp", port: "tcp" },
};

const WHY_SECTION: Record<string, string> = {
  AWS: 'the AWS Lambda authenticator is not supported; set tokens = "FILE" or authorizer = "URL" under [nymea] in agent.toml (the authorizer gets the Lambda\'s {"token": …} and answers {"isValid": bool})',
  UnixSocketServer: "the unix-socket transport is not supported (no nymea client uses it)",
  WebSocketServerTunnelProxy: "the v2 tunnel proxy (TunnelProxy.*) is not supported",
  TcpServerTunnelProxy: "the v2 tunnel proxy (TunnelProxy.*) is not supported",
};

const WHY_KEY: Record<string, string> = {
  writeLogs: "logs go to the agent's log (journald); see log_level",
  logFile: "logs go to the agent's log (journald); see log_level",
  logEngineEnabled: "logs go to the agent's log (journald); see log_level",
  certificateChain: "append the chain to the certificate file (PEM, certificate first)",
};

/** The INI as a [nymea] table plus warnings; problems (bad numbers) as a ConfigError naming the file. */
export function nymeaFromIni(ini: Ini, path: string): { raw: RawConfig; warnings: string[] } {
  const warnings: string[] = [];
  const problems: ConfigProblem[] = [];
  const origin = { kind: "file" as const, path };
  const n: Record<string, unknown> = {};
  const get = (s: string, k: string) => ini[s]?.[k];
  for (const [section, keys] of Object.entries(ini)) {
    const known = KNOWN[section];
    if (!known) {
      if (Object.keys(keys).length || section !== "General") warnings.push(`${path}: [${section}] is not used: ${WHY_SECTION[section] ?? "unknown section"}`);
      continue;
    }
    for (const k of Object.keys(keys)) {
      if (!(k in known)) warnings.push(`${path}: [${section}] ${k} is not used: unknown key`);
      else if (known[k] === null && !(k === "certificateChain" && keys[k] === "")) warnings.push(`${path}: [${section}] ${k} is not used: ${WHY_KEY[k]}`);
    }
  }
  const name = get("ProxyServer", "name");
  if (name !== undefined) n.name = name;
  const monitor = get("ProxyServer", "monitorSocket");
  if (monitor !== undefined) n.monitor = monitor;
  for (const [k, ours] of [["jsonRpcTimeout", "jsonrpc_timeout"], ["authenticationTimeout", "authentication_timeout"], ["inactiveTimeout", "inactive_timeout"], ["aloneTimeout", "alone_timeout"]] as const) {
    const v = get("ProxyServer", k);
    if (v === undefined) continue;
    if (!/^\d{1,9}$/.test(v)) problems.push({ origin, key: `[ProxyServer] ${k}`, message: `expected milliseconds as a whole number such as 8000, got ${JSON.stringify(v)}` });
    else n[ours] = `${Number(v)}ms`;
  }
  const enabled = get("SSL", "enabled");
  let tls = true;
  if (enabled !== undefined) {
    if (!/^(true|false|1|0)$/i.test(enabled)) problems.push({ origin, key: "[SSL] enabled", message: `expected true or false, got ${JSON.stringify(enabled)}` });
    tls = /^(true|1)$/i.test(enabled);
  }
  if (!tls) n.plain = true;
  else {
    const cert = get("SSL", "certificate");
    const key = get("SSL", "certificateKey");
    if (cert) n.certificate = cert;
    if (key) n.key = key;
  }
  // Upstream listens on its defaults when a section is absent.
  for (const [section, ours, port] of [["WebSocketServer", "ws", 1212], ["TcpServer", "tcp", 1213]] as const) {
    const host = get(section, "host") ?? "127.0.0.1";
    const p = get(section, "port") ?? String(port);
    if (!/^\d{1,5}$/.test(p) || Number(p) > 65535) {
      problems.push({ origin, key: `[${section}] port`, message: `expected a port 0-65535, got ${JSON.stringify(p)}` });
      continue;
    }
    n[ours] = `${host.includes(":") ? `[${host}]` : host}:${Number(p)}`;
  }
  if (problems.length) throw new ConfigError(problems);
  return { raw: { nymea: n }, warnings };
}

/** `--nymea-conf FILE` as a config source (between agent.toml and the flags). */
export async function loadNymeaConf(path: string): Promise<ConfigSource> {
  const f = Bun.file(path);
  if (!(await f.exists())) throw new UsageError(`nymea-remoteproxy config ${path} does not exist`, "check the --nymea-conf path (upstream's default is /etc/nymea/nymea-remoteproxy.conf)");
  const { raw, warnings } = nymeaFromIni(parseIni(await f.text(), path), path);
  return { origin: { kind: "file", path }, raw, warnings };
}
