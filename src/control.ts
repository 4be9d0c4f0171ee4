// The local control socket: how `agent status` (and later `agent nat ...`, `agent uplink ...`)
// talk to a running daemon. A unix stream socket; each request is one JSON object ending in
// "\n":  {"cmd": "status", "args": {...}}  →  {"ok": true, "result": ...} or
// {"ok": false, "error": "...", "code": "usage" | "runtime"}. Several requests may share a
// connection; responses come back in order. Requests over MAX_REQUEST bytes are refused and
// the connection closed. Handlers are registered per command by the role that owns them.
//
// A second protocol shares the socket when registered with `nulProtocol()`: netconnectd's
// (seed 002), one JSON object terminated by NUL per connection. A connection whose first
// request ends in NUL (before any newline) is answered by that handler, with NUL, and
// closed. A request left unterminated for NUL_TIMEOUT_MS is answered with an error and
// closed, so a silent client never holds a connection.
//
// A role serves one API object (src/roles/api.ts) with `serve()`: each method becomes the
// command of its wire name (`natAdd` → "nat.add", see wireName), its one argument the
// request's "args". `ControlClient<Api>` is the typed other end, over the socket or, for
// tests and in-process front ends, straight into a server's dispatch (same JSON both ways).
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import type { Socket, UnixSocketListener } from "bun";
import { NotFoundError, RuntimeError, UsageError } from "./errors.ts";
import type { Logger } from "./log.ts";

export const MAX_REQUEST = 1 << 20;

export type Handler = (args: Record<string, unknown>) => Promise<unknown> | unknown;

export interface ControlResponse {
  ok: boolean;
  result?: unknown;
  error?: string;
  code?: "usage" | "runtime" | "not_found";
  /** The hint of a UsageError/RuntimeError/NotFoundError, for the CLI to print. */
  hint?: string;
}

/** How long a started request may stay without its terminator (newline or NUL). */
export const NUL_TIMEOUT_MS = 5_000;

interface ConnState {
  buf: string;
  chain: Promise<void>;
  nul?: boolean;
  timer?: Timer;
  /** Answer bytes the kernel has not taken yet (a device list of thousands is ~200 KB). */
  out?: Uint8Array;
  endAfterOut?: boolean;
  /** A stream this connection subscribed to (`agent monitor`): ended when the client goes. */
  unsubscribe?: () => void;
  /** Lines of the stream not delivered because the client read too slowly. */
  dropped?: number;
}

/**
 * A streaming command: after the first answer ({"ok":true,"result":{"stream":CMD}}) the daemon
 * writes one JSON line per `emit` until the client closes the connection. Returns the unsubscribe.
 */
export type StreamHandler = (args: Record<string, unknown>, emit: (value: unknown) => void) => () => void;

/** Stream lines queued for one slow client beyond this are dropped (and counted). */
export const MAX_STREAM_QUEUE = 1 << 20;

/** Writes all of `text`: what the socket does not take now goes out on drain. */
function send(s: Socket<ConnState>, text: string, end = false): void {
  const bytes = new TextEncoder().encode(text);
  const pending = s.data.out ? concatBytes(s.data.out, bytes) : bytes;
  s.data.out = undefined;
  const n = s.write(pending);
  if (n >= 0 && n < pending.length) s.data.out = pending.subarray(n);
  if (end) {
    if (s.data.out) s.data.endAfterOut = true;
    else s.end();
  }
}

function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * The command an API method is served as: each capital starts a dotted part, so `natAdd` is
 * "nat.add" and `uplinkStatus` "uplink.status" (the names the socket has always used).
 */
export function wireName(method: string): string {
  return method.replace(/[A-Z]/g, (c) => "." + c.toLowerCase());
}

type Fn = (...args: never[]) => unknown;
/** The method names of an API type (optional methods included: a daemon may lack a part). */
export type MethodOf<Api> = { [K in keyof Api]-?: NonNullable<Api[K]> extends Fn ? K : never }[keyof Api] & string;
type ParamsOf<F> = F extends (...args: infer P) => unknown ? P : never;
type ReturnOf<F> = F extends (...args: never[]) => infer R ? Awaited<R> : never;
/** A method's request object (undefined when it takes none); a union for a union of APIs. */
export type RequestOf<Api, K extends MethodOf<Api>> = ParamsOf<NonNullable<Api[K]>>[0];
/** The request as call()'s rest parameter: optional when the method may go without one. */
type RequestArgs<R> = undefined extends R ? [req?: R] : [req: R];
/** What a method resolves to; a union for a union of APIs. */
export type ResultOf<Api, K extends MethodOf<Api>> = ReturnOf<NonNullable<Api[K]>>;

