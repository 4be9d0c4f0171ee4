// The real idle connector for bench/lib/idle.ts: each connection is one onsite device with its
// own certificate (CN site-idle-N), dialing the relay over TLS 1.3 with mutual auth, sending
// HELLO and its inventory, then idle but for keepalive PINGs: exactly what a fleet of quiet
// devices costs a relay. Certificates are signed in this process with one shared RSA key (a
// key per device would take minutes to generate and changes nothing on the relay's side).
import { sign } from "node:crypto";
import { readFileSync } from "node:fs";
import forge from "node-forge";
import { caPaths, generateKeyPair, parseCa, randomSerial, type CaMaterial, type KeyPair } from "../../src/pki.ts";
import { Connection } from "../../src/transport/mux.ts";
import { Msg, PROTOCOL_VERSIONS } from "../../src/transport/messages.ts";
import { dialTls, type TlsMaterial } from "../../src/transport/tls.ts";
import type { IdleConnection, IdleConnector, IdleContext } from "./idle.ts";

let ca: CaMaterial | null = null;
let caPem = "";
let caKeyPem = "";
let key: KeyPair | null = null;
const issued = new Map<number, TlsMaterial>();

function idOf(i: number): string {
  return `site-idle-${i}`;
}

function issue(i: number): TlsMaterial {
  const cert = forge.pki.createCertificate();
  cert.publicKey = key!.publicKey;
  cert.serialNumber = randomSerial();
  const now = Date.now();
  cert.validity.notBefore = new Date(now - 3_600_000);
  cert.validity.notAfter = new Date(now + 86_400_000);
  const id = idOf(i);
  cert.setSubject([
    { name: "organizationName", value: "agent fleet" },
    { shortName: "OU", value: "onsite" },
    { name: "commonName", value: id },
  ]);
  cert.setIssuer(ca!.cert.subject.attributes);
  cert.setExtensions([
    { name: "basicConstraints", cA: false, critical: true },
    { name: "keyUsage", digitalSignature: true, keyEncipherment: true, critical: true },
    { name: "extKeyUsage", clientAuth: true },
    { name: "subjectAltName", altNames: [{ type: 6, value: `agent://onsite/${id}` }] },
  ]);
  // forge's own RSA signing is pure JavaScript (~150 ms a certificate here); sign the
  // to-be-signed part natively instead (~1 ms), which makes 5,000 devices practical.
  cert.signatureOid = cert.siginfo.algorithmOid = forge.pki.oids.sha256WithRSAEncryption!;
  const { getTBSCertificate } = forge.pki as unknown as { getTBSCertificate(c: forge.pki.Certificate): forge.asn1.Asn1 };
  const tbs = forge.asn1.toDer(getTBSCertificate(cert)).getBytes();
  cert.signature = sign("sha256", Buffer.from(tbs, "binary"), caKeyPem).toString("binary");
  return { certPem: forge.pki.certificateToPem(cert), keyPem: key!.keyPem, caPem };
}

export const connector: IdleConnector = {
  async prepare(ctx: IdleContext, from: number, to: number): Promise<void> {
    if (!ca) {
      const p = caPaths(ctx.pkiDir);
      caPem = readFileSync(p.cert, "utf8");
      caKeyPem = readFileSync(p.key, "utf8");
      ca = parseCa(caPem, caKeyPem);
      key = generateKeyPair();
    }
    for (let i = from; i < to; i++) if (!issued.has(i)) issued.set(i, issue(i));
  },

  async open(ctx: IdleContext, index: number): Promise<IdleConnection> {
    const tls = issued.get(index) ?? issue(index);
    const [host, port] = ctx.relay.split(":") as [string, string];
    const link = await dialTls({ host, port: Number(port), tls });
    const conn = new Connection(link, { side: "dialer" });
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("no WELCOME within 30 s")), 30_000);
      conn.on(Msg.WELCOME, () => {
        clearTimeout(t);
        resolve();
      });
      void conn.wait().then((why) => {
        clearTimeout(t);
        reject(new Error(`relay closed: ${why.message}`));
      });
      conn.send(Msg.HELLO, { versions: [...PROTOCOL_VERSIONS], role: "onsite", id: idOf(index), agent: "idle-bench" });
    });
    conn.send(Msg.INVENTORY, { hostname: `idle-${index}`, location: "bench", agent: "idle-bench", uptime: 1, uplink: "lo" });
    conn.startKeepalive();
    return { close: () => conn.close(0, "bench done") };
  },
};

/** The TLS material of device `index` (CN site-idle-N), signed by the fleet CA in `pkiDir` (for test/helpers/device-swarm.ts). */
export async function deviceMaterial(pkiDir: string, index: number): Promise<TlsMaterial> {
  await connector.prepare!({ relay: "", workDir: "", pkiDir }, index, index + 1);
  return issued.get(index)!;
}
export const deviceId = idOf;
