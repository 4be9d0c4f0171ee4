// The heartbeat datagram: what an onsite device sends the relay over UDP, outside the TLS
// tunnel, so that the relay hears from a device whose tunnel is down (which uplinks work, what
// the last dial error was). Pure: the layout, the HMAC-SHA256 over it, the payload's bounds and
// the replay window. docs/protocol.md §8 describes the layout; test/heartbeat-codec.test.ts
// holds it to the bytes.
//
//   offset  size  field
//   0       4     magic "AGH1"
//   4       1     id length N (1..63)
//   5       N     device id (ASCII)
//   5+N     16    boot id (random per start of the agent)
//   21+N    8     sequence (u64 big-endian, +1 per datagram within a boot)
//   29+N    8     sent at (u64 big-endian, wall-clock ms of the sender)
//   37+N    2     payload length P
//   39+N    P     payload (UTF-8 JSON, HeartbeatPayload)
//   39+N+P  32    HMAC-SHA256(device key, bytes 0 .. 39+N+P)
import { timingSafeEqual } from "node:crypto";

export const MAGIC = new Uint8Array([0x41, 0x47, 0x48, 0x31]); // "AGH1"
/** Every heartbeat fits one datagram of this many bytes (no fragmentation on any path). */
export const MAX_DATAGRAM = 1200;
export const MAC_SIZE = 32;
export const BOOT_ID_SIZE = 16;
export const KEY_SIZE = 32;
const MAX_ID = 63;
/** Bytes of the header after the id: boot id, sequence, sent at, payload length. */
const FIXED_AFTER_ID = BOOT_ID_SIZE + 8 + 8 + 2;
/** Heartbeats older (or further in the future) than this are dropped. */
export const MAX_AGE_MS = 120_000;
/** Sequences the replay window remembers behind the highest one seen. */
export const REPLAY_WINDOW = 64;

/** How often a device sends, and how often over a metered uplink on standby. */
export const HeartbeatTiming = {
  interval: 25_000,
  meteredStandbyInterval: 100_000,
  /** This many intervals without a heartbeat (and no tunnel): the device is lost. */
  missedForLost: 3,
} as const;

/** Bounds of the payload's fields: the device writes them, the relay and the codec bound them. */
export const PAYLOAD_LIMITS = { uplinks: 8, name: 15, error: 200, ssid: 32, operator: 40, technology: 16, state: 12 } as const;

export interface UplinkBeat {
  /** Interface name. */
  n: string;
  /** Health as the uplink manager says: up, down, unknown… */
  s: string;
  /** Probe loss in percent, or null when not probed yet. */
  l: number | null;
  /** Probe latency in ms, or null. */
  r: number | null;
  /** Metered (cellular): 1. */
  m?: 1;
}

/** What a heartbeat says (short keys: it must fit 1200 bytes with eight uplinks). */
export interface HeartbeatPayload {
  /** Seconds since the device booted. */
  up: number;
  /** The active uplink ("" when none is configured or usable). */
  act: string;
  /** The uplink this datagram was sent over ("" for the default route). */
  via: string;
  /** The sender's interval, ms: the relay marks the device lost after three missed. */
  iv: number;
  /** The tunnel as the device sees it: up, connecting, waiting. */
  tun: string;
  ul: UplinkBeat[];
  /** Cellular: signal percent, operator, technology. */
  cell?: { sig: number | null; op: string; tech: string };
  /** Wi-Fi client: SSID and signal (dBm or percent as the driver says). */
  wifi?: { ssid: string; sig: number | null };
  /** The last error dialling the relay, or null. */
  err: string | null;
  /** 1-minute load average. */
  load: number;
  /** Free disk of the state dir, MiB. */
  disk: number;
}

export interface Heartbeat {
  id: string;
  boot: Uint8Array;
  seq: bigint;
  sentAt: number;
  payload: HeartbeatPayload;
}

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

