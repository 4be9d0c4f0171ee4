// Admission of connections that have not authenticated yet (issue 17): who may start a TLS
// handshake with the relay, and how long a silent one is given. The relay is on the public
// internet: a stranger must not be able to keep the devices out by holding the slots,
// by handshaking as fast as it can, or by failing over and over. Pure: every decision takes
// the monotonic instant it is made at and (random early drop) an injected random().
//
//  - a source is an IPv4 address or an IPv6 /64 (one customer's prefix: an attacker has
//    millions of addresses in it, a device one);
//  - per source: at most `perSource` unauthenticated at once, and a token bucket of new
//    connections a second;
//  - failed handshakes (no or bad certificate, TLS garbage, the handshake deadline) cost the
//    source: past `failuresFree` of them it is held off, 1 s doubling up to 5 min, and
//    forgiven after `failureMemory` without one;
//  - in total: at most `total`, with random early drop from `earlyDropFrom` of the cap
//    (the chance of a drop rises linearly to 1 at the cap; a source where a device
//    authenticated in the last hour is spared it), and a token bucket of new
//    connections a second for the whole relay (the accept pacer: a restarted relay takes its
//    fleet back at the rate it can do handshakes, not all at once);
//  - the relay's own host (loopback) is capped but neither rate-limited nor held off;
//  - under pressure (the table past the early-drop threshold) a connection that has not
//    finished TLS gets a shorter deadline: a device's handshake takes milliseconds, a slot
//    held by a silent stranger is freed sooner.
import { TokenBucket } from "../../transport/accept-pacer.ts";
import { Limits, Timing } from "../../transport/policy.ts";

export interface AdmissionPolicy {
  /** Unauthenticated connections in total, and per source. */
  total: number;
  perSource: number;
  /** Random early drop starts at this fraction of `total`. */
  earlyDropFrom: number;
  /** New connections a second per source, and the burst saved up. */
  sourceRate: number;
  sourceBurst: number;
  /** New connections a second for the whole relay (the accept pacer), and its burst. */
  acceptRate: number;
  acceptBurst: number;
  /** Failed handshakes a source may have before it is held off. */
  failuresFree: number;
  /** The first hold-off, doubling with each further failure, up to `holdCap` (ms). */
  holdBase: number;
  holdCap: number;
  /** A source without a failure for this long starts over (ms). */
  failureMemory: number;
  /** Sources remembered at most (the oldest idle one is forgotten first). */
  maxSources: number;
  /** The TLS handshake deadline while the table is past the early-drop threshold (ms). */
  pressureDeadline: number;
  /** A source where a device authenticated is spared the early drop for this long (ms). */
  goodMemory: number;
}

export const DEFAULT_ADMISSION: AdmissionPolicy = {
  total: Limits.maxUnauthenticated,
  perSource: Limits.maxUnauthenticatedPerSource,
  earlyDropFrom: 0.5,
  sourceRate: 8,
  sourceBurst: 32,
  acceptRate: 250,
  acceptBurst: 500,
  failuresFree: 3,
  holdBase: 1_000,
  holdCap: 300_000,
  failureMemory: 600_000,
  maxSources: 65_536,
  pressureDeadline: 3_000,
  goodMemory: 3_600_000,
};

/** Why a connection was turned away at open, in one word (for counts), and the sentence. */
export type AdmitVerdict = { ok: true } | { ok: false; why: "held" | "capacity" | "source" | "rate" | "early" | "paced"; reason: string };

/**
 * The source an address counts against: an IPv4 address as it is (an IPv4-mapped IPv6 address
 * as its IPv4 one), an IPv6 address as its /64 ("2001:db8:0:1::/64"). Pure.
 */
export function sourceKey(address: string): string {
  let a = address.trim();
  if (a.startsWith("[")) a = a.slice(1, a.indexOf("]") > 0 ? a.indexOf("]") : undefined);
  const zone = a.indexOf("%");
  if (zone >= 0) a = a.slice(0, zone);
  if (!a.includes(":")) return a;
  const groups = expandIPv6(a);
  if (!groups) return a.toLowerCase();
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) return `${groups[6]! >> 8}.${groups[6]! & 255}.${groups[7]! >> 8}.${groups[7]! & 255}`;
  return `${groups.slice(0, 4).map((g) => g.toString(16)).join(":")}::/64`;
}

/**
 * Is this source the relay's own host (127.0.0.0/8, ::1)? It is not rate-limited nor held off
 * for failures (still capped): it is the operator's tools and probes, or a local proxy that
 * hides every device behind one address. Pure.
 */
export function isLoopback(key: string): boolean {
  return key.startsWith("127.") || key === "::1" || key === "0:0:0:0::/64";
}

