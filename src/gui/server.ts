// The web GUI of a master or a relay: one page (./web, embedded in the executable by Bun's HTML
// import) and a JSON API that is the role's own API object, the one its control socket serves.
// `handle(req, peer)` answers every request and needs no socket (the tests call it directly);
// `start()` is the only part that listens (Bun.serve).
//
//   GET  /                   the page (security headers: CSP, X-Frame-Options DENY, no-store)
//   GET  /api/info           role, id, whether a user exists (else how to make one), the login, its CSRF token
//   POST /api/login          {user, password}: a session cookie; failures slow the next try, per source
//   POST /api/logout
//   POST /api/call/METHOD    the API method with the JSON body as its request: {ok, result} or {ok:false, error, hint}
//   GET  /api/events         server-sent events: the daemon's event bus, and "changed" when the role's digest moves
//
// Every request must name this host (the Host allow-list, against DNS rebinding). Every POST
// must come from this origin (Sec-Fetch-Site or Origin) and, after login, carry the session's
// CSRF token in X-CSRF-Token. No GET changes anything.
import { randomBytes } from "node:crypto";
import { hostname as osHostname, networkInterfaces } from "node:os";
import type { Server } from "bun";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import { describeError, exitCodeOf, UsageError } from "../errors.ts";
import type { AgentEvent } from "../events.ts";
import type { Logger } from "../log.ts";
import type { HostPort } from "../netaddr.ts";
import { afterLogin, initialThrottle, loginGate, type LoginThrottle } from "../uplink/login-throttle.ts";
import { COOKIE, SECURITY_HEADERS, cookieValue, csrfToken, csrfValid, hostAllowList, hostAllowed, sameOrigin, sessionCookie, type HostAllowList } from "./guard.ts";
import { UserStore } from "./users.ts";

/** A login lasts this long without a request (then the page asks again). */
export const SESSION_IDLE_MS = 12 * 3600_000;
/** Login sessions kept at most; the oldest goes first. */
const MAX_SESSIONS = 1000;
/** Sources whose failed logins are remembered at most (the oldest forgotten first). */
const MAX_THROTTLED = 10_000;
/** A request body larger than this is refused. */
const MAX_BODY = 64 * 1024;
/** How often the role's digest is compared while a page listens; and the keep-alive of the event stream. */
export const DIGEST_MS = 1000;
const KEEPALIVE_MS = 10_000;

export interface EventSource {
  subscribe(fn: (e: AgentEvent) => void): () => void;
}

export interface GuiOptions {
  listen: HostPort;
  role: "master" | "relay";
  id: string;
  /** The role's API object (what its control socket serves). */
  api: object;
  events: EventSource;
  stateDir: string;
  log: Logger;
  /** Names the page may be reached by besides localhost, the host name and its addresses. */
  hostnames?: string[];
  /** Addresses besides the interfaces' (tests). */
  addresses?: string[];
  /** PEM certificate (chain) and key: serve HTTPS. */
  tls?: { cert: string; key: string };
  clock?: Clock;
  /** A short text that changes when what the pages show changes (sessions, devices): "changed" is sent then. */
  digest?: () => string | Promise<string>;
  /** Rewrites a request before the API sees it (the master sets `requester` to the browser's address). */
  shape?: (method: string, req: Record<string, unknown>, peer: string) => Record<string, unknown>;
  /** The page's HTML; default: the embedded app, read from the running server at start. */
  html?: string;
}

interface LoginSession {
  user: string;
  seen: number;
}

type Json = Record<string, unknown>;

export class GuiServer {
  readonly name = "gui";
  private server: Server<undefined> | undefined;
  private readonly extra = new Map<string, Server<undefined>>();
  private readonly secret = randomBytes(32);
  private readonly sessions = new Map<string, LoginSession>();
  private readonly throttles = new Map<string, LoginThrottle>();
  private readonly users: UserStore;
  private readonly clock: Clock;
  private readonly hosts: HostAllowList;
  private html: string | undefined;
  private readonly streams = new Set<{ send: (event: string, data: unknown) => void; sid: string; close: () => void }>();
  private digestTimer: ReturnType<Clock["setInterval"]> | undefined;
  private keepTimer: ReturnType<Clock["setInterval"]> | undefined;
  private lastDigest = "";
  private unsubscribe: (() => void) | undefined;

