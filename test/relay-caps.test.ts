// Caps that must hold under concurrency (issue 17 §4): the sessions one master may hold, and
// the requests one peer may have in flight on one connection.
//
// - SessionTable: the cap is checked where the record is made, so sessions still being
//   offered count (a reservation), and a burst cannot all pass a count taken before.
// - Connection: the 65th unanswered request is answered at once with `busy`.
// - The real relay and onsite processes, and a real master connection over TLS: waves of
//   parallel SESSION_OPENs past the per-master cap; exactly the cap succeeds, the rest are
//   refused with the cap's reason; a burst past the in-flight cap gets `busy` for the excess.
import { afterAll, describe, expect, test } from "bun:test";
import { linkPair } from "../src/transport/link.ts";
import { ErrorCode, Msg } from "../src/transport/messages.ts";
import { Connection, RemoteError } from "../src/transport/mux.ts";
import { Limits } from "../src/transport/policy.ts";
import { dialTls } from "../src/transport/tls.ts";
import { request } from "../src/transport/typed.ts";
import { parseBundle } from "../src/pki.ts";
import { SessionTable } from "../src/tunnel/relay/sessions.ts";
import { Fleet } from "./helpers/fleet.ts";
import { waitFor } from "./helpers/wait.ts";

describe("the session table reserves at open", () => {
  test("sessions still being offered count towards the cap; a closed one frees its place", () => {
    let n = 0;
    const t = new SessionTable<string>({ maxPerMaster: 3, newId: () => `s-${String(n++).padStart(4, "0")}` });
    const req = { master: "m", onsite: "o", targets: [], ttl: null, session: null };
    const opened = [1, 2, 3].map(() => t.open(req, { master: "mc", onsite: "oc" }, 0, 0));
    expect(opened.every((o) => o.ok)).toBe(true);
    // None was offered or accepted yet: the fourth is refused all the same.
    const fourth = t.open(req, { master: "mc", onsite: "oc" }, 0, 0);
    expect(fourth).toEqual({ ok: false, code: ErrorCode.REFUSED, message: "m already has 3 sessions (limit 3); end some with agent disconnect" });
    // Another master is not affected; re-opening one of m's own ids is not a new session.
    expect(t.open({ ...req, master: "m2" }, { master: "m2c", onsite: "oc" }, 0, 0).ok).toBe(true);
    const first = opened[0]!;
    if (!first.ok) throw new Error("unreachable");
    expect(t.open({ ...req, session: first.session.id }, { master: "mc", onsite: "oc" }, 0, 0).ok).toBe(true);
    // An offer refused frees its place.
    const second = opened[1]!;
    if (!second.ok) throw new Error("unreachable");
    t.offer(second.session);
    t.refuse(second.session);
    expect(t.open(req, { master: "mc", onsite: "oc" }, 0, 0).ok).toBe(true);
    expect(t.open(req, { master: "mc", onsite: "oc" }, 0, 0).ok).toBe(false);
  });
});

describe("requests in flight per connection", () => {
  test("past the cap a request is answered busy at once; answers free places", async () => {
    const [a, b] = linkPair();
    const asker = new Connection(a, { side: "dialer" });
    const server = new Connection(b, { side: "acceptor", maxRequestsInFlight: 4 });
    const release: (() => void)[] = [];
    let started = 0;
    server.handle(Msg.SESSIONS, () => {
      started++;
      return new Promise((r) => release.push(() => r([])));
    });
    const first = Array.from({ length: 6 }, () => asker.request(Msg.SESSIONS, {}).then(() => "ok", (e: RemoteError) => e.code));
    // Two were refused without waiting for the four in flight.
    const refused = await Promise.race([Promise.all(first.slice(4)), Bun.sleep(5000).then(() => "timeout")]);
    expect(refused).toEqual([ErrorCode.BUSY, ErrorCode.BUSY]);
    expect(started).toBe(4);
    expect(server.requestsInFlight).toBe(4);
    for (const r of release.splice(0)) r();
    expect(await Promise.all(first.slice(0, 4))).toEqual(["ok", "ok", "ok", "ok"]);
    expect(server.requestsInFlight).toBe(0);
    // Free again: a new request is served.
    const again = asker.request(Msg.SESSIONS, {});
    await waitFor(() => release.length === 1, 5000, "the handler to run");
    release[0]!();
    expect(await again).toEqual([]);
    asker.close();
  });

  test("a handler that throws frees its place too", async () => {
    const [a, b] = linkPair();
    const asker = new Connection(a, { side: "dialer" });
    const server = new Connection(b, { side: "acceptor", maxRequestsInFlight: 2 });
    server.handle(Msg.SESSIONS, () => {
      throw new RemoteError(ErrorCode.FORBIDDEN, "no");
    });
    for (let i = 0; i < 5; i++) {
      const codes = await Promise.all([1, 2].map(() => asker.request(Msg.SESSIONS, {}).catch((e: RemoteError) => e.code)));
      expect(codes).toEqual([ErrorCode.FORBIDDEN, ErrorCode.FORBIDDEN]);
    }
    expect(server.requestsInFlight).toBe(0);
    asker.close();
  });
});

