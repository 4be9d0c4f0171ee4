// The fleet PKI: one CA per fleet, one certificate per device, one bundle file per device.
//
// Identity lives in the certificate so the relay can enforce it on a peer without any other
// lookup: subject O="agent fleet", OU=ROLE, CN=ID, plus a URI SAN "agent://ROLE/ID". The two
// must agree (`certificateIdentity`). Relay certificates also carry their --host names as DNS
// or IP SANs and serverAuth; every device certificate has clientAuth.
//
// CA directory (mode 0700), written by `agent pki init|issue|revoke`:
//   ca.crt        fleet CA certificate (self-signed, CA:true, pathlen 1, keyCertSign+cRLSign;
//                 pathlen 1 leaves room for one enroller under it, src/pki-enroll.ts; CAs made
//                 before enrollment have pathlen 0 and cannot issue an enroller)
//   ca.key        its private key, PKCS#8, mode 0600
//   index.json    every issued certificate: {version: 1, certs: CertRecord[]}
//   certs/SERIAL.crt  a copy of each issued certificate
//   revoked       the revocation list a relay reads (--revocations), format below
//   .lock         present while a command changes the directory
// Every file is written to a temporary name (with its final mode from the start) and renamed
// into place, so a reader never sees half a file. An existing directory with group/other
// permissions is tightened to 0700 by `init` only when it is empty; otherwise refused.
//
// Revocation list, text, one certificate per line:
//   # agent revocations v1          (required first line)
//   # other comment lines and blank lines are ignored
//   SERIALHEX ID REVOKED-AT         (lowercase hex serial, device id, ISO 8601 UTC time)
//
// Bundle, text, PEM-based so openssl reads it (`openssl x509 -in FILE` sees the device cert):
//   # agent bundle v1               (required first line)
//   # role: onsite
//   # id: site-1
//   -----BEGIN CERTIFICATE-----     device certificate
//   -----BEGIN PRIVATE KEY-----     its key, PKCS#8, unencrypted (the file is mode 0600)
//   -----BEGIN CERTIFICATE-----     fleet CA certificate
//   -----BEGIN CERTIFICATE-----     optional: the enroller that signed the device certificate
//                                   (a device enrolled at the relay, src/pki-enroll.ts)
//
// Pure helpers first, then thin file I/O. Nothing here prints, exits or logs, and no error
// message ever includes key material.
//
// Reading certificates (bundles, peers, revocation checks) is src/x509.ts, on node:crypto.
// node-forge (11-15 MiB of RSS once loaded) only signs: it is loaded on first use by
// `forge()`, i.e. by `agent pki` and by a relay's first enrollment signature, never by a
// daemon's start or a handshake (test/forge-lazy.test.ts).
import type Forge from "node-forge";
import { createPrivateKey, generateKeyPairSync, randomBytes, type KeyObject } from "node:crypto";
import { existsSync, realpathSync } from "node:fs";
import { chmod, mkdir, open, readdir, readFile, stat, unlink, type FileHandle } from "node:fs/promises";
import { isIP } from "node:net";
import path from "node:path";
import { ROLES, type Role } from "./config.ts";
import { RuntimeError, UsageError } from "./errors.ts";
import { isHostname, parseIPv4 } from "./netaddr.ts";
import { stageFile, writeFileAtomic, type StagedFile } from "./os/atomic.ts";
import { fieldValues, keyMatches, readCertificate, signedBy, type AltName, type Certificate, type NameAttribute } from "./x509.ts";

let forgeLib: typeof Forge | undefined;
/** node-forge, loaded on the first call (a plain require: the bundler of build/release.ts
 * still packs it into the executable, and the signing functions stay synchronous). */
export function forge(): typeof Forge {
  return (forgeLib ??= require("node-forge") as typeof Forge);
}

export { ROLES, type Role };

export const ID_PATTERN = /^[a-z0-9][a-z0-9._-]{0,62}$/;
export const ID_RULE = "1-63 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit";
export const FLEET_ORG = "agent fleet";
export const DEFAULT_CA_NAME = "agent fleet CA";
export const DEFAULT_CA_DAYS = 3650;
export const MAX_CA_DAYS = 7300;
export const DEFAULT_DEVICE_DAYS = 825;
export const MAX_DEVICE_DAYS = 3650;
/** notBefore is set this far in the past so a device whose clock lags a little accepts it. */
export const CLOCK_SKEW_MS = 5 * 60_000;
export const RSA_BITS = 2048;
export const BUNDLE_HEADER = "# agent bundle v1";
export const REVOCATIONS_HEADER = "# agent revocations v1";
/** Limits checked before reading a whole file into memory. */
export const MAX_BUNDLE_BYTES = 1 << 20;
export const MAX_REVOCATIONS_BYTES = 16 << 20;
export const MAX_INDEX_BYTES = 64 << 20;

const DAY_MS = 86_400_000;

// ---------------------------------------------------------------------------------------
// Identifiers, roles, hosts, serials, days

export function isRole(v: unknown): v is Role {
  return typeof v === "string" && (ROLES as readonly string[]).includes(v);
}

export function isValidId(id: string): boolean {
  return ID_PATTERN.test(id);
}

/** Returns the id or throws a UsageError quoting the rule. */
export function validateId(id: string): string {
  if (!isValidId(id)) {
    throw new UsageError(`invalid id ${JSON.stringify(id)}: an id is ${ID_RULE}`, "for example site-1, relay.eu-1 or tech_anna");
  }
  return id;
}

export function validateRole(role: string): Role {
  if (!isRole(role)) throw new UsageError(`invalid role ${JSON.stringify(role)}: expected one of ${ROLES.join(", ")}`, "for example --role onsite");
  return role;
}

export interface HostName {
  type: "dns" | "ip";
  /** Lowercased DNS name, or the canonical text of the IP address. */
  value: string;
}

/** A relay --host: a DNS name, an IPv4 literal or an IPv6 literal (brackets optional). */
export function parseHost(text: string): HostName {
  const bad = (why: string) =>
    new UsageError(`invalid --host ${JSON.stringify(text)}: ${why}`, "give a DNS name such as relay.example.net or an IP address such as 203.0.113.5");
  let t = text;
  if (t.startsWith("[") && t.endsWith("]")) t = t.slice(1, -1);
  if (t.includes(":")) {
    if (t.includes("%") || isIP(t) !== 6) throw bad("not a valid IPv6 address");
    return { type: "ip", value: new URL(`http://[${t}]/`).hostname.slice(1, -1) };
  }
  if (/^[\d.]+$/.test(t)) {
    try {
      parseIPv4(t);
    } catch (e) {
      throw bad((e as Error).message);
    }
    return { type: "ip", value: t };
  }
  const lower = t.toLowerCase();
  if (!isHostname(lower)) throw bad("expected a DNS name (labels of letters, digits and '-', separated by '.') or an IP address");
  return { type: "dns", value: lower };
}

/** Parses and de-duplicates --host values, keeping their order. */
export function parseHosts(texts: readonly string[]): HostName[] {
  const seen = new Set<string>();
  const out: HostName[] = [];
  for (const t of texts) {
    const h = parseHost(t);
    if (seen.has(h.value)) continue;
    seen.add(h.value);
    out.push(h);
  }
  return out;
}

