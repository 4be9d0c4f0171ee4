// Unit tests of src/pki.ts: pure helpers by table, then the CA directory on a temp dir.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import forge from "node-forge";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { RuntimeError, UsageError } from "../src/errors.ts";
import {
  BUNDLE_HEADER,
  caPaths,
  certificateIdentity,
  certStatus,
  checkIssueRequest,
  CLOCK_SKEW_MS,
  createCa,
  formatBundle,
  formatRevocations,
  generateKeyPair,
  IdentityError,
  initCa,
  inspectBundle,
  isRevoked,
  issueCertificate,
  issueToFile,
  listCerts,
  loadBundle,
  loadRevocations,
  normalizeSerial,
  parseBundle,
  parseCa,
  parseDays,
  parseHost,
  parseIndex,
  parseRevocations,
  randomSerial,
  REVOCATIONS_HEADER,
  revokeId,
  roleOfCertificate,
  validateId,
  type CaMaterial,
  type CertRecord,
} from "../src/pki.ts";

const temps: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), "agent-pki-"));
  temps.push(d);
  return d;
}
afterAll(async () => {
  await Promise.all(temps.map((d) => rm(d, { recursive: true, force: true })));
});

const modeOf = async (p: string) => (await stat(p)).mode & 0o777;

/** Message and hint of what `fn` throws, for assertions on both. */
function thrown(fn: () => unknown): { err: Error; text: string } {
  try {
    fn();
  } catch (e) {
    const err = e as Error & { hint?: string };
    return { err, text: `${err.message}\nhint: ${err.hint ?? ""}` };
  }
  throw new Error("expected a throw");
}

async function thrownAsync(p: Promise<unknown>): Promise<{ err: Error; text: string }> {
  try {
    await p;
  } catch (e) {
    const err = e as Error & { hint?: string };
    return { err, text: `${err.message}\nhint: ${err.hint ?? ""}` };
  }
  throw new Error("expected a rejection");
}

// One fleet (and a stranger fleet) shared by the pure tests; key generation is the slow part.
let fleet: CaMaterial;
let stranger: CaMaterial;
beforeAll(() => {
  const a = createCa();
  fleet = parseCa(a.certPem, a.keyPem);
  const b = createCa({ name: "someone else's CA" });
  stranger = parseCa(b.certPem, b.keyPem);
});

describe("ids", () => {
  test.each(["a", "0", "site-1", "relay.eu-1", "tech_anna", "x".repeat(63), "a..b"])("valid %p", (id) => {
    expect(validateId(id)).toBe(id);
  });
  test.each([
    ["", "empty"],
    ["Site-1", "uppercase"],
    ["site 1", "space"],
    ["../x", "path traversal"],
    ["a/b", "slash"],
    ["-a", "leading dash"],
    [".a", "leading dot"],
    ["_a", "leading underscore"],
    ["a;rm -rf", "shell ;"],
    ["a$(x)", "shell $"],
    ["a`b`", "backtick"],
    ["x".repeat(64), "64 chars"],
    ["sité", "non-ASCII"],
    ["a\nb", "newline"],
  ])("invalid %p (%s) is a UsageError quoting the rule", (id) => {
    const { err, text } = thrown(() => validateId(id));
    expect(err).toBeInstanceOf(UsageError);
    expect(text).toContain(`invalid id ${JSON.stringify(id)}`);
    expect(text).toContain("1-63 characters: lowercase letters, digits");
  });
});

describe("hosts", () => {
  test.each([
    ["relay.example.net", "dns", "relay.example.net"],
    ["Relay.Example.NET", "dns", "relay.example.net"],
    ["localhost", "dns", "localhost"],
    ["203.0.113.5", "ip", "203.0.113.5"],
    ["2001:DB8::0001", "ip", "2001:db8::1"],
    ["[::1]", "ip", "::1"],
  ])("%p → %s %p", (text, type, value) => {
    expect(parseHost(text)).toEqual({ type: type as "dns" | "ip", value });
  });
  test.each(["", "-bad.example", "a b", "1.2.3", "256.1.1.1", "01.2.3.4", "fe80::1%eth0", "2001:db8::g", "*.example.net", "a_b.example"])(
    "invalid %p",
    (text) => {
      const { err, text: msg } = thrown(() => parseHost(text));
      expect(err).toBeInstanceOf(UsageError);
      expect(msg).toContain(`invalid --host ${JSON.stringify(text)}`);
    },
  );
});

describe("days", () => {
  test.each([
    ["1", 1],
    ["825", 825],
    ["3650", 3650],
  ])("%p → %d", (v, n) => expect(parseDays(v, 1, 3650)).toBe(n));
  test.each(["0", "3651", "-1", "1.5", "10d", "", "0825", " 5"])("%p refused", (v) => {
    expect(() => parseDays(v, 1, 3650)).toThrow("--days must be a whole number of days from 1 to 3650");
  });
});

