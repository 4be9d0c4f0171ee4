// The master's side of one session's packet tunnel: its end (a TUN or TAP device from the host,
// with routes to the onsite subnets, dnsmasq or the bridge on the secondary interface) and the
// packet stream it opens through the relay. A mode switch replaces both, never the session; a
// lost relay only the stream (the end stays while the session resumes, so the laptop on the
// secondary interface keeps its lease).
import { ResetCode } from "../transport/frame.ts";
import type { Connection, Log } from "../transport/mux.ts";
import type { TunnelAddressingBody, TunnelEndBody, TunnelOffer } from "../transport/messages.ts";
import type { PacketStats } from "../transport/packet.ts";
import { PacketBridge } from "./packet/bridge.ts";
import type { MasterTunnelEnd, MasterTunnelHost, TunnelMode } from "./packet/device.ts";
import { systemClock, type Clock } from "../clock.ts";

/** How long `connect` / `tunnel mode` wait for the onsite device to accept the packet stream. */
export const TUNNEL_ACCEPT_WAIT_MS = 5_000;

export interface TunnelView {
  mode: TunnelMode;
  /** up: both ends and the packet stream (accepted by the onsite device); waiting: no packet stream now (opening, relay lost, resuming); down: no master end. */
  state: "up" | "waiting" | "down";
  reason: string;
  master: TunnelEndBody | null;
  onsite: TunnelEndBody | null;
  /** What the onsite end routes (and this end routes through the tunnel). */
  subnets: string[];
  addressing: TunnelAddressingBody | null;
  /** `_out`: master → onsite; `_in`: onsite → master; drops by reason on this end. */
  packets: PacketStats;
  /** Secondary-interface changes seen while the tunnel was up. */
  warnings: string[];
}

export class MasterTunnel {
  mode: TunnelMode;
  addressing: TunnelAddressingBody | null;
  private end: MasterTunnelEnd | null = null;
  private onsite: TunnelEndBody | null = null;
  private subnets: string[] = [];
  private readonly bridge = new PacketBridge();
  private reason = "opening";
  private readonly warnings: string[] = [];
  private unwatch: (() => void) | null = null;
  private closed = false;

  constructor(
    private readonly host: MasterTunnelHost,
    private readonly log: Log,
    mode: TunnelMode,
    addressing: TunnelAddressingBody | null,
    /** The address the request came from (SSH client), for the host's bridged safety rule. */
    private requester: string | undefined,
    private readonly clock: Clock = systemClock,
  ) {
    this.mode = mode;
    this.addressing = addressing;
  }

  /** The onsite device made its end (offer or switch): make ours to match, then open the packet stream. */
  async up(conn: Connection, session: string, offer: TunnelOffer): Promise<void> {
    if (this.closed) return;
    const same = this.end && this.mode === offer.mode && sameList(this.subnets, offer.subnets);
    this.mode = offer.mode;
    this.onsite = offer.onsite;
    this.subnets = [...offer.subnets];
    if (!same) {
      await this.closeEnd();
      try {
        this.end = await this.host.open({
          session,
          mode: offer.mode,
          ...(offer.mode === "routed" ? { subnets: offer.subnets } : {}),
          ...(offer.mode === "routed" && this.addressing ? { addressing: this.addressing } : {}),
          ...(this.requester ? { requester: this.requester } : {}),
        });
      } catch (e) {
        this.reason = (e as Error).message;
        throw e;
      }
      if (this.closed) {
        await this.closeEnd();
        return;
      }
      this.bridge.setDevice(this.end.device);
      this.unwatch ??= this.host.onSecondaryChange((what) => {
        const w = `secondary interface changed while the tunnel is up: ${what}`;
        if (this.warnings.length < 20) this.warnings.push(w);
        this.log.warn(`session ${session}: ${w}`);
      });
    }
    await this.openStream(conn, session);
  }

  /**
   * A packet stream of the current mode (after up, or after the session resumed). Resolves once
   * the onsite device accepted it (or refused it, or TUNNEL_ACCEPT_WAIT_MS passed): the answer
   * to `connect` then says whether the tunnel is up.
   */
  openStream(conn: Connection, session: string): Promise<void> {
    if (this.closed || !this.end) return Promise.resolve();
    this.bridge.currentStream?.reset(ResetCode.CANCEL, "replaced by a new packet stream");
    const stream = conn.openStream({ session, packet: this.mode });
    return new Promise<void>((resolve) => {
      const timer = this.clock.setTimeout(resolve, TUNNEL_ACCEPT_WAIT_MS);
      const done = () => {
        this.clock.clearTimeout(timer);
        resolve();
      };
      stream.onaccept = done;
      stream.onclose = (err) => {
        done();
        if (err && this.bridge.currentStream === stream && !this.closed) {
          this.reason = `packet stream ended: ${err.message}`;
          this.log.debug(`session ${session}: ${this.reason}`);
        }
      };
      this.bridge.setStream(stream);
      this.reason = "";
    });
  }

  /** Before a switch: the old packet stream and end go (the host may hold one device per session). */
  async takeDown(reason: string): Promise<void> {
    this.bridge.currentStream?.reset(ResetCode.CANCEL, reason);
    this.bridge.setStream(null);
    await this.closeEnd();
    this.reason = reason;
  }

  setRequester(r: string | undefined): void {
    this.requester = r;
  }

  private closing: Promise<void> | null = null;

  /** Ends the tunnel; a second call waits for the first (the daemon stopping awaits it). */
  close(reason: string): Promise<void> {
    return (this.closing ??= (async () => {
      this.closed = true;
      this.unwatch?.();
      this.unwatch = null;
      this.bridge.currentStream?.reset(ResetCode.CANCEL, reason);
      this.bridge.setStream(null);
      await this.closeEnd();
      this.reason = reason;
    })());
  }

  view(): TunnelView {
    const stream = this.bridge.currentStream;
    // Up once the onsite device has accepted the packet stream: before that its packets would be dropped there.
    const state = !this.end ? "down" : stream && !stream.closed && stream.accepted ? "up" : "waiting";
    const opening = state === "waiting" && stream && !stream.closed;
    return {
      mode: this.mode,
      state,
      reason: state === "up" ? "" : opening ? "packet stream opening" : this.reason,
      master: this.end?.info() ?? null,
      onsite: this.onsite,
      subnets: [...this.subnets],
      addressing: this.addressing,
      packets: this.bridge.stats(),
      warnings: [...this.warnings],
    };
  }

  /** The master end's device (tests reach its memory device through this). */
  get device() {
    return this.end?.device ?? null;
  }

  private async closeEnd(): Promise<void> {
    const end = this.end;
    this.end = null;
    this.bridge.setDevice(null);
    if (!end) return;
    try {
      await end.close();
    } catch (e) {
      this.log.warn(`closing tunnel end ${end.device.name}: ${(e as Error).message}`);
    }
  }
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
