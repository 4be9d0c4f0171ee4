// One signing function (src/pki.ts signCertificate) makes every certificate the fleet issues:
// the fleet CA, devices (onsite, master), relays, the enroller and the certificates it signs at
// enrollment. This table pins what each kind carries, read back by openssl itself; and, for
// each, that src/x509.ts (node:crypto, what daemons use) reads the same serial, dates, names and
// SANs node-forge reads.
import { describe, expect, test } from "bun:test";
import forge from "node-forge";
import { certificateIdentity, CLOCK_SKEW_MS, createCa, issueCertificate, parseCa, parseRevocations, REVOCATIONS_HEADER } from "../src/pki.ts";
import { checkCsr, createEnrollmentCsr, formatEnroller, generateDeviceKey, issueEnroller, parseEnroller, signEnrollment } from "../src/pki-enroll.ts";
import { readCertificate } from "../src/x509.ts";
import { verifyPeer } from "../src/transport/auth.ts";

const NOW = new Date("2026-06-01T12:00:00.456Z");
const ca = createCa({ name: "sign CA", now: NOW });
const caMat = parseCa(ca.certPem, ca.keyPem);
const en = issueEnroller(caMat, { id: "enroll-1", now: NOW });
const enroller = parseEnroller(formatEnroller("enroll-1", en.certPem, en.keyPem, ca.certPem), "e");
const csr = createEnrollmentCsr(generateDeviceKey(), "site-");
const enrolled = { ...signEnrollment(enroller, checkCsr(csr.csrPem), { now: NOW }), id: csr.id };
const issue = (role: "onsite" | "master" | "relay", hosts: string[] = []) => issueCertificate(caMat, { role, id: `${role}-1`, hosts, now: NOW }).certPem;

const LEAF = (eku: string, san: string) => [
  "X509v3 Basic Constraints: critical",
  "CA:FALSE",
  "X509v3 Key Usage: critical",
  "Digital Signature, Key Encipherment",
  "X509v3 Extended Key Usage:",
  eku,
  "X509v3 Subject Alternative Name:",
  san,
  "X509v3 Subject Key Identifier:",
  "SKID",
  "X509v3 Authority Key Identifier:",
  "AKID",
];
const CLIENT = "TLS Web Client Authentication";

interface Kind {
  kind: string;
  pem: string;
  issuerPem: string;
  subject: string;
  issuer: string;
  extensions: string[];
}
const kinds: Kind[] = [
  {
    kind: "fleet CA (pathlen 1)",
    pem: ca.certPem,
    issuerPem: ca.certPem,
    subject: "O = agent fleet, CN = sign CA",
    issuer: "O = agent fleet, CN = sign CA",
    extensions: ["X509v3 Basic Constraints: critical", "CA:TRUE, pathlen:1", "X509v3 Key Usage: critical", "Certificate Sign, CRL Sign", "X509v3 Subject Key Identifier:", "SKID"],
  },
  {
    kind: "enroller (pathlen 0, name-constrained to onsite)",
    pem: en.certPem,
    issuerPem: ca.certPem,
    subject: "O = agent fleet, OU = enroller, CN = enroll-1",
    issuer: "O = agent fleet, CN = sign CA",
    extensions: [
      "X509v3 Basic Constraints: critical",
      "CA:TRUE, pathlen:0",
      "X509v3 Key Usage: critical",
      "Certificate Sign",
      "X509v3 Name Constraints: critical",
      "Permitted:",
      "URI:onsite",
      "DirName:O = agent fleet, OU = onsite",
      "X509v3 Subject Key Identifier:",
      "SKID",
      "X509v3 Authority Key Identifier:",
      "AKID",
    ],
  },
  { kind: "onsite device", pem: issue("onsite"), issuerPem: ca.certPem, subject: "O = agent fleet, OU = onsite, CN = onsite-1", issuer: "O = agent fleet, CN = sign CA", extensions: LEAF(CLIENT, "URI:agent://onsite/onsite-1") },
  { kind: "master", pem: issue("master"), issuerPem: ca.certPem, subject: "O = agent fleet, OU = master, CN = master-1", issuer: "O = agent fleet, CN = sign CA", extensions: LEAF(CLIENT, "URI:agent://master/master-1") },
  {
    kind: "relay (serverAuth, DNS and IP SANs)",
    pem: issue("relay", ["relay.example.net", "10.0.0.1", "2001:db8::1"]),
    issuerPem: ca.certPem,
    subject: "O = agent fleet, OU = relay, CN = relay-1",
    issuer: "O = agent fleet, CN = sign CA",
    extensions: LEAF("TLS Web Server Authentication, TLS Web Client Authentication", "URI:agent://relay/relay-1, DNS:relay.example.net, IP Address:10.0.0.1, IP Address:2001:DB8:0:0:0:0:0:1"),
  },
  {
    kind: "enrolled onsite device (signed by the enroller)",
    pem: enrolled.certPem,
    issuerPem: en.certPem,
    subject: `O = agent fleet, OU = onsite, CN = ${enrolled.id}`,
    issuer: "O = agent fleet, OU = enroller, CN = enroll-1",
    extensions: LEAF(CLIENT, `URI:agent://onsite/${enrolled.id}`),
  },
];

