// UDP forwards (`agent connect ID --forward udp:[BIND:]LPORT:HOST:PORT`) through the packet
// channel: one packet stream per forward, each packet a u32 flow id (big-endian, picked by the
// master, one per client address:port) and the datagram. The onsite device keeps one UDP socket
// per flow towards the target, so replies find their client; a flow quiet for Timing.udpFlowIdle
// either way is forgotten on both ends. The allow list applies as for TCP (the relay and the
// onsite device check the target when the session is offered and when the stream opens).
import { systemClock, type Clock, type TimerHandle } from "../clock.ts";
import { ResetCode } from "../transport/frame.ts";
import type { Log, Stream } from "../transport/mux.ts";
import { Limits, Timing } from "../transport/policy.ts";
import type { UdpStreamServer } from "./onsite-server.ts";
import { parseForwardFields } from "./master-forwarder.ts";

export interface UdpForwardSpec {
  bind: string;
  port: number;
  target: string;
}

/** Whether a --forward value is a UDP one (`udp:` prefix). */
export function isUdpForward(text: string): boolean {
  return text.startsWith("udp:");
}

/** Parses `udp:[BIND:]LPORT:HOST:PORT` (pure); the error names the problem and the form. */
export function parseUdpForward(text: string): UdpForwardSpec {
  const bad = (why: string) =>
    new Error(`--forward ${JSON.stringify(text)}: ${why}; expected udp:[BIND:]LPORT:HOST:PORT such as udp:5353:192.168.1.1:53 (HOST: an IPv4 address, or a host name the onsite device resolves)`);
  if (!isUdpForward(text)) throw bad('a UDP forward starts with "udp:"');
  const rest = text.slice(4);
  if (rest.includes("[") || rest.split(":").length > 4) throw bad("IPv6 addresses are not supported yet");
  return parseForwardFields(rest, bad, ' after "udp:"');
}

/** One packet of a UDP forward: flow id + datagram (pure). */
export function encodeFlowPacket(flow: number, datagram: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + datagram.length);
  new DataView(out.buffer).setUint32(0, flow >>> 0);
  out.set(datagram, 4);
  return out;
}

/** The flow id and datagram of a packet, or null when it is shorter than its flow id. */
export function decodeFlowPacket(p: Uint8Array): { flow: number; datagram: Uint8Array } | null {
  if (p.length < 4) return null;
  return { flow: new DataView(p.buffer, p.byteOffset, 4).getUint32(0), datagram: p.subarray(4) };
}

/**
 * The flows of one forward: ids by key, last activity (monotonic), the idle sweep. Pure apart
 * from the time it is given; both ends use it.
 */
export class FlowTable<V> {
  private readonly byId = new Map<number, { key: string; value: V; last: number }>();
  private readonly byKey = new Map<string, number>();
  private nextId = 1;
  opened = 0;

  constructor(
    private readonly idle: number = Timing.udpFlowIdle,
    private readonly max: number = Limits.udpFlowsPerForward,
  ) {}

  get size(): number {
    return this.byId.size;
  }

  /** The flow of `key`, made (with `make(id)`) if new; null when the table is full. */
  flowOf(key: string, now: number, make: (id: number) => V): { id: number; value: V } | null {
    const id = this.byKey.get(key);
    if (id !== undefined) {
      const f = this.byId.get(id)!;
      f.last = now;
      return { id, value: f.value };
    }
    if (this.byId.size >= this.max) return null;
    let next = this.nextId;
    while (this.byId.has(next)) next = (next % 0xffffffff) + 1;
    this.nextId = (next % 0xffffffff) + 1;
    return this.add(next, key, now, make);
  }

  /** The flow with this id (the peer named it), made if new; null when the table is full. */
  flowById(id: number, now: number, make: (id: number) => V): V | null {
    const f = this.byId.get(id);
    if (f) {
      f.last = now;
      return f.value;
    }
    return this.add(id, `#${id}`, now, make)?.value ?? null;
  }

  /** Marks activity of a known flow (a reply). */
  touch(id: number, now: number): V | undefined {
    const f = this.byId.get(id);
    if (f) f.last = now;
    return f?.value;
  }

  private add(id: number, key: string, now: number, make: (id: number) => V): { id: number; value: V } | null {
    if (this.byId.size >= this.max) return null;
    const value = make(id);
    this.byId.set(id, { key, value, last: now });
    this.byKey.set(key, id);
    this.opened++;
    return { id, value };
  }

  /** Forgets flows idle for `idle` at `now`; returns them. */
  sweep(now: number): { id: number; key: string; value: V }[] {
    const gone: { id: number; key: string; value: V }[] = [];
    for (const [id, f] of this.byId) {
      if (now - f.last < this.idle) continue;
      this.byId.delete(id);
      this.byKey.delete(f.key);
      gone.push({ id, key: f.key, value: f.value });
    }
    return gone;
  }

  clear(): V[] {
    const all = [...this.byId.values()].map((f) => f.value);
    this.byId.clear();
    this.byKey.clear();
    return all;
  }
}

type UdpSock = import("bun").udp.Socket<"buffer">;

