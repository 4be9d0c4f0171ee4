// The idle footprint of a daemon: most of its VmRSS is not its heap but the pages of the Bun
// executable it touched while starting (RssFile 43-49 MiB of 58-61 on an idle onsite, relay
// or master; RssAnon 11-16). Those are clean, file-backed machine code: once the daemon is
// up, `trimTextPages` drops this process's mappings of them (madvise MADV_DONTNEED on the
// executable's r-xp mappings, nothing else: a writable or relocated mapping is never touched,
// which would lose data), and the kernel faults back in only the code the daemon goes on to
// run. The pages stay in the page cache for the next fault. docs/performance.md has the figures.
import { readFileSync } from "node:fs";
import { errno, libc } from "./libc.ts";

export const MADV_DONTNEED = 4;

export interface Mapping {
  start: bigint;
  end: bigint;
}

/**
 * The executable's machine code in /proc/self/maps text: mappings of exactly `exe`, read and
 * execute only, private (`r-xp`). Pure.
 */
export function textMappings(maps: string, exe: string): Mapping[] {
  const out: Mapping[] = [];
  for (const line of maps.split("\n")) {
    // start-end perms offset dev inode [path]; the path is the rest of the line (may hold spaces)
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+ +(.*)$/.exec(line);
    if (!m || m[3] !== "r-xp" || m[4] !== exe) continue;
    const start = BigInt(`0x${m[1]}`);
    const end = BigInt(`0x${m[2]}`);
    if (end > start) out.push({ start, end });
  }
  return out;
}

export interface TrimOps {
  maps(): string;
  /** 0 or -1, as libc's madvise; `errno` after -1. */
  madvise(addr: bigint, length: bigint, advice: number): number;
  errno(): number;
}

export const realTrimOps: TrimOps = {
  maps: () => readFileSync("/proc/self/maps", "utf8"),
  madvise: (addr, length, advice) => libc().madvise(addr, length, advice) as number,
  errno,
};

/** Drops the executable's text pages from this process; says what it did. Never throws. */
export function trimTextPages(exe: string = process.execPath, ops: TrimOps = realTrimOps): { mappings: number; bytes: number; error?: string } {
  let maps: Mapping[];
  try {
    maps = textMappings(ops.maps(), exe);
  } catch (e) {
    return { mappings: 0, bytes: 0, error: `cannot read /proc/self/maps: ${(e as Error).message}` };
  }
  let bytes = 0;
  let done = 0;
  for (const m of maps) {
    try {
      if (ops.madvise(m.start, m.end - m.start, MADV_DONTNEED) !== 0) return { mappings: done, bytes, error: `madvise failed with errno ${ops.errno()}` };
    } catch (e) {
      return { mappings: done, bytes, error: `madvise unavailable: ${(e as Error).message}` };
    }
    done++;
    bytes += Number(m.end - m.start);
  }
  return maps.length ? { mappings: done, bytes } : { mappings: 0, bytes: 0, error: `no r-xp mapping of ${exe} in /proc/self/maps` };
}