describe("serials", () => {
  test("random serials are positive 128-bit, 32 hex digits, no sign byte, distinct", () => {
    const seen = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const s = randomSerial();
      expect(s).toMatch(/^[1-7][0-9a-f]{31}$/);
      seen.add(s);
    }
    expect(seen.size).toBe(200);
  });
  test.each([
    ["0A1B", "a1b"],
    ["00ff", "ff"],
    ["0", "0"],
    ["DEADbeef", "deadbeef"],
  ])("normalizeSerial(%p) = %p", (a, b) => expect(normalizeSerial(a)).toBe(b));
  test.each(["", "xyz", "12:34", "f".repeat(41)])("normalizeSerial(%p) throws", (a) => expect(() => normalizeSerial(a)).toThrow("hex digits"));
});

describe("issue requests", () => {
  test.each([
    [{ role: "onsite", id: "site-1", hosts: ["x.example"] }, "--host is only for relay certificates, not onsite"],
    [{ role: "master", id: "tech-1", hosts: ["10.0.0.1"] }, "--host is only for relay certificates, not master"],
    [{ role: "relay", id: "relay-1", hosts: [] }, "a relay certificate needs at least one --host"],
    [{ role: "relay", id: "relay-1" }, "a relay certificate needs at least one --host"],
    [{ role: "onsite", id: "site-1", days: 0 }, "--days must be a whole number of days from 1 to 3650"],
    [{ role: "onsite", id: "site-1", days: 3651 }, "--days must be"],
    [{ role: "onsite", id: "Site-1" }, "invalid id"],
    [{ role: "gateway", id: "g1" }, 'invalid role "gateway"'],
  ] as const)("%j refused: %s", (req, msg) => {
    const { err, text } = thrown(() => checkIssueRequest(req as never));
    expect(err).toBeInstanceOf(UsageError);
    expect(text).toContain(msg);
    expect((err as UsageError).hint).toBeTruthy();
  });
  test("relay hosts are parsed and de-duplicated", () => {
    expect(checkIssueRequest({ role: "relay", id: "r1", hosts: ["A.example", "a.example", "10.0.0.1"] }).hosts).toEqual([
      { type: "dns", value: "a.example" },
      { type: "ip", value: "10.0.0.1" },
    ]);
  });
});

