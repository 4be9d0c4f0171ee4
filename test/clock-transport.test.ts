// Wall-clock steps (NTP catching up on a Pi without an RTC, a date set by hand) against the
// transport's durations: keepalive, request deadlines, reconnect backoff and "stable for 60 s".
// Everything runs on a FakeClock over in-memory links: monotonic time moves only by advance(),
// the wall clock jumps by a day either way, and no duration may notice.
import { describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { RelayClient } from "../src/transport/client.ts";
import { GoAwayCode } from "../src/transport/frame.ts";
import { linkPair, type Link } from "../src/transport/link.ts";
import { Msg } from "../src/transport/messages.ts";
import { Connection } from "../src/transport/mux.ts";
import { Timing, backoffDelay } from "../src/transport/policy.ts";
import { flush, stepper } from "./helpers/fake-time.ts";

const DAY = 24 * 3600_000;
const quiet = { debug() {}, info() {}, warn() {} };

const run = stepper(250);

function pair(clock: FakeClock) {
  const [a, b] = linkPair();
  const dialer = new Connection(a, { side: "dialer", clock });
  const acceptor = new Connection(b, { side: "acceptor", clock });
  dialer.startKeepalive();
  acceptor.startKeepalive();
  return { dialer, acceptor };
}

describe("keepalive under wall-clock steps", () => {
  for (const step of [DAY, -DAY]) {
    test(`two live connections survive a wall step of ${step > 0 ? "+" : "-"}1 day, and another back`, async () => {
      const clock = new FakeClock();
      const { dialer, acceptor } = pair(clock);
      await run(clock, 7_000);
      const heardBefore = dialer.lastReceived;
      clock.stepWall(step);
      // Four keepalive timeouts of monotonic time across the step and the step back.
      await run(clock, 2 * Timing.keepaliveTimeout);
      clock.stepWall(-step);
      await run(clock, 2 * Timing.keepaliveTimeout);
      expect(dialer.closed).toBe(false);
      expect(acceptor.closed).toBe(false);
      // PINGs went both ways all along, and their round trips are measured in monotonic time.
      expect(dialer.rtt).not.toBeNull();
      expect(Math.abs(dialer.rtt!)).toBeLessThan(1_000);
      expect(Math.abs(acceptor.rtt!)).toBeLessThan(1_000);
      // The "last seen" people read is wall time: it moved on by the monotonic time, not by the step.
      expect(dialer.lastReceived - heardBefore).toBeGreaterThan(4 * Timing.keepaliveTimeout - Timing.keepaliveInterval - 1_000);
      expect(dialer.lastReceived - heardBefore).toBeLessThanOrEqual(4 * Timing.keepaliveTimeout);
      dialer.close();
      await flush();
    });
  }

  for (const step of [-DAY, DAY]) {
    test(`a peer gone silent is still declared dead after a wall step of ${step > 0 ? "+" : "-"}1 day, on time`, async () => {
      const clock = new FakeClock();
      const [a, b] = linkPair();
      b.setHandlers({ data() {}, drain() {}, closed() {} }); // reads everything, answers nothing
      const conn = new Connection(a, { side: "dialer", clock });
      conn.startKeepalive();
      const t0 = clock.now();
      await run(clock, 2_000);
      clock.stepWall(step);
      let closedAt: number | null = null;
      void conn.wait().then(() => (closedAt = clock.now()));
      await run(clock, Timing.keepaliveTimeout - 2_000);
      expect(conn.closed).toBe(false); // a forward step did not cut it short either
      await run(clock, Timing.keepaliveInterval + 1_000);
      expect(conn.closed).toBe(true);
      expect(conn.closedWith!.code).toBe(GoAwayCode.KEEPALIVE);
      // Closed at the first keepalive tick past the timeout: 15 s of silence, not 15 s ± a day.
      expect(closedAt! - t0).toBeGreaterThan(Timing.keepaliveTimeout);
      expect(closedAt! - t0).toBeLessThanOrEqual(Timing.keepaliveTimeout + Timing.keepaliveInterval);
    });
  }

  test("a request's deadline is monotonic: neither a forward nor a backward step moves it", async () => {
    const clock = new FakeClock();
    const [a, b] = linkPair();
    b.setHandlers({ data() {}, drain() {}, closed() {} });
    const conn = new Connection(a, { side: "dialer", clock });
    let failedAt: number | null = null;
    const t0 = clock.now();
    conn.request(Msg.DEVICES, {}, 10_000).catch(() => (failedAt = clock.now()));
    clock.stepWall(DAY);
    await run(clock, 5_000);
    clock.stepWall(-2 * DAY);
    await run(clock, 4_900);
    expect(failedAt).toBeNull();
    await run(clock, 100);
    expect(failedAt! - t0).toBe(10_000); // the rejection lands right after the step that crossed 10 s
    conn.close();
  });
});

/** A dial to a relay end on the same fake clock that answers HELLO with WELCOME. */
function relayDialer(clock: FakeClock, ends: Connection[]) {
  return async (): Promise<Link> => {
    const [dialer, acceptor] = linkPair("10.0.0.1", "10.92.1.2");
    const conn = new Connection(acceptor, { side: "acceptor", clock });
    conn.on(Msg.HELLO, () => conn.send(Msg.WELCOME, { version: 1, relay: "relay-1", address: "10.92.1.2", keepalive: 15_000 }));
    ends.push(conn);
    return dialer;
  };
}

function client(clock: FakeClock, dial: () => Promise<Link>) {
  return new RelayClient({ role: "onsite", id: "site-1", agent: "test", describe: "relay:443", dial, setup: () => {}, log: quiet, random: () => 0.999, clock });
}

describe("reconnect backoff and the stable time under wall-clock steps", () => {
  for (const step of [DAY, -DAY]) {
    test(`the backoff waits its monotonic delay across a wall step of ${step > 0 ? "+" : "-"}1 day`, async () => {
      const clock = new FakeClock();
      let dials = 0;
      const c = client(clock, async () => {
        dials++;
        throw new Error("connection refused");
      });
      c.start();
      await flush();
      expect(dials).toBe(1);
      // After n failures the next wait is backoffDelay(n - 1): 499, 999, 1999 ms with random 0.999.
      for (let n = 1; n <= 3; n++) {
        const wait = backoffDelay(n - 1, () => 0.999);
        clock.stepWall(step);
        clock.advance(wait - 1);
        await flush();
        expect(dials).toBe(n); // not early after a forward step
        clock.advance(1);
        await flush();
        expect(dials).toBe(n + 1); // not late after a backward one
      }
      expect(c.state).toBe("waiting");
      await c.close();
    });

    test(`"stable for 60 s" counts monotonic time across a wall step of ${step > 0 ? "+" : "-"}1 day`, async () => {
      const clock = new FakeClock();
      const ends: Connection[] = [];
      const c = client(clock, relayDialer(clock, ends));
      c.start();
      await run(clock, 100, 50);
      expect(c.state).toBe("up");
      // Up for 10 s with the wall clock a day on: short-lived, the attempt counter climbs.
      clock.stepWall(step);
      await run(clock, 10_000);
      expect(c.state).toBe("up");
      ends.at(-1)!.close(GoAwayCode.NORMAL, "relay restarting");
      await run(clock, 100, 50);
      expect(c.attempt).toBe(1);
      await run(clock, backoffDelay(0, () => 0.999) + 100, 50);
      expect(c.state).toBe("up");
      expect(ends.length).toBe(2);
      // Up for 61 s with the wall clock stepped back across it: stable, the counter starts over.
      clock.stepWall(-step);
      await run(clock, Timing.stableAfter + 1_000, 1_000);
      expect(c.state).toBe("up"); // and keepalive kept it up all along
      ends.at(-1)!.close(GoAwayCode.NORMAL, "relay restarting");
      await run(clock, 100, 50);
      expect(c.attempt).toBe(0);
      await c.close();
    });
  }

  test("status() shows its instants on the wall clock of the moment", async () => {
    const clock = new FakeClock({ wall: Date.UTC(2026, 0, 1) });
    const c = client(clock, async () => {
      throw new Error("no route");
    });
    c.start();
    await flush();
    clock.stepWall(DAY);
    const s = c.status();
    expect(s.state).toBe("waiting");
    // The retry is 499 ms away on the monotonic clock, shown as wall time now (a day on).
    expect(Date.parse(s.next_retry as string) - clock.wall()).toBe(backoffDelay(0, () => 0.999));
    await c.close();
  });
});
