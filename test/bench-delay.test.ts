// The tunnel benchmark's delay line (bench/lib/delay-line.ts): the queue holds each packet its
// delay and no longer, keeps arrival order, enforces its byte bound by dropping (and counting),
// and the pump releases on a fake clock exactly when packets fall due. Pure; no root, no timing.
import { describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { DelayPump, DelayQueue, parseArgs } from "../bench/lib/delay-line.ts";

const pkt = (id: number, len = 4) => {
  const p = new Uint8Array(len);
  p[0] = id;
  return p;
};
const ids = (ps: Uint8Array[]) => ps.map((p) => p[0]!);

describe("DelayQueue", () => {
  test.each([
    // [arrivals (id@ms), take at ms, ids released]
    [[[1, 0]], 49, []],
    [[[1, 0]], 50, [1]],
    [[[1, 0], [2, 10], [3, 10]], 59, [1]],
    [[[1, 0], [2, 10], [3, 10]], 60, [1, 2, 3]],
    [[[1, 5], [2, 6]], 1000, [1, 2]],
  ] as [number[][], number, number[]][])("arrivals %j, take at %d → %j", (arrivals, at, want) => {
    const q = new DelayQueue(50);
    for (const [id, t] of arrivals) q.push(pkt(id!), t!);
    expect(ids(q.take(at))).toEqual(want);
    expect(q.counters.packets).toBe(want.length);
  });

  test("a zero delay releases at once, in order", () => {
    const q = new DelayQueue(0);
    q.push(pkt(1), 7);
    q.push(pkt(2), 7);
    expect(ids(q.take(7))).toEqual([1, 2]);
    expect(q.nextDue()).toBeUndefined();
  });

  test("the byte bound drops what does not fit, counts it, and frees room as packets leave", () => {
    const q = new DelayQueue(10, 10);
    expect(q.push(pkt(1, 6), 0)).toBe(true);
    expect(q.push(pkt(2, 5), 0)).toBe(false);
    expect(q.push(pkt(3, 4), 1)).toBe(true);
    expect(q.bytesWaiting).toBe(10);
    expect(q.counters).toEqual({ packets: 0, bytes: 0, dropped: 1, peakBytes: 10 });
    expect(ids(q.take(10))).toEqual([1]);
    expect(q.push(pkt(4, 6), 10)).toBe(true);
    expect(ids(q.take(100))).toEqual([3, 4]);
    expect(q.counters).toEqual({ packets: 3, bytes: 16, dropped: 1, peakBytes: 10 });
    expect(q.bytesWaiting).toBe(0);
  });

  test("order survives the compaction of a long queue", () => {
    const q = new DelayQueue(1);
    const out: number[] = [];
    for (let i = 0; i < 5000; i++) {
      q.push(pkt(i % 256), i);
      out.push(...ids(q.take(i)));
    }
    out.push(...ids(q.take(1e9)));
    expect(out).toEqual(Array.from({ length: 5000 }, (_, i) => i % 256));
  });

  test.each([[-1], [NaN], [Infinity]])("a delay of %p is refused", (d) => {
    expect(() => new DelayQueue(d)).toThrow(/non-negative number of ms/);
  });
  test.each([[0], [1.5]])("a bound of %p is refused", (b) => {
    expect(() => new DelayQueue(1, b)).toThrow(/positive integer/);
  });
});

describe("DelayPump on a fake clock", () => {
  test("each packet leaves its delay after it arrived, in order, whatever waits with it", () => {
    const clock = new FakeClock();
    const sent: [number, number][] = [];
    const t0 = clock.now();
    const pump = new DelayPump(50, (p) => sent.push([p[0]!, clock.now() - t0]), clock);
    pump.arrive(pkt(1));
    clock.advance(20);
    pump.arrive(pkt(2));
    pump.arrive(pkt(3));
    clock.advance(29);
    expect(sent).toEqual([]);
    clock.advance(1);
    expect(sent).toEqual([[1, 50]]);
    clock.advance(20);
    expect(sent).toEqual([[1, 50], [2, 70], [3, 70]]);
    clock.advance(1000);
    expect(sent.length).toBe(3);
    pump.stop();
  });

  test("the arriving buffer is copied: the reader may reuse it", () => {
    const clock = new FakeClock();
    const sent: number[] = [];
    const pump = new DelayPump(5, (p) => sent.push(p[0]!), clock);
    const buf = pkt(9);
    pump.arrive(buf);
    buf[0] = 1;
    clock.advance(5);
    expect(sent).toEqual([9]);
  });
});

describe("delay-line command line", () => {
  test("good arguments", () => {
    expect(parseArgs(["dly0", "dly1", "50"])).toEqual({ a: "dly0", b: "dly1", delayMs: 50 });
  });
  test.each([
    [["dly0", "dly1"], /usage/],
    [["dly0", "dly0", "5"], /must differ/],
    [["dly0", "a-name-that-is-too-long", "5"], /1-15 letters/],
    [["dly0", "dly1", "-5"], /non-negative number of ms/],
    [["dly0", "dly1", "50ms"], /non-negative number of ms/],
  ] as [string[], RegExp][])("%j is refused", (argv, why) => {
    expect(() => parseArgs(argv)).toThrow(why);
  });
});