/** Whole days within [min, max], from a flag value or a number. */
export function parseDays(v: string | number, min: number, max: number, flagName = "--days"): number {
  const n = typeof v === "number" ? v : /^[1-9]\d{0,5}$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(`${flagName} must be a whole number of days from ${min} to ${max}, got ${JSON.stringify(String(v))}`, `for example ${flagName} 825`);
  }
  return n;
}

/** A random positive 128-bit serial as 32 lowercase hex digits. The top byte is 0x10-0x7f so
 * the DER integer needs no sign byte and the hex has no leading zero (always 32 digits). */
export function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x10;
  return b.toString("hex");
}

/** Lowercase hex without leading zeros: the form serials are compared in (node:tls reports
 * them uppercase, openssl sometimes with leading zeros). */
export function normalizeSerial(hex: string): string {
  if (!/^[0-9a-fA-F]{1,40}$/.test(hex)) throw new Error(`expected a certificate serial of 1-40 hex digits, got ${JSON.stringify(hex)}`);
  return hex.toLowerCase().replace(/^0+(?=.)/, "");
}

/** ISO 8601 UTC to the second, the precision certificates carry. */
export function isoSeconds(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

function wholeSeconds(ms: number): Date {
  return new Date(Math.floor(ms / 1000) * 1000);
}

// ---------------------------------------------------------------------------------------
// Certificates

export interface KeyPair {
  /** PKCS#8 "PRIVATE KEY" PEM. */
  keyPem: string;
  privateKey: Forge.pki.rsa.PrivateKey;
  publicKey: Forge.pki.rsa.PublicKey;
}

/** RSA key from node:crypto (native, fast, OS RNG), converted to forge for signing. */
export function generateKeyPair(bits = RSA_BITS): KeyPair {
  const kp = generateKeyPairSync("rsa", {
    modulusLength: bits,
    publicKeyEncoding: { type: "spki", format: "pem" },
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
  });
  return {
    keyPem: kp.privateKey,
    privateKey: forge().pki.privateKeyFromPem(kp.privateKey) as Forge.pki.rsa.PrivateKey,
    publicKey: forge().pki.publicKeyFromPem(kp.publicKey) as Forge.pki.rsa.PublicKey,
  };
}

/** "AA:BB:..." SHA-256 of the certificate's DER (the first CERTIFICATE block of the PEM). */
export function fingerprintSha256(certPem: string): string {
  return readCertificate(certPem).x509.fingerprint256.toUpperCase();
}

/** "O=agent fleet, OU=onsite, CN=site-1" */
export function formatName(attrs: readonly NameAttribute[]): string {
  return attrs.map((a) => `${a.shortName ?? a.oid}=${a.value}`).join(", ");
}

/** The fleet CA, ready to sign (node-forge objects: issuing only). */
export interface CaMaterial {
  cert: Forge.pki.Certificate;
  key: Forge.pki.rsa.PrivateKey;
  certPem: string;
}

export interface CreateCaOptions {
  name?: string;
  days?: number;
  now?: Date;
}

/** The kinds of certificate the fleet issues; `signCertificate` turns one into extensions. */
export type CertProfile =
  /** The fleet CA (pathlen 1, keyCertSign + cRLSign) or an enroller under it (pathlen 0,
   * keyCertSign, name-constrained: `nameConstraintsDer`, src/pki-enroll.ts). */
  | { kind: "ca"; pathLen: number; cRLSign: boolean; nameConstraintsDer?: string }
  /** A device (clientAuth) or a relay (serverAuth too): the URI SAN agent://ROLE/ID first. */
  | { kind: "device"; serverAuth: boolean; altNames: Array<{ type: number; value?: string; ip?: string }> };

export interface CertificateSpec {
  /** Subject O="agent fleet", then OU (absent for the fleet CA), then CN. */
  ou?: string;
  cn: string;
  publicKey: Forge.pki.PublicKey;
  serial: string;
  /** Creation time; notBefore is CLOCK_SKEW_MS earlier, in whole seconds. */
  now: number;
  notAfter: Date;
  /** The signing CA's certificate; null: self-signed with `key` (the fleet CA). */
  issuer: Forge.pki.Certificate | null;
  /** The issuer's private key. */
  key: Forge.pki.rsa.PrivateKey;
  profile: CertProfile;
}

/**
 * Builds and signs (SHA-256 with RSA) one certificate: the one place `agent pki init|issue|
 * issue-enroller` and the relay's enrollment make certificates. Extensions, in this order:
 * basicConstraints (critical), keyUsage (critical), extKeyUsage and subjectAltName (devices),
 * nameConstraints (critical; an enroller), subjectKeyIdentifier, authorityKeyIdentifier
 * (unless self-signed). Returns the PEM (LF line ends).
 */
export function signCertificate(spec: CertificateSpec): string {
  const f = forge();
  const cert = f.pki.createCertificate();
  cert.publicKey = spec.publicKey;
  cert.serialNumber = spec.serial;
  cert.validity.notBefore = wholeSeconds(spec.now - CLOCK_SKEW_MS);
  cert.validity.notAfter = spec.notAfter;
  const subject: Forge.pki.CertificateField[] = [
    { name: "organizationName", value: FLEET_ORG },
    ...(spec.ou !== undefined ? [{ shortName: "OU", value: spec.ou }] : []),
    { name: "commonName", value: spec.cn },
  ];
  cert.setSubject(subject);
  cert.setIssuer(spec.issuer ? spec.issuer.subject.attributes : subject);
  const p = spec.profile;
  const exts: object[] = [];
  if (p.kind === "ca") {
    exts.push(
      { name: "basicConstraints", cA: true, pathLenConstraint: p.pathLen, critical: true },
      { name: "keyUsage", keyCertSign: true, ...(p.cRLSign ? { cRLSign: true } : {}), critical: true },
    );
    if (p.nameConstraintsDer !== undefined) exts.push({ id: "2.5.29.30", critical: true, value: p.nameConstraintsDer });
  } else {
    exts.push(
      { name: "basicConstraints", cA: false, critical: true },
      { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
      p.serverAuth ? { name: "extKeyUsage", serverAuth: true, clientAuth: true } : { name: "extKeyUsage", clientAuth: true },
      { name: "subjectAltName", altNames: p.altNames },
    );
  }
  exts.push({ name: "subjectKeyIdentifier" });
  if (spec.issuer) exts.push({ name: "authorityKeyIdentifier", keyIdentifier: spec.issuer.generateSubjectKeyIdentifier().getBytes() });
  cert.setExtensions(exts);
  cert.sign(spec.key, f.md.sha256.create());
  return f.pki.certificateToPem(cert).replace(/\r\n/g, "\n");
}

/** A self-signed fleet CA. Pure apart from key generation and the random serial. */
export function createCa(opts: CreateCaOptions = {}): { certPem: string; keyPem: string } {
  const name = opts.name ?? DEFAULT_CA_NAME;
  if (name.length < 1 || name.length > 64 || /[\u0000-\u001f\u007f]/.test(name)) {
    throw new UsageError(`invalid CA name ${JSON.stringify(name)}: expected 1-64 printable characters`, 'for example --name "acme fleet CA"');
  }
  const days = parseDays(opts.days ?? DEFAULT_CA_DAYS, 1, MAX_CA_DAYS);
  const now = (opts.now ?? new Date()).getTime();
  const kp = generateKeyPair();
  const certPem = signCertificate({
    cn: name,
    publicKey: kp.publicKey,
    serial: randomSerial(),
    now,
    notAfter: wholeSeconds(now + days * DAY_MS),
    issuer: null,
    key: kp.privateKey,
    // pathlen 1: one enroller (CA:true, pathlen 0, name-constrained to onsite) may sit below.
    profile: { kind: "ca", pathLen: 1, cRLSign: true },
  });
  return { certPem, keyPem: kp.keyPem };
}

/** Parses a CA certificate and key and checks they belong together and form a CA. */
export function parseCa(certPem: string, keyPem: string, where = "CA"): CaMaterial {
  const f = forge();
  let cert: Forge.pki.Certificate;
  let key: Forge.pki.rsa.PrivateKey;
  try {
    cert = f.pki.certificateFromPem(certPem);
  } catch (e) {
    throw new RuntimeError(`${where}: the CA certificate cannot be parsed`, undefined, { cause: e });
  }
  try {
    key = f.pki.privateKeyFromPem(keyPem) as Forge.pki.rsa.PrivateKey;
  } catch {
    // forge's message could quote key bytes; keep the cause out.
    throw new RuntimeError(`${where}: the CA private key cannot be parsed (expected an unencrypted RSA PKCS#8 key)`);
  }
  const pub = cert.publicKey as Forge.pki.rsa.PublicKey;
  if (!(pub.n && pub.e && key.n.equals(pub.n) && key.e.equals(pub.e))) throw new RuntimeError(`${where}: the CA private key does not match the CA certificate`);
  if ((cert.getExtension("basicConstraints") as { cA?: boolean } | undefined)?.cA !== true) {
    throw new RuntimeError(`${where}: the CA certificate is not a CA (basicConstraints CA:true missing)`);
  }
  return { cert, key, certPem };
}

/** Whether `key` (a PKCS#8 PEM or a KeyObject) is the private key of `cert`. */
export function keyMatchesCertificate(key: KeyObject | string, cert: Certificate): boolean {
  try {
    return keyMatches(typeof key === "string" ? createPrivateKey(key) : key, cert);
  } catch {
    return false;
  }
}

function isCaCertificate(cert: Certificate): boolean {
  return cert.basicConstraints?.cA === true;
}

export interface IssueRequest {
  role: Role;
  id: string;
  /** Relay only, at least one: DNS names or IP literals. */
  hosts?: readonly string[];
  days?: number;
  now?: Date;
}

export interface IssuedCertificate {
  certPem: string;
  keyPem: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
  hosts: string[];
}

/** Checks an issue request without touching anything; returns the parsed hosts and days. */
export function checkIssueRequest(req: IssueRequest): { hosts: HostName[]; days: number } {
  validateRole(req.role);
  validateId(req.id);
  const days = parseDays(req.days ?? DEFAULT_DEVICE_DAYS, 1, MAX_DEVICE_DAYS);
  const hostTexts = req.hosts ?? [];
  if (req.role !== "relay" && hostTexts.length > 0) {
    throw new UsageError(`--host is only for relay certificates, not ${req.role}`, `drop --host, or use --role relay for the relay's certificate`);
  }
  if (req.role === "relay" && hostTexts.length === 0) {
    throw new UsageError("a relay certificate needs at least one --host (the name or address devices dial)", "for example --host relay.example.net --host 203.0.113.5");
  }
  return { hosts: parseHosts(hostTexts), days };
}

/** Signs a new device certificate with the CA. */
export function issueCertificate(ca: CaMaterial, req: IssueRequest): IssuedCertificate {
  const { hosts, days } = checkIssueRequest(req);
  const now = (req.now ?? new Date()).getTime();
  const caNotAfter = ca.cert.validity.notAfter.getTime();
  if (now > caNotAfter || now < ca.cert.validity.notBefore.getTime() - CLOCK_SKEW_MS) {
    throw new RuntimeError(
      `the fleet CA is not valid now (valid ${isoSeconds(ca.cert.validity.notBefore)} to ${isoSeconds(ca.cert.validity.notAfter)})`,
      "check the clock; an expired CA needs a new fleet (agent pki init in another directory)",
    );
  }
  const notAfter = wholeSeconds(now + days * DAY_MS);
  if (notAfter.getTime() > caNotAfter) {
    const left = Math.floor((caNotAfter - now) / DAY_MS);
    throw new UsageError(
      `--days ${days} would outlive the fleet CA, which expires ${isoSeconds(ca.cert.validity.notAfter)}`,
      left >= 1 ? `use --days ${left} or less` : "the CA expires within a day: create a new fleet CA",
    );
  }
  const kp = generateKeyPair();
  const serial = randomSerial();
  const altNames: Array<{ type: number; value?: string; ip?: string }> = [{ type: 6, value: `agent://${req.role}/${req.id}` }];
  for (const h of hosts) altNames.push(h.type === "ip" ? { type: 7, ip: h.value } : { type: 2, value: h.value });
  const certPem = signCertificate({
    ou: req.role,
    cn: req.id,
    publicKey: kp.publicKey,
    serial,
    now,
    notAfter,
    issuer: ca.cert,
    key: ca.key,
    profile: { kind: "device", serverAuth: req.role === "relay", altNames },
  });
  return {
    certPem,
    keyPem: kp.keyPem,
    serial,
    notBefore: wholeSeconds(now - CLOCK_SKEW_MS),
    notAfter,
    hosts: hosts.map((h) => h.value),
  };
}
/** The identity a certificate carries failed a check; the relay refuses such a peer. */
export class IdentityError extends Error {
  override readonly name = "IdentityError";
}

export interface CertIdentity {
  id: string;
  role: Role;
  /** Normalized (lowercase, no leading zeros). */
  serial: string;
  notBefore: Date;
  notAfter: Date;
  /** DNS and IP SANs (relay certificates). */
  hosts: string[];
  /** Every SAN in openssl's notation: "URI:agent://relay/r1", "DNS:relay.example.net", "IP:10.0.0.1". */
  sans: string[];
  subject: string;
  issuer: string;
}

/** Accepts a PEM string or a DER certificate (node:tls `getPeerCertificate().raw`). */
export function parseCertificate(cert: string | Uint8Array): Certificate {
  try {
    return readCertificate(cert);
  } catch (e) {
    throw new IdentityError("not a valid X.509 certificate", { cause: e });
  }
}

function altNamesOf(cert: Certificate): AltName[] {
  return cert.altNames;
}

/**
 * The device identity a fleet certificate carries: CN = id, OU = role and the URI SAN
 * agent://ROLE/ID, which must all be present, unique and agree. Does not check the
 * signature, validity dates or revocation: the caller's TLS stack and revocation list do.
 */
export function certificateIdentity(certInput: string | Uint8Array | Certificate): CertIdentity {
  const cert = typeof certInput === "string" || certInput instanceof Uint8Array ? parseCertificate(certInput) : certInput;
  const cns = fieldValues(cert.subject, "CN");
  const ous = fieldValues(cert.subject, "OU");
  if (cns.length !== 1) throw new IdentityError(`certificate subject must have exactly one CN (the device id), found ${cns.length}`);
  if (ous.length !== 1) throw new IdentityError(`certificate subject must have exactly one OU (the role), found ${ous.length}`);
  const id = cns[0]!;
  const ou = ous[0]!;
  if (!isValidId(id)) throw new IdentityError(`certificate CN ${JSON.stringify(id)} is not a valid device id`);
  if (!isRole(ou)) throw new IdentityError(`certificate OU ${JSON.stringify(ou)} is not a role (expected ${ROLES.join(", ")})`);
  const alt = altNamesOf(cert);
  const uris = alt.filter((a) => a.type === 6 && String(a.value).startsWith("agent:"));
  if (uris.length !== 1) throw new IdentityError(`certificate must have exactly one agent:// URI SAN, found ${uris.length}`);
  const expected = `agent://${ou}/${id}`;
  if (uris[0]!.value !== expected) {
    throw new IdentityError(`certificate URI SAN ${JSON.stringify(uris[0]!.value)} disagrees with its subject (expected ${expected})`);
  }
  const sans = alt.map((a) =>
    a.type === 6 ? `URI:${a.value}` : a.type === 2 ? `DNS:${a.value}` : a.type === 7 ? `IP:${a.ip}` : `type${a.type}:${a.value}`,
  );
  const hosts = alt.filter((a) => a.type === 2 || a.type === 7).map((a) => String(a.type === 7 ? a.ip : a.value));
  return {
    id,
    role: ou,
    serial: normalizeSerial(cert.serialNumber),
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    hosts,
    sans,
    subject: formatName(cert.subject),
    issuer: formatName(cert.issuer),
  };
}

/** The role a fleet certificate carries (see `certificateIdentity`). */
export function roleOfCertificate(cert: string | Uint8Array): Role {
  return certificateIdentity(cert).role;
}

/** Whether `cert` was signed by `ca` (issuer name and signature); never throws. */
export function isSignedBy(cert: Certificate, ca: Certificate): boolean {
  return signedBy(cert, ca);
}

// ---------------------------------------------------------------------------------------
// Bundles

export interface BundleContents {
  role: Role;
  id: string;
  certPem: string;
  keyPem: string;
  caPem: string;
  /** An enrolled device's: the enroller certificate between its certificate and the CA. */
  chainPem?: string;
}

export interface Bundle extends BundleContents {
  path: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
  hosts: string[];
}

export function formatBundle(b: BundleContents): string {
  const block = (pem: string) => pem.replace(/\r\n/g, "\n").trim() + "\n";
  return [
    BUNDLE_HEADER + "\n",
    `# role: ${b.role}\n`,
    `# id: ${b.id}\n`,
    "# device certificate, its private key, fleet CA certificate. Keep this file mode 0600.\n",
    block(b.certPem),
    block(b.keyPem),
    block(b.caPem),
    ...(b.chainPem ? [block(b.chainPem)] : []),
  ].join("");
}

interface PemBlock {
  label: string;
  /** 1-based line of the BEGIN line. */
  line: number;
  pem: string;
}

export interface DecodedBundle {
  path: string;
  header: { role?: string; id?: string };
  cert: Certificate;
  ca: Certificate;
  key: KeyObject;
  certPem: string;
  keyPem: string;
  caPem: string;
  /** The optional fourth block: the enroller certificate that signed `cert`. */
  chain?: Certificate;
  chainPem?: string;
}

const BLOCK_NAMES = ["device certificate (CERTIFICATE)", "private key (PRIVATE KEY)", "CA certificate (CERTIFICATE)"] as const;
const BLOCK_LABELS = ["CERTIFICATE", "PRIVATE KEY", "CERTIFICATE"] as const;

function bundleError(file: string, problem: string, header?: { role?: string; id?: string }): UsageError {
  const role = header?.role && isRole(header.role) ? header.role : "ROLE";
  const id = header?.id && isValidId(header.id) ? header.id : "ID";
  // Never suggest writing over a file of a CA directory (ca.crt, ca.key...): `pki issue`
  // refuses it anyway, and a hint must be safe to follow literally.
  const inCa = looksLikeCaDir(path.dirname(file));
  const out = inCa ? `--out ${id}.bundle\` outside the CA directory` : `--force --out ${file}\``;
  return new UsageError(
    `bundle ${file}: ${problem}`,
    `the file is damaged or is not an agent bundle; issue a new one with \`agent pki issue --dir DIR --role ${role} --id ${id} ${out}`,
  );
}

/** A directory that holds a CA's key or index: nothing but `agent pki` writes there. */
function looksLikeCaDir(dir: string): boolean {
  return existsSync(path.join(dir, "ca.key")) || existsSync(path.join(dir, "index.json"));
}

/** The CERTIFICATE blocks of a PEM text that parse as CA certificates (basicConstraints CA:true). */
function caCertificatesIn(text: string): Certificate[] {
  const out: Certificate[] = [];
  for (const m of text.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)) {
    try {
      const c = readCertificate(m[0]);
      if (isCaCertificate(c)) out.push(c);
    } catch {
      // not a certificate we can read: not a CA either
    }
  }
  return out;
}

/** True when the text's first certificate is a CA certificate (ca.crt, a chain starting with
 * one): an agent bundle starts with the device certificate, its CA comes third. */
export function isCaCertificateText(text: string): boolean {
  const first = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/.exec(text);
  return first !== null && caCertificatesIn(first[0]).length > 0;
}

/** Splits a bundle into its header and three parsed blocks; structural problems throw. */
export function decodeBundle(text: string, file: string): DecodedBundle {
  const lines = text.split(/\r?\n/);
  if (lines[0] !== BUNDLE_HEADER) {
    if (isCaCertificateText(text)) {
      throw new UsageError(
        `bundle ${file}: this is a CA certificate, not an agent bundle`,
        `\`agent pki show\` reads a device bundle written by \`agent pki issue --out FILE.bundle\`; to read a certificate: openssl x509 -in ${file} -noout -text`,
      );
    }
    throw bundleError(file, `not an agent bundle: the first line must be ${JSON.stringify(BUNDLE_HEADER)}`);
  }
  const header: { role?: string; id?: string } = {};
  const blocks: PemBlock[] = [];
  let i = 1;
  for (; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.trim() === "") continue;
    if (!line.startsWith("#")) break;
    const m = /^#\s*(role|id):\s*(\S*)\s*$/.exec(line);
    if (!m) continue;
    const key = m[1] as "role" | "id";
    if (header[key] !== undefined) throw bundleError(file, `line ${i + 1}: "${key}" is given twice in the header`);
    header[key] = m[2]!;
  }
  for (; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.trim() === "") continue;
    const begin = /^-----BEGIN ([A-Z0-9 ]+)-----$/.exec(line);
    if (!begin) throw bundleError(file, `line ${i + 1}: unexpected text outside a PEM block`, header);
    const label = begin[1]!;
    const start = i;
    const body: string[] = [line];
    for (i++; ; i++) {
      if (i >= lines.length) throw bundleError(file, `the ${label} block starting at line ${start + 1} has no END line (the file is truncated)`, header);
      const l = lines[i]!;
      body.push(l);
      if (l === `-----END ${label}-----`) break;
      if (l.startsWith("-----")) throw bundleError(file, `line ${i + 1}: expected the END of the ${label} block started at line ${start + 1}`, header);
      if (!/^[A-Za-z0-9+/=]*$/.test(l)) throw bundleError(file, `line ${i + 1}: not base64 inside the ${label} block`, header);
    }
    blocks.push({ label, line: start + 1, pem: body.join("\n") + "\n" });
  }
  if (header.role === undefined) throw bundleError(file, 'the header has no "# role: ROLE" line', header);
  if (header.id === undefined) throw bundleError(file, 'the header has no "# id: ID" line', header);
  for (const b of blocks) {
    if (b.label === "RSA PRIVATE KEY") throw bundleError(file, `line ${b.line}: the key must be PKCS#8 ("PRIVATE KEY"), not "RSA PRIVATE KEY"`, header);
    if (b.label === "ENCRYPTED PRIVATE KEY") throw bundleError(file, `line ${b.line}: encrypted keys are not supported (the file itself is protected by mode 0600)`, header);
  }
  for (let k = 0; k < 3; k++) {
    const b = blocks[k];
    if (!b) throw bundleError(file, `missing the ${BLOCK_NAMES[k]}: a bundle holds the device certificate, its private key and the CA certificate, in that order`, header);
    if (b.label !== BLOCK_LABELS[k]) throw bundleError(file, `block ${k + 1} (line ${b.line}) is ${b.label}; expected the ${BLOCK_NAMES[k]}`, header);
  }
  // A fourth CERTIFICATE: the enroller between an enrolled device's certificate and the CA.
  if (blocks.length > 4 || (blocks.length === 4 && blocks[3]!.label !== "CERTIFICATE")) {
    const extra = blocks[blocks.length === 4 ? 3 : 4]!;
    throw bundleError(file, `unexpected ${extra.label} block at line ${extra.line}: a bundle holds three blocks (four for an enrolled device: its enroller certificate last)`, header);
  }
  const [certB, keyB, caB, chainB] = blocks as [PemBlock, PemBlock, PemBlock, PemBlock | undefined];
  const parseCert = (b: PemBlock, what: string) => {
    try {
      return readCertificate(b.pem);
    } catch (e) {
      throw bundleError(file, `the ${what} at line ${b.line} cannot be parsed: ${(e as Error).message}`, header);
    }
  };
  const cert = parseCert(certB, "device certificate");
  const ca = parseCert(caB, "CA certificate");
  const chain = chainB ? parseCert(chainB, "enroller certificate") : undefined;
  let key: KeyObject;
  try {
    if (!/^-----BEGIN PRIVATE KEY-----\n/.test(keyB.pem)) throw new Error("not PKCS#8");
    key = createPrivateKey(keyB.pem);
    if (key.asymmetricKeyType !== "rsa") throw new Error("not RSA");
  } catch {
    // No cause: a parser's message could echo key bytes.
    throw bundleError(file, `the private key at line ${keyB.line} cannot be parsed (expected an unencrypted RSA PKCS#8 key)`, header);
  }
  return { path: file, header, cert, ca, key, certPem: certB.pem, keyPem: keyB.pem, caPem: caB.pem, ...(chain ? { chain, chainPem: chainB!.pem } : {}) };
}

