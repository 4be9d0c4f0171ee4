// netconnectd's own socket (seed 002, ../shared/PROTOCOLS.md §5): `[ap] netconnectd_socket`
// (e.g. /var/run/netconnectd.sock) with netconnectd's mode 0666 by default, so unprivileged
// clients (OctoPrint's netconnectd plugin, netconnectcli, a web frontend) configure Wi-Fi
// without root, as they did with netconnectd. It serves netconnectd's commands and nothing
// else: the agent's control commands stay on the root-only control socket, and one sent here
// is refused with the control socket's path.
//
// Framing as netconnectd's: one request per connection, JSON + NUL in, compact JSON + NUL out;
// then this side closes (netconnectd leaves that to the client; its clients close after the
// answer either way). Unlike netconnectd, a request is bounded in size and time.
//
// While Wi-Fi/AP is off (`[ap] enabled = false`) every request gets `disabledReply()` at once,
// here and on the control socket, instead of a timeout.
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import type { Socket, UnixSocketListener } from "bun";
import { groupId, isAlive } from "../control.ts";
import { RuntimeError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { systemClock, type Clock, type TimerHandle } from "../clock.ts";
import { answerNetconnectd, encodeNetconnectd, NETCONNECTD_COMMANDS, NETCONNECTD_MAX_REQUEST, NETCONNECTD_REQUEST_TIMEOUT_MS, type NetconnectdBackend } from "./netconnectd.ts";

/** Connections served at once (netconnectd serves one; its clients send one request each). */
export const NETCONNECTD_MAX_CONNECTIONS = 8;

/** How long a connection over the cap may take to send its request, and any may stay after its answer, before it is cut. */
export const BUSY_WAIT_MS = 1_000;

const busyReply = () => encodeNetconnectd({ error: `busy: ${NETCONNECTD_MAX_CONNECTIONS} requests are being served; try again` });

/** The answer to every netconnectd request while Wi-Fi/AP is off: the setting that turns it on. */
export function disabledReply(): string {
  return encodeNetconnectd({ error: "Wi-Fi and the access point are off on this device: set enabled = true in the [ap] section of the agent's config (ap.enabled) and restart the agent" });
}

/** Answers netconnectd requests with the Wi-Fi service, or with `disabledReply()` when there is none. */
export function netconnectdAnswerer(backend: NetconnectdBackend | undefined): (text: string) => Promise<string> {
  if (!backend) return async () => disabledReply();
  return async (text) => encodeNetconnectd(await answerNetconnectd(backend, text));
}

/**
 * The refusal of an agent control request (`{"cmd": …}`) on this socket, or undefined when
 * `text` is not one. Pure.
 */
export function controlRequestRefusal(text: string, controlPath: string): string | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (v === null || typeof v !== "object" || Array.isArray(v) || !("cmd" in v)) return undefined;
  const cmd = (v as { cmd: unknown }).cmd;
  return `this is the netconnectd socket: it serves only netconnectd's commands (${Object.keys(NETCONNECTD_COMMANDS).join(", ")}); agent control commands such as ${JSON.stringify(typeof cmd === "string" ? cmd.slice(0, 40) : cmd)} go to the agent's control socket ${controlPath} (\`agent status\`, \`agent uplink …\`)`;
}

export interface NetconnectdSocketOptions {
  path: string;
  /** File mode of the socket (netconnectd: 0666). */
  mode: number;
  /** Group of the socket, for a mode such as 0660. */
  group?: string;
  /** Where agent control commands go, named when one is sent here. */
  controlPath: string;
  /** One request (without its NUL) → the whole reply, NUL included. */
  answer: (text: string) => Promise<string>;
  log: Logger;
  clock?: Clock;
  /** How long a request may stay without its NUL; default NETCONNECTD_REQUEST_TIMEOUT_MS. */
  requestTimeoutMs?: number;
}

interface Conn {
  buf: string;
  done: boolean;
  /** Over the connection cap: answered "busy" when its request comes. */
  busy?: boolean;
  timer?: TimerHandle;
  counted: boolean;
}

/** A daemon Component (src/roles/daemon.ts) by shape. */
export class NetconnectdSocket {
  readonly name = "netconnectd";
  private listener: UnixSocketListener<Conn> | undefined;
  private unavailable: string | undefined = "not started";
  private open = 0;
  private readonly counts = { served: 0, refused: 0 };
  private readonly clock: Clock;

  constructor(private readonly o: NetconnectdSocketOptions) {
    this.clock = o.clock ?? systemClock;
  }

  /** Binds the socket. A problem (the path is taken, an unknown group) is logged and shown in status; the daemon goes on. */
  async start(): Promise<void> {
    try {
      await this.bind();
      this.unavailable = undefined;
    } catch (e) {
      this.unavailable = (e as Error).message;
      this.o.log.error(`netconnectd socket unavailable: ${this.unavailable}`, e);
    }
  }

