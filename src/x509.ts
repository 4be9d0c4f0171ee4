// Reading X.509 certificates without node-forge: what a running daemon needs of a certificate
// (subject and issuer names, serial, validity, SANs, basicConstraints, name constraints,
// signature, key match, fingerprint) at start and on every connection. node-forge costs
// 11-15 MiB of RSS just by being loaded (docs/performance.md, Footprint), so it is left to
// issuing (`agent pki`, the relay's enrollment signing; src/pki.ts loads it on first use).
//
// The fields are read from the DER with a small reader below (exact bytes: the same values,
// counts and order node-forge reported, so ids, serials and dates are unchanged); the
// signature, the key match and the fingerprint are node:crypto's X509Certificate (OpenSSL /
// BoringSSL in Bun), which also refuses a certificate OpenSSL could not read.
//
// Pure; throws Error on malformed input (callers wrap it in their own error).
import { X509Certificate, type KeyObject } from "node:crypto";

// ---------------------------------------------------------------------------------------
// DER

interface Tlv {
  /** Class bits (0 universal, 2 context-specific) and tag number. */
  cls: number;
  tag: number;
  constructed: boolean;
  content: Buffer;
  /** The whole element, header included. */
  raw: Buffer;
}

function readTlv(buf: Buffer, pos: number): { tlv: Tlv; next: number } {
  if (pos + 2 > buf.length) throw new Error("DER: truncated element");
  const first = buf[pos]!;
  const tag = first & 0x1f;
  if (tag === 0x1f) throw new Error("DER: multi-byte tags are not supported");
  let len = buf[pos + 1]!;
  let hdr = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || pos + 2 + n > buf.length) throw new Error("DER: bad length");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[pos + 2 + i]!;
    hdr += n;
  }
  const end = pos + hdr + len;
  if (end > buf.length) throw new Error("DER: element runs past its container");
  return { tlv: { cls: first >> 6, tag, constructed: (first & 0x20) !== 0, content: buf.subarray(pos + hdr, end), raw: buf.subarray(pos, end) }, next: end };
}

function children(t: Tlv): Tlv[] {
  if (!t.constructed) throw new Error("DER: expected a constructed element");
  const out: Tlv[] = [];
  for (let p = 0; p < t.content.length; ) {
    const { tlv, next } = readTlv(t.content, p);
    out.push(tlv);
    p = next;
  }
  return out;
}

function oidOf(t: Tlv): string {
  if (t.cls !== 0 || t.tag !== 6) throw new Error("DER: expected an OID");
  const b = t.content;
  if (b.length === 0) throw new Error("DER: empty OID");
  const parts: number[] = [];
  let v = 0;
  for (let i = 0; i < b.length; i++) {
    v = v * 128 + (b[i]! & 0x7f);
    if (!(b[i]! & 0x80)) {
      if (parts.length === 0) parts.push(v < 40 ? 0 : v < 80 ? 1 : 2, v < 80 ? v % 40 : v - 80);
      else parts.push(v);
      v = 0;
    }
  }
  return parts.join(".");
}

/** A string-typed value as text: UTF8String as UTF-8, BMPString as UTF-16BE, the rest byte by byte. */
function stringOf(t: Tlv): string {
  if (t.tag === 12) return t.content.toString("utf8");
  if (t.tag === 30) {
    let s = "";
    for (let i = 0; i + 1 < t.content.length; i += 2) s += String.fromCharCode(t.content.readUInt16BE(i));
    return s;
  }
  return t.content.toString("latin1");
}

function timeOf(t: Tlv): Date {
  const s = t.content.toString("latin1");
  let m: RegExpExecArray | null;
  let year: number;
  let rest: string;
  if (t.tag === 23 && (m = /^(\d{2})(\d{10}(?:\d{2})?)(Z|[+-]\d{4})$/.exec(s))) {
    const yy = Number(m[1]);
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
    rest = m[2]! + "|" + m[3]!;
  } else if (t.tag === 24 && (m = /^(\d{4})(\d{10})(?:\.\d+)?(Z|[+-]\d{4})$/.exec(s))) {
    year = Number(m[1]);
    rest = m[2]! + "|" + m[3]!;
  } else {
    throw new Error(`DER: bad time ${JSON.stringify(s)}`);
  }
  const [digits, zone] = rest.split("|") as [string, string];
  const n = (i: number) => Number(digits.slice(i, i + 2) || "0");
  let ms = Date.UTC(year, n(0) - 1, n(2), n(4), n(6), n(8));
  if (zone !== "Z") ms -= (zone[0] === "-" ? -1 : 1) * (Number(zone.slice(1, 3)) * 60 + Number(zone.slice(3, 5))) * 60_000;
  return new Date(ms);
}

