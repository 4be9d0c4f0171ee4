// The pure parts of the nymea proxy (src/tunnel/nymea): framing, the JSON-RPC codec and its
// error texts (upstream 1.8.4, /work/shared/PROTOCOLS.md §2), Qt's readings of ids and uuids,
// the pairing table with the two upstream bugs shown fixed, the failure limiter, tokens, the
// INI reader and the [nymea] config section.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, ignoredForRole, parseToml, resolveConfig, type ConfigSource } from "../src/config.ts";
import { parseTokens, tokenAccepted } from "../src/tunnel/nymea/auth.ts";
import { nymeaFromIni, parseIni } from "../src/tunnel/nymea/ini.ts";
import { FailureLimiter } from "../src/tunnel/nymea/limiter.ts";
import { PairingTable } from "../src/tunnel/nymea/pairing.ts";
import {
  BUFFER_LIMIT,
  compact,
  Framer,
  helloLine,
  indented,
  introspectLine,
  NULL_UUID,
  parseId,
  parseRequest,
  parseUuid,
  tunnelEstablishedLine,
} from "../src/tunnel/nymea/protocol.ts";
import { createHash } from "node:crypto";

const FIX = join(import.meta.dir, "fixtures/nymea-config");
const latin1 = (s: string) => Buffer.from(s, "utf8").toString("latin1");

describe("framing: split at }\\n{, a rest ending in } or }\\n is a packet", () => {
  test.each([
    ["one object, no newline", ['{"id":1}'], [['{"id":1}']]],
    ["one object with newline", ['{"id":1}\n'], [['{"id":1}\n']]],
    ["two in one chunk", ['{"a":1}\n{"b":2}\n'], [['{"a":1}', '{"b":2}\n']]],
    ["one across two chunks", ['{"a":', "1}"], [[], ['{"a":1}']]],
    ["split point across chunks", ['{"a":1}\n', '{"b":2}'], [['{"a":1}\n'], ['{"b":2}']]],
    ["not ending in } is never processed", ["[1,2]\n"], [[]]],
    ["a chunk ending in } mid-object is parsed early", ['{"a":{"b":1}', "}"], [['{"a":{"b":1}'], ['}']]],
  ] as const)("%s", (_n, chunks, want) => {
    const f = new Framer();
    expect(chunks.map((c) => f.push(c))).toEqual(want.map((w) => [...w]));
  });
  test(`more than ${BUFFER_LIMIT} unsplit bytes is a violation; exactly ${BUFFER_LIMIT} is not`, () => {
    expect(new Framer().push("x".repeat(BUFFER_LIMIT))).toEqual([]);
    expect(new Framer().push("x".repeat(BUFFER_LIMIT + 1))).toBe("violation");
    const f = new Framer();
    f.push("x".repeat(BUFFER_LIMIT));
    expect(f.push("y")).toBe("violation");
  });
  test("a 10 KiB line that ends in } is one packet, however long", () => {
    const line = `{"id":1,"method":"RemoteProxy.Hello","x":"${"a".repeat(20_000)}"}`;
    expect(new Framer().push(line)).toEqual([line]);
  });
});

