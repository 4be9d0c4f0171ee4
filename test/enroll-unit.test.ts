// Flash-and-run enrollment, the pure parts (issue 14 §8): token accounting and the decision
// table, the relay's checks of a certificate request, the enroller's name constraints (also
// checked by openssl, the way TLS checks them), the wire codec, and the service over an
// in-memory store with a fake clock.
import { describe, expect, test } from "bun:test";
import forge from "node-forge";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCa, formatBundle, parseBundle, parseCa, type CaMaterial } from "../src/pki.ts";
import { readCertificate } from "../src/x509.ts";
import { masterSignedByEnroller } from "./helpers/certs.ts";
import {
  caEnrollerProblem,
  checkCsr,
  createEnrollmentCsr,
  enrollerProblem,
  formatEnroller,
  generateDeviceKey,
  issueEnroller,
  keyTag,
  MAX_CSR_BYTES,
  parseEnroller,
  permittedRoles,
  signEnrollment,
  type Enroller,
} from "../src/pki-enroll.ts";
import { decideEnrollment, parseUses, tokenProblem, type EnrollmentRecord, type TokenRecord } from "../src/tunnel/relay/enroll-policy.ts";
import { EnrollStore } from "../src/tunnel/relay/enroll-store.ts";
import { EnrollService } from "../src/tunnel/relay/enroll-service.ts";
import { decodeEnrollAnswer, decodeEnrollRequest, encodeEnrollMessage, EnrollReader, MAX_ENROLL_MESSAGE } from "../src/transport/enroll-wire.ts";
import { FakeClock } from "../src/clock.ts";
import { createLogger } from "../src/log.ts";
import { resolveConfig, requireForRole } from "../src/config.ts";
import { enrollApi } from "../src/roles/enroll.ts";

const NOW = Date.UTC(2026, 11, 1, 12, 0, 0);
const token = (over: Partial<TokenRecord> = {}): TokenRecord => ({ id: "t1", hash: "h", uses: 1, used: 0, expires: null, approval: "auto", created: NOW, note: "", ...over });
const record = (over: Partial<EnrollmentRecord> = {}): EnrollmentRecord => ({
  id: "site-0123456789abcdef",
  state: "signed",
  tokenId: "t1",
  address: "10.0.0.1",
  hostname: "pi",
  csr: "",
  cert: "PEM",
  serial: "ab",
  notAfter: NOW + 1e9,
  created: NOW,
  updated: NOW,
  revoked: null,
  ...over,
});

describe("token accounting", () => {
  test.each([
    ["unknown", undefined, "unknown enrollment token"],
    ["expired", token({ expires: NOW - 1 }), "expired at"],
    ["expires exactly now", token({ expires: NOW }), "expired at"],
    ["used up", token({ uses: 2, used: 2 }), "used up (2 of 2 uses)"],
    ["single use, used", token({ uses: 1, used: 1 }), "used up (1 of 1 use)"],
  ] as const)("%s: refused", (_n, t, why) => {
    expect(tokenProblem(t, NOW)?.reason).toContain(why);
  });
  test.each([
    ["unlimited", token({ uses: null, used: 1000 })],
    ["uses left", token({ uses: 3, used: 2 })],
    ["not yet expired", token({ expires: NOW + 1 })],
  ] as const)("%s: usable", (_n, t) => {
    expect(tokenProblem(t, NOW)).toBeNull();
  });
  test("--uses: whole numbers 1..1000000 only", () => {
    expect(parseUses(undefined)).toBeNull();
    expect(parseUses("5")).toBe(5);
    for (const bad of ["0", "-1", "1.5", "x", "10000000"]) expect(() => parseUses(bad)).toThrow("uses: expected a whole number");
  });
});

