// A storm of strangers against a relay (issue 17): from many source addresses, TCP connections
// that never start TLS (they hold slots until the relay's deadline), and TLS handshakes
// without a client certificate (each costs the relay a handshake and ends in a refusal). A
// bounded load loop: at most RATE new connections a second of each kind, at most MAX_OPEN
// sockets at once, for DURATION_MS; then it closes everything and prints its counts as JSON.
//
//   bun test/helpers/storm.ts HOST PORT ADDRESS_PREFIX FIRST COUNT DURATION_MS SILENT_RATE TLS_RATE MAX_OPEN
import net from "node:net";
import tls from "node:tls";

const [host, portText, prefix, firstText, countText, durText, silentText, tlsText, maxText] = process.argv.slice(2);
const port = Number(portText);
const first = Number(firstText);
const count = Number(countText);
const duration = Number(durText);
const silentRate = Number(silentText);
const tlsRate = Number(tlsText);
const maxOpen = Number(maxText);
if (!host || !prefix || [port, first, count, duration, silentRate, tlsRate, maxOpen].some((n) => !Number.isFinite(n) || n < 0)) {
  console.error("usage: storm.ts HOST PORT ADDRESS_PREFIX FIRST COUNT DURATION_MS SILENT_RATE TLS_RATE MAX_OPEN");
  process.exit(2);
}
const open = new Set<net.Socket>();
const stats = { silent: 0, handshakes: 0, connected: 0, tlsDone: 0, refused: 0, skipped: 0 };
let next = 0;
const address = () => `${prefix}${first + (next++ % count)}`;

function silent(): void {
  const s = net.connect({ host, port, localAddress: address() });
  stats.silent++;
  open.add(s);
  s.on("connect", () => void stats.connected++);
  s.on("error", () => void stats.refused++);
  s.on("close", () => open.delete(s));
}

function handshake(): void {
  const s = tls.connect({ host: host!, port, localAddress: address(), rejectUnauthorized: false, minVersion: "TLSv1.3" } as tls.ConnectionOptions);
  stats.handshakes++;
  open.add(s);
  s.on("secureConnect", () => void stats.tlsDone++);
  s.on("error", () => void stats.refused++);
  s.on("close", () => open.delete(s));
  // A stranger that got its handshake done sends a line of junk and leaves.
  s.on("secureConnect", () => s.end("GET / HTTP/1.1\r\n\r\n"));
}

const start = performance.now();
const TICK = 20;
let silentOwed = 0;
let tlsOwed = 0;
const timer = setInterval(() => {
  silentOwed += (silentRate * TICK) / 1000;
  tlsOwed += (tlsRate * TICK) / 1000;
  while (silentOwed >= 1 || tlsOwed >= 1) {
    if (open.size >= maxOpen) {
      stats.skipped += Math.floor(silentOwed) + Math.floor(tlsOwed);
      silentOwed %= 1;
      tlsOwed %= 1;
      break;
    }
    if (silentOwed >= 1) {
      silentOwed--;
      silent();
    }
    if (tlsOwed >= 1) {
      tlsOwed--;
      handshake();
    }
  }
  if (performance.now() - start >= duration) {
    clearInterval(timer);
    for (const s of open) s.destroy();
    process.stdout.write(JSON.stringify({ ...stats, ms: Math.round(performance.now() - start) }) + "\n");
    setTimeout(() => process.exit(0), 200);
  }
}, TICK);
process.on("SIGTERM", () => {
  for (const s of open) s.destroy();
  process.stdout.write(JSON.stringify({ ...stats, ms: Math.round(performance.now() - start), stopped: true }) + "\n");
  process.exit(0);
});
