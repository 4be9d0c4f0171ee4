// Flash-and-run enrollment, the certificate side (issue 14 §8): the enroller certificate the
// fleet CA issues to a relay, the certificate request a device makes with a key it generated
// itself, the relay's checks of that request and its signature.
//
// The enroller is a CA certificate under the fleet CA: CA:true, pathlen 0 (it signs devices,
// never another CA), keyUsage keyCertSign, and X.509 name constraints that permit only onsite
// identities: the directory name O="agent fleet", OU=onsite (the subject every onsite
// certificate has) and the URI host "onsite" (agent://onsite/ID). TLS enforces them: a chain
// leaf → enroller → fleet CA whose leaf says OU=master or agent://relay/… fails verification
// ("permitted subtree violation") on every relay and in `openssl verify`. The fleet CA's key
// signs the enroller once, on the CA host; the relay holds only the enroller's key.
//
// Enroller file, text, written by `agent pki issue-enroller` (mode 0600):
//   # agent enroller v1             (required first line)
//   # id: enroll-eu-1
//   -----BEGIN CERTIFICATE-----     enroller certificate
//   -----BEGIN PRIVATE KEY-----     its key, PKCS#8
//   -----BEGIN CERTIFICATE-----     fleet CA certificate
//
// A device's id is derived from its own public key: PREFIX + the first 16 hex digits of the
// SHA-256 of the key's SubjectPublicKeyInfo. Identical images thus get distinct ids, a restart
// keeps the id (the key is kept in the state dir), and the relay checks the request's CN
// against its key, so no token holder can claim another device's id.
//
// Pure apart from key generation, random serials and the file I/O at the end.
//
// node-forge is loaded (src/pki.ts `forge()`) only to sign, and to read a device's request on
// the relay: a relay that loads its enroller at start and a device that enrolls do not load it.
import type Forge from "node-forge";
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, type KeyObject } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { RuntimeError, UsageError } from "./errors.ts";
import { writeFileAtomic } from "./os/atomic.ts";
import {
  caPaths,
  FLEET_ORG,
  forge,
  isoSeconds,
  isSignedBy,
  isValidId,
  keyMatchesCertificate,
  normalizeSerial,
  parseCa,
  parseDays,
  randomSerial,
  signCertificate,
  validateId,
  type CaMaterial,
} from "./pki.ts";
import { fieldValues, permittedRoles, readCertificate, type Certificate } from "./x509.ts";

export { permittedRoles };

export const ENROLLER_HEADER = "# agent enroller v1";
export const DEFAULT_ENROLLER_DAYS = 1825;
export const DEFAULT_ENROLLED_DAYS = 825;
/** A certificate request larger than this is refused before it is parsed. */
export const MAX_CSR_BYTES = 8192;
/** The RSA sizes a device key may have. */
export const MIN_KEY_BITS = 2048;
export const MAX_KEY_BITS = 4096;
export const DEFAULT_ID_PREFIX = "onsite-";
/** Hex digits of the key hash in a device id (64 bits: no collision in any real fleet). */
export const KEY_TAG_DIGITS = 16;
export const ID_PREFIX_PATTERN = /^[a-z0-9][a-z0-9._-]{0,39}$/;

const DAY_MS = 86_400_000;

function wholeSeconds(ms: number): Date {
  return new Date(Math.floor(ms / 1000) * 1000);
}

// ---------------------------------------------------------------------------------------
// Name constraints

function attr(oid: string, value: string): Forge.asn1.Asn1 {
  const asn1 = forge().asn1;
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(oid).getBytes()),
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.UTF8, false, value),
    ]),
  ]);
}

/**
 * DER of NameConstraints { permittedSubtrees [0] { uniformResourceIdentifier [6] ROLE,
 * directoryName [4] { O=agent fleet, OU=ROLE } } }. The URI constraint applies to the URI's
 * host, which for agent://onsite/ID is "onsite".
 */
export function nameConstraintsDer(role: "onsite"): string {
  const asn1 = forge().asn1;
  const dn = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [attr("2.5.4.10", FLEET_ORG), attr("2.5.4.11", role)]);
  const permitted = asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [asn1.create(asn1.Class.CONTEXT_SPECIFIC, 6, false, role)]),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [asn1.create(asn1.Class.CONTEXT_SPECIFIC, 4, true, [dn])]),
  ]);
  return asn1.toDer(asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [permitted])).getBytes();
}

