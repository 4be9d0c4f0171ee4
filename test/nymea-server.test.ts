// NymeaServer over in-memory connections and a FakeClock: each connection's life, the four
// timers with upstream's kill texts, authenticator outcomes, pairing, the third client, the
// duplicate uuid, rate limiting and the pause/resume of a tunnel's backpressure. No sockets.
import { describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import type { Authenticator } from "../src/tunnel/nymea/auth.ts";
import { KILL, type AuthError } from "../src/tunnel/nymea/protocol.ts";
import { NymeaServer, type NymeaConn, type NymeaConnEvents } from "../src/tunnel/nymea/server.ts";

class MemConn implements NymeaConn {
  readonly transport: "tcp" | "ws";
  lines: string[] = [];
  forwarded: (Uint8Array | string)[] = [];
  killed: string | null = null;
  paused = false;
  full = false;
  ev!: NymeaConnEvents;
  constructor(readonly address = "10.0.0.1", transport: "tcp" | "ws" = "tcp") {
    this.transport = transport;
  }
  send(line: string) {
    if (this.killed === null) this.lines.push(line);
  }
  forward(d: Uint8Array | string) {
    this.forwarded.push(d);
    return !this.full;
  }
  pause() {
    this.paused = true;
  }
  resume() {
    this.paused = false;
  }
  kill(reason: string) {
    this.killed ??= reason;
  }
  json(i: number) {
    return JSON.parse(this.lines[i]!);
  }
}

class MockAuth implements Authenticator {
  kind = "mock";
  calls = 0;
  constructor(public outcome: AuthError = "AuthenticationErrorNoError", public hang = false) {}
  authenticate(_r: unknown, signal: AbortSignal): Promise<AuthError> {
    this.calls++;
    if (this.hang) return new Promise((_res, rej) => signal.addEventListener("abort", () => rej(new Error("aborted"))));
    return Promise.resolve(this.outcome);
  }
}

function setup(auth = new MockAuth(), timeouts = {}) {
  const clock = new FakeClock();
  const server = new NymeaServer({ name: "test-relay", authenticator: () => auth, clock, timeouts, limiter: { burst: 3, refillMs: 10_000, maxSources: 100 } });
  const connect = (address?: string, transport?: "tcp" | "ws") => {
    const c = new MemConn(address, transport);
    c.ev = server.accept(c);
    return c;
  };
  return { clock, server, connect, auth };
}

const authMsg = (id: number, token: string, nonce?: string, uuid: string = crypto.randomUUID(), name = "client") =>
  JSON.stringify({ id, method: "Authentication.Authenticate", params: { name, token, uuid, ...(nonce !== undefined ? { nonce } : {}) } }) + "\n";

async function authenticate(c: MemConn, clock: FakeClock, token: string, nonce?: string, uuid?: string, name?: string) {
  c.ev.data(Buffer.from(authMsg(1, token, nonce, uuid, name)));
  await clock.settle();
}

describe("JSON-RPC on a connection", () => {
  test("Hello, then Introspect, answered in order; the connection stays", () => {
    const { connect } = setup();
    const c = connect();
    c.ev.data('{"id":0,"method":"RemoteProxy.Hello"}\n{"id":1,"method":"RemoteProxy.Introspect"}');
    expect(c.json(0)).toEqual({ id: 0, params: { apiVersion: "5", name: "test-relay", server: "nymea-remoteproxy", version: "1.8.4" }, status: "success" });
    expect(c.json(1).params.methods["RemoteProxy.Hello"]).toBeDefined();
    expect(c.killed).toBeNull();
  });
  test("an error answers, then kills; later packets of the same chunk are not processed", () => {
    const { connect } = setup();
    const c = connect();
    c.ev.data('{"id":3,"method":"Nope.X"}\n{"id":4,"method":"RemoteProxy.Hello"}');
    expect(c.lines).toEqual(['{"error":"No such namespace","id":3,"status":"error"}\n']);
    expect(c.killed).toBe(KILL.rpcError);
  });
  test("buffer violation: killed without an answer", () => {
    const { connect } = setup();
    const c = connect();
    c.ev.data(new Uint8Array(10_241).fill(0x61));
    expect(c.lines).toEqual([]);
    expect(c.killed).toBe(KILL.bufferViolation);
  });
});

describe("authenticator outcomes (upstream's authenticate rows)", () => {
  test.each(["AuthenticationErrorAuthenticationFailed", "AuthenticationErrorProxyError", "AuthenticationErrorAborted", "AuthenticationErrorUnknown"] as const)("%s: status success with that error, then killed", async (outcome) => {
    const { connect, clock } = setup(new MockAuth(outcome));
    const c = connect();
    await authenticate(c, clock, "t");
    expect(c.json(0)).toEqual({ id: 1, params: { authenticationError: outcome }, status: "success" });
    expect(c.killed).toBe(KILL.authFailed);
  });
  test("no error, with and without a nonce: authenticated, waiting", async () => {
    const { connect, clock, server } = setup();
    const a = connect();
    const b = connect();
    await authenticate(a, clock, "t");
    await authenticate(b, clock, "t", "n");
    for (const c of [a, b]) expect(c.json(0).params.authenticationError).toBe("AuthenticationErrorNoError");
    expect(server.stats()).toMatchObject({ clients: 2, authenticated: 2, tunnels: 0 });
  });
  test("the authenticator does not answer: AuthenticationErrorTimeout after authentication_timeout", async () => {
    const { connect, clock } = setup(new MockAuth("AuthenticationErrorNoError", true), { authentication: 500, inactive: 60_000 });
    const c = connect();
    await authenticate(c, clock, "t");
    clock.advance(499);
    await clock.settle();
    expect(c.lines).toEqual([]);
    clock.advance(1);
    await clock.settle();
    expect(c.json(0).params.authenticationError).toBe("AuthenticationErrorTimeout");
    expect(c.killed).toBe(KILL.authFailed);
  });
  test("jsonrpc timeout shorter than the authenticator: Command timed out, then killed", async () => {
    const { connect, clock } = setup(new MockAuth("AuthenticationErrorNoError", true), { authentication: 10_000, jsonrpc: 1_000, inactive: 60_000 });
    const c = connect();
    await authenticate(c, clock, "t");
    clock.advance(1_000);
    await clock.settle();
    expect(c.lines).toEqual(['{"error":"Command timed out","id":1,"status":"error"}\n']);
    expect(c.killed).toBe(KILL.rpcTimeout);
  });
  test("failed attempts are rate-limited per source: the authenticator is no longer asked", async () => {
    const auth = new MockAuth("AuthenticationErrorAuthenticationFailed");
    const { connect, clock, server } = setup(auth);
    for (let i = 0; i < 5; i++) await authenticate(connect("10.9.9.9"), clock, "guess");
    expect(auth.calls).toBe(3);
    expect(server.stats().rate_limited).toBe(2);
    await authenticate(connect("10.1.1.1"), clock, "guess");
    expect(auth.calls).toBe(4); // another source is not affected
    clock.advance(10_000);
    await authenticate(connect("10.9.9.9"), clock, "guess");
    expect(auth.calls).toBe(5);
  });
});

describe("unauthenticated connections per source", () => {
  test("over the cap a connection is closed at once; authenticating frees a place; other sources are not affected", async () => {
    const clock = new FakeClock();
    const server = new NymeaServer({ name: "x", authenticator: () => new MockAuth(), clock, maxUnauthenticatedPerSource: 2 });
    const connect = (address: string) => {
      const c = new MemConn(address);
      c.ev = server.accept(c);
      return c;
    };
    const [a, b] = [connect("10.0.0.9"), connect("10.0.0.9")];
    const c = connect("10.0.0.9");
    expect(c.killed).toBe(KILL.sourceCap);
    expect(connect("10.0.0.8").killed).toBeNull();
    await authenticate(a, clock, "t");
    expect(connect("10.0.0.9").killed).toBeNull(); // a is authenticated now
    b.ev.closed();
    expect(connect("10.0.0.9").killed).toBeNull();
    expect(connect("10.0.0.9").killed).toBe(KILL.sourceCap);
    expect(server.stats().over_source_cap).toBe(2);
  });
});

describe("timers", () => {
  test("inactive: killed after inactive_timeout; every chunk restarts it", async () => {
    const { connect, clock } = setup(undefined, { inactive: 1_000 });
    const c = connect();
    clock.advance(900);
    c.ev.data('{"id":0,');
    clock.advance(900);
    expect(c.killed).toBeNull();
    clock.advance(100);
    expect(c.killed).toBe(KILL.inactive);
  });
  test("alone: an authenticated client without a partner is killed after alone_timeout", async () => {
    const { connect, clock } = setup(undefined, { alone: 2_000, inactive: 500 });
    const c = connect();
    await authenticate(c, clock, "t");
    clock.advance(1_999);
    expect(c.killed).toBeNull(); // the inactive timer stopped at authentication
    clock.advance(1);
    expect(c.killed).toBe(KILL.alone);
  });
  test("a tunnel has no timer", async () => {
    const { connect, clock } = setup(undefined, { alone: 100, inactive: 100 });
    const a = connect();
    const b = connect();
    await authenticate(a, clock, "t");
    await authenticate(b, clock, "t");
    clock.advance(3_600_000);
    expect(a.killed).toBeNull();
    expect(b.killed).toBeNull();
    expect(clock.pending).toBe(0);
  });
});

describe("pairing", () => {
  test("the second gets its answer, then the notification; each learns the other's name and uuid; bytes flow both ways", async () => {
    const { connect, clock, server } = setup();
    const a = connect();
    const b = connect("10.0.0.2", "ws");
    const ua = crypto.randomUUID();
    await authenticate(a, clock, "t", "n", `{${ua.toUpperCase()}}`, "box");
    await authenticate(b, clock, "t", "n", "not-a-uuid", "app");
    expect(b.lines.length).toBe(2);
    expect(b.json(0).params.authenticationError).toBe("AuthenticationErrorNoError");
    expect(b.json(1)).toEqual({ id: 1, notification: "RemoteProxy.TunnelEstablished", params: { name: "box", uuid: ua } });
    expect(a.json(1)).toEqual({ id: 0, notification: "RemoteProxy.TunnelEstablished", params: { name: "app", uuid: "00000000-0000-0000-0000-000000000000" } });
    a.ev.data(new Uint8Array([0, 1, 255]));
    b.ev.data("héllo");
    expect(b.forwarded).toEqual([new Uint8Array([0, 1, 255])]);
    expect(a.forwarded).toEqual(["héllo"]);
    expect(server.stats()).toMatchObject({ tunnels: 1, total_tunnels: 1, total_traffic: 3 + 6 });
    // Either side closing kills the other.
    a.ev.closed();
    expect(b.killed).toBe(KILL.partnerGone);
    expect(server.stats()).toMatchObject({ clients: 0, tunnels: 0 });
  });
  test("data while authenticated but alone kills", async () => {
    const { connect, clock } = setup();
    const a = connect();
    await authenticate(a, clock, "t");
    a.ev.data("x");
    expect(a.killed).toBe(KILL.dataBeforeTunnel);
  });
  test("the third client is killed without an answer; the tunnel of the first two keeps forwarding and closing together", async () => {
    const { connect, clock } = setup();
    const [a, b, x] = [connect(), connect(), connect()];
    await authenticate(a, clock, "t", "n");
    await authenticate(b, clock, "t", "n");
    await authenticate(x, clock, "t", "n");
    expect(x.lines).toEqual([]);
    expect(x.killed).toBe(KILL.tunnelExists);
    x.ev.closed();
    a.ev.data("still here");
    expect(b.forwarded).toEqual(["still here"]);
    b.ev.closed();
    expect(a.killed).toBe(KILL.partnerGone);
  });
  test("different tokens, same nonce: never paired", async () => {
    const { connect, clock, server } = setup();
    const [a, b] = [connect(), connect()];
    await authenticate(a, clock, "t1", "n");
    await authenticate(b, clock, "t2", "n");
    expect(server.stats().tunnels).toBe(0);
    expect(a.lines.length + b.lines.length).toBe(2); // answers only, no notification
  });
  test("duplicate uuid: both killed, the newcomer without an answer", async () => {
    const { connect, clock } = setup();
    const [a, b] = [connect(), connect()];
    const u = crypto.randomUUID();
    await authenticate(a, clock, "t", undefined, u);
    await authenticate(b, clock, "t", undefined, u);
    expect(a.killed).toBe(KILL.duplicateUuid);
    expect(b.killed).toBe(KILL.loop);
    expect(b.lines).toEqual([]);
  });
  test("backpressure: a full partner pauses the sender until it drains", async () => {
    const { connect, clock } = setup();
    const [a, b] = [connect(), connect()];
    await authenticate(a, clock, "t");
    await authenticate(b, clock, "t");
    b.full = true;
    a.ev.data("x");
    expect(a.paused).toBe(true);
    b.full = false;
    b.ev.drain();
    expect(a.paused).toBe(false);
  });
  test("notification ids count server-wide from 0", async () => {
    const { connect, clock } = setup();
    const ids: number[] = [];
    for (const n of ["p", "q"]) {
      const [a, b] = [connect(), connect()];
      await authenticate(a, clock, "t", n);
      await authenticate(b, clock, "t", n);
      ids.push(a.json(1).id, b.json(1).id);
    }
    expect(ids).toEqual([0, 1, 2, 3]);
  });
});
