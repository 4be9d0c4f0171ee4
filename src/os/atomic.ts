// Writing a file so that a reader, a crash or a full disk never leaves half of it: the data
// goes to a temporary file beside the target (same directory, so the same filesystem),
// created with O_EXCL and its final mode, fsynced, then renamed over the target, and the
// directory is fsynced so the rename itself survives a power cut. A reader opens the old
// file or the new one; a write that fails at any step leaves the old file as it was and no
// temporary file behind.
//
// Two steps are exposed for writers that must publish only after other work succeeded
// (`agent pki issue` stages the bundle, records the certificate, then publishes): `stageFile`
// and `StagedFile.publish`. The file-system calls come in through `AtomicFs`, so a test can
// make any one of them fail (`failingFs`).
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { basename, dirname, join } from "node:path";
import { systemClock, type Clock } from "../clock.ts";

/** The calls an atomic write makes (node:fs's synchronous ones). */
export interface AtomicFs {
  openSync(path: string, flags: string, mode?: number): number;
  writeSync(fd: number, data: Uint8Array, offset: number, length: number): number;
  fchmodSync(fd: number, mode: number): void;
  fsyncSync(fd: number): void;
  closeSync(fd: number): void;
  renameSync(from: string, to: string): void;
  linkSync(existing: string, name: string): void;
  unlinkSync(path: string): void;
  existsSync(path: string): boolean;
}

export const realFs: AtomicFs = {
  openSync: (p, f, m) => fs.openSync(p, f, m),
  writeSync: (fd, d, o, l) => fs.writeSync(fd, d, o, l),
  fchmodSync: (fd, m) => fs.fchmodSync(fd, m),
  fsyncSync: (fd) => fs.fsyncSync(fd),
  closeSync: (fd) => fs.closeSync(fd),
  renameSync: (a, b) => fs.renameSync(a, b),
  linkSync: (a, b) => fs.linkSync(a, b),
  unlinkSync: (p) => fs.unlinkSync(p),
  existsSync: (p) => fs.existsSync(p),
};

export interface AtomicWriteOptions {
  /** The file's mode, exactly (the umask does not apply). Default 0600: state is private. */
  mode?: number;
  /** Never replace an existing file: fails with code EEXIST instead. */
  noClobber?: boolean;
  fs?: AtomicFs;
}

/** link(2) is refused by filesystems without hard links (a vfat USB stick). */
const NO_LINK = ["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS"];

const code = (e: unknown) => (e as NodeJS.ErrnoException | undefined)?.code;

/** A complete, fsynced file under a temporary name beside its target, not yet visible there. */
export class StagedFile {
  private done = false;

  constructor(
    readonly tmp: string,
    readonly path: string,
    private readonly fs: AtomicFs,
  ) {}

  /**
   * Moves the file into place and makes that durable. With `noClobber` an existing target is
   * never replaced (link(2) fails if the name exists: no window in which another writer is
   * clobbered; without hard links, a check then a rename). On failure the temp file is removed.
   */
  publish(noClobber = false): void {
    if (this.done) throw new Error(`${this.path}: staged file already published or discarded`);
    this.done = true;
    try {
      if (noClobber) {
        try {
          this.fs.linkSync(this.tmp, this.path);
          this.fs.unlinkSync(this.tmp);
        } catch (e) {
          if (!NO_LINK.includes(code(e) ?? "")) throw e;
          if (this.fs.existsSync(this.path)) throw Object.assign(new Error(`${this.path} exists`), { code: "EEXIST" });
          this.fs.renameSync(this.tmp, this.path);
        }
      } else {
        this.fs.renameSync(this.tmp, this.path);
      }
    } catch (e) {
      this.remove();
      throw e;
    }
    syncDir(dirname(this.path), this.fs);
  }

  /** Drops the staged file (the target is untouched). Idempotent. */
  discard(): void {
    if (this.done) return;
    this.done = true;
    this.remove();
  }

  private remove(): void {
    quietly(() => this.fs.unlinkSync(this.tmp)); // never created, or gone already
  }
}

/** Writes `data` to a new temporary file beside `path` with its final mode, and fsyncs it. */
export function stageFile(path: string, data: string | Uint8Array, opts: AtomicWriteOptions = {}): StagedFile {
  const f = opts.fs ?? realFs;
  const mode = opts.mode ?? 0o600;
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  const bytes = typeof data === "string" ? Buffer.from(data) : data;
  // Created with its final mode (O_CREAT|O_EXCL): the data is never readable by others, not even briefly.
  const fd = f.openSync(tmp, "wx", mode);
  let open = true;
  try {
    f.fchmodSync(fd, mode); // the umask may have taken bits the caller asked for
    for (let off = 0; off < bytes.length; ) off += f.writeSync(fd, bytes, off, bytes.length - off);
    f.fsyncSync(fd);
    open = false;
    f.closeSync(fd); // NFS reports a failed write at close
  } catch (e) {
    if (open) quietly(() => f.closeSync(fd)); // the write error is the one to report
    quietly(() => f.unlinkSync(tmp));
    throw e;
  }
  return new StagedFile(tmp, path, f);
}

