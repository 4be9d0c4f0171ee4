// The setup page a person opens on a phone connected to the AP: the networks in range, a
// form for SSID and passphrase, the device's status. Served on the AP address only, while
// the AP is up. Every page needs the AP passphrase (HTTP Basic: any user name, the
// passphrase as password); every POST also needs the CSRF token of the form it came from
// (an HMAC of the session's credentials with a per-start secret), so a page on another
// origin the phone visits cannot post to the device with the browser's cached credentials.
// Each failed login makes the next one wait longer (./login-throttle.ts). Only AP clients get
// an answer: the nft fence drops what reaches the AP address on another interface, and the
// page itself refuses a peer outside the AP subnet (defence in depth, should the fence be gone).
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { Server } from "bun";
import type { Logger } from "../log.ts";
import { systemClock, type Clock } from "../clock.ts";
import { cidrContains, parseIPv4, type Cidr } from "../netaddr.ts";
import { afterLogin, initialThrottle, loginGate, type LoginThrottle } from "./login-throttle.ts";
import type { WifiNetwork } from "./wpa.ts";

export interface SetupBackend {
  networks(): WifiNetwork[];
  statusLines(): [string, string][];
  configure(ssid: string, psk: string): Promise<string>;
}

/** How long answers in flight may take when the page stops (the AP goes down right after). */
export const PAGE_DRAIN_MS = 1_000;

/** SSID (32) + passphrase (64) + token, urlencoded, with room to spare. */
const MAX_FORM = 4096;

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);

const STYLE = `body{font-family:system-ui,sans-serif;margin:0;padding:1em;max-width:32em;margin:auto;line-height:1.4}
h1{font-size:1.3em}table{width:100%;border-collapse:collapse}td,th{text-align:left;padding:.3em;border-bottom:1px solid #ddd}
label{display:block;margin-top:.8em}input,select,button{font-size:1.1em;width:100%;box-sizing:border-box;padding:.5em;margin-top:.2em}
button{margin-top:1em;background:#246;color:#fff;border:0;border-radius:.3em}.msg{padding:.6em;background:#eef;border-radius:.3em}.err{background:#fdd}`;

function page(title: string, body: string): Response {
  const html = `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>${esc(title)}</title><style>${STYLE}</style></head><body><h1>${esc(title)}</h1>${body}</body></html>`;
  return new Response(html, { headers: { "content-type": "text/html; charset=utf-8", "cache-control": "no-store", "x-frame-options": "DENY", "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'" } });
}

export class SetupPage {
  private server: Server<undefined> | undefined;
  private readonly secret = randomBytes(32);
  private throttle: LoginThrottle = initialThrottle();
  private readonly clock: Clock;

  constructor(
    private readonly o: {
      hostname: string;
      port: number;
      passphrase: string;
      backend: SetupBackend;
      log: Logger;
      /** The AP subnet: a peer outside it gets 403 (none: not checked). */
      subnet?: Cidr;
      /** The monotonic clock the login delays run on. */
      clock?: Clock;
    },
  ) {
    this.clock = o.clock ?? systemClock;
  }

