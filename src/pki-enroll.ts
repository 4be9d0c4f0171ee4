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
import forge from "node-forge";
import { createHash, generateKeyPairSync } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import path from "node:path";
import { RuntimeError, UsageError } from "./errors.ts";
import { writeFileAtomic } from "./os/atomic.ts";
import {
  caPaths,
  CLOCK_SKEW_MS,
  FLEET_ORG,
  isoSeconds,
  isSignedBy,
  isValidId,
  keyMatchesCertificate,
  normalizeSerial,
  parseCa,
  parseDays,
  randomSerial,
  validateId,
  type CaMaterial,
} from "./pki.ts";

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
const NAME_CONSTRAINTS_OID = "2.5.29.30";
const asn1 = forge.asn1;

function wholeSeconds(ms: number): Date {
  return new Date(Math.floor(ms / 1000) * 1000);
}

function pemOf(cert: forge.pki.Certificate): string {
  return forge.pki.certificateToPem(cert).replace(/\r\n/g, "\n");
}

// ---------------------------------------------------------------------------------------
// Name constraints

function attr(oid: string, value: string): forge.asn1.Asn1 {
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
  const dn = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [attr("2.5.4.10", FLEET_ORG), attr("2.5.4.11", role)]);
  const permitted = asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [asn1.create(asn1.Class.CONTEXT_SPECIFIC, 6, false, role)]),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [asn1.create(asn1.Class.CONTEXT_SPECIFIC, 4, true, [dn])]),
  ]);
  return asn1.toDer(asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [permitted])).getBytes();
}