/** Every consistency problem of a decoded bundle, most fundamental first; empty when sound. */
export function bundleProblems(d: DecodedBundle): string[] {
  const problems: string[] = [];
  if (!isCaCertificate(d.ca)) problems.push("the third block is not a CA certificate (basicConstraints CA:true missing)");
  else if (!isSignedBy(d.ca, d.ca)) problems.push("the CA certificate is not self-signed or its signature is broken");
  if (d.chain) {
    if (isSignedBy(d.chain, d.chain)) problems.push("the fourth block is a self-signed CA, not an enroller: a bundle holds three blocks (four for an enrolled device, its enroller certificate last)");
    else if (!isCaCertificate(d.chain)) problems.push("the fourth block (the enroller) is not a CA certificate");
    else if (!isSignedBy(d.chain, d.ca)) problems.push("the enroller certificate (fourth block) is not signed by the bundle's CA certificate");
    if (!isSignedBy(d.cert, d.chain)) problems.push("the device certificate is not signed by the bundle's enroller certificate (fourth block)");
  } else if (!isSignedBy(d.cert, d.ca)) problems.push("the device certificate is not signed by the bundle's CA certificate");
  if (!keyMatchesCertificate(d.key, d.cert)) problems.push("the private key does not match the device certificate");
  let identity: CertIdentity | undefined;
  try {
    identity = certificateIdentity(d.cert);
  } catch (e) {
    problems.push(`the device certificate carries no valid identity: ${(e as Error).message}`);
  }
  if (identity) {
    if (d.header.role !== identity.role) problems.push(`the header says role ${JSON.stringify(d.header.role)} but the certificate says ${identity.role}`);
    if (d.header.id !== identity.id) problems.push(`the header says id ${JSON.stringify(d.header.id)} but the certificate says ${identity.id}`);
  }
  return problems;
}