  constructor(private readonly o: GuiOptions) {
    this.users = new UserStore(o.stateDir);
    this.clock = o.clock ?? systemClock;
    this.html = o.html;
    const addrs = [o.listen.host, ...(o.addresses ?? [])];
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) addrs.push(a.address);
    this.hosts = hostAllowList([osHostname(), ...(o.hostnames ?? [])], addrs);
  }

  /** Where the page is, once started. */
  get url(): string {
    if (!this.server) return "";
    return `${this.o.tls ? "https" : "http"}://${this.o.listen.host === "0.0.0.0" ? "127.0.0.1" : this.o.listen.host}:${this.server.port}/`;
  }

  get port(): number {
    return this.server?.port ?? 0;
  }

  async start(): Promise<void> {
    this.server = await this.serveOn(this.o.listen.host, this.o.listen.port);
    if (this.html === undefined) {
      // The bundled page as Bun serves it (its scripts and styles stay on Bun's asset routes);
      // "/" answers it with this server's headers.
      const r = await fetch(new URL("/__app/", this.url), { tls: { rejectUnauthorized: false } } as RequestInit);
      if (!r.ok) throw new Error(`the embedded page does not load: HTTP ${r.status}`);
      this.html = await r.text();
    }
    this.unsubscribe = this.o.events.subscribe((e) => this.broadcast("agent", e));
    this.o.log.info(`web GUI at ${this.url}${this.users.has() ? "" : " (no user yet: agent gui user add NAME, password on stdin)"}`);
  }

  /** One listener of this GUI (the same routes and checks on every address it serves). */
  private async serveOn(host: string, port: number): Promise<Server<undefined>> {
    const page = (await import("./web/index.html")).default;
    return Bun.serve({
      hostname: host,
      port,
      development: false,
      idleTimeout: 30,
      ...(this.o.tls ? { tls: { cert: this.o.tls.cert, key: this.o.tls.key } } : {}),
      routes: { "/__app/": page },
      fetch: (req, server) => this.handle(req, server.requestIP(req)?.address ?? ""),
    });
  }

  /** The addresses served besides `listen` (the LAN side's, ./lan-bind.ts). */
  get alsoServed(): string[] {
    return [...this.extra.keys()];
  }

  /**
   * Serves the page on exactly these addresses besides `listen`, on the same port (once started):
   * new ones are bound and allowed as Host, gone ones closed. Returns the addresses that failed, with why.
   */
  async serveAlso(hosts: readonly string[]): Promise<{ host: string; error: string }[]> {
    const failed: { host: string; error: string }[] = [];
    if (!this.server) return failed;
    for (const [h, srv] of [...this.extra]) {
      if (hosts.includes(h)) continue;
      this.extra.delete(h);
      await srv.stop(true);
    }
    for (const h of hosts) {
      if (this.extra.has(h) || h === this.o.listen.host) continue;
      (this.hosts.names as Set<string>).add(h.toLowerCase());
      try {
        this.extra.set(h, await this.serveOn(h, this.port));
      } catch (e) {
        failed.push({ host: h, error: (e as Error).message });
      }
    }
    return failed;
  }

  async close(): Promise<void> {
    this.unsubscribe?.();
    for (const s of [...this.streams]) s.close();
    this.stopTimers();
    for (const srv of this.extra.values()) await srv.stop(true);
    this.extra.clear();
    await this.server?.stop(true);
    this.server = undefined;
  }

  status(): Record<string, unknown> {
    return { url: this.url, users: this.users.list().length, logins: this.sessions.size, streams: this.streams.size };
  }

  /** Answers one request from `peer` (its address). */
  async handle(req: Request, peer: string): Promise<Response> {
    const url = new URL(req.url);
    if (!hostAllowed(this.hosts, req.headers.get("host"))) {
      return text(421, `this GUI does not answer to the host ${JSON.stringify((req.headers.get("host") ?? "").slice(0, 80))}; open it by the device's address or name`);
    }
    const path = url.pathname;
    if (req.method === "GET" || req.method === "HEAD") {
      if (path === "/" || path === "/index.html") {
        if (this.html === undefined) return text(503, "the page is not loaded");
        return new Response(this.html, { headers: { ...SECURITY_HEADERS, "content-type": "text/html; charset=utf-8" } });
      }
      if (path === "/api/info") return this.info(req);
      if (path === "/api/events") return this.eventStream(req);
      if (path.startsWith("/api/")) return json(405, { ok: false, error: `${path} takes POST only: no GET changes anything` }, { allow: "POST" });
      return text(404, "not found");
    }
    if (req.method !== "POST") return json(405, { ok: false, error: `${req.method} is not served` }, { allow: "GET, POST" });
    const origin = sameOrigin(req.headers);
    if (!origin.ok) return json(403, { ok: false, error: `refused: not a request of this page (${origin.why})` });
    if (path === "/api/login") return this.login(req, peer);
    const sid = this.sessionOf(req);
    if (!sid) return json(401, { ok: false, error: "not logged in", login: true });
    if (!csrfValid(this.secret, sid, req.headers.get("x-csrf-token"))) return json(403, { ok: false, error: "refused: missing or wrong CSRF token (reload the page)" });
    if (path === "/api/logout") {
      this.sessions.delete(sid);
      for (const s of [...this.streams]) if (s.sid === sid) s.close();
      return json(200, { ok: true }, { "set-cookie": sessionCookie("", 0, !!this.o.tls) });
    }
    const m = /^\/api\/call\/([A-Za-z][A-Za-z0-9]{0,40})$/.exec(path);
    if (m) return this.call(m[1]!, req, peer);
    return json(404, { ok: false, error: `no such API path ${path}` });
  }

  private info(req: Request): Response {
    const sid = this.sessionOf(req);
    const user = sid ? this.sessions.get(sid)!.user : null;
    const hasUsers = this.users.has();
    return json(200, {
      ok: true,
      role: this.o.role,
      id: this.o.id,
      users: hasUsers,
      setup: hasUsers ? null : `No GUI user exists yet. On this ${this.o.role}, run: agent gui user add NAME (it reads the password from stdin)`,
      user,
      csrf: sid ? csrfToken(this.secret, sid) : null,
      methods: user ? this.methods() : [],
    });
  }

  /** The API's methods the page may call: every function of the role's API object. */
  private methods(): string[] {
    return Object.entries(this.o.api)
      .filter(([, f]) => typeof f === "function")
      .map(([k]) => k)
      .sort();
  }

  private async login(req: Request, peer: string): Promise<Response> {
    const body = await readJson(req);
    if (body instanceof Response) return body;
    const now = this.clock.now();
    const key = peer || "unknown";
    const state = this.throttles.get(key) ?? initialThrottle();
    const gate = loginGate(state, now);
    if (!gate.check) return json(429, { ok: false, error: `too many failed logins from ${key}: wait ${Math.ceil(gate.retryAfterMs / 1000)} s` }, { "retry-after": String(Math.ceil(gate.retryAfterMs / 1000)) });
    const user = typeof body.user === "string" ? body.user : "";
    const password = typeof body.password === "string" ? body.password : "";
    if (!this.users.has()) return json(403, { ok: false, error: "no GUI user exists yet: run agent gui user add NAME on this device" });
    const ok = user !== "" && password !== "" && (await this.users.verify(user, password));
    const next = afterLogin(state, ok, this.clock.now());
    this.throttles.delete(key);
    if (!ok) {
      this.throttles.set(key, next.state);
      while (this.throttles.size > MAX_THROTTLED) this.throttles.delete(this.throttles.keys().next().value!);
      this.o.log.warn(`GUI login refused for ${JSON.stringify(user.slice(0, 32))} from ${key} (failure ${next.state.failures} in a row)`);
      await new Promise((r) => this.clock.setTimeout(() => r(undefined), next.delayMs));
      return json(401, { ok: false, error: "wrong user name or password" });
    }
    const sid = randomBytes(32).toString("base64url");
    this.sessions.set(sid, { user, seen: this.clock.now() });
    while (this.sessions.size > MAX_SESSIONS) this.sessions.delete(this.sessions.keys().next().value!);
    this.o.log.info(`GUI login: ${user} from ${key}`);
    return json(200, { ok: true, user, csrf: csrfToken(this.secret, sid) }, { "set-cookie": sessionCookie(sid, SESSION_IDLE_MS / 1000, !!this.o.tls) });
  }

  /** The login session of the request's cookie, if it is live (and its user still exists). */
  private sessionOf(req: Request): string | null {
    const sid = cookieValue(req.headers.get("cookie"), COOKIE);
    if (!sid) return null;
    const s = this.sessions.get(sid);
    if (!s) return null;
    const now = this.clock.now();
    if (now - s.seen > SESSION_IDLE_MS || !this.users.list().some((u) => u.name === s.user)) {
      this.sessions.delete(sid);
      return null;
    }
    s.seen = now;
    return sid;
  }

  private async call(method: string, req: Request, peer: string): Promise<Response> {
    const fn = (this.o.api as Record<string, unknown>)[method];
    if (typeof fn !== "function" || !Object.prototype.hasOwnProperty.call(this.o.api, method)) {
      return json(404, { ok: false, error: `this ${this.o.role} has no API method ${method}`, methods: this.methods() });
    }
    let body = await readJson(req, true);
    if (body instanceof Response) return body;
    if (this.o.shape) body = this.o.shape(method, body, peer);
    try {
      const result = await (fn as (r: unknown) => unknown).call(this.o.api, Object.keys(body).length ? body : undefined);
      if (isMutating(method)) this.poke();
      return json(200, { ok: true, result: result ?? null });
    } catch (e) {
      const code = exitCodeOf(e);
      const status = code === 2 ? 400 : code === 4 ? 404 : 502;
      return json(status, { ok: false, error: describeError(e), hint: (e as { hint?: string }).hint ?? null });
    }
  }

  private eventStream(req: Request): Response {
    const sid = this.sessionOf(req);
    if (!sid) return json(401, { ok: false, error: "not logged in", login: true });
    const enc = new TextEncoder();
    let entry: { send: (event: string, data: unknown) => void; sid: string; close: () => void } | undefined;
    const body = new ReadableStream<Uint8Array>({
      start: (ctl) => {
        let open = true;
        entry = {
          sid,
          send: (event, data) => {
            if (!open) return;
            try {
              ctl.enqueue(enc.encode(event === "" ? ": keep-alive\n\n" : `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`));
            } catch {
              entry!.close();
            }
          },
          close: () => {
            if (!open) return;
            open = false;
            this.streams.delete(entry!);
            if (this.streams.size === 0) this.stopTimers();
            try {
              ctl.close();
            } catch {
              /* closed by the client */
            }
          },
        };
        this.streams.add(entry);
        entry.send("hello", { at: new Date(this.clock.wall()).toISOString() });
        this.startTimers();
      },
      cancel: () => entry?.close(),
    });
    req.signal?.addEventListener("abort", () => entry?.close());
    return new Response(body, { headers: { ...SECURITY_HEADERS, "content-type": "text/event-stream", connection: "keep-alive" } });
  }

  private broadcast(event: string, data: unknown): void {
    for (const s of [...this.streams]) {
      if (!this.sessions.has(s.sid)) s.close();
      else s.send(event, data);
    }
  }

  /** After an action: compare the digest now rather than at the next tick. */
  private poke(): void {
    if (this.streams.size) void this.checkDigest();
  }

  private async checkDigest(): Promise<void> {
    if (!this.o.digest) return;
    let d: string;
    try {
      d = await this.o.digest();
    } catch (e) {
      d = `error: ${(e as Error).message}`;
    }
    if (d !== this.lastDigest) {
      this.lastDigest = d;
      this.broadcast("changed", {});
    }
  }

  private startTimers(): void {
    if (this.digestTimer === undefined && this.o.digest) {
      void Promise.resolve(this.o.digest()).then((d) => (this.lastDigest = d), () => {});
      this.digestTimer = this.clock.setInterval(() => void this.checkDigest(), DIGEST_MS);
    }
    this.keepTimer ??= this.clock.setInterval(() => this.broadcast("", null), KEEPALIVE_MS);
  }

  private stopTimers(): void {
    this.clock.clearInterval(this.digestTimer);
    this.clock.clearInterval(this.keepTimer);
    this.digestTimer = undefined;
    this.keepTimer = undefined;
  }
}

/** Methods that only read: every other one may change what the pages show. */
const READS = /^(status|devices|sessions|refusals|list|.*(List|Status|History|Report))$/;
function isMutating(method: string): boolean {
  return !READS.test(method);
}

async function readJson(req: Request, emptyOk = false): Promise<Json | Response> {
  const len = Number(req.headers.get("content-length") ?? "0");
  if (len > MAX_BODY) return json(413, { ok: false, error: `request body over ${MAX_BODY} bytes` });
  const textBody = await req.text();
  if (textBody.length > MAX_BODY) return json(413, { ok: false, error: `request body over ${MAX_BODY} bytes` });
  if (textBody.trim() === "") return emptyOk ? {} : json(400, { ok: false, error: "expected a JSON object body" });
  try {
    const v = JSON.parse(textBody);
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new UsageError("not an object");
    return v as Json;
  } catch {
    return json(400, { ok: false, error: "expected a JSON object body" });
  }
}

function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { ...SECURITY_HEADERS, "content-type": "application/json", ...headers } });
}

function text(status: number, body: string): Response {
  return new Response(body + "\n", { status, headers: { ...SECURITY_HEADERS, "content-type": "text/plain; charset=utf-8" } });
}
