// The relay as a real process speaking nymea-remoteproxy's protocol ([nymea] in agent.toml),
// with clients written from the protocol text over real TLS and WebSocket
// (test/fixtures/nymea/clients.ts). Ports upstream's offline test semantics (1.8.4
// tests/test-proxy, as PROTOCOLS.md lists them), shows the two upstream pairing bugs fixed and
// feeds the relay bad input. Two relays: "A" (TLS with its own PEM certificate, a tokens file,
// a monitor socket, upstream's default timers) and "B" (plain on loopback, an HTTP authorizer
// this test serves, short timers for the timeout rows).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Socket } from "bun";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { run } from "./helpers/proc.ts";
import { holdsFor, waitFor } from "./helpers/wait.ts";
import { auth, hello, TcpClient, WsClient, type Client } from "./fixtures/nymea/clients.ts";

let fleet: Fleet;
let A: Daemon;
let B: Daemon;
let aTcp = 0;
let aWs = 0;
let bTcp = 0;
let bWs = 0;
let tokensFile = "";
let monitorSock = "";
let authorizer: ReturnType<typeof Bun.serve>;
const hanging: (() => void)[] = [];
const open: Client[] = [];
let slow: WsClient;
let drip: ReturnType<typeof setInterval> | undefined;

const TOKEN = "token-" + randomBytes(8).toString("hex");

async function ports(d: Daemon): Promise<{ tcp: number; ws: number }> {
  const st = await fleet.status(d);
  const n = (st.relay as { nymea: { tcp: string; ws: string } }).nymea;
  return { tcp: Number(n.tcp.split(":").pop()), ws: Number(n.ws.split(":").pop()) };
}

const tcp = async (port = aTcp, tls = true) => {
  const c = await TcpClient.connect(port, tls);
  open.push(c);
  return c;
};
const ws = async (port = aWs, opts: { tls?: boolean; path?: string } = {}) => {
  const c = await WsClient.connect(port, opts);
  open.push(c);
  return c;
};

beforeAll(async () => {
  fleet = await Fleet.create();
  // A's own certificate (RSA, as upstream takes), made by the real openssl.
  const cert = join(fleet.dir, "proxy.pem");
  const key = join(fleet.dir, "proxy.key");
  const r = await run(["openssl", "req", "-x509", "-nodes", "-newkey", "rsa:2048", "-days", "2", "-subj", "/CN=nymea-test-proxy", "-keyout", key, "-out", cert]);
  if (r.code !== 0) throw new Error(`openssl: ${r.stderr}`);
  tokensFile = join(fleet.dir, "nymea-tokens");
  writeFileSync(tokensFile, `# accepted tokens\n${TOKEN}\nsecond-token   # a box\n`);
  monitorSock = join(fleet.dir, "monitor.sock");
  const aConf = join(fleet.dir, "a.toml");
  writeFileSync(
    aConf,
    `[nymea]\ntcp = "127.0.0.1:0"\nws = "127.0.0.1:0"\nname = "agent-relay-a"\ntokens = "${tokensFile}"\ncertificate = "${cert}"\nkey = "${key}"\nmonitor = "${monitorSock}"\n`,
  );
  authorizer = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const { token } = (await req.json()) as { token: string };
      if (token === "good") return Response.json({ isValid: true });
      if (token === "bad") return Response.json({ isValid: false });
      if (token === "broken") return new Response("oops", { status: 500 });
      if (token === "garbled") return Response.json({ valid: "yes" });
      return new Promise<Response>((res) => hanging.push(() => res(Response.json({ isValid: true }))));
    },
  });
  const bConf = join(fleet.dir, "b.toml");
  writeFileSync(
    bConf,
    `[nymea]\ntcp = "127.0.0.1:0"\nws = "127.0.0.1:0"\nplain = true\nauthorizer = "http://127.0.0.1:${authorizer.port}/check"\ninactive_timeout = "1500ms"\nalone_timeout = "1500ms"\nauthentication_timeout = "1s"\n`,
  );
  for (const id of ["relay-a", "relay-b"]) await fleet.issue("relay", id, ["--host", "127.0.0.1"]);
  [A, B] = await Promise.all([fleet.startRelay("relay-a", ["--config", aConf]), fleet.start("relay", "relay-b", ["--listen", "127.0.0.1:0", "--config", bConf])]);
  ({ tcp: aTcp, ws: aWs } = await ports(A));
  ({ tcp: bTcp, ws: bWs } = await ports(B));
  // A slowloris on B's WebSocket handshake drips one header byte every 300 ms while every other
  // test runs; the last test shows it was cut (by Bun's HTTP server, ~10-12 s) and the others
  // were served meanwhile.
  slow = await WsClient.raw(bWs, false);
  open.push(slow);
  await slow.writeRaw(`GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nX-Slow: `);
  drip = setInterval(() => void (!slow.closed && slow.writeRaw("a")), 300);
}, 60_000);

