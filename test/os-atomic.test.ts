// The one atomic file write: the mode is exact whatever the umask, a concurrent reader never
// sees half a file (a writer in another process, against a plain in-place write that does
// tear), and a failure at any step leaves the old file as it was and no temporary file.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { failingFs, stageFile, writeFileAtomic, type AtomicStep } from "../src/os/atomic.ts";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "os-atomic-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
const fresh = () => join(dir, `f${++n}.json`);
const modeOf = (p: string) => statSync(p).mode & 0o777;
/** Files in the directory that are not targets: temporary files left behind. */
const leftovers = () => readdirSync(dir).filter((f) => f.endsWith(".tmp"));

describe("writeFileAtomic", () => {
  test("writes the data; a second write replaces it", () => {
    const p = fresh();
    writeFileAtomic(p, "one\n");
    expect(readFileSync(p, "utf8")).toBe("one\n");
    writeFileAtomic(p, Buffer.from("two\n"));
    expect(readFileSync(p, "utf8")).toBe("two\n");
    expect(leftovers()).toEqual([]);
  });

  test.each([
    ["600", "022"],
    ["644", "022"],
    ["644", "077"],
    ["640", "027"],
    ["600", "000"],
  ])("mode 0%s is applied exactly under umask 0%s", (m, u) => {
    const mode = parseInt(m, 8);
    const umask = parseInt(u, 8);
    const old = process.umask(umask);
    try {
      const p = fresh();
      writeFileAtomic(p, "x", { mode });
      expect(modeOf(p)).toBe(mode);
      // replacing a file with another mode gives the new file the mode asked for
      writeFileAtomic(p, "y", { mode: 0o600 });
      expect(modeOf(p)).toBe(0o600);
    } finally {
      process.umask(old);
    }
  });

  test("the default mode is private (0600)", () => {
    const p = fresh();
    writeFileAtomic(p, "secret");
    expect(modeOf(p)).toBe(0o600);
  });

  test("noClobber creates a missing file and refuses an existing one (EEXIST), leaving it", () => {
    const p = fresh();
    writeFileAtomic(p, "first", { noClobber: true });
    expect(() => writeFileAtomic(p, "second", { noClobber: true })).toThrow(expect.objectContaining({ code: "EEXIST" }));
    expect(readFileSync(p, "utf8")).toBe("first");
    expect(leftovers()).toEqual([]);
  });

  test("noClobber without hard links (vfat: link() is EPERM) checks, then renames", () => {
    const p = fresh();
    const fs1 = failingFs("linkSync", { code: "EPERM" });
    writeFileAtomic(p, "made", { noClobber: true, fs: fs1 });
    expect(readFileSync(p, "utf8")).toBe("made");
    expect(fs1.calls.some((c) => c.startsWith("renameSync"))).toBe(true);
    const fs2 = failingFs("linkSync", { code: "EPERM" });
    expect(() => writeFileAtomic(p, "again", { noClobber: true, fs: fs2 })).toThrow(expect.objectContaining({ code: "EEXIST" }));
    expect(readFileSync(p, "utf8")).toBe("made");
    expect(leftovers()).toEqual([]);
  });

  test("the data is fsynced before the rename, and the directory after it", () => {
    const p = fresh();
    const f = failingFs("existsSync", { nth: 0 }); // fails nothing: records the calls
    writeFileAtomic(p, "ordered", { fs: f });
    const steps = f.calls.map((c) => c.split(" ")[0]);
    expect(steps).toEqual(["openSync", "fchmodSync", "writeSync", "fsyncSync", "closeSync", "renameSync", "openSync", "fsyncSync", "closeSync"]);
    expect(f.calls[6]).toBe(`openSync ${dir}`);
  });

  const steps: [AtomicStep, number][] = [
    ["openSync", 1],
    ["fchmodSync", 1],
    ["writeSync", 1],
    ["fsyncSync", 1],
    ["closeSync", 1],
    ["renameSync", 1],
  ];
  test.each(steps)("a failure of %s (call %d) throws and leaves the old file intact, with no temp file", (step, nth) => {
    const p = fresh();
    writeFileAtomic(p, "old contents", { mode: 0o644 });
    expect(() => writeFileAtomic(p, "new contents that never land", { fs: failingFs(step, { nth }) })).toThrow(/injected failure/);
    expect(readFileSync(p, "utf8")).toBe("old contents");
    expect(modeOf(p)).toBe(0o644);
    expect(leftovers()).toEqual([]);
  });

  test("a failed write of a file that did not exist leaves nothing at all", () => {
    const p = fresh();
    expect(() => writeFileAtomic(p, "data", { fs: failingFs("fsyncSync") })).toThrow(/injected failure/);
    expect(readdirSync(dir).filter((f) => f.includes(p.split("/").pop()!))).toEqual([]);
  });

  test("a directory that cannot be fsynced does not fail the write (the rename happened)", () => {
    const p = fresh();
    writeFileAtomic(p, "durable enough", { fs: failingFs("fsyncSync", { nth: 2, code: "EINVAL" }) });
    expect(readFileSync(p, "utf8")).toBe("durable enough");
  });
});

