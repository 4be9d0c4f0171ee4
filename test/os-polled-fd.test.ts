// The one polled-fd reader: in memory against FakeRecvOps (EAGAIN, EINTR, errors, truncation,
// source addresses, the timer on a FakeClock), then on a real AF_UNIX datagram socket pair.
import { describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { AF_UNIX, E, libc, OsError, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_NONBLOCK, socketPair } from "../src/os/libc.ts";
import { FakeRecvOps, PolledFd, type Packet } from "../src/os/polled-fd.ts";

const text = (ps: Packet[]) => ps.map((p) => p.data.toString());

describe("PolledFd over FakeRecvOps", () => {
  test("drain delivers every queued datagram in order, then stops at EAGAIN", () => {
    const ops = new FakeRecvOps();
    const r = new PolledFd(ops.fd, { bufSize: 64, ops });
    ops.push("one");
    ops.push("two");
    ops.push("");
    const got: Packet[] = [];
    expect(r.drain((p) => got.push(p))).toBe(3);
    expect(text(got)).toEqual(["one", "two", ""]);
    expect(r.readOnce()).toBeUndefined();
  });

  test("EINTR ends this drain without an error; the datagram behind it is read next time", () => {
    const ops = new FakeRecvOps();
    const r = new PolledFd(ops.fd, { bufSize: 64, ops });
    ops.push("a");
    ops.fail(E.EINTR);
    ops.push("b");
    const got: Packet[] = [];
    expect(r.drain((p) => got.push(p))).toBe(1);
    expect(r.drain((p) => got.push(p))).toBe(1);
    expect(text(got)).toEqual(["a", "b"]);
  });

  test.each([
    ["ENOBUFS", E.ENOBUFS],
    ["EBADF", E.EBADF],
    ["EINVAL", E.EINVAL],
  ])("%s is thrown as an OsError naming the socket", (_n, errnum) => {
    const ops = new FakeRecvOps();
    const r = new PolledFd(ops.fd, { bufSize: 64, ops, name: "netlink" });
    ops.fail(errnum);
    let err: unknown;
    try {
      r.readOnce();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(OsError);
    expect((err as OsError).errno).toBe(errnum);
    expect((err as OsError).message).toBe(`recv on netlink (errno ${errnum})`);
  });

  test("a datagram longer than the buffer is cut to the buffer, as the kernel does", () => {
    const ops = new FakeRecvOps();
    const r = new PolledFd(ops.fd, { bufSize: 4, ops });
    ops.push("abcdefgh");
    expect(r.readOnce()!.data.toString()).toBe("abcd");
  });

  test("the delivered data is a copy: the next read does not overwrite it", () => {
    const ops = new FakeRecvOps();
    const r = new PolledFd(ops.fd, { bufSize: 16, ops });
    ops.push("first");
    ops.push("second");
    const a = r.readOnce()!;
    r.readOnce();
    expect(a.data.toString()).toBe("first");
  });

  test("the sender address is returned when asked for, cut to the length the kernel gave", () => {
    const ops = new FakeRecvOps();
    const r = new PolledFd(ops.fd, { bufSize: 16, addrSize: 8, ops });
    ops.push("x", Buffer.from([1, 0, 0x2f, 0x61]));
    ops.push("y");
    expect([...r.readOnce()!.from!]).toEqual([1, 0, 0x2f, 0x61]);
    expect(r.readOnce()!.from!.length).toBe(0);
    const none = new PolledFd(ops.fd, { bufSize: 16, ops });
    ops.push("z", Buffer.from([1, 0]));
    expect(none.readOnce()!.from).toBeUndefined();
  });

  test("start() ticks on the clock until stop(); a second start keeps one timer", () => {
    const clock = new FakeClock();
    const ops = new FakeRecvOps();
    const r = new PolledFd(ops.fd, { bufSize: 16, ops, clock });
    const got: Packet[] = [];
    const tick = () => r.drain((p) => got.push(p));
    r.start(10, tick);
    r.start(10, tick);
    expect(clock.pending).toBe(1);
    ops.push("early");
    clock.advance(9);
    expect(got).toEqual([]);
    clock.advance(1);
    expect(text(got)).toEqual(["early"]);
    const reads = ops.reads;
    clock.advance(30);
    expect(ops.reads - reads).toBe(3); // one empty read per tick
    r.stop();
    expect(clock.pending).toBe(0);
    ops.push("late");
    clock.advance(100);
    expect(text(got)).toEqual(["early"]);
  });

  test("stop(true) detaches the fd: nothing is read from a closed descriptor", () => {
    const ops = new FakeRecvOps();
    const r = new PolledFd(ops.fd, { bufSize: 16, ops });
    ops.push("queued");
    r.stop(true);
    expect(r.detached).toBe(true);
    expect(r.readOnce()).toBeUndefined();
    expect(ops.reads).toBe(0);
    r.start(10, () => {});
    expect(r.polling).toBe(false);
  });
});

describe("PolledFd on a real socket pair", () => {
  test("reads datagrams written by the peer, and EAGAIN when there are none", async () => {
    const [a, b] = socketPair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
    const r = new PolledFd(b, { bufSize: 1024, addrSize: 110 });
    try {
      expect(r.readOnce()).toBeUndefined();
      for (const m of ["alpha", "beta", "gamma"]) {
        const buf = Buffer.from(m);
        expect(Number(libc().write(a, buf, buf.length))).toBe(buf.length);
      }
      const got: Packet[] = [];
      expect(r.drain((p) => got.push(p))).toBe(3);
      expect(text(got)).toEqual(["alpha", "beta", "gamma"]);
      // an unbound socketpair peer has an address of just the family (or nothing)
      expect(got[0]!.from!.length).toBeLessThanOrEqual(2);

      // on the real clock, the timer delivers without any call from us
      const seen = new Promise<string>((resolve) => r.start(5, () => r.drain((p) => resolve(p.data.toString()))));
      const late = Buffer.from("by timer");
      libc().write(a, late, late.length);
      expect(await seen).toBe("by timer");
    } finally {
      r.stop(true);
      libc().close(a);
      libc().close(b);
    }
  });

  test("a descriptor that is not open fails EBADF", () => {
    const r = new PolledFd(1_000_000, { bufSize: 16 });
    expect(() => r.readOnce()).toThrow(/errno 9/);
  });
});