describe("JSON-RPC: the API rows of upstream's apiBasicCalls, to the byte", () => {
  const hello = '{"id":42,"method":"RemoteProxy.Hello"}';
  test.each([
    ["valid call", hello, { kind: "hello", id: 42 }],
    ["missing id", '{"method":"RemoteProxy.Hello"}', `{"error":"Error parsing command. Missing 'id'","id":-1,"status":"error"}\n`],
    ["non-numeric id", '{"id":"x","method":"RemoteProxy.Hello"}', `{"error":"Error parsing command. Missing 'id'","id":-1,"status":"error"}\n`],
    ["missing method", '{"id":42}', `{"error":"Error parsing method. Got: ''', Expected: 'Namespace.method'","id":42,"status":"error"}\n`],
    ["missing dot", '{"id":42,"method":"RemoteProxyHello"}', `{"error":"Error parsing method. Got: 'RemoteProxyHello'', Expected: 'Namespace.method'","id":42,"status":"error"}\n`],
    ["invalid namespace", '{"id":42,"method":"Foo.Hello"}', `{"error":"No such namespace","id":42,"status":"error"}\n`],
    ["v2 namespace on the v1 port", '{"id":42,"method":"TunnelProxy.RegisterServer"}', `{"error":"No such namespace","id":42,"status":"error"}\n`],
    ["invalid method", '{"id":42,"method":"RemoteProxy.Bye"}', `{"error":"No such method","id":42,"status":"error"}\n`],
    ["forbidden param", '{"id":42,"method":"RemoteProxy.Hello","params":{"foo":"bar"}}', `{"error":"Invalid params: Forbidden key \\"foo\\" in {\\n    \\"foo\\": \\"bar\\"\\n}\\n","id":42,"status":"error"}\n`],
    [
      "authenticate without token",
      '{"id":42,"method":"Authentication.Authenticate","params":{"name":"n","uuid":"u"}}',
      `{"error":"Invalid params: Missing key token in {\\n    \\"name\\": \\"n\\",\\n    \\"uuid\\": \\"u\\"\\n}\\n","id":42,"status":"error"}\n`,
    ],
    ["invalid json", '{"id":42,"method":"RemoteProxy.Hello}', `{"error":"Failed to parse JSON data: unterminated string","id":-1,"status":"error"}\n`],
    ["garbage after the document", '{"id":42} x}', `{"error":"Failed to parse JSON data: garbage at the end of the document","id":-1,"status":"error"}\n`],
  ] as const)("%s", (_n, packet, want) => {
    const r = parseRequest(latin1(packet));
    if (typeof want === "string") expect(r).toMatchObject({ kind: "error", line: want });
    else expect(r).toEqual(want);
  });
  test("authenticate with and without a nonce", () => {
    expect(parseRequest('{"id":1,"method":"Authentication.Authenticate","params":{"name":"a","nonce":"n1","token":"t","uuid":"u"}}')).toEqual({
      kind: "authenticate",
      id: 1,
      params: { name: "a", nonce: "n1", token: "t", uuid: "u" },
    });
    expect(parseRequest('{"id":1,"method":"Authentication.Authenticate","params":{"name":"a","token":"t","uuid":"u"}}')).toMatchObject({ params: { nonce: "" } });
  });
  test("UTF-8 in a packet survives the byte framing", () => {
    expect(parseRequest(latin1('{"id":1,"method":"Authentication.Authenticate","params":{"name":"Küche ☕","token":"t","uuid":"u"}}'))).toMatchObject({ params: { name: "Küche ☕" } });
  });
  test("answers: sorted compact keys and a newline", () => {
    expect(helloLine(0, "agent-relay")).toBe('{"id":0,"params":{"apiVersion":"5","name":"agent-relay","server":"nymea-remoteproxy","version":"1.8.4"},"status":"success"}\n');
    expect(tunnelEstablishedLine(3, { name: "app", uuid: NULL_UUID })).toBe(`{"id":3,"notification":"RemoteProxy.TunnelEstablished","params":{"name":"app","uuid":"${NULL_UUID}"}}\n`);
    const intro = JSON.parse(introspectLine(7));
    expect(Object.keys(intro.params)).toEqual(["methods", "notifications", "types"]);
    expect(intro.params.methods["Authentication.Authenticate"].params).toEqual({ name: "String", "o:nonce": "String", token: "String", uuid: "String" });
    expect(intro.params.types.AuthenticationError).toContain("AuthenticationErrorProxyError");
  });
});

describe("Qt's readings", () => {
  test.each([
    [42, 42],
    [7.9, 8],
    ["7", 7],
    [" 7 ", 7],
    [true, 1],
    ["7.5", null],
    ["x", null],
    [null, null],
    [undefined, null],
    [{}, null],
    [1e12, null],
  ] as const)("id %p → %p", (v, want) => expect(parseId(v)).toBe(want));
  test.each([
    ["6f1a6a4e-5d0a-4a8f-9b6e-0a1b2c3d4e5f", "6f1a6a4e-5d0a-4a8f-9b6e-0a1b2c3d4e5f"],
    ["{6F1A6A4E-5D0A-4A8F-9B6E-0A1B2C3D4E5F}", "6f1a6a4e-5d0a-4a8f-9b6e-0a1b2c3d4e5f"],
    ["{6f1a6a4e-5d0a-4a8f-9b6e-0a1b2c3d4e5f", NULL_UUID],
    ["not a uuid", NULL_UUID],
    ["", NULL_UUID],
  ])("uuid %p → %p", (v, want) => expect(parseUuid(v)).toBe(want));
  test("indented JSON as QJsonDocument::Indented writes it", () => {
    expect(indented({ b: [1, { c: true }], a: {}, d: [] })).toBe('{\n    "a": {\n    },\n    "b": [\n        1,\n        {\n            "c": true\n        }\n    ],\n    "d": [\n    ]\n}\n');
    expect(compact({ z: 1, a: { y: 2, b: 3 } })).toBe('{"a":{"b":3,"y":2},"z":1}');
  });
});