/** The eight 16-bit groups of an IPv6 address, or null if it is not one. Pure. */
export function expandIPv6(text: string): number[] | null {
  let s = text.toLowerCase();
  // A trailing dotted quad (::ffff:1.2.3.4, 64:ff9b::1.2.3.4) is two groups.
  const quad = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (quad) {
    const b = quad.slice(1).map(Number);
    if (b.some((x) => x > 255)) return null;
    s = s.slice(0, quad.index) + `${((b[0]! << 8) | b[1]!).toString(16)}:${((b[2]! << 8) | b[3]!).toString(16)}`;
  }
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const part = (p: string) => (p === "" ? [] : p.split(":"));
  const head = part(halves[0]!);
  const tail = halves.length === 2 ? part(halves[1]!) : [];
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const all = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill("0"), ...tail];
  const out: number[] = [];
  for (const g of all) {
    if (!/^[0-9a-f]{1,4}$/.test(g)) return null;
    out.push(parseInt(g, 16));
  }
  return out;
}

/**
 * The chance that a new connection is dropped at random with `open` of `cap` slots taken:
 * 0 below `from`·cap, rising linearly to 1 at the cap. Pure.
 */
export function earlyDropChance(open: number, cap: number, from: number): number {
  const start = Math.floor(cap * from);
  if (open < start) return 0;
  if (open >= cap || cap <= start) return 1;
  return (open - start + 1) / (cap - start + 1);
}

/** The hold-off after the `failures`th failed handshake of a source (0: none). Pure. */
export function holdOff(failures: number, p: Pick<AdmissionPolicy, "failuresFree" | "holdBase" | "holdCap">): number {
  if (failures <= p.failuresFree) return 0;
  return Math.min(p.holdCap, p.holdBase * 2 ** Math.min(30, failures - p.failuresFree - 1));
}

interface SourceState {
  open: number;
  bucket: TokenBucket;
  failures: number;
  lastFailure: number;
  heldUntil: number;
  /** Until then a device authenticated from here recently: no early drop (the hard caps hold). */
  goodUntil: number;
}

const secs = (ms: number) => `${Math.ceil(ms / 1000)} s`;

/** The admission table of one listener. */
export class AdmissionTable {
  readonly policy: AdmissionPolicy;
  private readonly sources = new Map<string, SourceState>();
  private readonly pacer: TokenBucket;
  /** Unauthenticated connections now (TLS not done, or TLS done and HELLO not yet). */
  total = 0;
  /** Turned away at open, by why (since start). */
  readonly dropped: Record<Exclude<AdmitVerdict, { ok: true }>["why"], number> = { held: 0, capacity: 0, source: 0, rate: 0, early: 0, paced: 0 };

  constructor(policy: Partial<AdmissionPolicy> = {}, private readonly random: () => number = Math.random) {
    this.policy = { ...DEFAULT_ADMISSION, ...policy };
    this.pacer = new TokenBucket(this.policy.acceptRate, this.policy.acceptBurst);
  }

  private state(key: string, now: number): SourceState {
    let s = this.sources.get(key);
    if (s) return s;
    if (this.sources.size >= this.policy.maxSources) this.forgetOne(now);
    s = { open: 0, bucket: new TokenBucket(this.policy.sourceRate, this.policy.sourceBurst), failures: 0, lastFailure: -Infinity, heldUntil: -Infinity, goodUntil: -Infinity };
    this.sources.set(key, s);
    return s;
  }

  /** Makes room: the oldest source holding no slot goes (its hold-off with it). */
  private forgetOne(now: number): void {
    this.sweep(now);
    if (this.sources.size < this.policy.maxSources) return;
    for (const [k, s] of this.sources) {
      if (s.open === 0) {
        this.sources.delete(k);
        return;
      }
    }
  }

  /** A new TCP connection from `address`: may it start a handshake? Counts it if so. */
  admit(address: string, now: number): AdmitVerdict {
    const key = sourceKey(address);
    const p = this.policy;
    const s = this.state(key, now);
    const local = isLoopback(key);
    const refuse = (why: Exclude<AdmitVerdict, { ok: true }>["why"], reason: string): AdmitVerdict => {
      this.dropped[why]++;
      return { ok: false, why, reason: `too many unauthenticated connections: ${reason}` };
    };
    if (!local && now < s.heldUntil) return refuse("held", `${key} is held off for ${secs(s.heldUntil - now)} after ${s.failures} failed handshakes`);
    if (this.total >= p.total) return refuse("capacity", `${this.total} in all (the cap)`);
    if (s.open >= p.perSource) return refuse("source", `${s.open} from ${key} (the cap per source)`);
    if (!local && !s.bucket.take(now)) return refuse("rate", `more than ${p.sourceRate} a second from ${key}`);
    const chance = earlyDropChance(this.total, p.total, p.earlyDropFrom);
    if (chance > 0 && !(now < s.goodUntil) && this.random() < chance) return refuse("early", `${this.total} of ${p.total} slots taken (dropped early at random)`);
    if (!this.pacer.take(now)) return refuse("paced", `more than ${p.acceptRate} new connections a second to this relay`);
    s.open++;
    this.total++;
    return { ok: true };
  }

