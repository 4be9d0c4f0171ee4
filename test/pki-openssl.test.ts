// Issued certificates and bundles checked by the real openssl, not by our own parser.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { initCa, issueToFile, loadBundle, type Bundle, type Role } from "../src/pki.ts";

function openssl(args: string[]): { code: number; out: string; err: string } {
  const p = Bun.spawnSync(["openssl", ...args], { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

let root: string;
let caFile: string;
let strangerCa: string;
const bundles = {} as Record<Role, { file: string; cert: string; b: Bundle }>;
const devices = [
  ["relay", "relay-1", ["relay.example.net", "203.0.113.5", "2001:db8::1"]],
  ["onsite", "site-1", []],
  ["master", "tech-1", []],
] as const;

beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), "agent-pki-openssl-"));
  const dir = path.join(root, "ca");
  await initCa(dir);
  caFile = path.join(dir, "ca.crt");
  await initCa(path.join(root, "stranger"));
  strangerCa = path.join(root, "stranger", "ca.crt");
  for (const [role, id, hosts] of devices) {
    const file = path.join(root, `${id}.bundle`);
    await issueToFile(dir, { role, id, hosts, out: file });
    const b = await loadBundle(file);
    const cert = path.join(root, `${id}.crt`);
    await writeFile(cert, b.certPem);
    bundles[role] = { file, cert, b };
  }
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

test("openssl is available", () => {
  expect(openssl(["version"]).code).toBe(0);
});

test("the CA is self-signed, CA:TRUE, keyCertSign and cRLSign", () => {
  expect(openssl(["verify", "-CAfile", caFile, caFile]).out).toContain(": OK");
  const ext = openssl(["x509", "-in", caFile, "-noout", "-ext", "basicConstraints,keyUsage"]);
  expect(ext.code).toBe(0);
  expect(ext.out).toMatch(/Basic Constraints: critical\s+CA:TRUE/);
  expect(ext.out).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);
  expect(openssl(["x509", "-in", caFile, "-noout", "-subject"]).out.trim()).toBe("subject=O = agent fleet, CN = agent fleet CA");
});

describe.each(devices)("%s certificate", (role, id, hosts) => {
  const get = () => bundles[role];

  test("verifies against the fleet CA, for its TLS purpose", () => {
    const ok = openssl(["verify", "-CAfile", caFile, get().cert]);
    expect(ok.code).toBe(0);
    expect(ok.out.trim()).toBe(`${get().cert}: OK`);
    expect(openssl(["verify", "-CAfile", caFile, "-purpose", "sslclient", get().cert]).code).toBe(0);
    const server = openssl(["verify", "-CAfile", caFile, "-purpose", "sslserver", get().cert]);
    expect(server.code === 0).toBe(role === "relay");
  });

  test("fails against another CA", () => {
    const bad = openssl(["verify", "-CAfile", strangerCa, get().cert]);
    expect(bad.code).not.toBe(0);
    expect(bad.out + bad.err).toContain("unable to get local issuer certificate");
  });

  test("carries id and role in the subject and in the URI SAN", () => {
    const subj = openssl(["x509", "-in", get().file, "-noout", "-subject"]);
    expect(subj.code).toBe(0);
    expect(subj.out.trim()).toBe(`subject=O = agent fleet, OU = ${role}, CN = ${id}`);
    const san = openssl(["x509", "-in", get().file, "-noout", "-ext", "subjectAltName"]);
    expect(san.out).toContain(`URI:agent://${role}/${id}`);
    const dns = hosts.filter((h) => /[a-z]/.test(h) && !h.includes(":"));
    for (const h of dns) expect(san.out).toContain(`DNS:${h}`);
    if (role === "relay") {
      expect(san.out).toContain("IP Address:203.0.113.5");
      expect(san.out).toContain("IP Address:2001:DB8:0:0:0:0:0:1");
    } else {
      expect(san.out).not.toContain("DNS:");
      expect(san.out).not.toContain("IP Address:");
    }
  });

  test("extended key usage: serverAuth only for the relay, clientAuth for all", () => {
    const eku = openssl(["x509", "-in", get().file, "-noout", "-ext", "extendedKeyUsage,basicConstraints"]).out;
    expect(eku).toContain("TLS Web Client Authentication");
    expect(eku.includes("TLS Web Server Authentication")).toBe(role === "relay");
    expect(eku).toMatch(/CA:FALSE/);
  });

  test("RSA-2048, SHA-256, positive 128-bit serial, notBefore a few minutes back", () => {
    const text = openssl(["x509", "-in", get().file, "-noout", "-text"]).out;
    expect(text).toContain("Public-Key: (2048 bit)");
    expect(text).toContain("Signature Algorithm: sha256WithRSAEncryption");
    const serial = openssl(["x509", "-in", get().file, "-noout", "-serial"]).out.trim();
    expect(serial).toBe(`serial=${get().b.serial.toUpperCase()}`);
    expect(serial).toMatch(/^serial=[1-7][0-9A-F]{31}$/);
    const start = openssl(["x509", "-in", get().file, "-noout", "-startdate"]).out.trim().replace("notBefore=", "");
    const skew = Date.now() - new Date(start).getTime();
    expect(skew).toBeGreaterThan(4 * 60_000);
    expect(skew).toBeLessThan(10 * 60_000);
    // 825 days by default.
    expect(openssl(["x509", "-in", get().file, "-noout", "-checkend", String(824 * 86_400)]).code).toBe(0);
    expect(openssl(["x509", "-in", get().file, "-noout", "-checkend", String(826 * 86_400)]).code).not.toBe(0);
  });

  test("the bundle's key is the certificate's key, as openssl reads them", () => {
    const fromKey = openssl(["pkey", "-in", get().file, "-pubout"]);
    const fromCert = openssl(["x509", "-in", get().file, "-noout", "-pubkey"]);
    expect(fromKey.code).toBe(0);
    expect(fromKey.out).toContain("BEGIN PUBLIC KEY");
    expect(fromKey.out).toBe(fromCert.out);
  });
});
