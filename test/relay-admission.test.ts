// Issue 17, the pure parts: who may start a handshake with the relay (per-source caps and
// rates for IPv4 and IPv6 /64, random early drop, penalties for failed handshakes, the accept
// pacer), the refusal throttle and the batched audit file, and the devices' redial spread.
// Everything runs on instants the test gives (a fake clock), never on wall time.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AdmissionTable, IdentityCount, earlyDropChance, expandIPv6, holdOff, isLoopback, sourceKey, DEFAULT_ADMISSION } from "../src/tunnel/relay/admission.ts";
import { TokenBucket, acceptPause, descriptorsOut, redialSpread, SPREAD_MAX, SPREAD_MIN } from "../src/transport/accept-pacer.ts";
import { BatchedRefusalFile, OTHER_SOURCES, RefusalThrottle, summaryText } from "../src/tunnel/relay/refusal-throttle.ts";
import { refusal, RefusalCode } from "../src/tunnel/relay/refusals.ts";
import { redialDelay, retryDelay } from "../src/transport/client.ts";
import { decodeWelcome, MAX_REDIAL_SPREAD } from "../src/transport/messages.ts";
import { FakeClock } from "../src/clock.ts";

const dir = mkdtempSync(join(tmpdir(), "agent-admission-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("sourceKey: an IPv4 address, or an IPv6 /64", () => {
  test.each([
    ["192.0.2.7", "192.0.2.7"],
    ["::ffff:192.0.2.7", "192.0.2.7"],
    ["0:0:0:0:0:ffff:c000:207", "192.0.2.7"],
    ["2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"],
    ["2001:db8:1:2::1", "2001:db8:1:2::/64"],
    ["2001:DB8:1:2:ffff::9", "2001:db8:1:2::/64"],
    ["[2001:db8:1:2::1]", "2001:db8:1:2::/64"],
    ["fe80::1%eth0", "fe80:0:0:0::/64"],
    ["::1", "0:0:0:0::/64"],
    ["not an address", "not an address"],
  ])("%s → %s", (a, key) => expect(sourceKey(a)).toBe(key));

  test("two addresses of one /64 are one source, of two /64s two", () => {
    expect(sourceKey("2001:db8:0:5::1")).toBe(sourceKey("2001:db8:0:5:ffff:ffff:ffff:ffff"));
    expect(sourceKey("2001:db8:0:5::1")).not.toBe(sourceKey("2001:db8:0:6::1"));
  });

  test.each([["127.0.0.1", true], ["127.9.9.9", true], ["::1", true], ["10.0.0.1", false], ["2001:db8::1", false]])("%s is loopback: %p", (a, yes) => expect(isLoopback(sourceKey(a))).toBe(yes));

  test.each([["1:2:3"], ["1::2::3"], ["1:2:3:4:5:6:7:8:9"], ["12345::"], ["::1.2.3.300"]])("%s is not an IPv6 address", (a) => expect(expandIPv6(a)).toBeNull());
});

test.each([
  [0, 512, 0.5, 0],
  [255, 512, 0.5, 0],
  [256, 512, 0.5, 1 / 257],
  [384, 512, 0.5, 129 / 257],
  [511, 512, 0.5, 256 / 257],
  [512, 512, 0.5, 1],
  [600, 512, 0.5, 1],
])("earlyDropChance(%d of %d, from %d) = %d", (open, cap, from, p) => expect(earlyDropChance(open, cap, from)).toBeCloseTo(p, 10));

test.each([
  [0, 0],
  [3, 0],
  [4, 1_000],
  [5, 2_000],
  [10, 64_000],
  [13, 300_000],
  [1000, 300_000],
])("holdOff after %d failures: %d ms", (n, ms) => expect(holdOff(n, DEFAULT_ADMISSION)).toBe(ms));

