// Issue 17, item 2 (and the front's other hooks): a valid certificate cannot hold endless
// connections without a HELLO. Such connections stay counted as unauthenticated until their
// HELLO, the set waiting for a HELLO is capped, and so are connections per identity. Also: the
// WELCOME tells the device its redial spread, and refusals beyond the first few per source are
// counted, not logged one by one. RelayServer over in-memory links, on a fake clock.
import { afterEach, describe, expect, test } from "bun:test";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { AdmissionTable } from "../src/tunnel/relay/admission.ts";
import { RefusalThrottle } from "../src/tunnel/relay/refusal-throttle.ts";
import { RefusalCode, type Refusal } from "../src/tunnel/relay/refusals.ts";
import { Connection } from "../src/transport/mux.ts";
import { linkPair } from "../src/transport/link.ts";
import { GoAwayCode } from "../src/transport/frame.ts";
import { Msg } from "../src/transport/messages.ts";
import { redialSpread } from "../src/transport/accept-pacer.ts";
import { FakeClock } from "../src/clock.ts";
import { waitFor } from "./helpers/wait.ts";

const quiet = { debug() {}, info() {}, warn() {} };
const servers: RelayServer[] = [];
const conns: Connection[] = [];
afterEach(async () => {
  for (const c of conns.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

function relay(o: { table?: AdmissionTable; maxPending?: number; maxPerIdentity?: number; throttle?: RefusalThrottle; spread?: (n: number) => number } = {}) {
  const refusals: Refusal[] = [];
  const warnings: string[] = [];
  const clock = new FakeClock();
  const table = o.table ?? new AdmissionTable({ total: 100, perSource: 100 });
  const server = new RelayServer({
    id: "relay-1",
    log: { ...quiet, warn: (m: unknown) => warnings.push(String(m)) },
    access: () => [],
    onRefusal: (r) => refusals.push(r),
    helloDeadline: 10_000,
    keepaliveInterval: 60_000,
    clock,
    admission: { unauthenticated: { hold: (a) => table.hold(a, clock.now()), release: (a) => table.release(a) }, maxPending: o.maxPending, maxPerIdentity: o.maxPerIdentity, throttle: o.throttle },
    redialSpread: o.spread,
  });
  servers.push(server);
  return { server, refusals, warnings, table, clock };
}

/** A peer whose certificate passed TLS (id, role) from `address`; HELLO only if asked. */
function peer(r: ReturnType<typeof relay>, id: string, o: { address?: string; hello?: boolean } = {}) {
  const [link, relayLink] = linkPair(o.address ?? "198.51.100.1", "10.9.9.9");
  const conn = new Connection(link, { side: "dialer" });
  conns.push(conn);
  const welcome = new Promise<Record<string, unknown>>((resolve) => conn.on(Msg.WELCOME, resolve));
  r.server.accept(relayLink, { id, role: "onsite", serial: `s-${id}` });
  if (o.hello) conn.send(Msg.HELLO, { versions: [1], role: "onsite", id, agent: "t/1" });
  return { conn, welcome };
}

describe("connections past TLS without a HELLO", () => {
  test("count as unauthenticated until their HELLO, and are released at it or when they close", async () => {
    const r = relay();
    const a = peer(r, "site-1");
    const b = peer(r, "site-2");
    expect(r.table.total).toBe(2);
    expect(r.server.stats().pending_hello).toBe(2);
    a.conn.send(Msg.HELLO, { versions: [1], role: "onsite", id: "site-1", agent: "t/1" });
    await a.welcome;
    expect(r.table.total).toBe(1);
    b.conn.close(0, "bye");
    await waitFor(() => r.table.total === 0, 5_000, "the silent connection's slot released");
  });

  test("one certificate identity holds at most maxPerIdentity connections; the next is refused with the reason", async () => {
    const r = relay({ maxPerIdentity: 2 });
    peer(r, "site-1");
    peer(r, "site-1");
    const third = peer(r, "site-1");
    const why = await third.conn.wait();
    expect(why.code).toBe(GoAwayCode.PROTOCOL);
    expect(why.message).toBe("too many connections for site-1: 2 open (the cap per certificate identity)");
    expect(r.refusals.at(-1)).toMatchObject({ code: RefusalCode.CAPACITY, presented: "site-1 (onsite)" });
    expect(r.table.total).toBe(2); // the refused one was never counted
    // Another identity is not held back by it.
    await peer(r, "site-2", { hello: true }).welcome;
  });

  test("a live connection counts against its identity too; closing one frees the place", async () => {
    const r = relay({ maxPerIdentity: 2 });
    const live = peer(r, "site-1", { hello: true });
    await live.welcome;
    const waiting = peer(r, "site-1");
    const refused = peer(r, "site-1");
    expect((await refused.conn.wait()).message).toMatch(/^too many connections for site-1/);
    waiting.conn.close(0, "bye");
    await waitFor(() => r.server.stats().pending_hello === 0, 5_000, "the waiting one to be gone");
    await peer(r, "site-1", { hello: true }).welcome; // replaces the live one, within the cap
  });

  test("the set waiting for a HELLO is capped", async () => {
    const r = relay({ maxPending: 3 });
    for (const id of ["a", "b", "c"]) peer(r, id);
    const d = peer(r, "d");
    expect((await d.conn.wait()).message).toBe("too many unauthenticated connections: 3 past TLS wait for their HELLO (the cap)");
    expect(r.server.stats().pending_hello).toBe(3);
  });

  test("with the unauthenticated table full (strangers before TLS), a verified peer is refused rather than let past the cap", async () => {
    const table = new AdmissionTable({ total: 2, perSource: 2, earlyDropFrom: 1 });
    const r = relay({ table });
    table.admit("203.0.113.9", 0);
    table.admit("203.0.113.9", 0);
    const p = peer(r, "site-1");
    expect((await p.conn.wait()).message).toBe("too many unauthenticated connections (waiting for their HELLO)");
    table.release("203.0.113.9");
    await peer(r, "site-1", { hello: true }).welcome;
  });
});

test("the WELCOME carries the redial spread for the fleet the relay knows", async () => {
  const r = relay({ spread: (n) => redialSpread(n * 1000, 250) });
  const first = peer(r, "site-1", { hello: true });
  expect(await first.welcome).toMatchObject({ spread: 4_000 }); // 1 device known at its WELCOME (×1000 here)
  const second = peer(r, "site-2", { hello: true });
  expect((await second.welcome).spread).toBe(8_000);
  // Without the hook (an older relay's behaviour) there is none.
  const plain = relay();
  expect((await peer(plain, "site-3", { hello: true }).welcome).spread).toBeUndefined();
});

test("refusals beyond the first few per source a minute are counted, not logged; one summary line says them", async () => {
  const throttle = new RefusalThrottle({ perSource: 2, window: 60_000 });
  const r = relay({ throttle });
  for (let i = 0; i < 5; i++) r.server.refusedAtTls("203.0.113.7", null, "no client certificate");
  expect(r.refusals.length).toBe(5); // the ring and metrics see every one
  expect(r.warnings.filter((w) => w.startsWith("refused")).length).toBe(2);
  expect(r.server.summarizeRefusals()).toEqual([]);
  r.clock.advance(60_000);
  const due = r.server.summarizeRefusals();
  expect(due).toMatchObject([{ source: "203.0.113.7", held: 3, codes: { no_certificate: 3 } }]);
  expect(r.warnings.at(-1)).toBe("refused 3 more connection(s) from 203.0.113.7 in 60 s beyond the first 2 logged (no_certificate 3)");
});
