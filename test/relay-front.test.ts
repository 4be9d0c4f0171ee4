// The relay's front, its pure parts: judging a HELLO against the certificate, the caps on
// unauthenticated connections, and the refusal log (bounded codes, ring, JSON-lines file).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Admission, judgeHello } from "../src/tunnel/relay/front.ts";
import { FakeClock } from "../src/clock.ts";
import { FileRefusalLog, MemoryRefusalLog, REFUSAL_CODES, RefusalCode, refusal, tlsRefusalCode, type Refusal } from "../src/tunnel/relay/refusals.ts";
import { MAX_REASON } from "../src/transport/frame.ts";

const cert = { id: "tech-1", role: "master", serial: "01" };

describe("judgeHello", () => {
  test.each([
    ["a good HELLO", { versions: [1], role: "master", id: "tech-1", agent: "a/1" }, { ok: true, version: 1 }],
    ["the highest common version", { versions: [3, 1, 2], role: "master", id: "tech-1" }, { ok: true, version: 2 }],
    ["no common version", { versions: [7], role: "master", id: "tech-1" }, { ok: false, code: RefusalCode.VERSION, reason: "no common protocol version (relay speaks 1, 2, peer offers 7)" }],
    ["no versions", { role: "master", id: "tech-1" }, { ok: false, code: RefusalCode.VERSION, reason: "no common protocol version (relay speaks 1, 2, peer offers none)" }],
    ["another role", { versions: [1], role: "onsite", id: "tech-1" }, { ok: false, code: RefusalCode.IDENTITY, reason: 'HELLO says role "onsite" but the certificate of tech-1 is for role master' }],
    ["another id", { versions: [1], role: "master", id: "tech-9" }, { ok: false, code: RefusalCode.IDENTITY, reason: 'HELLO says id "tech-9" but the certificate is for tech-1' }],
    ["an id that is not a string", { versions: [1], role: "master", id: null }, { ok: false, code: RefusalCode.PROTOCOL, reason: "HELLO: id: expected a string, got null" }],
    ["an agent that is not a string", { versions: [1], role: "master", id: "tech-1", agent: 5 }, { ok: false, code: RefusalCode.PROTOCOL, reason: "HELLO: agent: expected a string, got 5" }],
    ["versions that are not a list", { versions: 1, role: "master", id: "tech-1" }, { ok: false, code: RefusalCode.PROTOCOL, reason: "HELLO: versions: expected an array of protocol version numbers, got 1" }],
  ])("%s", (_name, body, verdict) => {
    expect(judgeHello(cert, body, [1, 2])).toMatchObject(verdict);
  });

  test("a long role is quoted cut short", () => {
    const v = judgeHello(cert, { versions: [1], role: "r".repeat(30_000), id: "tech-1" });
    expect(!v.ok && v.reason).toBe(`HELLO says role "${"r".repeat(79)}… but the certificate of tech-1 is for role master`);
  });
});

test("Admission caps unauthenticated connections in total and per source, and releases them", () => {
  const a = new Admission({ total: 3, perSource: 2 });
  expect([a.admit("x"), a.admit("x"), a.admit("x")]).toEqual([true, true, false]);
  expect(a.admit("y")).toBe(true);
  expect(a.admit("z")).toBe(false); // total reached
  a.release("x");
  expect(a.total).toBe(2);
  expect([a.admit("z"), a.admit("x")]).toEqual([true, false]);
  for (const s of ["x", "y", "z", "z"]) a.release(s);
  expect(a.total).toBe(0);
  expect(a.admit("x")).toBe(true);
});