describe("TokenBucket", () => {
  test("a burst, then the rate", () => {
    const b = new TokenBucket(10, 3);
    expect([b.take(0), b.take(0), b.take(0), b.take(0)]).toEqual([true, true, true, false]);
    expect(b.wait(0)).toBe(100);
    expect(b.take(99)).toBe(false);
    expect(b.take(100)).toBe(true);
    expect(b.full(100)).toBe(false);
    expect(b.full(400)).toBe(true);
    expect(b.level(10_000)).toBe(3); // never more than the burst
  });
  test("an instant before the last one does not refill (monotonic time only moves on)", () => {
    const b = new TokenBucket(1, 1);
    expect(b.take(5_000)).toBe(true);
    expect(b.take(1_000)).toBe(false);
  });
  test("nonsense is refused", () => {
    expect(() => new TokenBucket(0, 1)).toThrow(/rate > 0/);
    expect(() => new TokenBucket(1, 0)).toThrow(/burst ≥ 1/);
  });
});

describe("AdmissionTable", () => {
  const never = () => 1; // random() that never drops early
  test("caps in total and per source, and releases", () => {
    const a = new AdmissionTable({ total: 3, perSource: 2, earlyDropFrom: 1 }, never);
    expect([a.admit("10.0.0.1", 0).ok, a.admit("10.0.0.1", 0).ok, a.admit("10.0.0.1", 0)]).toEqual([true, true, { ok: false, why: "source", reason: "too many unauthenticated connections: 2 from 10.0.0.1 (the cap per source)" }]);
    expect(a.admit("10.0.0.2", 0).ok).toBe(true);
    expect(a.admit("10.0.0.3", 0)).toMatchObject({ ok: false, why: "capacity" });
    a.release("10.0.0.1");
    expect(a.total).toBe(2);
    expect(a.admit("10.0.0.3", 0).ok).toBe(true);
    expect(a.dropped).toMatchObject({ source: 1, capacity: 1 });
  });

  test("an IPv6 /64 is one source however many addresses it uses", () => {
    const a = new AdmissionTable({ perSource: 3, earlyDropFrom: 1 }, never);
    const verdicts = Array.from({ length: 5 }, (_, i) => a.admit(`2001:db8:7:7::${i + 1}`, 0).ok);
    expect(verdicts).toEqual([true, true, true, false, false]);
    expect(a.admit("2001:db8:7:8::1", 0).ok).toBe(true);
  });

  test("new connections a second per source: a burst, then the rate", () => {
    const a = new AdmissionTable({ sourceRate: 2, sourceBurst: 4, earlyDropFrom: 1 }, never);
    const at = (t: number) => {
      const v = a.admit("10.0.0.9", t);
      if (v.ok) a.release("10.0.0.9");
      return v.ok;
    };
    expect([at(0), at(0), at(0), at(0), at(0)]).toEqual([true, true, true, true, false]);
    expect(at(499)).toBe(false);
    expect(at(500)).toBe(true);
    expect(a.admit("10.0.0.10", 500).ok).toBe(true); // another source has its own bucket
  });

  test("failed handshakes hold the source off, doubling, and are forgotten after a while", () => {
    const a = new AdmissionTable({ failuresFree: 2, holdBase: 1_000, failureMemory: 60_000, earlyDropFrom: 1 }, never);
    const src = "198.51.100.4";
    a.failed(src, 0);
    a.failed(src, 0);
    expect(a.admit(src, 0).ok).toBe(true); // two are free
    a.release(src);
    a.failed(src, 0);
    expect(a.admit(src, 999)).toEqual({ ok: false, why: "held", reason: "too many unauthenticated connections: 198.51.100.4 is held off for 1 s after 3 failed handshakes" });
    expect(a.admit(src, 1_000).ok).toBe(true);
    a.release(src);
    a.failed(src, 1_000);
    expect(a.admit(src, 2_999).ok).toBe(false); // 2 s now
    expect(a.held(2_999)).toBe(1);
    expect(a.admit(src, 3_000).ok).toBe(true);
    a.release(src);
    // A minute without a failure: the slate is clean, the next failure is free again.
    a.failed(src, 70_000);
    expect(a.admit(src, 70_000).ok).toBe(true);
    expect(a.admit("198.51.100.5", 0).ok).toBe(true); // the neighbour never paid
  });

  test("a success from the source forgives half its failures (a NAT shared with a broken device)", () => {
    const a = new AdmissionTable({ failuresFree: 3, earlyDropFrom: 1, goodMemory: 50_000 }, never);
    for (let i = 0; i < 6; i++) a.failed("203.0.113.1", 0);
    a.succeeded("203.0.113.1", 0);
    a.failed("203.0.113.1", 100_000); // past goodMemory: 3 + 1, held for the base, not for 2^3 bases
    expect(a.admit("203.0.113.1", 100_999).ok).toBe(false);
    expect(a.admit("203.0.113.1", 101_000).ok).toBe(true);
  });

  test("while a device authenticated from a source lately, its failures do not hold it off (the caps and rate still do); afterwards they count again", () => {
    const src = "203.0.113.9";
    const a = new AdmissionTable({ failuresFree: 3, earlyDropFrom: 1, goodMemory: 60_000 }, never);
    a.succeeded(src, 0);
    for (let i = 0; i < 10; i++) a.failed(src, 1000);
    expect(a.admit(src, 1001).ok).toBe(true);
    a.failed(src, 61_000); // the 11th within the failure memory, the device's hour over
    expect(a.admit(src, 61_001).ok).toBe(false);
  });

  test("random early drop as the table fills: none below the threshold, by the chance above", () => {
    const rolls = [0.99, 0.001, 0.5];
    const a = new AdmissionTable({ total: 10, perSource: 10, earlyDropFrom: 0.5, sourceBurst: 100 }, () => rolls.shift() ?? 1);
    for (let i = 0; i < 5; i++) expect(a.admit("10.1.0.1", 0).ok).toBe(true); // 0..4 of 10: no roll
    expect(rolls.length).toBe(3);
    expect(a.admit("10.1.0.1", 0).ok).toBe(true); // 5 of 10: chance 1/6, rolled 0.99
    expect(a.admit("10.1.0.1", 0)).toMatchObject({ ok: false, why: "early" }); // 6 of 10: chance 2/6, rolled 0.001
    expect(a.admit("10.1.0.1", 0).ok).toBe(true); // chance 2/6, rolled 0.5
    expect(a.dropped.early).toBe(1);
  });

  test("a source where a device authenticated is spared the early drop for an hour (not the hard caps)", () => {
    const a = new AdmissionTable({ total: 4, perSource: 4, earlyDropFrom: 0.25, goodMemory: 3_600_000 }, () => 0);
    a.admit("10.7.0.1", 0); // 0 of 4: no roll
    expect(a.admit("10.7.0.2", 0)).toMatchObject({ ok: false, why: "early" }); // a stranger rolls and loses
    a.succeeded("10.7.0.3", 0);
    expect(a.admit("10.7.0.3", 1).ok).toBe(true);
    expect(a.admit("10.7.0.3", 2).ok).toBe(true);
    expect(a.admit("10.7.0.3", 3).ok).toBe(true);
    expect(a.admit("10.7.0.3", 4)).toMatchObject({ ok: false, why: "capacity" });
    a.release("10.7.0.3");
    expect(a.admit("10.7.0.3", 3_600_000)).toMatchObject({ ok: false, why: "early" }); // forgotten after the hour
  });

  test("the accept pacer: new connections a second for the whole relay", () => {
    const a = new AdmissionTable({ acceptRate: 100, acceptBurst: 3, earlyDropFrom: 1 }, never);
    const r = ["10.2.0.1", "10.2.0.2", "10.2.0.3", "10.2.0.4"].map((s) => a.admit(s, 0));
    expect(r.map((v) => v.ok)).toEqual([true, true, true, false]);
    expect(r[3]).toMatchObject({ why: "paced", reason: "too many unauthenticated connections: more than 100 new connections a second to this relay" });
    expect(a.admit("10.2.0.4", 10).ok).toBe(true);
  });

  test("hold (TLS done, HELLO not yet) counts against the hard caps only", () => {
    const a = new AdmissionTable({ total: 2, perSource: 2, acceptRate: 1, acceptBurst: 1, earlyDropFrom: 0 }, () => 0);
    expect(a.hold("10.3.0.1", 0)).toBe(true); // no pacer, no early drop for a verified peer
    expect(a.hold("10.3.0.1", 0)).toBe(true);
    expect(a.hold("10.3.0.2", 0)).toBe(false); // the total
    a.release("10.3.0.1");
    expect(a.total).toBe(1);
  });

  test("under pressure a silent connection gets a shorter handshake deadline", () => {
    const a = new AdmissionTable({ total: 4, perSource: 4, earlyDropFrom: 0.5, pressureDeadline: 3_000 }, never);
    expect(a.deadline(10_000)).toBe(10_000);
    a.admit("10.4.0.1", 0);
    a.admit("10.4.0.1", 0);
    expect(a.deadline(10_000)).toBe(3_000);
    expect(a.deadline(2_000)).toBe(2_000);
  });

  test("the relay's own host (loopback) is capped, but neither rate-limited nor held off", () => {
    const a = new AdmissionTable({ perSource: 2, sourceRate: 1, sourceBurst: 1, failuresFree: 0, earlyDropFrom: 1 }, never);
    for (const local of ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1"]) {
      a.failed(local, 0);
      for (let i = 0; i < 5; i++) {
        expect(a.admit(local, 0).ok).toBe(true);
        a.release(local);
      }
      a.admit(local, 0);
      a.admit(local, 0);
      expect(a.admit(local, 0)).toMatchObject({ ok: false, why: "source" });
      a.release(local);
      a.release(local);
    }
    a.failed("10.6.0.1", 0);
    expect(a.admit("10.6.0.1", 0)).toMatchObject({ ok: false, why: "held" });
  });

  test("bounded memory: recovered sources are swept, and a full table forgets the oldest idle one", () => {
    const a = new AdmissionTable({ maxSources: 3, earlyDropFrom: 1, failureMemory: 1_000, sourceBurst: 2, sourceRate: 1 }, never);
    for (const s of ["10.5.0.1", "10.5.0.2", "10.5.0.3"]) {
      expect(a.admit(s, 0).ok).toBe(true);
      a.release(s);
    }
    a.failed("10.5.0.3", 0);
    expect(a.tracked).toBe(3);
    expect(a.admit("10.5.0.4", 0).ok).toBe(true); // 10.5.0.1 (oldest, idle) made room
    expect(a.tracked).toBe(3);
    expect(a.sweep(500)).toBe(0); // buckets not full yet, a failure fresh
    expect(a.sweep(5_000)).toBe(2); // 10.5.0.2 and .3 recovered; .4 holds a slot
    expect(a.tracked).toBe(1);
  });
});