// ---------------------------------------------------------------------------------------
// The enroller certificate (CA host)

/** Why this fleet CA cannot have an enroller under it, or null. Pure. */
export function caEnrollerProblem(ca: Certificate): string | null {
  const bc = ca.basicConstraints;
  if (!bc?.cA) return "the fleet CA certificate is not a CA";
  if (bc.pathLenConstraint === 0) {
    return "the fleet CA has pathlen 0 (made before enrollment existed): TLS refuses any certificate between it and a device";
  }
  return null;
}

export interface IssuedEnroller {
  certPem: string;
  keyPem: string;
  serial: string;
  notAfter: Date;
}

/** An enroller certificate for `id`, signed by the fleet CA. */
export function issueEnroller(ca: CaMaterial, req: { id: string; days?: number; now?: Date }): IssuedEnroller {
  validateId(req.id);
  const problem = caEnrollerProblem(readCertificate(ca.certPem));
  if (problem) throw new UsageError(problem, "create a new fleet CA with `agent pki init` (new CAs have pathlen 1), or keep issuing bundles with `agent pki issue`");
  const days = parseDays(req.days ?? DEFAULT_ENROLLER_DAYS, 1, 3650);
  const now = (req.now ?? new Date()).getTime();
  const notAfter = wholeSeconds(Math.min(now + days * DAY_MS, ca.cert.validity.notAfter.getTime()));
  const kp = generateKeyPairSync("rsa", { modulusLength: 2048, publicKeyEncoding: { type: "spki", format: "pem" }, privateKeyEncoding: { type: "pkcs8", format: "pem" } });
  const serial = randomSerial();
  const certPem = signCertificate({
    ou: "enroller",
    cn: req.id,
    publicKey: forge().pki.publicKeyFromPem(kp.publicKey),
    serial,
    now,
    notAfter,
    issuer: ca.cert,
    key: ca.key,
    profile: { kind: "ca", pathLen: 0, cRLSign: false, nameConstraintsDer: nameConstraintsDer("onsite") },
  });
  return { certPem, keyPem: kp.privateKey, serial, notAfter };
}

export interface Enroller {
  id: string;
  cert: Certificate;
  /** Its private key, PKCS#8 PEM (node-forge reads it only when it first signs). */
  keyPem: string;
  certPem: string;
  caPem: string;
  ca: Certificate;
  serial: string;
}

export function formatEnroller(id: string, certPem: string, keyPem: string, caPem: string): string {
  const block = (pem: string) => pem.replace(/\r\n/g, "\n").trim() + "\n";
  return `${ENROLLER_HEADER}\n# id: ${id}\n# enroller certificate, its private key, fleet CA certificate. Keep this file mode 0600, on the relay only.\n${block(certPem)}${block(keyPem)}${block(caPem)}`;
}

/** Parses and checks an enroller file's text; `file` names it in errors. */
export function parseEnroller(text: string, file: string): Enroller {
  const bad = (why: string) => new UsageError(`enroller ${file}: ${why}`, "issue one on the CA host with `agent pki issue-enroller --dir DIR --id ID --out FILE` and copy it to the relay");
  if (!text.startsWith(ENROLLER_HEADER + "\n")) throw bad(`not an enroller file: the first line must be ${JSON.stringify(ENROLLER_HEADER)}`);
  const blocks = [...text.matchAll(/-----BEGIN ([A-Z ]+)-----[\s\S]*?-----END \1-----/g)];
  if (blocks.length !== 3 || blocks[0]![1] !== "CERTIFICATE" || blocks[1]![1] !== "PRIVATE KEY" || blocks[2]![1] !== "CERTIFICATE") {
    throw bad("expected three PEM blocks: the enroller certificate, its PRIVATE KEY, the fleet CA certificate");
  }
  let cert: Certificate, ca: Certificate, key: KeyObject;
  try {
    cert = readCertificate(blocks[0]![0]);
    ca = readCertificate(blocks[2]![0]);
  } catch (e) {
    throw bad(`a certificate cannot be parsed: ${(e as Error).message}`);
  }
  try {
    key = createPrivateKey(blocks[1]![0]);
    if (key.asymmetricKeyType !== "rsa") throw new Error("not RSA");
  } catch {
    throw bad("the private key cannot be parsed (expected an unencrypted RSA PKCS#8 key)");
  }
  const problem = enrollerProblem(cert, ca);
  if (problem) throw bad(problem);
  if (!keyMatchesCertificate(key, cert)) throw bad("the private key does not match the enroller certificate");
  const cn = fieldValues(cert.subject, "CN")[0];
  return { id: cn ?? "?", cert, keyPem: blocks[1]![0] + "\n", certPem: blocks[0]![0] + "\n", caPem: blocks[2]![0] + "\n", ca, serial: normalizeSerial(cert.serialNumber) };
}