/** Parses and checks a bundle's text; `file` names it in errors. Throws UsageError. */
export function parseBundle(text: string, file: string): Bundle {
  const d = decodeBundle(text, file);
  const problems = bundleProblems(d);
  if (problems.length > 0) throw bundleError(file, problems[0]!, d.header);
  const identity = certificateIdentity(d.cert);
  return {
    path: file,
    id: identity.id,
    role: identity.role,
    certPem: d.certPem,
    keyPem: d.keyPem,
    caPem: d.caPem,
    ...(d.chainPem ? { chainPem: d.chainPem } : {}),
    serial: identity.serial,
    notBefore: identity.notBefore,
    notAfter: identity.notAfter,
    hosts: identity.hosts,
  };
}

export function formatMode(mode: number): string {
  return "0" + (mode & 0o777).toString(8).padStart(3, "0");
}

/** Opens a regular file, refusing it when it is larger than `max` bytes. */
async function readLimited(file: string, max: number, what: string, missingHint: string, opts?: { secret: boolean }): Promise<{ text: string; mode: number }> {
  let fh: FileHandle;
  try {
    fh = await open(file, "r");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new UsageError(`${what} ${file} does not exist`, missingHint);
    if (code === "EACCES") throw new UsageError(`${what} ${file} cannot be read: permission denied`, "run as the user that owns it");
    throw new RuntimeError(`cannot open ${what} ${file}`, undefined, { cause: e });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new UsageError(`${what} ${file} is not a regular file`, missingHint);
    if (opts?.secret && (st.mode & 0o077) !== 0) {
      throw new UsageError(
        `${what} ${file} has mode ${formatMode(st.mode)}: it holds a private key, so group and others must have no permission`,
        `chmod 600 ${file}`,
      );
    }
    if (st.size > max) throw new UsageError(`${what} ${file} is ${st.size} bytes, more than the ${max} allowed`, "check that the path names the right file");
    return { text: await fh.readFile("utf8"), mode: st.mode };
  } finally {
    await fh.close();
  }
}

