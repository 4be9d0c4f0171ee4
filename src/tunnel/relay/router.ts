// Stream routing on the relay: the relay does not terminate streams, it carries DATA, WINDOW
// and RESET frames between a master's connection and the onsite device's, rewriting stream ids
// (the master's odd ids become even ids the relay picks towards the device) and tracking each
// direction's credit itself, so a peer that sends past it gets the stream reset on both sides
// and the relay never buffers more than one window per stream, whatever either end does.
import type { Connection } from "../../transport/mux.ts";
import { Flag, FrameType, ResetCode, decodeJson, encodeJson, encodeReset, type Frame } from "../../transport/frame.ts";
import { maxRoutedStreams } from "../../transport/policy.ts";
import { PacketSender, decodePacketOpen, isPacketOpen, noPacketStats, packetProblem, type DropReason, type PacketKind, type PacketStats } from "../../transport/packet.ts";

/** What the router needs to know of a session. */
export interface RoutedSession {
  id: string;
  master: string;
  targets: readonly string[];
  masterConn: Connection;
  onsiteConn: Connection;
  streams: number;
  /** The session's tunnel, once the onsite device has made its end. */
  tunnel?: { mode: string };
  /** UDP forwards' targets. */
  udp?: readonly string[];
  /** What the relay carried on packet streams towards each side. */
  packets?: { to_onsite: PacketStats; to_master: PacketStats };
}

/** One direction of a routed stream: frames arriving on `conn` with id `sid`. */
interface Route {
  conn: Connection;
  sid: number;
  peer: Route;
  session: RoutedSession;
  /** Bytes this side may still send towards the peer (the peer's window, tracked here). */
  credit: number;
  fin: boolean;
  /** Packet streams: the kind, and the bounded queue towards the peer (frames from `conn` go there). */
  kind?: PacketKind;
  tx?: PacketSender;
}

interface Peer {
  id: string;
  role: string;
  nextStreamId: number;
  routes: Map<number, Route>;
  /** Most streams routed on this connection at once. */
  limit: number;
}

export interface RouterOptions {
  /** Initial credit of each direction of each stream. */
  window: number;
  /** An active session by id. */
  session(id: string): RoutedSession | undefined;
  /** A peer broke the stream rules badly enough to lose its connection. */
  refuse(conn: Connection, reason: string): void;
  /** A stream of session `s` opened (true) or ended (false): the session table's idle count. */
  streamChanged?(s: RoutedSession, opened: boolean): void;
  /** A packet the relay dropped, by reason (the metrics counter). */
  packetDropped?(why: DropReason): void;
}

export class Router {
  private readonly peers = new Map<Connection, Peer>();
  private readonly limit: number;

  constructor(private readonly o: RouterOptions) {
    this.limit = maxRoutedStreams(o.window);
  }

  /** The connection passed its HELLO: its stream frames are routed from now on. `firstStreamId`:
   * of the streams the relay opens on it (1 on a mesh link this relay dialed, src/cluster/mesh.ts);
   * `limit`: of streams routed on it at once (a mesh link carries many devices' sessions). */
  attach(conn: Connection, peer: { id: string; role: string }, firstStreamId = 2, limit = this.limit): void {
    this.peers.set(conn, { id: peer.id, role: peer.role, nextStreamId: firstStreamId, routes: new Map(), limit });
  }

  has(conn: Connection): boolean {
    return this.peers.has(conn);
  }

  /** The connection is gone: every stream it carried is reset on the other side. */
  detach(conn: Connection, reason: string): void {
    const peer = this.peers.get(conn);
    if (!peer) return;
    this.peers.delete(conn);
    for (const r of [...peer.routes.values()]) this.drop(r, ResetCode.CANCEL, reason);
  }

  /** The session ended: its streams are reset on both sides. */
  dropSession(s: RoutedSession, reason: string): void {
    for (const conn of [s.masterConn, s.onsiteConn]) {
      const peer = this.peers.get(conn);
      if (peer) for (const r of [...peer.routes.values()]) if (r.session === s) this.drop(r, ResetCode.NO_SESSION, reason);
    }
  }

  /** Streams routed right now. */
  get streams(): number {
    let n = 0;
    for (const p of this.peers.values()) n += p.routes.size;
    return n / 2;
  }

  /** A DATA, WINDOW or RESET frame from an attached connection. */
  route(f: Frame, conn: Connection): void {
    const peer = this.peers.get(conn);
    if (!peer) return;
    if (f.type === FrameType.DATA && f.flags & Flag.SYN) {
      this.open(conn, peer, f);
      return;
    }
    const r = peer.routes.get(f.stream);
    if (!r) return; // a stream that has just been reset; its late frames are harmless
    if (f.type === FrameType.PACKET) {
      if (!r.tx) return this.drop(r, ResetCode.PROTOCOL, `${peer.id} sent a PACKET frame on a byte stream`);
      const problem = packetProblem(f.payload.length);
      if (problem) return this.drop(r, ResetCode.PROTOCOL, `${peer.id} sent ${problem}`);
      r.tx.stats.packets_in++;
      r.tx.stats.bytes_in += f.payload.length;
      r.tx.send(f.payload);
      return;
    }
    if (f.type === FrameType.DATA && r.tx && f.payload.length) {
      return this.drop(r, ResetCode.PROTOCOL, `${peer.id} sent byte data on a packet stream`);
    }
    if (f.type === FrameType.DATA) {
      if (f.payload.length > r.credit) {
        this.drop(r, ResetCode.PROTOCOL, `${peer.id} sent past its credit`);
        return;
      }
      r.credit -= f.payload.length;
      const fin = (f.flags & Flag.FIN) !== 0;
      r.peer.conn.writeFrame(FrameType.DATA, fin ? Flag.FIN : 0, r.peer.sid, f.payload);
      if (fin) {
        r.fin = true;
        if (r.peer.fin) this.forget(r);
      }
    } else if (f.type === FrameType.WINDOW) {
      // Credit for data flowing the other way (peer → this side).
      r.peer.credit += f.length;
      r.peer.conn.writeFrame(FrameType.WINDOW, f.flags & Flag.ACK, r.peer.sid, undefined, f.length);
    } else if (f.type === FrameType.RESET) {
      r.peer.conn.writeFrame(FrameType.RESET, 0, r.peer.sid, f.payload);
      this.forget(r);
    }
  }

