// The two nymea transports as thin adapters around NymeaServer: TLS (or, on loopback only,
// plain) TCP through Bun.listen, and TLS (or plain) WebSocket through Bun.serve. Bun.serve's
// WebSocket is used rather than a hand-written one: it assembles fragmented frames, answers
// pings, and since Bun 1.4 has pause()/resume() on a server socket, which is what the tunnel's
// backpressure from a slow TCP partner needs; any path is accepted, no subprotocol chosen.
import type { Server, ServerWebSocket, Socket, TCPSocketListener } from "bun";
import { KILL, WS_CLOSE_BAD_OPERATION } from "./protocol.ts";
import type { NymeaConn, NymeaConnEvents, NymeaServer } from "./server.ts";

export interface NymeaTls {
  cert: string;
  key: string;
}

export interface NymeaListenOptions {
  hostname: string;
  port: number;
  /** undefined: plain (the config allows that on loopback only). */
  tls?: NymeaTls;
  server: NymeaServer;
}

/** How long a killed connection may take to take its last answer before it is cut. */
const KILL_FLUSH_MS = 5_000;

interface TcpData {
  conn?: TcpConn;
}

class TcpConn implements NymeaConn {
  readonly transport = "tcp" as const;
  ev: NymeaConnEvents | null = null;
  private pending: Uint8Array[] = [];
  private ending = false;
  private done = false;
  constructor(private readonly s: Socket<TcpData>) {}

  get address(): string {
    return this.s.remoteAddress;
  }

  send(line: string): void {
    this.write(Buffer.from(line, "utf8"));
  }

  forward(data: Uint8Array | string): boolean {
    return this.write(typeof data === "string" ? Buffer.from(data, "utf8") : data);
  }

  private write(b: Uint8Array): boolean {
    if (this.done || this.ending) return true;
    if (this.pending.length) {
      this.pending.push(b.slice());
      return false;
    }
    const n = this.s.write(b);
    if (n < 0) return true; // closing: the close event follows
    if (n < b.byteLength) {
      this.pending.push(b.slice(n));
      return false;
    }
    return true;
  }

  pause(): void {
    if (!this.done) this.s.pause();
  }
  resume(): void {
    if (!this.done) this.s.resume();
  }

  kill(): void {
    if (this.done || this.ending) return;
    this.ending = true;
    if (this.pending.length === 0) return this.finish();
    // The last answer still goes out, within a bound.
    setTimeout(() => this.finish(), KILL_FLUSH_MS).unref?.();
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.pending = [];
    this.s.end();
  }

  onDrain(): void {
    while (this.pending.length) {
      const head = this.pending[0]!;
      const n = this.s.write(head);
      if (n < 0) return;
      if (n < head.byteLength) {
        this.pending[0] = head.subarray(n);
        return;
      }
      this.pending.shift();
    }
    if (this.ending) return this.finish();
    this.ev?.drain();
  }

  onClose(): void {
    this.done = true;
    this.pending = [];
    const ev = this.ev;
    this.ev = null;
    ev?.closed();
  }
}

/** The TCP transport (TLS unless `tls` is undefined). */
export function listenNymeaTcp(o: NymeaListenOptions): TCPSocketListener<TcpData> {
  return Bun.listen<TcpData>({
    hostname: o.hostname,
    port: o.port,
    ...(o.tls ? { tls: { cert: o.tls.cert, key: o.tls.key } } : {}),
    data: {},
    socket: {
      open(s) {
        const conn = new TcpConn(s);
        s.data = { conn };
        s.setNoDelay(true);
        conn.ev = o.server.accept(conn);
      },
      data(s, chunk) {
        s.data.conn?.ev?.data(chunk);
      },
      drain(s) {
        s.data.conn?.onDrain();
      },
      close(s) {
        s.data.conn?.onClose();
      },
      error(s) {
        s.data.conn?.onClose();
      },
    },
  });
}

interface WsData {
  conn?: WsConn;
}

class WsConn implements NymeaConn {
  readonly transport = "ws" as const;
  ev: NymeaConnEvents | null = null;
  private done = false;
  /** TCP chunks cut UTF-8 sequences anywhere: the decoder keeps the tail for the next one. */
  private readonly decoder = new TextDecoder("utf-8");
  constructor(private readonly ws: ServerWebSocket<WsData>, readonly address: string) {}

  send(line: string): void {
    if (!this.done) this.ws.sendText(line);
  }

  forward(data: Uint8Array | string): boolean {
    if (this.done) return true;
    const text = typeof data === "string" ? data : this.decoder.decode(data, { stream: true });
    if (text.length === 0) return true;
    return this.ws.sendText(text) !== -1;
  }

  pause(): void {
    if (!this.done) this.ws.pause();
  }
  resume(): void {
    if (!this.done) this.ws.resume();
  }

  kill(reason: string): void {
    if (this.done) return;
    this.done = true;
    // A close reason is at most 123 bytes.
    this.ws.close(WS_CLOSE_BAD_OPERATION, Buffer.from(reason, "utf8").subarray(0, 123).toString("utf8"));
  }

  onClose(): void {
    this.done = true;
    const ev = this.ev;
    this.ev = null;
    ev?.closed();
  }
}

/** The headers upstream's QWebSocketServer answers an upgrade with. */
export const WS_UPGRADE_HEADERS = {
  Server: "nymea-remoteproxy",
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Credentials": "false",
  "Access-Control-Allow-Methods": "GET",
  "Access-Control-Allow-Headers": "content-type",
};

/** The WebSocket transport (wss unless `tls` is undefined). Any path; text frames only. */
export function listenNymeaWs(o: NymeaListenOptions): Server<WsData> {
  return Bun.serve<WsData>({
    hostname: o.hostname,
    port: o.port,
    ...(o.tls ? { tls: { cert: o.tls.cert, key: o.tls.key } } : {}),
    // A client that never finishes its upgrade request (slowloris) is cut by Bun itself after
    // about 10-12 s, whatever idleTimeout says (measured with Bun 1.4.5: the timer that bounds an
    // unfinished request is not restarted by the bytes a dripping client sends). idleTimeout only
    // bounds an idle HTTP keep-alive connection that never asks to upgrade.
    idleTimeout: 10,
    fetch(req, server) {
      if (server.upgrade(req, { headers: WS_UPGRADE_HEADERS, data: {} })) return undefined;
      return new Response("This is a WebSocket endpoint of nymea-remoteproxy.\n", { status: 400, headers: { Server: "nymea-remoteproxy" } });
    },
    websocket: {
      // Upstream has no idle timeout in a tunnel; the nymea timers cover the rest.
      idleTimeout: 0,
      sendPings: false,
      perMessageDeflate: false,
      open(ws) {
        const conn = new WsConn(ws, ws.remoteAddress);
        ws.data = { conn };
        conn.ev = o.server.accept(conn);
      },
      message(ws, msg) {
        const conn = ws.data.conn;
        if (typeof msg !== "string") {
          conn?.kill(KILL.binary);
          return;
        }
        conn?.ev?.data(msg);
      },
      drain(ws) {
        ws.data.conn?.ev?.drain();
      },
      close(ws) {
        ws.data.conn?.onClose();
      },
    },
  });
}