afterAll(async () => {
  clearInterval(drip);
  for (const c of open) if (!c.closed) c.end();
  for (const h of hanging) h();
  authorizer?.stop(true);
  await fleet?.close();
});

describe("Hello and Introspect over both transports (getHello, getIntrospect, clientConnection*)", () => {
  test("TCP over TLS: the relay presents its [nymea] certificate; Hello names it; Introspect lists the API", async () => {
    const c = await tcp();
    const peer = (c as unknown as { sock: Socket<undefined> }).sock.getPeerCertificate() as { subject?: { CN?: string } };
    expect(peer.subject?.CN).toBe("nymea-test-proxy");
    await c.send(hello(0));
    expect(await c.line()).toEqual({ id: 0, params: { apiVersion: "5", name: "agent-relay-a", server: "nymea-remoteproxy", version: "1.8.4" }, status: "success" });
    await c.send({ id: 1, method: "RemoteProxy.Introspect" });
    const i = await c.line();
    expect(i).toMatchObject({ id: 1, status: "success" });
    expect(Object.keys(i.params)).toEqual(["methods", "notifications", "types"]);
  });
  test("a client that checks the certificate against public CAs refuses this self-signed one (sslConfigurations)", async () => {
    let err = "";
    await new Promise<void>((res) => {
      void Bun.connect({
        hostname: "127.0.0.1",
        port: aTcp,
        tls: { rejectUnauthorized: true },
        socket: {
          handshake(_s, ok, e) {
            err = ok ? "" : String((e as { code?: string } | undefined)?.code ?? e?.message ?? "failed");
            res();
          },
          data() {},
          error(_s, e) {
            err = String((e as { code?: string }).code ?? e.message);
            res();
          },
          close() {
            res();
          },
        },
      }).catch((e: Error) => {
        err = e.message;
        res();
      });
    });
    expect(err).toMatch(/SELF_SIGNED|self.signed|DEPTH_ZERO|UNABLE_TO_VERIFY|verify/i);
  });
  test("WebSocket over TLS, any path: upstream's upgrade headers, no subprotocol; answers are text frames ending in }\\n", async () => {
    const c = await ws(aWs, { path: "/some/where?x=1" });
    expect(c.headers.server).toBe("nymea-remoteproxy");
    expect(c.headers["access-control-allow-origin"]).toBe("*");
    expect(c.headers["sec-websocket-protocol"]).toBeUndefined();
    await c.send(hello(7));
    expect(await c.line()).toMatchObject({ id: 7, params: { name: "agent-relay-a", server: "nymea-remoteproxy" } });
    await c.send({ id: 8, method: "RemoteProxy.Introspect" });
    expect((await c.line()).params.types.AuthenticationError).toHaveLength(6);
  });
  test("a WebSocket ping gets its payload back", async () => {
    const c = await ws();
    await c.frame(9, "ping-payload");
    await waitFor(() => c.messages.find((m) => m.opcode === 10), 10_000, "a pong");
    expect(c.messages.find((m) => m.opcode === 10)!.data.toString()).toBe("ping-payload");
  });
});