/** The master's end of one UDP forward: the local socket and the flows of its clients. */
export class MasterUdpForward {
  private sock: UdpSock | null = null;
  private stream: Stream | null = null;
  private readonly flows: FlowTable<{ address: string; port: number }>;
  private sweeper: TimerHandle | null = null;
  port = 0;
  datagramsOut = 0;
  datagramsIn = 0;
  dropped = 0;

  constructor(
    readonly spec: UdpForwardSpec,
    private readonly log: Log,
    private readonly clock: Clock = systemClock,
    idle: number = Timing.udpFlowIdle,
  ) {
    this.flows = new FlowTable(idle);
    this.sweeper = this.clock.setInterval(() => this.flows.sweep(this.clock.now()), Math.max(250, Math.floor(idle / 4)));
    (this.sweeper as { unref?: () => void }).unref?.();
  }

  async listen(): Promise<void> {
    this.sock = await Bun.udpSocket({
      hostname: this.spec.bind,
      port: this.spec.port,
      socket: { data: (_s, buf, port, address) => this.fromClient(buf, port, address) },
    });
    this.port = this.sock!.port;
  }

  /** The forward's packet stream (opened when the session is, again when it resumes). */
  attach(stream: Stream): void {
    this.stream?.reset(ResetCode.CANCEL, "replaced");
    this.stream = stream;
    stream.onpacket = (p) => this.fromTunnel(p);
  }

  private fromClient(buf: Uint8Array, port: number, address: string): void {
    const s = this.stream;
    if (!s || s.closed) {
      this.dropped++;
      return;
    }
    const f = this.flows.flowOf(`${address}:${port}`, this.clock.now(), () => ({ address, port }));
    if (!f) {
      this.dropped++;
      return;
    }
    this.datagramsOut++;
    if (!s.sendPacket(encodeFlowPacket(f.id, buf))) this.dropped++;
  }

  private fromTunnel(p: Uint8Array): void {
    const d = decodeFlowPacket(p);
    const client = d ? this.flows.touch(d.flow, this.clock.now()) : undefined;
    if (!d || !client || !this.sock) {
      this.dropped++;
      return;
    }
    this.datagramsIn++;
    this.sock.send(d.datagram, client.port, client.address);
  }

  view(): { bind: string; port: number; target: string; proto: "udp"; connections: number; active: number; datagrams_out: number; datagrams_in: number; dropped: number } {
    return { bind: this.spec.bind, port: this.port, target: this.spec.target, proto: "udp", connections: this.flows.opened, active: this.flows.size, datagrams_out: this.datagramsOut, datagrams_in: this.datagramsIn, dropped: this.dropped };
  }

  close(): void {
    this.clock.clearInterval(this.sweeper);
    this.sweeper = null;
    this.stream?.reset(ResetCode.CANCEL, "forward closed");
    this.stream = null;
    this.sock?.close();
    this.sock = null;
    this.flows.clear();
  }
}

/** The onsite device's side: per flow a UDP socket towards the target; replies go back on the stream. */
export class OnsiteUdpServer implements UdpStreamServer {
  private readonly streams = new Map<string, Set<{ close(): void }>>();

  constructor(
    private readonly log: Log,
    private readonly clock: Clock = systemClock,
    private readonly idle: number = Timing.udpFlowIdle,
  ) {}

  attach(stream: Stream, session: string, target: { host: string; port: number; text: string }): void {
    const flows = new FlowTable<Promise<UdpSock | null>>(this.idle);
    const closeFlow = (p: Promise<UdpSock | null>) => void p.then((s) => s?.close());
    const sweeper = this.clock.setInterval(() => {
      for (const f of flows.sweep(this.clock.now())) closeFlow(f.value);
    }, Math.max(250, Math.floor(this.idle / 4)));
    (sweeper as { unref?: () => void }).unref?.();
    const handle = {
      close: () => {
        this.clock.clearInterval(sweeper);
        for (const v of flows.clear()) closeFlow(v);
        if (!stream.closed) stream.reset(ResetCode.NO_SESSION, "session ended");
      },
    };
    let set = this.streams.get(session);
    if (!set) this.streams.set(session, (set = new Set()));
    set.add(handle);
    stream.onclose = () => {
      set!.delete(handle);
      handle.close();
    };
    stream.onpacket = (p) => {
      const d = decodeFlowPacket(p);
      if (!d) return;
      const datagram = d.datagram.slice();
      const sock = flows.flowById(d.flow, this.clock.now(), (id) =>
        Bun.udpSocket({
          socket: {
            data: (_s, buf, port, address) => {
              // Only the target answers this flow; anything else reaching the socket is dropped.
              if (port !== target.port || address !== target.host) return;
              flows.touch(id, this.clock.now());
              if (!stream.closed) stream.sendPacket(encodeFlowPacket(id, buf));
            },
          },
        }).catch((e: Error) => {
          this.log.warn(`UDP flow to ${target.text} for session ${session}: ${e.message}`);
          return null;
        }),
      );
      if (!sock) return; // too many flows: dropped
      void sock.then((s) => s?.send(datagram, target.port, target.host));
    };
    stream.accept();
    this.log.debug(`session ${session}: UDP forward to ${target.text}`);
  }

  closeSession(session: string): void {
    const set = this.streams.get(session);
    if (!set) return;
    this.streams.delete(session);
    for (const h of [...set]) h.close();
  }

  closeAll(): void {
    for (const s of [...this.streams.keys()]) this.closeSession(s);
  }
}
