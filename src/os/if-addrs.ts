// The addresses of this host's interfaces, as the OS reports them now (getifaddrs, through
// node:os). One read per call, no cache: a caller that waits for an address polls it.
import { networkInterfaces } from "node:os";

export interface IfAddr {
  address: string;
  /** "IPv4" / "IPv6" (or 4 / 6 on some runtimes). */
  family: string | number;
  internal: boolean;
}

/** Interface name → its addresses. */
export type IfAddrMap = Record<string, readonly IfAddr[] | undefined>;

export interface IfAddrs {
  list(): IfAddrMap;
}

export const realIfAddrs: IfAddrs = { list: () => networkInterfaces() as IfAddrMap };

/** A fake: the interfaces a test sets. */
export class FakeIfAddrs implements IfAddrs {
  calls = 0;
  constructor(public map: IfAddrMap = {}) {}
  list(): IfAddrMap {
    this.calls++;
    return this.map;
  }
}
