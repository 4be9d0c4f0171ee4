// The web GUI's security (issue 15, DESIGN.md "Web GUI security") with real HTTP requests to a
// real GuiServer on 127.0.0.1, in front of a recording API object: a state change without a
// login, from another origin, without the CSRF token, or by GET is refused and never reaches
// the API; a rebinding Host is refused; failed logins slow the next one (on an injected clock:
// no wall time asserted). The guards' pure functions are tabled first.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FakeClock } from "../src/clock.ts";
import { UsageError } from "../src/errors.ts";
import { EventBus } from "../src/events.ts";
import { COOKIE, cookieValue, csrfToken, csrfValid, hostAllowList, hostAllowed, hostOf, sameOrigin } from "../src/gui/guard.ts";
import { GuiServer } from "../src/gui/server.ts";
import { guiTls } from "../src/gui/attach.ts";
import { makeCert, newCa } from "./helpers/certs.ts";
import { UserStore } from "../src/gui/users.ts";
import { masterDigest, relayDigest } from "../src/gui/digest.ts";
import { createLogger } from "../src/log.ts";
import { waitFor } from "./helpers/wait.ts";

const log = createLogger({ level: "silent", write: () => {} });

describe("guards (pure)", () => {
  const list = hostAllowList(["pi-master"], ["192.168.1.20", "0.0.0.0"]);
  test.each([
    ["localhost:8080", true],
    ["127.0.0.1:8080", true],
    ["[::1]:8080", true],
    ["192.168.1.20:8080", true],
    ["pi-master:8080", true],
    ["PI-MASTER.lan", true],
    ["pi-master.local:80", true],
    ["router.lan", true],
    ["evil.example.com:8080", false],
    ["192.168.1.21:8080", false],
    ["0.0.0.0:8080", false],
    ["lan", false],
    [".lan", false],
    ["pi-master.lan.evil.com", false],
    ["a b", false],
    ["", false],
  ])("Host %p allowed: %p", (host, ok) => {
    expect(hostAllowed(list, host)).toBe(ok);
  });

  test("hostOf strips the port and brackets, refuses junk", () => {
    expect(hostOf("[fe80::1]:80")).toBe("fe80::1");
    expect(hostOf("Pi.LAN.:80")).toBe("pi.lan");
    expect(hostOf("[::1]x")).toBeNull();
    expect(hostOf(null)).toBeNull();
  });

  const hdrs = (o: Record<string, string>) => new Headers(o);
  test.each([
    [{ host: "pi:8080", "sec-fetch-site": "same-origin" }, true],
    [{ host: "pi:8080", "sec-fetch-site": "same-origin", origin: "http://pi:8080" }, true],
    [{ host: "pi:8080", origin: "http://pi:8080" }, true],
    [{ host: "pi:8080", "sec-fetch-site": "cross-site", origin: "http://evil.com" }, false],
    [{ host: "pi:8080", "sec-fetch-site": "same-site" }, false],
    [{ host: "pi:8080", origin: "http://evil.com" }, false],
    [{ host: "pi:8080", origin: "http://pi:9090" }, false],
    [{ host: "pi:8080", origin: "null" }, false],
    [{ host: "pi:8080" }, false],
  ])("same origin %p: %p", (h, ok) => {
    expect(sameOrigin(hdrs(h)).ok).toBe(ok);
  });

  test("the CSRF token is the session's and no other", () => {
    const secret = new Uint8Array(32).fill(7);
    const t = csrfToken(secret, "s1");
    expect(csrfValid(secret, "s1", t)).toBe(true);
    expect(csrfValid(secret, "s2", t)).toBe(false);
    expect(csrfValid(new Uint8Array(32).fill(8), "s1", t)).toBe(false);
    expect(csrfValid(secret, "s1", null)).toBe(false);
    expect(csrfValid(secret, "s1", t.slice(1))).toBe(false);
  });

  test("cookieValue finds one cookie among several", () => {
    expect(cookieValue(`a=1; ${COOKIE}=xyz; b=2`, COOKIE)).toBe("xyz");
    expect(cookieValue("a=1", COOKIE)).toBeNull();
  });

  test("digests move with what the pages show, not with counters", () => {
    const s = (state: string, bytes: number) => [{ session: "s1", state, expires: null, tunnel: { mode: "routed", state: "up", packets: { bytes_out: bytes } } }];
    expect(masterDigest(s("active", 1), [])).toBe(masterDigest(s("active", 999), []));
    expect(masterDigest(s("active", 1), [])).not.toBe(masterDigest(s("resuming", 1), []));
    expect(masterDigest(s("active", 1), [])).not.toBe(masterDigest(s("closed", 1), []));
    expect(relayDigest([{ id: "a", state: "online" }], [], 0)).not.toBe(relayDigest([{ id: "a", state: "offline" }], [], 0));
    expect(relayDigest([], [], 0)).not.toBe(relayDigest([], [], 1));
  });
});

