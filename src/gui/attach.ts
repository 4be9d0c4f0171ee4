// What a role adds to its daemon for `gui = "ADDR:PORT"`: the GUI server over the role's own API
// object, its event bus, and the certificate it serves (`gui_cert`). Called by
// src/roles/master.ts and src/roles/relay.ts; the server itself is ./server.ts.
import { readFileSync } from "node:fs";
import type { Config } from "../config.ts";
import { UsageError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { realIfAddrs } from "../os/if-addrs.ts";
import { LanGui } from "./lan-bind.ts";
import { GuiServer, type EventSource, type GuiOptions } from "./server.ts";

export interface GuiRoleParts {
  role: "master" | "relay";
  id: string;
  api: object;
  events: EventSource;
  /** The daemon's certificate and key (the fleet CA signed it): what `gui_cert = "bundle"` serves. */
  bundle: { certPem: string; keyPem: string };
  digest?: GuiOptions["digest"];
  shape?: GuiOptions["shape"];
}

/** The certificate the GUI serves: none (HTTP), the bundle's, or a PEM file holding the chain and the key. */
export function guiTls(cfg: Config, bundle: GuiRoleParts["bundle"]): { cert: string; key: string } | undefined {
  const c = cfg.gui_cert;
  if (!c) return undefined;
  if (c === "bundle") return { cert: bundle.certPem, key: bundle.keyPem };
  let pem: string;
  try {
    pem = readFileSync(c, "utf8");
  } catch (e) {
    throw new UsageError(`gui_cert ${c}: ${(e as Error).message}`, 'gui_cert = "bundle" serves the device certificate (signed by the fleet CA); a file must hold the certificate chain and the private key in PEM');
  }
  const certs = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  const key = pem.match(/-----BEGIN (?:RSA |EC )?PRIVATE KEY-----[\s\S]+?-----END (?:RSA |EC )?PRIVATE KEY-----/);
  if (!certs || !key) throw new UsageError(`gui_cert ${c}: expected a PEM certificate and its private key in one file, found ${certs ? "no key" : "no certificate"}`);
  return { cert: certs.join("\n"), key: key[0] };
}

/** The GUI component of a daemon whose config has `gui`, or null. `gui = ":PORT"`: loopback and the LAN side (./lan-bind.ts). */
export function guiComponent(cfg: Config, parts: GuiRoleParts, log: Logger): GuiServer | LanGui | null {
  if (!cfg.gui) return null;
  if (cfg.gui.host === "") {
    const gui = guiServer(cfg, { ...cfg, gui: { host: "127.0.0.1", port: cfg.gui.port } }, parts, log);
    return new LanGui(gui, parts.role === "master" ? cfg.tunnel?.secondary : undefined, realIfAddrs, log.withTag("gui"));
  }
  if (cfg.gui.host === "0.0.0.0") log.warn(`the web GUI answers on every interface (gui = "0.0.0.0:${cfg.gui.port}"), the uplink too; bind it to the LAN side's address, e.g. gui = "192.168.1.20:${cfg.gui.port}" (see README, Web GUI)`);
  return guiServer(cfg, cfg, parts, log);
}

function guiServer(cfg: Config, at: Config, parts: GuiRoleParts, log: Logger): GuiServer {
  return new GuiServer({
    listen: at.gui!,
    role: parts.role,
    id: parts.id,
    api: parts.api,
    events: parts.events,
    stateDir: cfg.state_dir,
    log: log.withTag("gui"),
    hostnames: cfg.hostname ? [cfg.hostname] : [],
    tls: guiTls(cfg, parts.bundle),
    digest: parts.digest,
    shape: parts.shape,
  });
}
