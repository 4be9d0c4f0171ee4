// verifyPeer: the relay's judgement of a peer's certificate, from what the TLS stack reported.
// Every refusal names the reason and the id the peer presented.
import { expect, test } from "bun:test";
import { verifyPeer, presentedName, type HandshakeFacts, type TrustPolicy } from "../src/transport/auth.ts";
import { parseRevocations, REVOCATIONS_HEADER } from "../src/pki.ts";
import { makeCert, newCa } from "./helpers/certs.ts";

const ca = newCa("fleet CA");
const now = new Date();
const onsite = makeCert(ca, { role: "onsite", id: "site-1" });
const master = makeCert(ca, { role: "master", id: "tech-1" });
const relay = makeCert(ca, { role: "relay", id: "relay-1" });
const revoked = makeCert(ca, { role: "onsite", id: "site-9" });
const expired = makeCert(ca, { role: "onsite", id: "site-old", notBefore: new Date(now.getTime() - 10 * 86_400_000), notAfter: new Date(now.getTime() - 86_400_000) });
const future = makeCert(ca, { role: "onsite", id: "site-new", notBefore: new Date(now.getTime() + 86_400_000), notAfter: new Date(now.getTime() + 10 * 86_400_000) });
const mismatch = makeCert(ca, { role: "onsite", id: "site-2", uri: "agent://master/site-2" });
const badRole = makeCert(ca, { role: "onsite", id: "site-3", ou: "admin", uri: "agent://admin/site-3" });

const policy: TrustPolicy = {
  revocations: parseRevocations(`${REVOCATIONS_HEADER}\n${revoked.serial} site-9 2026-01-01T00:00:00Z\n`),
  roles: ["onsite", "master"],
};

const ok: Omit<HandshakeFacts, "peerDer"> = { handshakeOk: true, authorized: true, authorizationError: null, protocol: "TLSv1.3" };

