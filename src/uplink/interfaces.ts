// Which configured interfaces this device does not have: a typo in `[[uplink]] name` or
// `[ap] interface` must be named at start, not look like an uplink that is merely down.
// Pure parts (missingInterfaces, describeMissing) and the one effect (listing /sys/class/net).
import { readdirSync } from "node:fs";

/** The configured names not present, in configured order, each once. */
export function missingInterfaces(configured: readonly string[], present: Iterable<string>): string[] {
  const have = new Set(present);
  return [...new Set(configured)].filter((n) => !have.has(n));
}

/** "uplink eth1: no network interface of that name on this device (present: end0, wlan0)". */
export function describeMissing(what: string, missing: readonly string[], present: Iterable<string>): string {
  const shown = [...present].filter((n) => n !== "lo").sort();
  const names = missing.join(", ");
  const s = missing.length > 1 ? "s" : "";
  return `${what} ${names}: no network interface${s} of ${missing.length > 1 ? "those names" : "that name"} on this device (present: ${shown.join(", ") || "none"})`;
}

/** The interfaces of this host, from /sys/class/net; [] where that cannot be read. */
export function listInterfaces(): string[] {
  try {
    return readdirSync("/sys/class/net");
  } catch {
    return [];
  }
}