describe("pairing table", () => {
  const c = (id: string, token: string, nonce = "", uuid = id) => ({ id, token, nonce, uuid });
  test("legacy: by token; the second pairs with the first", () => {
    const t = new PairingTable();
    expect(t.offer(c("a", "T"))).toEqual({ kind: "wait" });
    expect(t.offer(c("b", "T"))).toEqual({ kind: "pair", peer: "a" });
    expect(t.tunnelCount).toBe(1);
  });
  test("with a nonce: same token and nonce pair; five nonces, five tunnels on one token", () => {
    const t = new PairingTable();
    for (let i = 0; i < 5; i++) expect(t.offer(c(`a${i}`, "T", `n${i}`))).toEqual({ kind: "wait" });
    for (let i = 0; i < 5; i++) expect(t.offer(c(`b${i}`, "T", `n${i}`))).toEqual({ kind: "pair", peer: `a${i}` });
    expect(t.tunnelCount).toBe(5);
    expect(t.waitingCount).toBe(0);
  });
  test("upstream bug fixed: different tokens with the same nonce are never paired", () => {
    const t = new PairingTable();
    expect(t.offer(c("a", "T1", "N"))).toEqual({ kind: "wait" });
    expect(t.offer(c("b", "T2", "N"))).toEqual({ kind: "wait" });
    expect(t.tunnelCount).toBe(0);
  });
  test("a legacy token never meets a nonce equal to it", () => {
    const t = new PairingTable();
    t.offer(c("a", "X"));
    expect(t.offer(c("b", "other", "X"))).toEqual({ kind: "wait" });
  });
  test("the third client is refused; upstream bug fixed: its disconnect leaves the tunnel of the first two", () => {
    const t = new PairingTable();
    t.offer(c("a", "T", "N"));
    t.offer(c("b", "T", "N"));
    expect(t.offer(c("x", "T", "N"))).toEqual({ kind: "tunnel-exists" });
    expect(t.remove("x")).toBeUndefined();
    expect(t.tunnelCount).toBe(1);
    expect(t.remove("b")).toBe("a");
    expect(t.tunnelCount).toBe(0);
    // The pair is free again.
    expect(t.offer(c("d", "T", "N"))).toEqual({ kind: "wait" });
  });
  test("same token, other nonce, next to a tunnel: waits on its own", () => {
    const t = new PairingTable();
    t.offer(c("a", "T", "N"));
    t.offer(c("b", "T", "N"));
    expect(t.offer(c("x", "T", "M"))).toEqual({ kind: "wait" });
  });
  test("duplicate uuids: both closed, the key is free", () => {
    const t = new PairingTable();
    t.offer(c("a", "T", "", "U"));
    expect(t.offer(c("b", "T", "", "U"))).toEqual({ kind: "duplicate-uuid", peer: "a" });
    expect(t.remove("a")).toBeUndefined();
    expect(t.offer(c("d", "T"))).toEqual({ kind: "wait" });
  });
  test("a waiting client that leaves frees its place", () => {
    const t = new PairingTable();
    t.offer(c("a", "T"));
    expect(t.remove("a")).toBeUndefined();
    expect(t.offer(c("b", "T"))).toEqual({ kind: "wait" });
  });
});

describe("failed authentications per source", () => {
  test("burst, then one try per refill", () => {
    const l = new FailureLimiter({ burst: 3, refillMs: 1000, maxSources: 2 });
    for (let i = 0; i < 3; i++) {
      expect(l.allowed("1.1.1.1", 0)).toBe(true);
      l.failed("1.1.1.1", 0);
    }
    expect(l.allowed("1.1.1.1", 0)).toBe(false);
    expect(l.allowed("2.2.2.2", 0)).toBe(true);
    expect(l.allowed("1.1.1.1", 999)).toBe(false);
    expect(l.allowed("1.1.1.1", 1000)).toBe(true);
  });
  test("remembers a bounded number of sources", () => {
    const l = new FailureLimiter({ burst: 1, refillMs: 1000, maxSources: 2 });
    for (const s of ["a", "b", "c"]) l.failed(s, 0);
    expect(l.sources).toBe(2);
    expect(l.allowed("a", 0)).toBe(true); // forgotten first
    expect(l.allowed("c", 0)).toBe(false);
  });
});

describe("tokens", () => {
  test("one per line, # comments, blanks skipped", () => {
    expect(parseTokens("# tokens\nabc\n\n  def  # the box in the hall\n#x\n")).toEqual(["abc", "def"]);
  });
  test("compared by digest, every entry", () => {
    const d = ["abc", "def"].map((t) => createHash("sha256").update(t).digest());
    expect(tokenAccepted(d, "def")).toBe(true);
    expect(tokenAccepted(d, "de")).toBe(false);
    expect(tokenAccepted([], "abc")).toBe(false);
  });
});