test.each<[string, HandshakeFacts, RegExp, string | null]>([
  ["no certificate", { ...ok, authorized: false, authorizationError: "UNABLE_TO_GET_ISSUER_CERT", peerDer: null }, /^no client certificate$/, null],
  ["no certificate and a failed handshake", { ...ok, handshakeOk: false, authorized: false, authorizationError: "ECONNRESET", peerDer: null }, /^TLS handshake failed \(ECONNRESET\)$/, null],
  ["an expired certificate (OpenSSL says so)", { ...ok, authorized: false, authorizationError: "CERT_HAS_EXPIRED", peerDer: expired.der }, /^certificate has expired$/, "site-old (onsite)"],
  ["a certificate not yet valid (OpenSSL says so)", { ...ok, authorized: false, authorizationError: "CERT_NOT_YET_VALID", peerDer: future.der }, /^certificate is not yet valid$/, "site-new (onsite)"],
  ["an unknown CA", { ...ok, authorized: false, authorizationError: "UNABLE_TO_GET_ISSUER_CERT_LOCALLY", peerDer: onsite.der }, /not issued by this fleet's CA/, "site-1 (onsite)"],
  ["a self-signed certificate", { ...ok, authorized: false, authorizationError: "DEPTH_ZERO_SELF_SIGNED_CERT", peerDer: onsite.der }, /not issued by this fleet's CA/, "site-1 (onsite)"],
  ["a bad signature", { ...ok, authorized: false, authorizationError: "CERT_SIGNATURE_FAILURE", peerDer: onsite.der }, /not issued by this fleet's CA/, "site-1 (onsite)"],
  ["an unexplained TLS error", { ...ok, authorized: false, authorizationError: "SOMETHING_NEW", peerDer: onsite.der }, /^certificate refused by TLS \(SOMETHING_NEW\)$/, "site-1 (onsite)"],
  ["TLS 1.2", { ...ok, protocol: "TLSv1.2", peerDer: onsite.der }, /TLSv1\.2 is not accepted \(TLS 1\.3 only\)/, "site-1 (onsite)"],
  // The TLS stack let them through (it does not know our rules); verifyPeer still refuses.
  ["an expired certificate the TLS stack let through", { ...ok, peerDer: expired.der }, /^certificate expired on /, "site-old (onsite)"],
  ["a future certificate the TLS stack let through", { ...ok, peerDer: future.der }, /^certificate is not yet valid \(until /, "site-new (onsite)"],
  ["a revoked certificate", { ...ok, peerDer: revoked.der }, new RegExp(`^certificate ${revoked.serial} is revoked \\(since 2026-01-01T00:00:00.000Z\\)$`), "site-9 (onsite)"],
  ["a relay certificate", { ...ok, peerDer: relay.der }, /^a relay certificate cannot connect as a device \(allowed: onsite, master\)$/, "relay-1 (relay)"],
  ["an identity that disagrees with itself", { ...ok, peerDer: mismatch.der }, /no valid identity: .*URI SAN "agent:\/\/master\/site-2" disagrees/, "site-2 (onsite)"],
  ["a role that is not a role", { ...ok, peerDer: badRole.der }, /no valid identity: certificate OU "admin" is not a role/, "site-3 (admin)"],
  ["garbage in place of a certificate", { ...ok, peerDer: new Uint8Array([0x30, 0x03, 1, 2, 3]) }, /no valid identity: not a valid X.509 certificate/, "(unparsable certificate)"],
])("refuses %s", (_name, facts, reason, presented) => {
  const v = verifyPeer(facts, policy, now);
  expect(v.ok).toBe(false);
  if (v.ok) return;
  expect(v.reason).toMatch(reason);
  expect(v.presented).toBe(presented);
});

test.each([
  ["onsite", onsite, "site-1"],
  ["master", master, "tech-1"],
])("accepts a valid %s certificate with its identity and serial", (role, c, id) => {
  const v = verifyPeer({ ...ok, peerDer: c.der }, policy, now);
  expect(v).toEqual({ ok: true, id, role, serial: c.serial, notAfter: expect.any(Date) });
});

test("the revocation list decides by serial, not by id: a re-issued device gets in", () => {
  const reissued = makeCert(ca, { role: "onsite", id: "site-9" });
  expect(verifyPeer({ ...ok, peerDer: reissued.der }, policy, now)).toMatchObject({ ok: true, id: "site-9" });
});

test("the roles come from the policy", () => {
  expect(verifyPeer({ ...ok, peerDer: master.der }, { ...policy, roles: ["onsite"] }, now)).toMatchObject({ ok: false, reason: expect.stringMatching(/a master certificate cannot connect/) });
});

test("presentedName names even a certificate it cannot trust", () => {
  const stranger = makeCert(newCa(), { role: "onsite", id: "intruder" });
  expect(presentedName(stranger.der)).toBe("intruder (onsite)");
  expect(presentedName(null)).toBeNull();
});

test.each([
  ["UNABLE_TO_VERIFY_LEAF_SIGNATURE", /not issued by this fleet's CA/],
  ["unable to verify the first certificate", /not issued by this fleet's CA/],
  ["unable to get local issuer certificate", /not issued by this fleet's CA/],
  ["self-signed certificate", /not issued by this fleet's CA/],
  ["certificate signature failure", /not issued by this fleet's CA/],
  ["certificate has expired", /^certificate has expired$/],
  ["CERT_NOT_YET_VALID", /^certificate is not yet valid$/],
  ["certificate is not yet valid", /^certificate is not yet valid$/],
])("OpenSSL's %p (code or text, as Bun reports it) is explained", (err, reason) => {
  const v = verifyPeer({ ...ok, authorized: false, authorizationError: err, peerDer: onsite.der }, policy, now);
  expect(v).toMatchObject({ ok: false, reason: expect.stringMatching(reason), presented: "site-1 (onsite)" });
});
