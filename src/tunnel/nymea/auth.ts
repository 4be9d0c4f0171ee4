// Authenticators: does a token let its holder use this proxy? Upstream asks an AWS Lambda;
// ours read a tokens file, ask an HTTP authorizer (the Lambda's request and answer shape:
// POST {"token": …} → {"isValid": bool}), or say yes to all (dummy, loopback only).
import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { UsageError } from "../../errors.ts";
import type { AuthError } from "./protocol.ts";

export interface AuthRequest {
  token: string;
  /** The client's address, for logs. */
  address: string;
}

export interface Authenticator {
  readonly kind: string;
  /** Resolves with the outcome; `signal` aborts when the relay stops waiting (authentication_timeout). */
  authenticate(req: AuthRequest, signal: AbortSignal): Promise<AuthError>;
}

const digest = (s: string) => createHash("sha256").update(s, "utf8").digest();

/** Parses a tokens file: one token per line, `#` starts a comment, blank lines skipped. */
export function parseTokens(text: string): string[] {
  const out: string[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*$/, "").trim();
    if (line) out.push(line);
  }
  return out;
}

/**
 * Compares `token` with every accepted one in constant time: fixed-size digests compared with
 * timingSafeEqual, every entry visited whatever matched, so the time says nothing about how
 * much of a token was right.
 */
export function tokenAccepted(accepted: readonly Buffer[], token: string): boolean {
  const d = digest(token);
  let ok = false;
  for (const a of accepted) ok = timingSafeEqual(a, d) || ok;
  return ok;
}

/** The tokens file (`tokens = FILE`), read at start and again on `reload()` (SIGHUP). */
export class TokensFileAuthenticator implements Authenticator {
  readonly kind = "tokens";
  private digests: Buffer[] = [];
  constructor(readonly path: string) {
    this.reload();
  }
  /** Reads the file again; throws (keeping the old tokens) when it cannot. Returns the count. */
  reload(): number {
    let text: string;
    try {
      text = readFileSync(this.path, "utf8");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const why = code === "ENOENT" ? "it does not exist" : code === "EACCES" ? "permission denied" : (e as Error).message;
      throw new UsageError(`cannot read nymea tokens file ${this.path}: ${why}`, "write the accepted tokens there, one per line ('#' starts a comment), or point [nymea] tokens at the right file");
    }
    this.digests = parseTokens(text).map(digest);
    return this.digests.length;
  }
  get count(): number {
    return this.digests.length;
  }
  async authenticate(req: AuthRequest): Promise<AuthError> {
    return tokenAccepted(this.digests, req.token) ? "AuthenticationErrorNoError" : "AuthenticationErrorAuthenticationFailed";
  }
}

/** `authorizer = URL`: POST {"token": …}, expects 200 and {"isValid": true|false}. */
export class HttpAuthenticator implements Authenticator {
  readonly kind = "authorizer";
  constructor(readonly url: string, private readonly onError: (why: string) => void = () => {}) {}
  async authenticate(req: AuthRequest, signal: AbortSignal): Promise<AuthError> {
    let res: Response;
    try {
      res = await fetch(this.url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token: req.token }), signal });
    } catch (e) {
      if (signal.aborted) return "AuthenticationErrorTimeout";
      this.onError(`authorizer ${this.url}: ${(e as Error).message}`);
      return "AuthenticationErrorProxyError";
    }
    if (res.status !== 200) {
      this.onError(`authorizer ${this.url} answered HTTP ${res.status}`);
      return "AuthenticationErrorProxyError";
    }
    let body: unknown;
    try {
      body = await res.json();
    } catch {
      this.onError(`authorizer ${this.url} answered something that is not JSON`);
      return "AuthenticationErrorProxyError";
    }
    const valid = body !== null && typeof body === "object" ? (body as { isValid?: unknown }).isValid : undefined;
    if (typeof valid !== "boolean") {
      this.onError(`authorizer ${this.url} answered without a boolean "isValid"`);
      return "AuthenticationErrorProxyError";
    }
    return valid ? "AuthenticationErrorNoError" : "AuthenticationErrorAuthenticationFailed";
  }
}

/** Upstream's `-m`: every token is good. The config allows it only with loopback listeners. */
export class DummyAuthenticator implements Authenticator {
  readonly kind = "dummy";
  async authenticate(): Promise<AuthError> {
    return "AuthenticationErrorNoError";
  }
}