// ---------------------------------------------------------------------------------------
// Certificates

/** OpenSSL/node-forge short names of the attribute types a fleet certificate can carry. */
const SHORT_NAMES: Record<string, string> = {
  "2.5.4.3": "CN",
  "2.5.4.6": "C",
  "2.5.4.7": "L",
  "2.5.4.8": "ST",
  "2.5.4.10": "O",
  "2.5.4.11": "OU",
  "1.2.840.113549.1.9.1": "E",
};

export interface NameAttribute {
  oid: string;
  /** "CN", "OU"...; undefined for a type without one. */
  shortName?: string;
  value: string;
}

export interface AltName {
  /** GeneralName tag: 1 email, 2 DNS, 6 URI, 7 IP, ... */
  type: number;
  value: string;
  /** IP SANs: the address as text (IPv6 with its longest zero run shortened). */
  ip?: string;
}

export interface Extension {
  oid: string;
  critical: boolean;
  /** The extension's value (the content of its OCTET STRING). */
  value: Buffer;
}

export interface Certificate {
  der: Buffer;
  /** node:crypto's view, for the signature, the key match and the fingerprint. */
  x509: X509Certificate;
  /** Hex of the serial's bytes, lowercase, as encoded (normalize before comparing). */
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
  subject: NameAttribute[];
  issuer: NameAttribute[];
  extensions: Extension[];
  altNames: AltName[];
  basicConstraints?: { cA: boolean; pathLenConstraint?: number };
}

function nameOf(t: Tlv): NameAttribute[] {
  const out: NameAttribute[] = [];
  for (const set of children(t)) {
    for (const atv of children(set)) {
      const [type, value] = children(atv);
      if (!type || !value) throw new Error("DER: bad name attribute");
      const oid = oidOf(type);
      const shortName = SHORT_NAMES[oid];
      out.push({ oid, ...(shortName ? { shortName } : {}), value: stringOf(value) });
    }
  }
  return out;
}

/** IPv6 text the way node-forge writes it (util.bytesToIPv6): groups without leading zeros,
 * the longest run of two or more zero groups (the first such) as "::". */
function ipv6Text(b: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  let best = { start: -1, len: 0 };
  for (let i = 0; i < 8; ) {
    if (groups[i] !== "0") {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > best.len) best = { start: i, len: j - i };
    i = j;
  }
  if (best.len < 2) return groups.join(":");
  const head = groups.slice(0, best.start).join(":");
  const tail = groups.slice(best.start + best.len).join(":");
  return `${head}::${tail}`;
}

function altNamesOf(value: Buffer): AltName[] {
  const { tlv } = readTlv(value, 0);
  return children(tlv).map((g) => {
    if (g.tag === 7 && !g.constructed) {
      const ip = g.content.length === 4 ? [...g.content].join(".") : g.content.length === 16 ? ipv6Text(g.content) : g.content.toString("hex");
      return { type: 7, value: g.content.toString("latin1"), ip };
    }
    return { type: g.tag, value: g.constructed ? g.content.toString("hex") : g.content.toString("latin1") };
  });
}

