// What the relay does with an enrollment request (issue 14 §8), as pure functions: the token's
// accounting (unknown, expired, exhausted) and the decision for one request given the token
// and what the relay already holds for the device's id. The service (./enroll-service.ts)
// carries the decision out; the store (./enroll-store.ts) keeps the records.
import { createHash, randomBytes } from "node:crypto";

export type Approval = "auto" | "manual";

export interface TokenRecord {
  /** Short public name (first 8 hex digits of the secret's SHA-256), for `token list/del`. */
  id: string;
  /** SHA-256 hex of the secret: the secret itself is never stored. */
  hash: string;
  /** How many devices may enroll with it; null: no limit. */
  uses: number | null;
  used: number;
  /** Wall ms it stops working; null: never. */
  expires: number | null;
  approval: Approval;
  created: number;
  note: string;
}

export type EnrollmentState = "pending" | "signed" | "denied";

export interface EnrollmentRecord {
  /** The device id (PREFIX + key tag). */
  id: string;
  state: EnrollmentState;
  tokenId: string;
  address: string;
  hostname: string;
  csr: string;
  cert: string | null;
  serial: string | null;
  notAfter: number | null;
  created: number;
  updated: number;
  /** Wall ms it was revoked (`agent enroll revoke`), or null. */
  revoked: number | null;
}

/** A fresh token secret: "agt1_" and 32 base64url characters (192 random bits). */
export function newTokenSecret(): string {
  return "agt1_" + randomBytes(24).toString("base64url");
}

export function tokenHash(secret: string): string {
  return createHash("sha256").update(secret, "utf8").digest("hex");
}

export function tokenIdOf(hash: string): string {
  return hash.slice(0, 8);
}

/** Why a token cannot enroll a new device now, or null. Pure. */
export function tokenProblem(t: TokenRecord | undefined, now: number): { reason: string } | null {
  if (!t) return { reason: "unknown enrollment token" };
  if (t.expires !== null && now >= t.expires) return { reason: `enrollment token ${t.id} expired at ${new Date(t.expires).toISOString()}` };
  if (t.uses !== null && t.used >= t.uses) return { reason: `enrollment token ${t.id} is used up (${t.used} of ${t.uses} use${t.uses === 1 ? "" : "s"})` };
  return null;
}

export type EnrollDecision =
  | { kind: "refuse"; code: "token" | "revoked" | "denied"; reason: string }
  /** The same device asks again (a lost answer, a retry): the stored certificate, no use counted. */
  | { kind: "resend"; record: EnrollmentRecord }
  | { kind: "still-pending"; record: EnrollmentRecord }
  /** A new device: one use of the token is counted, then it is signed or waits for approval. */
  | { kind: "sign" }
  | { kind: "hold" };

/**
 * The decision for a request from device `id` presenting `token` (looked up by its hash),
 * given the record the relay holds for `id`, if any. Pure.
 */
export function decideEnrollment(token: TokenRecord | undefined, existing: EnrollmentRecord | undefined, now: number): EnrollDecision {
  if (!token) return { kind: "refuse", code: "token", reason: "unknown enrollment token" };
  if (existing) {
    if (existing.revoked !== null) {
      return { kind: "refuse", code: "revoked", reason: `device ${existing.id} was enrolled and its certificate ${existing.serial ?? "?"} revoked at ${new Date(existing.revoked).toISOString()}; it cannot enroll again` };
    }
    if (existing.state === "denied") return { kind: "refuse", code: "denied", reason: `the enrollment of ${existing.id} was denied by the operator` };
    // The same key (the id is its tag) with the token it enrolled with: the answer it may have lost.
    if (existing.tokenId === token.id) return existing.state === "signed" ? { kind: "resend", record: existing } : { kind: "still-pending", record: existing };
  }
  const problem = tokenProblem(token, now);
  if (problem) return { kind: "refuse", code: "token", reason: problem.reason };
  return token.approval === "manual" ? { kind: "hold" } : { kind: "sign" };
}

/** Parses `--uses N`: a whole number from 1 to 1,000,000. Pure. */
export function parseUses(v: unknown): number | null {
  if (v === undefined || v === null) return null;
  const n = typeof v === "number" ? v : typeof v === "string" && /^[1-9]\d{0,6}$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > 1_000_000) throw new Error(`uses: expected a whole number from 1 to 1000000, got ${JSON.stringify(v)}`);
  return n;
}
