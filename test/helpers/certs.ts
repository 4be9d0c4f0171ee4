// Certificates the fleet's own tooling refuses to make (expired, identity that disagrees with
// itself, signed by a stranger's CA), built with node-forge the way src/pki.ts builds real
// ones, so tests can present them to the relay.
import forge from "node-forge";
import { createCa, formatBundle, generateKeyPair, parseCa, randomSerial, type CaMaterial } from "../../src/pki.ts";

export interface CertSpec {
  role: string;
  id: string;
  /** Subject OU (default: role) and the URI SAN (default: agent://ROLE/ID). */
  ou?: string;
  uri?: string;
  notBefore?: Date;
  notAfter?: Date;
  /** IP address SANs (what a relay's certificate carries; the fleet tooling allows them only there). */
  ips?: string[];
}

export interface TestCert {
  certPem: string;
  keyPem: string;
  der: Uint8Array;
  serial: string;
}

export function newCa(name = "stranger CA"): CaMaterial {
  const { certPem, keyPem } = createCa({ name });
  return parseCa(certPem, keyPem);
}

export function makeCert(ca: CaMaterial, spec: CertSpec): TestCert {
  const kp = generateKeyPair();
  const cert = forge.pki.createCertificate();
  cert.publicKey = kp.publicKey;
  const serial = randomSerial();
  cert.serialNumber = serial;
  const now = Date.now();
  cert.validity.notBefore = spec.notBefore ?? new Date(now - 3_600_000);
  cert.validity.notAfter = spec.notAfter ?? new Date(now + 86_400_000);
  cert.setSubject([
    { name: "organizationName", value: "agent fleet" },
    { shortName: "OU", value: spec.ou ?? spec.role },
    { name: "commonName", value: spec.id },
  ]);
  cert.setIssuer(ca.cert.subject.attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: false, critical: true },
    { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
    { name: "extKeyUsage", clientAuth: true, serverAuth: true },
    { name: "subjectAltName", altNames: [{ type: 6, value: spec.uri ?? `agent://${spec.role}/${spec.id}` }, ...(spec.ips ?? []).map((ip) => ({ type: 7, ip }))] },
    { name: "subjectKeyIdentifier" },
    { name: "authorityKeyIdentifier", keyIdentifier: ca.cert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(ca.key, forge.md.sha256.create());
  const der = Buffer.from(forge.asn1.toDer(forge.pki.certificateToAsn1(cert)).getBytes(), "binary");
  return { certPem: forge.pki.certificateToPem(cert).replace(/\r\n/g, "\n"), keyPem: kp.keyPem, der: new Uint8Array(der), serial };
}

/** A bundle file's text for a hand-made certificate (so the real daemon can be started with it). */
export function bundleText(role: string, id: string, c: TestCert, caPem: string): string {
  return formatBundle({ role: role as never, id, certPem: c.certPem, keyPem: c.keyPem, caPem });
}

export function pemToDer(pem: string): Uint8Array {
  const b64 = pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");
  return new Uint8Array(Buffer.from(b64, "base64"));
}

/**
 * A master certificate signed with an enroller's key, as if that key had leaked: its chain
 * leads to the fleet CA, but the enroller's name constraints allow only onsite identities, so
 * openssl and the relay must both refuse it. Returns the certificate's PEM.
 */
export function masterSignedByEnroller(enroller: { certPem: string; keyPem: string }, keyPem: string, cn: string, serial: string): string {
  const key = forge.pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
  const c = forge.pki.createCertificate();
  c.publicKey = forge.pki.setRsaPublicKey(key.n, key.e);
  c.serialNumber = serial;
  c.validity.notBefore = new Date(Date.now() - 60_000);
  c.validity.notAfter = new Date(Date.now() + 86_400_000);
  c.setSubject([{ name: "organizationName", value: "agent fleet" }, { shortName: "OU", value: "master" }, { name: "commonName", value: cn }]);
  c.setIssuer(forge.pki.certificateFromPem(enroller.certPem).subject.attributes);
  c.setExtensions([{ name: "extKeyUsage", clientAuth: true }, { name: "subjectAltName", altNames: [{ type: 6, value: `agent://master/${cn}` }] }]);
  c.sign(forge.pki.privateKeyFromPem(enroller.keyPem) as forge.pki.rsa.PrivateKey, forge.md.sha256.create());
  return forge.pki.certificateToPem(c);
}
