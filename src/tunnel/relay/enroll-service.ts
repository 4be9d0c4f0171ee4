// The relay's enrollment endpoint (issue 14 §8): the listener (TLS 1.3, the relay's certificate,
// no client certificate; one request and one answer per connection, src/transport/enroll-wire.ts)
// and the service that judges each request (./enroll-policy.ts), signs with the enroller
// (src/pki-enroll.ts), keeps tokens and devices (./enroll-store.ts) and serves
// `agent enroll …` on the control socket. Every refusal goes to the relay's refusal log with
// the code `enroll`.
import type { TCPSocketListener } from "bun";
import type { Logger } from "../../log.ts";
import { systemClock, type Clock } from "../../clock.ts";
import { NotFoundError, UsageError } from "../../errors.ts";
import { checkCsr, CsrError, signEnrollment, type Enroller } from "../../pki-enroll.ts";
import { decodeEnrollRequest, encodeEnrollMessage, EnrollReader, EnrollWireError, ENROLL_VERSION, type EnrollAnswer } from "../../transport/enroll-wire.ts";
import { listenError } from "../../transport/listen-error.ts";
import { decideEnrollment, newTokenSecret, parseUses, tokenHash, tokenIdOf, tokenProblem, type Approval, type EnrollmentRecord, type TokenRecord } from "./enroll-policy.ts";
import type { EnrollStore } from "./enroll-store.ts";

/** A waiting device asks again after this many seconds (told in the answer). */
export const PENDING_RETRY_S = 5;
/** Request and answer within this long of the TCP accept, or the connection is closed. */
export const ENROLL_DEADLINE_MS = 10_000;
/** Enrollment connections open at once; more are answered `busy`. */
export const MAX_ENROLL_CONNECTIONS = 64;

export interface EnrollServiceOptions {
  store: EnrollStore;
  enroller: Enroller;
  /** Lifetime of the certificates it signs, in days. */
  days: number;
  log: Logger;
  clock?: Clock;
  /** Writes a refusal to the relay's refusal log (code `enroll`). */
  refuse(address: string, presented: string | null, reason: string): void;
  /** An enrolled certificate was revoked: the relay's trust policy must take it in. */
  revoked?(): void;
}

export interface TokenView {
  id: string;
  uses: number | null;
  used: number;
  expires: string | null;
  approval: Approval;
  created: string;
  note: string;
  state: "usable" | "expired" | "used up";
}

