// NymeaService in-process on real loopback sockets: a busy port disables only its transport
// (upstream's serverPortBlocked), certificate files that cannot be read are an error that
// names them (configuration), the tokens file keeps its old tokens when a reload fails, and the
// HTTP authenticator's outcomes against a real HTTP server.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { systemClock } from "../src/clock.ts";
import { nymeaDefaults, type NymeaConfig } from "../src/config.ts";
import { createLogger } from "../src/log.ts";
import { HttpAuthenticator, TokensFileAuthenticator } from "../src/tunnel/nymea/auth.ts";
import { NymeaService } from "../src/tunnel/nymea/service.ts";
import { hello, TcpClient, WsClient } from "./fixtures/nymea/clients.ts";
import { makeCert, newCa } from "./helpers/certs.ts";

const dir = mkdtempSync(join(tmpdir(), "agent-nymea-svc-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const log = createLogger({ level: "silent", json: false });
const cfg = (over: Partial<NymeaConfig>): NymeaConfig => ({ ...nymeaDefaults(), dummy: true, plain: true, ...over });
const NO_TLS = { cert: "", key: "" };

describe("listeners", () => {
  test("a busy TCP port disables that transport only; the WebSocket one serves (serverPortBlocked)", async () => {
    const busy = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const svc = new NymeaService(cfg({ tcp: { host: "127.0.0.1", port: busy.port }, ws: { host: "127.0.0.1", port: 0 } }), NO_TLS, log, systemClock);
    try {
      svc.start();
      const st = svc.status() as { tcp: string | null; ws: string | null; errors?: Record<string, string> };
      expect(st.tcp).toBeNull();
      expect(st.errors?.tcp).toContain(`port ${busy.port} is in use`);
      const c = await WsClient.connect(Number(st.ws!.split(":")[1]), { tls: false });
      await c.send(hello(1));
      expect((await c.line()).params.server).toBe("nymea-remoteproxy");
      c.end();
    } finally {
      svc.close();
      busy.stop(true);
    }
  });
  test("without certificate/key, TCP and WebSocket present the relay's own certificate", async () => {
    const own = makeCert(newCa("fleet CA"), { role: "relay", id: "relay-own", ips: ["127.0.0.1"] });
    const svc = new NymeaService(cfg({ plain: false, dummy: true, tcp: { host: "127.0.0.1", port: 0 }, ws: { host: "127.0.0.1", port: 0 } }), { cert: own.certPem, key: own.keyPem }, log, systemClock);
    try {
      svc.start();
      const st = svc.status() as { tcp: string; ws: string; tls: boolean };
      expect(st.tls).toBe(true);
      for (const port of [st.tcp, st.ws].map((a) => Number(a.split(":")[1]))) {
        const c = await TcpClient.connect(port, true);
        const peer = (c as unknown as { sock: { getPeerCertificate(): { subject?: { CN?: string } } } }).sock.getPeerCertificate();
        expect(peer.subject?.CN).toBe("relay-own");
        c.end();
      }
    } finally {
      svc.close();
    }
  });
  test("certificate files that cannot be read: an error naming the file", () => {
    const svc = new NymeaService(cfg({ plain: false, tcp: { host: "127.0.0.1", port: 0 }, certificate: join(dir, "nope.pem"), key: join(dir, "nope.key") }), NO_TLS, log, systemClock);
    expect(() => svc.start()).toThrow(`cannot read the nymea certificate ${join(dir, "nope.pem")}`);
    svc.close();
  });
  test("close() stops the listeners and closes clients", async () => {
    const svc = new NymeaService(cfg({ tcp: { host: "127.0.0.1", port: 0 } }), NO_TLS, log, systemClock);
    svc.start();
    const port = Number((svc.status().tcp as string).split(":")[1]);
    const c = await TcpClient.connect(port, false);
    await c.send(hello(1));
    await c.line();
    svc.close();
    await c.waitClosed();
    expect(svc.status()).toMatchObject({ tcp: null, clients: 0 });
  });
});

describe("authenticators", () => {
  test("tokens file: a failed reload keeps the tokens already loaded", async () => {
    const f = join(dir, "tokens");
    writeFileSync(f, "one\n");
    const a = new TokensFileAuthenticator(f);
    const sig = new AbortController().signal;
    expect(await a.authenticate({ token: "one", address: "x" })).toBe("AuthenticationErrorNoError");
    rmSync(f);
    expect(() => a.reload()).toThrow(`cannot read nymea tokens file ${f}`);
    expect(await a.authenticate({ token: "one", address: "x" })).toBe("AuthenticationErrorNoError");
    void sig;
  });
  test("HTTP authorizer: the Lambda's request shape; answers mapped; unreachable is ProxyError", async () => {
    const seen: unknown[] = [];
    const srv = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(req) {
        const body = await req.json();
        seen.push({ method: req.method, type: req.headers.get("content-type"), body });
        const t = (body as { token: string }).token;
        return t === "yes" ? Response.json({ isValid: true }) : t === "no" ? Response.json({ isValid: false }) : new Response("x", { status: 503 });
      },
    });
    try {
      const errors: string[] = [];
      const a = new HttpAuthenticator(`http://127.0.0.1:${srv.port}/check`, (e) => errors.push(e));
      const s = new AbortController().signal;
      expect(await a.authenticate({ token: "yes", address: "x" }, s)).toBe("AuthenticationErrorNoError");
      expect(await a.authenticate({ token: "no", address: "x" }, s)).toBe("AuthenticationErrorAuthenticationFailed");
      expect(await a.authenticate({ token: "other", address: "x" }, s)).toBe("AuthenticationErrorProxyError");
      expect(seen[0]).toEqual({ method: "POST", type: "application/json", body: { token: "yes" } });
      expect(errors).toEqual([`authorizer http://127.0.0.1:${srv.port}/check answered HTTP 503`]);
    } finally {
      srv.stop(true);
    }
    const gone = new HttpAuthenticator(`http://127.0.0.1:${srv.port}/check`);
    expect(await gone.authenticate({ token: "yes", address: "x" }, new AbortController().signal)).toBe("AuthenticationErrorProxyError");
  });
});
