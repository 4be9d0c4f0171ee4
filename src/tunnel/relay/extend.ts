// SESSION_EXTEND (issue 15): a master moves the end of one of its live sessions. Pure: the
// decision and the new end; the relay (server.ts) re-arms its TTL timer and tells the onsite
// device (SESSION_EXPIRES). The end is counted from now on the monotonic clock and clamped to
// MAX_SESSION_TTL, the longest a session may be asked for at all.
import { ErrorCode, MAX_SESSION_TTL, type ErrorCodeId } from "../../transport/messages.ts";
import type { SessionRecord } from "./sessions.ts";

export type ExtendResult = { ok: true; expiresAt: number; clamped: boolean } | { ok: false; code: ErrorCodeId; message: string };

/** Whether `s` may end `ttl` ms after `now`, and when it then ends (pure). */
export function decideExtend(s: Pick<SessionRecord<unknown>, "id" | "state" | "expiresAt">, ttl: number, now: number, max: number = MAX_SESSION_TTL): ExtendResult {
  if (s.state !== "active") return { ok: false, code: ErrorCode.NO_SESSION, message: `session ${s.id} is not active` };
  if (s.expiresAt === null) return { ok: false, code: ErrorCode.BAD_REQUEST, message: `session ${s.id} has no TTL: it does not end by itself, so there is nothing to extend` };
  if (!Number.isInteger(ttl) || ttl < 1000) return { ok: false, code: ErrorCode.BAD_REQUEST, message: "ttl: expected milliseconds (an integer of at least 1000)" };
  const clamped = ttl > max;
  return { ok: true, expiresAt: now + (clamped ? max : ttl), clamped };
}

/** Applies an accepted extension to the record: its end, and its TTL as the whole lifetime. */
export function applyExtend(s: SessionRecord<unknown>, expiresAt: number): void {
  s.expiresAt = expiresAt;
  s.ttl = Math.max(0, expiresAt - s.openedAt);
}
