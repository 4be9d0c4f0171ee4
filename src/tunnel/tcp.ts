// The real endpoints: a Bun TCP socket as a Duplex, the `TargetDialer` of an onsite device
// (Bun.connect to a LAN target) and the `ForwardListener` of a master (Bun.listen on a local
// port). Sockets are half-open capable: a client's FIN travels on as a FIN and the other
// direction keeps flowing until its own FIN.
import type { Socket, SocketHandler } from "bun";
import { listenError } from "../transport/listen-error.ts";
import type { Duplex, DuplexHandlers, ForwardListener, ListeningPort, TargetDialer } from "./duplex.ts";

interface SocketData {
  duplex: TcpDuplex | null;
}

const CLOSED_EARLY = "the connection closed before both directions had finished";

/**
 * Writes that follow one another in the same tick (the DATA frames one TLS read held) are
 * gathered up to this many bytes and sent at the tick's end as one write. The first write of a
 * tick goes straight out: a lone message (a keystroke, a ping) waits for nothing.
 */
const GATHER_MAX = 128 * 1024;
/** Where a tick's gathered pieces are joined for their one write; reused, never kept. */
const joined = new Uint8Array(GATHER_MAX);

/**
 * A TCP socket as a Duplex. Bun's `write` takes what the kernel will hold and says how much:
 * the rest waits here (and `write` says false) until the socket drains. Data that arrives while
 * paused (a read already under way) waits here too, so `pause()` is exact.
 */
export class TcpDuplex implements Duplex {
  private h: DuplexHandlers | null = null;
  private paused = true;
  /** Arrived while paused: chunks, then possibly the peer's FIN and a clean close. */
  private inbox: (Uint8Array | "end" | "close")[] = [];
  private pending: Uint8Array[] = [];
  /** Written in this tick after a write went straight out: sent together at the tick's end. */
  private gathered: Uint8Array[] = [];
  private gatheredBytes = 0;
  /** A write went out in this tick (the tick-end flush is queued). */
  private ticking = false;
  private readonly tickEnd = (): void => {
    this.ticking = false;
    if (this.gathered.length && !this.done) this.flushGathered();
  };
  private endRequested = false;
  private endAfterPending = false;
  private writeShut = false;
  private readEnded = false;
  private done = false;
  private closeErr: Error | null | undefined = undefined;

  constructor(private readonly socket: Socket<SocketData>) {
    // A listener's `data` option is one object shared by all its sockets: give each its own.
    socket.data = { duplex: this };
    socket.setNoDelay(true);
  }

  get closed(): boolean {
    return this.done;
  }

  setHandlers(h: DuplexHandlers): void {
    this.h = h;
    if (this.closeErr) this.fireClose(); // an error close is not held back
  }

  write(chunk: Uint8Array): boolean {
    if (this.done || this.endRequested) return false;
    if (this.pending.length) {
      this.pending.push(chunk.slice());
      return false;
    }
    if (this.ticking) {
      // A write already went out in this tick: this one waits for the tick's end, with the
      // others that follow, and they go as one write (one syscall instead of several).
      if (this.gathered.length && this.gatheredBytes + chunk.length > GATHER_MAX && !this.flushGathered()) {
        this.pending.push(chunk.slice());
        return false;
      }
      // Held, not copied, until the tick's end (one copy then, into the joined write): what
      // reaches a duplex is a buffer of its own (a data event's, or a mux payload in one), as
      // mux streams already hold what they are given (Stream.write).
      this.gathered.push(chunk);
      this.gatheredBytes += chunk.length;
      return true;
    }
    this.ticking = true;
    queueMicrotask(this.tickEnd);
    return this.send(chunk);
  }

  /** One write of `buf`, what the socket does not take kept (a copy) until drain. */
  private send(buf: Uint8Array): boolean {
    const n = this.socket.write(buf);
    if (n < 0) return false; // closing: the close event follows
    if (n < buf.length) {
      this.pending.push(buf.slice(n));
      return false;
    }
    return true;
  }

  /** The gathered pieces as one write (joined in a shared buffer, which send does not keep). */
  private flushGathered(): boolean {
    const pieces = this.gathered;
    const size = this.gatheredBytes;
    this.gathered = [];
    this.gatheredBytes = 0;
    if (this.pending.length) {
      for (const p of pieces) this.pending.push(p.slice());
      return false;
    }
    // One piece (it may be larger than the buffer) goes as it is; several fit (see write).
    if (pieces.length === 1) return this.send(pieces[0]!);
    let at = 0;
    for (const p of pieces) {
      joined.set(p, at);
      at += p.length;
    }
    return this.send(joined.subarray(0, size));
  }

