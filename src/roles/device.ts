// What the onsite and master roles share: a RelayClient dialing the configured relay (through
// the proxy if one is set) with the device's bundle.
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import { formatHostPort } from "../netaddr.ts";
import type { Bundle } from "../pki.ts";
import { RelayClient, type RelayClientOptions } from "../transport/client.ts";
import { dialTls } from "../transport/tls.ts";
import { VERSION } from "../version.ts";
import { lookup } from "node:dns/promises";
import { RelayRotation } from "../cluster/relay-order.ts";

/** The host each client dialled last (with several relays: the one it is connected to). */
const dialed = new WeakMap<RelayClient, string>();

/** The relay host `client` dialled last, or undefined before its first dial. */
export function dialedHost(client: RelayClient | undefined): string | undefined {
  return client ? dialed.get(client) : undefined;
}

export function relayClientFor(
  cfg: Config,
  bundle: Bundle,
  log: Logger,
  role: "onsite" | "master",
  hooks: Pick<RelayClientOptions, "setup" | "onUp" | "onDown" | "onStream" | "keepaliveRequest">,
): RelayClient {
  const relay = cfg.relay!;
  // Several relays, or one name with several addresses (issue 16): a shuffled rotation. Through
  // a proxy the proxy resolves names, so only the configured list rotates.
  const relays = cfg.relays ?? [relay];
  const rotation = new RelayRotation(relays, async (host) => (cfg.proxy ? [] : (await lookup(host, { all: true })).map((a) => a.address)));
  const link = log.withTag("link");
  const client: RelayClient = new RelayClient({
    role,
    id: bundle.id,
    agent: VERSION,
    describe: relays.map(formatHostPort).join(", ") + (cfg.proxy ? ` via proxy ${cfg.proxy.host}` : ""),
    log: link,
    dial: async () => {
      const c = await rotation.next();
      dialed.set(client, c.host);
      if (rotation.several || c.host !== relay.host) link.debug(`dialing relay ${c.name}${c.host !== c.name.replace(/:\d+$/, "") ? ` at ${c.host}` : ""}`);
      return dialTls({ host: c.host, port: c.port, tls: bundle, proxy: cfg.proxy });
    },
    ...hooks,
  });
  return client;
}