/**
 * Reads and checks a daemon's bundle. Refuses a file that grants group or others any
 * permission (hint `chmod 600 FILE`), a malformed one, a key that does not match its
 * certificate, a certificate its CA did not sign and a header that disagrees with the
 * certificate. Validity dates are not checked here: see `certStatus`.
 */
export async function loadBundle(file: string): Promise<Bundle> {
  const { text } = await readLimited(file, MAX_BUNDLE_BYTES, "bundle", "issue one with `agent pki issue --dir DIR --role ROLE --id ID --out FILE`", {
    secret: true,
  });
  return parseBundle(text, file);
}

export interface BundleReport {
  path: string;
  /** File mode bits, when read from disk. */
  mode?: number;
  header: { role?: string; id?: string };
  identity?: CertIdentity;
  caSubject: string;
  caNotAfter: Date;
  /** The device certificate is signed by the bundle's CA. */
  verified: boolean;
  /** Everything wrong, the file mode included; empty when the bundle is sound. */
  problems: string[];
}

/** For `agent pki show`: reports what a bundle holds and what is wrong with it, where
 * `loadBundle` would stop at the first problem. Structural damage still throws. */
export function inspectBundle(text: string, file: string, mode?: number): BundleReport {
  const d = decodeBundle(text, file);
  const problems = bundleProblems(d);
  let identity: CertIdentity | undefined;
  try {
    identity = certificateIdentity(d.cert);
  } catch {
    identity = undefined;
  }
  if (mode !== undefined && (mode & 0o077) !== 0) {
    problems.push(`mode ${formatMode(mode)} lets group or others reach the private key (chmod 600 ${file})`);
  }
  return {
    path: file,
    ...(mode !== undefined ? { mode: mode & 0o777 } : {}),
    header: d.header,
    ...(identity ? { identity } : {}),
    caSubject: formatName(d.ca.subject),
    caNotAfter: d.ca.notAfter,
    verified: d.chain ? isSignedBy(d.cert, d.chain) && isSignedBy(d.chain, d.ca) : isSignedBy(d.cert, d.ca),
    problems,
  };
}