/** Why `cert` is not an enroller of the fleet `ca`, or null. Pure. */
export function enrollerProblem(cert: Certificate, ca: Certificate): string | null {
  const bc = cert.basicConstraints;
  if (!bc?.cA) return "the enroller certificate is not a CA certificate (basicConstraints CA:true missing)";
  if (bc.pathLenConstraint !== 0) return "the enroller certificate must have pathlen 0 (it signs devices, never another CA)";
  const roles = permittedRoles(cert);
  if (roles.length !== 1 || roles[0] !== "onsite") return "the enroller certificate is not name-constrained to onsite identities";
  if (!isSignedBy(cert, ca)) return "the enroller certificate is not signed by the fleet CA certificate given with it";
  return null;
}

export interface IssueEnrollerFileRequest {
  id: string;
  out: string;
  days?: number;
  force?: boolean;
}

/** `agent pki issue-enroller`: reads the CA in `dir`, writes the enroller file `out` (0600). */
export async function issueEnrollerToFile(dir: string, req: IssueEnrollerFileRequest): Promise<IssuedEnroller & { out: string }> {
  validateId(req.id);
  const p = caPaths(dir);
  let certPem: string, keyPem: string;
  try {
    [certPem, keyPem] = await Promise.all([readFile(p.cert, "utf8"), readFile(p.key, "utf8")]);
  } catch (e) {
    throw new UsageError(`cannot read the fleet CA in ${dir}: ${(e as Error).message}`, `create one with \`agent pki init --dir ${dir}\`, or check --dir`);
  }
  const ca = parseCa(certPem, keyPem, `CA ${dir}`);
  if (!req.force) {
    const exists = await stat(req.out).then(() => true, () => false);
    if (exists) throw new UsageError(`${req.out} already exists; refusing to overwrite it`, "choose another --out, or add --force to replace it");
  }
  if (path.resolve(path.dirname(req.out)) === path.resolve(dir)) throw new UsageError(`--out ${req.out} is inside the CA directory`, `write it elsewhere, e.g. --out ${req.id}.enroller`);
  const issued = issueEnroller(ca, req);
  try {
    await writeFileAtomic(path.join(p.certs, `${issued.serial}.crt`), issued.certPem, { mode: 0o644 });
    await writeFileAtomic(req.out, formatEnroller(req.id, issued.certPem, issued.keyPem, certPem), { mode: 0o600 });
  } catch (e) {
    throw new RuntimeError(`cannot write enroller ${req.out}`, undefined, { cause: e });
  }
  return { ...issued, out: req.out };
}

export async function loadEnroller(file: string): Promise<Enroller> {
  let text: string;
  try {
    const st = await stat(file);
    if ((st.mode & 0o077) !== 0) throw new UsageError(`enroller ${file} has mode 0${(st.mode & 0o777).toString(8)}: it holds a private key`, `chmod 600 ${file}`);
    if (st.size > 1 << 20) throw new UsageError(`enroller ${file} is too large (${st.size} bytes)`, "check the path");
    text = await readFile(file, "utf8");
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError(`cannot read enroller ${file}: ${(e as Error).message}`, "issue one with `agent pki issue-enroller` on the CA host and set [enroll] enroller to its path");
  }
  return parseEnroller(text, file);
}

// ---------------------------------------------------------------------------------------
// The device's key, id and request

/**
 * The device's key: RSA 2048 from node:crypto, which in Bun is BoringSSL (native, the OS's
 * RNG): tens of milliseconds where node-forge's pure-JS prime search takes seconds on a Pi.
 */
