// Who pairs with whom, pure. Clients that authenticated successfully are offered here; the
// table answers wait / pair / refuse, and on disconnect names the partner to close.
//
// Upstream keys waiting clients by token (legacy, no nonce) or by nonce alone, and tunnels by
// token+nonce concatenated. Two of its bugs are not copied:
//  - different tokens with the same nonce were paired (the key ignored the token). Here the
//    key is always the (token, nonce) pair; the legacy pairing is the pair (token, "").
//  - a rejected third client, on disconnect, removed the tunnel of the first two (it looked the
//    tunnel up by its own identical key). Here only a member removes its tunnel.

export interface Candidate {
  /** The connection's id (unique per connection). */
  id: string;
  token: string;
  /** "" for the legacy pairing by token alone. */
  nonce: string;
  /** As parsed (parseUuid): invalid uuids are all the null uuid. */
  uuid: string;
}

export type PairDecision =
  /** Answer success; wait alone for the partner. */
  | { kind: "wait" }
  /** Answer success; both get TunnelEstablished. */
  | { kind: "pair"; peer: string }
  /** A tunnel for this (token, nonce) is up: close the newcomer without an answer. */
  | { kind: "tunnel-exists" }
  /** The waiting partner has the same uuid (a client meeting itself): close both. */
  | { kind: "duplicate-uuid"; peer: string };

/** The pairing key: unambiguous for any token and nonce. */
export function pairKey(token: string, nonce: string): string {
  return JSON.stringify([token, nonce]);
}

export class PairingTable {
  private readonly waiting = new Map<string, Candidate>();
  private readonly tunnels = new Map<string, readonly [string, string]>();
  /** id → the key it holds and how. */
  private readonly members = new Map<string, { key: string; state: "waiting" | "tunnel" }>();

  offer(c: Candidate): PairDecision {
    if (this.members.has(c.id)) throw new Error(`client ${c.id} offered twice`);
    const key = pairKey(c.token, c.nonce);
    if (this.tunnels.has(key)) return { kind: "tunnel-exists" };
    const w = this.waiting.get(key);
    if (!w) {
      this.waiting.set(key, c);
      this.members.set(c.id, { key, state: "waiting" });
      return { kind: "wait" };
    }
    this.waiting.delete(key);
    if (w.uuid === c.uuid) {
      this.members.delete(w.id);
      return { kind: "duplicate-uuid", peer: w.id };
    }
    this.tunnels.set(key, [w.id, c.id]);
    this.members.set(w.id, { key, state: "tunnel" });
    this.members.set(c.id, { key, state: "tunnel" });
    return { kind: "pair", peer: w.id };
  }

  /** A client is gone: its place is freed; returns its tunnel partner (to close), if any. */
  remove(id: string): string | undefined {
    const m = this.members.get(id);
    if (!m) return undefined;
    this.members.delete(id);
    if (m.state === "waiting") {
      if (this.waiting.get(m.key)?.id === id) this.waiting.delete(m.key);
      return undefined;
    }
    const t = this.tunnels.get(m.key);
    if (!t || (t[0] !== id && t[1] !== id)) return undefined;
    this.tunnels.delete(m.key);
    const peer = t[0] === id ? t[1] : t[0];
    this.members.delete(peer);
    return peer;
  }

  get waitingCount(): number {
    return this.waiting.size;
  }
  get tunnelCount(): number {
    return this.tunnels.size;
  }
  /** The open tunnels as id pairs (first: the one that waited). */
  tunnelList(): (readonly [string, string])[] {
    return [...this.tunnels.values()];
  }
}
