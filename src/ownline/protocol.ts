// ownline's Gen 1 service protocol (seed 001; ../shared/PROTOCOLS.md §6), pure: one message
// per TLS connection, base64( IV[16] ‖ AES-256-CBC(key = SHA-256(aes_key)) ) over a JSON
// object padded PKCS#7-style to a 32-byte block; the answer is the bare bytes OK or FAIL.
//
// Decoding is strict where upstream is lax: every padding byte is checked (upstream only
// reads the last one), unknown fields are refused, and the api_key is compared (in constant
// time) before the action is even looked at; upstream accepts `flush` before its key check.
import { createCipheriv, createDecipheriv, createHash, timingSafeEqual } from "node:crypto";
import { formatIPv4, parseIPv4 } from "../netaddr.ts";
import type { NatRequest } from "../nat/rule.ts";

/** ownline pads to 32-byte blocks (its `BS = 32`), not AES's 16. */
export const OWNLINE_BLOCK = 32;
export const IV_BYTES = 16;
/** A real request is about 320 base64 characters; anything far bigger is not one. */
export const MAX_MESSAGE_BYTES = 4096;
/** The rule owner of every forward ownline asks for: its flush removes only these. */
export const OWNLINE_OWNER = "ownline";
/** ownline's defaults and ranges (service/server.py). */
export const DEFAULT_RULE_TIMEOUT_MIN = 5;
export const RULE_TIMEOUT_RANGE = [1, 998] as const;
export const PORT_DST_RANGE = [1024, 65534] as const;
export const PORT_DST_LAN_RANGE = [0, 65534] as const;

export const REPLY_OK = "OK";
export const REPLY_FAIL = "FAIL";

export type OwnlineAction = "add" | "del" | "flush";

export interface OwnlineRequest {
  action: OwnlineAction;
  /** add and del only. */
  forward?: { ip_src: string; port_dst: number; ip_dst_lan: string; port_dst_lan: number; rule_timeout: number };
}

/** Why a message was refused (logged, never sent: the peer only ever gets FAIL). */
export class OwnlineRefusal extends Error {
  override readonly name = "OwnlineRefusal";
}

/** The AES-256 key ownline derives from its aes_key string. */
export function deriveKey(aesKey: string): Buffer {
  return createHash("sha256").update(aesKey, "utf8").digest();
}

export function pad(plain: Buffer): Buffer {
  const n = OWNLINE_BLOCK - (plain.length % OWNLINE_BLOCK);
  return Buffer.concat([plain, Buffer.alloc(n, n)]);
}

/** Strips ownline's padding; every padding byte must hold the count (1..32). */
export function unpad(padded: Buffer): Buffer {
  if (padded.length === 0) throw new OwnlineRefusal("bad padding: empty plaintext");
  const n = padded[padded.length - 1]!;
  if (n < 1 || n > OWNLINE_BLOCK || n > padded.length) throw new OwnlineRefusal(`bad padding: last byte ${n}`);
  for (let i = padded.length - n; i < padded.length; i++) if (padded[i] !== n) throw new OwnlineRefusal("bad padding: padding bytes differ");
  return padded.subarray(0, padded.length - n);
}

/** What a client sends (for unit tests; the system test's client uses the openssl command). */
export function encrypt(plaintext: string, key: Buffer, iv: Buffer): string {
  const c = createCipheriv("aes-256-cbc", key, iv).setAutoPadding(false);
  return Buffer.concat([iv, c.update(pad(Buffer.from(plaintext, "utf8"))), c.final()]).toString("base64");
}

/**
 * Whether `text` is a whole message yet: "whole" once it is base64 (whitespace ignored) of an
 * IV and whole AES blocks, "partial" while more could complete it (a message split across TLS
 * records), "invalid" as soon as nothing could (a character base64 lacks, data after "=").
 */