// HMAC-SHA256 through Bun's native hasher: about a third of node:crypto's createHmac per
// datagram (no Hmac object, stream plumbing or Buffer copy of the digest).
function mac(key: Uint8Array, data: Uint8Array): Uint8Array {
  const d = new Bun.CryptoHasher("sha256", key).update(data).digest();
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

/** Where verifyMac writes the digest it checks (Bun's digest-into wants 64 bytes). One per process: verification is synchronous. */
const scratch = new Uint8Array(64);

const cut = (s: unknown, n: number) => (typeof s === "string" ? s : "").slice(0, n);
/** A finite number clamped to [lo, hi] and rounded to `places` decimals, or null. */
const num = (v: unknown, lo: number, hi: number, places = 1): number | null => {
  if (typeof v !== "number" || !Number.isFinite(v)) return null;
  const f = 10 ** places;
  return Math.round(Math.min(hi, Math.max(lo, v)) * f) / f;
};

/** The payload with every field within its bound (numbers clamped and rounded, strings cut). */
export function boundPayload(p: HeartbeatPayload): HeartbeatPayload {
  const L = PAYLOAD_LIMITS;
  const out: HeartbeatPayload = {
    up: Math.floor(num(p.up, 0, 2 ** 40) ?? 0),
    act: cut(p.act, L.name),
    via: cut(p.via, L.name),
    iv: Math.floor(num(p.iv, 1000, 86_400_000) ?? HeartbeatTiming.interval),
    tun: cut(p.tun, L.state),
    ul: (Array.isArray(p.ul) ? p.ul : []).slice(0, L.uplinks).map((u) => {
      const b: UplinkBeat = { n: cut(u?.n, L.name), s: cut(u?.s, L.state), l: num(u?.l, 0, 100), r: num(u?.r, 0, 600_000) };
      if (u?.m) b.m = 1;
      return b;
    }),
    err: p.err == null ? null : cut(p.err, L.error),
    load: num(p.load, 0, 10_000, 2) ?? 0,
    disk: Math.floor(num(p.disk, 0, 2 ** 40) ?? 0),
  };
  if (p.cell) out.cell = { sig: num(p.cell.sig, -200, 200), op: cut(p.cell.op, L.operator), tech: cut(p.cell.tech, L.technology) };
  if (p.wifi) out.wifi = { ssid: cut(p.wifi.ssid, L.ssid), sig: num(p.wifi.sig, -200, 200) };
  return out;
}

/**
 * The payload's JSON, bounded and cut until the whole datagram fits MAX_DATAGRAM for this id:
 * first the error text shrinks, then uplinks go from the end. A JSON string can take six bytes
 * per character (\u escapes), so the limits alone do not guarantee the fit; this does.
 */
export function fitPayload(p: HeartbeatPayload, idLength: number): Uint8Array {
  const room = MAX_DATAGRAM - (MAGIC.length + 1 + idLength + FIXED_AFTER_ID + MAC_SIZE);
  const b = boundPayload(p);
  for (;;) {
    const bytes = enc.encode(JSON.stringify(b));
    if (bytes.length <= room) return bytes;
    if (b.err && b.err.length > 0) b.err = b.err.slice(0, Math.floor(b.err.length / 2));
    else if (b.wifi && b.wifi.ssid) b.wifi.ssid = b.wifi.ssid.slice(0, Math.floor(b.wifi.ssid.length / 2));
    else if (b.cell && (b.cell.op || b.cell.tech)) b.cell = { sig: b.cell.sig, op: "", tech: "" };
    else if (b.ul.length > 0) b.ul.pop();
    else {
      // Nothing left to cut but the names: the active and via names alone (≤ 15 chars each).
      b.act = b.act.slice(0, 4);
      b.via = b.via.slice(0, 4);
      b.tun = b.tun.slice(0, 4);
      const last = enc.encode(JSON.stringify(b));
      if (last.length <= room) return last;
      throw new Error(`heartbeat payload cannot fit ${MAX_DATAGRAM} bytes`);
    }
  }
}

export function validDeviceId(id: string): boolean {
  return id.length >= 1 && id.length <= MAX_ID && /^[\x21-\x7e]+$/.test(id);
}

/** The signed datagram. Throws on an id the layout cannot carry or a boot id of the wrong size. */
export function encodeHeartbeat(h: Heartbeat, key: Uint8Array): Uint8Array {
  if (!validDeviceId(h.id)) throw new Error(`heartbeat: device id must be 1-${MAX_ID} printable ASCII characters`);
  if (h.boot.length !== BOOT_ID_SIZE) throw new Error(`heartbeat: boot id must be ${BOOT_ID_SIZE} bytes`);
  if (h.seq < 0n || h.seq >= 1n << 64n) throw new Error("heartbeat: sequence must fit 64 bits");
  const id = enc.encode(h.id);
  const payload = fitPayload(h.payload, id.length);
  const body = new Uint8Array(MAGIC.length + 1 + id.length + FIXED_AFTER_ID + payload.length);
  const v = new DataView(body.buffer);
  body.set(MAGIC, 0);
  let o = MAGIC.length;
  body[o++] = id.length;
  body.set(id, o);
  o += id.length;
  body.set(h.boot, o);
  o += BOOT_ID_SIZE;
  v.setBigUint64(o, h.seq);
  o += 8;
  v.setBigUint64(o, BigInt(Math.max(0, Math.floor(h.sentAt))));
  o += 8;
  v.setUint16(o, payload.length);
  o += 2;
  body.set(payload, o);
  const out = new Uint8Array(body.length + MAC_SIZE);
  out.set(body, 0);
  out.set(mac(key, body), body.length);
  return out;
}

/** Why a datagram was dropped. Only add: counters are keyed on these. */
export const DropReason = {
  /** Shorter than its header says, or not a heartbeat at all. */
  TRUNCATED: "truncated",
  /** Not our magic, a bad id, a payload that is not the JSON it must be. */
  MALFORMED: "malformed",
  /** A device id the relay does not know (never seen, forgotten, or no key). */
  UNKNOWN: "unknown",
  /** The HMAC does not match the device's key. */
  FORGED: "forged",
  /** Sent more than MAX_AGE_MS before (or after) the relay's time. */
  STALE: "stale",
  /** A sequence seen before, or too old for the window. */
  REPLAY: "replay",
} as const;
export type DropReasonId = (typeof DropReason)[keyof typeof DropReason];
export const DROP_REASONS: readonly DropReasonId[] = Object.values(DropReason);

/** The header, read without the key: enough to find the device's key. */
export interface Parsed {
  id: string;
  /** Bytes covered by the MAC. */
  signed: Uint8Array;
  mac: Uint8Array;
  boot: Uint8Array;
  seq: bigint;
  sentAt: number;
  payload: Uint8Array;
}

export type ParseResult = { ok: true; parsed: Parsed } | { ok: false; reason: DropReasonId };

/** Reads the layout (no key, no allocation beyond views). Pure. */
export function parseHeartbeat(d: Uint8Array): ParseResult {
  if (d.length < MAGIC.length + 1) return { ok: false, reason: DropReason.TRUNCATED };
  for (let i = 0; i < MAGIC.length; i++) if (d[i] !== MAGIC[i]) return { ok: false, reason: DropReason.MALFORMED };
  const n = d[MAGIC.length]!;
  if (n < 1 || n > MAX_ID) return { ok: false, reason: DropReason.MALFORMED };
  let o = MAGIC.length + 1;
  if (d.length < o + n + FIXED_AFTER_ID) return { ok: false, reason: DropReason.TRUNCATED };
  let id: string;
  try {
    id = dec.decode(d.subarray(o, o + n));
  } catch {
    return { ok: false, reason: DropReason.MALFORMED };
  }
  if (!validDeviceId(id)) return { ok: false, reason: DropReason.MALFORMED };
  o += n;
  const v = new DataView(d.buffer, d.byteOffset, d.byteLength);
  const boot = d.subarray(o, o + BOOT_ID_SIZE);
  o += BOOT_ID_SIZE;
  const seq = v.getBigUint64(o);
  o += 8;
  const sentAt = Number(v.getBigUint64(o));
  o += 8;
  const p = v.getUint16(o);
  o += 2;
  if (d.length < o + p + MAC_SIZE) return { ok: false, reason: DropReason.TRUNCATED };
  if (d.length > o + p + MAC_SIZE) return { ok: false, reason: DropReason.MALFORMED };
  return { ok: true, parsed: { id, signed: d.subarray(0, o + p), mac: d.subarray(o + p), boot, seq, sentAt, payload: d.subarray(o, o + p) } };
}

/** Does the MAC match this key? Constant time. */
export function verifyMac(p: Parsed, key: Uint8Array): boolean {
  if (p.mac.length !== MAC_SIZE) return false;
  new Bun.CryptoHasher("sha256", key).update(p.signed).digest(scratch);
  return timingSafeEqual(scratch.subarray(0, MAC_SIZE), p.mac);
}

/** The payload's JSON, checked for the fields the relay shows (bounded again). Null if it is not one. */
export function decodePayload(bytes: Uint8Array): HeartbeatPayload | null {
  let v: unknown;
  try {
    v = JSON.parse(dec.decode(bytes));
  } catch {
    return null;
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  if (typeof o.up !== "number" || typeof o.act !== "string" || typeof o.via !== "string" || !Array.isArray(o.ul)) return null;
  return boundPayload(o as unknown as HeartbeatPayload);
}

// ---- the replay window ----------------------------------------------------------------------

/** Per device: the boot it is in, the highest sequence and a bitmap of the 64 behind it. */
export interface ReplayWindow {
  boot: string;
  /** Sender's time of the newest datagram accepted in this boot. */
  bootSentAt: number;
  top: bigint;
  /** Bit i set: sequence top - i was seen (bit 0 is top itself). */
  seen: bigint;
}

const MASK = (1n << BigInt(REPLAY_WINDOW)) - 1n;

export type WindowVerdict = { ok: true; window: ReplayWindow } | { ok: false };

/**
 * May a datagram (boot, seq, sentAt) pass, given the window (null: none yet)? Pure: returns the
 * new window. A new boot id is accepted only when it is newer than the boot in force, so an old
 * boot's datagram replayed within the age limit cannot reset the window.
 */
export function acceptSeq(w: ReplayWindow | null, boot: string, seq: bigint, sentAt: number): WindowVerdict {
  if (w === null || w.boot !== boot) {
    if (w !== null && sentAt <= w.bootSentAt) return { ok: false };
    return { ok: true, window: { boot, bootSentAt: sentAt, top: seq, seen: 1n } };
  }
  if (seq > w.top) {
    const shift = seq - w.top;
    const seen = shift >= BigInt(REPLAY_WINDOW) ? 1n : ((w.seen << shift) | 1n) & MASK;
    return { ok: true, window: { boot, bootSentAt: Math.max(w.bootSentAt, sentAt), top: seq, seen } };
  }
  const back = w.top - seq;
  if (back >= BigInt(REPLAY_WINDOW)) return { ok: false };
  const bit = 1n << back;
  if (w.seen & bit) return { ok: false };
  return { ok: true, window: { ...w, seen: w.seen | bit } };
}

/** Is a datagram sent at `sentAt` (sender's wall ms) fresh at relay wall time `now`? */
export function fresh(sentAt: number, now: number, maxAge: number = MAX_AGE_MS): boolean {
  return Math.abs(now - sentAt) <= maxAge;
}

// ---- the device key -------------------------------------------------------------------------

/**
 * A device's heartbeat key: HMAC-SHA256 of the relay's secret over the device id and its
 * certificate serial. The relay keeps one secret (its state dir) and no per-device key; a new
 * certificate (a new serial) gives a new key; the device learns its key inside TLS.
 */
export function deviceKey(secret: Uint8Array, id: string, serial: string): Uint8Array {
  return mac(secret, enc.encode(`agent heartbeat v1\0${id}\0${serial}`));
}

export const toHex = (b: Uint8Array) => Buffer.from(b).toString("hex");
