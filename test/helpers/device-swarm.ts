// A swarm of real devices in one process (issue 17's storm test and herd benchmark): N onsite
// devices, each with its own certificate from the fleet CA (bench/lib/idle-connector.ts signs
// them natively), each a RelayClient (the devices' real reconnect loop: backoff, the WELCOME's
// redial spread) over real TLS 1.3 from its own source address (node:tls `localAddress`, so
// the relay's per-source rules see N devices, not one).
//
//   bun test/helpers/device-swarm.ts PKI_DIR HOST PORT COUNT ADDRESS_PREFIX FIRST [nospread]
//   (device i dials from ADDRESS_PREFIX + (FIRST + i), e.g. 10.77.1. + 1..; with a two-octet
//   prefix such as 127.1. from 127.1.(n / 250).(n % 250 + 1), n = FIRST - 1 + i; "": the
//   default address. Device ids start at FIRST - 1. `nospread`: the devices ignore the
//   WELCOME's redial spread, as devices before issue 17 did (the herd benchmark's peer).)
// stdin lines:  "up"   start every device; answers {"up":N} once all are connected
//               "drop" cut every connection at once (the devices redial by themselves); then
//                      {"back":[ms...]} each second: the time each device took to be up again
//               "mark" as drop without cutting (the relay was killed): times from now
//               "exit"
// stdout: one JSON object a line.
import tls from "node:tls";
import { once } from "node:events";
import { RelayClient } from "../../src/transport/client.ts";
import { NodeTlsLink } from "../../src/transport/tls-proxied.ts";
import { Msg } from "../../src/transport/messages.ts";
import type { Link } from "../../src/transport/link.ts";
import { deviceId, deviceMaterial } from "../../bench/lib/idle-connector.ts";

const [pkiDir, host, portText, countText, prefix = "", firstText = "1", mode = ""] = process.argv.slice(2);
const port = Number(portText);
const count = Number(countText);
const first = Number(firstText);
if (!pkiDir || !host || !Number.isInteger(port) || !Number.isInteger(count) || count < 1) {
  console.error("usage: device-swarm.ts PKI_DIR HOST PORT COUNT [ADDRESS_PREFIX FIRST]");
  process.exit(2);
}
const quiet = { debug() {}, info() {}, warn() {} };
const say = (o: unknown) => process.stdout.write(JSON.stringify(o) + "\n");

const materials: Awaited<ReturnType<typeof deviceMaterial>>[] = [];
for (let i = 0; i < count; i++) materials.push(await deviceMaterial(pkiDir, first - 1 + i));

function sourceOf(i: number): string {
  const n = first - 1 + i;
  return prefix.split(".").length === 3 ? `${prefix}${Math.floor(n / 250)}.${(n % 250) + 1}` : `${prefix}${first + i}`;
}

function dial(i: number): Promise<Link> {
  const m = materials[i]!;
  const sock = tls.connect({ host, port, cert: m.certPem, key: m.keyPem, ca: m.caPem, rejectUnauthorized: false, minVersion: "TLSv1.3", ...(prefix ? { localAddress: sourceOf(i) } : {}) });
  const timer = setTimeout(() => sock.destroy(new Error("no TLS within 15 s")), 15_000);
  return Promise.race([once(sock, "secureConnect"), once(sock, "error").then(([e]) => Promise.reject(e)), once(sock, "close").then(() => Promise.reject(new Error("closed during the TLS handshake")))])
    .then(() => new NodeTlsLink(sock, `${host}:${port}`) as Link)
    .finally(() => clearTimeout(timer));
}

let droppedAt: number | null = null;
const back: (number | null)[] = new Array(count).fill(null);
const links: (Link | null)[] = new Array(count).fill(null);
let upNow = 0;
const clients = Array.from({ length: count }, (_, i) =>
  new RelayClient({
    role: "onsite",
    id: deviceId(first - 1 + i),
    agent: "device-swarm",
    describe: `${host}:${port}`,
    log: quiet,
    dial: async () => (links[i] = await dial(i)),
    setup: () => {},
    onUp: (conn) => {
      upNow++;
      if (mode === "nospread") queueMicrotask(() => void (clients[i]!.welcome && delete clients[i]!.welcome.spread));
      conn.send(Msg.INVENTORY, { hostname: `swarm-${i}`, location: "storm", agent: "device-swarm", uptime: 1, uplink: "lo" });
      if (droppedAt !== null && back[i] === null) back[i] = Math.round(performance.now() - droppedAt);
    },
    onDown: () => void upNow--,
  }),
);

let reporter: ReturnType<typeof setInterval> | null = null;
let buf = "";
for await (const chunk of process.stdin) {
  buf += new TextDecoder().decode(chunk as Uint8Array);
  let nl;
  while ((nl = buf.indexOf("\n")) >= 0) {
    const cmd = buf.slice(0, nl).trim();
    buf = buf.slice(nl + 1);
    if (cmd === "up") {
      for (const c of clients) c.start();
      const t = setInterval(() => {
        if (clients.every((c) => c.state === "up")) {
          clearInterval(t);
          say({ up: count });
        }
      }, 100);
    } else if (cmd === "drop" || cmd === "mark") {
      droppedAt = performance.now();
      back.fill(null);
      if (cmd === "drop") for (const l of links) l?.destroy();
      if (reporter) clearInterval(reporter);
      reporter = setInterval(() => say({ back }), 1000);
    } else if (cmd === "exit") {
      if (reporter) clearInterval(reporter);
      say({ back, up: upNow });
      await Promise.race([Promise.all(clients.map((c) => c.close())), Bun.sleep(5_000)]);
      process.exit(0);
    }
  }
}