function basicConstraintsOf(value: Buffer): { cA: boolean; pathLenConstraint?: number } {
  const { tlv } = readTlv(value, 0);
  let cA = false;
  let pathLen: number | undefined;
  for (const c of children(tlv)) {
    if (c.tag === 1) cA = c.content[0] !== 0;
    else if (c.tag === 2) pathLen = c.content.reduce((n, x) => n * 256 + x, 0);
  }
  return pathLen === undefined ? { cA } : { cA, pathLenConstraint: pathLen };
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/;

/** Parses a PEM (the first CERTIFICATE block) or DER certificate. Throws on anything malformed. */
export function readCertificate(input: string | Uint8Array): Certificate {
  let der: Buffer;
  if (typeof input === "string") {
    const m = PEM_CERT.exec(input);
    if (!m) throw new Error("no PEM CERTIFICATE block");
    const b64 = m[1]!.replace(/\s+/g, "");
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) throw new Error("PEM CERTIFICATE block is not base64");
    der = Buffer.from(b64, "base64");
  } else {
    der = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  }
  const { tlv: top, next } = readTlv(der, 0);
  if (next !== der.length) throw new Error("DER: trailing bytes after the certificate");
  const [tbs] = children(top);
  if (!tbs) throw new Error("DER: empty certificate");
  const f = children(tbs);
  let i = 0;
  if (f[i]?.cls === 2 && f[i]?.tag === 0) i++; // [0] version
  const serial = f[i++];
  i++; // signature algorithm
  const issuer = f[i++];
  const validity = f[i++];
  const subject = f[i++];
  i++; // subjectPublicKeyInfo
  if (!serial || serial.tag !== 2 || !issuer || !validity || !subject) throw new Error("DER: not a TBSCertificate");
  const [from, to] = children(validity);
  if (!from || !to) throw new Error("DER: bad validity");
  const extensions: Extension[] = [];
  for (; i < f.length; i++) {
    if (f[i]!.cls !== 2 || f[i]!.tag !== 3) continue;
    const [seq] = children(f[i]!);
    for (const e of seq ? children(seq) : []) {
      const parts = children(e);
      const oid = oidOf(parts[0]!);
      const critical = parts.length === 3 && parts[1]!.tag === 1 && parts[1]!.content[0] !== 0;
      const value = parts[parts.length - 1]!;
      if (value.tag !== 4) throw new Error("DER: extension value is not an OCTET STRING");
      extensions.push({ oid, critical, value: value.content });
    }
  }
  const san = extensions.find((e) => e.oid === "2.5.29.17");
  const bc = extensions.find((e) => e.oid === "2.5.29.19");
  const x509 = new X509Certificate(der);
  return {
    der,
    x509,
    serialNumber: serial.content.toString("hex"),
    notBefore: timeOf(from),
    notAfter: timeOf(to),
    subject: nameOf(subject),
    issuer: nameOf(issuer),
    extensions,
    altNames: san ? altNamesOf(san.value) : [],
    ...(bc ? { basicConstraints: basicConstraintsOf(bc.value) } : {}),
  };
}

/** Every value of the attribute `shortName` ("CN", "OU"...), in order. */
export function fieldValues(name: readonly NameAttribute[], shortName: string): string[] {
  return name.filter((a) => a.shortName === shortName).map((a) => a.value);
}

function sameName(a: readonly NameAttribute[], b: readonly NameAttribute[]): boolean {
  return a.length === b.length && a.every((x, k) => x.oid === b[k]!.oid && x.value === b[k]!.value);
}

/** Whether `cert` names `ca` as its issuer and `ca`'s key signed it (what node-forge's
 * ca.verify(cert) checked); never throws. */
export function signedBy(cert: Certificate, ca: Certificate): boolean {
  try {
    return sameName(cert.issuer, ca.subject) && cert.x509.verify(ca.x509.publicKey);
  } catch {
    return false;
  }
}

/** Whether `key` is the private key of `cert`'s public key. */
export function keyMatches(key: KeyObject, cert: Certificate): boolean {
  try {
    return cert.x509.checkPrivateKey(key);
  } catch {
    return false;
  }
}

/**
 * The roles an enroller's X.509 name constraints permit: the URI hosts of its permitted
 * subtrees that also appear as an OU of a permitted directory name; [] if none.
 */
export function permittedRoles(cert: Certificate): string[] {
  const ext = cert.extensions.find((e) => e.oid === "2.5.29.30");
  if (!ext) return [];
  try {
    const { tlv: nc } = readTlv(ext.value, 0);
    const permitted = children(nc).find((n) => n.cls === 2 && n.tag === 0);
    if (!permitted) return [];
    const uris: string[] = [];
    const ous: string[] = [];
    for (const sub of children(permitted)) {
      const base = children(sub)[0]!;
      if (base.cls !== 2) continue;
      if (base.tag === 6) uris.push(base.content.toString("latin1"));
      if (base.tag === 4) for (const a of nameOf(children(base)[0]!)) if (a.oid === "2.5.4.11") ous.push(a.value);
    }
    return uris.filter((u) => ous.includes(u));
  } catch {
    return [];
  }
}