export class ControlServer {
  readonly path: string;
  private readonly handlers = new Map<string, Handler>();
  /** The role whose API this socket serves, named in the answer to an unknown command. */
  private role: string | undefined;
  private fallbackHandler: Handler | undefined;
  private readonly streams = new Map<string, StreamHandler>();
  private nulHandler: ((text: string) => Promise<string>) | undefined;
  private listener: UnixSocketListener<ConnState> | undefined;
  private readonly log: Logger;

  /**
   * With `operator`, the socket belongs to that group with mode 0660, so its members may run
   * `agent devices` and the rest without sudo (like `tailscale up --operator`).
   */
  constructor(path: string, log: Logger, readonly operator?: string) {
    this.path = path;
    this.log = log;
  }

  handle(cmd: string, handler: Handler): this {
    this.handlers.set(cmd, handler);
    return this;
  }

  /**
   * Serves every method of `api` (a plain object of functions) under its wire name, next to
   * handlers registered with `handle()` (a method replaces a handler of the same name).
   * Requests come from outside the process: each method checks its request's fields.
   */
  serve<Api extends object>(api: Api, role?: string): this {
    if (role) this.role = role;
    for (const [method, fn] of Object.entries(api)) {
      if (typeof fn !== "function") continue;
      this.handlers.set(wireName(method), (args) => (fn as (req: unknown) => unknown).call(api, args));
    }
    return this;
  }

  /** Registers a streaming command (see StreamHandler); over the socket only, not dispatch(). */
  stream(cmd: string, handler: StreamHandler): this {
    this.streams.set(cmd, handler);
    return this;
  }

  /** Starts a stream if `line` asks for one; false when it is an ordinary request. */
  private startStream(s: Socket<ConnState>, line: string): boolean {
    let req: { cmd?: unknown; args?: unknown };
    try {
      req = JSON.parse(line);
    } catch {
      return false;
    }
    const handler = typeof req?.cmd === "string" ? this.streams.get(req.cmd) : undefined;
    if (!handler) return false;
    s.data.unsubscribe?.();
    const args = req.args && typeof req.args === "object" && !Array.isArray(req.args) ? (req.args as Record<string, unknown>) : {};
    send(s, JSON.stringify({ ok: true, result: { stream: req.cmd } }) + "\n");
    s.data.dropped = 0;
    s.data.unsubscribe = handler(args, (value) => {
      // A reader that does not keep up loses lines, never the daemon's memory; it hears how many.
      if ((s.data.out?.length ?? 0) > MAX_STREAM_QUEUE) {
        s.data.dropped = (s.data.dropped ?? 0) + 1;
        return;
      }
      if (s.data.dropped) {
        send(s, JSON.stringify({ type: "dropped", count: s.data.dropped, time: new Date().toISOString() }) + "\n");
        s.data.dropped = 0;
      }
      send(s, JSON.stringify(value) + "\n");
    });
    return true;
  }

  /** The handler registered for a command, for a part that wraps another's (see roles/onsite.ts). */
  handlerOf(cmd: string): Handler | undefined {
    return this.handlers.get(cmd);
  }

  /**
   * Handles requests that have no "cmd" (another program's request shape, e.g. seed 001's
   * NAT requests). The handler gets the whole object; returning undefined means "not
   * mine" and the request is refused as usual.
   */
  fallback(handler: Handler): this {
    this.fallbackHandler = handler;
    return this;
  }

  /**
   * Serves NUL-terminated requests (netconnectd's protocol): the handler gets the request
   * text without its NUL and returns the whole answer, NUL included.
   */
  nulProtocol(handler: (text: string) => Promise<string>): this {
    this.nulHandler = handler;
    return this;
  }

