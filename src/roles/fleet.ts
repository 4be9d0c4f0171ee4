// Fleet operations wired into the roles (issue 14, sections 1-3): the relay's inventory store
// and heartbeat listener, the onsite device's heartbeat sender. Kept here so that relay.ts and
// onsite.ts carry only a hook each.
import { dialedHost } from "./device.ts";
import { mkdirSync, readFileSync, statfsSync } from "node:fs";
import { loadavg, uptime } from "node:os";
import { lookup } from "node:dns/promises";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import { writeFileAtomic } from "../os/atomic.ts";
import { KEY_SIZE, HeartbeatTiming } from "../transport/heartbeat/codec.ts";
import { openUdp, type DatagramSocket, type OpenDatagram } from "../transport/heartbeat/socket.ts";
import { openPolledUdp } from "../transport/heartbeat/polled-udp.ts";
import { HeartbeatSender, loadKey, saveKey, type Diagnostics, type UplinkView } from "../transport/heartbeat/sender.ts";
import { Msg } from "../transport/messages.ts";
import { on } from "../transport/typed.ts";
import type { Connection } from "../transport/mux.ts";
import type { RelayClient } from "../transport/client.ts";
import { INVENTORY_DB, MemoryInventoryStore, SqliteInventoryStore, type InventoryStore } from "../tunnel/relay/inventory-store.ts";
import type { RelayServer } from "../tunnel/relay/server.ts";

// ---- relay --------------------------------------------------------------------------------

/** The inventory store in the state dir; memory only (said loudly) when it cannot be opened. */
export function openInventoryStore(stateDir: string, log: Logger): InventoryStore {
  const file = join(stateDir, INVENTORY_DB);
  try {
    // The daemon shell makes the state dir at start; the store is opened before that.
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    return new SqliteInventoryStore(file);
  } catch (e) {
    log.error(`cannot open the inventory ${file}: ${(e as Error).message}; devices are kept in memory only and forgotten at restart`);
    return new MemoryInventoryStore();
  }
}

export const SECRET_FILE = "heartbeat.secret";

/** The relay's heartbeat secret (device keys derive from it): made once, kept 0600. */
export function heartbeatSecret(stateDir: string): Uint8Array {
  const file = join(stateDir, SECRET_FILE);
  try {
    const b = readFileSync(file);
    if (b.length === KEY_SIZE) return new Uint8Array(b);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const secret = new Uint8Array(randomBytes(KEY_SIZE));
  try {
    writeFileAtomic(file, secret, { mode: 0o600, noClobber: true });
  } catch (e) {
    // Another start made it meanwhile: that one counts.
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return new Uint8Array(readFileSync(file));
    throw e;
  }
  return secret;
}

/**
 * How the relay opens its heartbeat socket: read in batches from a timer (polled-udp.ts) on an
 * IPv4 literal, node:dgram otherwise (a host name; the polled socket binds addresses only).
 */
export const openHeartbeatSocket: OpenDatagram = (o) => (o.address === undefined || /^\d+\.\d+\.\d+\.\d+$/.test(o.address) ? openPolledUdp(o) : openUdp(o));

/** The heartbeat listener: UDP on the relay's host, `port`. */
export async function listenHeartbeats(server: RelayServer, host: string, port: number, log: Logger, open: OpenDatagram = openHeartbeatSocket): Promise<DatagramSocket | null> {
  if (!server.heartbeats || port === 0) return null;
  const sock = await open({ address: host, port });
  server.heartbeats.attach(sock);
  log.info(`heartbeats on udp ${host}:${sock.local().port}`);
  return sock;
}

// ---- onsite -------------------------------------------------------------------------------

export interface OnsiteHeartbeatOptions {
  cfg: Config;
  id: string;
  client: () => RelayClient;
  uplinks?: () => UplinkView | undefined;
  wifi?: () => Promise<{ ssid: string; signal: number | null } | undefined>;
  log: Logger;
  open?: OpenDatagram;
}

function diskFreeMiB(dir: string): number {
  try {
    const s = statfsSync(dir);
    return Math.floor((s.bavail * s.bsize) / 1048576);
  } catch {
    return 0;
  }
}

/** The onsite device's heartbeat: the key from the state dir (or the relay, inside TLS), a sender. */
export function onsiteHeartbeat(o: OnsiteHeartbeatOptions): { sender: HeartbeatSender; setup: (conn: Connection) => void } {
  const { cfg, log } = o;
  const sender = new HeartbeatSender({
    id: o.id,
    // With several relays (issue 16) heartbeats go to the one the tunnel is on: its key is that relay's.
    get host() {
      return dialedHost(o.client?.()) ?? cfg.relay!.host;
    },
    open: o.open ?? openUdp,
    interval: cfg.heartbeat_interval ?? HeartbeatTiming.interval,
    meteredStandbyInterval: Math.max(HeartbeatTiming.meteredStandbyInterval, (cfg.heartbeat_interval ?? 0) * 4),
    resolve: async (host) => (/^\d+\.\d+\.\d+\.\d+$/.test(host) ? host : (await lookup(host, { family: 4 })).address),
    log: { debug: (m) => log.debug(m), warn: (m) => log.warn(m) },
    diagnostics: async (): Promise<Diagnostics> => {
      const c = o.client();
      const wifi = o.wifi ? await o.wifi().catch(() => undefined) : undefined;
      return {
        uplinks: o.uplinks?.(),
        wifi,
        tunnel: c.state,
        lastError: c.lastError,
        uptime: Math.floor(uptime()),
        load: loadavg()[0] ?? 0,
        diskFreeMiB: diskFreeMiB(cfg.state_dir),
      };
    },
  });
  const saved = loadKey(cfg.state_dir);
  if (saved) sender.setKey(saved);
  const setup = (conn: Connection) =>
    on(
      conn,
      Msg.HEARTBEAT_KEY,
      (b) => {
        const key = { relay: conn.peer?.id ?? "", key: new Uint8Array(Buffer.from(b.key, "base64")), port: b.port };
        const old = loadKey(cfg.state_dir);
        if (!old || old.port !== key.port || Buffer.compare(Buffer.from(old.key), Buffer.from(key.key)) !== 0) {
          try {
            saveKey(cfg.state_dir, key);
          } catch (e) {
            log.warn(`cannot keep the heartbeat key in ${cfg.state_dir}: ${(e as Error).message}`);
          }
        }
        sender.setKey(key);
      },
      (e) => log.warn(`ignoring a HEARTBEAT_KEY that does not decode: ${e.message}`),
    );
  return { sender, setup };
}