describe("API errors answer, then close (apiBasicCalls, apiBasicCallsTcp) and bad input", () => {
  const rows: [string, string, Record<string, unknown>][] = [
    ["missing id", '{"method":"RemoteProxy.Hello"}\n', { error: "Error parsing command. Missing 'id'", id: -1, status: "error" }],
    ["missing method", '{"id":42}\n', { error: "Error parsing method. Got: ''', Expected: 'Namespace.method'", id: 42, status: "error" }],
    ["malformed JSON", '{"id":42,"method":"RemoteProxy.Hello}\n', { error: "Failed to parse JSON data: unterminated string", id: -1, status: "error" }],
    ["invalid namespace", '{"id":42,"method":"Foo.Hello"}\n', { error: "No such namespace", id: 42, status: "error" }],
    ["invalid method", '{"id":42,"method":"RemoteProxy.Bye"}\n', { error: "No such method", id: 42, status: "error" }],
    ["forbidden params", '{"id":42,"method":"RemoteProxy.Hello","params":{"evil":1}}\n', { error: 'Invalid params: Forbidden key "evil" in {\n    "evil": 1\n}\n', id: 42, status: "error" }],
    ["bad authenticate params", '{"id":42,"method":"Authentication.Authenticate","params":{"token":"x"}}\n', { error: 'Invalid params: Missing key name in {\n    "token": "x"\n}\n', id: 42, status: "error" }],
  ];
  test.each(rows)("TCP: %s", async (_n, text, want) => {
    const c = await tcp();
    await c.writeRaw(text);
    expect(await c.line()).toEqual(want);
    await c.waitClosed();
  });
  test.each(rows)("WebSocket: %s (close 1011)", async (_n, text, want) => {
    const c = await ws();
    await c.text(text);
    expect(await c.line()).toEqual(want);
    expect((await c.closedWith()).code).toBe(1011);
  });
  test("an id as a numeric string and as 7.9 are read as Qt does", async () => {
    const c = await tcp();
    await c.writeRaw('{"id":"7","method":"RemoteProxy.Hello"}\n');
    expect((await c.line()).id).toBe(7);
    await c.writeRaw('{"id":7.9,"method":"RemoteProxy.Hello"}');
    expect((await c.line()).id).toBe(8);
  });
  test("a 10 KiB line without an end: closed without an answer (TCP) / 1011 'Data buffer size violation.' (WS)", async () => {
    const t = await tcp();
    await t.writeRaw('{"id":1,"method":"RemoteProxy.Hello","pad":"' + "a".repeat(10_300));
    await t.waitClosed();
    expect(t.buffered).toBe(0);
    const w = await ws();
    await w.text('{"id":1,"pad":"' + "a".repeat(10_300));
    expect(await w.closedWith()).toEqual({ code: 1011, reason: "Data buffer size violation." });
    expect(w.messages).toEqual([]);
  });
  test("fragmented WebSocket frames are one message; one JSON object may span two messages, and one message hold two", async () => {
    const c = await ws();
    const text = JSON.stringify(hello(3));
    await c.frame(1, text.slice(0, 5), false);
    await c.frame(0, text.slice(5, 12), false);
    await c.frame(0, text.slice(12), true);
    expect((await c.line()).id).toBe(3);
    await c.text('{"id":4,"method":');
    await c.text('"RemoteProxy.Hello"}\n{"id":5,"method":"RemoteProxy.Hello"}');
    expect((await c.line()).id).toBe(4);
    expect((await c.line()).id).toBe(5);
  });
  test("a binary WebSocket frame closes with 1011 'Binary message not expected.' (websocketBinaryData)", async () => {
    const c = await ws();
    await c.frame(2, new Uint8Array([1, 2, 3]));
    expect(await c.closedWith()).toEqual({ code: 1011, reason: "Binary message not expected." });
  });
});

async function pair(mk: [() => Promise<Client>, () => Promise<Client>], token = TOKEN, nonce?: string) {
  const a = await mk[0]();
  const b = await mk[1]();
  const ua = crypto.randomUUID();
  const ub = crypto.randomUUID();
  expect((await auth(a, token, { nonce, uuid: ua, name: "box" })).params.authenticationError).toBe("AuthenticationErrorNoError");
  const rb = await auth(b, token, { nonce, uuid: `{${ub.toUpperCase()}}`, name: "app" });
  expect(rb).toMatchObject({ id: 1, params: { authenticationError: "AuthenticationErrorNoError" }, status: "success" });
  expect(await b.line()).toMatchObject({ notification: "RemoteProxy.TunnelEstablished", params: { name: "box", uuid: ua } });
  expect(await a.line()).toMatchObject({ notification: "RemoteProxy.TunnelEstablished", params: { name: "app", uuid: ub } });
  return [a, b] as const;
}

