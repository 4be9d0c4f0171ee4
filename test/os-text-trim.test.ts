import { describe, expect, test } from "bun:test";
import { MADV_DONTNEED, textMappings, trimTextPages, type TrimOps } from "../src/os/text-trim.ts";

const EXE = "/usr/local/bin/agent onsite";
const MAPS = [
  `55d0c0000000-55d0c0400000 r--p 00000000 08:01 1234 ${EXE}`,
  `55d0c0400000-55d0c4000000 r-xp 00400000 08:01 1234 ${EXE}`,
  `55d0c4000000-55d0c4100000 rw-p 04000000 08:01 1234 ${EXE}`,
  `55d0c4100000-55d0c4200000 r-xp 04100000 08:01 1234 ${EXE} (deleted)`,
  "7f0000000000-7f0000100000 r-xp 00000000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6",
  "7f0000200000-7f0000300000 rwxp 00000000 00:00 0 ",
  "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]",
].join("\n");

describe("textMappings", () => {
  test.each([
    ["the executable's r-xp mapping only (not rodata, data, a deleted file, libc, JIT pages)", MAPS, EXE, [[0x55d0c0400000n, 0x55d0c4000000n]]],
    ["no mapping of another path", MAPS, "/usr/bin/bun", []],
    ["empty maps", "", EXE, []],
  ])("%s", (_what, maps, exe, want) => {
    expect(textMappings(maps, exe).map((m) => [m.start, m.end])).toEqual(want as bigint[][]);
  });
});

function ops(over: Partial<TrimOps> = {}): TrimOps & { calls: [bigint, bigint, number][] } {
  const calls: [bigint, bigint, number][] = [];
  return { calls, maps: () => MAPS, madvise: (a, l, adv) => (calls.push([a, l, adv]), 0), errno: () => 0, ...over };
}

describe("trimTextPages", () => {
  test("advises DONTNEED on exactly the text mapping and reports its size", () => {
    const o = ops();
    expect(trimTextPages(EXE, o)).toEqual({ mappings: 1, bytes: 0x3c00000 });
    expect(o.calls).toEqual([[0x55d0c0400000n, 0x3c00000n, MADV_DONTNEED]]);
  });
  test("a failing madvise is reported with errno, not thrown", () => {
    expect(trimTextPages(EXE, ops({ madvise: () => -1, errno: () => 22 }))).toEqual({ mappings: 0, bytes: 0, error: "madvise failed with errno 22" });
  });
  test("unreadable maps and a missing mapping are reported", () => {
    expect(trimTextPages(EXE, ops({ maps: () => { throw new Error("EACCES"); } })).error).toBe("cannot read /proc/self/maps: EACCES");
    expect(trimTextPages("/nope", ops()).error).toBe("no r-xp mapping of /nope in /proc/self/maps");
  });
  test("on this process for real: the mapping of this Bun is found and trimmed, and code still runs", () => {
    const r = trimTextPages();
    expect(r.error).toBeUndefined();
    expect(r.mappings).toBeGreaterThan(0);
    expect([1, 2, 3].map((x) => x * 2)).toEqual([2, 4, 6]);
  });
});