describe("upstream's INI file", () => {
  test("the shipped nymea-remoteproxy.conf becomes [nymea], with a warning for each unused key", () => {
    const path = join(FIX, "nymea-remoteproxy.conf");
    const { raw, warnings } = nymeaFromIni(parseIni(readFileSync(path, "utf8"), path), path);
    expect(raw).toEqual({
      nymea: {
        name: "nymea-remoteproxy",
        monitor: "/tmp/nymea-remoteproxy-monitor.sock",
        jsonrpc_timeout: "10000ms",
        authentication_timeout: "8000ms",
        inactive_timeout: "8000ms",
        alone_timeout: "8000ms",
        certificate: "/etc/ssl/certs/ssl-cert-snakeoil.pem",
        key: "/etc/ssl/private/ssl-cert-snakeoil.key",
        ws: "127.0.0.1:443",
        tcp: "127.0.0.1:80",
      },
    });
    expect(warnings.join("\n")).toContain("[AWS] is not used: the AWS Lambda authenticator is not supported");
    expect(warnings.join("\n")).toContain("[ProxyServer] logFile is not used");
    expect(warnings.some((w) => w.includes("certificateChain"))).toBe(false); // empty: nothing lost
    // With an authenticator from agent.toml it resolves.
    const cfg = resolveConfig([{ origin: { kind: "file", path }, raw }, { origin: { kind: "file", path: "agent.toml" }, raw: { nymea: { tokens: "/etc/agent/nymea-tokens" } } }]);
    expect(cfg.nymea).toMatchObject({ inactive_timeout: 8000, jsonrpc_timeout: 10_000, ws: { host: "127.0.0.1", port: 443 } });
  });
  test("[SSL] enabled=false is plain; absent sections listen on upstream's defaults; unknown keys warn", () => {
    const { raw, warnings } = nymeaFromIni(parseIni("[SSL]\nenabled=false\ncertificate=/x\n[TcpServer]\nport=2213\nbacklog=5\n[UnixSocketServer]\nunixSocketFileName=/run/x\n", "f.conf"), "f.conf");
    expect(raw).toEqual({ nymea: { plain: true, ws: "127.0.0.1:1212", tcp: "127.0.0.1:2213" } });
    expect(warnings).toEqual(["f.conf: [TcpServer] backlog is not used: unknown key", "f.conf: [UnixSocketServer] is not used: the unix-socket transport is not supported (no nymea client uses it)"]);
  });
  test.each([
    ["[ProxyServer]\ninactiveTimeout=8s\n", "[ProxyServer] inactiveTimeout: expected milliseconds"],
    ["[TcpServer]\nport=99999\n", "[TcpServer] port: expected a port 0-65535"],
    ["[SSL]\nenabled=maybe\n", "[SSL] enabled: expected true or false"],
    ["[ProxyServer]\njust words\n", "line 2: expected [Section] or key=value"],
  ])("bad INI %p", (text, want) => {
    expect(() => nymeaFromIni(parseIni(text, "bad.conf"), "bad.conf")).toThrow(want);
    try {
      nymeaFromIni(parseIni(text, "bad.conf"), "bad.conf");
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      expect((e as Error).message).toContain("bad.conf");
    }
  });
});

describe("[nymea] in agent.toml", () => {
  const file = (path: string): ConfigSource => ({ origin: { kind: "file", path }, raw: parseToml(readFileSync(path, "utf8"), path) });
  test("the issue's example parses with upstream's defaults", () => {
    const cfg = resolveConfig([file(join(FIX, "relay.toml"))]);
    expect(cfg.nymea).toMatchObject({ name: "agent-relay", tokens: "/etc/agent/nymea-tokens", inactive_timeout: 8000, alone_timeout: 8000, authentication_timeout: 8000, jsonrpc_timeout: 10_000, dummy: false, plain: false });
    expect(cfg.nymea!.tcp).toEqual({ host: "0.0.0.0", port: 2213 });
  });
  test("absent: no nymea; on another role: a warning", () => {
    expect(resolveConfig([]).nymea).toBeUndefined();
    expect(ignoredForRole([file(join(FIX, "relay.toml"))], "onsite")).toContain(`${join(FIX, "relay.toml")}: [nymea] has no effect on an onsite device: only the relay speaks nymea-remoteproxy's protocol`);
  });
  test("dummy and plain on loopback are fine", () => {
    const cfg = resolveConfig([{ origin: { kind: "file", path: "x" }, raw: { nymea: { tcp: "127.0.0.1:0", ws: "localhost:0", dummy: true, plain: true } } }]);
    expect(cfg.nymea).toMatchObject({ dummy: true, plain: true });
  });
  const cases = readdirSync(join(FIX, "invalid")).filter((f) => f.endsWith(".toml"));
  test("there are invalid fixtures", () => expect(cases.length).toBeGreaterThan(10));
  test.each(cases)("invalid/%s fails with its message and the file", (name) => {
    const path = join(FIX, "invalid", name);
    const want = /^# expect: (.*)$/m.exec(readFileSync(path, "utf8"))![1]!;
    let err: unknown;
    try {
      resolveConfig([file(path)]);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toContain(want);
    expect((err as Error).message).toContain(path);
  });
});