test("IdentityCount caps connections per certificate identity", () => {
  const c = new IdentityCount(2);
  expect([c.add("site-1"), c.add("site-1"), c.add("site-1"), c.add("site-2")]).toEqual([true, true, false, true]);
  c.remove("site-1");
  expect(c.of("site-1")).toBe(1);
  expect(c.add("site-1")).toBe(true);
});

test.each([
  [1, 50],
  [2, 100],
  [5, 800],
  [7, 2_000],
  [50, 2_000],
])("acceptPause after %d failed accepts in a row: %d ms", (n, ms) => expect(acceptPause(n)).toBe(ms));

test.each([
  [60, 80, 16, false],
  [64, 80, 16, true],
  [80, 80, 16, true],
])("descriptorsOut(%d open of %d, reserve %d) = %p", (open, limit, reserve, out) => expect(descriptorsOut(open, limit, reserve)).toBe(out));

describe("the herd: the first redial is spread over a window that grows with the fleet", () => {
  test.each([
    [0, 250, SPREAD_MIN],
    [10, 250, SPREAD_MIN],
    [2_000, 250, 8_000],
    [5_000, 250, 20_000],
    [1_000_000, 250, SPREAD_MAX],
    [100, 0, SPREAD_MIN],
  ])("redialSpread(%d devices, %d/s) = %d ms", (fleet, rate, ms) => expect(redialSpread(fleet, rate)).toBe(ms));

  test("redialDelay: uniform over the spread, never shorter than the backoff; an older relay's devices as before", () => {
    expect(redialDelay(0, false, 8_000, () => 0.999)).toBe(7_992);
    expect(redialDelay(0, false, 8_000, () => 0)).toBe(0);
    expect(redialDelay(0, false, 8_000, () => 0.5)).toBe(4_000);
    expect(redialDelay(4, false, 1_000, () => 0.5)).toBe(2_000); // the backoff's ceiling (4 s) is longer
    expect(redialDelay(0, false, undefined, () => 0.999)).toBe(retryDelay(0, false, () => 0.999)); // 249: within 250 ms, as before
    expect(redialDelay(0, true, 8_000, () => 0.1)).toBe(30_000); // revoked: the maximum
  });

  test("2,000 devices' first redials after a restart spread over 8 s, not 250 ms", () => {
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const spread = redialSpread(2_000, DEFAULT_ADMISSION.acceptRate);
    const delays = Array.from({ length: 2_000 }, () => redialDelay(0, false, spread, random));
    const perSecond = new Array(8).fill(0);
    for (const d of delays) perSecond[Math.floor(d / 1000)]++;
    // About 250 a second (the pacer's rate), none beyond the window.
    expect(Math.max(...delays)).toBeLessThan(8_000);
    for (const n of perSecond) expect(n).toBeGreaterThan(180), expect(n).toBeLessThan(320);
    // Before: all within 250 ms.
    expect(Math.max(...Array.from({ length: 2_000 }, () => retryDelay(0, false, random)))).toBeLessThan(250);
  });

  test("WELCOME's spread: optional, a count of ms within the bound", () => {
    const base = { version: 1, relay: "r", address: "a", keepalive: 5000 };
    expect(decodeWelcome(base).spread).toBeUndefined();
    expect(decodeWelcome({ ...base, spread: 8000 }).spread).toBe(8000);
    expect(() => decodeWelcome({ ...base, spread: MAX_REDIAL_SPREAD + 1 })).toThrow(/spread/);
    expect(() => decodeWelcome({ ...base, spread: -1 })).toThrow(/spread/);
  });
});

