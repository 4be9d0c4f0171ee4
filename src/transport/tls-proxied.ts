// The relay's listener behind a TCP load balancer (`proxy_protocol = true`): each connection
// starts with a PROXY protocol v2 header (./proxy-protocol.ts) naming the client's real address,
// then the client's TLS. Bun's TLS listener starts TLS at the first byte and cannot be handed
// bytes already read, so this one is node:net + node:tls: the header is read off the TCP
// socket, what follows it is put back (unshift), and a server-side TLSSocket takes over. The
// rest is what listenTls does: the certificate is judged by verifyPeer before a byte of
// application data moves, refusals go to `refuse` with the real address, and the caps on
// unauthenticated connections apply per real source (the balancer's own address would put
// every device under one cap). Connections still before their header are capped in total.
import net from "node:net";
import tls from "node:tls";
import type { Link, LinkHandlers } from "./link.ts";
import { Limits, Timing } from "./policy.ts";
import { verifyPeer } from "./auth.ts";
import { systemClock } from "../clock.ts";
import { listenError } from "./listen-error.ts";
import { parseProxyHeader } from "./proxy-protocol.ts";
import type { ListenOptions } from "./tls.ts";

export interface ProxiedListener {
  readonly port: number;
  stop(force?: boolean): void;
}

/** A server-side node:tls socket as a Link (the counterpart of tls.ts SocketLink). */
export class NodeTlsLink implements Link {
  private handlers: LinkHandlers | null = null;
  private early: Uint8Array[] = [];
  private gone = false;

  constructor(private readonly socket: tls.TLSSocket, readonly remoteAddress: string) {
    socket.setNoDelay(true);
    socket.on("data", (d: Buffer) => {
      const chunk = new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
      if (this.handlers) this.handlers.data(chunk);
      else this.early.push(chunk);
    });
    socket.on("drain", () => this.handlers?.drain());
    socket.on("error", () => {}); // 'close' follows with the outcome
    socket.on("close", () => {
      if (this.gone) return;
      this.gone = true;
      this.handlers?.closed(null);
    });
  }

  get queued(): number {
    return this.socket.writableLength;
  }
  setHandlers(h: LinkHandlers): void {
    this.handlers = h;
    for (const c of this.early.splice(0)) h.data(c);
  }
  write(chunk: Uint8Array): void {
    if (!this.gone) this.socket.write(chunk);
  }
  pause(): void {
    this.socket.pause();
  }
  resume(): void {
    this.socket.resume();
  }
  end(): void {
    if (this.gone) return;
    this.socket.end();
    setTimeout(() => {
      if (!this.gone) this.socket.destroy();
    }, 5_000).unref?.();
  }
  destroy(): void {
    if (!this.gone) this.socket.destroy();
  }
}

/** Listens for PROXY v2 + TLS connections; resolves once listening. */
export function listenTlsProxied(opts: ListenOptions): Promise<ProxiedListener> {
  const deadline = opts.handshakeDeadline ?? Timing.handshakeDeadline;
  const clock = opts.clock ?? systemClock;
  const context = tls.createSecureContext({ cert: opts.tls.certPem, key: opts.tls.keyPem, ca: opts.tls.caPem, minVersion: "TLSv1.3" });
  const live = new Set<net.Socket>();
  let beforeHeader = 0;

  const server = net.createServer((raw) => {
    const balancer = raw.remoteAddress ?? "?";
    live.add(raw);
    raw.on("close", () => live.delete(raw));
    raw.on("error", () => {});
    if (beforeHeader >= Limits.maxUnauthenticated) {
      opts.refuse({ address: balancer, reason: "too many unauthenticated connections (waiting for their PROXY header)", presented: null });
      raw.destroy();
      return;
    }
    beforeHeader++;
    const opened = clock.now();
    let source = balancer;
    let counted = false;
    let judged = false;
    let headerDone = false;
    const release = () => {
      if (counted) opts.release(source);
      counted = false;
    };
    const leaveHeader = () => {
      if (!headerDone) beforeHeader--;
      headerDone = true;
    };
    raw.on("close", () => {
      leaveHeader();
      release();
    });
    const timer = clock.setTimeout(() => {
      if (judged) return;
      opts.refuse({ address: source, reason: headerDone ? `no TLS handshake within ${deadline / 1000} s` : `PROXY protocol: no header within ${deadline / 1000} s`, presented: null });
      raw.destroy();
    }, deadline);
    raw.on("close", () => clock.clearTimeout(timer));

    let buf = new Uint8Array(0);
    const onData = (d: Buffer) => {
      const next = new Uint8Array(buf.length + d.length);
      next.set(buf);
      next.set(d, buf.length);
      buf = next;
      const r = parseProxyHeader(buf);
      if (r.state === "need") return;
      raw.removeListener("data", onData);
      raw.pause();
      leaveHeader();
      if (r.state === "bad") {
        judged = true;
        opts.refuse({ address: balancer, reason: r.reason, presented: null });
        raw.destroy();
        return;
      }
      if (r.header.command === "proxy") source = r.header.source.address;
      const admitted = opts.admit(source);
      if (admitted !== true) {
        judged = true;
        opts.refuse({ address: source, reason: typeof admitted === "string" ? admitted : "too many unauthenticated connections", presented: null });
        raw.destroy();
        return;
      }
      counted = true;
      if (r.length < buf.length) raw.unshift(Buffer.from(buf.subarray(r.length)));
      startTls(raw, source);
    };
    raw.on("data", onData);

    const startTls = (sock: net.Socket, address: string) => {
      const t = new tls.TLSSocket(sock, { isServer: true, secureContext: context, requestCert: true, rejectUnauthorized: false });
      let secure = false;
      t.on("error", (e: Error) => {
        if (secure || judged) return;
        judged = true;
        const code = (e as Error & { code?: string }).code;
        if (/ECONNRESET|EPIPE/.test(code ?? e.message)) opts.abandoned?.(address);
        else opts.refuse({ address, reason: `TLS handshake failed: ${e.message}`, presented: null });
        t.destroy();
      });
      t.on("secure", () => {
        secure = true;
        judged = true;
        clock.clearTimeout(timer);
        const cert = t.getPeerCertificate(true) as { raw?: Buffer } | undefined;
        const der = cert?.raw ? new Uint8Array(cert.raw.buffer, cert.raw.byteOffset, cert.raw.byteLength) : null;
        const verdict = verifyPeer(
          { handshakeOk: true, authorized: t.authorized, authorizationError: t.authorizationError ? String(t.authorizationError) : null, peerDer: der, protocol: t.getProtocol() ?? null },
          opts.trust(),
          new Date(clock.wall()),
        );
        if (!verdict.ok) {
          opts.refuse({ address, reason: verdict.reason, presented: verdict.presented });
          t.destroy();
          return;
        }
        release();
        const link = new NodeTlsLink(t, address);
        opts.accept({ link, verdict, handshakeMs: clock.now() - opened });
      });
      // No sock.resume(): the TLSSocket reads the socket itself, and under Bun a resume() after
      // unshift() loses the bytes put back (a ClientHello that came with the header).
    };
  });

  return new Promise((resolve, reject) => {
    server.once("error", (e) => reject(listenError(e, opts.hostname, opts.port)));
    server.listen(opts.port, opts.hostname, () => {
      const port = (server.address() as net.AddressInfo).port;
      resolve({
        port,
        stop() {
          server.close();
          for (const s of live) s.destroy();
        },
      });
    });
  });
}
