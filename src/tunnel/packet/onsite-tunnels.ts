// The onsite device's tunnels: one end per session (a TUN or TAP device from the host), made
// when the session is offered (or switched) and closed when the session ends, and the packet
// stream the master opens for it. The device's config decides first: no tunnel without
// `[tunnel] enabled = true`, no bridged one without `[tunnel] bridged = true`.
import { ResetCode } from "../../transport/frame.ts";
import { RemoteError, type Log, type Stream } from "../../transport/mux.ts";
import { ErrorCode, type TunnelEndBody, type TunnelOffer, type TunnelRequestBody } from "../../transport/messages.ts";
import type { PacketStats } from "../../transport/packet.ts";
import { PacketBridge } from "./bridge.ts";
import { TunnelRefused, type OnsiteTunnelEnd, type OnsiteTunnelHost, type TunnelMode } from "./device.ts";

export interface OnsiteTunnelPolicy {
  enabled: boolean;
  bridged: boolean;
}

/** Why this device refuses a tunnel of `mode` (pure); null when its config allows it. */
export function tunnelRefusal(id: string, policy: OnsiteTunnelPolicy, mode: TunnelMode): string | null {
  if (!policy.enabled) return `${id}: packet tunnels are off on this device; set [tunnel] enabled = true in its config to allow them`;
  if (mode === "bridged" && !policy.bridged) return `${id}: bridged tunnels are not allowed on this device (one exposes its whole LAN segment); set [tunnel] bridged = true in its config to allow them`;
  return null;
}

interface OnsiteTunnel {
  session: string;
  mode: TunnelMode;
  end: OnsiteTunnelEnd | null;
  bridge: PacketBridge;
  /** Serialises opens, switches and the close of one session's tunnel. */
  busy: Promise<unknown>;
  closed: boolean;
}

export interface OnsiteTunnelView {
  mode: TunnelMode;
  onsite: TunnelEndBody | null;
  subnets: string[];
  packets: PacketStats;
}

export interface OnsiteTunnelsOptions {
  id: string;
  host: OnsiteTunnelHost;
  policy: () => OnsiteTunnelPolicy;
  log: Log;
}

export class OnsiteTunnels {
  private readonly tunnels = new Map<string, OnsiteTunnel>();

  constructor(private readonly o: OnsiteTunnelsOptions) {}

  /** A config refusal as the master will read it, or null. */
  refusal(mode: TunnelMode): string | null {
    return tunnelRefusal(this.o.id, this.o.policy(), mode);
  }

  /** The offer asks for a tunnel: make the end (replacing one the session had), say what it routes. */
  async open(session: string, req: TunnelRequestBody): Promise<TunnelOffer> {
    let t = this.tunnels.get(session);
    if (!t) {
      t = { session, mode: req.mode, end: null, bridge: new PacketBridge(), busy: Promise.resolve(), closed: false };
      this.tunnels.set(session, t);
    }
    return this.serially(t, () => this.replace(t!, req));
  }

  /** TUNNEL_MODE: the same as an offer's tunnel, for a session that has one. */
  async switch(session: string, req: TunnelRequestBody): Promise<TunnelOffer> {
    const t = this.tunnels.get(session);
    if (!t || t.closed) throw new RemoteError(ErrorCode.NO_SESSION, `${this.o.id}: session ${session} has no tunnel here`);
    return this.serially(t, () => this.replace(t, req));
  }

  private async replace(t: OnsiteTunnel, req: TunnelRequestBody): Promise<TunnelOffer> {
    const refusal = this.refusal(req.mode);
    if (refusal) throw new RemoteError(ErrorCode.REFUSED, refusal);
    if (t.closed) throw new RemoteError(ErrorCode.NO_SESSION, `${this.o.id}: session ${t.session} ended`);
    // The old end goes first: a host may have room for one device per session only.
    const old = t.end;
    t.end = null;
    t.bridge.setDevice(null);
    t.bridge.currentStream?.reset(ResetCode.CANCEL, `tunnel switching to ${req.mode}`);
    if (old) await this.closeEnd(t.session, old);
    let end: OnsiteTunnelEnd;
    try {
      end = await this.o.host.open({ session: t.session, mode: req.mode, ...(req.addressing ? { addressing: req.addressing } : {}) });
    } catch (e) {
      if (e instanceof TunnelRefused) throw new RemoteError(ErrorCode.REFUSED, `${this.o.id}: ${e.message}`);
      throw new RemoteError(ErrorCode.INTERNAL, `${this.o.id}: cannot open the ${req.mode} tunnel: ${(e as Error).message}`);
    }
    if (t.closed) {
      // The session ended while the device was being made.
      await this.closeEnd(t.session, end);
      throw new RemoteError(ErrorCode.NO_SESSION, `${this.o.id}: session ${t.session} ended`);
    }
    t.end = end;
    t.mode = req.mode;
    t.bridge.setDevice(end.device);
    const info = end.info();
    this.o.log.info(`session ${t.session}: ${req.mode} tunnel on ${info.iface}${end.subnets.length ? `, routing ${end.subnets.join(", ")}` : ""}`);
    return { mode: req.mode, subnets: [...end.subnets], onsite: info };
  }

  /** The master's packet stream for the session's tunnel. */
  attach(stream: Stream, session: string, mode: TunnelMode): void {
    const t = this.tunnels.get(session);
    if (!t || t.closed || !t.end) {
      stream.reset(ResetCode.NO_SESSION, `${this.o.id}: session ${session} has no tunnel here`);
      return;
    }
    if (t.mode !== mode) {
      stream.reset(ResetCode.REFUSED, `${this.o.id}: session ${session}'s tunnel is ${t.mode}, not ${mode}`);
      return;
    }
    t.bridge.setStream(stream);
    stream.accept();
  }

  /** The session ended (or the relay went): its end is closed, everything it made removed. */
  async close(session: string, reason: string): Promise<void> {
    const t = this.tunnels.get(session);
    if (!t) return;
    this.tunnels.delete(session);
    t.closed = true;
    t.bridge.currentStream?.reset(ResetCode.NO_SESSION, `session ended: ${reason}`);
    await this.serially(t, async () => {
      const end = t.end;
      t.end = null;
      t.bridge.setDevice(null);
      if (end) await this.closeEnd(session, end);
    });
  }

  async closeAll(reason: string): Promise<void> {
    await Promise.all([...this.tunnels.keys()].map((s) => this.close(s, reason)));
  }

  view(session: string): OnsiteTunnelView | undefined {
    const t = this.tunnels.get(session);
    if (!t) return undefined;
    return { mode: t.mode, onsite: t.end?.info() ?? null, subnets: t.end ? [...t.end.subnets] : [], packets: t.bridge.stats() };
  }

  get size(): number {
    return this.tunnels.size;
  }

  private async closeEnd(session: string, end: OnsiteTunnelEnd): Promise<void> {
    try {
      await end.close();
    } catch (e) {
      this.o.log.warn(`session ${session}: closing its tunnel end ${end.device.name}: ${(e as Error).message}`);
    }
  }

  private serially<T>(t: OnsiteTunnel, fn: () => Promise<T>): Promise<T> {
    const run = t.busy.then(fn, fn);
    t.busy = run.catch(() => undefined);
    return run;
  }
}
