// Why a listen failed, in words that name the cause and the fix. Bun's error says only
// "Failed to listen at HOST" whatever went wrong; it carries the errno name in `code`
// (EADDRINUSE, EADDRNOTAVAIL, EACCES), which is what the explanation is built from. When no
// code came with it, the host's own addresses tell an address it does not have.
import { networkInterfaces } from "node:os";

/** What the host knows beside the error (injected so the decision stays pure). */
export interface ListenFacts {
  /** The addresses of this host's interfaces; null: unknown. */
  addresses: readonly string[] | null;
}

/** The cause and the fix of a failed listen on `host:port` (pure). */
export function explainListenError(err: unknown, host: string, port: number, facts: ListenFacts = { addresses: null }): string {
  const code = (err as { code?: unknown } | null)?.code;
  const message = err instanceof Error ? err.message : String(err);
  switch (code) {
    case "EADDRINUSE":
      return `port ${port} is in use (by another program; pick another port or stop it; \`ss -ltnp 'sport = :${port}'\` shows who)`;
    case "EACCES":
    case "EPERM":
      return port > 0 && port < 1024
        ? `ports below 1024 need root or CAP_NET_BIND_SERVICE (pick a port of 1024 or more, or run with that capability)`
        : `permission denied listening on port ${port} (${message})`;
    case "EADDRNOTAVAIL":
      return noAddress(host);
  }
  if (facts.addresses && isLiteral(host) && !isWildcard(host) && !isLoopback(host) && !facts.addresses.includes(bare(host))) return noAddress(host);
  if (!isLiteral(host)) return `${message} (is ${JSON.stringify(host)} a name of this host? a listen address is best given as an IP address such as 127.0.0.1 or 0.0.0.0)`;
  return message;
}

function noAddress(host: string): string {
  return `this host has no address ${host} (see \`ip -br addr\`; 0.0.0.0 listens on every address)`;
}

const bare = (h: string) => (h.startsWith("[") && h.endsWith("]") ? h.slice(1, -1) : h);
const isLiteral = (h: string) => /^\d{1,3}(\.\d{1,3}){3}$/.test(h) || bare(h).includes(":");
const isWildcard = (h: string) => h === "0.0.0.0" || bare(h) === "::";
const isLoopback = (h: string) => h.startsWith("127.") || bare(h) === "::1";

/** The addresses of this host's interfaces (the facts explainListenError takes). */
export function hostFacts(): ListenFacts {
  try {
    return { addresses: Object.values(networkInterfaces()).flatMap((l) => (l ?? []).map((a) => a.address)) };
  } catch {
    return { addresses: null };
  }
}

/** A listen error as an Error whose message is the explanation; the original is its cause. */
export function listenError(err: unknown, host: string, port: number): Error {
  const e = new Error(explainListenError(err, host, port, hostFacts()), { cause: err });
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === "string") (e as Error & { code?: string }).code = code;
  return e;
}
