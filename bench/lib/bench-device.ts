// What the bench's many devices share (bench/lib/idle-connector.ts, bench/lib/soak-load.ts):
// a device certificate signed in this process with one shared RSA key, and the HELLO that
// waits for the relay's WELCOME.
import { sign } from "node:crypto";
import forge from "node-forge";
import { randomSerial, type CaMaterial, type KeyPair } from "../../src/pki.ts";
import type { Connection } from "../../src/transport/mux.ts";
import { Msg, PROTOCOL_VERSIONS } from "../../src/transport/messages.ts";
import type { TlsMaterial } from "../../src/transport/tls.ts";

export interface BenchCa {
  ca: CaMaterial;
  caPem: string;
  caKeyPem: string;
  /** The one key pair every device certificate carries. */
  key: KeyPair;
}

/** The certificate of `role`/`id` (CN id, OU role, SAN agent://role/id), valid from an hour ago for `days`. */
export function issueDevice(c: BenchCa, role: "onsite" | "master", id: string, days: number): TlsMaterial {
  const cert = forge.pki.createCertificate();
  cert.publicKey = c.key.publicKey;
  cert.serialNumber = randomSerial();
  const now = Date.now();
  cert.validity.notBefore = new Date(now - 3_600_000);
  cert.validity.notAfter = new Date(now + days * 86_400_000);
  cert.setSubject([
    { name: "organizationName", value: "agent fleet" },
    { shortName: "OU", value: role },
    { name: "commonName", value: id },
  ]);
  cert.setIssuer(c.ca.cert.subject.attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: false, critical: true },
    { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
    { name: "extKeyUsage", clientAuth: true },
    { name: "subjectAltName", altNames: [{ type: 6, value: `agent://${role}/${id}` }] },
  ]);
  // forge's own RSA signing is pure JavaScript (~150 ms a certificate here); sign the
  // to-be-signed part natively instead (~1 ms), which makes 5,000 devices practical.
  cert.signatureOid = cert.siginfo.algorithmOid = forge.pki.oids.sha256WithRSAEncryption!;
  const { getTBSCertificate } = forge.pki as unknown as { getTBSCertificate(c: forge.pki.Certificate): forge.asn1.Asn1 };
  const tbs = forge.asn1.toDer(getTBSCertificate(cert)).getBytes();
  cert.signature = sign("sha256", Buffer.from(tbs, "binary"), c.caKeyPem).toString("binary");
  return { certPem: forge.pki.certificateToPem(cert), keyPem: c.key.keyPem, caPem: c.caPem };
}

/** Says HELLO as `role`/`id` and resolves on the WELCOME; rejects if the relay closes first or 30 s pass. */
export function helloWelcome(conn: Connection, role: "onsite" | "master", id: string, agent: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("no WELCOME within 30 s")), 30_000);
    conn.on(Msg.WELCOME, () => {
      clearTimeout(t);
      resolve();
    });
    void conn.wait().then((why) => {
      clearTimeout(t);
      reject(new Error(`relay closed: ${why.message}`));
    });
    conn.send(Msg.HELLO, { versions: [...PROTOCOL_VERSIONS], role, id, agent });
  });
}