  /** Answers one decoded request; exported for tests and for other front ends. */
  async dispatch(line: string): Promise<ControlResponse> {
    let req: unknown;
    try {
      req = JSON.parse(line);
    } catch {
      return { ok: false, code: "usage", error: "request is not valid JSON" };
    }
    if (this.fallbackHandler && req !== null && typeof req === "object" && !Array.isArray(req) && !("cmd" in req)) {
      try {
        const result = await this.fallbackHandler(req as Record<string, unknown>);
        if (result !== undefined) return { ok: true, result };
      } catch (e) {
        return this.failure("fallback request", e);
      }
    }
    if (req === null || typeof req !== "object" || typeof (req as { cmd?: unknown }).cmd !== "string") {
      return { ok: false, code: "usage", error: 'request must be an object with a string "cmd"' };
    }
    const { cmd, args } = req as { cmd: string; args?: unknown };
    const handler = this.handlers.get(cmd);
    if (!handler) {
      return { ok: false, code: "usage", error: `unknown command ${JSON.stringify(cmd)}; this ${this.role ? `${this.role} ` : ""}daemon knows ${[...this.handlers.keys()].sort().join(", ")}` };
    }
    if (args !== undefined && (args === null || typeof args !== "object" || Array.isArray(args))) {
      return { ok: false, code: "usage", error: '"args" must be an object' };
    }
    try {
      return { ok: true, result: await handler((args ?? {}) as Record<string, unknown>) };
    } catch (e) {
      return this.failure(`control command ${cmd}`, e);
    }
  }

  private failure(what: string, e: unknown): ControlResponse {
    const usage = e instanceof UsageError;
    const notFound = e instanceof NotFoundError;
    const known = usage || notFound || e instanceof RuntimeError;
    if (!known) this.log.error(`${what} failed`, e);
    const res: ControlResponse = { ok: false, code: usage ? "usage" : notFound ? "not_found" : "runtime", error: (e as Error).message };
    if (known && e.hint) res.hint = e.hint;
    return res;
  }

  /**
   * Binds the socket. A socket file left by a dead daemon is removed; one that still
   * answers means another daemon owns it, which is refused.
   */
  async start(): Promise<void> {
    mkdirSync(dirname(this.path), { recursive: true, mode: 0o755 });
    if (existsSync(this.path)) {
      if (await isAlive(this.path)) {
        throw new RuntimeError(`another daemon is already listening on ${this.path}`, "stop it first, or pass --control with another path");
      }
      unlinkSync(this.path);
    }
    const self = this;
    this.listener = Bun.listen<ConnState>({
      unix: this.path,
      socket: {
        open(s) {
          s.data = { buf: "", chain: Promise.resolve() };
        },
        data(s, chunk) {
          s.data.buf += chunk.toString();
          clearTimeout(s.data.timer);
          s.data.timer = undefined;
          if (s.data.buf.length > MAX_REQUEST) {
            send(s, JSON.stringify({ ok: false, code: "usage", error: `request larger than ${MAX_REQUEST} bytes` }) + (s.data.nul ? "\0" : "\n"), true);
            return;
          }
          const nul = s.data.buf.indexOf("\0");
          const firstNl = s.data.buf.indexOf("\n");
          if (self.nulHandler && s.data.nul === undefined && nul >= 0 && (firstNl < 0 || nul < firstNl)) s.data.nul = true;
          if (s.data.nul) {
            if (nul < 0) return;
            const text = s.data.buf.slice(0, nul);
            s.data.buf = "";
            const handler = self.nulHandler!;
            s.data.chain = s.data.chain.then(async () => {
              const answer = await handler(text).catch((e: Error) => JSON.stringify({ error: e.message }) + "\0");
              // The client may have gone: writing to a closed socket is a no-op.
              send(s, answer, true);
            });
            return;
          }
          let nl: number;
          while ((nl = s.data.buf.indexOf("\n")) >= 0) {
            s.data.nul = false;
            const line = s.data.buf.slice(0, nl);
            s.data.buf = s.data.buf.slice(nl + 1);
            if (line.trim() === "") continue;
            s.data.chain = s.data.chain.then(async () => {
              if (self.streams.size && self.startStream(s, line)) return;
              const res = await self.dispatch(line);
              send(s, JSON.stringify(res) + "\n");
            });
          }
          if (s.data.buf.length > 0) {
            s.data.timer = setTimeout(() => {
              const err = `request not terminated within ${NUL_TIMEOUT_MS / 1000}s`;
              send(s, s.data.nul === false || !self.nulHandler ? JSON.stringify({ ok: false, code: "usage", error: err }) + "\n" : JSON.stringify({ error: err }) + "\0", true);
            }, NUL_TIMEOUT_MS);
          }
        },
        drain(s) {
          const out = s.data.out;
          if (!out) return;
          s.data.out = undefined;
          const n = s.write(out);
          if (n >= 0 && n < out.length) s.data.out = out.subarray(n);
          else if (s.data.endAfterOut) s.end();
        },
        close(s) {
          clearTimeout(s.data?.timer);
          s.data?.unsubscribe?.();
        },
        error(_s, err) {
          self.log.debug("control connection error", err);
        },
      },
    });
    // The socket grants full control of the agent: owner only, or owner and the operator group.
    if (this.operator === undefined) {
      chmodSync(this.path, 0o600);
      return;
    }
    try {
      const gid = groupId(this.operator);
      chownSync(this.path, -1, gid);
      chmodSync(this.path, 0o660);
    } catch (e) {
      this.close();
      throw new RuntimeError(`control socket ${this.path}: cannot give it to operator group ${JSON.stringify(this.operator)}: ${(e as Error).message}`, "name an existing group (see /etc/group); the daemon must run as root or be a member of it", { cause: e });
    }
  }