describe("certificates", () => {
  test("the CA is self-signed, CA:true with keyCertSign/cRLSign, ~10 years, named", () => {
    const c = fleet.cert;
    expect(c.verify(c)).toBe(true);
    expect(c.getExtension("basicConstraints")).toMatchObject({ cA: true, critical: true });
    expect(c.getExtension("keyUsage")).toMatchObject({ keyCertSign: true, cRLSign: true, critical: true });
    expect(c.subject.getField("CN").value).toBe("agent fleet CA");
    const years = (c.validity.notAfter.getTime() - Date.now()) / (365.25 * 86_400_000);
    expect(years).toBeGreaterThan(9.9);
    expect(years).toBeLessThan(10.1);
    expect(stranger.cert.subject.getField("CN").value).toBe("someone else's CA");
  });

  test.each([
    ["relay", "relay-1", ["relay.example.net", "203.0.113.5", "2001:db8::1"]],
    ["onsite", "site-1", []],
    ["master", "tech-1", []],
  ] as const)("%s certificate carries id and role in subject and URI SAN", (role, id, hosts) => {
    const now = new Date("2027-03-01T12:00:00Z");
    const issued = issueCertificate(fleet, { role, id, hosts, now });
    const cert = forge.pki.certificateFromPem(issued.certPem);
    expect(fleet.cert.verify(cert)).toBe(true);
    expect(stranger.cert.issued(cert)).toBe(false);
    const ident = certificateIdentity(issued.certPem);
    expect(ident).toMatchObject({ id, role, serial: issued.serial, hosts: [...hosts] });
    expect(ident.subject).toBe(`O=agent fleet, OU=${role}, CN=${id}`);
    expect(ident.sans[0]).toBe(`URI:agent://${role}/${id}`);
    expect(roleOfCertificate(issued.certPem)).toBe(role);
    const eku = cert.getExtension("extKeyUsage") as { serverAuth?: boolean; clientAuth?: boolean };
    expect(Boolean(eku.serverAuth)).toBe(role === "relay");
    expect(eku.clientAuth).toBe(true);
    expect(cert.getExtension("basicConstraints")).toMatchObject({ cA: false });
    expect(issued.notBefore.getTime()).toBe(now.getTime() - CLOCK_SKEW_MS);
    expect(issued.notAfter.getTime()).toBe(now.getTime() + 825 * 86_400_000);
    expect(cert.siginfo.algorithmOid).toBe(forge.pki.oids.sha256WithRSAEncryption!);
    expect((cert.publicKey as forge.pki.rsa.PublicKey).n.bitLength()).toBe(2048);
    // The peer certificate as node:tls hands it over (DER) gives the same identity.
    const der = Buffer.from(forge.asn1.toDer(forge.pki.certificateToAsn1(cert)).getBytes(), "binary");
    expect(certificateIdentity(new Uint8Array(der))).toMatchObject({ id, role, serial: issued.serial });
  });

  test("a device certificate may not outlive its CA", () => {
    const short = createCa({ days: 30 });
    const ca = parseCa(short.certPem, short.keyPem);
    const { err, text } = thrown(() => issueCertificate(ca, { role: "onsite", id: "s", days: 31 }));
    expect(err).toBeInstanceOf(UsageError);
    expect(text).toContain("--days 31 would outlive the fleet CA");
    expect(text).toMatch(/use --days (29|30) or less/);
    expect(issueCertificate(ca, { role: "onsite", id: "s", days: 29 }).serial).toMatch(/^[0-9a-f]{32}$/);
  });

  test("an expired CA issues nothing", () => {
    expect(() => issueCertificate(fleet, { role: "onsite", id: "s", now: new Date(Date.now() + 11 * 365 * 86_400_000) })).toThrow("the fleet CA is not valid now");
  });

  /** A certificate signed by the fleet CA with a hand-made subject and SANs. */
  function custom(subject: Array<{ shortName: string; value: string }>, uris: string[]): string {
    const kp = generateKeyPair();
    const c = forge.pki.createCertificate();
    c.publicKey = kp.publicKey;
    c.serialNumber = randomSerial();
    c.validity.notBefore = new Date(Date.now() - 60_000);
    c.validity.notAfter = new Date(Date.now() + 86_400_000);
    c.setSubject(subject);
    c.setIssuer(fleet.cert.subject.attributes);
    if (uris.length > 0) c.setExtensions([{ name: "subjectAltName", altNames: uris.map((value) => ({ type: 6, value })) }]);
    c.sign(fleet.key, forge.md.sha256.create());
    return forge.pki.certificateToPem(c);
  }
  const O = { shortName: "O", value: "agent fleet" };
  test.each([
    ["no OU", [O, { shortName: "CN", value: "s1" }], ["agent://onsite/s1"], "exactly one OU"],
    ["two OUs", [O, { shortName: "OU", value: "onsite" }, { shortName: "OU", value: "relay" }, { shortName: "CN", value: "s1" }], ["agent://onsite/s1"], "exactly one OU"],
    ["OU not a role", [O, { shortName: "OU", value: "admin" }, { shortName: "CN", value: "s1" }], ["agent://admin/s1"], 'OU "admin" is not a role'],
    ["no CN", [O, { shortName: "OU", value: "onsite" }], ["agent://onsite/s1"], "exactly one CN"],
    ["bad CN", [O, { shortName: "OU", value: "onsite" }, { shortName: "CN", value: "S 1" }], ["agent://onsite/S 1"], "not a valid device id"],
    ["no URI SAN", [O, { shortName: "OU", value: "onsite" }, { shortName: "CN", value: "s1" }], [], "exactly one agent:// URI SAN, found 0"],
    ["URI role disagrees", [O, { shortName: "OU", value: "onsite" }, { shortName: "CN", value: "s1" }], ["agent://relay/s1"], "disagrees with its subject"],
    ["URI id disagrees", [O, { shortName: "OU", value: "onsite" }, { shortName: "CN", value: "s1" }], ["agent://onsite/s2"], "disagrees with its subject"],
    ["two URIs", [O, { shortName: "OU", value: "onsite" }, { shortName: "CN", value: "s1" }], ["agent://onsite/s1", "agent://relay/s1"], "found 2"],
  ])("identity refused: %s", (_name, subject, uris, msg) => {
    const pem = custom(subject, uris);
    const { err } = thrown(() => certificateIdentity(pem));
    expect(err).toBeInstanceOf(IdentityError);
    expect(err.message).toContain(msg);
  });

  test("garbage is not a certificate", () => {
    expect(() => certificateIdentity("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")).toThrow(IdentityError);
    expect(() => certificateIdentity(new Uint8Array([1, 2, 3]))).toThrow("not a valid X.509 certificate");
  });

  test("bundles work for TLS 1.3 mutual authentication, and the peer identity reads from DER", async () => {
    const relay = issueCertificate(fleet, { role: "relay", id: "relay-1", hosts: ["localhost", "127.0.0.1"] });
    const site = issueCertificate(fleet, { role: "onsite", id: "site-1" });
    const seen: string[] = [];
    const server = tls.createServer(
      { key: relay.keyPem, cert: relay.certPem, ca: fleet.certPem, requestCert: true, rejectUnauthorized: true, minVersion: "TLSv1.3" },
      (s) => {
        const peer = s.getPeerCertificate();
        const ident = certificateIdentity(new Uint8Array(peer.raw));
        seen.push(`${s.authorized} ${ident.role} ${ident.id} ${ident.serial === normalizeSerial(peer.serialNumber)}`);
        s.end("hi");
      },
    );
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const port = (server.address() as { port: number }).port;
      const reply = await new Promise<string>((resolve, reject) => {
        const c = tls.connect({ host: "127.0.0.1", port, servername: "localhost", key: site.keyPem, cert: site.certPem, ca: fleet.certPem }, () => {
          expect(c.authorized).toBe(true);
        });
        let data = "";
        c.on("data", (d) => (data += d));
        c.on("end", () => resolve(data));
        c.on("error", reject);
      });
      expect(reply).toBe("hi");
      expect(seen).toEqual(["true onsite site-1 true"]);
    } finally {
      server.close();
    }
  });
});

