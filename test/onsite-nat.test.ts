// The onsite role's handling of NAT requests inside sessions, over an in-memory link to a
// relay-side connection (the real Connection, SessionServer and NatService; the firewall is
// the in-memory FakeBackend). The system test (test/nat-session.test.ts) covers the real
// firewall and processes; this covers an ordering that a real run cannot force: a session
// that ends while its rule is still being validated.
import { expect, test } from "bun:test";
import { ControlServer } from "../src/control.ts";
import { resolveConfig } from "../src/config.ts";
import { createLogger } from "../src/log.ts";
import { parseIPv4 } from "../src/netaddr.ts";
import { FakeBackend } from "../src/nat/backend.ts";
import { NatService } from "../src/nat/service.ts";
import { MemoryRuleStore } from "../src/nat/store.ts";
import type { Bundle } from "../src/pki.ts";
import { OnsiteRole } from "../src/roles/onsite.ts";
import { linkPair } from "../src/transport/link.ts";
import { ErrorCode, Msg } from "../src/transport/messages.ts";
import { Connection, RemoteError } from "../src/transport/mux.ts";
import { waitFor } from "./helpers/wait.ts";

function harness() {
  // The log is kept: a test waits on its lines (the close handled) instead of sleeping.
  const lines: string[] = [];
  const log = createLogger({ level: "info", write: (l) => void lines.push(l) });
  const cfg = resolveConfig([{ origin: { kind: "flag" }, raw: { relay: "127.0.0.1:9", allow: ["192.168.1.0/24"], state_dir: "/nonexistent-agent-onsite-nat" } }]);
  // The device's addresses are read before the rule exists: the step a gate holds here.
  let release: () => void = () => {};
  let gated = false;
  let waiting: (() => void) | undefined;
  const backend = new FakeBackend();
  const svc = new NatService({
    backend,
    store: new MemoryRuleStore(),
    limits: { minTtlMs: 1000, maxTtlMs: 3_600_000, maxRules: 10, allowAnySource: false, allow: cfg.allow },
    keepOnStop: false,
    ownAddresses: async () => {
      if (gated) {
        waiting?.();
        await new Promise<void>((r) => (release = r));
      }
      return [{ addr: parseIPv4("192.168.1.1"), prefix: 24 }];
    },
    cutFlows: async () => {},
    log,
  });
  const bundle = { id: "site-1" } as Bundle; // only the id is read: the role is never started
  const role = new OnsiteRole(cfg, bundle, log, new ControlServer("/nonexistent/sock", log), svc);
  const [a, b] = linkPair("198.51.100.1", "198.51.100.2");
  const onsiteConn = new Connection(a, { side: "dialer" });
  const relayConn = new Connection(b, { side: "acceptor" });
  role.sessions.setup(onsiteConn);
  return {
    svc,
    backend,
    relayConn,
    lines,
    gate: () => {
      gated = true;
      return new Promise<void>((r) => (waiting = r));
    },
    open: () => relayConn.request(Msg.SESSION_OFFER, { session: "s-1", master: "tech-1", targets: ["192.168.1.50:80"], expires: null }),
    ask: () => relayConn.request(Msg.NAT_REQUEST, { session: "s-1", source: "203.0.113.7", proto: "tcp", port: "8080", to: "192.168.1.50:80", ttl: "1m" }),
    release: () => release(),
  };
}

test("a rule inside a session is owned by it, sourced from the relay's `source`, and goes with SESSION_CLOSE", async () => {
  const h = harness();
  await h.open();
  const res = (await h.ask()) as { rule: { src: string; owner: string } };
  expect(res.rule).toMatchObject({ src: "203.0.113.7/32", owner: "s-1" });
  expect(h.backend.installed.size).toBe(1);
  h.relayConn.send(Msg.SESSION_CLOSE, { session: "s-1", reason: "ended", final: true });
  await waitFor(() => h.svc.list().length === 0, 5_000, "the session's rule to go");
  expect(h.svc.list()).toEqual([]);
  expect(h.backend.installed.size).toBe(0);
});