export function messageState(text: string): "whole" | "partial" | "invalid" {
  const b64 = text.replace(/\s+/g, "");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64)) return "invalid";
  if (b64.length === 0 || b64.length % 4 !== 0) return /=$/.test(b64) ? "invalid" : "partial";
  const bytes = (b64.length / 4) * 3 - (b64.endsWith("==") ? 2 : b64.endsWith("=") ? 1 : 0);
  if (bytes >= IV_BYTES + 16 && (bytes - IV_BYTES) % 16 === 0) return "whole";
  return /=$/.test(b64) ? "invalid" : "partial";
}

export const looksWhole = (text: string): boolean => messageState(text) === "whole";

/** base64 → IV ‖ ciphertext → the plaintext JSON text. Throws OwnlineRefusal. */
export function decrypt(text: string, key: Buffer): string {
  const b64 = text.replace(/\s+/g, "");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) throw new OwnlineRefusal("not base64");
  const raw = Buffer.from(b64, "base64");
  if (raw.length < IV_BYTES + 16 || (raw.length - IV_BYTES) % 16 !== 0) throw new OwnlineRefusal(`ciphertext of ${raw.length - IV_BYTES} bytes is not whole AES blocks`);
  const d = createDecipheriv("aes-256-cbc", key, raw.subarray(0, IV_BYTES)).setAutoPadding(false);
  const plain = unpad(Buffer.concat([d.update(raw.subarray(IV_BYTES)), d.final()]));
  const out = new TextDecoder("utf-8", { fatal: true });
  try {
    return out.decode(plain);
  } catch {
    throw new OwnlineRefusal("plaintext is not UTF-8 (wrong aes_key?)");
  }
}

/** Constant-time equality of two secrets of any length (compares their SHA-256 digests). */
export function secretsEqual(a: string, b: string): boolean {
  const h = (s: string) => createHash("sha256").update(s, "utf8").digest();
  return timingSafeEqual(h(a), h(b));
}

const FIELDS = new Set(["action", "api_key", "ip_src", "port_dst", "ip_dst_lan", "port_dst_lan", "rule_timeout"]);

function whole(v: unknown, name: string, [min, max]: readonly [number, number]): number {
  // ownline's clients send JSON numbers; a string of digits is what int() would also take.
  const n = typeof v === "string" && /^\d{1,6}$/.test(v) ? Number(v) : v;
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < min || n > max) throw new OwnlineRefusal(`${name}: expected a whole number ${min}-${max}, got ${JSON.stringify(v)?.slice(0, 40)}`);
  return n;
}

function address(v: unknown, name: string): string {
  if (typeof v !== "string") throw new OwnlineRefusal(`${name}: expected an IPv4 address string`);
  try {
    return formatIPv4(parseIPv4(v));
  } catch (e) {
    throw new OwnlineRefusal(`${name}: ${(e as Error).message}`);
  }
}

/**
 * Parses the decrypted JSON. The api_key is checked first, against `apiKey` in constant
 * time: nothing else of a request with a wrong key is looked at (upstream's flush is).
 */
export function parseRequest(json: string, apiKey: string): OwnlineRequest {
  let o: unknown;
  try {
    o = JSON.parse(json);
  } catch {
    throw new OwnlineRefusal("plaintext is not JSON");
  }
  if (o === null || typeof o !== "object" || Array.isArray(o)) throw new OwnlineRefusal("plaintext is not a JSON object");
  const r = o as Record<string, unknown>;
  if (typeof r.api_key !== "string" || !secretsEqual(r.api_key, apiKey)) throw new OwnlineRefusal("wrong api_key");
  const unknown = Object.keys(r).filter((k) => !FIELDS.has(k));
  if (unknown.length) throw new OwnlineRefusal(`unknown field ${JSON.stringify(unknown[0]!.slice(0, 40))}`);
  const action = r.action;
  if (action !== "add" && action !== "del" && action !== "flush") throw new OwnlineRefusal(`action: expected add, del or flush, got ${JSON.stringify(action)?.slice(0, 40)}`);
  if (action === "flush") return { action };
  const port_dst = whole(r.port_dst, "port_dst", PORT_DST_RANGE);
  return {
    action,
    forward: {
      ip_src: address(r.ip_src, "ip_src"),
      port_dst,
      ip_dst_lan: address(r.ip_dst_lan, "ip_dst_lan"),
      port_dst_lan: r.port_dst_lan === undefined ? port_dst : whole(r.port_dst_lan, "port_dst_lan", PORT_DST_LAN_RANGE),
      rule_timeout: r.rule_timeout === undefined ? DEFAULT_RULE_TIMEOUT_MIN : whole(r.rule_timeout, "rule_timeout", RULE_TIMEOUT_RANGE),
    },
  };
}