describe("the decision for one request", () => {
  test.each([
    ["unknown token", undefined, undefined, "refuse", "token"],
    ["new device, auto token", token(), undefined, "sign", undefined],
    ["new device, manual token", token({ approval: "manual" }), undefined, "hold", undefined],
    ["new device, token used up", token({ used: 1 }), undefined, "refuse", "token"],
    ["new device, token expired", token({ expires: NOW - 1 }), undefined, "refuse", "token"],
    // The same key asks again with its token: the certificate again, even if the token is used up now.
    ["lost answer, token now used up", token({ used: 1 }), record(), "resend", undefined],
    ["still waiting", token({ used: 1, approval: "manual" }), record({ state: "pending", cert: null }), "still-pending", undefined],
    ["revoked, same token", token({ used: 1 }), record({ revoked: NOW - 10 }), "refuse", "revoked"],
    ["revoked, fresh token", token({ id: "t2", uses: null }), record({ revoked: NOW - 10 }), "refuse", "revoked"],
    ["denied", token({ approval: "manual" }), record({ state: "denied", cert: null }), "refuse", "denied"],
    ["enrolled, asks with another usable token", token({ id: "t2", uses: null }), record(), "sign", undefined],
  ] as const)("%s → %s", (_n, t, existing, kind, code) => {
    const d = decideEnrollment(t, existing, NOW);
    expect(d.kind).toBe(kind);
    if (d.kind === "refuse") expect(d.code).toBe(code!);
  });
});

// Keys are the slow part: made once.
const ca = createCa({ now: new Date(NOW) });
const caMat: CaMaterial = parseCa(ca.certPem, ca.keyPem);
const issued = issueEnroller(caMat, { id: "enroll-1", now: new Date(NOW) });
const enroller: Enroller = parseEnroller(formatEnroller("enroll-1", issued.certPem, issued.keyPem, ca.certPem), "test.enroller");
const deviceKey = generateDeviceKey();

function csrWith(opts: { ou?: string; cn?: string; bits?: number; keyPem?: string }): string {
  const keyPem = opts.keyPem ?? (opts.bits ? generateKeyPairSync("rsa", { modulusLength: opts.bits, privateKeyEncoding: { type: "pkcs8", format: "pem" }, publicKeyEncoding: { type: "spki", format: "pem" } }).privateKey : deviceKey);
  const priv = forge.pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
  const pub = forge.pki.setRsaPublicKey(priv.n, priv.e);
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = pub;
  csr.setSubject([
    { name: "organizationName", value: "agent fleet" },
    { shortName: "OU", value: opts.ou ?? "onsite" },
    { name: "commonName", value: opts.cn ?? `site-${keyTag(pub)}` },
  ]);
  csr.sign(priv, forge.md.sha256.create());
  return forge.pki.certificationRequestToPem(csr);
}

describe("certificate requests", () => {
  test("a device's own request passes; its id is PREFIX + its key's tag", () => {
    const { csrPem, id } = createEnrollmentCsr(deviceKey, "site-");
    const c = checkCsr(csrPem);
    expect(c.id).toBe(id);
    expect(id).toMatch(/^site-[0-9a-f]{16}$/);
    expect(createEnrollmentCsr(deviceKey, "site-").id).toBe(id); // same key, same id (restart)
  });
  test.each([
    ["nothing", (): string => "", "no certificate request"],
    ["not PEM", (): string => "hello", "cannot be parsed"],
    ["oversized", () => "x".repeat(MAX_CSR_BYTES + 1), `more than the ${MAX_CSR_BYTES} allowed`],
    ["wrong role", () => csrWith({ ou: "master" }), 'asks for role "master"; enrollment issues onsite certificates only'],
    ["relay role", () => csrWith({ ou: "relay" }), "onsite certificates only"],
    ["1024-bit key", () => csrWith({ bits: 1024 }), "RSA key of 1024 bits; expected 2048 to 4096"],
    ["an id that is not its key's", () => csrWith({ cn: "site-1" }), "is not PREFIX+"],
    ["another device's id", () => csrWith({ cn: "site-0000000000000000" }), "an enrolled device's id comes from its key"],
    ["broken signature", () => {
      const pem = csrWith({});
      const der = Buffer.from(pem.replace(/-----[A-Z ]+-----|\s/g, ""), "base64");
      der[der.length - 5]! ^= 0xff; // in the signature
      return `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString("base64")}\n-----END CERTIFICATE REQUEST-----\n`;
    }, "signature does not verify"],
  ] as const)("%s: refused", (_n, make, why) => {
    expect(() => checkCsr(make())).toThrow(why);
  });
});

