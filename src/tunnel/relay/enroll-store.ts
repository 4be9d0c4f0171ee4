// Where the relay keeps enrollment between restarts (issue 14 §8): its tokens (hash, uses,
// use count, expiry, approval mode) and one record per enrolled or waiting device (pending,
// signed, denied; revoked). bun:sqlite in the relay's state dir, STATE_DIR/enroll.db (WAL);
// ":memory:" for tests. Times are wall-clock ms.
import { Database } from "bun:sqlite";
import type { Approval, EnrollmentRecord, EnrollmentState, TokenRecord } from "./enroll-policy.ts";

export const ENROLL_DB = "enroll.db";

interface TokenRow {
  id: string;
  hash: string;
  uses: number | null;
  used: number;
  expires: number | null;
  approval: string;
  created: number;
  note: string;
}

interface EnrollmentRow {
  id: string;
  state: string;
  token_id: string;
  address: string;
  hostname: string;
  csr: string;
  cert: string | null;
  serial: string | null;
  not_after: number | null;
  created: number;
  updated: number;
  revoked: number | null;
}

const tokenOf = (r: TokenRow): TokenRecord => ({ ...r, approval: r.approval as Approval });
const enrollmentOf = (r: EnrollmentRow): EnrollmentRecord => ({
  id: r.id,
  state: r.state as EnrollmentState,
  tokenId: r.token_id,
  address: r.address,
  hostname: r.hostname,
  csr: r.csr,
  cert: r.cert,
  serial: r.serial,
  notAfter: r.not_after,
  created: r.created,
  updated: r.updated,
  revoked: r.revoked,
});

export class EnrollStore {
  private readonly db: Database;

  constructor(readonly file: string) {
    this.db = new Database(file, { create: true, strict: true });
    if (file !== ":memory:") {
      this.db.exec("PRAGMA journal_mode = WAL");
      this.db.exec("PRAGMA synchronous = NORMAL");
    }
    this.db.exec("PRAGMA busy_timeout = 2000");
    this.db.exec(`CREATE TABLE IF NOT EXISTS token (
      id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, uses INTEGER, used INTEGER NOT NULL, expires INTEGER,
      approval TEXT NOT NULL, created INTEGER NOT NULL, note TEXT NOT NULL)`);
    this.db.exec(`CREATE TABLE IF NOT EXISTS enrollment (
      id TEXT PRIMARY KEY, state TEXT NOT NULL, token_id TEXT NOT NULL, address TEXT NOT NULL, hostname TEXT NOT NULL,
      csr TEXT NOT NULL, cert TEXT, serial TEXT, not_after INTEGER, created INTEGER NOT NULL, updated INTEGER NOT NULL, revoked INTEGER)`);
  }

  addToken(t: TokenRecord): void {
    this.db.query("INSERT INTO token (id, hash, uses, used, expires, approval, created, note) VALUES ($id, $hash, $uses, $used, $expires, $approval, $created, $note)").run({ ...t });
  }

  tokenByHash(hash: string): TokenRecord | undefined {
    const r = this.db.query<TokenRow, { hash: string }>("SELECT * FROM token WHERE hash = $hash").get({ hash });
    return r ? tokenOf(r) : undefined;
  }

  tokens(): TokenRecord[] {
    return this.db.query<TokenRow, []>("SELECT * FROM token ORDER BY created").all().map(tokenOf);
  }

  deleteToken(id: string): boolean {
    return this.db.query("DELETE FROM token WHERE id = $id").run({ id }).changes > 0;
  }

  /** Counts one use; false when the token is gone or used up meanwhile (checked in the same statement). */
  useToken(id: string): boolean {
    return this.db.query("UPDATE token SET used = used + 1 WHERE id = $id AND (uses IS NULL OR used < uses)").run({ id }).changes > 0;
  }

  enrollment(id: string): EnrollmentRecord | undefined {
    const r = this.db.query<EnrollmentRow, { id: string }>("SELECT * FROM enrollment WHERE id = $id").get({ id });
    return r ? enrollmentOf(r) : undefined;
  }

  enrollments(state?: EnrollmentState): EnrollmentRecord[] {
    const rows = state
      ? this.db.query<EnrollmentRow, { state: string }>("SELECT * FROM enrollment WHERE state = $state ORDER BY created").all({ state })
      : this.db.query<EnrollmentRow, []>("SELECT * FROM enrollment ORDER BY created").all();
    return rows.map(enrollmentOf);
  }

  putEnrollment(e: EnrollmentRecord): void {
    this.db
      .query(
        `INSERT INTO enrollment (id, state, token_id, address, hostname, csr, cert, serial, not_after, created, updated, revoked)
         VALUES ($id, $state, $token_id, $address, $hostname, $csr, $cert, $serial, $not_after, $created, $updated, $revoked)
         ON CONFLICT(id) DO UPDATE SET state = excluded.state, token_id = excluded.token_id, address = excluded.address, hostname = excluded.hostname,
           csr = excluded.csr, cert = excluded.cert, serial = excluded.serial, not_after = excluded.not_after, updated = excluded.updated, revoked = excluded.revoked`,
      )
      .run({
        id: e.id,
        state: e.state,
        token_id: e.tokenId,
        address: e.address,
        hostname: e.hostname,
        csr: e.csr,
        cert: e.cert,
        serial: e.serial,
        not_after: e.notAfter,
        created: e.created,
        updated: e.updated,
        revoked: e.revoked,
      });
  }

  /** Serials of revoked enrolled certificates, for the relay's trust policy. */
  revokedSerials(): { serial: string; id: string; revoked: number }[] {
    return this.db
      .query<{ serial: string; id: string; revoked: number }, []>("SELECT serial, id, revoked FROM enrollment WHERE revoked IS NOT NULL AND serial IS NOT NULL")
      .all()
      .map((r) => ({ ...r }));
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  close(): void {
    this.db.close();
  }
}
