// The PROXY protocol, version 2 (HAProxy's `send-proxy-v2`), as a load balancer in front of the
// relay sends it: a binary header before the first TLS byte that names the client's real
// address. Pure: `parseProxyHeader` judges the bytes received so far and says whether it needs
// more, has a header (and how long it is), or refuses them, with a reason for the refusal log.
// Limits are checked from the fixed part before anything is buffered.
//
// Layout (https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt, section 2.2):
//   12 bytes  signature \r\n\r\n\0\r\nQUIT\n
//    1 byte   version (high nibble, 2) | command (low nibble: 0 LOCAL, 1 PROXY)
//    1 byte   family (high: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) | transport (low: 0 UNSPEC, 1 STREAM, 2 DGRAM)
//    2 bytes  length of what follows, big endian
//   INET:  src 4, dst 4, src port 2, dst port 2 (12 bytes); INET6: 16, 16, 2, 2 (36 bytes);
//   then TLVs up to `length` (read past, not used).
// LOCAL is the balancer's own health check: the connection is the balancer's, not a client's.

export const PROXY_V2_SIGNATURE = new Uint8Array([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
/** Fixed part: signature, version/command, family/transport, length. */
export const PROXY_V2_FIXED = 16;
/** Largest header accepted: INET6 addresses plus room for the TLVs a balancer adds (ALPN, authority, SSL info). */
export const MAX_PROXY_HEADER = PROXY_V2_FIXED + 36 + 512;

export interface ProxyAddress {
  address: string;
  port: number;
}

export type ProxyHeader =
  | { command: "proxy"; family: "tcp4" | "tcp6"; source: ProxyAddress; destination: ProxyAddress }
  /** LOCAL, or PROXY with UNSPEC family: no client address; the connection is the balancer's own. */
  | { command: "local" };

export type ProxyParse =
  | { state: "need"; bytes: number }
  | { state: "ok"; header: ProxyHeader; length: number }
  | { state: "bad"; reason: string };

const hex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join(" ");

/** What the first bytes look like instead, for the refusal reason. */
function lookslike(b: Uint8Array): string {
  if (b[0] === 0x16 && b[1] === 0x03) return "a TLS ClientHello: the balancer does not send PROXY v2 (HAProxy: `server ... send-proxy-v2`), or a client reached the relay around it";
  if (new TextDecoder().decode(b.subarray(0, 6)) === "PROXY ") return "PROXY protocol v1 (text); only v2 is accepted (HAProxy: send-proxy-v2, not send-proxy)";
  return `bytes ${hex(b.subarray(0, 8))}`;
}

/** Judges the bytes received so far on a connection that must start with a PROXY v2 header. Pure. */
export function parseProxyHeader(buf: Uint8Array, max = MAX_PROXY_HEADER): ProxyParse {
  const sig = Math.min(buf.length, PROXY_V2_SIGNATURE.length);
  for (let i = 0; i < sig; i++) {
    if (buf[i] !== PROXY_V2_SIGNATURE[i]) return { state: "bad", reason: `PROXY protocol: no v2 header, got ${lookslike(buf)}` };
  }
  if (buf.length < PROXY_V2_FIXED) return { state: "need", bytes: PROXY_V2_FIXED - buf.length };
  const version = buf[12]! >> 4;
  const command = buf[12]! & 0x0f;
  const family = buf[13]! >> 4;
  const transport = buf[13]! & 0x0f;
  const length = (buf[14]! << 8) | buf[15]!;
  if (version !== 2) return { state: "bad", reason: `PROXY protocol: version ${version}, only 2 is accepted` };
  if (command > 1) return { state: "bad", reason: `PROXY protocol: unknown command ${command} (0 LOCAL, 1 PROXY)` };
  const total = PROXY_V2_FIXED + length;
  if (total > max) return { state: "bad", reason: `PROXY protocol: header of ${total} bytes is over the limit of ${max}` };
  // Address lengths are checked before waiting for the rest, so a lie is refused at once.
  const need = command === 1 && transport !== 0 ? (family === 1 ? 12 : family === 2 ? 36 : 0) : 0;
  if (command === 1 && family !== 0) {
    if (family === 3) return { state: "bad", reason: "PROXY protocol: a UNIX socket source is not supported (the relay needs the client's IP address)" };
    if (family > 3) return { state: "bad", reason: `PROXY protocol: unknown address family ${family}` };
    if (transport === 2) return { state: "bad", reason: "PROXY protocol: a DGRAM (UDP) source on a TCP listener" };
    if (transport > 2) return { state: "bad", reason: `PROXY protocol: unknown transport ${transport}` };
    if (length < need) return { state: "bad", reason: `PROXY protocol: ${length} bytes cannot hold the ${family === 1 ? "IPv4" : "IPv6"} addresses (${need})` };
  }
  if (buf.length < total) return { state: "need", bytes: total - buf.length };
  if (command === 0 || family === 0 || transport === 0) return { state: "ok", header: { command: "local" }, length: total };
  const a = buf.subarray(PROXY_V2_FIXED);
  const port = (at: number) => (a[at]! << 8) | a[at + 1]!;
  if (family === 1) {
    return {
      state: "ok",
      length: total,
      header: { command: "proxy", family: "tcp4", source: { address: [...a.subarray(0, 4)].join("."), port: port(8) }, destination: { address: [...a.subarray(4, 8)].join("."), port: port(10) } },
    };
  }
  return {
    state: "ok",
    length: total,
    header: { command: "proxy", family: "tcp6", source: { address: formatIPv6(a.subarray(0, 16)), port: port(32) }, destination: { address: formatIPv6(a.subarray(16, 32)), port: port(34) } },
  };
}

/** An IPv6 address in its RFC 5952 text; an IPv4-mapped one as plain IPv4. Pure. */
export function formatIPv6(b: Uint8Array): string {
  if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) return [...b.subarray(12, 16)].join(".");
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push((b[i]! << 8) | b[i + 1]!);
  // The longest run of two or more zero words becomes "::" (the first, when runs tie).
  let best = -1, bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) (best = i), (bestLen = j - i);
    i = j;
  }
  const text = words.map((w) => w.toString(16));
  if (best < 0) return text.join(":");
  return `${text.slice(0, best).join(":")}::${text.slice(best + bestLen).join(":")}`;
}