/** The roles an enroller's name constraints permit (URI hosts and OUs that agree), [] if none. */
export function permittedRoles(cert: forge.pki.Certificate): string[] {
  const ext = cert.getExtension({ id: NAME_CONSTRAINTS_OID } as unknown as string) as { value?: string } | undefined;
  if (!ext?.value) return [];
  try {
    const nc = asn1.fromDer(ext.value);
    const permitted = (nc.value as forge.asn1.Asn1[]).find((n) => n.tagClass === asn1.Class.CONTEXT_SPECIFIC && n.type === 0);
    if (!permitted) return [];
    const uris: string[] = [];
    const ous: string[] = [];
    for (const sub of permitted.value as forge.asn1.Asn1[]) {
      const base = (sub.value as forge.asn1.Asn1[])[0]!;
      if (base.tagClass !== asn1.Class.CONTEXT_SPECIFIC) continue;
      if (base.type === 6) uris.push(String(base.value));
      if (base.type === 4) {
        const name = (base.value as forge.asn1.Asn1[])[0]!;
        for (const set of name.value as forge.asn1.Asn1[]) {
          const seq = (set.value as forge.asn1.Asn1[])[0]!;
          const [oid, val] = seq.value as forge.asn1.Asn1[];
          if (asn1.derToOid(oid!.value as string) === "2.5.4.11") ous.push(String(val!.value));
        }
      }
    }
    return uris.filter((u) => ous.includes(u));
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------------------------------
// The enroller certificate (CA host)

function basicConstraintsOf(cert: forge.pki.Certificate): { cA?: boolean; pathLenConstraint?: number } | undefined {
  return cert.getExtension("basicConstraints") as { cA?: boolean; pathLenConstraint?: number } | undefined;
}

/** Why this fleet CA cannot have an enroller under it, or null. Pure. */
export function caEnrollerProblem(ca: forge.pki.Certificate): string | null {
  const bc = basicConstraintsOf(ca);
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
  const problem = caEnrollerProblem(ca.cert);
  if (problem) throw new UsageError(problem, "create a new fleet CA with `agent pki init` (new CAs have pathlen 1), or keep issuing bundles with `agent pki issue`");
  const days = parseDays(req.days ?? DEFAULT_ENROLLER_DAYS, 1, 3650);
  const now = (req.now ?? new Date()).getTime();
  const notAfter = wholeSeconds(Math.min(now + days * DAY_MS, ca.cert.validity.notAfter.getTime()));
  const kp = generateKeyPairSync("rsa", { modulusLength: 2048, publicKeyEncoding: { type: "spki", format: "pem" }, privateKeyEncoding: { type: "pkcs8", format: "pem" } });
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(kp.publicKey);
  const serial = randomSerial();
  cert.serialNumber = serial;
  cert.validity.notBefore = wholeSeconds(now - CLOCK_SKEW_MS);
  cert.validity.notAfter = notAfter;
  cert.setSubject([
    { name: "organizationName", value: FLEET_ORG },
    { shortName: "OU", value: "enroller" },
    { name: "commonName", value: req.id },
  ]);
  cert.setIssuer(ca.cert.subject.attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: true, pathLenConstraint: 0, critical: true },
    { name: "keyUsage", keyCertSign: true, critical: true },
    { id: NAME_CONSTRAINTS_OID, critical: true, value: nameConstraintsDer("onsite") },
    { name: "subjectKeyIdentifier" },
    { name: "authorityKeyIdentifier", keyIdentifier: ca.cert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(ca.key, forge.md.sha256.create());
  return { certPem: pemOf(cert), keyPem: kp.privateKey, serial, notAfter };
}

export interface Enroller {
  id: string;
  cert: forge.pki.Certificate;
  key: forge.pki.rsa.PrivateKey;
  certPem: string;
  caPem: string;
  ca: forge.pki.Certificate;
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
  let cert: forge.pki.Certificate, ca: forge.pki.Certificate, key: forge.pki.rsa.PrivateKey;
  try {
    cert = forge.pki.certificateFromPem(blocks[0]![0]);
    ca = forge.pki.certificateFromPem(blocks[2]![0]);
  } catch (e) {
    throw bad(`a certificate cannot be parsed: ${(e as Error).message}`);
  }
  try {
    key = forge.pki.privateKeyFromPem(blocks[1]![0]) as forge.pki.rsa.PrivateKey;
  } catch {
    throw bad("the private key cannot be parsed (expected an unencrypted RSA PKCS#8 key)");
  }
  const problem = enrollerProblem(cert, ca);
  if (problem) throw bad(problem);
  if (!keyMatchesCertificate(key, cert)) throw bad("the private key does not match the enroller certificate");
  const cn = cert.subject.getField("CN")?.value as string | undefined;
  return { id: cn ?? "?", cert, key, certPem: blocks[0]![0] + "\n", caPem: blocks[2]![0] + "\n", ca, serial: normalizeSerial(cert.serialNumber) };
}

/** Why `cert` is not an enroller of the fleet `ca`, or null. Pure. */
export function enrollerProblem(cert: forge.pki.Certificate, ca: forge.pki.Certificate): string | null {
  const bc = basicConstraintsOf(cert);
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
export function keyTag(publicKey: forge.pki.rsa.PublicKey): string {
  const der = asn1.toDer(forge.pki.publicKeyToAsn1(publicKey)).getBytes();
  return createHash("sha256").update(Buffer.from(der, "binary")).digest("hex").slice(0, KEY_TAG_DIGITS);
}

/** PREFIX + key tag: the id a device with this key enrolls as. Pure. */
export function enrollIdFor(publicKey: forge.pki.rsa.PublicKey, prefix = DEFAULT_ID_PREFIX): string {
  if (!ID_PREFIX_PATTERN.test(prefix)) throw new UsageError(`invalid id prefix ${JSON.stringify(prefix)}: 1-40 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit`);
  return prefix + keyTag(publicKey);
}

/** A PKCS#10 request for an onsite certificate with id PREFIX+tag, signed with the device's key. */
export function createEnrollmentCsr(keyPem: string, prefix = DEFAULT_ID_PREFIX): { csrPem: string; id: string } {
  const priv = forge.pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
  const pub = forge.pki.setRsaPublicKey(priv.n, priv.e);
  const id = enrollIdFor(pub, prefix);
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = pub;
  csr.setSubject([
    { name: "organizationName", value: FLEET_ORG },
    { shortName: "OU", value: "onsite" },
    { name: "commonName", value: id },
  ]);
  csr.sign(priv, forge.md.sha256.create());
  return { csrPem: forge.pki.certificationRequestToPem(csr).replace(/\r\n/g, "\n"), id };
}

export interface CheckedCsr {
  id: string;
  publicKey: forge.pki.rsa.PublicKey;
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
  let csr: ReturnType<typeof forge.pki.certificationRequestFromPem>;
  try {
    csr = forge.pki.certificationRequestFromPem(csrPem);
  } catch (e) {
    throw new CsrError(`certificate request cannot be parsed: ${(e as Error).message.slice(0, 100)}`);
  }
  const pub = csr.publicKey as forge.pki.rsa.PublicKey | null;
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
  const field = (n: string) => csr.subject.attributes.filter((a: forge.pki.CertificateField) => a.shortName === n).map((a: forge.pki.CertificateField) => String(a.value));
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

/** Signs a checked request as an onsite certificate with the enroller (same profile as `pki issue`). */
export function signEnrollment(enroller: Pick<Enroller, "cert" | "key">, csr: CheckedCsr, opts: { days?: number; now?: Date } = {}): SignedEnrollment {
  const now = (opts.now ?? new Date()).getTime();
  const days = opts.days ?? DEFAULT_ENROLLED_DAYS;
  const notAfter = wholeSeconds(Math.min(now + days * DAY_MS, enroller.cert.validity.notAfter.getTime()));
  if (notAfter.getTime() <= now) throw new RuntimeError(`the enroller certificate expired on ${isoSeconds(enroller.cert.validity.notAfter)}`, "issue a new one with `agent pki issue-enroller` on the CA host");
  const cert = forge.pki.createCertificate();
  cert.publicKey = csr.publicKey;
  const serial = randomSerial();
  cert.serialNumber = serial;
  cert.validity.notBefore = wholeSeconds(now - CLOCK_SKEW_MS);
  cert.validity.notAfter = notAfter;
  cert.setSubject([
    { name: "organizationName", value: FLEET_ORG },
    { shortName: "OU", value: "onsite" },
    { name: "commonName", value: csr.id },
  ]);
  cert.setIssuer(enroller.cert.subject.attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: false, critical: true },
    { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
    { name: "extKeyUsage", clientAuth: true },
    { name: "subjectAltName", altNames: [{ type: 6, value: `agent://onsite/${csr.id}` }] },
    { name: "subjectKeyIdentifier" },
    { name: "authorityKeyIdentifier", keyIdentifier: enroller.cert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(enroller.key, forge.md.sha256.create());
  return { certPem: pemOf(cert), serial, notAfter };
}