export function generateDeviceKey(): string {
  return generateKeyPairSync("rsa", { modulusLength: 2048, publicKeyEncoding: { type: "spki", format: "pem" }, privateKeyEncoding: { type: "pkcs8", format: "pem" } }).privateKey;
}

/** The first KEY_TAG_DIGITS hex digits of SHA-256(SubjectPublicKeyInfo DER). Pure. */
export function keyTag(publicKey: Forge.pki.rsa.PublicKey | KeyObject): string {
  const der =
    "export" in publicKey
      ? (publicKey.export({ type: "spki", format: "der" }) as Buffer)
      : Buffer.from(forge().asn1.toDer(forge().pki.publicKeyToAsn1(publicKey)).getBytes(), "binary");
  return createHash("sha256").update(der).digest("hex").slice(0, KEY_TAG_DIGITS);
}

/** PREFIX + key tag: the id a device with this key enrolls as. Pure. */
export function enrollIdFor(publicKey: Forge.pki.rsa.PublicKey | KeyObject, prefix = DEFAULT_ID_PREFIX): string {
  if (!ID_PREFIX_PATTERN.test(prefix)) throw new UsageError(`invalid id prefix ${JSON.stringify(prefix)}: 1-40 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit`);
  return prefix + keyTag(publicKey);
}

/** One DER element: tag byte, definite length, content. */
function der(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  const n = body.length;
  const len = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : [0x82, n >> 8, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...len]), body]);
}
const OID_O = Buffer.from("060355040a", "hex");
const OID_OU = Buffer.from("060355040b", "hex");
const OID_CN = Buffer.from("0603550403", "hex");
/** AlgorithmIdentifier sha256WithRSAEncryption, NULL parameters. */
const SHA256_RSA = Buffer.from("300d06092a864886f70d01010b0500", "hex");

/**
 * A PKCS#10 request for an onsite certificate with id PREFIX+tag, signed with the device's key.
 * Encoded here with node:crypto (no node-forge in an enrolling device), byte for byte what
 * node-forge's createCertificationRequest made: subject O, OU, CN as PrintableString, no
 * attributes, SHA-256 with RSA (PKCS#1 v1.5, deterministic; test/enroll-unit.test.ts).
 */
export function createEnrollmentCsr(keyPem: string, prefix = DEFAULT_ID_PREFIX): { csrPem: string; id: string } {
  const priv = createPrivateKey(keyPem);
  const pub = createPublicKey(priv);
  const id = enrollIdFor(pub, prefix);
  const rdn = (oid: Buffer, value: string) => der(0x31, der(0x30, oid, der(0x13, Buffer.from(value, "latin1"))));
  const subject = der(0x30, rdn(OID_O, FLEET_ORG), rdn(OID_OU, "onsite"), rdn(OID_CN, id));
  const info = der(0x30, Buffer.from("020100", "hex"), subject, pub.export({ type: "spki", format: "der" }) as Buffer, Buffer.from("a000", "hex"));
  const signature = sign("sha256", info, priv);
  const csr = der(0x30, info, SHA256_RSA, der(0x03, Buffer.from([0]), signature));
  const b64 = csr.toString("base64").match(/.{1,64}/g)!.join("\n");
  return { csrPem: `-----BEGIN CERTIFICATE REQUEST-----\n${b64}\n-----END CERTIFICATE REQUEST-----\n`, id };
}

export interface CheckedCsr {
  id: string;
  publicKey: Forge.pki.rsa.PublicKey;
  /** Key tag: the same key always gives the same tag (a retry, a lost answer). */
  tag: string;
}

/** A refusal of a request, with a specific message. */
export class CsrError extends Error {
  override readonly name = "CsrError";
}