/** Writes ASCII `text`: as it is on TCP, in 64 KiB text frames on a WebSocket. */
const writeAll = (c: Client, text: string): Promise<unknown> =>
  c instanceof WsClient ? Promise.all(Array.from({ length: Math.ceil(text.length / 65536) }, (_, i) => c.text(text.slice(i * 65536, (i + 1) * 65536)))) : c.writeRaw(text);

const rssKiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]);

/** Sends `n` bytes of hex text each way at once; compares sha256 on arrival. */
async function bothWays(a: Client, b: Client, n: number) {
  const da = randomBytes(n / 2).toString("hex");
  const db = randomBytes(n / 2).toString("hex");
  const sink = (c: Client) => {
    if (c instanceof WsClient) c.hash = createHash("sha256");
  };
  sink(a);
  sink(b);
  await Promise.all([writeAll(a, da), writeAll(b, db)]);
  const got = async (c: Client) => {
    await waitFor(() => (c instanceof WsClient ? c.textBytes : c.received) >= n, 30_000, () => `${n} bytes through the tunnel (have ${c instanceof WsClient ? c.textBytes : c.received})`);
    return c instanceof WsClient ? c.hash!.digest("hex") : createHash("sha256").update(c.take()).digest("hex");
  };
  const sha = (s: string) => createHash("sha256").update(s).digest("hex");
  expect(await got(b)).toBe(sha(da));
  expect(await got(a)).toBe(sha(db));
}

describe("tunnels: pairing and data both ways, sha256 compared (remoteConnection, tcpRemoteConnection, tcpWebsocketRemoteConnection)", () => {
  const T = () => tcp();
  const W = () => ws();
  test.each([
    ["TCP ↔ TCP", [T, T]],
    ["WS ↔ WS", [W, W]],
    ["TCP ↔ WS", [T, W]],
    ["WS ↔ TCP", [W, T]],
  ] as const)("%s, 1 MiB each way", async (_n, mk) => {
    const [a, b] = await pair(mk as unknown as [() => Promise<Client>, () => Promise<Client>], TOKEN, crypto.randomUUID());
    await bothWays(a, b, 1 << 20);
    a.end();
    await b.waitClosed(15_000, "the partner to be closed");
    if (b instanceof WsClient) expect(b.close).toEqual({ code: 1011, reason: "Tunnel client disconnected" });
  }, 60_000);
  test.each([
    ["TCP → WS", T, W],
    ["WS → TCP", W, T],
  ] as const)("backpressure %s: a partner that stops reading stops the writer; the relay holds a bounded amount", async (_n, mkA, mkB) => {
    const [a, b] = await pair([mkA, mkB], TOKEN, crypto.randomUUID());
    const total = 64 << 20;
    const data = randomBytes(total / 2).toString("hex");
    if (b instanceof WsClient) b.hash = createHash("sha256");
    b.pause();
    const before = rssKiB(A.proc.pid);
    let written = false;
    const w = writeAll(a, data).then(() => (written = true));
    let peak = before;
    await holdsFor(() => ((peak = Math.max(peak, rssKiB(A.proc.pid))), written), 1_500, "the writer finished 64 MiB while its partner read nothing: no backpressure");
    // Without backpressure the relay would hold most of the 64 MiB.
    expect(peak - before).toBeLessThan(24 * 1024);
    b.resume();
    await w;
    await waitFor(() => (b instanceof WsClient ? b.textBytes : b.received) >= total, 30_000, "all 64 MiB after the reader resumed");
    const sha = createHash("sha256").update(data).digest("hex");
    expect(b instanceof WsClient ? b.hash!.digest("hex") : createHash("sha256").update(b.take()).digest("hex")).toBe(sha);
    a.end();
  }, 60_000);
  test("raw bytes 00 01 ff pass through TCP unchanged; legacy pairing without a nonce", async () => {
    const [a, b] = await pair([T, T], "second-token");
    await a.writeRaw(new Uint8Array([0, 1, 0xff]));
    expect([...(await (b as TcpClient).bytes(3))]).toEqual([0, 1, 0xff]);
    a.end();
    await b.waitClosed();
  });
  test("five tunnels on one token with different nonces (multipleRemoteConnection)", async () => {
    const pairs = await Promise.all(Array.from({ length: 5 }, () => pair([T, T], TOKEN, crypto.randomUUID())));
    await Promise.all(pairs.map(([a, b], i) => a.writeRaw(`from a ${i}`).then(() => b.writeRaw(`from b ${i}`))));
    for (const [i, [a, b]] of pairs.entries()) {
      expect((await (b as TcpClient).bytes(8)).toString()).toBe(`from a ${i}`);
      expect((await (a as TcpClient).bytes(8)).toString()).toBe(`from b ${i}`);
    }
    for (const [a] of pairs) a.end();
  });
  test("data after Authenticate, before the tunnel, closes the client (authenticateSendData)", async () => {
    const c = await ws();
    await auth(c, TOKEN, { nonce: crypto.randomUUID() });
    await c.text("too early");
    expect(await c.closedWith()).toEqual({ code: 1011, reason: "Data received while authenticated but not remote connected." });
  });
  test("a binary frame inside a tunnel closes it, and the partner with it", async () => {
    const [a, b] = await pair([W, T], TOKEN, crypto.randomUUID());
    await (a as WsClient).frame(2, new Uint8Array([9]));
    expect(await (a as WsClient).closedWith()).toEqual({ code: 1011, reason: "Binary message not expected." });
    await b.waitClosed();
  });
});

