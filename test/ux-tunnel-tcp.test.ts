// Issue 19 with real sockets: what Bun really says when a listen or a connect fails, and that
// the TCP endpoints turn it into the cause and the fix. 127.0.0.1 only; no root needed (the
// low-port case is table-tested in ux-tunnel.test.ts, since these tests may run as root).
import { afterEach, expect, test } from "bun:test";
import { tcpDialer, tcpListener } from "../src/tunnel/tcp.ts";
import { connectFailure } from "../src/tunnel/onsite-server.ts";
import type { ListeningPort } from "../src/tunnel/duplex.ts";
import { createCa, issueCertificate, parseCa, parseRevocations, REVOCATIONS_HEADER } from "../src/pki.ts";
import { listenTls, type ListenOptions } from "../src/transport/tls.ts";

const open: ListeningPort[] = [];
afterEach(() => {
  for (const l of open.splice(0)) l.close();
});

test("a local port in use: the forward's listener names it, with the fix", () => {
  const first = tcpListener.listen("127.0.0.1", 0, () => {});
  open.push(first);
  let err: Error | null = null;
  try {
    open.push(tcpListener.listen("127.0.0.1", first.port, () => {}));
  } catch (e) {
    err = e as Error;
  }
  expect(err?.message).toBe(`port ${first.port} is in use (by another program; pick another port or stop it; \`ss -ltnp 'sport = :${first.port}'\` shows who)`);
  expect((err as Error & { code?: string }).code).toBe("EADDRINUSE");
});

test("an address this host does not have: named, with where to look", () => {
  // 192.0.2.0/24 is TEST-NET-1: never configured on a host.
  expect(() => open.push(tcpListener.listen("192.0.2.77", 0, () => {}))).toThrow(/^this host has no address 192\.0\.2\.77 \(see `ip -br addr`/);
});

test("a closed port refuses: the dialer's error reads as ssh's 'connect failed: Connection refused'", async () => {
  const l = tcpListener.listen("127.0.0.1", 0, () => {});
  const port = l.port;
  l.close(); // nobody listens there now
  const err = await tcpDialer.dial("127.0.0.1", port).then(
    () => null,
    (e: unknown) => e,
  );
  expect(connectFailure(err)).toBe("connect failed: Connection refused");
});

test("the relay's listen names the cause too: a port in use, an address the host lacks", () => {
  const c = createCa({ name: "fleet CA" });
  const fleet = parseCa(c.certPem, c.keyPem);
  const relay = issueCertificate(fleet, { role: "relay", id: "relay-1", hosts: ["127.0.0.1"] });
  const opts = (hostname: string, port: number): ListenOptions => ({
    hostname,
    port,
    tls: { certPem: relay.certPem, keyPem: relay.keyPem, caPem: fleet.certPem },
    trust: () => ({ revocations: parseRevocations(REVOCATIONS_HEADER + "\n"), roles: ["onsite", "master"] }),
    accept: () => {},
    refuse: () => {},
    admit: () => true,
    release: () => {},
  });
  const busy = tcpListener.listen("127.0.0.1", 0, () => {});
  open.push(busy);
  expect(() => listenTls(opts("127.0.0.1", busy.port)).stop(true)).toThrow(`port ${busy.port} is in use (by another program; pick another port or stop it;`);
  expect(() => listenTls(opts("192.0.2.77", 0)).stop(true)).toThrow(/^this host has no address 192\.0\.2\.77/);
});