describe("bundle text", () => {
  let good: string;
  let other: string;
  let otherFleet: string;
  beforeAll(() => {
    const a = issueCertificate(fleet, { role: "onsite", id: "site-1" });
    good = formatBundle({ role: "onsite", id: "site-1", certPem: a.certPem, keyPem: a.keyPem, caPem: fleet.certPem });
    const b = issueCertificate(fleet, { role: "master", id: "tech-1" });
    other = formatBundle({ role: "master", id: "tech-1", certPem: b.certPem, keyPem: b.keyPem, caPem: fleet.certPem });
    const c = issueCertificate(stranger, { role: "onsite", id: "site-1" });
    otherFleet = formatBundle({ role: "onsite", id: "site-1", certPem: c.certPem, keyPem: c.keyPem, caPem: stranger.certPem });
  });

  /** The PEM blocks of a bundle text, in order. */
  const blocks = (t: string) => t.match(/-----BEGIN [A-Z ]+-----\n[\s\S]*?-----END [A-Z ]+-----\n/g)!;
  const head = (t: string) => t.slice(0, t.indexOf("-----BEGIN"));

  test("round trip", () => {
    const b = parseBundle(good, "x.bundle");
    expect(b).toMatchObject({ id: "site-1", role: "onsite", path: "x.bundle", hosts: [] });
    expect(b.keyPem).toStartWith("-----BEGIN PRIVATE KEY-----\n");
    expect(b.certPem).toBe(blocks(good)[0]!);
    expect(b.caPem).toBe(blocks(good)[2]!);
    expect(b.serial).toMatch(/^[0-9a-f]{32}$/);
    expect(b.notAfter.getTime()).toBeGreaterThan(b.notBefore.getTime());
    expect(good.startsWith(`${BUNDLE_HEADER}\n# role: onsite\n# id: site-1\n`)).toBe(true);
    expect(parseBundle(good.replace(/\n/g, "\r\n"), "crlf").id).toBe("site-1");
  });

  const cases: Array<[string, () => string, string]> = [
    ["empty file", () => "", "not an agent bundle"],
    ["no header line", () => good.split("\n").slice(1).join("\n"), "not an agent bundle"],
    ["missing role header", () => good.replace("# role: onsite\n", ""), 'no "# role: ROLE" line'],
    ["missing id header", () => good.replace("# id: site-1\n", ""), 'no "# id: ID" line'],
    ["duplicate id header", () => good.replace("# id: site-1\n", "# id: site-1\n# id: site-2\n"), '"id" is given twice'],
    ["truncated inside the CA block", () => good.slice(0, good.length - 200), "has no END line (the file is truncated)"],
    ["truncated before the CA block", () => head(good) + blocks(good)[0] + blocks(good)[1], "missing the CA certificate"],
    ["only a certificate", () => head(good) + blocks(good)[0], "missing the private key"],
    ["no blocks at all", () => head(good), "missing the device certificate"],
    ["blocks out of order", () => head(good) + blocks(good)[1] + blocks(good)[0] + blocks(good)[2], "block 1 (line 5) is PRIVATE KEY; expected the device certificate"],
    ["a fourth block", () => good + blocks(good)[2], "a bundle holds three blocks"],
    ["text before the blocks", () => head(good) + "hello\n" + blocks(good).join(""), "line 5: unexpected text outside a PEM block"],
    ["text between blocks", () => head(good) + blocks(good)[0] + "hello\n" + blocks(good)[1] + blocks(good)[2], "unexpected text outside a PEM block"],
    ["PKCS#1 key", () => good.replace(/PRIVATE KEY-----/g, "RSA PRIVATE KEY-----"), 'the key must be PKCS#8 ("PRIVATE KEY")'],
    ["non-base64 in a block", () => good.replace(/(-----BEGIN CERTIFICATE-----\n)(.)/, "$1!"), "not base64 inside the CERTIFICATE block"],
    ["garbled certificate body", () => good.replace(/(-----BEGIN CERTIFICATE-----\n)[A-Za-z0-9+/]{8}/, "$1AAAAAAAA"), "cannot be parsed"],
    ["key of another device", () => head(good) + blocks(good)[0] + blocks(other)[1] + blocks(good)[2], "the private key does not match the device certificate"],
    ["CA of another fleet", () => head(good) + blocks(good)[0] + blocks(good)[1] + blocks(otherFleet)[2], "not signed by the bundle's CA"],
    ["certificate of another fleet", () => head(good) + blocks(otherFleet)[0] + blocks(otherFleet)[1] + blocks(good)[2], "not signed by the bundle's CA"],
    ["device cert where the CA goes", () => head(good) + blocks(good)[0] + blocks(good)[1] + blocks(other)[0], "not a CA certificate"],
    ["header role disagrees", () => good.replace("# role: onsite", "# role: relay"), 'the header says role "relay" but the certificate says onsite'],
    ["header id disagrees", () => good.replace("# id: site-1", "# id: site-2"), 'the header says id "site-2" but the certificate says site-1'],
  ];
  test.each(cases)("refused: %s", (_name, make, msg) => {
    const { err, text } = thrown(() => parseBundle(make(), "dev.bundle"));
    expect(err).toBeInstanceOf(UsageError);
    expect(text).toContain(`bundle dev.bundle: `);
    expect(text).toContain(msg);
    expect(text).toContain("hint: ");
    // No key material in any message.
    expect(text).not.toContain("PRIVATE KEY-----");
    const keyLine = blocks(good)[1]!.split("\n")[5]!;
    expect(text).not.toContain(keyLine);
  });

  test("a signature broken by one flipped character is caught", () => {
    // Flip a base64 character inside the signature (the certificate's last line before END).
    const cert = blocks(good)[0]!;
    const lines = cert.split("\n");
    const last = lines.length - 3;
    const l = lines[last]!;
    const pos = Math.max(0, l.length - 12);
    lines[last] = l.slice(0, pos) + (l[pos] === "A" ? "B" : "A") + l.slice(pos + 1);
    const tampered = good.replace(cert, lines.join("\n"));
    expect(tampered).not.toBe(good);
    expect(() => parseBundle(tampered, "t.bundle")).toThrow("not signed by the bundle's CA");
  });

  test("inspectBundle reports every problem instead of stopping", () => {
    const r = inspectBundle(good.replace("# id: site-1", "# id: site-2"), "x.bundle", 0o100644);
    expect(r.verified).toBe(true);
    expect(r.identity?.id).toBe("site-1");
    expect(r.problems).toHaveLength(2);
    expect(r.problems[0]).toContain('the header says id "site-2"');
    expect(r.problems[1]).toContain("mode 0644 lets group or others reach the private key");
    expect(inspectBundle(good, "x.bundle", 0o100600).problems).toEqual([]);
  });
});

