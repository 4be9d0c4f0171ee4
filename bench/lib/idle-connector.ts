// The real idle connector for bench/lib/idle.ts: each connection is one onsite device with its
// own certificate (CN site-idle-N), dialing the relay over TLS 1.3 with mutual auth, sending
// HELLO and its inventory, then idle but for keepalive PINGs: exactly what a fleet of quiet
// devices costs a relay. Certificates are signed in this process with one shared RSA key (a
// key per device would take minutes to generate and changes nothing on the relay's side).
import { readFileSync } from "node:fs";
import { caPaths, generateKeyPair, parseCa, type CaMaterial, type KeyPair } from "../../src/pki.ts";
import { Connection } from "../../src/transport/mux.ts";
import { Msg } from "../../src/transport/messages.ts";
import { dialTls, type TlsMaterial } from "../../src/transport/tls.ts";
import { helloWelcome, issueDevice } from "./bench-device.ts";
import type { IdleConnection, IdleConnector, IdleContext } from "./idle.ts";

let ca: CaMaterial | null = null;
let caPem = "";
let caKeyPem = "";
let key: KeyPair | null = null;
const issued = new Map<number, TlsMaterial>();

function idOf(i: number): string {
  return `site-idle-${i}`;
}

function issue(i: number): TlsMaterial {
  return issueDevice({ ca: ca!, caPem, caKeyPem, key: key! }, "onsite", idOf(i), 1);
}

export const connector: IdleConnector = {
  async prepare(ctx: IdleContext, from: number, to: number): Promise<void> {
    if (!ca) {
      const p = caPaths(ctx.pkiDir);
      caPem = readFileSync(p.cert, "utf8");
      caKeyPem = readFileSync(p.key, "utf8");
      ca = parseCa(caPem, caKeyPem);
      key = generateKeyPair();
    }
    for (let i = from; i < to; i++) if (!issued.has(i)) issued.set(i, issue(i));
  },

  async open(ctx: IdleContext, index: number): Promise<IdleConnection> {
    const tls = issued.get(index) ?? issue(index);
    const [host, port] = ctx.relay.split(":") as [string, string];
    const link = await dialTls({ host, port: Number(port), tls });
    const conn = new Connection(link, { side: "dialer" });
    await helloWelcome(conn, "onsite", idOf(index), "idle-bench");
    conn.send(Msg.INVENTORY, { hostname: `idle-${index}`, location: "bench", agent: "idle-bench", uptime: 1, uplink: "lo" });
    conn.startKeepalive();
    return { close: () => conn.close(0, "bench done") };
  },
};

/** The TLS material of device `index` (CN site-idle-N), signed by the fleet CA in `pkiDir` (for test/helpers/device-swarm.ts). */
export async function deviceMaterial(pkiDir: string, index: number): Promise<TlsMaterial> {
  await connector.prepare!({ relay: "", workDir: "", pkiDir }, index, index + 1);
  return issued.get(index)!;
}
export const deviceId = idOf;
