// One relay process for bench/cluster-mesh.bench.ts: a RelayServer behind a real TLS listener
// for devices, and its mesh (src/cluster/mesh.ts) on another port, with a directory the parent
// feeds on stdin (one JSON line: {nodes, presence}). Prints {port, mesh} once listening.
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { listenTls } from "../src/transport/tls.ts";
import { parseRevocations, REVOCATIONS_HEADER } from "../src/pki.ts";
import { startMesh } from "../src/cluster/mesh.ts";
import type { ClusterDirectory, RelayNode } from "../src/cluster/directory.ts";

const cfg = JSON.parse(process.argv[2]!) as { id: string; certPem: string; keyPem: string; caPem: string };
const quiet = { debug() {}, info() {}, warn: (m: unknown) => console.error(`${cfg.id}: ${String(m)}`) };
const revocations = parseRevocations(REVOCATIONS_HEADER + "\n");
const server = new RelayServer({ id: cfg.id, log: quiet, access: () => [] });
const tls = { certPem: cfg.certPem, keyPem: cfg.keyPem, caPem: cfg.caPem };
const listener = listenTls({
  hostname: "127.0.0.1",
  port: 0,
  tls,
  trust: () => ({ revocations, roles: ["onsite", "master"] }),
  accept: ({ link, verdict }) => void server.accept(link, verdict),
  refuse: (r) => console.error(`${cfg.id}: refused ${r.presented}: ${r.reason}`),
  admit: () => true,
  release: () => {},
});
const self: RelayNode = { id: cfg.id, mesh: "" };
let nodes: RelayNode[] = [self];
let presence: Record<string, string> = {};
const listeners = new Set<(n: RelayNode[]) => void>();
const directory: ClusterDirectory = {
  self,
  locate: async (device) => nodes.find((n) => n.id === presence[device]) ?? null,
  nodes: () => nodes,
  onNodes: (l) => {
    listeners.add(l);
    return () => listeners.delete(l);
  },
};
const mesh = startMesh({ server, directory, listen: "127.0.0.1:0", tls, revocations: () => revocations, log: quiet });
self.mesh = `127.0.0.1:${mesh.port}`;
console.log(JSON.stringify({ port: listener.port, mesh: self.mesh }));

let pending = "";
for await (const chunk of Bun.stdin.stream()) {
  pending += new TextDecoder().decode(chunk);
  let nl: number;
  while ((nl = pending.indexOf("\n")) >= 0) {
    const line = pending.slice(0, nl);
    pending = pending.slice(nl + 1);
    const msg = JSON.parse(line) as { nodes: RelayNode[]; presence: Record<string, string> };
    nodes = msg.nodes.map((n) => (n.id === self.id ? self : n));
    presence = msg.presence;
    for (const l of listeners) l(nodes);
  }
}
await mesh.close();
await server.close();
listener.stop(true);
process.exit(0);