describe("the third client, duplicate uuids and the two upstream bugs", () => {
  test("the third client with the same token and nonce is closed without an answer; the first two keep their tunnel (upstream bug: it broke)", async () => {
    const nonce = crypto.randomUUID();
    const [a, b] = await pair([() => tcp(), () => ws()], TOKEN, nonce);
    const x = await ws();
    await x.send({ id: 1, method: "Authentication.Authenticate", params: { name: "third", token: TOKEN, nonce, uuid: crypto.randomUUID() } });
    expect(await x.closedWith()).toEqual({ code: 1011, reason: "Tunnel already exists for this token nonce combination." });
    expect(x.messages).toEqual([]);
    await x.waitClosed();
    // After the third is gone the tunnel still forwards, both ways, and still closes together.
    await a.writeRaw("after the third");
    await waitFor(() => (b as WsClient).messages.length > 0, 10_000, "data through the tunnel after the third client left");
    expect((b as WsClient).messages[0]!.data.toString()).toBe("after the third");
    await (b as WsClient).text("and back");
    expect((await (a as TcpClient).bytes(8)).toString()).toBe("and back");
    b.end();
    await a.waitClosed(10_000, "the first client to be closed with its partner");
  });
  test("different tokens with the same nonce are never paired (upstream bug: they were)", async () => {
    const nonce = crypto.randomUUID();
    const a = await tcp();
    const b = await tcp();
    expect((await auth(a, TOKEN, { nonce })).params.authenticationError).toBe("AuthenticationErrorNoError");
    expect((await auth(b, "second-token", { nonce })).params.authenticationError).toBe("AuthenticationErrorNoError");
    await holdsFor(() => a.buffered || b.buffered || a.closed || b.closed, 1_000, "no TunnelEstablished between different tokens");
    const st = (await fleet.status(A)).relay as { nymea: { authenticated: number } };
    expect(st.nymea.authenticated).toBeGreaterThanOrEqual(2);
    a.end();
    b.end();
  });
  test("duplicate uuids: both closed (duplicateUuid)", async () => {
    const uuid = crypto.randomUUID();
    const nonce = crypto.randomUUID();
    const a = await ws();
    const b = await ws();
    await auth(a, TOKEN, { nonce, uuid });
    await b.send({ id: 1, method: "Authentication.Authenticate", params: { name: "b", token: TOKEN, nonce, uuid: `{${uuid}}` } });
    expect(await a.closedWith()).toEqual({ code: 1011, reason: "Duplicated client UUID." });
    expect(await b.closedWith()).toEqual({ code: 1011, reason: "Client loop detected." });
    expect(b.messages).toEqual([]);
  });
  test("an unknown token: AuthenticationErrorAuthenticationFailed, then closed", async () => {
    const c = await tcp();
    expect(await auth(c, "not-a-token")).toEqual({ id: 1, params: { authenticationError: "AuthenticationErrorAuthenticationFailed" }, status: "success" });
    await c.waitClosed();
  });
});

