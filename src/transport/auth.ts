// Judging a peer's certificate on the relay: a pure function of what the TLS stack reported,
// the certificate itself, the revocation list and the clock. Every refusal names the reason
// and the id the peer presented (also for ids the relay has never seen), for the refusal log.
import { certificateIdentity, parseCertificate, isRevoked, type RevocationList } from "../pki.ts";
import { fieldValues, type Certificate } from "../x509.ts";
import { GoAwayCode } from "./frame.ts";

export interface HandshakeFacts {
  handshakeOk: boolean;
  authorized: boolean;
  authorizationError: string | null;
  /** DER of the client certificate, if one was sent. */
  peerDer: Uint8Array | null;
  protocol: string | null;
}

export interface TrustPolicy {
  revocations: RevocationList;
  /** Roles that may connect as devices (a relay certificate may not). */
  roles: readonly string[];
}

export type PeerVerdict =
  | { ok: true; id: string; role: string; serial: string; notAfter: Date }
  | { ok: false; reason: string; presented: string | null; goaway?: number };

function nameOf(cert: Certificate): string {
  // The first CN and OU, as node-forge's subject.getField reported them.
  const cn = fieldValues(cert.subject, "CN")[0];
  const ou = fieldValues(cert.subject, "OU")[0];
  if (!cn) return "(no CN)";
  return ou ? `${cn} (${ou})` : cn;
}

/** Parses a peer's certificate once: the parsed certificate (null if unparsable) and its "CN (OU)". */
function parsePeer(der: Uint8Array | null): { cert: Certificate | null; presented: string | null } {
  if (!der) return { cert: null, presented: null };
  try {
    const cert = parseCertificate(der);
    return { cert, presented: nameOf(cert) };
  } catch {
    return { cert: null, presented: "(unparsable certificate)" };
  }
}

/** Best-effort "CN (OU)" of any certificate, even one we refuse: for the log only. */
export function presentedName(der: Uint8Array | null): string | null {
  return parsePeer(der).presented;
}

/** OpenSSL's verification errors, said the way an operator would look for them. */
function explainTlsError(err: string | null): string {
  const e = err ?? "";
  // Bun reports OpenSSL's code (CERT_HAS_EXPIRED) or its text ("certificate has expired")
  // depending on the path: match both spellings.
  if (/EXPIRED/i.test(e)) return "certificate has expired";
  if (/NOT[ _]YET[ _]VALID/i.test(e)) return "certificate is not yet valid";
  if (/UNABLE[ _]TO[ _]GET[ _](LOCAL[ _])?ISSUER|SELF[ _-]SIGNED|UNABLE[ _]TO[ _]VERIFY|SIGNATURE[ _]FAILURE|UNTRUSTED/i.test(e)) return "certificate was not issued by this fleet's CA";
  if (/NO[ _]CERTIFICATE|DID[ _]NOT[ _]RETURN/i.test(e)) return "no client certificate";
  return `certificate refused by TLS (${e || "unknown reason"})`;
}

export function verifyPeer(facts: HandshakeFacts, policy: TrustPolicy, now: Date): PeerVerdict {
  // One parse per handshake: the name for the log and the identity come from the same object.
  const { cert, presented } = parsePeer(facts.peerDer);
  if (!facts.peerDer) return { ok: false, reason: facts.handshakeOk ? "no client certificate" : `TLS handshake failed (${facts.authorizationError ?? "unknown reason"})`, presented };
  if (facts.protocol && facts.protocol !== "TLSv1.3") return { ok: false, reason: `${facts.protocol} is not accepted (TLS 1.3 only)`, presented };
  if (!facts.handshakeOk || !facts.authorized) {
    const reason = explainTlsError(facts.authorizationError);
    // An expired certificate, like a revoked one, is told why: only a new one helps, so the device backs off.
    return reason === "certificate has expired" ? { ok: false, reason, presented, goaway: GoAwayCode.REVOKED } : { ok: false, reason, presented };
  }
  let ident;
  try {
    ident = certificateIdentity(cert ?? facts.peerDer);
  } catch (e) {
    return { ok: false, reason: `certificate carries no valid identity: ${(e as Error).message}`, presented };
  }
  // OpenSSL checked the dates already; checking again keeps the verdict right if a TLS stack
  // is ever configured not to.
  if (now < ident.notBefore) return { ok: false, reason: `certificate is not yet valid (until ${ident.notBefore.toISOString()})`, presented };
  if (now > ident.notAfter) return { ok: false, reason: `certificate expired on ${ident.notAfter.toISOString()}`, presented, goaway: GoAwayCode.REVOKED };
  if (isRevoked(policy.revocations, ident.serial)) {
    const entry = policy.revocations.entries.find((r) => r.serial === ident.serial);
    // Told in a GOAWAY before the close, so the device backs off instead of redialling.
    return { ok: false, reason: `certificate ${ident.serial} is revoked${entry ? ` (since ${entry.revokedAt.toISOString()})` : ""}`, presented, goaway: GoAwayCode.REVOKED };
  }
  if (!policy.roles.includes(ident.role)) return { ok: false, reason: `a ${ident.role} certificate cannot connect as a device (allowed: ${policy.roles.join(", ")})`, presented };
  return { ok: true, id: ident.id, role: ident.role, serial: ident.serial, notAfter: ident.notAfter };
}