describe("revocation list", () => {
  const S1 = "1a2b3c4d5e6f708192a3b4c5d6e7f801";
  test("parses serials (normalized), ids and times; skips comments and blank lines", () => {
    const list = parseRevocations(`${REVOCATIONS_HEADER}\n# a comment\n\n${S1} site-1 2026-01-31T12:00:00Z\r\n00ABCDEF  tech-1\t2026-02-01T00:00:00.123Z\n`);
    expect(list.entries).toEqual([
      { serial: S1, id: "site-1", revokedAt: new Date("2026-01-31T12:00:00Z") },
      { serial: "abcdef", id: "tech-1", revokedAt: new Date("2026-02-01T00:00:00.123Z") },
    ]);
    expect(isRevoked(list, S1.toUpperCase())).toBe(true);
    expect(isRevoked(list, "0abcdef")).toBe(true);
    expect(isRevoked(list, "abcdee")).toBe(false);
    expect(isRevoked(list, "not hex")).toBe(false);
    expect(parseRevocations(`${REVOCATIONS_HEADER}\n`).entries).toEqual([]);
  });
  test.each([
    ["", "line 1: expected the header"],
    ["# agent revocations v2\n", "line 1: expected the header"],
    [`${S1} site-1 2026-01-31T12:00:00Z\n`, "line 1: expected the header"],
    [`${REVOCATIONS_HEADER}\n${S1} site-1\n`, "line 2: expected 3 fields (serial, id, time), found 2"],
    [`${REVOCATIONS_HEADER}\n\n${S1} site-1 2026-01-31T12:00:00Z extra\n`, "line 3: expected 3 fields"],
    [`${REVOCATIONS_HEADER}\nxyz site-1 2026-01-31T12:00:00Z\n`, "line 2: expected a certificate serial of 1-40 hex digits"],
    [`${REVOCATIONS_HEADER}\n${S1} Site-1 2026-01-31T12:00:00Z\n`, 'line 2: invalid id "Site-1"'],
    [`${REVOCATIONS_HEADER}\n${S1} site-1 yesterday\n`, "line 2: expected an ISO 8601 UTC time"],
    [`${REVOCATIONS_HEADER}\n${S1} site-1 2026-01-31T12:00:00+01:00\n`, "line 2: expected an ISO 8601 UTC time"],
    [`${REVOCATIONS_HEADER}\n${S1} site-1 2026-13-31T12:00:00Z\n`, "line 2: expected an ISO 8601 UTC time"],
  ])("rejects %p", (text, msg) => {
    const { err, text: m } = thrown(() => parseRevocations(text, "revoked"));
    expect(err).toBeInstanceOf(UsageError);
    expect(m).toContain(`revoked ${msg}`);
  });
  test("formatRevocations writes what parseRevocations reads, revoked records only", () => {
    const rec = (serial: string, revoked: string | null): CertRecord => ({
      id: "site-1",
      role: "onsite",
      serial,
      notBefore: "2026-01-01T00:00:00Z",
      notAfter: "2028-01-01T00:00:00Z",
      hosts: [],
      revoked,
    });
    const text = formatRevocations([rec("bb", "2026-03-01T00:00:00Z"), rec("cc", null), rec("aa", "2026-02-01T00:00:00Z")]);
    expect(text.split("\n")[0]).toBe(REVOCATIONS_HEADER);
    expect(parseRevocations(text).entries.map((e) => e.serial)).toEqual(["aa", "bb"]);
  });
});