describe("monitor, status and SIGHUP", () => {
  test("the monitor socket pushes upstream's statistics document; writing to it drops the monitor (monitorServer)", async () => {
    const [a, b] = await pair([() => tcp(), () => tcp()], TOKEN, crypto.randomUUID());
    await a.writeRaw("12345");
    await (b as TcpClient).bytes(5);
    let text = "";
    let closed = false;
    const mon = await Bun.connect({
      unix: monitorSock,
      socket: {
        data(_s, d) {
          text += Buffer.from(d).toString();
        },
        close() {
          closed = true;
        },
      },
    });
    const doc = await waitFor(
      () => {
        const end = text.indexOf("}\n\n");
        if (end < 0) return null;
        const d = JSON.parse(text.slice(0, end + 1));
        text = text.slice(end + 3);
        return d.proxyStatistic.tunnelCount >= 1 ? d : null;
      },
      10_000,
      "a monitor document showing the tunnel",
    );
    expect(Object.keys(doc)).toEqual(["apiVersion", "proxyStatistic", "serverName", "serverVersion", "tunnelProxyStatistic"]);
    expect(doc.serverName).toBe("agent-relay-a");
    const ps = doc.proxyStatistic;
    expect(Object.keys(ps)).toEqual(["clientCount", "clients", "total", "troughput", "tunnelCount", "tunnels"]);
    expect(ps.total.totalTraffic).toBeGreaterThanOrEqual(5);
    const client = ps.clients.find((c: { name: string; tunnelConnected: boolean }) => c.name === "box" && c.tunnelConnected);
    expect(client).toMatchObject({ address: "127.0.0.1", authenticated: true });
    expect(client.id).toMatch(/^\{[0-9a-f-]{36}\}$/);
    expect(ps.tunnels[0]).toHaveProperty("clientOne");
    // The indented form, as QJsonDocument::Indented writes it.
    expect(JSON.stringify(doc, null, 4)).toContain('"apiVersion": "5"');
    mon.write("hello?");
    await waitFor(() => closed, 10_000, "the relay to drop a monitor that wrote");
    a.end();
  });
  test("agent status on the relay shows the nymea counters", async () => {
    const st = (await fleet.status(A)).relay as { nymea: Record<string, unknown> };
    expect(st.nymea).toMatchObject({ tcp: `127.0.0.1:${aTcp}`, ws: `127.0.0.1:${aWs}`, tls: true, authenticator: "tokens", monitor: monitorSock });
    expect(st.nymea.total_tunnels as number).toBeGreaterThan(0);
    expect(st.nymea.total_traffic as number).toBeGreaterThan(1 << 20);
    expect((st.nymea.killed as Record<string, number>)["Tunnel already exists for this token nonce combination."]).toBeGreaterThanOrEqual(1);
  });
  test("SIGHUP re-reads the tokens file", async () => {
    writeFileSync(tokensFile, "fresh-token\n");
    A.proc.kill("SIGHUP");
    await waitFor(async () => {
      const c = await tcp();
      const r = await auth(c, "fresh-token");
      return r.params.authenticationError === "AuthenticationErrorNoError";
    }, 10_000, "the new token to be accepted after SIGHUP", { every: 200 });
    const c = await tcp();
    expect((await auth(c, TOKEN)).params.authenticationError).toBe("AuthenticationErrorAuthenticationFailed");
  });
});