export async function readBundleReport(file: string): Promise<BundleReport> {
  const { text, mode } = await readLimited(file, MAX_BUNDLE_BYTES, "bundle", "check the path");
  return inspectBundle(text, file, mode);
}

// ---------------------------------------------------------------------------------------
// Revocation list

export interface RevocationEntry {
  serial: string;
  id: string;
  revokedAt: Date;
}

export interface RevocationList {
  entries: RevocationEntry[];
  /** Normalized serials, for `isRevoked`. */
  serials: ReadonlySet<string>;
}

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?Z$/;

/** Parses the `revoked` file. Pure; a malformed line throws a UsageError naming its line. */
export function parseRevocations(text: string, source = "revocation list"): RevocationList {
  const lines = text.split(/\r?\n/);
  const fail = (n: number, why: string) =>
    new UsageError(`${source} line ${n}: ${why}`, "each line is `SERIALHEX ID ISO-TIME`; regenerate the file with `agent pki revoke` rather than editing it");
  if (lines[0] !== REVOCATIONS_HEADER) throw fail(1, `expected the header ${JSON.stringify(REVOCATIONS_HEADER)}`);
  const entries: RevocationEntry[] = [];
  const serials = new Set<string>();
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === "" || line.startsWith("#")) continue;
    const fields = line.split(/\s+/);
    if (fields.length !== 3) throw fail(i + 1, `expected 3 fields (serial, id, time), found ${fields.length}`);
    const [serialText, id, time] = fields as [string, string, string];
    let serial: string;
    try {
      serial = normalizeSerial(serialText);
    } catch (e) {
      throw fail(i + 1, (e as Error).message);
    }
    if (!isValidId(id)) throw fail(i + 1, `invalid id ${JSON.stringify(id)} (an id is ${ID_RULE})`);
    const revokedAt = new Date(time);
    if (!ISO_UTC.test(time) || Number.isNaN(revokedAt.getTime())) throw fail(i + 1, `expected an ISO 8601 UTC time such as 2026-01-31T12:00:00Z, got ${JSON.stringify(time)}`);
    if (serials.has(serial)) continue;
    serials.add(serial);
    entries.push({ serial, id, revokedAt });
  }
  return { entries, serials };
}

export function isRevoked(list: RevocationList, serial: string): boolean {
  try {
    return list.serials.has(normalizeSerial(serial));
  } catch {
    return false;
  }
}

export function formatRevocations(records: readonly CertRecord[]): string {
  const revoked = records
    .filter((r): r is CertRecord & { revoked: string } => r.revoked !== null)
    .sort((a, b) => a.revoked.localeCompare(b.revoked) || a.serial.localeCompare(b.serial));
  return [REVOCATIONS_HEADER, "# SERIAL ID REVOKED-AT; written by `agent pki revoke`, read by the relay (--revocations)", ...revoked.map((r) => `${r.serial} ${r.id} ${r.revoked}`)]
    .join("\n")
    .concat("\n");
}

export async function loadRevocations(file: string): Promise<RevocationList> {
  const { text } = await readLimited(file, MAX_REVOCATIONS_BYTES, "revocation list", "copy DIR/revoked from the CA's directory (`agent pki init` creates it)");
  return parseRevocations(text, `revocation list ${file}`);
}

// ---------------------------------------------------------------------------------------
// Index of issued certificates

export interface CertRecord {
  id: string;
  role: Role;
  serial: string;
  /** ISO 8601 UTC. */
  notBefore: string;
  notAfter: string;
  hosts: string[];
  /** When it was revoked (ISO 8601 UTC), or null. */
  revoked: string | null;
}

export type CertStatus = "valid" | "revoked" | "expired" | "not-yet-valid";

export function certStatus(r: Pick<CertRecord, "notBefore" | "notAfter" | "revoked">, now: Date = new Date()): CertStatus {
  if (r.revoked !== null) return "revoked";
  if (now.getTime() > Date.parse(r.notAfter)) return "expired";
  if (now.getTime() < Date.parse(r.notBefore)) return "not-yet-valid";
  return "valid";
}

export function formatIndex(records: readonly CertRecord[]): string {
  return JSON.stringify({ version: 1, certs: records }, null, 2) + "\n";
}

/** Parses index.json; a damaged index is a RuntimeError naming the entry. */
export function parseIndex(text: string, file: string): CertRecord[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new RuntimeError(`CA index ${file} is not valid JSON`, "restore it from a backup", { cause: e });
  }
  const d = doc as { version?: unknown; certs?: unknown };
  if (typeof doc !== "object" || doc === null || d.version !== 1 || !Array.isArray(d.certs)) {
    throw new RuntimeError(`CA index ${file} is not a version 1 index ({"version": 1, "certs": [...]})`, "restore it from a backup");
  }
  return d.certs.map((c: unknown, i: number) => {
    const r = c as Partial<CertRecord>;
    const ok =
      typeof r === "object" &&
      r !== null &&
      typeof r.id === "string" &&
      isValidId(r.id) &&
      isRole(r.role) &&
      typeof r.serial === "string" &&
      /^[0-9a-f]{1,40}$/.test(r.serial) &&
      typeof r.notBefore === "string" &&
      !Number.isNaN(Date.parse(r.notBefore)) &&
      typeof r.notAfter === "string" &&
      !Number.isNaN(Date.parse(r.notAfter)) &&
      Array.isArray(r.hosts) &&
      r.hosts.every((h) => typeof h === "string") &&
      (r.revoked === null || (typeof r.revoked === "string" && ISO_UTC.test(r.revoked)));
    if (!ok) throw new RuntimeError(`CA index ${file}: entry ${i + 1} is malformed`, "restore it from a backup");
    return { id: r.id!, role: r.role!, serial: r.serial!, notBefore: r.notBefore!, notAfter: r.notAfter!, hosts: r.hosts!, revoked: r.revoked! };
  });
}

