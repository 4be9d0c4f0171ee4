// Where a device dials when it has several relays (issue 16): `relay = ["r1:443", "r2:443"]`,
// or one name with several addresses. Each dial takes the next candidate of a shuffled round;
// when the round is used up the names are resolved again and a new round is shuffled. The wait
// between dials stays the client's own backoff (src/transport/client.ts): after a relay dies the
// next dial already goes to another one, across a round's end too (`avoidFirst`). Shuffled so a fleet spreads over the relays, and does
// not all fall on the same second one when the first dies.
import type { HostPort } from "../netaddr.ts";

/** One address to dial; `name` is what the configuration said (for log lines). */
export interface Candidate {
  host: string;
  port: number;
  name: string;
}

/** A Fisher-Yates shuffle with the given random source. Pure. */
export function shuffled<T>(items: readonly T[], random: () => number = Math.random): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.min(i, Math.floor(random() * (i + 1)));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/**
 * One round of candidates: each configured relay expanded to the addresses its name resolved to
 * when it has several (else the name is kept: the dial resolves it, or says why), duplicates dropped,
 * shuffled. Pure.
 */
export function dialRound(relays: readonly HostPort[], resolved: ReadonlyMap<string, readonly string[]>, random: () => number = Math.random): Candidate[] {
  const seen = new Set<string>();
  const all: Candidate[] = [];
  for (const r of relays) {
    const name = r.host.includes(":") ? `[${r.host}]:${r.port}` : `${r.host}:${r.port}`;
    const addrs = resolved.get(r.host);
    // One address or none: the name itself is dialled, as with a single relay before.
    for (const host of addrs && addrs.length > 1 ? addrs : [r.host]) {
      const key = `${host}|${r.port}`;
      if (seen.has(key)) continue;
      seen.add(key);
      all.push({ host, port: r.port, name });
    }
  }
  return shuffled(all, random);
}

/**
 * A new round never starts with the candidate dialled last: that is the relay whose connection
 * just ended (or whose dial just failed), and with two relays a fresh shuffle would put it first
 * half the time, so a device whose relay was killed would dial the dead one again and wait a
 * backoff step before the live one. It goes to the end of the round instead. Pure.
 */
export function avoidFirst(round: readonly Candidate[], last: Candidate | null): Candidate[] {
  const out = [...round];
  if (!last || out.length < 2) return out;
  const same = (c: Candidate) => c.host === last.host && c.port === last.port;
  if (same(out[0]!)) out.push(out.shift()!);
  return out;
}

const IP = /^(\d{1,3}(\.\d{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:]*)$/;

/** Takes the next candidate at each dial; resolves the names anew for each round. */
export class RelayRotation {
  private round: Candidate[] = [];
  private last: Candidate | null = null;

  constructor(
    private readonly relays: readonly HostPort[],
    private readonly resolve: (host: string) => Promise<string[]>,
    private readonly random: () => number = Math.random,
  ) {}

  /** More than one place to go: worth naming which one in the log lines. */
  get several(): boolean {
    return this.relays.length > 1;
  }

  async next(): Promise<Candidate> {
    if (this.round.length === 0) {
      const resolved = new Map<string, string[]>();
      // Only when there is a choice: a single name is dialled as it is, as before.
      if (this.relays.length > 1 || this.relays.some((r) => !IP.test(r.host)))
        await Promise.all(
          this.relays
            .filter((r) => !IP.test(r.host))
            .map(async (r) => {
              try {
                resolved.set(r.host, await this.resolve(r.host));
              } catch {
                /* the dial of the name itself says why */
              }
            }),
        );
      this.round = avoidFirst(dialRound(this.relays, resolved, this.random), this.last);
    }
    this.last = this.round.shift()!;
    return this.last;
  }
}