test("a session that ends while its rule is being added does not leave the rule behind", async () => {
  const h = harness();
  await h.open();
  const entered = h.gate();
  const asked = h.ask().then(
    () => null,
    (e: unknown) => e,
  );
  await entered; // the add is past the session check, before the rule exists
  h.relayConn.send(Msg.SESSION_CLOSE, { session: "s-1", reason: "master left", final: false });
  // The close is handled (its removeByOwner finds nothing yet) before the add goes on.
  await waitFor(() => h.lines.some((l) => l.includes("session s-1 closed")), 5_000, () => `the session close to be handled; log: ${h.lines.join("")}`);
  h.release();
  const err = await asked;
  expect(err).toBeInstanceOf(RemoteError);
  expect((err as RemoteError).code).toBe(ErrorCode.NO_SESSION);
  expect((err as RemoteError).message).toMatch(/session s-1 ended while its NAT rule was being added; the rule was removed/);
  expect(h.svc.list()).toEqual([]);
  expect(h.backend.installed.size).toBe(0);
});

test("a request for a session the device does not serve is refused before any rule", async () => {
  const h = harness();
  const err = await h.ask().then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toMatchObject({ code: ErrorCode.NO_SESSION, message: 'no session "s-1" on site-1' });
  expect(h.backend.applies).toBe(0);
});

test("a request is bound to its session: a target outside it is refused before any rule; the TTL is capped to the session's end", async () => {
  const h = harness();
  const ends = new Date(Date.now() + 20_000).toISOString();
  await h.relayConn.request(Msg.SESSION_OFFER, { session: "s-2", master: "tech-1", targets: ["192.168.1.50:80"], expires: ends });
  const ask = (to: string, ttl = "1m") => h.relayConn.request(Msg.NAT_REQUEST, { session: "s-2", source: "203.0.113.7", proto: "tcp", port: "8080", to, ttl });
  const err = await ask("192.168.1.51:80").then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toMatchObject({ code: ErrorCode.BAD_REQUEST, message: expect.stringMatching(/^to: 192\.168\.1\.51:80 is not one of session s-2's targets \(192\.168\.1\.50:80\)/) });
  expect(h.backend.applies).toBe(0);
  const res = (await ask("192.168.1.50:80")) as { rule: { expires: string; remaining_ms: number }; capped: string };
  expect(Date.parse(res.rule.expires)).toBeLessThanOrEqual(Date.parse(ends));
  expect(res.rule.remaining_ms).toBeLessThanOrEqual(20_000);
  expect(res.capped).toMatch(/^ttl 1m capped to \d+s: the rule ends with session s-2/);
});

test("a master revokes its session's rule early (NAT_REQUEST revoke); another session's rule, or an unknown id, is refused", async () => {
  const h = harness();
  await h.open();
  await h.relayConn.request(Msg.SESSION_OFFER, { session: "s-3", master: "tech-2", targets: ["192.168.1.50:80"], expires: null });
  const mine = ((await h.ask()) as { rule: { id: string } }).rule.id;
  const theirs = ((await h.relayConn.request(Msg.NAT_REQUEST, { session: "s-3", source: "203.0.113.8", proto: "tcp", port: "8081", to: "192.168.1.50:80", ttl: "1m" })) as { rule: { id: string } }).rule.id;
  expect(h.backend.installed.size).toBe(2);
  const refused = (session: string, revoke: string) => h.relayConn.request(Msg.NAT_REQUEST, { session, revoke, source: "203.0.113.7" }).then(() => null, (e: unknown) => e);
  expect(await refused("s-1", theirs)).toMatchObject({ code: ErrorCode.NO_SESSION, message: expect.stringContaining(`no NAT rule "${theirs}" of session s-1 on site-1`) });
  expect(await refused("s-1", "nope")).toMatchObject({ code: ErrorCode.NO_SESSION });
  expect(h.backend.installed.size).toBe(2);
  const res = (await h.relayConn.request(Msg.NAT_REQUEST, { session: "s-1", revoke: mine, source: "203.0.113.7" })) as { rule: { id: string }; revoked: boolean };
  expect(res).toMatchObject({ rule: { id: mine }, revoked: true });
  expect(h.svc.list().map((r) => r.id)).toEqual([theirs]);
  expect(h.backend.installed.size).toBe(1);
});
