// The web GUI's request checks, pure: which Host names are ours (against DNS rebinding), whether
// a state-changing request came from our own origin, the CSRF token of a login session, the
// session cookie. server.ts applies them to every request; test/gui-guard.test.ts tables them.
import { createHmac, timingSafeEqual } from "node:crypto";

/** The session cookie's name. */
export const COOKIE = "agent_gui";

/**
 * The names and addresses a browser may use to reach this GUI: localhost, the loopback
 * addresses, the host's own names (and NAME.lan / NAME.local), its interface addresses. Every
 * `*.lan` and `*.local` name is taken too: those are names a home or site router hands out,
 * which no attacker on the internet can point at this address (DNS rebinding needs a name the
 * attacker's DNS server answers for). Lower-case, without port.
 */
export interface HostAllowList {
  names: ReadonlySet<string>;
  /** Accept any name under these suffixes (".lan", ".local"). */
  suffixes: readonly string[];
}

export function hostAllowList(hostnames: readonly string[], addresses: readonly string[]): HostAllowList {
  const names = new Set<string>(["localhost", "127.0.0.1", "::1"]);
  for (const h of hostnames) {
    const n = h.toLowerCase().replace(/\.$/, "");
    if (!n) continue;
    names.add(n);
    const short = n.split(".")[0]!;
    names.add(short);
    names.add(`${short}.lan`);
    names.add(`${short}.local`);
  }
  for (const a of addresses) if (a && a !== "0.0.0.0" && a !== "::") names.add(a.toLowerCase());
  return { names, suffixes: [".lan", ".local", ".localhost"] };
}

/** The host part of a Host header ("[::1]:8080" → "::1", "Pi.lan:80" → "pi.lan"), or null when malformed. */
export function hostOf(header: string | null): string | null {
  if (!header) return null;
  const h = header.trim().toLowerCase();
  if (h.startsWith("[")) {
    const end = h.indexOf("]");
    if (end < 0) return null;
    const rest = h.slice(end + 1);
    if (rest && !/^:\d{1,5}$/.test(rest)) return null;
    return h.slice(1, end);
  }
  const m = /^([a-z0-9.-]+)(?::(\d{1,5}))?$/.exec(h);
  return m ? m[1]!.replace(/\.$/, "") : null;
}

/** Whether the Host header names this GUI. */
export function hostAllowed(list: HostAllowList, header: string | null): boolean {
  const h = hostOf(header);
  if (h === null) return false;
  if (list.names.has(h)) return true;
  return list.suffixes.some((s) => h.endsWith(s) && h.length > s.length);
}

/**
 * Whether a state-changing request comes from a page of this origin: `Sec-Fetch-Site:
 * same-origin` when the browser sends it (every current one does), else an `Origin` whose
 * host:port equals the Host header. A request with neither (curl, a script) is refused too: it
 * has no business posting without saying where it comes from.
 */
export function sameOrigin(headers: { get(name: string): string | null }): { ok: true } | { ok: false; why: string } {
  const site = headers.get("sec-fetch-site");
  const origin = headers.get("origin");
  const host = headers.get("host");
  if (site !== null && site !== "same-origin") return { ok: false, why: `Sec-Fetch-Site is ${site}` };
  if (origin === null) return site === "same-origin" ? { ok: true } : { ok: false, why: "no Origin and no Sec-Fetch-Site header" };
  let o: URL;
  try {
    o = new URL(origin);
  } catch {
    return { ok: false, why: `Origin ${JSON.stringify(origin.slice(0, 60))} is not a URL` };
  }
  if (!host || o.host.toLowerCase() !== host.toLowerCase()) return { ok: false, why: `Origin ${o.host} is not this host (${host ?? "none"})` };
  return { ok: true };
}

/** The CSRF token of a login session: an HMAC of its id with a per-start secret. */
export function csrfToken(secret: Uint8Array, sessionId: string): string {
  return createHmac("sha256", secret).update("csrf:" + sessionId).digest("base64url");
}

export function csrfValid(secret: Uint8Array, sessionId: string, token: string | null): boolean {
  if (!token) return false;
  const want = Buffer.from(csrfToken(secret, sessionId));
  const got = Buffer.from(token);
  return want.length === got.length && timingSafeEqual(want, got);
}

/** The value of one cookie in a Cookie header, or null. */
export function cookieValue(header: string | null, name: string): string | null {
  if (!header) return null;
  for (const part of header.split(";")) {
    const i = part.indexOf("=");
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return null;
}

/** The Set-Cookie header of a login session (`maxAgeS` 0: the cookie is cleared). */
export function sessionCookie(value: string, maxAgeS: number, tls: boolean): string {
  return `${COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAgeS}${tls ? "; Secure" : ""}`;
}

/** The headers every answer carries. Scripts and styles only from this origin; never in a frame. */
export const SECURITY_HEADERS: Record<string, string> = {
  "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-store",
};