  private async bind(): Promise<void> {
    const { path, log } = this.o;
    mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
    if (existsSync(path)) {
      if (!lstatSync(path).isSocket()) throw new RuntimeError(`${path} exists and is not a socket`, "remove it, or set another [ap] netconnectd_socket");
      if (await isAlive(path)) throw new RuntimeError(`another program is listening on ${path} (netconnectd itself?)`, "stop it (`systemctl disable --now netconnectd`), or set another [ap] netconnectd_socket");
      unlinkSync(path);
    }
    const timeout = this.o.requestTimeoutMs ?? NETCONNECTD_REQUEST_TIMEOUT_MS;
    const self = this;
    const reply = (s: Socket<Conn>, text: string, refused: boolean) => {
      s.data.done = true;
      self.clock.clearTimeout(s.data.timer);
      if (refused) self.counts.refused++;
      else self.counts.served++;
      s.write(text);
      s.end();
      // The client closes after the answer; one that does not is cut, freeing its place.
      s.data.timer = self.clock.setTimeout(() => s.terminate(), BUSY_WAIT_MS);
    };
    this.listener = Bun.listen<Conn>({
      unix: path,
      // A client may shut down its sending side after the request (socat does): the answer still goes back.
      allowHalfOpen: true,
      socket: {
        open(s) {
          s.data = { buf: "", done: false, counted: false };
          if (self.open >= NETCONNECTD_MAX_CONNECTIONS) {
            // Answered as soon as its request comes (an answer before it would be lost to a
            // client that is still writing), cut if none comes within BUSY_WAIT_MS.
            s.data.busy = true;
            s.data.timer = self.clock.setTimeout(() => s.terminate(), BUSY_WAIT_MS);
            return;
          }
          self.open++;
          s.data.counted = true;
          s.data.timer = self.clock.setTimeout(() => {
            if (!s.data.done) reply(s, encodeNetconnectd({ error: `request not terminated by NUL within ${timeout / 1000}s (netconnectd's framing: JSON, then \\0)` }), true);
          }, timeout);
        },
        data(s, chunk) {
          if (s.data.done) return;
          if (s.data.busy) return reply(s, busyReply(), true);
          s.data.buf += chunk.toString();
          if (s.data.buf.length > NETCONNECTD_MAX_REQUEST) {
            reply(s, encodeNetconnectd({ error: `request larger than ${NETCONNECTD_MAX_REQUEST} bytes` }), true);
            return;
          }
          const nul = s.data.buf.indexOf("\0");
          if (nul < 0) {
            // The agent's own clients end a request with a newline, not NUL: answer them in their framing.
            const nl = s.data.buf.indexOf("\n");
            const refusal = nl >= 0 ? controlRequestRefusal(s.data.buf.slice(0, nl), self.o.controlPath) : undefined;
            if (refusal) {
              log.warn("netconnectd socket: refused an agent control request (use the control socket)");
              reply(s, JSON.stringify({ ok: false, code: "usage", error: refusal }) + "\n", true);
            }
            return;
          }
          const text = s.data.buf.slice(0, nul);
          s.data.done = true;
          self.clock.clearTimeout(s.data.timer);
          const refusal = controlRequestRefusal(text, self.o.controlPath);
          if (refusal) {
            log.warn("netconnectd socket: refused an agent control request (use the control socket)");
            reply(s, encodeNetconnectd({ error: refusal }), true);
            return;
          }
          void self.o.answer(text).then(
            (answer) => reply(s, answer, false),
            (e: Error) => reply(s, encodeNetconnectd({ error: e.message }), false),
          );
        },
        end(s) {
          // The client sent all it will: a request without its NUL is never finished.
          if (s.data.busy && !s.data.done) reply(s, busyReply(), true);
          else if (!s.data.done) reply(s, encodeNetconnectd({ error: "request ended without its NUL terminator (netconnectd's framing: JSON, then \\0)" }), true);
        },
        close(s) {
          self.clock.clearTimeout(s.data?.timer);
          if (s.data?.counted) {
            s.data.counted = false;
            self.open--;
          }
        },
        error(_s, err) {
          log.debug("netconnectd socket connection error", err);
        },
      },
    });
    try {
      if (this.o.group !== undefined) chownSync(path, -1, groupId(this.o.group));
      chmodSync(path, this.o.mode);
    } catch (e) {
      this.close();
      throw new RuntimeError(`netconnectd socket ${path}: cannot set group ${JSON.stringify(this.o.group)} / mode ${this.o.mode.toString(8)}: ${(e as Error).message}`, "name an existing group in [ap] netconnectd_socket_group (see /etc/group)", { cause: e });
    }
    log.info(`netconnectd socket ${path} (mode ${this.o.mode.toString(8).padStart(4, "0")}${this.o.group ? `, group ${this.o.group}` : ""})`);
  }

  status(): Record<string, unknown> {
    if (this.unavailable) return { unavailable: this.unavailable };
    return { socket: this.o.path, mode: this.o.mode.toString(8).padStart(4, "0"), ...(this.o.group ? { group: this.o.group } : {}), open: this.open, ...this.counts };
  }

  /** Stops accepting and removes the socket file. Idempotent. */
  close(): void {
    if (!this.listener) return;
    this.listener.stop(true);
    this.listener = undefined;
    this.unavailable = "stopped";
    try {
      unlinkSync(this.o.path);
    } catch {
      // already gone
    }
  }
}
