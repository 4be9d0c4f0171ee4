// The seam between the relay and cluster mode (issue 16): where a device is connected, which
// relays are alive, and how to reach one over the mesh. Two sides meet here:
// - the Redis side (./redis-*.ts) keeps presence and node heartbeats and implements
//   ClusterDirectory;
// - the mesh side (./mesh-*.ts) carries a session whose two ends sit on different relays one
//   hop relay-to-relay, and asks the directory where the device is.
// A relay without `[cluster]` has no directory at all: everything stays local, as before.
// MemoryDirectory below is the in-process fake (several relays in one test share one).

/** One relay process in the cluster. */
export interface RelayNode {
  /** Stable node id: the relay certificate's id (CN). */
  id: string;
  /** HOST:PORT of its relay-to-relay mesh listener (mutual TLS with relay certificates). */
  mesh: string;
}

/** Where one device is connected, as last published. */
export interface PresenceEntry {
  device: string;
  node: string;
  /** Wall-clock ms when this connection was accepted: the newer connection wins a conflict. */
  since: number;
}

/** The shared store cannot be reached: the caller refuses what needs it, with this reason. */
export class ClusterUnavailableError extends Error {
  constructor(reason: string) {
    super(`the cluster store is unreachable: ${reason}`);
    this.name = "ClusterUnavailableError";
  }
}

export interface ClusterDirectory {
  readonly self: RelayNode;
  /**
   * The relay that holds `device` now, or null when no live relay does. Throws
   * ClusterUnavailableError when the store cannot answer (then a cross-relay open is refused).
   */
  locate(device: string): Promise<RelayNode | null>;
  /** The live relays, this one included, as known now (no I/O). */
  nodes(): RelayNode[];
  /** Called when a relay is declared dead or comes back. Returns an unsubscribe function. */
  onNodes(listener: (nodes: RelayNode[]) => void): () => void;
}

/** In-process directory for tests: presence and nodes in Maps, no expiry. */
export class MemoryDirectory {
  private readonly presence = new Map<string, PresenceEntry>();
  private readonly live = new Map<string, RelayNode>();
  private readonly listeners = new Set<(nodes: RelayNode[]) => void>();

  /** A ClusterDirectory as seen from one relay node. */
  view(self: RelayNode): ClusterDirectory {
    this.live.set(self.id, self);
    this.notify();
    return {
      self,
      locate: async (device) => {
        const p = this.presence.get(device);
        return p ? this.live.get(p.node) ?? null : null;
      },
      nodes: () => [...this.live.values()],
      onNodes: (l) => {
        this.listeners.add(l);
        return () => this.listeners.delete(l);
      },
    };
  }

  publish(entry: PresenceEntry): void {
    const old = this.presence.get(entry.device);
    if (!old || old.since <= entry.since) this.presence.set(entry.device, entry);
  }

  withdraw(device: string, node: string): void {
    if (this.presence.get(device)?.node === node) this.presence.delete(device);
  }

  nodeDown(id: string): void {
    if (this.live.delete(id)) this.notify();
  }

  private notify(): void {
    const nodes = [...this.live.values()];
    for (const l of this.listeners) l(nodes);
  }
}