  end(): void {
    if (this.done || this.endRequested) return;
    if (this.gathered.length) this.flushGathered();
    this.endRequested = true;
    if (this.pending.length) this.endAfterPending = true;
    else this.shut();
  }

  reset(err: Error): void {
    if (this.done) return;
    this.done = true;
    this.inbox = [];
    this.pending = [];
    this.gathered = [];
    this.socket.terminate();
    this.closeErr = err;
    this.fireClose();
  }

  pause(): void {
    this.paused = true;
    if (!this.done) this.socket.pause();
  }

  resume(): void {
    if (this.done && this.inbox.length === 0) return;
    this.paused = false;
    if (!this.done) this.socket.resume();
    this.flushInbox();
  }

  private shut(): void {
    this.writeShut = true;
    // Both directions done: close the socket; else a FIN, and the peer may go on sending.
    if (this.readEnded) this.socket.end();
    else this.socket.shutdown();
  }

  private flushInbox(): void {
    while (!this.paused && this.h && this.inbox.length) {
      const item = this.inbox.shift()!;
      if (item === "end") this.h.end();
      else if (item === "close") this.fireClose();
      else this.h.data(item);
    }
  }

  private deliver(item: Uint8Array | "end" | "close"): void {
    if (this.paused || !this.h || this.inbox.length) {
      this.inbox.push(item);
      return;
    }
    if (item === "end") this.h.end();
    else if (item === "close") this.fireClose();
    else this.h.data(item);
  }

  private fireClose(): void {
    if (!this.h || this.closeErr === undefined) return;
    const err = this.closeErr;
    this.closeErr = undefined;
    this.h.close(err);
  }

  // ---- socket events ----

  onData(chunk: Uint8Array): void {
    if (!this.done) this.deliver(chunk);
  }

  onDrain(): void {
    while (this.pending.length) {
      const head = this.pending[0]!;
      const n = this.socket.write(head);
      if (n < 0) return;
      if (n < head.length) {
        this.pending[0] = head.subarray(n);
        return;
      }
      this.pending.shift();
    }
    if (this.endAfterPending) {
      this.endAfterPending = false;
      this.shut();
    }
    this.h?.drain();
  }

  /** The peer sent FIN. */
  onEnd(): void {
    if (this.done || this.readEnded) return;
    this.readEnded = true;
    this.deliver("end");
    if (this.writeShut) this.socket.end();
  }

  /** The socket is gone, either way: clean only if both directions had finished. */
  onClose(err: Error | null): void {
    if (this.done) return;
    this.done = true;
    // Bun reports a FIN that arrives after our own (shutdown) as a close without error and
    // without an `end` event; a reset comes with its error (ECONNRESET).
    if (!err && this.writeShut && !this.readEnded) {
      this.readEnded = true;
      this.deliver("end");
    }
    if (this.readEnded && this.endRequested) {
      this.closeErr = null;
      this.deliver("close");
      return;
    }
    this.inbox = [];
    this.pending = [];
    this.gathered = [];
    this.closeErr = err ?? new Error(CLOSED_EARLY);
    this.fireClose();
  }
}

const handlers: SocketHandler<SocketData> = {
  data(socket, chunk) {
    socket.data.duplex?.onData(chunk);
  },
  drain(socket) {
    socket.data.duplex?.onDrain();
  },
  end(socket) {
    socket.data.duplex?.onEnd();
  },
  close(socket, err) {
    socket.data.duplex?.onClose(err ?? null);
  },
  error(socket, err) {
    socket.data.duplex?.onClose(err);
  },
};

/** Connects to LAN targets with Bun.connect. */
export const tcpDialer: TargetDialer = {
  dial(host, port) {
    return new Promise<Duplex>((resolve, reject) => {
      Bun.connect<SocketData>({
        hostname: host,
        port,
        allowHalfOpen: true,
        data: { duplex: null },
        socket: {
          ...handlers,
          open(socket) {
            resolve(new TcpDuplex(socket));
          },
          connectError(_socket, err) {
            reject(err);
          },
        },
      }).catch(reject);
    });
  },
};

/** Listens on local ports with Bun.listen (exclusive: a port in use is an error, not shared). */
export const tcpListener: ForwardListener = {
  listen(bind, port, onConnection): ListeningPort {
    let listener;
    try {
      listener = listenTcp(bind, port, onConnection);
    } catch (e) {
      throw listenError(e, bind, port);
    }
    return {
      port: listener.port,
      close: () => listener.stop(true),
    };
  },
};

function listenTcp(bind: string, port: number, onConnection: (d: Duplex) => void) {
  return Bun.listen<SocketData>({
    hostname: bind,
    port,
    allowHalfOpen: true,
    exclusive: true,
    data: { duplex: null },
    socket: {
      ...handlers,
      open(socket) {
        onConnection(new TcpDuplex(socket));
      },
    },
  });
}
