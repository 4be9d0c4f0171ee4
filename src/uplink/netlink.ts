// A NETLINK_ROUTE socket opened through bun:ffi, with the `netlink` package's pure codecs
// for the messages. The package's own socket cannot be used: it needs libuv's uv_poll,
// which Bun does not implement, and aborts the process.
//
// The socket is non-blocking and read through `src/os/polled-fd.ts` (libc from `src/os/libc.ts`).
// Nothing here ever blocks the event loop: `drain()` reads what the kernel has queued and
// returns; the monitor calls it from a short timer. (A worker
// thread doing blocking recv() was the alternative; a timer costs one failed recv() per tick,
// a few microseconds, measured in bench/uplink.bench.ts, and keeps everything on one thread.)
import { ptr } from "bun:ffi";
import { parseMessages, formatMessage } from "netlink/dist/structs";
import { parseMessage as parseRtMessage, formatLink, formatAddress, formatRoute, type Message } from "netlink/dist/rt/structs";
import { formatIPv4 } from "../netaddr.ts";
import { AF_INET, AF_NETLINK, E, errno, libc, OsError, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_RAW } from "../os/libc.ts";
import { PolledFd } from "../os/polled-fd.ts";

const NETLINK_ROUTE = 0;

const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLM_F_REQUEST = 1;
const NLM_F_DUMP = 0x300;

export const RTM = { NEWLINK: 16, DELLINK: 17, GETLINK: 18, NEWADDR: 20, DELADDR: 21, GETADDR: 22, NEWROUTE: 24, DELROUTE: 25, GETROUTE: 26 } as const;
/** Multicast groups: link, IPv4 addresses, IPv4 routes. */
export const RTMGRP_LINK = 0x1;
export const RTMGRP_IPV4_IFADDR = 0x10;
export const RTMGRP_IPV4_ROUTE = 0x40;

const RECV_BUF = 64 * 1024;
/** Dump replies come in as we read; a dump that is not done after this many reads is broken. */
const DUMP_MAX_READS = 10_000;

export class NetlinkError extends OsError {}

/** One NETLINK_ROUTE socket. `groups` subscribes to multicast events; 0 for requests only. */
export class RouteSocket {
  private fd: number;
  private seq = 1;
  private readonly reader: PolledFd;
  /** Set when the kernel dropped events (ENOBUFS): the caller must resync with a dump. */
  overrun = false;

  constructor(groups: number) {
    const l = libc();
    this.fd = l.socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (this.fd < 0) throw new NetlinkError("netlink socket()", errno());
    const sa = Buffer.alloc(12); // sockaddr_nl: family u16, pad u16, pid u32, groups u32
    sa.writeUInt16LE(AF_NETLINK, 0);
    sa.writeUInt32LE(0, 4); // let the kernel pick the port id
    sa.writeUInt32LE(groups >>> 0, 8);
    if (l.bind(this.fd, ptr(sa), 12) < 0) {
      const e = errno();
      l.close(this.fd);
      this.fd = -1;
      throw new NetlinkError("netlink bind()", e);
    }
    this.reader = new PolledFd(this.fd, { bufSize: RECV_BUF, name: "netlink" });
  }

  get closed(): boolean {
    return this.fd < 0;
  }

  /** Reads every queued message without blocking. */
  drain(): Message[] {
    const out: Message[] = [];
    for (;;) {
      const got = this.recvOnce();
      if (got === undefined) return out;
      for (const m of got.msgs) if (m) out.push(m);
    }
  }

  /** Dumps links, IPv4 addresses and IPv4 routes (all tables). */
  dumpAll(): Message[] {
    return [
      ...this.dump(RTM.GETLINK, formatLink({})),
      ...this.dump(RTM.GETADDR, formatAddress({ family: AF_INET })),
      ...this.dump(RTM.GETROUTE, formatRoute({ family: AF_INET })),
    ];
  }

  close(): void {
    if (this.fd < 0) return;
    this.reader.stop(true);
    libc().close(this.fd);
    this.fd = -1;
  }