// ---------------------------------------------------------------------------------------
// Files

export interface CaPaths {
  dir: string;
  cert: string;
  key: string;
  index: string;
  revoked: string;
  certs: string;
  lock: string;
}

export function caPaths(dir: string): CaPaths {
  return {
    dir,
    cert: path.join(dir, "ca.crt"),
    key: path.join(dir, "ca.key"),
    index: path.join(dir, "index.json"),
    revoked: path.join(dir, "revoked"),
    certs: path.join(dir, "certs"),
    lock: path.join(dir, ".lock"),
  };
}

function errno(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/** Every file of the CA directory and every bundle is written whole or not at all (`src/os/atomic.ts`). */
async function writeAtomic(file: string, data: string, mode: number, noClobber = false): Promise<void> {
  try {
    writeFileAtomic(file, data, { mode, noClobber });
  } catch (e) {
    if (errno(e) === "EEXIST" && noClobber) throw new UsageError(`${file} already exists; refusing to overwrite it`, "move it away first");
    throw new RuntimeError(`cannot write ${file}`, undefined, { cause: e });
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (e) {
    if (errno(e) === "ENOENT") return false;
    throw new RuntimeError(`cannot check ${file}`, undefined, { cause: e });
  }
}

async function withLock<T>(p: CaPaths, fn: () => Promise<T>): Promise<T> {
  let fh: FileHandle;
  try {
    fh = await open(p.lock, "wx", 0o600);
  } catch (e) {
    if (errno(e) === "EEXIST") {
      throw new RuntimeError(`CA directory ${p.dir} is busy: another \`agent pki\` command holds ${p.lock}`, `if no other command is running, remove ${p.lock}`);
    }
    throw new RuntimeError(`cannot lock CA directory ${p.dir}`, undefined, { cause: e });
  }
  try {
    await fh.writeFile(`${process.pid}\n`);
    await fh.close();
    return await fn();
  } finally {
    await unlink(p.lock).catch(() => {});
  }
}

const noCaHint = (dir: string) => `create one with \`agent pki init --dir ${dir}\`, or check --dir`;

/** Checks the CA directory exists, is a directory and is private (mode 0700 or tighter). */
async function checkCaDir(p: CaPaths): Promise<void> {
  let st;
  try {
    st = await stat(p.dir);
  } catch (e) {
    if (errno(e) === "ENOENT") throw new UsageError(`no fleet CA in ${p.dir}: the directory does not exist`, noCaHint(p.dir));
    throw new RuntimeError(`cannot read CA directory ${p.dir}`, undefined, { cause: e });
  }
  if (!st.isDirectory()) throw new UsageError(`${p.dir} is not a directory`, "--dir names the CA directory created by `agent pki init`");
  if ((st.mode & 0o077) !== 0) {
    throw new UsageError(`CA directory ${p.dir} has mode ${formatMode(st.mode)}: it holds the CA key, so group and others must have no permission`, `chmod 700 ${p.dir}`);
  }
  if (!(await exists(p.cert)) || !(await exists(p.index))) throw new UsageError(`no fleet CA in ${p.dir} (ca.crt or index.json is missing)`, noCaHint(p.dir));
}

async function readIndex(p: CaPaths): Promise<CertRecord[]> {
  const { text } = await readLimited(p.index, MAX_INDEX_BYTES, "CA index", noCaHint(p.dir));
  return parseIndex(text, p.index);
}

async function openCa(p: CaPaths): Promise<CaMaterial> {
  await checkCaDir(p);
  const { text: keyPem } = await readLimited(p.key, MAX_BUNDLE_BYTES, "CA key", noCaHint(p.dir), { secret: true });
  const { text: certPem } = await readLimited(p.cert, MAX_BUNDLE_BYTES, "CA certificate", noCaHint(p.dir));
  return parseCa(certPem, keyPem, `CA in ${p.dir}`);
}

export interface InitResult {
  paths: CaPaths;
  name: string;
  certPem: string;
  fingerprint: string;
  notAfter: Date;
}

/**
 * Creates the fleet CA in `dir` (created with mode 0700 if missing). An existing empty
 * directory with looser permissions is tightened to 0700; a non-empty one is refused, as is
 * a directory that already holds a CA.
 */
export async function initCa(dir: string, opts: CreateCaOptions = {}): Promise<InitResult> {
  const p = caPaths(dir);
  // Validate the options before creating anything.
  const name = opts.name ?? DEFAULT_CA_NAME;
  parseDays(opts.days ?? DEFAULT_CA_DAYS, 1, MAX_CA_DAYS);
  let created: string | undefined;
  try {
    created = await mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    if (errno(e) === "EEXIST" || errno(e) === "ENOTDIR") throw new UsageError(`${dir} exists and is not a directory`, "choose another --dir");
    throw new RuntimeError(`cannot create CA directory ${dir}`, undefined, { cause: e });
  }
  if (created === undefined) {
    const st = await stat(dir);
    if (!st.isDirectory()) throw new UsageError(`${dir} exists and is not a directory`, "choose another --dir");
    for (const f of [p.key, p.cert, p.index]) {
      if (await exists(f)) {
        throw new UsageError(
          `${dir} already holds a fleet CA (${path.basename(f)} exists); refusing to overwrite it`,
          `issue certificates with \`agent pki issue --dir ${dir} ...\`, or choose another --dir for a new fleet`,
        );
      }
    }
    if ((st.mode & 0o077) !== 0) {
      const entries = await readdir(dir);
      if (entries.length > 0) {
        throw new UsageError(
          `${dir} has mode ${formatMode(st.mode)} and is not empty; the CA directory must be private`,
          `use a new directory, or \`chmod 700 ${dir}\` if it is meant for the CA`,
        );
      }
      await chmod(dir, 0o700);
    }
  }
  return withLock(p, async () => {
    const ca = createCa({ ...opts, name });
    // ca.key first and exclusively: of two racing inits, exactly one wins.
    await writeAtomic(p.key, ca.keyPem, 0o600, true);
    await writeAtomic(p.cert, ca.certPem, 0o644, true);
    await mkdir(p.certs, { mode: 0o700 }).catch((e) => {
      if (errno(e) !== "EEXIST") throw new RuntimeError(`cannot create ${p.certs}`, undefined, { cause: e });
    });
    await writeAtomic(p.index, formatIndex([]), 0o644, true);
    await writeAtomic(p.revoked, formatRevocations([]), 0o644, false);
    return { paths: p, name, certPem: ca.certPem, fingerprint: fingerprintSha256(ca.certPem), notAfter: readCertificate(ca.certPem).notAfter };
  });
}

export interface IssueFileRequest extends IssueRequest {
  /** Where the bundle goes (mode 0600). */
  out: string;
  /** Replace the id's valid certificates (they are revoked) and an existing `out` file. */
  force?: boolean;
}

export interface IssueResult {
  record: CertRecord;
  out: string;
  /** The id's certificates revoked because --force replaced them. */
  superseded: CertRecord[];
}

/**
 * Issues a device certificate and writes its bundle. Refuses an id that still has a valid
 * certificate, and an existing `out`, unless `force`: then the old certificates are revoked.
 * Order: the bundle is staged first, then the cert copy, index and revocation list are
 * written, then the bundle is moved into place.
 */
export async function issueToFile(dir: string, req: IssueFileRequest): Promise<IssueResult> {
  checkIssueRequest(req);
  const out = req.out;
  const force = req.force ?? false;
  const outDir = path.dirname(path.resolve(out));
  try {
    if (!(await stat(outDir)).isDirectory()) throw new Error("not a directory");
  } catch {
    throw new UsageError(`cannot write ${out}: directory ${outDir} does not exist`, "create it first or choose another --out");
  }
  refuseOutInCaDir(dir, out, req.id);
  try {
    const st = await stat(out);
    if (st.isDirectory()) throw new UsageError(`--out ${out} is a directory`, `name the bundle file, e.g. --out ${path.join(out, `${req.id}.bundle`)}`);
    // Even with --force: replacing a CA certificate breaks every later `pki issue` and every
    // device that trusts it.
    if (st.isFile() && st.size <= MAX_BUNDLE_BYTES && isCaCertificateText(await readFile(out, "utf8").catch(() => ""))) {
      throw new UsageError(`${out} holds a CA certificate; refusing to overwrite it, even with --force`, `write the bundle to a new file, e.g. --out ${req.id}.bundle`);
    }
    if (!force) throw new UsageError(`${out} already exists; refusing to overwrite it`, "choose another --out, or add --force to replace it");
  } catch (e) {
    if (e instanceof UsageError) throw e;
    if (errno(e) !== "ENOENT") throw new RuntimeError(`cannot check ${out}`, undefined, { cause: e });
  }
  const p = caPaths(dir);
  const ca = await openCa(p);
  const now = req.now ?? new Date();
  return withLock(p, async () => {
    const records = await readIndex(p);
    const current = records.filter((r) => r.id === req.id && certStatus(r, now) !== "revoked" && certStatus(r, now) !== "expired");
    if (current.length > 0 && !force) {
      const c = current[0]!;
      throw new UsageError(
        `id ${req.id} already has a valid ${c.role} certificate (serial ${c.serial}, expires ${c.notAfter})`,
        `add --force to replace it (the old certificate is revoked), or revoke it first with \`agent pki revoke --dir ${dir} --id ${req.id}\``,
      );
    }
    const issued = issueCertificate(ca, { ...req, now });
    const identity = certificateIdentity(issued.certPem);
    const bundleText = formatBundle({ role: identity.role, id: identity.id, certPem: issued.certPem, keyPem: issued.keyPem, caPem: ca.certPem });
    let staged: StagedFile;
    try {
      staged = stageFile(out, bundleText, { mode: 0o600 });
    } catch (e) {
      throw new RuntimeError(`cannot write bundle ${out}`, undefined, { cause: e });
    }
    const record: CertRecord = {
      id: identity.id,
      role: identity.role,
      serial: issued.serial,
      notBefore: isoSeconds(issued.notBefore),
      notAfter: isoSeconds(issued.notAfter),
      hosts: issued.hosts,
      revoked: null,
    };
    const revokedAt = isoSeconds(now);
    const superseded: CertRecord[] = [];
    const next = records.map((r) => {
      if (!current.includes(r)) return r;
      const s = { ...r, revoked: revokedAt };
      superseded.push(s);
      return s;
    });
    next.push(record);
    try {
      await writeAtomic(path.join(p.certs, `${issued.serial}.crt`), issued.certPem, 0o644, true);
      await writeAtomic(p.index, formatIndex(next), 0o644);
      if (superseded.length > 0) await writeAtomic(p.revoked, formatRevocations(next), 0o644);
    } catch (e) {
      staged.discard();
      throw new RuntimeError(`cannot record certificate ${issued.serial} for ${req.id} in ${dir}; no bundle was written`, undefined, { cause: e });
    }
    try {
      staged.publish(!force);
    } catch (e) {
      throw new RuntimeError(
        `certificate ${issued.serial} for ${req.id} is recorded in ${p.index} but its bundle could not be written to ${out}`,
        `run the same command again with --force to issue a replacement`,
        { cause: e },
      );
    }
    return { record, out, superseded };
  });
}

/** Refuses an --out inside the CA directory (symlinks resolved): ca.crt, ca.key, the index and
 * the certificate copies live there, and a bundle has no business next to them. */
function refuseOutInCaDir(dir: string, out: string, id: string): void {
  const real = (p: string) => {
    try {
      return realpathSync(p);
    } catch {
      return path.resolve(p);
    }
  };
  const caDir = real(dir);
  const target = path.join(real(path.dirname(path.resolve(out))), path.basename(out));
  const rel = path.relative(caDir, target);
  if (rel === "" || (!rel.startsWith("..") && !path.isAbsolute(rel))) {
    throw new UsageError(
      `--out ${out} is inside the CA directory ${dir}; refusing to write a bundle there`,
      `write the bundle outside the CA directory, e.g. --out ${id}.bundle, and copy it to the device`,
    );
  }
}

export interface RevokeResult {
  /** Certificates revoked by this call. */
  revoked: CertRecord[];
  /** Certificates of the id that were already revoked. */
  alreadyRevoked: CertRecord[];
  revocationsFile: string;
}

/** Revokes every unrevoked certificate of `id` and rewrites DIR/revoked. Unknown id: UsageError. */
export async function revokeId(dir: string, id: string, now: Date = new Date()): Promise<RevokeResult> {
  validateId(id);
  const p = caPaths(dir);
  await checkCaDir(p);
  return withLock(p, async () => {
    const records = await readIndex(p);
    const mine = records.filter((r) => r.id === id);
    if (mine.length === 0) throw new UsageError(`no certificate was ever issued to id ${id} in ${dir}`, `see \`agent pki list --dir ${dir}\``);
    const at = isoSeconds(now);
    const revoked: CertRecord[] = [];
    const next = records.map((r) => {
      if (r.id !== id || r.revoked !== null) return r;
      const s = { ...r, revoked: at };
      revoked.push(s);
      return s;
    });
    if (revoked.length > 0) {
      await writeAtomic(p.index, formatIndex(next), 0o644);
    }
    // Rewritten even when nothing changed, so a damaged or missing list is repaired.
    await writeAtomic(p.revoked, formatRevocations(next), 0o644);
    return { revoked, alreadyRevoked: mine.filter((r) => !revoked.some((x) => x.serial === r.serial)), revocationsFile: p.revoked };
  });
}

/** Every certificate issued in `dir`, oldest first. */
export async function listCerts(dir: string): Promise<CertRecord[]> {
  const p = caPaths(dir);
  let st;
  try {
    st = await stat(p.dir);
  } catch (e) {
    if (errno(e) === "ENOENT") throw new UsageError(`no fleet CA in ${dir}: the directory does not exist`, noCaHint(dir));
    throw new RuntimeError(`cannot read CA directory ${dir}`, undefined, { cause: e });
  }
  if (!st.isDirectory()) throw new UsageError(`${dir} is not a directory`, "--dir names the CA directory created by `agent pki init`");
  return readIndex(p);
}

