// A Link is a byte pipe to one peer (a TLS socket in production, an in-memory pair in tests).
// Connections are built over a Link and never see the socket, so the relay's logic can be
// driven through pipes and a frozen peer (STYLE 4).

export interface LinkHandlers {
  data(chunk: Uint8Array): void;
  /** Everything queued so far has been handed to the kernel. */
  drain(): void;
  /** The link is gone (peer closed, error, or close()). Called once. */
  closed(error: Error | null): void;
}

export interface Link {
  /** Queues bytes; never blocks. `queued` says how much is waiting for the peer. */
  write(chunk: Uint8Array): void;
  readonly queued: number;
  /** Stop/restart delivering data (backpressure towards the peer's TCP window). */
  pause(): void;
  resume(): void;
  /** Flushes what is queued, then closes. */
  end(): void;
  /** Closes at once, dropping what is queued. */
  destroy(): void;
  readonly remoteAddress: string;
  setHandlers(h: LinkHandlers): void;
}

/**
 * Two Links joined back to back, delivering asynchronously (like a socket would). A side can
 * be frozen (`pause()`) to prove the other side's behaviour under a reader that stops.
 */
export function linkPair(addressA = "10.0.0.1", addressB = "10.0.0.2"): [MemoryLink, MemoryLink] {
  const a = new MemoryLink(addressB);
  const b = new MemoryLink(addressA);
  a.peer = b;
  b.peer = a;
  return [a, b];
}

export class MemoryLink implements Link {
  peer: MemoryLink | null = null;
  private handlers: LinkHandlers | null = null;
  private inbox: Uint8Array[] = [];
  private paused = false;
  private scheduled = false;
  private done = false;
  /** Bytes sent to the peer that the peer has not consumed yet. */
  queued = 0;

  constructor(readonly remoteAddress: string) {}

  setHandlers(h: LinkHandlers): void {
    this.handlers = h;
  }

  write(chunk: Uint8Array): void {
    if (this.done || !this.peer) return;
    this.queued += chunk.length;
    this.peer.deliver(chunk.slice());
  }

  private deliver(chunk: Uint8Array): void {
    this.inbox.push(chunk);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.paused) return;
    this.scheduled = true;
    setTimeout(() => {
      this.scheduled = false;
      while (!this.paused && !this.done && this.inbox.length) {
        const c = this.inbox.shift()!;
        if (this.peer) this.peer.queued -= c.length;
        this.handlers?.data(c);
      }
      if (this.peer && this.inbox.length === 0) this.peer.handlers?.drain();
    }, 0);
  }

  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
    this.schedule();
  }
  end(): void {
    this.destroy();
  }
  destroy(): void {
    if (this.done) return;
    this.done = true;
    const peer = this.peer;
    setTimeout(() => {
      this.handlers?.closed(null);
      if (peer && !peer.done) {
        peer.done = true;
        peer.handlers?.closed(null);
      }
    }, 0);
  }
}
