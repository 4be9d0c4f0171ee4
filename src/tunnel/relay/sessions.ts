// The relay's session table: a pure state machine. A session is `open` once the relay has taken
// the master's request, `offered` while the onsite device is asked, `active` once it said yes,
// and `closed` when it ends (TTL, SESSION_END, a side gone, re-opened, refused). The table does
// no I/O and reads no clock: every call that needs the time is given the monotonic `now`, so a
// wall-clock step cannot lengthen or shorten a TTL. `C` is whatever the caller uses to name a
// connection (the relay: its Connection objects; the table test: strings); the table only
// compares it.
import { ErrorCode, type ErrorCodeId, type SessionInfo, type SessionOpenBody, type SessionTunnel, type TunnelRequestBody } from "../../transport/messages.ts";
import { noPacketStats, type PacketStats } from "../../transport/packet.ts";

export type SessionState = "open" | "offered" | "active" | "closed";
export type SessionEvent = "offer" | "accept" | "refuse" | "close" | "expire";

const TRANSITIONS: Record<SessionState, Partial<Record<SessionEvent, SessionState>>> = {
  open: { offer: "offered", refuse: "closed", close: "closed" },
  offered: { accept: "active", refuse: "closed", close: "closed" },
  active: { close: "closed", expire: "closed" },
  closed: {},
};

/** The state after `event`, or null when the event cannot happen in `state`. Pure. */
export function nextState(state: SessionState, event: SessionEvent): SessionState | null {
  return TRANSITIONS[state][event] ?? null;
}

export interface SessionRecord<C> {
  id: string;
  master: string;
  onsite: string;
  targets: string[];
  state: SessionState;
  ttl: number | null;
  /** Monotonic ms when the master's request was taken. */
  openedAt: number;
  /** Wall-clock ms at the same moment: the "opened" people read. */
  openedWall: number;
  /** Monotonic ms at which the TTL ends it; null: no TTL. */
  expiresAt: number | null;
  masterConn: C;
  onsiteConn: C;
  /** Streams routed in this session so far. */
  streams: number;
  /** The tunnel asked for (the request), then what the onsite device made of it (`tunnel`). */
  tunnelRequest?: TunnelRequestBody;
  tunnel?: SessionTunnel;
  /** UDP forwards' targets. */
  udp?: string[];
  /** Packets the relay carried towards each side (both tunnel and UDP packet streams). */
  packets?: { to_onsite: PacketStats; to_master: PacketStats };
  /** Streams open in this session right now (the router counts them: streamOpened/streamClosed). */
  openStreams: number;
  /** Monotonic ms of the last sign of use: opened, a stream opened or closed, a packet (touch). */
  lastActivity: number;
}

/** The master's SESSION_OPEN as the table takes it: the decoded body, and which master asked. */
export interface OpenRequest extends SessionOpenBody {
  master: string;
}

export type OpenResult<C> =
  | { ok: true; session: SessionRecord<C>; replaced: SessionRecord<C> | null }
  | { ok: false; code: ErrorCodeId; message: string };

export class SessionTable<C> {
  private readonly byId = new Map<string, SessionRecord<C>>();

  constructor(
    private readonly o: {
      /** Sessions (in any state but closed) one master may hold. */
      maxPerMaster: number;
      /** Makes a fresh session id; injected so a shared store can hand them out. */
      newId: () => string;
    },
  ) {}

  /** May `master` open one more session (re-opening `reopen` does not count)? */
  admits(master: string, reopen: string | null): { ok: true } | { ok: false; code: ErrorCodeId; message: string } {
    let mine = 0;
    for (const s of this.byId.values()) if (s.master === master && s.id !== reopen) mine++;
    if (mine < this.o.maxPerMaster) return { ok: true };
    return { ok: false, code: ErrorCode.REFUSED, message: `${master} already has ${mine} sessions (limit ${this.o.maxPerMaster}); end some with agent disconnect` };
  }

  /**
   * Takes a request (state `open`), within the master's cap (maxPerMaster). Re-opening an id of the same master closes the old record
   * (returned as `replaced`, for the caller to tell both sides); another master's id is refused.
   */
  open(req: OpenRequest, ends: { master: C; onsite: C }, now: number, wall: number): OpenResult<C> {
    // The cap is checked here, where the record is made: the record is the master's reservation
    // from the moment the request is taken, through the awaited offer, so requests in flight
    // at once cannot all pass a count taken before any of them was recorded (issue 17 §4).
    const admitted = this.admits(req.master, req.session);
    if (!admitted.ok) return admitted;
    let replaced: SessionRecord<C> | null = null;
    if (req.session !== null) {
      const existing = this.byId.get(req.session);
      if (existing && existing.master !== req.master) return { ok: false, code: ErrorCode.BAD_REQUEST, message: `session id ${req.session} is taken` };
      if (existing) replaced = this.close(existing.id);
    }
    let id = req.session ?? this.o.newId();
    // A generator that keeps colliding (a broken shared store) must not hang the relay.
    for (let tries = 1; req.session === null && this.byId.has(id); tries++) {
      if (tries >= 100) return { ok: false, code: ErrorCode.INTERNAL, message: "no free session id after 100 tries" };
      id = this.o.newId();
    }
    const s: SessionRecord<C> = {
      id,
      master: req.master,
      onsite: req.onsite,
      targets: [...req.targets],
      state: "open",
      ttl: req.ttl,
      openedAt: now,
      openedWall: wall,
      expiresAt: req.ttl === null ? null : now + req.ttl,
      masterConn: ends.master,
      onsiteConn: ends.onsite,
      streams: 0,
      openStreams: 0,
      lastActivity: now,
    };
    if (req.tunnel) s.tunnelRequest = req.tunnel;
    if (req.udp?.length) s.udp = [...req.udp];
    if (req.tunnel || req.udp?.length) s.packets = { to_onsite: noPacketStats(), to_master: noPacketStats() };
    this.byId.set(id, s);
    return { ok: true, session: s, replaced };
  }