describe("the relay process under parallel session opens from a real master connection", () => {
  let fleet: Fleet | undefined;
  let conn: Connection | undefined;
  afterAll(async () => {
    conn?.close();
    await fleet?.close();
  });

  test("waves of parallel opens stop at exactly the per-master cap; a burst past the in-flight cap gets busy", async () => {
    fleet = await Fleet.create();
    await fleet.startRelay("relay-caps");
    const onsite = await fleet.startOnsite("site-caps", ["--allow", "127.0.0.1/32"]);
    await fleet.waitConnected(onsite);
    const b = parseBundle(await Bun.file(await fleet.issue("master", "tech-caps")).text(), "tech-caps.bundle");
    const link = await dialTls({ host: "127.0.0.1", port: fleet.relayPort, tls: b, timeout: 10_000 });
    const c = (conn = new Connection(link, { side: "dialer", maxControlIn: 16 * 1024 * 1024 }));
    const welcomed = new Promise((r) => c.on(Msg.WELCOME, r));
    c.send(Msg.HELLO, { versions: [1], role: "master", id: "tech-caps", agent: "caps-test" });
    await welcomed;
    await waitFor(async () => (await request(c, Msg.DEVICES, {})).some((d) => d.id === "site-caps" && d.online), 10_000, "site-caps online at the relay");

    const open = () =>
      request(c, Msg.SESSION_OPEN, { onsite: "site-caps", targets: ["127.0.0.1:9"], ttl: null, session: null }, 30_000).then(
        (s) => ({ ok: true as const, id: s.session }),
        (e: RemoteError) => ({ ok: false as const, code: e.code, message: e.message }),
      );
    // A burst of 100 at once: at most maxRequestsInFlight are taken, the rest are busy.
    const burst = await Promise.all(Array.from({ length: 100 }, open));
    const busy = burst.filter((r) => !r.ok && r.code === ErrorCode.BUSY).length;
    const okBurst = burst.filter((r) => r.ok).length;
    expect(busy).toBeGreaterThanOrEqual(100 - Limits.maxRequestsInFlight);
    expect(okBurst + busy).toBe(100);
    // Then waves of parallel opens, each within the in-flight cap, until well past the session cap.
    const results = [...burst];
    while (results.filter((r) => r.ok).length < Limits.maxSessionsPerMaster + 20 && results.length < 2000) {
      const wave = await Promise.all(Array.from({ length: Limits.maxRequestsInFlight }, open));
      results.push(...wave);
      if (wave.every((r) => !r.ok && r.code === ErrorCode.REFUSED)) break;
    }
    const ok = results.filter((r) => r.ok);
    const capped = results.filter((r) => !r.ok && r.code === ErrorCode.REFUSED);
    expect(ok.length).toBe(Limits.maxSessionsPerMaster);
    expect(new Set(ok.map((r) => r.id)).size).toBe(Limits.maxSessionsPerMaster);
    expect(capped.length).toBeGreaterThan(0);
    for (const r of capped) if (!r.ok) expect(r.message).toBe(`tech-caps already has ${Limits.maxSessionsPerMaster} sessions (limit ${Limits.maxSessionsPerMaster}); end some with agent disconnect`);
    // The relay agrees: exactly the cap is active.
    expect((await request(c, Msg.SESSIONS, {}, 30_000)).length).toBe(Limits.maxSessionsPerMaster);
    // Ending one frees one place, and only one.
    const first = ok[0]!;
    if (first.ok) await request(c, Msg.SESSION_END, { session: first.id, reason: null });
    const after = await Promise.all(Array.from({ length: 8 }, open));
    expect(after.filter((r) => r.ok).length).toBe(1);
  }, 90_000);
});
