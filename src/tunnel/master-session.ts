// The life of one master session, as a pure decision: `decide(state, event, now)` says what
// the session becomes and what the forwarder must do (arm a timer, ask the relay, close the
// forwards). Every instant is on the monotonic clock, so a step of the wall clock changes
// neither a TTL nor a resume window. The forwarder (master-forwarder.ts) runs the actions.
//
//   opening ──opened──▶ active ──interrupted / relay-down──▶ resuming ──resumed──▶ active
//                          │                                   │  ▲ retry-due (quick tries,
//                          │                                   │  └ then every resumeRetry)
//                          └── ttl / final close / disconnect ─┴──────────────▶ closed
//
// A resuming session gives up when its resume window ends, when too little TTL is left to be
// worth re-opening, or when the relay refuses it for good (forbidden, refused, unknown device).
import { ErrorCode } from "../transport/messages.ts";

export const SessionTiming = {
  /** How long a session whose relay or device went away keeps trying to come back. */
  resumeWindow: 5 * 60_000,
  /** How often it tries while the relay connection is up, once the quick tries are spent. */
  resumeRetry: 2_000,
  /**
   * The first tries after the relay said a side went away. An onsite device that re-dials over
   * a new uplink replaces its old connection at the relay, and the relay announces the
   * interruption then, with the device already back: a try at once succeeds. When the device
   * closed its old connection itself (its old path still worked) the announcement comes a
   * dial earlier, so a few quick tries follow. Waiting a full resumeRetry kept the forward
   * dead ~2 s longer than the tunnel.
   */
  resumeQuick: [50, 250, 500, 1_000],
  /** Less TTL than this left: not worth re-opening, the session ends. */
  minResumeTtl: 1_000,
  /** The master's own TTL timer fires this late, so the relay's final SESSION_CLOSE (with its
   * reason) normally arrives first. */
  expiryGrace: 50,
} as const;

/** Delay before resume try `n` (0-based) of an interrupted session (pure). */
export function resumeDelay(n: number): number {
  return SessionTiming.resumeQuick[n] ?? SessionTiming.resumeRetry;
}

/** Relay answers to a resume that no retry can change (pure). */
export function isFatalResumeError(code: string | undefined): boolean {
  return code === ErrorCode.FORBIDDEN || code === ErrorCode.REFUSED || code === ErrorCode.UNKNOWN_DEVICE;
}

export type SessionPhase = "opening" | "active" | "resuming" | "closed";

export interface SessionState {
  phase: SessionPhase;
  /** When the phase began (monotonic ms). */
  since: number;
  reason: string;
  /** TTL deadline (monotonic ms), or null for none. */
  expiresAt: number | null;
  /** End of the resume window of the current interruption (monotonic ms). */
  resumeUntil: number | null;
  /** Resume tries since the interruption (for resumeDelay). */
  tries: number;
}

export type SessionEvent =
  /** The relay opened the session; `ttl` ms from `now` (null: no TTL). */
  | { kind: "opened"; ttl: number | null }
  /** The relay said the session was interrupted (a side went away, may come back). */
  | { kind: "interrupted"; reason: string }
  /** The relay said the session ended for good. */
  | { kind: "ended"; reason: string }
  | { kind: "relay-down"; reason: string }
  | { kind: "relay-up" }
  /** A resume timer fired; `relay`: whether a relay connection is up to ask. */
  | { kind: "retry-due"; relay: boolean }
  | { kind: "resumed" }
  | { kind: "resume-failed"; code: string | undefined; message: string }
  /** The TTL timer fired. */
  | { kind: "ttl" }
  /** The relay moved the session's end (SESSION_EXTEND): it now ends `ttl` ms from `now`. */
  | { kind: "extended"; ttl: number }
  | { kind: "disconnect" }
  | { kind: "shutdown" };

export type SessionAction =
  /** (Re)arm the one resume timer; a pending one is replaced. */
  | { kind: "retry-in"; ms: number }
  | { kind: "expire-in"; ms: number }
  /** Ask the relay to re-open the session with this much TTL left (null: none). */
  | { kind: "resume"; ttl: number | null }
  /** Clear the timers, stop the forwards: the session is over. */
  | { kind: "close"; reason: string }
  | { kind: "log"; level: "info" | "warn"; text: string };