describe("certStatus and index", () => {
  const now = new Date("2027-01-01T00:00:00Z");
  test.each([
    ["valid", { notBefore: "2026-01-01T00:00:00Z", notAfter: "2028-01-01T00:00:00Z", revoked: null }],
    ["revoked", { notBefore: "2026-01-01T00:00:00Z", notAfter: "2028-01-01T00:00:00Z", revoked: "2026-06-01T00:00:00Z" }],
    ["expired", { notBefore: "2024-01-01T00:00:00Z", notAfter: "2026-12-31T23:59:59Z", revoked: null }],
    ["not-yet-valid", { notBefore: "2027-01-02T00:00:00Z", notAfter: "2028-01-01T00:00:00Z", revoked: null }],
  ] as const)("certStatus → %s", (s, r) => expect(certStatus(r, now)).toBe(s));
  test.each([
    ["{", "is not valid JSON"],
    ['{"version": 2, "certs": []}', "is not a version 1 index"],
    ['{"version": 1, "certs": [{"id": "X"}]}', "entry 1 is malformed"],
  ])("parseIndex(%p) refused", (text, msg) => {
    const { err } = thrown(() => parseIndex(text, "index.json"));
    expect(err).toBeInstanceOf(RuntimeError);
    expect(err.message).toContain(`CA index index.json ${msg}`.replace("index.json entry", "index.json: entry"));
  });
});

