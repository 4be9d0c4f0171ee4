// A duplex byte stream: what a session endpoint takes (a TCP connection to a LAN target, a
// local client of a forward, a multiplexed stream) and what `Pipe` joins. The endpoints are
// handed their connections (`TargetDialer`, `ForwardListener`) instead of opening sockets, so
// tests run them over the in-memory pair below (STYLE 1, 4). The TCP ones are in tcp.ts, a mux
// stream as a Duplex in pipe.ts.
//
// Semantics, the same for every implementation:
// - A Duplex starts paused: nothing is delivered until `resume()`, so handlers can be set first.
// - `data` chunks are the receiver's to keep (the source never reuses their memory), and
//   `write()` may keep the chunk it is given. No `data` arrives while paused.
// - `write()` queues everything it is given; false means "wait for `drain`".
// - `end()` is a half-close (FIN) after what is queued; `end` says the peer did the same,
//   after its last data.
// - `reset(err)` aborts both directions at once; the peer sees a failure, never a clean end.
// - `close(err)` is called exactly once: null once both directions finished cleanly, else the
//   reason (a reset by either side, a lost connection). A reset closes the Duplex at once,
//   so `close` runs inside `reset()`. An error close is not held back by `pause()`.
export interface DuplexHandlers {
  data(chunk: Uint8Array): void;
  drain(): void;
  end(): void;
  close(err: Error | null): void;
}

export interface Duplex {
  write(chunk: Uint8Array): boolean;
  end(): void;
  reset(err: Error): void;
  pause(): void;
  resume(): void;
  setHandlers(h: DuplexHandlers): void;
  readonly closed: boolean;
}

/** The onsite side: opens a connection to a LAN target. Rejects with the OS's reason. */
export interface TargetDialer {
  dial(host: string, port: number): Promise<Duplex>;
}

export interface ListeningPort {
  readonly port: number;
  /** Stops listening and resets the connections it took (a closed forward carries nothing). Idempotent. */
  close(): void;
}

/** The master side: listens on a local port and hands on each connection. Throws if it cannot. */
export interface ForwardListener {
  listen(bind: string, port: number, onConnection: (d: Duplex) => void): ListeningPort;
}

// ---- in memory -----------------------------------------------------------------------------

const END = Symbol("end");

/**
 * One end of an in-memory pair. Delivery is asynchronous (like a socket). `highWater` bytes
 * unread by the peer make `write()` return false; `drain` follows once the peer has read them.
 * A test freezes a reader with `pause()`.
 */
export class MemoryDuplex implements Duplex {
  peer!: MemoryDuplex;
  private h: DuplexHandlers | null = null;
  private inbox: (Uint8Array | typeof END)[] = [];
  private paused = true;
  private scheduled = false;
  /** Bytes written to the peer that it has not read yet. */
  queued = 0;
  private wantDrain = false;
  private endSent = false;
  private endReceived = false;
  private done = false;
  private pendingClose: Error | null | undefined = undefined;
  bytesIn = 0;

  constructor(readonly name: string, private readonly highWater: number) {}

  get closed(): boolean {
    return this.done;
  }

  setHandlers(h: DuplexHandlers): void {
    this.h = h;
    if (this.pendingClose !== undefined) this.fireClose();
  }

  write(chunk: Uint8Array): boolean {
    if (this.done || this.endSent) return false;
    if (chunk.length) {
      this.queued += chunk.length;
      this.peer.receive(chunk.slice());
    }
    if (this.queued >= this.highWater) {
      this.wantDrain = true;
      return false;
    }
    return true;
  }

  end(): void {
    if (this.done || this.endSent) return;
    this.endSent = true;
    this.peer.receive(END);
    this.maybeClosed();
  }

  reset(err: Error): void {
    if (this.done) return;
    this.abort(err);
    this.peer.abort(new Error(`reset by the peer: ${err.message}`));
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.schedule();
  }