describe("the enroller and its name constraints", () => {
  const dir = mkdtempSync(join(tmpdir(), "agent-enroll-unit-"));
  const file = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  const openssl = (leafPem: string) =>
    Bun.spawnSync(["openssl", "verify", "-CAfile", file("ca.pem", ca.certPem), "-untrusted", file("en.pem", enroller.certPem), file("leaf.pem", leafPem)]);

  test("permits exactly onsite; CA:true pathlen 0", () => {
    expect(permittedRoles(enroller.cert)).toEqual(["onsite"]);
    expect(enrollerProblem(enroller.cert, readCertificate(ca.certPem))).toBeNull();
    expect(enrollerProblem(readCertificate(ca.certPem), readCertificate(ca.certPem))).toContain("pathlen 0");
  });
  test("a fleet CA with pathlen 0 (made before enrollment) cannot have an enroller", () => {
    const old = forge.pki.certificateFromPem(ca.certPem);
    old.setExtensions([{ name: "basicConstraints", cA: true, pathLenConstraint: 0, critical: true }]);
    old.sign(caMat.key, forge.md.sha256.create());
    expect(caEnrollerProblem(readCertificate(forge.pki.certificateToPem(old)))).toContain("pathlen 0");
    expect(caEnrollerProblem(readCertificate(ca.certPem))).toBeNull();
  });
  test("a signed device: openssl verifies leaf → enroller → CA, and the bundle holds the chain", () => {
    const s = signEnrollment(enroller, checkCsr(createEnrollmentCsr(deviceKey, "site-").csrPem), { now: new Date() });
    const r = openssl(s.certPem);
    expect(r.stdout.toString()).toContain(": OK");
    const b = parseBundle(formatBundle({ role: "onsite", id: checkCsr(createEnrollmentCsr(deviceKey, "site-").csrPem).id, certPem: s.certPem, keyPem: deviceKey, caPem: ca.certPem, chainPem: enroller.certPem }), "x.bundle");
    expect(b.chainPem).toContain("BEGIN CERTIFICATE");
    expect(b.role).toBe("onsite");
  });
  test("a master certificate the enroller signed anyway is refused by openssl: permitted subtree violation", () => {
    const r = openssl(masterSignedByEnroller(enroller, deviceKey, "tech-9", "1234"));
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr.toString() + r.stdout.toString()).toContain("permitted subtree violation");
    rmSync(dir, { recursive: true, force: true });
  });
  test("an enroller file that is not one says so", () => {
    expect(() => parseEnroller("# agent bundle v1\n", "x")).toThrow("not an enroller file");
    expect(() => parseEnroller(formatEnroller("e", ca.certPem, ca.keyPem, ca.certPem), "x")).toThrow("pathlen 0");
  });
});

describe("the wire", () => {
  test("length-prefixed JSON, both ways", () => {
    const bytes = encodeEnrollMessage({ v: 1, token: "agt1_x", csr: "PEM" });
    expect(new DataView(bytes.buffer).getUint32(0)).toBe(bytes.length - 4);
    const r = new EnrollReader();
    expect(r.push(bytes.subarray(0, 3))).toBeUndefined();
    expect(decodeEnrollRequest(r.push(bytes.subarray(3)))).toEqual({ v: 1, token: "agt1_x", csr: "PEM" });
  });
  test.each([
    ["length 0", new Uint8Array([0, 0, 0, 0]), "out of range"],
    ["length too big", new Uint8Array([0, 1, 0, 0]), "out of range"],
    ["not JSON", new Uint8Array([0, 0, 0, 2, 0x7b, 0x7b]), "not UTF-8 JSON"],
  ] as const)("%s: refused", (_n, bytes, why) => {
    expect(() => new EnrollReader().push(bytes)).toThrow(why);
  });
  test("bytes after the request are refused", () => {
    const b = encodeEnrollMessage({ v: 1 });
    expect(() => new EnrollReader().push(new Uint8Array([...b, 1]))).toThrow("bytes after");
  });
  test.each([
    ["version 2", { v: 2, token: "t", csr: "c" }, "version 2 is not supported"],
    ["no token", { v: 1, csr: "c" }, "token: expected"],
    ["no csr", { v: 1, token: "t" }, "csr: expected"],
    ["an array", [], "must be a JSON object"],
  ] as const)("request with %s: refused", (_n, v, why) => {
    expect(() => decodeEnrollRequest(v)).toThrow(why);
  });
  test("answers: unknown status refused; an unknown refusal code stays bounded", () => {
    expect(() => decodeEnrollAnswer({ status: "maybe" })).toThrow("unknown status");
    expect(decodeEnrollAnswer({ status: "refused", code: "weird", reason: "r" })).toMatchObject({ code: "csr" });
    expect(MAX_ENROLL_MESSAGE).toBe(16384);
  });
});

