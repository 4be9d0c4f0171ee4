// The refusal log: every connection, HELLO or request the relay turned away, with a reason code
// from a fixed set (so a metric labelled by it has a bounded number of series) and the free-text
// reason beside it (what an operator reads). Behind an interface: an in-memory ring for the
// control socket, a JSON-lines file for the audit trail, and whatever comes next (metrics).
import { appendFileSync, readFileSync, renameSync, statSync } from "node:fs";
import { systemClock, type Clock } from "../../clock.ts";
import { MAX_REASON } from "../../transport/frame.ts";

/** Why, in one word. Only add: dashboards and alerts key on these. */
export const RefusalCode = {
  /** The TLS handshake failed, or a TLS version other than 1.3. */
  TLS: "tls",
  /** No client certificate at all. */
  NO_CERTIFICATE: "no_certificate",
  /** A certificate the fleet does not accept: other CA, expired, not yet valid, no identity, wrong role. */
  CERTIFICATE: "certificate",
  /** A revoked certificate, at the handshake or while connected. */
  REVOKED: "revoked",
  /** Too many unauthenticated connections (in total or from one source). */
  CAPACITY: "capacity",
  /** A deadline passed: no TLS handshake, no HELLO in time. */
  DEADLINE: "deadline",
  /** The HELLO's role or id is not the certificate's. */
  IDENTITY: "identity",
  /** No protocol version in common. */
  VERSION: "version",
  /** Frames or messages out of order or malformed. */
  PROTOCOL: "protocol",
  /** The relay's access policy does not let this master reach that device. */
  POLICY: "policy",
  /** proxy_protocol = true: no PROXY v2 header, or a malformed one. */
  PROXY_PROTOCOL: "proxy_protocol",
  /** Enrollment (issue 14 §8): a wrong, expired or used-up token, a bad certificate request, a revoked or denied device. */
  ENROLL: "enroll",
  /** Cluster mode: a peer on the relay-to-relay mesh port that is not a relay of this fleet, or broke its handshake. */
  MESH: "mesh",
} as const;
export type RefusalCodeId = (typeof RefusalCode)[keyof typeof RefusalCode];
export const REFUSAL_CODES: readonly RefusalCodeId[] = Object.values(RefusalCode);

export interface Refusal {
  /** Wall-clock ISO time (for people). */
  time: string;
  address: string;
  /** "CN (OU)" of the certificate presented, or null if none. */
  presented: string | null;
  code: RefusalCodeId;
  /** Free text, at most MAX_REASON characters: what was wrong and, where the peer sent it, a quote. */
  reason: string;
}

export interface RefusalLog {
  record(r: Refusal): void;
}

/**
 * The code of a refusal the TLS listener reports as text (src/transport/auth.ts, tls.ts). Pure.
 * A reason no pattern knows is PROTOCOL's cousin at this level: TLS.
 */
export function tlsRefusalCode(reason: string): RefusalCodeId {
  if (/^too many unauthenticated connections/.test(reason)) return RefusalCode.CAPACITY;
  if (/^PROXY protocol: /.test(reason)) return RefusalCode.PROXY_PROTOCOL;
  if (/^no TLS handshake within/.test(reason)) return RefusalCode.DEADLINE;
  if (/^no client certificate$/.test(reason)) return RefusalCode.NO_CERTIFICATE;
  if (/^certificate \S+ is revoked/.test(reason)) return RefusalCode.REVOKED;
  if (/^TLS handshake failed|is not accepted \(TLS 1\.3 only\)/.test(reason)) return RefusalCode.TLS;
  if (/certificate/.test(reason)) return RefusalCode.CERTIFICATE;
  return RefusalCode.TLS;
}

/** The last `capacity` refusals, oldest first: for `agent refusals` and status counts. */
export class MemoryRefusalLog implements RefusalLog {
  private readonly ring: Refusal[] = [];
  private start = 0;
  /** Every refusal recorded since start (the ring forgets, this does not). */
  total = 0;

  constructor(readonly capacity = 1000) {}

  record(r: Refusal): void {
    this.total++;
    if (this.ring.length < this.capacity) this.ring.push(r);
    else {
      this.ring[this.start] = r;
      this.start = (this.start + 1) % this.capacity;
    }
  }

  /** The newest `n` (default: all kept), oldest first. */
  recent(n = this.capacity): Refusal[] {
    const all = [...this.ring.slice(this.start), ...this.ring.slice(0, this.start)];
    return n >= all.length ? all : all.slice(all.length - n);
  }

  get size(): number {
    return this.ring.length;
  }
}