  private dump(type: number, body: Buffer): Message[] {
    if (this.fd < 0) throw new Error("netlink socket is closed");
    const seq = this.seq++;
    const parts = formatMessage({ type, flags: NLM_F_REQUEST | NLM_F_DUMP, seq, port: 0, data: body });
    const req = Buffer.concat(parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength)));
    if (Number(libc().send(this.fd, ptr(req), req.length, 0)) < 0) throw new NetlinkError("netlink send()", errno());
    const out: Message[] = [];
    // The kernel writes the first part of a dump during send() and each further part during
    // our recv(), so a non-blocking read loop finishes without waiting. EAGAIN before DONE
    // would mean a dump interrupted by memory pressure: retried a bounded number of times.
    for (let reads = 0; reads < DUMP_MAX_READS; reads++) {
      const got = this.recvOnce(seq);
      if (got === undefined) continue;
      for (const m of got.msgs) if (m) out.push(m);
      if (got.done) return out;
    }
    throw new Error(`netlink dump of type ${type} did not finish`);
  }

  /** One recv(); undefined when nothing is queued. Messages of other sequences are kept as events. */
  private recvOnce(seq?: number): { msgs: (Message | undefined)[]; done: boolean } | undefined {
    let packet;
    try {
      packet = this.reader.readOnce();
    } catch (e) {
      const n = (e as OsError).errno;
      if (n === E.ENOBUFS) {
        this.overrun = true;
        return { msgs: [], done: false };
      }
      throw new NetlinkError("netlink recv()", n);
    }
    if (!packet || packet.data.length === 0) return undefined;
    const data = packet.data;
    let done = false;
    const msgs: (Message | undefined)[] = [];
    for (const m of parseMessages(data)) {
      if (m.type === NLMSG_DONE) {
        if (seq === undefined || m.seq === seq) done = true;
        continue;
      }
      if (m.type === NLMSG_ERROR) {
        const code = m.data.readInt32LE(0);
        if (code !== 0 && (seq === undefined || m.seq === seq)) throw new NetlinkError("netlink request failed", -code);
        continue;
      }
      try {
        msgs.push(decorate(m.type, parseRtMessage(m.type, m.data)));
      } catch {
        msgs.push(undefined); // a message type we do not follow
      }
    }
    return { msgs, done };
  }
}

/** Remembers whether the message was a NEW or a DEL, which the codec's result does not say. */
function decorate(type: number, m: Message): Message & { deleted?: boolean } {
  return Object.assign(m, { deleted: type === RTM.DELLINK || type === RTM.DELADDR || type === RTM.DELROUTE });
}

// ---- What the uplink manager needs to know about the system, built from messages ----

export interface LinkInfo {
  name: string;
  index: number;
  /** Administratively up (IFF_UP). */
  up: boolean;
  /** Carrier (IFF_LOWER_UP). */
  carrier: boolean;
  /** IPv4 addresses with prefix, e.g. "10.1.0.2/24". */
  addrs: string[];
  /** Gateways of default routes in the main table through this link. */
  gateways: string[];
}

export type Snapshot = Map<string, LinkInfo>;

const ipv4 = (b: Buffer | undefined) => (b && b.length === 4 ? formatIPv4(b.readUInt32BE(0)) : undefined);
const MAIN_TABLE = 254;

/** Builds a snapshot from a full dump (links, then addresses, then routes). */
export function snapshotFromMessages(msgs: readonly Message[]): Snapshot {
  const byIndex = new Map<number, LinkInfo>();
  for (const m of msgs) {
    if (m.kind !== "link" || (m as { deleted?: boolean }).deleted) continue;
    const name = m.attrs.ifname;
    const index = m.data.index;
    if (!name || index === undefined) continue;
    const flags = m.data.flags ?? {};
    byIndex.set(index, { name, index, up: !!flags.up, carrier: !!flags.lowerUp, addrs: [], gateways: [] });
  }
  for (const m of msgs) {
    if (m.kind === "address" && m.data.family === AF_INET) {
      const l = byIndex.get(m.data.index ?? -1);
      const a = ipv4(m.attrs.local ?? m.attrs.address);
      if (l && a) l.addrs.push(`${a}/${m.data.prefixlen}`);
    } else if (m.kind === "route" && m.data.family === AF_INET && m.data.dstLen === 0) {
      const table = m.attrs.table ?? m.data.table;
      const l = byIndex.get(m.attrs.oif ?? -1);
      const gw = ipv4(m.attrs.gateway);
      if (l && gw && table === MAIN_TABLE && !l.gateways.includes(gw)) l.gateways.push(gw);
    }
  }
  const snap: Snapshot = new Map();
  for (const l of byIndex.values()) snap.set(l.name, l);
  return snap;
}
