// listenTlsProxied (src/transport/tls-proxied.ts) in this process: a real TLS device dials through
// a small shim that plays the load balancer (prepends a PROXY v2 header), with the header in the
// same TCP segment as the ClientHello and in one of its own, both of which balancers do. The
// device is accepted under the header's address; a header-less client is refused.
import { afterAll, expect, test } from "bun:test";
import type { Socket, TCPSocketListener } from "bun";
import { createCa, issueCertificate, parseCa, parseRevocations, REVOCATIONS_HEADER } from "../src/pki.ts";
import { encodeProxyHeader } from "../src/transport/proxy-protocol.ts";
import { dialTls, type TlsMaterial } from "../src/transport/tls.ts";
import { listenTlsProxied, type ProxiedListener } from "../src/transport/tls-proxied.ts";
import { waitFor } from "./helpers/wait.ts";

const fleet = (() => {
  const c = createCa({ name: "fleet CA" });
  return parseCa(c.certPem, c.keyPem);
})();
const relayCert = issueCertificate(fleet, { role: "relay", id: "relay-1", hosts: ["127.0.0.1"] });
const device = issueCertificate(fleet, { role: "onsite", id: "site-1" });
const deviceTls: TlsMaterial = { certPem: device.certPem, keyPem: device.keyPem, caPem: fleet.certPem };
const cleanup: (() => void)[] = [];
afterAll(() => cleanup.forEach((f) => f()));

async function relay() {
  const accepted: { id: string; address: string }[] = [];
  const refused: { address: string; reason: string }[] = [];
  const admitted: string[] = [];
  const l: ProxiedListener = await listenTlsProxied({
    hostname: "127.0.0.1",
    port: 0,
    tls: { certPem: relayCert.certPem, keyPem: relayCert.keyPem, caPem: fleet.certPem },
    trust: () => ({ revocations: parseRevocations(REVOCATIONS_HEADER + "\n"), roles: ["onsite", "master"] }),
    accept: ({ link, verdict }) => {
      accepted.push({ id: verdict.id, address: link.remoteAddress });
      // Application data flows both ways over the accepted link.
      link.setHandlers({ data: (c) => link.write(c), drain() {}, closed() {} });
    },
    refuse: (r) => void refused.push(r),
    admit: (source) => (admitted.push(source), true),
    release: () => {},
  });
  cleanup.push(() => l.stop());
  return { l, accepted, refused, admitted };
}

/** A TCP shim in front of `port` that sends `header` first: with the client's first bytes in one write, or alone. */
function balancer(port: number, header: Uint8Array, split: boolean): TCPSocketListener<{ up?: Socket<unknown>; first: boolean }> {
  const shim = Bun.listen<{ up?: Socket<unknown>; first: boolean }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      async open(s) {
        s.data = { first: true };
        s.pause();
        s.data.up = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data: (_u, d) => void s.write(d), close: () => void s.end() } });
        s.resume();
      },
      async data(s, d) {
        const up = s.data.up!;
        if (!s.data.first) return void up.write(d);
        s.data.first = false;
        if (!split) {
          const both = new Uint8Array(header.length + d.length);
          both.set(header);
          both.set(d, header.length);
          up.write(both);
          return;
        }
        up.write(header);
        await Bun.sleep(50); // shaping, not settling: the ClientHello goes in a later segment
        up.write(d);
      },
      close: (s) => void s.data?.up?.end(),
    },
  });
  cleanup.push(() => shim.stop(true));
  return shim;
}

const header = encodeProxyHeader({ command: "proxy", family: "tcp4", source: { address: "203.0.113.7", port: 51234 }, destination: { address: "127.0.0.1", port: 443 } });

test.each([
  ["in the same segment as the ClientHello", false],
  ["in a segment of its own", true],
])("the header %s: the device is accepted under the client's real address, and data flows", async (_name, split) => {
  const r = await relay();
  const shim = balancer(r.l.port, header, split as boolean);
  const link = await dialTls({ host: "127.0.0.1", port: shim.port, tls: deviceTls, timeout: 5_000 });
  let echoed = "";
  link.setHandlers({ data: (c) => void (echoed += new TextDecoder().decode(c)), drain() {}, closed() {} });
  await waitFor(() => r.accepted.length === 1, 5_000, "the device accepted");
  expect(r.accepted).toEqual([{ id: "site-1", address: "203.0.113.7" }]);
  expect(r.admitted).toEqual(["203.0.113.7"]); // the cap counts the real source, not the balancer
  link.write(new TextEncoder().encode("hello through the balancer"));
  await waitFor(() => echoed === "hello through the balancer", 5_000, "the echo");
  link.destroy();
});

test("a client without the header is refused with the reason, under the balancer's address", async () => {
  const r = await relay();
  const err = await dialTls({ host: "127.0.0.1", port: r.l.port, tls: deviceTls, timeout: 3_000 }).catch((e: Error) => e);
  expect(err).toBeInstanceOf(Error);
  await waitFor(() => r.refused.length === 1, 5_000, "the refusal");
  expect(r.refused[0]!.address).toBe("127.0.0.1");
  expect(r.refused[0]!.reason).toContain("PROXY protocol: no v2 header, got a TLS ClientHello");
  expect(r.accepted).toEqual([]);
});

test("LOCAL (a health check) keeps the balancer's address", async () => {
  const r = await relay();
  const shim = balancer(r.l.port, encodeProxyHeader({ command: "local" }), false);
  const link = await dialTls({ host: "127.0.0.1", port: shim.port, tls: deviceTls, timeout: 5_000 });
  await waitFor(() => r.accepted.length === 1, 5_000, "accepted");
  expect(r.accepted[0]!.address).toBe("127.0.0.1");
  link.destroy();
});