/**
 * Appends each refusal to a file as one JSON line; past `maxBytes` the file becomes `FILE.1`
 * (one old generation kept). A write that fails is dropped (the audit trail must never take
 * the relay down) and reported to `onError` at most once per `errorEveryMs` (default a
 * minute): a full disk under a flood of refusals is said once a minute, with the count of the
 * failures held back, not once per refusal.
 */
export class FileRefusalLog implements RefusalLog {
  private lastReport: number | undefined;
  private held = 0;

  constructor(
    readonly file: string,
    private readonly o: { maxBytes?: number; onError?: (e: Error) => void; errorEveryMs?: number; clock?: Pick<Clock, "now"> } = {},
  ) {}

  private failed(e: Error): void {
    const now = (this.o.clock ?? systemClock).now();
    if (this.lastReport !== undefined && now - this.lastReport < (this.o.errorEveryMs ?? 60_000)) {
      this.held++;
      return;
    }
    const more = this.held ? ` (${this.held} more failed write(s) since the last report)` : "";
    this.lastReport = now;
    this.held = 0;
    this.o.onError?.(more ? new Error(e.message + more, { cause: e }) : e);
  }

  record(r: Refusal): void {
    try {
      try {
        if (statSync(this.file).size > (this.o.maxBytes ?? 10 * 1024 * 1024)) renameSync(this.file, this.file + ".1");
      } catch {
        /* no file yet */
      }
      appendFileSync(this.file, JSON.stringify(r) + "\n", { mode: 0o600 });
    } catch (e) {
      this.failed(e as Error);
    }
  }
}

/** Several logs as one (the ring and the file). */
export class RefusalLogs implements RefusalLog {
  constructor(private readonly logs: RefusalLog[]) {}
  record(r: Refusal): void {
    for (const l of this.logs) l.record(r);
  }
}

/** A refusal record: the reason cut to MAX_REASON characters (it may quote the peer). */
export function refusal(time: string, address: string, presented: string | null, code: RefusalCodeId, reason: string): Refusal {
  return { time, address, presented, code, reason: reason.slice(0, MAX_REASON) };
}

// ---- the listing: `agent refusals` ---------------------------------------------------------

/** Refused peers grouped by presented id and address, with counts, newest group first. */
export interface RefusalGroup {
  presented: string | null;
  address: string;
  count: number;
  /** Count per reason code. */
  codes: Partial<Record<RefusalCodeId, number>>;
  first: string;
  last: string;
  /** The newest reason given. */
  reason: string;
}

/** The source address without its port (one peer dials from many ports). Pure. */
export function hostOf(address: string): string {
  const m = /^\[?([^\]]+?)\]?:\d+$/.exec(address);
  return m && (address.startsWith("[") || address.split(":").length === 2) ? m[1]! : address;
}

/** Groups refusals at or after `since` (wall ms) by presented id and address. Pure. */
export function groupRefusals(list: readonly Refusal[], since = -Infinity): RefusalGroup[] {
  const groups = new Map<string, RefusalGroup>();
  for (const r of list) {
    const t = Date.parse(r.time);
    if (!(t >= since)) continue;
    const address = hostOf(r.address);
    const key = `${r.presented ?? ""}\0${address}`;
    let g = groups.get(key);
    if (!g) {
      g = { presented: r.presented, address, count: 0, codes: {}, first: r.time, last: r.time, reason: r.reason };
      groups.set(key, g);
    }
    g.count++;
    g.codes[r.code] = (g.codes[r.code] ?? 0) + 1;
    if (r.time < g.first) g.first = r.time;
    if (r.time >= g.last) {
      g.last = r.time;
      g.reason = r.reason;
    }
  }
  return [...groups.values()].sort((a, b) => (a.last < b.last ? 1 : a.last > b.last ? -1 : 0));
}

/** The refusals in the JSON-lines file and its previous generation, oldest first; lines that do not parse are skipped. */
export function readRefusalFile(file: string): Refusal[] | null {
  const out: Refusal[] = [];
  let found = false;
  for (const f of [file + ".1", file]) {
    let text: string;
    try {
      text = readFileSync(f, "utf8");
      found = true;
    } catch {
      continue;
    }
    for (const line of text.split("\n")) {
      if (!line) continue;
      try {
        const r = JSON.parse(line) as Refusal;
        if (typeof r.time === "string" && typeof r.address === "string" && typeof r.reason === "string") out.push(r);
      } catch {
        /* a torn last line after a crash */
      }
    }
  }
  return found ? out : null;
}
