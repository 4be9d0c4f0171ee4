// The control-message catalogue: every typed message that travels on stream 0 inside a
// CONTROL frame (payload = u16 type id + JSON body). The ids are frozen by
// test/transport-messages.test.ts: never renumber, only add. docs/protocol.md describes each.
//
// Requests carry `rid` (a number unique per connection and direction) and are answered by a
// REPLY with the same `rid`; everything else is one-way.

export const PROTOCOL_VERSIONS = [1] as const;

export const Msg = {
  /** device → relay, first frame: {versions, role, id, agent} */
  HELLO: 1,
  /** relay → device, answer to HELLO: {version, relay, address, keepalive} */
  WELCOME: 2,
  /** answer to any request: {rid, ok: true, result} | {rid, ok: false, error, code} */
  REPLY: 3,
  /** onsite → relay, after WELCOME and when it changes: {hostname, location, agent, uptime, uplink} */
  INVENTORY: 10,
  /** master → relay request: the onsite inventory. result: DeviceInfo[] */
  DEVICES: 11,
  /** master → relay request: {onsite, targets, ttl?, session?} → SessionInfo */
  SESSION_OPEN: 20,
  /** relay → onsite request: {session, master, targets, expires?} → {} or error */
  SESSION_OFFER: 21,
  /** either way, one-way: {session, reason, final} (final: will not come back by itself) */
  SESSION_CLOSE: 22,
  /** master → relay request: the master's sessions. result: SessionInfo[] */
  SESSIONS: 23,
  /** master → relay request {session, reason?}: end a session for both sides */
  SESSION_END: 24,
  /** master → relay → onsite request: a timed DNAT rule for the session's peer */
  NAT_REQUEST: 30,
} as const;
export type MsgType = (typeof Msg)[keyof typeof Msg];

const KNOWN = new Set<number>(Object.values(Msg));
export function isKnownMsg(type: number): type is MsgType {
  return KNOWN.has(type);
}

export function msgName(type: number): string {
  for (const [k, v] of Object.entries(Msg)) if (v === type) return k;
  return `#${type}`;
}

/** Error codes in a failed REPLY, so a CLI can say which problem it was. */
export const ErrorCode = {
  BAD_REQUEST: "bad_request",
  UNKNOWN_DEVICE: "unknown_device",
  OFFLINE: "offline",
  FORBIDDEN: "forbidden",
  REFUSED: "refused",
  NO_SESSION: "no_session",
  VERSION: "version",
  INTERNAL: "internal",
} as const;
export type ErrorCodeId = (typeof ErrorCode)[keyof typeof ErrorCode];

export interface DeviceInfo {
  id: string;
  hostname: string;
  location: string;
  address: string;
  agent: string;
  uptime: number; // seconds, as the device reported it at `reported`
  uplink: string;
  online: boolean;
  connected_since: string; // ISO time
  last_seen: string; // ISO time
  rtt_ms: number | null;
}

export interface SessionInfo {
  session: string;
  master: string;
  onsite: string;
  targets: string[];
  opened: string;
  expires: string | null;
}
