// The master picks each routed tunnel's point-to-point addresses from `[tunnel] pool`: one /30
// per tunnel, the master at .1 and the onsite end at .2 of it. Pure, table-tested.
import { formatIPv4, parseIPv4, type Cidr } from "../../netaddr.ts";
import type { TunnelAddressing } from "./device.ts";

export type Allocation = { ok: true; addressing: TunnelAddressing } | { ok: false; reason: string };

/** The /30 block (its network address) an addressing lies in, or null if it is not ours. */
export function blockOf(a: TunnelAddressing): number | null {
  const m = /^([\d.]+)\/30$/.exec(a.master);
  if (!m) return null;
  try {
    return (parseIPv4(m[1]!) & 0xfffffffc) >>> 0;
  } catch {
    return null;
  }
}

/** The first free /30 of `pool` that none of `used` occupies. */
export function allocateAddressing(pool: Cidr, used: Iterable<TunnelAddressing>): Allocation {
  if (pool.prefix > 30) return { ok: false, reason: `[tunnel] pool ${formatIPv4(pool.network)}/${pool.prefix} is too small: a tunnel takes a /30, so the pool must be a /30 or larger` };
  const taken = new Set<number>();
  for (const a of used) {
    const b = blockOf(a);
    if (b !== null) taken.add(b);
  }
  const blocks = 2 ** (30 - pool.prefix);
  for (let i = 0; i < blocks; i++) {
    const net = (pool.network + i * 4) >>> 0;
    if (taken.has(net)) continue;
    return { ok: true, addressing: { master: `${formatIPv4(net + 1)}/30`, onsite: `${formatIPv4(net + 2)}/30` } };
  }
  return { ok: false, reason: `[tunnel] pool ${formatIPv4(pool.network)}/${pool.prefix} is used up: all ${blocks} tunnel addresses are taken; end a tunnel session or give a larger pool` };
}
