// Datagram sockets for the heartbeat: the interface the sender and receiver take, the real one
// (node:dgram through `dgram-as-promised`: bind and close as promises, the receive loop as an
// async iterator) and an in-memory network for unit tests that speaks the same interface.
import DgramAsPromised from "dgram-as-promised";

export interface Datagram {
  /** Valid only during the handler's call: the polled socket (polled-udp.ts) reuses its buffer. */
  data: Uint8Array;
  /** Sender's address and port. */
  address: string;
  port: number;
}

export interface DatagramSocket {
  /** Sends one datagram; resolves when it left (or rejects with the OS error). */
  send(data: Uint8Array, port: number, address: string): Promise<void>;
  /** Every datagram received, until close(). */
  onMessage(fn: (d: Datagram) => void): void;
  /** The bound address and port. */
  local(): { address: string; port: number };
  close(): Promise<void>;
}

/** Opens a UDP socket (IPv4) bound to `address:port` (port 0: any). */
export type OpenDatagram = (o: { address?: string; port?: number }) => Promise<DatagramSocket>;

/** The real socket: node:dgram, promisified by dgram-as-promised. */
export const openUdp: OpenDatagram = async ({ address, port }) => {
  const s = DgramAsPromised.createSocket({ type: "udp4", reuseAddr: false });
  const handlers: ((d: Datagram) => void)[] = [];
  // The raw socket's events: the iterator would buffer without bound under a flood.
  s.socket.on("message", (msg, rinfo) => {
    const d = { data: new Uint8Array(msg.buffer, msg.byteOffset, msg.byteLength), address: rinfo.address, port: rinfo.port };
    for (const h of handlers) h(d);
  });
  s.socket.on("error", () => {
    /* a send error is the send's rejection; the socket stays usable */
  });
  const bound = await s.bind(port ?? 0, address ?? "0.0.0.0");
  return {
    async send(data, p, a) {
      await s.send(data, p, a);
    },
    onMessage: (fn) => void handlers.push(fn),
    local: () => ({ address: bound.address, port: bound.port }),
    async close() {
      try {
        await s.close();
      } catch {
        /* already closed */
      }
    },
  };
};

/**
 * An in-memory UDP network: sockets bound to (address, port) deliver to each other on the next
 * microtask. `drop` lets a test lose datagrams (a cut path); `sent` records every one.
 */
export class MemoryDatagramNet {
  private readonly bound = new Map<string, { handlers: ((d: Datagram) => void)[] }>();
  private nextPort = 40000;
  /** Return true to lose a datagram from → to. */
  drop: (from: string, to: string) => boolean = () => false;
  readonly sent: { from: string; to: string; data: Uint8Array }[] = [];

  open: OpenDatagram = async ({ address = "127.0.0.1", port = 0 }) => {
    const p = port || this.nextPort++;
    const key = `${address}:${p}`;
    if (this.bound.has(key)) throw Object.assign(new Error(`bind ${key}: address in use`), { code: "EADDRINUSE" });
    const entry = { handlers: [] as ((d: Datagram) => void)[] };
    this.bound.set(key, entry);
    return {
      send: async (data, toPort, toAddr) => {
        const to = `${toAddr}:${toPort}`;
        this.sent.push({ from: key, to, data: data.slice() });
        if (this.drop(key, to)) return;
        const target = this.bound.get(to) ?? this.bound.get(`0.0.0.0:${toPort}`);
        const copy = data.slice();
        if (target) queueMicrotask(() => target.handlers.forEach((h) => h({ data: copy, address, port: p })));
      },
      onMessage: (fn) => void entry.handlers.push(fn),
      local: () => ({ address, port: p }),
      close: async () => void this.bound.delete(key),
    };
  };

  get sockets(): number {
    return this.bound.size;
  }
}