/** The relay's checks of a device's request: size, signature, key, role, id. Pure; throws CsrError. */
export function checkCsr(csrPem: unknown): CheckedCsr {
  if (typeof csrPem !== "string" || csrPem.length === 0) throw new CsrError("no certificate request (csr: a PEM CERTIFICATE REQUEST)");
  if (csrPem.length > MAX_CSR_BYTES) throw new CsrError(`certificate request is ${csrPem.length} bytes, more than the ${MAX_CSR_BYTES} allowed`);
  let csr: ReturnType<typeof Forge.pki.certificationRequestFromPem>;
  try {
    csr = forge().pki.certificationRequestFromPem(csrPem);
  } catch (e) {
    throw new CsrError(`certificate request cannot be parsed: ${(e as Error).message.slice(0, 100)}`);
  }
  const pub = csr.publicKey as Forge.pki.rsa.PublicKey | null;
  if (!pub?.n) throw new CsrError("certificate request must carry an RSA key");
  const bits = pub.n.bitLength();
  if (bits < MIN_KEY_BITS || bits > MAX_KEY_BITS) throw new CsrError(`certificate request has an RSA key of ${bits} bits; expected ${MIN_KEY_BITS} to ${MAX_KEY_BITS}`);
  let signed = false;
  try {
    signed = csr.verify();
  } catch {
    signed = false;
  }
  if (!signed) throw new CsrError("certificate request's signature does not verify (not signed by its own key)");
  const field = (n: string) => csr.subject.attributes.filter((a: Forge.pki.CertificateField) => a.shortName === n).map((a: Forge.pki.CertificateField) => String(a.value));
  const ous = field("OU");
  const cns = field("CN");
  const os = field("O");
  if (ous.length !== 1 || ous[0] !== "onsite") throw new CsrError(`certificate request asks for role ${JSON.stringify(ous.join(","))}; enrollment issues onsite certificates only`);
  if (os.length !== 1 || os[0] !== FLEET_ORG) throw new CsrError(`certificate request's subject must have O=${FLEET_ORG}`);
  if (cns.length !== 1 || !isValidId(cns[0]!)) throw new CsrError(`certificate request's CN ${JSON.stringify(cns.join(","))} is not a valid device id`);
  const id = cns[0]!;
  const tag = keyTag(pub);
  const prefix = id.slice(0, -KEY_TAG_DIGITS);
  if (!id.endsWith(tag) || !ID_PREFIX_PATTERN.test(prefix)) throw new CsrError(`certificate request's id ${id} is not PREFIX+${tag} (its key's tag): an enrolled device's id comes from its key`);
  return { id, publicKey: pub, tag };
}

export interface SignedEnrollment {
  certPem: string;
  serial: string;
  notAfter: Date;
}

/** The enroller as node-forge objects, read once per enroller on its first signature. */
const signers = new WeakMap<object, { cert: Forge.pki.Certificate; key: Forge.pki.rsa.PrivateKey }>();
function signerOf(enroller: Pick<Enroller, "certPem" | "keyPem">): { cert: Forge.pki.Certificate; key: Forge.pki.rsa.PrivateKey } {
  let s = signers.get(enroller);
  if (!s) {
    s = { cert: forge().pki.certificateFromPem(enroller.certPem), key: forge().pki.privateKeyFromPem(enroller.keyPem) as Forge.pki.rsa.PrivateKey };
    signers.set(enroller, s);
  }
  return s;
}

/** Signs a checked request as an onsite certificate with the enroller (same profile as `pki issue`). */
export function signEnrollment(enroller: Pick<Enroller, "cert" | "certPem" | "keyPem">, csr: CheckedCsr, opts: { days?: number; now?: Date } = {}): SignedEnrollment {
  const now = (opts.now ?? new Date()).getTime();
  const days = opts.days ?? DEFAULT_ENROLLED_DAYS;
  const notAfter = wholeSeconds(Math.min(now + days * DAY_MS, enroller.cert.notAfter.getTime()));
  if (notAfter.getTime() <= now) throw new RuntimeError(`the enroller certificate expired on ${isoSeconds(enroller.cert.notAfter)}`, "issue a new one with `agent pki issue-enroller` on the CA host");
  const signer = signerOf(enroller);
  const serial = randomSerial();
  const certPem = signCertificate({
    ou: "onsite",
    cn: csr.id,
    publicKey: csr.publicKey,
    serial,
    now,
    notAfter,
    issuer: signer.cert,
    key: signer.key,
    profile: { kind: "device", serverAuth: false, altNames: [{ type: 6, value: `agent://onsite/${csr.id}` }] },
  });
  return { certPem, serial, notAfter };
}
