// The one libc binding: the name chosen on glibc and musl, errno after a failed call, and
// real calls of the symbol groups its users need (sockets, rlimit, poll, read/write).
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { AF_UNIX, E, errno, libc, libcPath, muslLoaderPath, OsError, POLLIN, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, socketPair } from "../src/os/libc.ts";
import { fdLimit } from "../src/fdlimit.ts";

describe("libcPath", () => {
  test.each([
    ["x64", true, "/lib/ld-musl-x86_64.so.1"],
    ["arm64", true, "/lib/ld-musl-aarch64.so.1"],
    ["arm", true, "/lib/ld-musl-arm.so.1"],
    ["x64", false, "libc.so.6"],
    ["arm64", false, "libc.so.6"],
  ])("%s, musl loader present: %p → %s", (arch, musl, want) => {
    const asked: string[] = [];
    const got = libcPath((p) => (asked.push(p), musl), arch);
    expect(got).toBe(want);
    expect(asked).toEqual([muslLoaderPath(arch)]);
  });
});

describe("libc", () => {
  test("is opened once", () => {
    expect(libc()).toBe(libc());
  });

  test("errno is the failed call's: close(-1) is EBADF", () => {
    expect(libc().close(-1)).toBe(-1);
    expect(errno()).toBe(E.EBADF);
  });

  test("a datagram socket pair carries a datagram with write() and read()", () => {
    const [a, b] = socketPair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
    try {
      const out = Buffer.from("hello over libc");
      expect(Number(libc().write(a, out, out.length))).toBe(out.length);
      // poll() says it is readable, with a zero timeout (never blocks)
      const pfd = Buffer.alloc(8); // struct pollfd { int fd; short events, revents; }
      pfd.writeInt32LE(b, 0);
      pfd.writeInt16LE(POLLIN, 4);
      expect(libc().poll(pfd, 1, 0)).toBe(1);
      expect(pfd.readInt16LE(6) & POLLIN).toBe(POLLIN);
      const buf = Buffer.alloc(64);
      const n = Number(libc().read(b, buf, buf.length));
      expect(buf.subarray(0, n).toString()).toBe("hello over libc");
      // now empty: a non-blocking read fails with EAGAIN
      expect(Number(libc().read(b, buf, buf.length))).toBe(-1);
      expect(errno()).toBe(E.EAGAIN);
    } finally {
      libc().close(a);
      libc().close(b);
    }
  });

  test("socketPair throws an OsError with the errno on a bad domain", () => {
    let err: unknown;
    try {
      socketPair(-1, SOCK_DGRAM);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(OsError);
    expect((err as OsError).errno).toBeGreaterThan(0);
    expect((err as OsError).message).toMatch(/^socketpair\(\) \(errno \d+\)$/);
  });

  test("fdLimit reads the same open-files limit /proc shows", () => {
    const line = readFileSync("/proc/self/limits", "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max open files"))!;
    const [soft, hard] = line.replace("Max open files", "").trim().split(/\s+/);
    const l = fdLimit();
    expect(String(l.soft)).toBe(soft!);
    expect(String(l.hard)).toBe(hard!);
  });
});