describe("CA directory", () => {
  let root: string;
  let savedUmask: number | undefined;
  afterEach(() => {
    if (savedUmask !== undefined) process.umask(savedUmask);
    savedUmask = undefined;
  });
  beforeAll(async () => {
    root = await tempDir();
  });

  test("init creates the directory (0700) and a 0600 key; parents too", async () => {
    const dir = path.join(root, "deep", "ca");
    const r = await initCa(dir, { name: "acme fleet CA" });
    expect(await modeOf(dir)).toBe(0o700);
    expect(await modeOf(path.join(dir, "ca.key"))).toBe(0o600);
    expect(await modeOf(path.join(dir, "certs"))).toBe(0o700);
    expect(r.fingerprint).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    expect(forge.pki.certificateFromPem(await readFile(path.join(dir, "ca.crt"), "utf8")).subject.getField("CN").value).toBe("acme fleet CA");
    expect(await listCerts(dir)).toEqual([]);
    expect((await loadRevocations(path.join(dir, "revoked"))).entries).toEqual([]);
  });

  test("init refuses to overwrite an existing CA and leaves it untouched", async () => {
    const dir = path.join(root, "twice");
    await initCa(dir);
    const key = await readFile(path.join(dir, "ca.key"), "utf8");
    const cert = await readFile(path.join(dir, "ca.crt"), "utf8");
    const { err, text } = await thrownAsync(initCa(dir));
    expect(err).toBeInstanceOf(UsageError);
    expect(text).toContain("already holds a fleet CA (ca.key exists); refusing to overwrite it");
    expect(text).toContain("hint: issue certificates with `agent pki issue");
    expect(await readFile(path.join(dir, "ca.key"), "utf8")).toBe(key);
    expect(await readFile(path.join(dir, "ca.crt"), "utf8")).toBe(cert);
  });

  test("init tightens an existing empty directory to 0700, refuses a loose non-empty one", async () => {
    const empty = path.join(root, "empty");
    await mkdir(empty, { mode: 0o755 });
    await chmod(empty, 0o755);
    await initCa(empty);
    expect(await modeOf(empty)).toBe(0o700);

    const busy = path.join(root, "busy");
    await mkdir(busy);
    await chmod(busy, 0o755);
    await writeFile(path.join(busy, "notes.txt"), "x");
    const { err, text } = await thrownAsync(initCa(busy));
    expect(err).toBeInstanceOf(UsageError);
    expect(text).toContain("has mode 0755 and is not empty");
    expect(text).toContain(`chmod 700 ${busy}`);
    expect(await modeOf(busy)).toBe(0o755);
  });

  test("init refuses a path that is a file, and bad options before creating anything", async () => {
    const f = path.join(root, "afile");
    await writeFile(f, "x");
    await expect(initCa(f)).rejects.toThrow("exists and is not a directory");
    const never = path.join(root, "never");
    await expect(initCa(never, { days: 0 })).rejects.toThrow("--days must be");
    await expect(stat(never)).rejects.toThrow();
  });

  describe("issue, revoke, list", () => {
    let dir: string;
    let out: string;
    beforeAll(async () => {
      dir = path.join(root, "fleet");
      out = path.join(root, "out");
      await initCa(dir);
      await mkdir(out);
    });

    test("issue writes a 0600 bundle even with umask 0, records the cert and keeps a copy", async () => {
      savedUmask = process.umask(0);
      const file = path.join(out, "relay-1.bundle");
      const r = await issueToFile(dir, { role: "relay", id: "relay-1", hosts: ["relay.example.net", "203.0.113.5"], out: file });
      expect(await modeOf(file)).toBe(0o600);
      expect(r.record).toMatchObject({ id: "relay-1", role: "relay", hosts: ["relay.example.net", "203.0.113.5"], revoked: null });
      expect(r.superseded).toEqual([]);
      const b = await loadBundle(file);
      expect(b).toMatchObject({ id: "relay-1", role: "relay", serial: r.record.serial, hosts: ["relay.example.net", "203.0.113.5"] });
      expect(b.caPem).toBe(await readFile(path.join(dir, "ca.crt"), "utf8"));
      expect(await readFile(path.join(dir, "certs", `${r.record.serial}.crt`), "utf8")).toBe(b.certPem);
      expect((await listCerts(dir)).map((c) => c.serial)).toContain(r.record.serial);
      // No temporary files are left behind.
      expect((await readdir(out)).filter((n) => n.includes(".tmp"))).toEqual([]);
      expect((await readdir(dir)).filter((n) => n.startsWith("."))).toEqual([]);
    });

    test("a second certificate for an id is refused without --force, replaces (and revokes) with it", async () => {
      const first = path.join(out, "site-1.bundle");
      const a = await issueToFile(dir, { role: "onsite", id: "site-1", out: first });
      const { err, text } = await thrownAsync(issueToFile(dir, { role: "onsite", id: "site-1", out: path.join(out, "site-1b.bundle") }));
      expect(err).toBeInstanceOf(UsageError);
      expect(text).toContain(`id site-1 already has a valid onsite certificate (serial ${a.record.serial}`);
      expect(text).toContain("add --force");
      // The same id under another role is the same device: refused too.
      await expect(issueToFile(dir, { role: "master", id: "site-1", out: path.join(out, "m.bundle") })).rejects.toThrow("already has a valid");
      // An existing --out is not overwritten without --force either.
      await revokeId(dir, "site-1");
      const before = await readFile(first, "utf8");
      await expect(issueToFile(dir, { role: "onsite", id: "site-1", out: first })).rejects.toThrow("already exists; refusing to overwrite it");
      expect(await readFile(first, "utf8")).toBe(before);

      const b = await issueToFile(dir, { role: "onsite", id: "site-1", out: first, force: true });
      expect((await loadBundle(first)).serial).toBe(b.record.serial);
      const c = await issueToFile(dir, { role: "onsite", id: "site-1", out: first, force: true });
      expect(c.superseded.map((s) => s.serial)).toEqual([b.record.serial]);
      const mine = (await listCerts(dir)).filter((r) => r.id === "site-1");
      expect(mine.map((r) => [r.serial, r.revoked === null])).toEqual([
        [a.record.serial, false],
        [b.record.serial, false],
        [c.record.serial, true],
      ]);
      const list = await loadRevocations(path.join(dir, "revoked"));
      expect(isRevoked(list, a.record.serial)).toBe(true);
      expect(isRevoked(list, b.record.serial)).toBe(true);
      expect(isRevoked(list, c.record.serial)).toBe(false);
    });

    test("revoke marks every unrevoked cert of an id; list and the revoked file show it", async () => {
      const a = await issueToFile(dir, { role: "master", id: "tech-1", out: path.join(out, "tech-1.bundle") });
      const r = await revokeId(dir, "tech-1", new Date("2027-05-01T10:00:00Z"));
      expect(r.revoked.map((x) => x.serial)).toEqual([a.record.serial]);
      const rec = (await listCerts(dir)).find((x) => x.serial === a.record.serial)!;
      expect(rec.revoked).toBe("2027-05-01T10:00:00Z");
      expect(certStatus(rec)).toBe("revoked");
      const text = await readFile(path.join(dir, "revoked"), "utf8");
      expect(text).toContain(`${a.record.serial} tech-1 2027-05-01T10:00:00Z\n`);
      // Idempotent: nothing new to revoke.
      const again = await revokeId(dir, "tech-1");
      expect(again.revoked).toEqual([]);
      expect(again.alreadyRevoked.map((x) => x.serial)).toEqual([a.record.serial]);
      // Now the id can be issued again without --force.
      await issueToFile(dir, { role: "master", id: "tech-1", out: path.join(out, "tech-1-new.bundle") });
    });

    test("revoking an unknown id is a UsageError", async () => {
      const { err, text } = await thrownAsync(revokeId(dir, "ghost"));
      expect(err).toBeInstanceOf(UsageError);
      expect(text).toContain("no certificate was ever issued to id ghost");
      expect(text).toContain("agent pki list");
      await expect(revokeId(dir, "../x")).rejects.toThrow('invalid id "../x"');
    });

    test("issue refuses bad input before touching the CA", async () => {
      const before = await readFile(path.join(dir, "index.json"), "utf8");
      for (const [req, msg] of [
        [{ role: "onsite", id: "s2", hosts: ["x.example"] }, "--host is only for relay"],
        [{ role: "relay", id: "r2" }, "needs at least one --host"],
        [{ role: "onsite", id: "a;b" }, "invalid id"],
        [{ role: "onsite", id: "s2", out: path.join(root, "nodir", "x.bundle") }, "does not exist"],
        [{ role: "onsite", id: "s2", out }, "is a directory"],
      ] as const) {
        const { err, text } = await thrownAsync(issueToFile(dir, { out: path.join(out, "s2.bundle"), ...req } as never));
        expect(err).toBeInstanceOf(UsageError);
        expect(text).toContain(msg);
      }
      expect(await readFile(path.join(dir, "index.json"), "utf8")).toBe(before);
    });

    test("issue refuses a CA directory or key that others can read, and a missing CA", async () => {
      const loose = path.join(root, "loose");
      await initCa(loose);
      const target = path.join(out, "l.bundle");
      await chmod(loose, 0o755);
      const d = await thrownAsync(issueToFile(loose, { role: "onsite", id: "l1", out: target }));
      expect(d.err).toBeInstanceOf(UsageError);
      expect(d.text).toContain("has mode 0755");
      expect(d.text).toContain(`chmod 700 ${loose}`);
      await chmod(loose, 0o700);
      await chmod(path.join(loose, "ca.key"), 0o640);
      const k = await thrownAsync(issueToFile(loose, { role: "onsite", id: "l1", out: target }));
      expect(k.err).toBeInstanceOf(UsageError);
      expect(k.text).toContain("has mode 0640");
      expect(k.text).toContain(`chmod 600 ${path.join(loose, "ca.key")}`);
      const m = await thrownAsync(issueToFile(path.join(root, "nothing"), { role: "onsite", id: "l1", out: target }));
      expect(m.err).toBeInstanceOf(UsageError);
      expect(m.text).toContain("agent pki init --dir");
      await expect(stat(target)).rejects.toThrow();
    });

    test("a held lock makes a concurrent command fail clearly", async () => {
      const lock = caPaths(dir).lock;
      await writeFile(lock, "12345\n");
      try {
        const { err, text } = await thrownAsync(revokeId(dir, "relay-1"));
        expect(err).toBeInstanceOf(RuntimeError);
        expect(text).toContain("is busy");
        expect(text).toContain(`remove ${lock}`);
      } finally {
        await rm(lock);
      }
      expect((await listCerts(dir)).find((r) => r.id === "relay-1")!.revoked).toBeNull();
    });
  });
});