/** temp file, fsync, rename (or link with `noClobber`), fsync of the directory. */
export function writeFileAtomic(path: string, data: string | Uint8Array, opts: AtomicWriteOptions = {}): void {
  stageFile(path, data, opts).publish(opts.noClobber ?? false);
}

/** Makes a rename durable across a crash; best effort (not every filesystem allows it). */
export function syncDir(dir: string, f: AtomicFs = realFs): void {
  let fd: number;
  try {
    fd = f.openSync(dir, "r");
  } catch {
    return;
  }
  quietly(() => f.fsyncSync(fd)); // the rename itself succeeded; durability is all that is lost
  quietly(() => f.closeSync(fd));
}

/** Clean-up whose failure must not hide the error being reported (or has nothing to report). */
function quietly(fn: () => void): void {
  try {
    fn();
  } catch {
    // see the caller
  }
}

/**
 * Temporary files a writer killed mid-write (kill -9, a power cut) left beside `path`: they
 * are named `.BASENAME.PID.HEX.tmp`. Removes those whose writer process is gone; returns
 * their names. Best effort: a directory that cannot be read has nothing to remove.
 */
export function removeStaleTemps(path: string, alive: (pid: number) => boolean = pidAlive): string[] {
  const dir = dirname(path);
  const prefix = `.${basename(path)}.`;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const gone: string[] = [];
  for (const n of names) {
    const m = n.startsWith(prefix) ? /^(\d+)\.[0-9a-f]+\.tmp$/.exec(n.slice(prefix.length)) : null;
    if (!m || alive(Number(m[1]))) continue;
    quietly(() => {
      fs.unlinkSync(join(dir, n));
      gone.push(n);
    });
  }
  return gone;
}

function pidAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return code(e) === "EPERM"; // exists, not ours
  }
}

/**
 * Reports the failures of one kind of write (a state file, an audit log) at most once per
 * `everyMs` (default a minute), so a full disk is said clearly without flooding the log; the
 * next report counts the failures held back, and a success after failures is said once.
 * Durations on the injected clock's monotonic now().
 */
export class WriteFailures {
  private last: number | undefined;
  private held = 0;
  private failing = false;

  constructor(
    private readonly what: string,
    private readonly warn: (message: string) => void,
    private readonly o: { clock?: Pick<Clock, "now">; everyMs?: number; info?: (message: string) => void } = {},
  ) {}

  failed(e: Error): void {
    this.failing = true;
    const now = (this.o.clock ?? systemClock).now();
    if (this.last !== undefined && now - this.last < (this.o.everyMs ?? 60_000)) {
      this.held++;
      return;
    }
    const more = this.held ? ` (${this.held} more failure(s) since the last report)` : "";
    this.last = now;
    this.held = 0;
    this.warn(`cannot write ${this.what}: ${e.message}${more}`);
  }

  succeeded(): void {
    if (!this.failing) return;
    this.failing = false;
    this.held = 0;
    (this.o.info ?? this.warn)(`writing ${this.what} works again`);
  }
}

export type AtomicStep = keyof AtomicFs;

/**
 * The real file system, except that the `nth` call (1-based) of `step` throws `code` (default
 * EIO), as a full disk or a failing card would. `calls`
 * lists every call made, e.g. "openSync /d/.f.123.ab.tmp".
 */
export function failingFs(step: AtomicStep, opts: { nth?: number; code?: string; base?: AtomicFs } = {}): AtomicFs & { calls: string[] } {
  const base = opts.base ?? realFs;
  const calls: string[] = [];
  let seen = 0;
  const fail = (name: AtomicStep, what: string) => {
    calls.push(`${name} ${what}`);
    if (name !== step) return;
    if (++seen !== (opts.nth ?? 1)) return;
    throw Object.assign(new Error(`${name} ${what}: injected failure`), { code: opts.code ?? "EIO" });
  };
  return {
    calls,
    openSync: (p, fl, m) => (fail("openSync", p), base.openSync(p, fl, m)),
    writeSync: (fd, d, o, l) => (fail("writeSync", `fd ${fd}`), base.writeSync(fd, d, o, l)),
    fchmodSync: (fd, m) => (fail("fchmodSync", `fd ${fd}`), base.fchmodSync(fd, m)),
    fsyncSync: (fd) => (fail("fsyncSync", `fd ${fd}`), base.fsyncSync(fd)),
    closeSync: (fd) => (fail("closeSync", `fd ${fd}`), base.closeSync(fd)),
    renameSync: (a, b) => (fail("renameSync", `${a} ${b}`), base.renameSync(a, b)),
    linkSync: (a, b) => (fail("linkSync", `${a} ${b}`), base.linkSync(a, b)),
    unlinkSync: (p) => (calls.push(`unlinkSync ${p}`), base.unlinkSync(p)),
    existsSync: (p) => (calls.push(`existsSync ${p}`), base.existsSync(p)),
  };
}