  /** Whether `peer` (an IPv4 text, possibly "::ffff:"-mapped) is an AP client. */
  peerAllowed(peer: string | undefined): boolean {
    if (!this.o.subnet) return true;
    if (peer === undefined) return false;
    try {
      return cidrContains(this.o.subnet, parseIPv4(peer.replace(/^::ffff:/i, "")));
    } catch {
      return false; // IPv6 or garbage: never an AP client (the AP is IPv4 only)
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((r) => this.clock.setTimeout(r, ms));
  }

  get url(): string {
    return `http://${this.o.hostname}:${this.server?.port ?? this.o.port}/`;
  }

  private authorized(req: Request): string | undefined {
    const h = req.headers.get("authorization") ?? "";
    const m = /^Basic\s+([A-Za-z0-9+/=]+)$/.exec(h);
    if (!m) return undefined;
    const decoded = Buffer.from(m[1]!, "base64").toString();
    const colon = decoded.indexOf(":");
    if (colon < 0) return undefined;
    const given = Buffer.from(decoded.slice(colon + 1));
    const want = Buffer.from(this.o.passphrase);
    return given.length === want.length && timingSafeEqual(given, want) ? h : undefined;
  }

  csrfToken(auth: string): string {
    return createHmac("sha256", this.secret).update(auth).digest("base64url");
  }

  private checkCsrf(auth: string, token: unknown): boolean {
    if (typeof token !== "string") return false;
    const a = Buffer.from(token);
    const b = Buffer.from(this.csrfToken(auth));
    return a.length === b.length && timingSafeEqual(a, b);
  }

  /** `peer`: the client's address (Bun's requestIP); checked against the AP subnet. */
  async handle(req: Request, peer?: string): Promise<Response> {
    if (this.o.subnet && !this.peerAllowed(peer)) {
      this.o.log.warn(`setup page: refused ${peer ?? "a client of unknown address"}, which is not on the access point's subnet`);
      return new Response("the setup page answers only clients of the access point\n", { status: 403, headers: { "content-type": "text/plain; charset=utf-8" } });
    }
    const url = new URL(req.url);
    // Captive-portal probes (/generate_204, /hotspot-detect.html, …) and any other path: to the page.
    if (url.pathname !== "/" && url.pathname !== "/wifi" && url.pathname !== "/status.json") {
      return new Response(null, { status: 302, headers: { location: `http://${this.o.hostname}${this.o.port === 80 ? "" : `:${this.o.port}`}/` } });
    }
    const tried = req.headers.has("authorization");
    let auth: string | undefined;
    if (tried) {
      const gate = loginGate(this.throttle, this.clock.now());
      if (!gate.check) {
        return new Response(`too many failed logins: try again in ${Math.ceil(gate.retryAfterMs / 1000)} s\n`, {
          status: 429,
          headers: { "retry-after": String(Math.ceil(gate.retryAfterMs / 1000)), "content-type": "text/plain; charset=utf-8" },
        });
      }
      auth = this.authorized(req);
      const { state, delayMs } = afterLogin(this.throttle, auth !== undefined, this.clock.now());
      this.throttle = state;
      if (delayMs > 0) {
        this.o.log.warn(`setup page: failed login #${state.failures} from ${peer ?? "?"}; the next login is checked after ${delayMs} ms`);
        await this.sleep(delayMs);
      }
    }
    if (!auth) {
      return new Response("The device's setup page: log in with the access point's passphrase as password (any user name).\n", {
        status: 401,
        headers: { "www-authenticate": 'Basic realm="agent setup", charset="UTF-8"', "content-type": "text/plain; charset=utf-8" },
      });
    }
    if (url.pathname === "/status.json") return Response.json(Object.fromEntries(this.o.backend.statusLines()));
    if (url.pathname === "/wifi") {
      if (req.method !== "POST") return new Response("use the form\n", { status: 405, headers: { allow: "POST" } });
      const body = await req.text();
      if (body.length > MAX_FORM) return new Response("form too large\n", { status: 413 });
      // The form posts application/x-www-form-urlencoded; nothing else is accepted.
      const form = new URLSearchParams(body);
      if (!this.checkCsrf(auth, form.get("csrf"))) {
        this.o.log.warn("setup page: a POST without a valid CSRF token was refused");
        return new Response("missing or wrong CSRF token: reload the page and submit the form again\n", { status: 403 });
      }
      const ssid = String(form.get("ssid") ?? "");
      const psk = String(form.get("psk") ?? "");
      try {
        const msg = await this.o.backend.configure(ssid, psk);
        return page("Saved", `<p class="msg">${esc(msg)}</p><p>The device now leaves this access point to join <b>${esc(ssid)}</b>. If that fails, this access point comes back within a minute.</p>`);
      } catch (e) {
        return new Response(renderForm(this, auth, `<p class="msg err">${esc((e as Error).message)}</p>`).body, { status: 400, headers: { "content-type": "text/html; charset=utf-8" } });
      }
    }
    return renderForm(this, auth, "");
  }

  formBody(auth: string, notice: string): string {
    const nets = this.o.backend.networks();
    const rows = nets.map((n) => `<tr><td>${esc(n.ssid)}</td><td>${n.signal} dBm</td><td>${n.channel}</td><td>${esc(n.security)}</td></tr>`).join("");
    const options = nets.map((n) => `<option value="${esc(n.ssid)}">`).join("");
    const status = this.o.backend
      .statusLines()
      .map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`)
      .join("");
    return `${notice}<h2>Status</h2><table>${status}</table>
<h2>Join a Wi-Fi network</h2>
<form method="post" action="/wifi"><input type="hidden" name="csrf" value="${this.csrfToken(auth)}">
<label>Network name (SSID)<input name="ssid" list="nets" required maxlength="32" autocomplete="off"></label><datalist id="nets">${options}</datalist>
<label>Passphrase<input name="psk" type="password" minlength="8" maxlength="64" autocomplete="off"></label>
<button type="submit">Connect</button></form>
<h2>Networks in range</h2>${nets.length ? `<table><tr><th>SSID</th><th>Signal</th><th>Ch</th><th>Security</th></tr>${rows}</table>` : "<p>None found in the last scan.</p>"}`;
  }

  start(): void {
    if (this.server) return;
    this.server = Bun.serve({ hostname: this.o.hostname, port: this.o.port, fetch: (req, server) => this.handle(req, server.requestIP(req)?.address) });
    this.o.log.info(`setup page on ${this.url}`);
  }

  /** Stops listening; a request in flight (the form that just configured a network) still gets its answer. */
  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    await Promise.race([s.stop(false), Bun.sleep(PAGE_DRAIN_MS)]);
    s.stop(true);
  }
}

function renderForm(p: SetupPage, auth: string, notice: string): Response {
  return page("Device setup", p.formBody(auth, notice));
}
