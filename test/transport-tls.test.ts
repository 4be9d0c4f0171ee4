// The device's dialer judges the relay: fleet CA, role relay, the name it dialed. A refusal
// says which of these failed (not a generic "connection closed").
import { afterAll, expect, test } from "bun:test";
import { createCa, issueCertificate, parseCa } from "../src/pki.ts";
import { dialTls, DialError, listenTls, type TlsMaterial } from "../src/transport/tls.ts";
import { parseRevocations, REVOCATIONS_HEADER } from "../src/pki.ts";
import { makeCert } from "./helpers/certs.ts";
import { waitFor } from "./helpers/wait.ts";

const fleet = (() => {
  const c = createCa({ name: "fleet CA" });
  return parseCa(c.certPem, c.keyPem);
})();
const stranger = (() => {
  const c = createCa({ name: "stranger CA" });
  return parseCa(c.certPem, c.keyPem);
})();
const device = issueCertificate(fleet, { role: "onsite", id: "site-1" });
const deviceTls: TlsMaterial = { certPem: device.certPem, keyPem: device.keyPem, caPem: fleet.certPem };

const listeners: { stop(force?: boolean): void }[] = [];
afterAll(() => {
  for (const l of listeners) l.stop(true);
});

/** A TLS server presenting `cert` (signed by `ca`); it accepts any client and says nothing. */
function server(cert: { certPem: string; keyPem: string }, caPem: string): number {
  const l = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: cert.certPem, key: cert.keyPem, ca: caPem, requestCert: true, rejectUnauthorized: false } as Bun.TLSOptions,
    socket: { data() {} },
  });
  listeners.push(l);
  return l.port;
}

async function dialError(port: number): Promise<string> {
  try {
    const link = await dialTls({ host: "127.0.0.1", port, tls: deviceTls, timeout: 5_000 });
    link.destroy();
    return "connected";
  } catch (e) {
    expect(e).toBeInstanceOf(DialError);
    return (e as Error).message;
  }
}

test("a relay of the fleet whose certificate names the dialed address is accepted", async () => {
  const relay = issueCertificate(fleet, { role: "relay", id: "relay-1", hosts: ["127.0.0.1"] });
  expect(await dialError(server(relay, fleet.certPem))).toBe("connected");
});

test("a relay certificate for another name is refused, and the error says so", async () => {
  const relay = issueCertificate(fleet, { role: "relay", id: "relay-1", hosts: ["relay.example.net"] });
  expect(await dialError(server(relay, fleet.certPem))).toMatch(/^the relay's certificate was refused \(.*127\.0\.0\.1.*\); is 127\.0\.0\.1 a relay of this fleet/);
});

test("a relay from another CA is refused, and the error says so", async () => {
  const relay = issueCertificate(stranger, { role: "relay", id: "relay-1", hosts: ["127.0.0.1"] });
  expect(await dialError(server(relay, stranger.certPem))).toMatch(/^the relay's certificate was refused \(.+\); is 127\.0\.0\.1 a relay of this fleet, and is the bundle's CA the fleet's\?$/);
});

test("a fleet peer that is not a relay is refused, and the error names its role", async () => {
  // A master certificate that (unlike any the fleet tooling issues) names 127.0.0.1, so the
  // chain and the name are fine and only the role is wrong.
  const notRelay = makeCert(fleet, { role: "master", id: "tech-1", ips: ["127.0.0.1"] });
  expect(await dialError(server(notRelay, fleet.certPem))).toBe("the peer at 127.0.0.1 has a master certificate (tech-1), not a relay's");
});

test("the relay's listener refuses a stranger before any application byte and reports who it was", async () => {
  const relay = issueCertificate(fleet, { role: "relay", id: "relay-1", hosts: ["127.0.0.1"] });
  const refused: { address: string; reason: string; presented: string | null }[] = [];
  const accepted: string[] = [];
  const l = listenTls({
    hostname: "127.0.0.1",
    port: 0,
    tls: { certPem: relay.certPem, keyPem: relay.keyPem, caPem: fleet.certPem },
    trust: () => ({ revocations: parseRevocations(REVOCATIONS_HEADER + "\n"), roles: ["onsite", "master"] }),
    accept: ({ verdict }) => accepted.push(verdict.id),
    refuse: (r) => refused.push(r),
    admit: () => true,
    release: () => {},
  });
  listeners.push(l);
  const intruder = issueCertificate(stranger, { role: "onsite", id: "intruder" });
  const link = await dialTls({ host: "127.0.0.1", port: l.port, tls: { certPem: intruder.certPem, keyPem: intruder.keyPem, caPem: fleet.certPem }, timeout: 5_000 }).catch((e: Error) => e);
  if (!(link instanceof Error)) {
    let got = 0;
    const closed = new Promise<void>((r) => link.setHandlers({ data: (c) => (got += c.length), drain() {}, closed: () => r() }));
    await closed;
    expect(got).toBe(0);
  }
  await waitFor(() => refused.length > 0, 5_000, "the refusal", { every: 10 }).catch(() => {});
  expect(refused).toEqual([{ address: "127.0.0.1", reason: "certificate was not issued by this fleet's CA", presented: "intruder (onsite)" }]);
  expect(accepted).toEqual([]);
  const ok = await dialTls({ host: "127.0.0.1", port: l.port, tls: deviceTls, timeout: 5_000 });
  await waitFor(() => accepted.length > 0, 5_000, "the accepted device", { every: 10 }).catch(() => {});
  expect(accepted).toEqual(["site-1"]);
  ok.destroy();
});
