// The monitor socket, as upstream's monitorserver.cpp: a unix socket (mode 0666, an old file
// replaced) that pushes the statistics document every second to each connected monitor,
// indented with sorted keys, then a blank line. A monitor that writes anything is dropped.
import { chmodSync, unlinkSync } from "node:fs";
import type { Socket, UnixSocketListener } from "bun";
import type { Clock, TimerHandle } from "../../clock.ts";
import { API_VERSION, indented, SERVER_VERSION } from "./protocol.ts";
import type { NymeaServer } from "./server.ts";

export const MONITOR_INTERVAL_MS = 1_000;
/** A monitor that lets this much pile up unread is dropped. */
const MONITOR_MAX_PENDING = 4 * 1024 * 1024;

interface MonData {
  pending: Uint8Array[];
  size: number;
}

/** The document a monitor gets, pure: `throughput` is the tunnel bytes of the last second. */
export function monitorDocument(server: NymeaServer, throughput: number): Record<string, unknown> {
  return {
    apiVersion: API_VERSION,
    serverName: server.name,
    serverVersion: SERVER_VERSION,
    proxyStatistic: { ...server.statistic(), troughput: throughput },
    // The v2 tunnel proxy is not implemented here: always empty.
    tunnelProxyStatistic: {},
  };
}

export class NymeaMonitor {
  private listener: UnixSocketListener<MonData> | null = null;
  private readonly monitors = new Set<Socket<MonData>>();
  private timer: TimerHandle | null = null;
  private lastTraffic = 0;

  constructor(private readonly path: string, private readonly server: NymeaServer, private readonly clock: Clock) {}

  start(): void {
    try {
      unlinkSync(this.path);
    } catch {
      // no old socket
    }
    const monitors = this.monitors;
    this.listener = Bun.listen<MonData>({
      unix: this.path,
      data: { pending: [], size: 0 },
      socket: {
        open(s) {
          s.data = { pending: [], size: 0 };
          monitors.add(s);
        },
        data(s) {
          // Upstream drops a monitor that talks.
          monitors.delete(s);
          s.end();
        },
        drain(s) {
          flush(s);
        },
        close(s) {
          monitors.delete(s);
        },
        error(s) {
          monitors.delete(s);
        },
      },
    });
    chmodSync(this.path, 0o666);
    this.lastTraffic = this.server.traffic;
    this.timer = this.clock.setInterval(() => this.tick(), MONITOR_INTERVAL_MS);
  }

  get count(): number {
    return this.monitors.size;
  }

  tick(): void {
    const traffic = this.server.traffic;
    const doc = Buffer.from(indented(monitorDocument(this.server, traffic - this.lastTraffic)) + "\n", "utf8");
    this.lastTraffic = traffic;
    for (const s of this.monitors) {
      if (s.data.size + doc.byteLength > MONITOR_MAX_PENDING) {
        this.monitors.delete(s);
        s.terminate();
        continue;
      }
      s.data.pending.push(doc);
      s.data.size += doc.byteLength;
      flush(s);
    }
  }

  close(): void {
    this.clock.clearInterval(this.timer);
    this.timer = null;
    for (const s of this.monitors) s.end();
    this.monitors.clear();
    this.listener?.stop(true);
    this.listener = null;
    try {
      unlinkSync(this.path);
    } catch {
      // gone already
    }
  }
}

function flush(s: Socket<MonData>): void {
  const d = s.data;
  while (d.pending.length) {
    const head = d.pending[0]!;
    const n = s.write(head);
    if (n < 0) return;
    d.size -= Math.max(0, n);
    if (n < head.byteLength) {
      d.pending[0] = head.subarray(n);
      return;
    }
    d.pending.shift();
  }
}