/** The request `agent nat add` would make for the same forward (its validation then applies). */
export function toNatRequest(f: NonNullable<OwnlineRequest["forward"]>): NatRequest {
  return { proto: "tcp", src: f.ip_src, port: f.port_dst, to: `${f.ip_dst_lan}:${f.port_dst_lan}`, ttl: `${f.rule_timeout}m` };
}

/** A rule as the NAT service lists it (the fields ownline's del compares). */
export interface ListedRule {
  id: string;
  proto: string;
  src: string;
  port: number;
  to: string;
  owner: string;
}

/** The ownline rule a `del` names: same source, port and target (upstream's `-D` matches so). */
export function findForward(rules: readonly ListedRule[], f: NonNullable<OwnlineRequest["forward"]>): ListedRule | undefined {
  const src = `${f.ip_src}/32`;
  const to = `${f.ip_dst_lan}:${f.port_dst_lan}`;
  return rules.find((r) => r.owner === OWNLINE_OWNER && r.proto === "tcp" && r.src === src && r.port === f.port_dst && r.to === to);
}

/** The NAT service as ownline uses it: the same calls `agent nat add|del` make. */
export interface OwnlineNat {
  add(req: NatRequest, owner: string): Promise<unknown>;
  list(): Promise<readonly ListedRule[]>;
  del(id: string): Promise<unknown>;
  removeByOwner(owner: string): Promise<number>;
}

export interface Outcome {
  reply: typeof REPLY_OK | typeof REPLY_FAIL;
  /** For the log: what was done or why it was refused (never the keys). */
  detail: string;
  action?: OwnlineAction;
}

/** Decrypts, authenticates and carries out one message; never throws. */
export async function answer(message: string, keys: { aes: Buffer; api: string }, nat: OwnlineNat): Promise<Outcome> {
  let req: OwnlineRequest;
  try {
    req = parseRequest(decrypt(message, keys.aes), keys.api);
  } catch (e) {
    return { reply: REPLY_FAIL, detail: e instanceof OwnlineRefusal ? e.message : `undecodable: ${(e as Error).message}` };
  }
  const { action, forward } = req;
  try {
    if (action === "flush") return { reply: REPLY_OK, action, detail: `flushed ${await nat.removeByOwner(OWNLINE_OWNER)} ownline rule(s)` };
    const what = `tcp ${forward!.ip_src} → :${forward!.port_dst} → ${forward!.ip_dst_lan}:${forward!.port_dst_lan}`;
    if (action === "add") {
      await nat.add(toNatRequest(forward!), OWNLINE_OWNER);
      return { reply: REPLY_OK, action, detail: `added ${what} for ${forward!.rule_timeout}m` };
    }
    const rule = findForward(await nat.list(), forward!);
    if (!rule) return { reply: REPLY_FAIL, action, detail: `del: no ownline rule forwards ${what}` };
    await nat.del(rule.id);
    return { reply: REPLY_OK, action, detail: `deleted rule ${rule.id} (${what})` };
  } catch (e) {
    return { reply: REPLY_FAIL, action, detail: `${action} refused: ${(e as Error).message}` };
  }
}