describe("--nymea-conf: upstream's INI file", () => {
  test("a relay started with nymea-remoteproxy.conf serves its name and ports and warns of [AWS]", async () => {
    const ini = join(fleet.dir, "nymea-remoteproxy.conf");
    writeFileSync(ini, "[ProxyServer]\nname=from-ini\ninactiveTimeout=8000\n\n[AWS]\nregion=eu-west-1\n\n[SSL]\nenabled=false\n\n[WebSocketServer]\nhost=127.0.0.1\nport=0\n\n[TcpServer]\nhost=127.0.0.1\nport=0\n");
    const toml = join(fleet.dir, "c.toml");
    // The authenticator comes from agent.toml; its jsonrpc timeout is shorter than the
    // authentication one, so a slow authorizer meets "Command timed out" (jsonRpcTimeout).
    writeFileSync(toml, `[nymea]\nauthorizer = "http://127.0.0.1:${authorizer.port}/check"\nname = "overridden by the ini"\njsonrpc_timeout = "1s"\nauthentication_timeout = "5s"\n`);
    await fleet.issue("relay", "relay-c", ["--host", "127.0.0.1"]);
    const C = await fleet.start("relay", "relay-c", ["--listen", "127.0.0.1:0", "--config", toml, "--nymea-conf", ini]);
    const p = await ports(C);
    const c = await tcp(p.tcp, false);
    await c.send(hello(1));
    expect((await c.line()).params.name).toBe("from-ini");
    expect(C.log()).toContain(`${ini}: [AWS] is not used: the AWS Lambda authenticator is not supported`);
    const slow = await tcp(p.tcp, false);
    await slow.send({ id: 9, method: "Authentication.Authenticate", params: { name: "n", token: "slow", uuid: crypto.randomUUID() } });
    expect(await slow.line()).toEqual({ error: "Command timed out", id: 9, status: "error" });
    await slow.waitClosed();
    await fleet.stop(C);
  });
});

describe("relay B: plain on loopback, an HTTP authorizer, short timers", () => {
  test.each([
    ["good", "AuthenticationErrorNoError"],
    ["bad", "AuthenticationErrorAuthenticationFailed"],
    ["broken", "AuthenticationErrorProxyError"],
    ["garbled", "AuthenticationErrorProxyError"],
    ["slow", "AuthenticationErrorTimeout"],
  ])("authorizer answers for %p: %s", async (token, want) => {
    const c = await tcp(bTcp, false);
    expect(await auth(c, token, { nonce: crypto.randomUUID() })).toEqual({ id: 1, params: { authenticationError: want }, status: "success" });
    if (want !== "AuthenticationErrorNoError") await c.waitClosed();
    c.end();
  });
  test("inactive: a silent WebSocket is closed with upstream's text (inactiveTimeout)", async () => {
    const c = await ws(bWs, { tls: false });
    expect(await c.closedWith()).toEqual({ code: 1011, reason: "Proxy timeout occurred. The socket was inactive." });
  });
  test("alone: a partner that never shows up (aloneTimeout)", async () => {
    const c = await ws(bWs, { tls: false });
    expect((await auth(c, "good", { nonce: crypto.randomUUID() })).params.authenticationError).toBe("AuthenticationErrorNoError");
    expect(await c.closedWith()).toEqual({ code: 1011, reason: "Proxy timeout occurred. The tunnel partner did not show up." });
  });
  test("a plain TCP ↔ WS tunnel carries data both ways", async () => {
    const [a, b] = await pair([() => tcp(bTcp, false), () => ws(bWs, { tls: false })], "good", crypto.randomUUID());
    await bothWays(a, b, 1 << 16);
    a.end();
  });
});

describe("slowloris (started in beforeAll, dripping while every test above ran)", () => {
  test("a WebSocket handshake that never ends is cut, and the relay served everyone else meanwhile", async () => {
    await slow.waitClosed(25_000, "the relay to drop a handshake that never ends");
    expect(slow.peek().toString("latin1")).not.toContain("101 Switching Protocols");
    const other = await ws(bWs, { tls: false });
    await other.send(hello(1));
    expect((await other.line()).id).toBe(1);
  }, 30_000);
});
