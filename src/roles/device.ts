// What the onsite and master roles share: a RelayClient dialing the configured relay (through
// the proxy if one is set) with the device's bundle.
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import { formatHostPort } from "../netaddr.ts";
import type { Bundle } from "../pki.ts";
import { RelayClient, type RelayClientOptions } from "../transport/client.ts";
import { dialTls } from "../transport/tls.ts";
import { VERSION } from "../version.ts";

export function relayClientFor(
  cfg: Config,
  bundle: Bundle,
  log: Logger,
  role: "onsite" | "master",
  hooks: Pick<RelayClientOptions, "setup" | "onUp" | "onDown" | "onStream" | "keepaliveRequest">,
): RelayClient {
  const relay = cfg.relay!;
  return new RelayClient({
    role,
    id: bundle.id,
    agent: VERSION,
    describe: formatHostPort(relay) + (cfg.proxy ? ` via proxy ${cfg.proxy.host}` : ""),
    log: log.withTag("link"),
    dial: () => dialTls({ host: relay.host, port: relay.port, tls: bundle, proxy: cfg.proxy }),
    ...hooks,
  });
}
