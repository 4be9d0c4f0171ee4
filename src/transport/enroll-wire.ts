// The enrollment exchange (docs/protocol.md §9): a device without a certificate asks the relay's
// enrollment endpoint to sign its request. A listener of its own, apart from the mutual-TLS
// device listener, so that listener keeps refusing every certificate-less peer before it
// reads a byte; this one is TLS 1.3 with the relay's certificate only (the device checks it
// against the fleet CA from its image) and answers exactly one request per connection.
//
// Framing, both ways: a 4-byte big-endian length N (1..MAX_ENROLL_MESSAGE), then N bytes of
// UTF-8 JSON. The device sends one request, the relay one answer, then the relay closes.
//   request  {"v":1,"token":"…","csr":"-----BEGIN CERTIFICATE REQUEST-----…","hostname":"…"}
//   answer   {"v":1,"status":"signed","id":"…","cert":"PEM","chain":"PEM","ca":"PEM"}
//            {"v":1,"status":"pending","id":"…","retry":30}
//            {"v":1,"status":"refused","code":"token|csr|revoked|denied|version|busy|request","reason":"…"}
import type { Socket } from "bun";
import { certificateIdentity } from "../pki.ts";
import { systemClock, type Clock } from "../clock.ts";
import { buildTime } from "../version.ts";
import { verifyRelayChain } from "./tls.ts";

export const ENROLL_VERSION = 1;
export const MAX_ENROLL_MESSAGE = 16 * 1024;
/** Refusal codes of an answer: only add. */
export const ENROLL_REFUSALS = ["token", "csr", "revoked", "denied", "version", "busy", "request"] as const;
export type EnrollRefusal = (typeof ENROLL_REFUSALS)[number];

export interface EnrollRequest {
  v: number;
  token: string;
  csr: string;
  hostname?: string;
}

export type EnrollAnswer =
  | { v: number; status: "signed"; id: string; cert: string; chain: string; ca: string }
  | { v: number; status: "pending"; id: string; retry: number }
  | { v: number; status: "refused"; code: EnrollRefusal; reason: string };

export class EnrollWireError extends Error {
  override readonly name = "EnrollWireError";
}

export function encodeEnrollMessage(msg: unknown): Uint8Array {
  const body = new TextEncoder().encode(JSON.stringify(msg));
  if (body.length === 0 || body.length > MAX_ENROLL_MESSAGE) throw new EnrollWireError(`enrollment message of ${body.length} bytes (at most ${MAX_ENROLL_MESSAGE})`);
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
}

/** Collects bytes until one whole message is there; throws on a bad length or bad JSON. */
export class EnrollReader {
  private buf = new Uint8Array(0);
  push(chunk: Uint8Array): unknown | undefined {
    const next = new Uint8Array(this.buf.length + chunk.length);
    next.set(this.buf);
    next.set(chunk, this.buf.length);
    this.buf = next;
    if (this.buf.length < 4) return undefined;
    const n = new DataView(this.buf.buffer, this.buf.byteOffset).getUint32(0);
    if (n === 0 || n > MAX_ENROLL_MESSAGE) throw new EnrollWireError(`enrollment message length ${n} is out of range (1..${MAX_ENROLL_MESSAGE})`);
    if (this.buf.length < 4 + n) return undefined;
    if (this.buf.length > 4 + n) throw new EnrollWireError("bytes after the enrollment message");
    try {
      return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(this.buf.subarray(4)));
    } catch (e) {
      throw new EnrollWireError(`enrollment message is not UTF-8 JSON: ${(e as Error).message}`);
    }
  }
}

/** A request from the wire, checked field by field. Pure; throws EnrollWireError. */
export function decodeEnrollRequest(v: unknown): EnrollRequest {
  const o = v as Record<string, unknown>;
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new EnrollWireError("enrollment request must be a JSON object");
  if (o.v !== ENROLL_VERSION) throw new EnrollWireError(`enrollment version ${JSON.stringify(o.v)} is not supported (this relay speaks ${ENROLL_VERSION})`);
  if (typeof o.token !== "string" || o.token.length === 0 || o.token.length > 256) throw new EnrollWireError("token: expected a string of 1-256 characters");
  if (typeof o.csr !== "string") throw new EnrollWireError("csr: expected a PEM certificate request");
  if (o.hostname !== undefined && (typeof o.hostname !== "string" || o.hostname.length > 253)) throw new EnrollWireError("hostname: expected a string of up to 253 characters");
  return { v: ENROLL_VERSION, token: o.token, csr: o.csr, ...(typeof o.hostname === "string" ? { hostname: o.hostname } : {}) };
}