  private receive(item: Uint8Array | typeof END): void {
    if (this.done) return;
    this.inbox.push(item);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.paused || this.done) return;
    this.scheduled = true;
    setTimeout(() => {
      this.scheduled = false;
      this.deliver();
    }, 0);
  }

  private deliver(): void {
    while (!this.paused && !this.done && this.inbox.length) {
      const item = this.inbox.shift()!;
      if (item === END) {
        this.endReceived = true;
        this.h?.end();
        this.maybeClosed();
        continue;
      }
      this.peer.queued -= item.length;
      this.bytesIn += item.length;
      this.h?.data(item);
    }
    const p = this.peer;
    if (p.wantDrain && p.queued < p.highWater && !p.done) {
      p.wantDrain = false;
      p.h?.drain();
    }
  }

  private maybeClosed(): void {
    if (this.endSent && this.endReceived && !this.done) {
      this.done = true;
      this.pendingClose = null;
      this.fireClose();
    }
  }

  private abort(err: Error): void {
    if (this.done) return;
    this.done = true;
    this.inbox = [];
    this.pendingClose = err;
    this.fireClose();
  }

  private fireClose(): void {
    if (!this.h || this.pendingClose === undefined) return;
    const err = this.pendingClose;
    this.pendingClose = undefined;
    this.h.close(err);
  }
}

/** Two Duplex ends joined back to back (a socketpair in memory). */
export function duplexPair(names: [string, string] = ["a", "b"], highWater = 64 * 1024): [MemoryDuplex, MemoryDuplex] {
  const a = new MemoryDuplex(names[0], highWater);
  const b = new MemoryDuplex(names[1], highWater);
  a.peer = b;
  b.peer = a;
  return [a, b];
}

/**
 * A network in memory: a `ForwardListener` and a `TargetDialer` at once. `listen` takes
 * addresses as a socket would (port 0 picks a free one); `connect` is a client reaching a
 * listener (what a user's program does to a forward); `dial` reaches a listener the same way
 * and refuses like a closed port when none is there.
 */
export class MemoryNet implements ForwardListener, TargetDialer {
  private readonly listeners = new Map<string, (d: Duplex) => void>();
  private nextPort = 40_000;
  readonly dialed: string[] = [];
  /** Errors `dial` fails with for an address, instead of reaching a listener. */
  readonly failDial = new Map<string, Error>();

  listen(bind: string, port: number, onConnection: (d: Duplex) => void): ListeningPort {
    const p = port || this.nextPort++;
    const key = `${bind}:${p}`;
    if (this.listeners.has(key)) throw new Error(`address ${key} already in use`);
    const taken: Duplex[] = [];
    const accept = (d: Duplex) => {
      taken.push(d);
      onConnection(d);
    };
    this.listeners.set(key, accept);
    const listeners = this.listeners;
    return {
      port: p,
      close() {
        if (listeners.get(key) !== accept) return;
        listeners.delete(key);
        for (const d of taken.splice(0)) d.reset(new Error(`listener ${key} closed`));
      },
    };
  }

  /** Whether something listens on `host:port`. */
  listening(host: string, port: number): boolean {
    return this.listeners.has(`${host}:${port}`);
  }

  /** A client connecting to `host:port`: its end of the connection (throws when refused). */
  connect(host: string, port: number, highWater?: number): MemoryDuplex {
    const accept = this.listeners.get(`${host}:${port}`) ?? this.listeners.get(`0.0.0.0:${port}`);
    if (!accept) throw Object.assign(new Error(`connect ${host}:${port}: connection refused`), { code: "ECONNREFUSED" }); // as a socket says it
    const [client, server] = duplexPair([`client of ${host}:${port}`, `${host}:${port}`], highWater);
    accept(server);
    return client;
  }

  async dial(host: string, port: number): Promise<Duplex> {
    this.dialed.push(`${host}:${port}`);
    await Promise.resolve();
    const fail = this.failDial.get(`${host}:${port}`);
    if (fail) throw fail;
    return this.connect(host, port);
  }
}