describe("loadBundle", () => {
  let dir: string;
  let file: string;
  beforeAll(async () => {
    dir = await tempDir();
    file = path.join(dir, "site.bundle");
    const a = issueCertificate(fleet, { role: "onsite", id: "site-9" });
    await writeFile(file, formatBundle({ role: "onsite", id: "site-9", certPem: a.certPem, keyPem: a.keyPem, caPem: fleet.certPem }), { mode: 0o600 });
  });

  test.each([0o600, 0o400].map((m) => [m.toString(8), m] as const))("mode %s is accepted", async (_s, mode) => {
    await chmod(file, mode);
    expect((await loadBundle(file)).id).toBe("site-9");
  });
  test.each([0o644, 0o640, 0o604, 0o660, 0o601].map((m) => [m.toString(8), m] as const))("mode %s is refused, naming the permission and the fix", async (_s, mode) => {
    await chmod(file, mode);
    const { err, text } = await thrownAsync(loadBundle(file));
    expect(err).toBeInstanceOf(UsageError);
    expect(text).toContain(`has mode 0${mode.toString(8)}`);
    expect(text).toContain("group and others must have no permission");
    expect(text).toContain(`hint: chmod 600 ${file}`);
    await chmod(file, 0o600);
  });
  test("a missing bundle or a directory is a UsageError", async () => {
    await expect(loadBundle(path.join(dir, "none.bundle"))).rejects.toThrow(`bundle ${path.join(dir, "none.bundle")} does not exist`);
    await expect(loadBundle(dir)).rejects.toThrow("is not a regular file");
  });
  test("a tampered file on disk is refused", async () => {
    const t = path.join(dir, "t.bundle");
    const text = await readFile(file, "utf8");
    await writeFile(t, text.slice(0, text.length / 2), { mode: 0o600 });
    await expect(loadBundle(t)).rejects.toThrow("the file is truncated");
  });
});