describe("refusal codes", () => {
  test.each([
    ["too many unauthenticated connections", RefusalCode.CAPACITY],
    ["no TLS handshake within 10 s", RefusalCode.DEADLINE],
    ["no client certificate", RefusalCode.NO_CERTIFICATE],
    ["certificate 0A1B is revoked (since 2026-01-01T00:00:00.000Z)", RefusalCode.REVOKED],
    ["TLS handshake failed (EPROTO: HTTP_REQUEST)", RefusalCode.TLS],
    ["TLSv1.2 is not accepted (TLS 1.3 only)", RefusalCode.TLS],
    ["certificate has expired", RefusalCode.CERTIFICATE],
    ["certificate was not issued by this fleet's CA", RefusalCode.CERTIFICATE],
    ["a relay certificate cannot connect as a device (allowed: onsite, master)", RefusalCode.CERTIFICATE],
    ["something nobody foresaw", RefusalCode.TLS],
  ])("%s → %s", (reason, code) => {
    expect(tlsRefusalCode(reason)).toBe(code);
  });

  test("the set is small, unique and only grows (metric labels stay bounded)", () => {
    expect(REFUSAL_CODES).toEqual(["tls", "no_certificate", "certificate", "revoked", "capacity", "deadline", "identity", "version", "protocol", "policy", "proxy_protocol", "enroll", "mesh"]);
  });

  test("a refusal's reason is cut to MAX_REASON characters", () => {
    expect(refusal("t", "a", null, RefusalCode.PROTOCOL, "x".repeat(5000)).reason).toHaveLength(MAX_REASON);
  });
});

const r = (n: number): Refusal => ({ time: `t${n}`, address: "10.0.0.1", presented: null, code: RefusalCode.PROTOCOL, reason: `r${n}` });

test("MemoryRefusalLog keeps the newest, oldest first, and counts all", () => {
  const log = new MemoryRefusalLog(3);
  for (let i = 1; i <= 5; i++) log.record(r(i));
  expect(log.recent().map((x) => x.reason)).toEqual(["r3", "r4", "r5"]);
  expect(log.recent(2).map((x) => x.reason)).toEqual(["r4", "r5"]);
  expect([log.size, log.total]).toEqual([3, 5]);
});

describe("FileRefusalLog", () => {
  const dir = mkdtempSync(join(tmpdir(), "refusals-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test("appends JSON lines and keeps one old generation past the size limit", () => {
    const file = join(dir, "refusals.log");
    const log = new FileRefusalLog(file, { maxBytes: 200 });
    for (let i = 1; i <= 3; i++) log.record(r(i));
    expect(readFileSync(file, "utf8").trim().split("\n").map((l) => JSON.parse(l))).toEqual([r(1), r(2), r(3)]);
    log.record(r(4)); // the file is over 200 bytes: it becomes .1 first
    expect(readFileSync(file + ".1", "utf8").trim().split("\n")).toHaveLength(3);
    expect(readFileSync(file, "utf8").trim().split("\n").map((l) => JSON.parse(l))).toEqual([r(4)]);
  });

  test("a file it cannot write is reported, not thrown", () => {
    const blocker = join(dir, "not-a-dir");
    writeFileSync(blocker, "");
    const errors: string[] = [];
    new FileRefusalLog(join(blocker, "refusals.log"), { onError: (e) => errors.push(e.message) }).record(r(1));
    expect(errors).toHaveLength(1);
    expect(existsSync(join(blocker, "refusals.log"))).toBe(false);
  });

  test("failed writes are reported at most once a minute, with the count held back", () => {
    const blocker = join(dir, "not-a-dir-either");
    writeFileSync(blocker, "");
    const clock = new FakeClock();
    const errors: string[] = [];
    const log = new FileRefusalLog(join(blocker, "refusals.log"), { onError: (e) => errors.push(e.message), clock });
    for (let i = 0; i < 50; i++) log.record(r(i));
    expect(errors).toHaveLength(1);
    clock.advance(59_000);
    log.record(r(50));
    expect(errors).toHaveLength(1);
    clock.advance(1_000);
    log.record(r(51));
    expect(errors).toHaveLength(2);
    expect(errors[1]).toMatch(/\(50 more failed write\(s\) since the last report\)$/);
  });
});