describe("users", () => {
  const dir = mkdtempSync(join(tmpdir(), "agent-gui-users-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  test("argon2id hashes in a 0600 file; wrong passwords and unknown users fail; del", async () => {
    const s = new UserStore(dir);
    expect(s.has()).toBe(false);
    expect(await s.add("alice", "correct horse")).toBe(true);
    expect(statSync(s.file).mode & 0o777).toBe(0o600);
    expect(s.list()[0]!.hash).toStartWith("$argon2id$");
    expect(await s.verify("alice", "correct horse")).toBe(true);
    expect(await s.verify("alice", "correct horsE")).toBe(false);
    expect(await s.verify("bob", "correct horse")).toBe(false);
    expect(await s.add("alice", "another password")).toBe(false);
    expect(await s.verify("alice", "correct horse")).toBe(false);
    expect(s.del("alice")).toBe(true);
    expect(s.del("alice")).toBe(false);
    expect(s.has()).toBe(false);
  });
  test("bad names and short passwords are refused by name", async () => {
    const s = new UserStore(dir);
    expect(s.add("../x", "long enough pw")).rejects.toThrow(UsageError);
    expect(s.add("bob", "short")).rejects.toThrow(/at least 8 characters/);
  });
});

describe("a real GUI server", () => {
  const dir = mkdtempSync(join(tmpdir(), "agent-gui-sec-"));
  const clock = new FakeClock();
  const calls: string[] = [];
  const api = {
    status: () => ({ role: "master", id: "m1" }),
    sessions: () => [{ session: "s1", state: "active" }],
    disconnect: (req: { session: string }) => {
      calls.push(`disconnect ${req?.session}`);
      if (req?.session !== "s1") throw new UsageError(`no session ${req?.session}`);
      return { session: "s1", state: "closed" };
    },
  };
  const gui = new GuiServer({ listen: { host: "127.0.0.1", port: 0 }, role: "master", id: "m1", api, events: new EventBus(), stateDir: dir, log, clock });
  let base = "";
  let origin = "";
  beforeAll(async () => {
    await gui.start();
    base = gui.url;
    origin = base.replace(/\/$/, "");
  });
  afterAll(async () => {
    await gui.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(new URL(path, base), { method: "POST", headers: { "content-type": "application/json", origin, ...headers }, body: JSON.stringify(body) });

  async function login(user = "alice", password = "correct horse"): Promise<{ cookie: string; csrf: string }> {
    const r = await post("/api/login", { user, password });
    expect(r.status).toBe(200);
    const set = r.headers.get("set-cookie")!;
    const j = (await r.json()) as { csrf: string };
    return { cookie: set.split(";")[0]!, csrf: j.csrf };
  }

  test("with no user: the page says how to make one, and nobody logs in", async () => {
    const info = (await (await fetch(new URL("/api/info", base))).json()) as { users: boolean; setup: string };
    expect(info.users).toBe(false);
    expect(info.setup).toContain("agent gui user add NAME");
    const r = await post("/api/login", { user: "admin", password: "admin" });
    expect(r.status).toBe(403);
    expect(r.headers.get("set-cookie")).toBeNull();
  });

  test("the page carries CSP and X-Frame-Options: DENY, and is the embedded app", async () => {
    const r = await fetch(base);
    expect(r.status).toBe(200);
    expect(r.headers.get("x-frame-options")).toBe("DENY");
    expect(r.headers.get("content-security-policy")).toContain("frame-ancestors 'none'");
    expect(r.headers.get("content-security-policy")).toContain("script-src 'self'");
    const html = await r.text();
    const js = /src="(\/[^"]+\.js)"/.exec(html)?.[1];
    expect(js).toBeDefined();
    const asset = await fetch(new URL(js!, base));
    expect(asset.status).toBe(200);
    expect(await asset.text()).toContain("/api/call/");
  });

  test("a state change without a login is refused and never reaches the API", async () => {
    await new UserStore(dir).add("alice", "correct horse");
    const r = await post("/api/call/disconnect", { session: "s1" });
    expect(r.status).toBe(401);
    expect(calls).toEqual([]);
  });

  test("the cookie is HttpOnly and SameSite=Strict; a logged-in same-origin POST with the token works", async () => {
    const r = await post("/api/login", { user: "alice", password: "correct horse" });
    const set = r.headers.get("set-cookie")!;
    expect(set).toContain("HttpOnly");
    expect(set).toContain("SameSite=Strict");
    expect(set).not.toContain("Secure"); // plain HTTP here; under TLS it is set
    const { cookie, csrf } = await login();
    const ok = await post("/api/call/disconnect", { session: "s1" }, { cookie, "x-csrf-token": csrf });
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { result: { state: string } }).result.state).toBe("closed");
    expect(calls).toEqual(["disconnect s1"]);
    // The API's own refusal comes back as the CLI would word it.
    const bad = await post("/api/call/disconnect", { session: "nope" }, { cookie, "x-csrf-token": csrf });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toContain("no session nope");
    calls.length = 0;
  });

  test("CSRF: another origin, a missing or another login's token, is refused", async () => {
    const { cookie, csrf } = await login();
    const other = await login();
    const cases: [string, Record<string, string>][] = [
      ["cross-site origin", { cookie, "x-csrf-token": csrf, origin: "http://evil.example", "sec-fetch-site": "cross-site" }],
      ["foreign Origin, no fetch metadata", { cookie, "x-csrf-token": csrf, origin: "http://evil.example" }],
      ["no token", { cookie }],
      ["another login's token", { cookie, "x-csrf-token": other.csrf }],
    ];
    for (const [what, h] of cases) {
      const r = await post("/api/call/disconnect", { session: "s1" }, h);
      expect({ what, status: r.status }).toEqual({ what, status: 403 });
    }
    // A form post from another site (no JSON, no Origin of ours).
    const form = await fetch(new URL("/api/call/disconnect", base), { method: "POST", headers: { cookie, "content-type": "application/x-www-form-urlencoded", origin: "http://evil.example" }, body: "session=s1" });
    expect(form.status).toBe(403);
    expect(calls).toEqual([]);
  });

  test("a rebinding Host is refused, for the page and the API", async () => {
    const { cookie, csrf } = await login();
    const port = new URL(base).port;
    // fetch() keeps the Host it is given only through a raw request: curl sends it as told.
    const curl = async (args: string[]) => {
      const p = Bun.spawn(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", ...args], { stdout: "pipe", stderr: "pipe" });
      return (await new Response(p.stdout).text()).trim();
    };
    expect(await curl(["-H", `Host: evil.example.com:${port}`, base])).toBe("421");
    expect(await curl(["-H", `Host: evil.example.com:${port}`, "-H", `Origin: http://evil.example.com:${port}`, "-H", `Cookie: ${cookie}`, "-H", `X-CSRF-Token: ${csrf}`, "-H", "content-type: application/json", "--data", '{"session":"s1"}', new URL("/api/call/disconnect", base).href])).toBe("421");
    expect(await curl(["-H", `Host: localhost:${port}`, base])).toBe("200");
    expect(calls).toEqual([]);
  });

  test("a GET never changes state", async () => {
    const { cookie } = await login();
    for (const path of ["/api/call/disconnect?session=s1", "/api/logout", "/api/login?user=alice&password=correct%20horse"]) {
      const r = await fetch(new URL(path, base), { headers: { cookie } });
      expect(r.status).toBe(405);
    }
    expect(calls).toEqual([]);
    // The login still works: GET /api/logout did not end it.
    const info = (await (await fetch(new URL("/api/info", base), { headers: { cookie } })).json()) as { user: string | null };
    expect(info.user).toBe("alice");
  });

  test("a wrong password is slowed: its answer waits, and until then no login is checked from there", async () => {
    const first = post("/api/login", { user: "alice", password: "wrong one" });
    let settled = false;
    void first.then(() => (settled = true));
    await waitFor(() => clock.pending > 0 || undefined, 10_000, "the failed login's delay");
    expect(settled).toBe(false);
    // The right password, during the delay: refused without being checked.
    const during = await post("/api/login", { user: "alice", password: "correct horse" });
    expect(during.status).toBe(429);
    expect(Number(during.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    clock.advance(500);
    expect((await first).status).toBe(401);
    // The second failure in a row waits twice as long.
    const second = post("/api/login", { user: "alice", password: "wrong again" });
    await waitFor(() => clock.pending > 0 || undefined, 10_000, "the second delay");
    clock.advance(500);
    const still = await post("/api/login", { user: "alice", password: "correct horse" });
    expect(still.status).toBe(429);
    clock.advance(500);
    expect((await second).status).toBe(401);
    // After the delay the right password works and clears the count.
    await login();
  });

  test("logout ends the login: its cookie and token no longer work", async () => {
    const { cookie, csrf } = await login();
    expect((await post("/api/logout", {}, { cookie, "x-csrf-token": csrf })).status).toBe(200);
    expect((await post("/api/call/disconnect", { session: "s1" }, { cookie, "x-csrf-token": csrf })).status).toBe(401);
    expect(calls).toEqual([]);
  });

  test("a deleted user's login ends at its next request", async () => {
    const store = new UserStore(dir);
    await store.add("bob", "bobs password");
    const { cookie, csrf } = await login("bob", "bobs password");
    store.del("bob");
    expect((await post("/api/call/sessions", {}, { cookie, "x-csrf-token": csrf })).status).toBe(401);
  });
});

describe("the GUI under TLS (gui_cert)", () => {
  const dir = mkdtempSync(join(tmpdir(), "agent-gui-tls-"));
  const ca = newCa("gui test CA");
  const leaf = makeCert(ca, { role: "master", id: "m1", ips: ["127.0.0.1"] });
  const caFile = join(dir, "ca.crt");
  writeFileSync(caFile, ca.certPem);
  const api = { status: () => ({ role: "master", id: "m1" }) };
  const gui = new GuiServer({ listen: { host: "127.0.0.1", port: 0 }, role: "master", id: "m1", api, events: new EventBus(), stateDir: dir, log, clock: new FakeClock(), tls: guiTls({ gui_cert: "bundle" } as never, { certPem: leaf.certPem, keyPem: leaf.keyPem }) });
  beforeAll(async () => {
    await new UserStore(dir).add("alice", "correct horse");
    await gui.start();
  });
  afterAll(async () => {
    await gui.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const curl = async (args: string[]) => {
    const p = Bun.spawn(["curl", "-sS", "--cacert", caFile, ...args], { stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = [await new Response(p.stdout).text(), await new Response(p.stderr).text(), await p.exited];
    return { out, err, code };
  };

  test("gui_cert = \"bundle\" serves HTTPS with the daemon's certificate: curl verifies it against the fleet CA, and the login cookie is Secure", async () => {
    expect(gui.url).toStartWith("https://127.0.0.1:");
    const info = await curl([new URL("/api/info", gui.url).href]);
    expect(info.code).toBe(0);
    expect(JSON.parse(info.out)).toMatchObject({ users: true });
    const origin = gui.url.replace(/\/$/, "");
    const login = await curl(["-D", "-", "-o", "/dev/null", "-H", "content-type: application/json", "-H", `Origin: ${origin}`, "--data", '{"user":"alice","password":"correct horse"}', new URL("/api/login", gui.url).href]);
    expect(login.code).toBe(0);
    const cookie = login.out.split(/\r?\n/).find((l) => /^set-cookie:/i.test(l)) ?? "";
    expect(cookie).toContain("HttpOnly");
    expect(cookie).toContain("SameSite=Strict");
    expect(cookie).toContain("Secure");
    // Plain HTTP to the TLS port gets no page.
    const plain = await curl(["--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", gui.url.replace("https:", "http:")]);
    expect(plain.out).not.toBe("200");
  });

  test("a PEM file without a key, or without a certificate, is refused by name", () => {
    const noKey = join(dir, "nokey.pem");
    writeFileSync(noKey, leaf.certPem);
    expect(() => guiTls({ gui_cert: noKey } as never, { certPem: "", keyPem: "" })).toThrow(/found no key/);
    const noCert = join(dir, "nocert.pem");
    writeFileSync(noCert, leaf.keyPem);
    expect(() => guiTls({ gui_cert: noCert } as never, { certPem: "", keyPem: "" })).toThrow(/found no certificate/);
    const both = join(dir, "both.pem");
    writeFileSync(both, leaf.certPem + leaf.keyPem);
    expect(guiTls({ gui_cert: both } as never, { certPem: "", keyPem: "" })).toEqual({ cert: leaf.certPem.trim(), key: leaf.keyPem.trim() });
  });
});
