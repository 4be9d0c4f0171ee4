// Issue 17, item 7, the guard's logic on a fake clock and a fake listener: nearly out of
// descriptors it stops accepting, waits (50 ms doubling to 2 s), and listens again on the same
// port once there is room below the mark by as much again. The real process is
// test/relay-fd.test.ts.
import { expect, test } from "bun:test";
import { AcceptGuard, type Stoppable } from "../src/transport/accept-guard.ts";
import { FakeClock } from "../src/clock.ts";

function lab(limit: number) {
  const clock = new FakeClock();
  let open = 10;
  const listens: number[] = [];
  let listening = 0;
  const lines: string[] = [];
  const listen = (port: number): Stoppable => {
    listens.push(port);
    listening++;
    let stopped = false;
    return { port: port === 0 ? 4321 : port, stop: () => void (stopped || (listening--, (stopped = true))) };
  };
  const guard = new AcceptGuard({ listen, port: 0, limit, open: () => open, reserve: 8, every: 250, clock, log: { warn: (m) => lines.push(m), info: (m) => lines.push(m) } });
  return { clock, guard, listens, lines, set: (n: number) => (open = n), listening: () => listening };
}

test("nearly out: stop accepting; room again: listen again on the port it had", () => {
  const l = lab(100);
  expect(l.guard.accepting).toBe(true);
  expect(l.guard.port).toBe(4321);
  l.set(91);
  l.clock.advance(250);
  expect(l.guard.accepting).toBe(true); // 91 < 100 - 8
  l.set(92);
  l.clock.advance(250);
  expect(l.guard.accepting).toBe(false);
  expect(l.listening()).toBe(0);
  expect(l.lines.at(-1)).toBe("out of descriptors (92 open of 100): not accepting new connections until some are free; the devices connected stay");
  // Still above the resume mark (100 - 16): the pauses grow 50, 100, 200, ... ms.
  l.set(85);
  l.clock.advance(50 + 100 + 200);
  expect(l.guard.accepting).toBe(false);
  l.set(83);
  l.clock.advance(400);
  expect(l.guard.accepting).toBe(true);
  expect(l.listens).toEqual([0, 4321]);
  expect(l.lines.at(-1)).toBe("descriptors free again (83 open of 100): accepting new connections");
  expect(l.guard.paused).toBe(1);
});

test("a failed count for want of a descriptor is taken as out; a listen that fails again is retried", () => {
  const clock = new FakeClock();
  let fail = true;
  let attempts = 0;
  let count: () => number = () => {
    const e = new Error("EMFILE: too many open files") as NodeJS.ErrnoException;
    e.code = "EMFILE";
    throw e;
  };
  const guard = new AcceptGuard({
    listen: (port) => {
      attempts++;
      if (attempts > 1 && fail) throw new Error("EADDRINUSE");
      return { port: port || 7000, stop() {} };
    },
    port: 0,
    limit: 50,
    open: () => count(),
    clock,
    log: { warn() {}, info() {} },
  });
  clock.advance(250);
  expect(guard.accepting).toBe(false);
  count = () => 5;
  clock.advance(50);
  expect(guard.accepting).toBe(false); // the listen failed
  fail = false;
  clock.advance(100);
  expect(guard.accepting).toBe(true);
  guard.stop();
  expect(guard.accepting).toBe(false);
});