describe("stageFile", () => {
  test("the staged file is invisible at the target until published", () => {
    const p = fresh();
    writeFileAtomic(p, "before");
    const s = stageFile(p, "after", { mode: 0o600 });
    expect(readFileSync(p, "utf8")).toBe("before");
    expect(readFileSync(s.tmp, "utf8")).toBe("after");
    s.publish();
    expect(readFileSync(p, "utf8")).toBe("after");
    expect(() => s.publish()).toThrow(/already published/);
  });

  test("discard drops it and leaves the target untouched", () => {
    const p = fresh();
    writeFileAtomic(p, "kept");
    const s = stageFile(p, "dropped");
    s.discard();
    s.discard();
    expect(readFileSync(p, "utf8")).toBe("kept");
    expect(leftovers()).toEqual([]);
  });
});

describe("a reader in another process", () => {
  const SIZE = 256 << 10;
  const A = Buffer.alloc(SIZE, "a");
  const B = Buffer.alloc(SIZE, "b");
  /** Runs a writer process that rewrites `p` alternately with SIZE bytes of "a" and of "b". */
  function writer(p: string, how: "atomic" | "in-place") {
    const mod = join(import.meta.dir, "../src/os/atomic.ts");
    const code = `
      import { writeFileAtomic } from ${JSON.stringify(mod)};
      import { writeFileSync } from "node:fs";
      const a = Buffer.alloc(${SIZE}, "a"), b = Buffer.alloc(${SIZE}, "b");
      for (let i = 0; ; i++) {
        const d = i % 2 ? b : a;
        ${how === "atomic" ? `writeFileAtomic(${JSON.stringify(p)}, d)` : `writeFileSync(${JSON.stringify(p)}, d)`};
      }`;
    return Bun.spawn([process.execPath, "-e", code], { stdout: "ignore", stderr: "inherit" });
  }

  /**
   * Reads `p` until the content has changed `switches` times (each write is seen), a torn read
   * is seen with `stopAtFirstTorn`, or 10 s pass.
   */
  async function watch(p: string, switches: number, stopAtFirstTorn: boolean): Promise<{ torn: number; switched: number }> {
    let torn = 0;
    let switched = 0;
    let last: Buffer | undefined;
    const until = performance.now() + 10_000;
    for (let i = 0; switched < switches && performance.now() < until; i++) {
      let d: Buffer;
      try {
        d = readFileSync(p);
      } catch {
        await Bun.sleep(1);
        continue;
      }
      const which = d.equals(A) ? A : d.equals(B) ? B : undefined;
      if (!which) {
        torn++;
        if (stopAtFirstTorn) break;
      } else if (which !== last) {
        if (last) switched++;
        last = which;
      }
      if (i % 20 === 0) await Bun.sleep(0);
    }
    return { torn, switched };
  }

  /** Starts the writer on a file holding A, watches it, then kills the writer (mid-write, likely). */
  async function race(how: "atomic" | "in-place", switches: number, stopAtFirstTorn: boolean) {
    const p = fresh();
    writeFileSync(p, A);
    const w = writer(p, how);
    try {
      return { p, ...(await watch(p, switches, stopAtFirstTorn)) };
    } finally {
      w.kill("SIGKILL");
      await w.exited;
    }
  }

  test("sees only whole files from writeFileAtomic", async () => {
    const r = await race("atomic", 100, false);
    expect(r.torn).toBe(0);
    expect(r.switched).toBe(100); // the writer really rewrote it under the reader, 100 times
    // the writer was killed, probably mid-write: the target is still one whole file
    const d = readFileSync(r.p);
    expect(d.equals(A) || d.equals(B)).toBe(true);
  }, 30_000);

  test("control: the same reader does see torn files from an in-place write", async () => {
    const r = await race("in-place", 1_000_000, true);
    expect(r.torn).toBeGreaterThan(0);
  }, 30_000);
});

describe("users", () => {
  test("the NAT rule store: a save that fails keeps the rules saved before", async () => {
    const { FileRuleStore } = await import("../src/nat/store.ts");
    const rule = { id: "0123abcd", proto: "tcp", src: "203.0.113.7/32", port: 8080, toAddr: "192.168.1.50", toPort: 80, ttlMs: 60_000, owner: "t", createdAt: 1, expiresAt: 60_001 } as const;
    const sub = mkdtempSync(join(dir, "nat-"));
    new FileRuleStore(sub).save([rule]);
    const broken = new FileRuleStore(sub, failingFs("writeSync", { code: "ENOSPC" }));
    expect(() => broken.save([])).toThrow(/injected failure/);
    expect(new FileRuleStore(sub).load()).toEqual([rule]);
    expect(readdirSync(sub)).toEqual(["nat-rules.json"]);
    expect(modeOf(join(sub, "nat-rules.json"))).toBe(0o600);
  });
});