describe("refusal throttle", () => {
  const r = (address: string, code: (typeof RefusalCode)[keyof typeof RefusalCode] = RefusalCode.TLS) => refusal("2026-12-01T00:00:00.000Z", address, null, code, "x");

  test("the first few per source a minute are loud, the rest summarized once", () => {
    const t = new RefusalThrottle({ perSource: 2, overall: 100, window: 60_000 });
    const loud = Array.from({ length: 5 }, (_, i) => t.note(r("10.0.0.1", i < 4 ? RefusalCode.TLS : RefusalCode.DEADLINE), i));
    expect(loud).toEqual([true, true, false, false, false]);
    expect(t.note(r("10.0.0.2"), 10)).toBe(true); // another source
    expect(t.due(59_999)).toEqual([]);
    const due = t.due(60_000);
    expect(due).toEqual([{ source: "10.0.0.1", held: 3, codes: { tls: 2, deadline: 1 }, since: 0, window: 60_000 }]);
    expect(summaryText(due[0]!, 2)).toBe("refused 3 more connection(s) from 10.0.0.1 in 60 s beyond the first 2 logged (tls 2, deadline 1)");
    expect(t.due(120_000)).toEqual([]); // said once
    expect(t.note(r("10.0.0.1"), 61_000)).toBe(true); // a new minute
  });

  test("an IPv6 /64 is one source; the overall budget holds across sources", () => {
    const t = new RefusalThrottle({ perSource: 1, overall: 3 });
    expect([t.note(r("2001:db8::1"), 0), t.note(r("2001:db8::2"), 0)]).toEqual([true, false]);
    expect([t.note(r("10.0.0.1"), 0), t.note(r("10.0.0.2"), 0), t.note(r("10.0.0.3"), 0)]).toEqual([true, true, false]);
  });

  test("the relay's own host (loopback) is logged in full", () => {
    const t = new RefusalThrottle({ perSource: 1, overall: 3 });
    expect([0, 1, 2, 3].map(() => t.note(r("127.0.0.1"), 0))).toEqual([true, true, true, true]);
    expect(t.note(r("10.0.0.1"), 0)).toBe(true); // not counted against the others either
  });

  test("sources beyond maxSources are counted together", () => {
    const t = new RefusalThrottle({ perSource: 1, overall: 100, maxSources: 2 });
    for (const a of ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]) t.note(r(a), 0);
    expect(t.tracked).toBe(3);
    expect(t.due(60_000)).toEqual([{ source: OTHER_SOURCES, held: 2, codes: { tls: 2 }, since: 0, window: 60_000 }]);
  });

  test("wasLoud marks the very refusal that was logged", () => {
    const t = new RefusalThrottle({ perSource: 1 });
    const a = r("10.0.0.1");
    const b = r("10.0.0.1");
    t.note(a, 0);
    t.note(b, 0);
    expect([t.wasLoud(a), t.wasLoud(b)]).toEqual([true, false]);
  });
});

