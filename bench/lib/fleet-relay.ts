// A relay for bench/fleet.bench.ts: a RelayServer with its inventory in sqlite (argv[2]: the
// file), N known devices (argv[3]) that connected once and went offline, and the heartbeat
// receiver on a real UDP socket. Prints {"port"} when ready; on each stdin line "report" it
// collects garbage and prints {"heapUsed","rss","accepted","dropped"}. With the file "floor" it
// is the peer: a bare node:dgram socket that only counts what arrives (the cost of receiving).
import { RelayServer } from "../../src/tunnel/relay/server.ts";
import { SqliteInventoryStore } from "../../src/tunnel/relay/inventory-store.ts";
import { openHeartbeatSocket } from "../../src/roles/fleet.ts";

const [file, nText, secretHex] = process.argv.slice(2);
const n = Number(nText);
const quiet = { debug() {}, info() {}, warn() {} };
if (file === "floor") {
  const dgram = await import("node:dgram");
  const s = dgram.createSocket("udp4");
  let accepted = 0;
  s.on("message", () => void accepted++);
  await new Promise<void>((r) => s.bind(0, "127.0.0.1", () => r()));
  console.log(JSON.stringify({ port: s.address().port }));
  for await (const chunk of Bun.stdin.stream()) {
    for (const _ of new TextDecoder().decode(chunk).split("\n").filter((l) => l === "report")) {
      Bun.gc(true);
      console.log(JSON.stringify({ heapUsed: process.memoryUsage().heapUsed, rss: process.memoryUsage().rss, accepted, dropped: {} }));
    }
  }
  process.exit(0);
}
const store = new SqliteInventoryStore(file!);
const server = new RelayServer({ id: "relay-bench", log: quiet, access: () => [], inventoryStore: store, heartbeat: { secret: new Uint8Array(Buffer.from(secretHex!, "hex")), port: 0 } });
for (let i = 0; i < n; i++) {
  const id = `dev-${String(i).padStart(5, "0")}`;
  server.inventory.connected(id, { serial: "0a", address: "127.0.0.1", agent: "bench" });
  server.inventory.disconnected(id, undefined, "bench");
}
// The socket the relay role opens (src/roles/fleet.ts listenHeartbeats).
const sock = await openHeartbeatSocket({ address: "127.0.0.1", port: 0 });
server.heartbeats!.attach(sock);
console.log(JSON.stringify({ port: sock.local().port }));
const dec = new TextDecoder();
let buf = "";
for await (const chunk of Bun.stdin.stream()) {
  buf += dec.decode(chunk);
  while (buf.includes("\n")) {
    const line = buf.slice(0, buf.indexOf("\n"));
    buf = buf.slice(buf.indexOf("\n") + 1);
    if (line === "report") {
      Bun.gc(true);
      const s = server.heartbeats!.stats();
      console.log(JSON.stringify({ heapUsed: process.memoryUsage().heapUsed, rss: process.memoryUsage().rss, accepted: s.accepted, dropped: s.dropped }));
    }
  }
}
