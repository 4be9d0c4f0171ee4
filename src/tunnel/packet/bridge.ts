// One tunnel end's wiring: the packets its device reads go to the session's current packet
// stream, the packets that stream delivers go to the device. The device and the stream are
// replaced independently (a mode switch replaces both; a lost relay only the stream), and the
// counts survive both: what `agent sessions` shows is the tunnel's whole life.
import type { Stream } from "../../transport/mux.ts";
import { addPacketStats, noPacketStats, type PacketStats } from "../../transport/packet.ts";
import type { PacketDevice } from "./device.ts";

export class PacketBridge {
  private device: PacketDevice | null = null;
  private stream: Stream | null = null;
  /** Counts of streams that have ended, and the drops that happened here (no stream, device full). */
  private readonly past: PacketStats = noPacketStats();

  /** The device whose packets this end carries (null: none now). Its reader starts here. */
  setDevice(d: PacketDevice | null): void {
    this.device = d;
    d?.onPacket((p) => this.fromDevice(d, p));
  }

  /** The packet stream towards the peer (null: none now, packets from the device are dropped). */
  setStream(s: Stream | null): void {
    const old = this.stream;
    if (old && old !== s) this.retire(old);
    this.stream = s;
    if (!s) return;
    s.onpacket = (p) => this.toDevice(p);
    const prev = s.onclose;
    s.onclose = (err) => {
      prev?.(err);
      if (this.stream === s) {
        this.retire(s);
        this.stream = null;
      }
    };
  }

  get currentStream(): Stream | null {
    return this.stream;
  }
  get currentDevice(): PacketDevice | null {
    return this.device;
  }

  private retired = new WeakSet<Stream>();
  private retire(s: Stream): void {
    if (this.retired.has(s)) return;
    this.retired.add(s);
    addPacketStats(this.past, s.packetStats());
  }

  private fromDevice(d: PacketDevice, p: Uint8Array): void {
    if (d !== this.device) return; // a device being closed may still deliver
    const s = this.stream;
    if (!s || s.closed) {
      this.past.drops.no_stream++;
      return;
    }
    s.sendPacket(p);
  }

  private toDevice(p: Uint8Array): void {
    const d = this.device;
    if (!d) {
      this.past.drops.no_stream++;
      return;
    }
    if (!d.write(p)) this.past.drops.device++;
  }

  /** Everything so far: `_out` is device → peer, `_in` peer → device. */
  stats(): PacketStats {
    const out = structuredClone(this.past);
    if (this.stream && !this.retired.has(this.stream)) addPacketStats(out, this.stream.packetStats());
    return out;
  }
}