describe("BatchedRefusalFile", () => {
  test("one write per batch, only the loud refusals and the summaries, in order", async () => {
    const clock = new FakeClock();
    const file = join(dir, "batched.log");
    const t = new RefusalThrottle({ perSource: 2 });
    const f = new BatchedRefusalFile(file, { clock, throttle: t, everyMs: 250 });
    for (let i = 0; i < 10; i++) {
      const x = refusal(`2026-12-01T00:00:0${i}.000Z`, "10.9.0.1", null, RefusalCode.TLS, `r${i}`);
      t.note(x, 0);
      f.record(x);
    }
    expect(() => readFileSync(file)).toThrow(); // nothing written on the refusing path
    clock.advance(250);
    await f.flush();
    const lines = readFileSync(file, "utf8").trim().split("\n").map((l) => JSON.parse(l));
    expect(lines.map((l) => l.reason)).toEqual(["r0", "r1"]);
    const [s] = t.due(60_000);
    f.summary(s!, 2, "2026-12-01T00:01:00.000Z");
    f.closeSync();
    const last = JSON.parse(readFileSync(file, "utf8").trim().split("\n").at(-1)!);
    expect(last).toMatchObject({ address: "10.9.0.1", code: "tls", count: 8, reason: "refused 8 more connection(s) from 10.9.0.1 in 60 s beyond the first 2 logged (tls 8)" });
  });

  test("a bounded queue: beyond it lines are counted and the count written", async () => {
    const clock = new FakeClock();
    const file = join(dir, "bounded.log");
    const f = new BatchedRefusalFile(file, { clock, maxQueued: 3 });
    for (let i = 0; i < 7; i++) f.record(refusal("2026-12-01T00:00:00.000Z", "10.9.0.2", null, RefusalCode.TLS, `r${i}`));
    await f.flush();
    const lines = readFileSync(file, "utf8").trim().split("\n").map((l) => JSON.parse(l));
    expect(lines.map((l) => l.reason)).toEqual(["r0", "r1", "r2", "4 refusal line(s) not written: the queue of this file was full"]);
  });

  test("a write that fails is reported once a minute, not per refusal", async () => {
    const clock = new FakeClock();
    const errors: string[] = [];
    const f = new BatchedRefusalFile(join(dir, "no-such-dir", "x.log"), { clock, onError: (e) => errors.push(e.message) });
    for (let i = 0; i < 3; i++) {
      f.record(refusal("2026-12-01T00:00:00.000Z", "10.9.0.3", null, RefusalCode.TLS, "x"));
      await f.flush();
    }
    expect(errors.length).toBe(1);
    expect(errors[0]).toContain("ENOENT");
  });
});