export interface Decision {
  state: SessionState;
  actions: SessionAction[];
}

/** A session about to ask the relay for the first time. */
export function opening(now: number): SessionState {
  return { phase: "opening", since: now, reason: "opening", expiresAt: null, resumeUntil: null, tries: 0 };
}

/** Whether a new local connection of the session's forwards may go through. */
export function carriesConnections(s: SessionState): boolean {
  return s.phase === "active";
}

function close(s: SessionState, now: number, reason: string): Decision {
  if (s.phase === "closed") return { state: s, actions: [] };
  return { state: { ...s, phase: "closed", since: now, reason }, actions: [{ kind: "close", reason }] };
}

function interrupt(s: SessionState, now: number, reason: string): Decision {
  if (s.expiresAt !== null && now >= s.expiresAt) return close(s, now, "TTL reached");
  const next: SessionState = { ...s, phase: "resuming", since: now, reason, resumeUntil: s.resumeUntil ?? now + SessionTiming.resumeWindow, tries: 1 };
  return {
    state: next,
    actions: [
      { kind: "log", level: "warn", text: `interrupted (${reason}); resuming for up to ${SessionTiming.resumeWindow / 1000} s` },
      { kind: "retry-in", ms: resumeDelay(0) },
    ],
  };
}

/** What an event does to a session (pure). `now` is monotonic. */
export function decide(s: SessionState, e: SessionEvent, now: number): Decision {
  const none: Decision = { state: s, actions: [] };
  if (s.phase === "closed") return none;
  switch (e.kind) {
    case "opened": {
      if (s.phase !== "opening") return none;
      const expiresAt = e.ttl === null ? null : now + e.ttl;
      return {
        state: { ...s, phase: "active", since: now, reason: "opened", expiresAt },
        actions: expiresAt === null ? [] : [{ kind: "expire-in", ms: e.ttl! + SessionTiming.expiryGrace }],
      };
    }
    case "interrupted":
      if (s.phase === "opening") return none;
      return interrupt(s, now, e.reason);
    case "relay-down":
      if (s.phase !== "active") return none;
      return interrupt(s, now, `relay connection lost: ${e.reason}`);
    case "relay-up":
      if (s.phase !== "resuming") return none;
      return { state: s, actions: [{ kind: "retry-in", ms: 0 }] };
    case "retry-due": {
      if (s.phase !== "resuming") return none;
      if (s.resumeUntil !== null && now > s.resumeUntil) return close(s, now, `could not resume within ${SessionTiming.resumeWindow / 1000} s: ${s.reason}`);
      if (!e.relay) return none; // relay-up asks again
      const ttl = s.expiresAt === null ? null : s.expiresAt - now;
      if (ttl !== null && ttl < SessionTiming.minResumeTtl) return close(s, now, "TTL reached");
      return { state: s, actions: [{ kind: "resume", ttl }] };
    }
    case "resumed":
      if (s.phase !== "resuming") return none;
      return {
        state: { ...s, phase: "active", since: now, reason: "resumed", resumeUntil: null },
        actions: [{ kind: "log", level: "info", text: "resumed" }],
      };
    case "resume-failed":
      if (s.phase !== "resuming") return none;
      if (isFatalResumeError(e.code)) return close(s, now, `cannot resume: ${e.message}`);
      return {
        state: { ...s, reason: `resuming: ${e.message}`, tries: s.tries + 1 },
        actions: [{ kind: "retry-in", ms: resumeDelay(s.tries) }],
      };
    case "ended":
      return close(s, now, e.reason);
    case "ttl":
      return close(s, now, "TTL reached");
    case "extended":
      if (s.phase === "opening") return none;
      return { state: { ...s, expiresAt: now + e.ttl }, actions: [{ kind: "expire-in", ms: e.ttl + SessionTiming.expiryGrace }] };
    case "disconnect":
      return close(s, now, "disconnected by the user");
    case "shutdown":
      return close(s, now, "master shutting down");
  }
}