  /**
   * A connection that passed TLS and now waits for its HELLO: it stays counted (a valid
   * certificate must not hold endless connections outside the caps), under the hard caps only
   * (it paid for its handshake already). False: over a cap, close it.
   */
  hold(address: string, now: number): boolean {
    const s = this.state(sourceKey(address), now);
    if (this.total >= this.policy.total || s.open >= this.policy.perSource) {
      this.dropped.capacity++;
      return false;
    }
    s.open++;
    this.total++;
    return true;
  }

  /** A counted connection authenticated, failed or closed. */
  release(address: string): void {
    const s = this.sources.get(sourceKey(address));
    if (s && s.open > 0) s.open--;
    this.total = Math.max(0, this.total - 1);
  }

  /**
   * A failed handshake (no or bad certificate, TLS garbage): the source pays, unless a device
   * authenticated from it within `goodMemory` (a NAT that a device shares with a broken or
   * hostile client: holding the address off would lock the device out; the caps and the
   * per-source rate still bound what the address costs).
   */
  failed(address: string, now: number): void {
    const key = sourceKey(address);
    if (isLoopback(key)) return;
    const s = this.state(key, now);
    if (now - s.lastFailure >= this.policy.failureMemory) s.failures = 0;
    s.failures++;
    s.lastFailure = now;
    if (now < s.goodUntil) return;
    const hold = holdOff(s.failures, this.policy);
    if (hold > 0) s.heldUntil = Math.max(s.heldUntil, now + hold);
  }

  /**
   * A device from this source authenticated: half its failures are forgiven (a NAT shared with
   * a broken one), and for `goodMemory` the source is spared the early drop (a device that
   * lost its connection redials from where it was: a storm of strangers does not roll dice
   * against it, only the hard caps and the pacer hold).
   */
  succeeded(address: string, now: number): void {
    const s = this.state(sourceKey(address), now);
    s.failures = Math.floor(s.failures / 2);
    s.goodUntil = now + this.policy.goodMemory;
  }

  /** The TLS handshake deadline for a connection opened now. */
  deadline(normal: number = Timing.handshakeDeadline): number {
    return this.total >= Math.floor(this.policy.total * this.policy.earlyDropFrom) ? Math.min(normal, this.policy.pressureDeadline) : normal;
  }

  /** Forgets sources with nothing to remember (no slot, a full bucket, no failure to hold against them). */
  sweep(now: number): number {
    let n = 0;
    for (const [k, s] of this.sources) {
      if (s.open === 0 && now >= s.heldUntil && now >= s.goodUntil && now - s.lastFailure >= this.policy.failureMemory && s.bucket.full(now)) {
        this.sources.delete(k);
        n++;
      }
    }
    return n;
  }

  /** Sources remembered now. */
  get tracked(): number {
    return this.sources.size;
  }

  /** Sources held off now. */
  held(now: number): number {
    let n = 0;
    for (const s of this.sources.values()) if (now < s.heldUntil) n++;
    return n;
  }
}

/**
 * Connections past TLS per identity (pending HELLO and live): a valid certificate may hold at
 * most `cap` at once. Pure bookkeeping.
 */
export class IdentityCount {
  private readonly n = new Map<string, number>();
  constructor(readonly cap: number) {}
  add(id: string): boolean {
    const c = this.n.get(id) ?? 0;
    if (c >= this.cap) return false;
    this.n.set(id, c + 1);
    return true;
  }
  remove(id: string): void {
    const c = this.n.get(id) ?? 0;
    if (c <= 1) this.n.delete(id);
    else this.n.set(id, c - 1);
  }
  of(id: string): number {
    return this.n.get(id) ?? 0;
  }
}

/** Connections past TLS waiting for their HELLO, at most (each holds a certificate's worth of memory). */
export const MAX_PENDING_HELLO = 256;
/** Connections one certificate identity may hold at once (pending HELLO and live): a device
 * redialling over a half-dead old connection needs two; a stolen bundle gets no more than this. */
export const MAX_CONNECTIONS_PER_IDENTITY = 4;