describe("the service (in-memory store, fake clock)", () => {
  const setup = () => {
    const clock = new FakeClock({ wall: Date.now() });
    const refusals: { address: string; presented: string | null; reason: string }[] = [];
    let revoked = 0;
    const store = new EnrollStore(":memory:");
    const svc = new EnrollService({ store, enroller, days: 30, log: createLogger({ level: "silent" }), clock, refuse: (address, presented, reason) => refusals.push({ address, presented, reason }), revoked: () => void revoked++ });
    return { clock, refusals, svc, store, revokedCount: () => revoked };
  };
  const req = (tok: string, keyPem = deviceKey) => ({ v: 1, token: tok, csr: createEnrollmentCsr(keyPem, "site-").csrPem });

  test("single-use token: signed once, the same device again gets the same certificate, another device is refused and logged", () => {
    const { svc, refusals } = setup();
    const t = svc.tokenAdd({ uses: "1" });
    const a = svc.handle(req(t.token), "10.0.0.1");
    expect(a.status).toBe("signed");
    const again = svc.handle(req(t.token), "10.0.0.1");
    expect(again).toEqual(a);
    expect(svc.tokenList()[0]).toMatchObject({ used: 1, uses: 1, state: "used up" });
    const other = svc.handle(req(t.token, generateDeviceKey()), "10.0.0.2");
    expect(other).toMatchObject({ status: "refused", code: "token" });
    expect(refusals).toHaveLength(1);
    expect(refusals[0]!.reason).toContain("used up (1 of 1 use)");
    expect(refusals[0]!.presented).toMatch(/^site-[0-9a-f]{16} \(enroll\)$/);
  });
  test("a wrong token and an expired one are refused with their reason", () => {
    const { svc, refusals, clock } = setup();
    expect(svc.handle(req("agt1_wrongwrongwrong"), "10.0.0.3")).toMatchObject({ status: "refused", code: "token", reason: "unknown enrollment token" });
    const t = svc.tokenAdd({ expires: 60_000 });
    clock.advance(60_001);
    expect(svc.handle(req(t.token), "10.0.0.3")).toMatchObject({ status: "refused", code: "token" });
    expect(refusals.map((r) => r.reason)).toEqual(["enrollment refused: unknown enrollment token", expect.stringContaining("expired at")]);
  });
  test("manual approval: pending until approved; deny refuses for good; revoke refuses re-enrollment and reports the serial", () => {
    const { svc, revokedCount } = setup();
    const t = svc.tokenAdd({ approval: "manual" });
    const first = svc.handle(req(t.token), "10.0.0.4");
    expect(first).toMatchObject({ status: "pending" });
    const id = (first as { id: string }).id;
    expect(svc.list("pending").map((e) => e.id)).toEqual([id]);
    expect(svc.handle(req(t.token), "10.0.0.4")).toMatchObject({ status: "pending" });
    expect(svc.tokenList()[0]!.used).toBe(1); // counted once
    svc.approve({ id });
    const signed = svc.handle(req(t.token), "10.0.0.4");
    expect(signed).toMatchObject({ status: "signed", id });
    svc.revoke({ id });
    expect(revokedCount()).toBe(1);
    expect(svc.revokedSerials().map((r) => r.id)).toEqual([id]);
    expect(svc.handle(req(t.token), "10.0.0.4")).toMatchObject({ status: "refused", code: "revoked" });
    const k2 = generateDeviceKey();
    const p2 = svc.handle(req(t.token, k2), "10.0.0.5") as { id: string };
    svc.deny({ id: p2.id });
    expect(svc.handle(req(t.token, k2), "10.0.0.5")).toMatchObject({ status: "refused", code: "denied" });
    expect(() => svc.approve({ id: p2.id })).toThrow("is not waiting for approval");
    expect(() => svc.approve({ id: "site-nope" })).toThrow("no enrollment request");
  });
  test("a bad request is refused with the CSR's own message", () => {
    const { svc, refusals } = setup();
    const t = svc.tokenAdd({});
    expect(svc.handle({ v: 1, token: t.token, csr: csrWith({ ou: "master" }) }, "10.0.0.6")).toMatchObject({ status: "refused", code: "csr", reason: expect.stringContaining("onsite certificates only") });
    expect(refusals[0]!.reason).toContain("onsite certificates only");
    expect(svc.tokenList()[0]!.used).toBe(0);
  });
});