  /** Stops accepting and removes the socket file. Idempotent. */
  close(): void {
    if (!this.listener) return;
    this.listener.stop(true);
    this.listener = undefined;
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

/** The id of group `name` (or a numeric gid as it is), from /etc/group. */
export function groupId(name: string, groupFile = "/etc/group"): number {
  if (/^\d+$/.test(name)) return Number(name);
  for (const entry of readFileSync(groupFile, "utf8").split("\n")) {
    const [gname, , gid] = entry.split(":");
    if (gname === name && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new Error(`no group ${JSON.stringify(name)} in ${groupFile}`);
}

/** Whether something accepts connections on the unix socket at `path` (a live daemon owns it). */
export async function isAlive(path: string): Promise<boolean> {
  try {
    const s = await Bun.connect({ unix: path, socket: { data() {} } });
    s.end();
    return true;
  } catch {
    return false;
  }
}

/** The answer to a command the daemon does not serve (e.g. `uplink.status` without uplinks)? */
export function isUnknownCommand(e: unknown, cmd: string): boolean {
  return e instanceof UsageError && e.message.startsWith(`unknown command ${JSON.stringify(cmd)}`);
}

/** Carries one request to a daemon: over its socket, or into a server in this process. */
export type ControlTransport = (cmd: string, args: Record<string, unknown>, timeoutMs: number) => Promise<ControlResponse>;

/** The transport over a daemon's control socket. */
export function socketTransport(path: string): ControlTransport {
  return (cmd, args, timeoutMs) => exchange(path, cmd, args, timeoutMs);
}

/**
 * The transport into a server of this process: the request and the answer still go through
 * JSON, so what a test sees is what the socket would carry.
 */
export function inProcessTransport(server: ControlServer): ControlTransport {
  return async (cmd, args) => JSON.parse(JSON.stringify(await server.dispatch(JSON.stringify({ cmd, args })))) as ControlResponse;
}

export interface ControlClientOptions {
  /** How long to wait for an answer; default 10 s. */
  timeoutMs?: number;
}

/**
 * The typed client of a daemon's API: `call("devices")` resolves to what the API's `devices`
 * returns. For a union of APIs (a command that any of several roles answers) only their
 * common methods can be called, and results are the union of theirs.
 */
export class ControlClient<Api> {
  constructor(
    private readonly transport: ControlTransport,
    private readonly opts: ControlClientOptions = {},
  ) {}

  /** The same client with another answer timeout. */
  withTimeout(timeoutMs: number): ControlClient<Api> {
    return new ControlClient<Api>(this.transport, { ...this.opts, timeoutMs });
  }

  async call<K extends MethodOf<Api>>(method: K, ...req: RequestArgs<RequestOf<Api, K>>): Promise<ResultOf<Api, K>> {
    const args = (req[0] ?? {}) as Record<string, unknown>;
    const res = await this.transport(wireName(method), args, this.opts.timeoutMs ?? 10_000);
    return unwrap(res) as ResultOf<Api, K>;
  }
}

/** A typed client of the daemon whose control socket is at `path`. */
export function controlClient<Api>(path: string, opts: ControlClientOptions = {}): ControlClient<Api> {
  return new ControlClient<Api>(socketTransport(path), opts);
}

function unwrap(res: ControlResponse): unknown {
  if (!res.ok) {
    const Err = res.code === "usage" ? UsageError : res.code === "not_found" ? NotFoundError : RuntimeError;
    throw new Err(res.error ?? "daemon reported an unspecified error", typeof res.hint === "string" ? res.hint : undefined);
  }
  return res.result;
}

/** Sends one request to a daemon and returns its result; errors carry the daemon's message. */
export async function controlRequest(path: string, cmd: string, args: Record<string, unknown> = {}, timeoutMs = 10_000): Promise<unknown> {
  return unwrap(await exchange(path, cmd, args, timeoutMs));
}

async function exchange(path: string, cmd: string, args: Record<string, unknown>, timeoutMs: number): Promise<ControlResponse> {
  if (!existsSync(path)) {
    throw new RuntimeError(`no daemon control socket at ${path}`, "is the daemon running? pass --control SOCKET if it uses another path");
  }
  return new Promise<ControlResponse>((resolve, reject) => {
    let buf = "";
    let settled = false;
    const timer = setTimeout(() => finish(new RuntimeError(`daemon at ${path} did not answer within ${timeoutMs / 1000}s`)), timeoutMs);
    const finish = (v: ControlResponse | Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (v instanceof Error) reject(v);
      else resolve(v);
    };
    Bun.connect({
      unix: path,
      socket: {
        open(s) {
          s.write(JSON.stringify({ cmd, args }) + "\n");
        },
        data(s, chunk) {
          buf += chunk.toString();
          const nl = buf.indexOf("\n");
          if (nl < 0) return;
          try {
            finish(JSON.parse(buf.slice(0, nl)) as ControlResponse);
          } catch {
            finish(new RuntimeError(`daemon at ${path} sent a malformed answer`));
          }
          s.end();
        },
        close() {
          finish(new RuntimeError(`daemon at ${path} closed the connection without answering`));
        },
        error(_s, err) {
          finish(new RuntimeError(`control socket ${path}: ${err.message}`));
        },
      },
    }).catch((e: Error) => {
      const code = (e as NodeJS.ErrnoException).code;
      const hint = code === "EACCES" ? "the socket is owner-only: run as the daemon's user (root), or join the group the daemon was given with --operator" : "is the daemon running?";
      finish(new RuntimeError(`cannot connect to control socket ${path}: ${e.message}`, hint));
    });
  });
}

/**
 * Opens a streaming command (`agent monitor`): `onValue` gets each JSON line after the first
 * answer. Resolves with a handle once the daemon has accepted the stream; `done` settles when
 * the connection ends (the daemon stopped, or close()).
 */
export async function controlStream(path: string, cmd: string, args: Record<string, unknown>, onValue: (v: unknown) => void, timeoutMs = 10_000): Promise<{ close(): void; done: Promise<void> }> {
  if (!existsSync(path)) throw new RuntimeError(`no daemon control socket at ${path}`, "is the daemon running? pass --control SOCKET if it uses another path");
  let buf = "";
  let first = true;
  let accept!: (v: void) => void;
  let refuse!: (e: Error) => void;
  const accepted = new Promise<void>((res, rej) => ((accept = res), (refuse = rej)));
  let ended!: () => void;
  const done = new Promise<void>((r) => (ended = r));
  const timer = setTimeout(() => refuse(new RuntimeError(`daemon at ${path} did not answer within ${timeoutMs / 1000}s`)), timeoutMs);
  let sock: Socket<undefined> | undefined;
  try {
    sock = await Bun.connect({
      unix: path,
      socket: {
        open(s) {
          s.write(JSON.stringify({ cmd, args }) + "\n");
        },
        data(_s, chunk) {
          buf += chunk.toString();
          let nl: number;
          while ((nl = buf.indexOf("\n")) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            let v: unknown;
            try {
              v = JSON.parse(line);
            } catch {
              refuse(new RuntimeError(`daemon at ${path} sent a malformed line`));
              continue;
            }
            if (first) {
              first = false;
              clearTimeout(timer);
              try {
                unwrap(v as ControlResponse);
                accept();
              } catch (e) {
                refuse(e as Error);
              }
              continue;
            }
            onValue(v);
          }
        },
        close() {
          clearTimeout(timer);
          refuse(new RuntimeError(`daemon at ${path} closed the connection without answering`));
          ended();
        },
        error(_s, err) {
          refuse(new RuntimeError(`control socket ${path}: ${err.message}`));
        },
      },
    });
  } catch (e) {
    clearTimeout(timer);
    throw new RuntimeError(`cannot connect to control socket ${path}: ${(e as Error).message}`, "is the daemon running?");
  }
  try {
    await accepted;
  } catch (e) {
    sock.end();
    throw e;
  }
  return { close: () => sock!.end(), done };
}