/** A PROXY v2 header (what a balancer sends): for tests and benchmarks. Pure. */
export function encodeProxyHeader(h: ProxyHeader, tlvs: Uint8Array = new Uint8Array(0)): Uint8Array {
  let body: Uint8Array;
  let famTrans = 0x00;
  if (h.command === "local") body = new Uint8Array(0);
  else if (h.family === "tcp4") {
    famTrans = 0x11;
    body = new Uint8Array(12);
    body.set(h.source.address.split(".").map(Number), 0);
    body.set(h.destination.address.split(".").map(Number), 4);
    body.set([h.source.port >> 8, h.source.port & 0xff, h.destination.port >> 8, h.destination.port & 0xff], 8);
  } else {
    famTrans = 0x21;
    body = new Uint8Array(36);
    body.set(parseIPv6(h.source.address), 0);
    body.set(parseIPv6(h.destination.address), 16);
    body.set([h.source.port >> 8, h.source.port & 0xff, h.destination.port >> 8, h.destination.port & 0xff], 32);
  }
  const len = body.length + tlvs.length;
  const out = new Uint8Array(PROXY_V2_FIXED + len);
  out.set(PROXY_V2_SIGNATURE, 0);
  out[12] = 0x20 | (h.command === "local" ? 0 : 1);
  out[13] = famTrans;
  out[14] = len >> 8;
  out[15] = len & 0xff;
  out.set(body, PROXY_V2_FIXED);
  out.set(tlvs, PROXY_V2_FIXED + body.length);
  return out;
}

function parseIPv6(s: string): Uint8Array {
  const [head, tail] = s.includes("::") ? s.split("::") : [s, undefined];
  const h = head ? head.split(":") : [];
  const t = tail !== undefined && tail !== "" ? tail.split(":") : [];
  const words = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
  const out = new Uint8Array(16);
  words.forEach((w, i) => {
    const n = parseInt(w, 16);
    out[2 * i] = n >> 8;
    out[2 * i + 1] = n & 0xff;
  });
  return out;
}