/** An answer from the wire, checked. Pure; throws EnrollWireError. */
export function decodeEnrollAnswer(v: unknown): EnrollAnswer {
  const o = v as Record<string, unknown>;
  if (typeof v !== "object" || v === null) throw new EnrollWireError("enrollment answer must be a JSON object");
  const s = (k: string) => {
    if (typeof o[k] !== "string") throw new EnrollWireError(`enrollment answer: ${k} missing`);
    return o[k] as string;
  };
  if (o.status === "signed") return { v: ENROLL_VERSION, status: "signed", id: s("id"), cert: s("cert"), chain: s("chain"), ca: s("ca") };
  if (o.status === "pending") return { v: ENROLL_VERSION, status: "pending", id: s("id"), retry: typeof o.retry === "number" && o.retry > 0 ? o.retry : 30 };
  if (o.status === "refused") {
    const code = (ENROLL_REFUSALS as readonly string[]).includes(o.code as string) ? (o.code as EnrollRefusal) : "csr";
    return { v: ENROLL_VERSION, status: "refused", code, reason: s("reason").slice(0, 300) };
  }
  throw new EnrollWireError(`enrollment answer has an unknown status ${JSON.stringify(o.status)}`);
}

export interface EnrollDialOptions {
  host: string;
  port: number;
  /** The fleet CA (PEM) the relay's certificate must chain to. */
  caPem: string;
  request: EnrollRequest;
  timeout?: number;
  clock?: Clock;
}

/**
 * One enrollment exchange: TLS 1.3 to the endpoint, the relay's certificate checked (fleet CA,
 * role relay, the host's name; dates against a clock that may not be set yet), one request,
 * one answer. Rejects with a sentence on any failure.
 */
export function requestEnrollment(opts: EnrollDialOptions): Promise<EnrollAnswer> {
  const clock = opts.clock ?? systemClock;
  const timeout = opts.timeout ?? 15_000;
  const where = `${opts.host}:${opts.port}`;
  return new Promise<EnrollAnswer>((resolve, reject) => {
    let settled = false;
    let sock: Socket<undefined> | undefined;
    const reader = new EnrollReader();
    const done = (e: Error | null, a?: EnrollAnswer) => {
      if (settled) return;
      settled = true;
      clock.clearTimeout(timer);
      sock?.terminate();
      if (e) reject(e);
      else resolve(a!);
    };
    const timer = clock.setTimeout(() => done(new Error(`no enrollment answer from ${where} within ${timeout / 1000} s`)), timeout);
    Bun.connect<undefined>({
      hostname: opts.host,
      port: opts.port,
      tls: { ca: opts.caPem, serverName: opts.host, rejectUnauthorized: false, minVersion: 0x0304 } as Bun.TLSOptions,
      socket: {
        handshake(s, success, err) {
          const problem = judgeEnrollRelay(s, success, err, opts, clock);
          if (problem) return done(new Error(problem));
          s.write(encodeEnrollMessage(opts.request));
        },
        data(_s, chunk) {
          try {
            const msg = reader.push(chunk);
            if (msg !== undefined) done(null, decodeEnrollAnswer(msg));
          } catch (e) {
            done(e as Error);
          }
        },
        close() {
          done(new Error(`${where} closed the enrollment connection without an answer`));
        },
        error(_s, e) {
          done(new Error(`enrollment at ${where}: ${e.message}`));
        },
        connectError(_s, e) {
          done(new Error(`cannot connect to the enrollment endpoint ${where}: ${e.message}`));
        },
      },
    }).then(
      (s) => {
        sock = s;
        if (settled) s.terminate();
      },
      (e: Error) => done(new Error(`cannot connect to the enrollment endpoint ${where}: ${e.message}`)),
    );
  });
}

function judgeEnrollRelay(s: Socket<undefined>, success: boolean, err: Error | null, opts: EnrollDialOptions, clock: Clock): string | null {
  const cert = s.getPeerCertificate() as { raw?: Uint8Array } | undefined;
  if (!cert?.raw) return `the enrollment endpoint ${opts.host}:${opts.port} presented no certificate`;
  if (!success || !s.authorized) {
    // As the device's dialer does: a clock that is not set yet (no RTC) is judged against the build.
    const notYet = /NOT[ _]YET[ _]VALID/i.test(`${(err as { code?: string } | null)?.code ?? ""} ${err?.message ?? ""}`);
    if (!notYet) return `the enrollment endpoint's certificate was refused (${err?.message ?? "handshake failed"}); is [enroll] ca this fleet's CA, and ${opts.host} its relay?`;
    const again = verifyRelayChain(cert.raw, opts.caPem, opts.host, clock.wall(), buildTime());
    if (again) return again;
  }
  try {
    const ident = certificateIdentity(cert.raw);
    if (ident.role !== "relay") return `the enrollment endpoint at ${opts.host} has a ${ident.role} certificate (${ident.id}), not a relay's`;
  } catch (e) {
    return `the enrollment endpoint's certificate has no valid identity: ${(e as Error).message}`;
  }
  return null;
}