  private open(conn: Connection, peer: Peer, f: Frame): void {
    const reset = (code: number, reason: string) => conn.writeFrame(FrameType.RESET, 0, f.stream, encodeReset(code, reason));
    if (peer.role !== "master") return reset(ResetCode.REFUSED, "only a master opens streams");
    if (peer.routes.has(f.stream) || f.stream % 2 !== 1) {
      this.o.refuse(conn, `bad stream id ${f.stream}`);
      return;
    }
    let open: Record<string, unknown>;
    try {
      const v = decodeJson(f.payload, "stream open header");
      if (typeof v !== "object" || v === null) throw new Error("stream open header is not an object");
      open = v as Record<string, unknown>;
    } catch (e) {
      return reset(ResetCode.PROTOCOL, (e as Error).message);
    }
    const packet = isPacketOpen(open) ? decodePacketOpen(open) : null;
    if (typeof packet === "string") return reset(ResetCode.PROTOCOL, packet);
    const s = typeof open.session === "string" ? this.o.session(open.session) : undefined;
    if (!s || s.masterConn !== conn) return reset(ResetCode.NO_SESSION, `no session ${JSON.stringify(open.session)}`);
    if (packet) {
      const refusal = packetRefusal(s, packet.packet, packet.target);
      if (refusal) return reset(ResetCode.REFUSED, refusal);
    } else if (typeof open.target !== "string" || !s.targets.includes(open.target)) return reset(ResetCode.REFUSED, `target ${JSON.stringify(open.target)} is not part of session ${s.id}`);
    const other = this.peers.get(s.onsiteConn);
    if (!other) return reset(ResetCode.NO_SESSION, "the onsite device is gone");
    const full = peer.routes.size >= peer.limit ? peer : other.routes.size >= other.limit ? other : null;
    if (full) return reset(ResetCode.REFUSED, `too many streams on one connection (limit ${full.limit})`);
    const sid = other.nextStreamId;
    other.nextStreamId += 2;
    const a: Route = { conn, sid: f.stream, session: s, credit: this.o.window, fin: false, peer: null as unknown as Route };
    const b: Route = { conn: s.onsiteConn, sid, session: s, credit: this.o.window, fin: false, peer: a };
    a.peer = b;
    if (packet) {
      s.packets ??= { to_onsite: noPacketStats(), to_master: noPacketStats() };
      a.kind = b.kind = packet.packet;
      a.tx = new PacketSender(s.onsiteConn, sid, undefined, s.packets.to_onsite, this.o.packetDropped);
      b.tx = new PacketSender(conn, f.stream, undefined, s.packets.to_master, this.o.packetDropped);
    }
    peer.routes.set(f.stream, a);
    other.routes.set(sid, b);
    s.streams++;
    this.o.streamChanged?.(s, true);
    const fin = (f.flags & Flag.FIN) !== 0;
    const header = packet ? { ...packet, master: s.master } : { session: s.id, target: open.target, master: s.master };
    s.onsiteConn.writeFrame(FrameType.DATA, Flag.SYN | (fin ? Flag.FIN : 0), sid, encodeJson(header));
    if (fin) a.fin = true;
  }

  /** The session's tunnel changed mode (or went): its tunnel packet streams are reset on both sides. */
  dropTunnelStreams(s: RoutedSession, reason: string): void {
    const peer = this.peers.get(s.masterConn);
    if (peer) for (const r of [...peer.routes.values()]) if (r.session === s && (r.kind === "routed" || r.kind === "bridged")) this.drop(r, ResetCode.CANCEL, reason);
  }

  private forget(r: Route): void {
    r.tx?.close();
    r.peer.tx?.close();
    const here = this.peers.get(r.conn)?.routes;
    const there = this.peers.get(r.peer.conn)?.routes;
    // Once per stream, whichever side's map still holds it (a detached peer has no map).
    const known = here?.get(r.sid) === r || there?.get(r.peer.sid) === r.peer;
    here?.delete(r.sid);
    there?.delete(r.peer.sid);
    if (known) this.o.streamChanged?.(r.session, false);
  }

  private drop(r: Route, code: number, reason: string): void {
    const payload = encodeReset(code, reason);
    r.conn.writeFrame(FrameType.RESET, 0, r.sid, payload);
    r.peer.conn.writeFrame(FrameType.RESET, 0, r.peer.sid, payload);
    this.forget(r);
  }
}

/** Why a session may not carry a packet stream of this kind (pure); null when it may. */
export function packetRefusal(s: Pick<RoutedSession, "id" | "tunnel" | "udp">, kind: PacketKind, target?: string): string | null {
  if (kind === "udp") return target !== undefined && s.udp?.includes(target) ? null : `UDP target ${JSON.stringify(target)} is not part of session ${s.id}`;
  if (!s.tunnel) return `session ${s.id} has no tunnel (open one with agent connect --tunnel routed|bridged)`;
  if (s.tunnel.mode !== kind) return `session ${s.id}'s tunnel is ${s.tunnel.mode}, not ${kind}`;
  return null;
}
