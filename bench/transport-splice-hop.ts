// One hop of the raw-splice path (bench/transport-splice.ts): the runtime's ceiling through
// the same two TLS legs as ours. It listens on each LISTEN port and, for every connection,
// dials the CONNECT port paired with it and copies bytes both ways with nothing but
// `socket.write` and pause/resume backpressure: what Bun itself can carry, with no framing,
// no credit, no multiplexing (one TLS connection per TCP connection, as stunnel does).
//
//   bun bench/transport-splice-hop.ts --in tcp|tls --out tcp|tls --map L:C[,L:C...]
//       [--ca FILE --cert FILE --key FILE]        (listening: TLS 1.3, a client certificate required)
//       [--client-cert FILE --client-key FILE]    (dialing: the certificate presented)
//
// Prints "ready" once every port listens.
import type { Socket } from "bun";
import { readFileSync } from "node:fs";

interface End {
  other: Socket<End> | null;
  /** What the other side could not take yet; its drain writes it and resumes this side. */
  pending: Uint8Array | null;
  /** Data that arrived before the outgoing leg was up. */
  early: Uint8Array[];
  closed: boolean;
  /** The other side ended while this one still had `pending`: end after it is written. */
  endAfter: boolean;
}

const args = new Map<string, string>();
for (let i = 2; i < process.argv.length; i += 2) args.set(process.argv[i]!.replace(/^--/, ""), process.argv[i + 1] ?? "");
const inTls = args.get("in") === "tls";
const outTls = args.get("out") === "tls";
const pairs = (args.get("map") ?? "").split(",").filter(Boolean).map((p) => p.split(":").map(Number) as [number, number]);
if (pairs.length === 0 || pairs.some(([l, c]) => !(l! > 0 && c! > 0))) {
  console.error(`--map: want L:C[,L:C...], got ${JSON.stringify(args.get("map"))}`);
  process.exit(2);
}
const file = (name: string) => readFileSync(args.get(name)!, "utf8");
const serverTls = inTls ? { ca: file("ca"), cert: file("cert"), key: file("key") } : null;
const clientTls = outTls ? { ca: file("ca"), cert: file("client-cert"), key: file("client-key") } : null;
const TLS13 = 0x0304;

/** Writes `chunk` to `to`; what does not fit waits for `to`'s drain while `from` is paused. */
function forward(from: Socket<End>, to: Socket<End>, chunk: Uint8Array): void {
  const n = to.write(chunk);
  if (n < chunk.length) {
    to.data.pending = chunk.subarray(Math.max(0, n));
    from.pause();
  }
}

function drained(s: Socket<End>): void {
  const p = s.data.pending;
  if (!p) return;
  const n = s.write(p);
  if (n < p.length) {
    s.data.pending = p.subarray(Math.max(0, n));
    return;
  }
  s.data.pending = null;
  if (s.data.endAfter) s.end();
  else s.data.other?.resume();
}

function closeBoth(s: Socket<End>): void {
  s.data.closed = true;
  const o = s.data.other;
  if (o && !o.data.closed) {
    o.data.closed = true;
    if (o.data.pending) o.data.endAfter = true;
    else o.end();
  }
}

const handlers = {
  data(s: Socket<End>, chunk: Uint8Array) {
    if (s.data.other) forward(s, s.data.other, chunk);
    else s.data.early.push(chunk);
  },
  drain: drained,
  end: closeBoth,
  close: closeBoth,
  error(s: Socket<End>) {
    closeBoth(s);
  },
};

for (const [listenPort, connectPort] of pairs) {
  Bun.listen<End>({
    hostname: "127.0.0.1",
    port: listenPort,
    ...(inTls ? { tls: { ...serverTls!, requestCert: true, rejectUnauthorized: true, minVersion: TLS13 } as Bun.TLSOptions } : {}),
    socket: {
      ...handlers,
      open(inbound) {
        inbound.data = { other: null, pending: null, early: [], closed: false, endAfter: false };
        inbound.setNoDelay(true);
        // Until the outgoing leg is up, what arrives waits in `early` (a TLS socket must not be
        // paused here: its handshake still has to be read).
        void Bun.connect<End>({
          hostname: "127.0.0.1",
          port: connectPort,
          ...(outTls ? { tls: { ...clientTls!, serverName: "127.0.0.1", rejectUnauthorized: true, minVersion: TLS13 } as Bun.TLSOptions } : {}),
          data: { other: inbound, pending: null, early: [], closed: false, endAfter: false },
          socket: {
            ...handlers,
            open(out) {
              out.setNoDelay(true);
              if (outTls) return; // TLS: wait for the handshake
              join(inbound, out);
            },
            handshake(out, ok) {
              if (ok) join(inbound, out);
              else out.end();
            },
            connectError() {
              inbound.end();
            },
          },
        }).catch(() => inbound.end());
      },
    },
  });
}

function join(inbound: Socket<End>, out: Socket<End>): void {
  if (inbound.data.closed) {
    out.end();
    return;
  }
  inbound.data.other = out;
  for (const c of inbound.data.early.splice(0)) forward(inbound, out, c);
  if (!out.data.pending) inbound.resume();
}

// A normal exit on SIGTERM, so `--cpu-prof` writes its profile.
process.on("SIGTERM", () => process.exit(0));
console.log("ready");