export interface EnrollmentView {
  id: string;
  state: string;
  token: string;
  address: string;
  hostname: string;
  serial: string | null;
  expires: string | null;
  requested: string;
  revoked: string | null;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export class EnrollService {
  private readonly clock: Clock;

  constructor(private readonly o: EnrollServiceOptions) {
    this.clock = o.clock ?? systemClock;
  }

  /** One request from the wire (already parsed JSON) from `address`: its answer. */
  handle(raw: unknown, address: string): EnrollAnswer {
    let presented: string | null = null;
    const refused = (code: Extract<EnrollAnswer, { status: "refused" }>["code"], reason: string): EnrollAnswer => {
      this.o.refuse(address, presented, `enrollment refused: ${reason}`);
      return { v: ENROLL_VERSION, status: "refused", code, reason };
    };
    let req;
    try {
      req = decodeEnrollRequest(raw);
    } catch (e) {
      return refused(/version/.test((e as Error).message) ? "version" : "request", (e as Error).message);
    }
    let csr;
    try {
      csr = checkCsr(req.csr);
    } catch (e) {
      if (e instanceof CsrError) return refused("csr", e.message);
      throw e;
    }
    presented = `${csr.id} (enroll)`;
    const now = this.clock.wall();
    const token = this.o.store.tokenByHash(tokenHash(req.token));
    const existing = this.o.store.enrollment(csr.id);
    const d = decideEnrollment(token, existing, now);
    if (d.kind === "refuse") return refused(d.code, d.reason);
    if (d.kind === "resend") return this.signedAnswer(d.record);
    if (d.kind === "still-pending") return { v: ENROLL_VERSION, status: "pending", id: csr.id, retry: PENDING_RETRY_S };
    const t = token!;
    const record: EnrollmentRecord = {
      id: csr.id,
      state: "pending",
      tokenId: t.id,
      address,
      hostname: req.hostname ?? "",
      csr: req.csr,
      cert: null,
      serial: null,
      notAfter: null,
      created: now,
      updated: now,
      revoked: null,
    };
    const outcome = this.o.store.transaction(() => {
      if (!this.o.store.useToken(t.id)) return null;
      if (d.kind === "sign") {
        const s = signEnrollment(this.o.enroller, csr, { days: this.o.days, now: new Date(now) });
        Object.assign(record, { state: "signed", cert: s.certPem, serial: s.serial, notAfter: s.notAfter.getTime() });
      }
      this.o.store.putEnrollment(record);
      return record;
    });
    if (!outcome) return refused("token", tokenProblem(this.o.store.tokenByHash(t.hash), now)?.reason ?? `enrollment token ${t.id} is used up`);
    if (outcome.state === "signed") {
      this.o.log.info(`enrolled ${csr.id} from ${address} with token ${t.id} (serial ${outcome.serial})`, { id: csr.id, address, token: t.id, serial: outcome.serial });
      return this.signedAnswer(outcome);
    }
    this.o.log.info(`enrollment of ${csr.id} from ${address} waits for approval: \`agent enroll approve ${csr.id}\``, { id: csr.id, address, token: t.id });
    return { v: ENROLL_VERSION, status: "pending", id: csr.id, retry: PENDING_RETRY_S };
  }

  /** Bytes that are no enrollment request (bad length, not JSON). */
  malformed(message: string, address: string): EnrollAnswer {
    this.o.refuse(address, null, `enrollment refused: ${message}`);
    return { v: ENROLL_VERSION, status: "refused", code: "request", reason: message };
  }

  private signedAnswer(r: EnrollmentRecord): EnrollAnswer {
    return { v: ENROLL_VERSION, status: "signed", id: r.id, cert: r.cert!, chain: this.o.enroller.certPem, ca: this.o.enroller.caPem };
  }

  // ---- the operator's commands (control socket) -------------------------------------------

  tokenAdd(req: { uses?: unknown; expires?: unknown; approval?: unknown; note?: unknown }): { token: string } & TokenView {
    let uses: number | null;
    try {
      uses = parseUses(req.uses);
    } catch (e) {
      throw new UsageError((e as Error).message, "for example `agent enroll token add --uses 20 --expires 7d`");
    }
    const expiresIn = req.expires;
    if (expiresIn !== undefined && expiresIn !== null && (typeof expiresIn !== "number" || !(expiresIn > 0))) throw new UsageError("expires: expected a duration in ms");
    const approval = req.approval ?? "auto";
    if (approval !== "auto" && approval !== "manual") throw new UsageError(`approval: expected auto or manual, got ${JSON.stringify(approval)}`);
    const note = typeof req.note === "string" ? req.note.slice(0, 200) : "";
    const secret = newTokenSecret();
    const hash = tokenHash(secret);
    const now = this.clock.wall();
    const t: TokenRecord = { id: tokenIdOf(hash), hash, uses, used: 0, expires: typeof expiresIn === "number" ? now + expiresIn : null, approval, created: now, note };
    this.o.store.addToken(t);
    this.o.log.info(`enrollment token ${t.id} added (${uses ?? "unlimited"} use(s), ${t.expires ? `expires ${iso(t.expires)}` : "no expiry"}, ${approval} approval)`, { token: t.id });
    return { token: secret, ...this.tokenView(t) };
  }

  tokenList(): TokenView[] {
    return this.o.store.tokens().map((t) => this.tokenView(t));
  }

  tokenDel(req: { id?: unknown }): { deleted: string } {
    const id = String(req.id ?? "");
    if (!this.o.store.deleteToken(id)) throw new NotFoundError(`no enrollment token ${JSON.stringify(id)}`, "see `agent enroll token list`");
    return { deleted: id };
  }

  private tokenView(t: TokenRecord): TokenView {
    const p = tokenProblem(t, this.clock.wall());
    const state = !p ? "usable" : /expired/.test(p.reason) ? "expired" : "used up";
    return { id: t.id, uses: t.uses, used: t.used, expires: iso(t.expires), approval: t.approval, created: iso(t.created)!, note: t.note, state };
  }

  list(state?: "pending"): EnrollmentView[] {
    return this.o.store.enrollments(state).map((e) => ({
      id: e.id,
      state: e.revoked !== null ? "revoked" : e.state,
      token: e.tokenId,
      address: e.address,
      hostname: e.hostname,
      serial: e.serial,
      expires: iso(e.notAfter),
      requested: iso(e.created)!,
      revoked: iso(e.revoked),
    }));
  }

  private record(id: unknown): EnrollmentRecord {
    const r = typeof id === "string" ? this.o.store.enrollment(id) : undefined;
    if (!r) throw new NotFoundError(`no enrollment request for ${JSON.stringify(id)}`, "see `agent enroll pending` and `agent enroll list`");
    return r;
  }

  approve(req: { id?: unknown }): EnrollmentView {
    const r = this.record(req.id);
    if (r.state !== "pending") throw new UsageError(`${r.id} is not waiting for approval (it is ${r.revoked !== null ? "revoked" : r.state})`, "see `agent enroll pending`");
    const now = this.clock.wall();
    const s = signEnrollment(this.o.enroller, checkCsr(r.csr), { days: this.o.days, now: new Date(now) });
    this.o.store.putEnrollment({ ...r, state: "signed", cert: s.certPem, serial: s.serial, notAfter: s.notAfter.getTime(), updated: now });
    this.o.log.info(`enrollment of ${r.id} approved (serial ${s.serial})`, { id: r.id, serial: s.serial });
    return this.list().find((e) => e.id === r.id)!;
  }

  deny(req: { id?: unknown }): EnrollmentView {
    const r = this.record(req.id);
    if (r.state !== "pending") throw new UsageError(`${r.id} is not waiting for approval (it is ${r.revoked !== null ? "revoked" : r.state})`, r.state === "signed" ? `to shut it out now: \`agent enroll revoke ${r.id}\`` : "see `agent enroll pending`");
    this.o.store.putEnrollment({ ...r, state: "denied", updated: this.clock.wall() });
    this.o.log.info(`enrollment of ${r.id} denied`, { id: r.id });
    return this.list().find((e) => e.id === r.id)!;
  }

  revoke(req: { id?: unknown }): EnrollmentView {
    const r = this.record(req.id);
    if (r.state !== "signed") throw new UsageError(`${r.id} has no certificate to revoke (it is ${r.state})`, r.state === "pending" ? `deny it: \`agent enroll deny ${r.id}\`` : "see `agent enroll list`");
    if (r.revoked === null) {
      this.o.store.putEnrollment({ ...r, revoked: this.clock.wall(), updated: this.clock.wall() });
      this.o.log.info(`enrolled certificate ${r.serial} of ${r.id} revoked`, { id: r.id, serial: r.serial });
      this.o.revoked?.();
    }
    return this.list().find((e) => e.id === r.id)!;
  }

  /** Revoked enrolled certificates, merged into the relay's revocation list. */
  revokedSerials(): { serial: string; id: string; revoked: number }[] {
    return this.o.store.revokedSerials();
  }
}

interface ConnData {
  reader: EnrollReader;
  answered: boolean;
  timer: ReturnType<Clock["setTimeout"]> | null;
  source: string;
}

/** The enrollment listener: TLS 1.3 with the relay's certificate, no client certificate. */
export function listenEnroll(opts: { hostname: string; port: number; tls: { certPem: string; keyPem: string }; service: EnrollService; clock?: Clock; log: Logger }): TCPSocketListener<ConnData> {
  const clock = opts.clock ?? systemClock;
  let open = 0;
  const answer = (s: { end(d: Uint8Array): void }, d: ConnData, a: EnrollAnswer) => {
    d.answered = true;
    s.end(encodeEnrollMessage(a));
  };
  try {
    return Bun.listen<ConnData>({
      hostname: opts.hostname,
      port: opts.port,
      tls: { cert: opts.tls.certPem, key: opts.tls.keyPem, minVersion: 0x0304 } as Bun.TLSOptions,
      data: { reader: new EnrollReader(), answered: false, timer: null, source: "" },
      socket: {
        open(s) {
          open++;
          s.data = { reader: new EnrollReader(), answered: false, timer: null, source: s.remoteAddress };
          s.data.timer = clock.setTimeout(() => s.terminate(), ENROLL_DEADLINE_MS);
        },
        handshake(s, ok) {
          if (!ok) return void s.terminate();
          if (open > MAX_ENROLL_CONNECTIONS) answer(s, s.data, { v: ENROLL_VERSION, status: "refused", code: "busy", reason: "too many enrollments at once; try again later" });
        },
        data(s, chunk) {
          if (s.data.answered) return;
          let msg: unknown;
          try {
            msg = s.data.reader.push(chunk);
          } catch (e) {
            if (e instanceof EnrollWireError) return answer(s, s.data, opts.service.malformed(e.message, s.data.source));
            throw e;
          }
          if (msg === undefined) return;
          try {
            answer(s, s.data, opts.service.handle(msg, s.data.source));
          } catch (e) {
            opts.log.error(`enrollment from ${s.data.source}: ${(e as Error).message}`);
            answer(s, s.data, { v: ENROLL_VERSION, status: "refused", code: "busy", reason: "the relay could not sign now; try again later" });
          }
        },
        close(s) {
          open--;
          if (s.data.timer) clock.clearTimeout(s.data.timer);
        },
        error() {},
      },
    });
  } catch (e) {
    throw listenError(e, opts.hostname, opts.port);
  }
}