function opensslText(pem: string): string {
  const r = Bun.spawnSync(["openssl", "x509", "-noout", "-text"], { stdin: Buffer.from(pem), stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`openssl x509: ${r.stderr.toString()}`);
  return r.stdout.toString();
}
function keyIdOf(pem: string, which: "Subject" | "Authority"): string {
  const t = opensslText(pem);
  return new RegExp(`X509v3 ${which} Key Identifier: *\\n\\s+(?:keyid:)?([0-9A-F:]+)`).exec(t)?.[1] ?? "";
}

describe("every kind of certificate from the one signing function, read by openssl", () => {
  for (const k of kinds) {
    test(k.kind, () => {
      const t = opensslText(k.pem);
      const ext = t.slice(t.indexOf("X509v3 extensions:") + "X509v3 extensions:".length, t.lastIndexOf("Signature Algorithm:"));
      const lines = ext.split("\n").map((l) => l.trim()).filter(Boolean);
      const skid = keyIdOf(k.pem, "Subject");
      expect(skid).toMatch(/^([0-9A-F]{2}:){19}[0-9A-F]{2}$/);
      const expected = k.extensions.map((l) => (l === "SKID" ? skid : l === "AKID" ? keyIdOf(k.issuerPem, "Subject") : l));
      expect(lines).toEqual(expected);
      expect(t).toContain(`Subject: ${k.subject}\n`);
      expect(t).toContain(`Issuer: ${k.issuer}\n`);
      expect(t).toContain("Signature Algorithm: sha256WithRSAEncryption");
      // notBefore: five minutes early, in whole seconds.
      const c = readCertificate(k.pem);
      expect(c.notBefore.getTime()).toBe(Math.floor((NOW.getTime() - CLOCK_SKEW_MS) / 1000) * 1000);
      expect(c.serialNumber).toMatch(/^[1-7][0-9a-f]{31}$/);
      expect(c.x509.serialNumber.toLowerCase()).toBe(c.serialNumber);
    });
  }
});

describe("src/x509.ts reads what node-forge reads", () => {
  for (const k of kinds) {
    test(k.kind, () => {
      const f = forge.pki.certificateFromPem(k.pem);
      const c = readCertificate(k.pem);
      expect(c.serialNumber).toBe(f.serialNumber);
      expect(c.notBefore).toEqual(f.validity.notBefore);
      expect(c.notAfter).toEqual(f.validity.notAfter);
      const names = (n: forge.pki.Certificate["subject"]) => n.attributes.map((a) => ({ shortName: a.shortName, value: String(a.value) }));
      expect(c.subject.map((a) => ({ shortName: a.shortName, value: a.value }))).toEqual(names(f.subject));
      expect(c.issuer.map((a) => ({ shortName: a.shortName, value: a.value }))).toEqual(names(f.issuer));
      const fAlt = ((f.getExtension("subjectAltName") as { altNames?: { type: number; value: string; ip?: string }[] } | undefined)?.altNames ?? []).map((a) => ({ type: a.type, ip: a.ip, value: a.value }));
      expect(c.altNames.map((a) => ({ type: a.type, ip: a.ip, value: a.value }))).toEqual(fAlt);
      const fBc = f.getExtension("basicConstraints") as { cA?: boolean; pathLenConstraint?: number } | undefined;
      expect(c.basicConstraints?.cA ?? false).toBe(fBc?.cA ?? false);
      expect(c.basicConstraints?.pathLenConstraint).toBe(fBc?.pathLenConstraint);
    });
  }
  test("the relay's IPv6 SAN reads as node-forge wrote it (zero run shortened)", () => {
    expect(certificateIdentity(kinds[4]!.pem).hosts).toEqual(["relay.example.net", "10.0.0.1", "2001:db8::1"]);
  });
});

describe("damaged certificates: src/x509.ts against node-forge", () => {
  // Deterministic mutations (a fixed-seed LCG): 1-3 random bytes of a relay certificate's DER.
  test("where both read a mutated certificate they read the same fields; the relay's verdict never throws", () => {
    const der = readCertificate(kinds[4]!.pem).der;
    let seed = 20261201;
    const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    let both = 0;
    for (let n = 0; n < 1000; n++) {
      const b = Buffer.from(der);
      for (let j = 0, k = 1 + Math.floor(rnd() * 3); j < k; j++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
      let x: ReturnType<typeof readCertificate> | undefined;
      try {
        x = readCertificate(b);
      } catch (e) {
        expect(e).toBeInstanceOf(Error);
      }
      let f: forge.pki.Certificate | undefined;
      try {
        f = forge.pki.certificateFromAsn1(forge.asn1.fromDer(forge.util.createBuffer(b.toString("binary"))));
      } catch {
        f = undefined;
      }
      if (x && f) {
        both++;
        const fAlt = ((f.getExtension("subjectAltName") as { altNames?: { type: number; value: string; ip?: string }[] } | undefined)?.altNames ?? []).map((a) => [a.type, a.value, a.ip]);
        expect([x.serialNumber, x.notBefore.getTime(), x.notAfter.getTime(), x.subject.map((a) => [a.shortName, a.value]), x.altNames.map((a) => [a.type, a.value, a.ip])]).toEqual([
          f.serialNumber,
          f.validity.notBefore.getTime(),
          f.validity.notAfter.getTime(),
          f.subject.attributes.map((a) => [a.shortName, String(a.value)]),
          fAlt,
        ]);
      }
      const v = verifyPeer({ handshakeOk: true, authorized: true, authorizationError: null, peerDer: new Uint8Array(b), protocol: "TLSv1.3" }, { revocations: parseRevocations(REVOCATIONS_HEADER + "\n"), roles: ["relay"] }, NOW);
      if (v.ok) expect(v.id).toBe("relay-1");
    }
    // Most mutations leave a readable certificate (a byte of the key or the signature): the comparison ran.
    expect(both).toBeGreaterThan(400);
  });
});
