// Strict parsers for addresses users type: IPv4 dotted quads, CIDRs, ports and host:port.
// Pure. Every error says what was expected; nothing is resolved or looked up here.

const DEC_OCTET = /^(0|[1-9]\d{0,2})$/;
const PORT = /^(0|[1-9]\d{0,4})$/;
const HOSTNAME_LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

/** Parses "a.b.c.d" (decimal, no leading zeros, no spaces) into a 32-bit unsigned number. */
export function parseIPv4(text: string): number {
  const parts = text.split(".");
  if (parts.length !== 4) throw new Error(`expected an IPv4 address such as 192.168.1.10, got ${JSON.stringify(text)}`);
  let n = 0;
  for (const p of parts) {
    if (!DEC_OCTET.test(p) || Number(p) > 255) {
      throw new Error(`expected an IPv4 address such as 192.168.1.10, got ${JSON.stringify(text)}`);
    }
    n = n * 256 + Number(p);
  }
  return n;
}

export function formatIPv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

export interface Cidr {
  /** Network address (host bits cleared). */
  network: number;
  prefix: number;
}

/** "10.0.0.0/8" or a bare address (a /32). Host bits must be zero for a shorter prefix. */
export function parseCidr(text: string): Cidr {
  const slash = text.indexOf("/");
  const addr = parseIPv4(slash < 0 ? text : text.slice(0, slash));
  let prefix = 32;
  if (slash >= 0) {
    const p = text.slice(slash + 1);
    if (!/^(0|[1-9]\d?)$/.test(p) || Number(p) > 32) {
      throw new Error(`expected a prefix length 0-32 after "/", got ${JSON.stringify(text)}`);
    }
    prefix = Number(p);
  }
  const network = maskOf(prefix) & addr;
  if (network >>> 0 !== addr) {
    throw new Error(`${JSON.stringify(text)} has host bits set; did you mean ${formatIPv4(network >>> 0)}/${prefix}?`);
  }
  return { network: network >>> 0, prefix };
}

export function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

export function cidrContains(c: Cidr, addr: number): boolean {
  return ((addr & maskOf(c.prefix)) >>> 0) === c.network;
}

export function formatCidr(c: Cidr): string {
  return `${formatIPv4(c.network)}/${c.prefix}`;
}

/** Decimal port 1-65535; rejects 0, signs, hex, ranges and leading zeros. */
export function parsePort(text: string): number {
  if (!PORT.test(text) || Number(text) < 1 || Number(text) > 65535) {
    throw new Error(`expected a port number 1-65535, got ${JSON.stringify(text)}`);
  }
  return Number(text);
}

export interface PortRange {
  from: number;
  to: number;
}

/** "22", "22,80,443" or "8000-8100,22". */
export function parsePortList(text: string): PortRange[] {
  return text.split(",").map((item) => {
    const dash = item.indexOf("-");
    if (dash < 0) {
      const p = parsePort(item);
      return { from: p, to: p };
    }
    const from = parsePort(item.slice(0, dash));
    const to = parsePort(item.slice(dash + 1));
    if (to < from) throw new Error(`port range ${JSON.stringify(item)} runs backwards`);
    return { from, to };
  });
}

export function isHostname(text: string): boolean {
  if (text.length === 0 || text.length > 253) return false;
  return text.split(".").every((l) => HOSTNAME_LABEL.test(l));
}

export interface HostPort {
  host: string;
  port: number;
}

/** "host:port", "1.2.3.4:443" or "[::1]:443". Hosts are names or literals, never resolved here. */
export function parseHostPort(text: string, what = "HOST:PORT", allowZero = false): HostPort {
  const bad = () => new Error(`expected ${what} such as relay.example.net:443, got ${JSON.stringify(text)}`);
  if (typeof text !== "string") throw bad();
  let host: string;
  let portText: string;
  if (text.startsWith("[")) {
    const end = text.indexOf("]");
    if (end < 0 || text[end + 1] !== ":") throw bad();
    host = text.slice(1, end);
    portText = text.slice(end + 2);
    if (!/^[0-9A-Fa-f:.]+$/.test(host) || !host.includes(":")) throw bad();
  } else {
    const colon = text.lastIndexOf(":");
    if (colon <= 0) throw bad();
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    const looksNumeric = /^[\d.]+$/.test(host);
    if (looksNumeric) parseIPv4(host);
    else if (!isHostname(host)) throw bad();
  }
  // Port 0 on a listening address means "let the system choose" (tests, the demo).
  if (allowZero && portText === "0") return { host, port: 0 };
  return { host, port: parsePort(portText) };
}

export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(":") ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

export interface AllowEntry {
  cidr: Cidr;
  /** Empty means every port. */
  ports: PortRange[];
}

/** One entry of the onsite LAN allow list: "CIDR[:PORTS]", e.g. "10.0.0.5/32:22,80". */
export function parseAllowEntry(text: string): AllowEntry {
  const colon = text.indexOf(":");
  const cidr = parseCidr(colon < 0 ? text : text.slice(0, colon));
  const ports = colon < 0 ? [] : parsePortList(text.slice(colon + 1));
  return { cidr, ports };
}

export function formatAllowEntry(e: AllowEntry): string {
  const ports = e.ports.map((r) => (r.from === r.to ? `${r.from}` : `${r.from}-${r.to}`)).join(",");
  return formatCidr(e.cidr) + (ports ? `:${ports}` : "");
}

export function allowListPermits(list: AllowEntry[], addr: number, port: number): boolean {
  return list.some(
    (e) => cidrContains(e.cidr, addr) && (e.ports.length === 0 || e.ports.some((r) => port >= r.from && port <= r.to)),
  );
}

/** RFC 1918 private ranges: the onsite allow list when none is configured. */
export const PRIVATE_RANGES: readonly string[] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];