describe("agent enroll on a relay without [enroll]", () => {
  test("each command says how to turn it on", () => {
    const api = enrollApi(null);
    expect(Object.keys(api).sort()).toEqual(["enrollApprove", "enrollDeny", "enrollList", "enrollPending", "enrollRevoke", "enrollTokenAdd", "enrollTokenDel", "enrollTokenList"]);
    for (const f of Object.values(api)) expect(() => f({})).toThrow("this relay does not enroll devices: its config has no [enroll] section");
  });
});

describe("[enroll] in the config", () => {
  const src = (raw: Record<string, unknown>) => [{ origin: { kind: "file" as const, path: "x.toml" }, raw }];
  test("onsite: no bundle needed with [enroll]; address, ca and a token are", () => {
    const ok = resolveConfig(src({ relay: "r.example:443", enroll: { address: "r.example:8443", token: "agt1_abcdefgh", ca: "/ca.crt" } }));
    expect(() => requireForRole(ok, "onsite")).not.toThrow();
    expect(ok.enroll).toMatchObject({ id_prefix: "onsite-", days: 825 });
    const partial = resolveConfig(src({ relay: "r.example:443", enroll: { address: "r.example:8443" } }));
    expect(() => requireForRole(partial, "onsite")).toThrow(/enroll\.ca[\s\S]*enroll\.token/);
  });
  test("relay: [enroll] needs listen and enroller", () => {
    const cfg = resolveConfig(src({ bundle: "/r.bundle", listen: "0.0.0.0:443", enroll: { listen: "0.0.0.0:8443" } }));
    expect(() => requireForRole(cfg, "relay")).toThrow("enroll.enroller");
  });
});

describe("the device's request without node-forge", () => {
  test("createEnrollmentCsr is byte for byte the request node-forge made (PKCS#1 v1.5 signatures are deterministic)", () => {
    const { csrPem, id } = createEnrollmentCsr(deviceKey, "site-");
    const priv = forge.pki.privateKeyFromPem(deviceKey) as forge.pki.rsa.PrivateKey;
    const csr = forge.pki.createCertificationRequest();
    csr.publicKey = forge.pki.setRsaPublicKey(priv.n, priv.e);
    csr.setSubject([
      { name: "organizationName", value: "agent fleet" },
      { shortName: "OU", value: "onsite" },
      { name: "commonName", value: id },
    ]);
    csr.sign(priv, forge.md.sha256.create());
    expect(csrPem).toBe(forge.pki.certificationRequestToPem(csr).replace(/\r\n/g, "\n"));
    expect(id).toBe(`site-${keyTag(csr.publicKey as forge.pki.rsa.PublicKey)}`);
    expect(checkCsr(csrPem).id).toBe(id);
  });
});