  /** Applies an event to a live record; the record (now in its new state) or null if it cannot. */
  private apply(id: string, event: SessionEvent, s?: SessionRecord<C>): SessionRecord<C> | null {
    const rec = this.byId.get(id);
    if (!rec || (s && rec !== s)) return null;
    const next = nextState(rec.state, event);
    if (!next) return null;
    rec.state = next;
    if (next === "closed") this.byId.delete(id);
    return rec;
  }

  /** The offer went out to the onsite device. */
  offer(s: SessionRecord<C>): boolean {
    return this.apply(s.id, "offer", s) !== null;
  }
  /** The onsite device said yes: the session is active. False if it was closed meanwhile. */
  accept(s: SessionRecord<C>): boolean {
    return this.apply(s.id, "accept", s) !== null;
  }
  /** The onsite device said no (or went away while asked). */
  refuse(s: SessionRecord<C>): boolean {
    return this.apply(s.id, "refuse", s) !== null;
  }
  /** Ends a session; the record, or null if there was no such live session. */
  close(id: string, s?: SessionRecord<C>): SessionRecord<C> | null {
    return this.apply(id, "close", s);
  }

  /** Active sessions whose TTL has ended at monotonic `now`; they are closed. */
  expire(now: number): SessionRecord<C>[] {
    const due = [...this.byId.values()].filter((s) => s.state === "active" && s.expiresAt !== null && s.expiresAt <= now);
    for (const s of due) this.apply(s.id, "expire", s);
    return due;
  }

  /** The earliest TTL end among active sessions (monotonic ms), or null. */
  nextExpiry(): number | null {
    let next: number | null = null;
    for (const s of this.byId.values()) if (s.state === "active" && s.expiresAt !== null && (next === null || s.expiresAt < next)) next = s.expiresAt;
    return next;
  }

  // ---- idleness (session_idle_timeout) -----------------------------------------------------
  // A session is idle while it has no open stream and nothing touched it. What counts as use is
  // said here, once: the stream router calls streamOpened/streamClosed, and anything else that
  // carries a session's traffic (packet streams, a datagram path) calls touch() per packet or
  // batch. touch() is one assignment: no timer moves, the idle sweep reads lastActivity.

  /** Something of this session moved at monotonic `now` (a packet, a datagram). */
  touch(s: { lastActivity: number }, now: number): void {
    if (now > s.lastActivity) s.lastActivity = now;
  }
  streamOpened(s: { openStreams: number; lastActivity: number }, now: number): void {
    s.openStreams++;
    this.touch(s, now);
  }
  streamClosed(s: { openStreams: number; lastActivity: number }, now: number): void {
    s.openStreams = Math.max(0, s.openStreams - 1);
    this.touch(s, now);
  }

  /** Active sessions without an open stream and untouched for `timeout` ms at `now`; they are closed. */
  idle(now: number, timeout: number): SessionRecord<C>[] {
    const due = [...this.byId.values()].filter((s) => isIdle(s, now, timeout));
    for (const s of due) this.apply(s.id, "expire", s);
    return due;
  }

  /** When the first active session without streams would be idle (monotonic ms), or null. */
  nextIdle(timeout: number): number | null {
    let next: number | null = null;
    for (const s of this.byId.values()) {
      if (s.state !== "active" || s.openStreams > 0) continue;
      const at = s.lastActivity + timeout;
      if (next === null || at < next) next = at;
    }
    return next;
  }

  /** Every live record bound to connection `c` (either side, any state). */
  boundTo(c: C): SessionRecord<C>[] {
    return [...this.byId.values()].filter((s) => s.masterConn === c || s.onsiteConn === c);
  }

  /** An active session by id. */
  active(id: string): SessionRecord<C> | undefined {
    const s = this.byId.get(id);
    return s?.state === "active" ? s : undefined;
  }

  /** Active sessions, in the order they were opened. */
  list(): SessionRecord<C>[] {
    return [...this.byId.values()].filter((s) => s.state === "active");
  }

  /** Live records in any state but closed. */
  get size(): number {
    return this.byId.size;
  }
}

/** Is this session idle at `now`: active, no open stream, nothing for `timeout` ms? Pure. */
export function isIdle(s: Pick<SessionRecord<unknown>, "state" | "openStreams" | "lastActivity">, now: number, timeout: number): boolean {
  return s.state === "active" && s.openStreams === 0 && now - s.lastActivity >= timeout;
}

/** What SESSIONS and SESSION_OPEN answer. `expires` is the monotonic end put on today's wall clock. Pure. */
export function sessionInfo(s: SessionRecord<unknown>, now: number, wall: number): SessionInfo {
  const info: SessionInfo = {
    session: s.id,
    master: s.master,
    onsite: s.onsite,
    targets: [...s.targets],
    opened: new Date(s.openedWall).toISOString(),
    expires: s.expiresAt === null ? null : new Date(wall + (s.expiresAt - now)).toISOString(),
  };
  if (s.tunnel) info.tunnel = { ...s.tunnel, ...(s.packets ? { relay: structuredClone(s.packets) } : {}) };
  if (s.udp) info.udp = [...s.udp];
  return info;
}
