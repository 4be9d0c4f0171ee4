// The relay-to-relay mesh (issue 16) in one process: two or three RelayServers sharing a
// MemoryDirectory, each with a real mesh listener (mutual TLS 1.3 on 127.0.0.1, certificates of
// a real fleet CA). Masters and devices are real Connections on in-memory links to their relay;
// the hop between the relays is a real TLS socket. A master on relay A reaches a device on relay
// B: bytes both ways, a large transfer compared by hash, a frozen reader that holds every hop to
// one window, packet streams, session ends that cross the hop, a broken link and its redial, and
// strangers on the mesh port who get no byte and are logged.
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import type { Refusal } from "../src/tunnel/relay/refusals.ts";
import { Connection, RemoteError, type Stream } from "../src/transport/mux.ts";
import { linkPair, type MemoryLink } from "../src/transport/link.ts";
import { Flag, FrameType, MAX_CONTROL_MESSAGE, decodeReset, encodeJson } from "../src/transport/frame.ts";
import { Router } from "../src/tunnel/relay/router.ts";
import { ErrorCode, MessageError, Msg, decodeMeshOpen, type SessionInfo } from "../src/transport/messages.ts";
import type { AccessRule } from "../src/config.ts";
import { createCa, issueCertificate, parseCa, parseRevocations, REVOCATIONS_HEADER, type CaMaterial, type RevocationList } from "../src/pki.ts";
import { ClusterUnavailableError, MemoryDirectory, type ClusterDirectory, type RelayNode } from "../src/cluster/directory.ts";
import { meshReason, offerAnswer, startMesh, type Mesh } from "../src/cluster/mesh.ts";
import { makeCert, newCa } from "./helpers/certs.ts";
import { Registry } from "../src/metrics.ts";
import { SessionServer } from "../src/tunnel/onsite-server.ts";
import { MasterSessions, parseForward } from "../src/tunnel/master-forwarder.ts";
import { parseAllowEntry } from "../src/netaddr.ts";
import { holdsFor, waitFor } from "./helpers/wait.ts";

setDefaultTimeout(20_000);

const WINDOW = 64 * 1024;
const quiet = { debug() {}, info() {}, warn() {} };
const noRevocations = parseRevocations(REVOCATIONS_HEADER + "\n");

const fleetCa = (() => {
  const c = createCa({ name: "fleet CA" });
  return parseCa(c.certPem, c.keyPem);
})();
const relayCerts = new Map<string, { certPem: string; keyPem: string; serial: string }>();
function relayCert(id: string, ca: CaMaterial = fleetCa) {
  const key = `${ca === fleetCa ? "" : "x:"}${id}`;
  let c = relayCerts.get(key);
  if (!c) relayCerts.set(key, (c = issueCertificate(ca, { role: "relay", id, hosts: ["127.0.0.1"] })));
  return c;
}

interface Relay {
  id: string;
  server: RelayServer;
  mesh: Mesh;
  node: RelayNode;
  refusals: Refusal[];
  infos: string[];
  rules: AccessRule[];
  /** Links of the devices and masters on this relay, relay side (their queued bytes are this relay's). */
  links: MemoryLink[];
  metrics: Registry;
}

/** One sample of the relay's metrics, as scraped. */
function metric(r: Relay, series: string): number {
  const line = r.metrics.render().split("\n").find((l) => l.startsWith(series + " "));
  return line === undefined ? NaN : Number(line.slice(series.length + 1));
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function relay(dir: MemoryDirectory, id: string, opts: { rules?: AccessRule[]; directory?: (d: ClusterDirectory) => ClusterDirectory; revocations?: () => RevocationList; cert?: { certPem: string; keyPem: string }; locateTimeout?: number } = {}): Relay {
  const refusals: Refusal[] = [];
  const infos: string[] = [];
  const rules = opts.rules ?? [];
  const log = { ...quiet, info: (m: unknown) => infos.push(String(m)), warn: (m: unknown) => infos.push(String(m)) };
  const registry = new Registry();
  const server = new RelayServer({ id, log, access: () => rules, onRefusal: (r) => refusals.push(r), window: WINDOW, keepaliveInterval: 60_000, metrics: registry });
  const node: RelayNode = { id, mesh: "127.0.0.1:0" };
  const view = dir.view(node);
  const cert = opts.cert ?? relayCert(id);
  const mesh = startMesh({
    server,
    directory: opts.directory ? opts.directory(view) : view,
    listen: "127.0.0.1:0",
    tls: { certPem: cert.certPem, keyPem: cert.keyPem, caPem: fleetCa.certPem },
    revocations: opts.revocations ?? (() => noRevocations),
    log,
    agent: "test/1",
    keepaliveInterval: 60_000,
    random: () => 0.1, // redials within 50 ms, 100 ms, ...
    metrics: registry,
    locateTimeout: opts.locateTimeout,
  });
  node.mesh = `127.0.0.1:${mesh.port}`;
  cleanups.push(async () => {
    await mesh.close();
    await server.close();
  });
  return { id, server, mesh, node, refusals, infos, rules, links: [], metrics: registry };
}

interface Peer {
  conn: Connection;
  streams: Stream[];
  closes: { session: string; reason: string; final: boolean }[];
  relayLink: MemoryLink;
}

async function peer(dir: MemoryDirectory, r: Relay, role: "onsite" | "master", id: string, opts: { offer?: (b: Record<string, unknown>) => unknown; onStream?: (s: Stream) => void; setup?: (c: Connection) => void } = {}): Promise<Peer> {
  const [link, relayLink] = linkPair("10.0.0.1", "10.9.9.9");
  const streams: Stream[] = [];
  const closes: Peer["closes"] = [];
  const conn = new Connection(link, { side: "dialer", window: WINDOW, onStream: opts.onStream ?? ((s) => streams.push(s)), maxControlIn: MAX_CONTROL_MESSAGE });
  conn.on(Msg.SESSION_CLOSE, (b) => closes.push(b as Peer["closes"][number]));
  conn.handle(Msg.SESSION_OFFER, (b) => opts.offer?.(b) ?? {});
  opts.setup?.(conn);
  const welcome = new Promise((resolve) => conn.on(Msg.WELCOME, resolve));
  r.server.accept(relayLink, { id, role, serial: `serial-${id}` });
  r.links.push(relayLink);
  conn.send(Msg.HELLO, { versions: [1], role, id, agent: "test/1" });
  await welcome;
  if (role === "onsite") dir.publish({ device: id, node: r.id, since: Date.now() });
  cleanups.push(() => conn.close());
  return { conn, streams, closes, relayLink };
}

/** Two relays, a device on B, a master on A. */
async function pair(opts: { rulesA?: AccessRule[]; rulesB?: AccessRule[]; offer?: (b: Record<string, unknown>) => unknown } = {}) {
  const dir = new MemoryDirectory();
  const a = relay(dir, "relay-a", { rules: opts.rulesA });
  const b = relay(dir, "relay-b", { rules: opts.rulesB });
  const device = await peer(dir, b, "onsite", "site-1", { offer: opts.offer });
  const master = await peer(dir, a, "master", "tech-1");
  return { dir, a, b, device, master };
}

const open = (m: Peer, body: Record<string, unknown>) => m.conn.request(Msg.SESSION_OPEN, body) as Promise<SessionInfo>;
const sha = (chunks: Uint8Array[]) => {
  const h = createHash("sha256");
  for (const c of chunks) h.update(c);
  return h.digest("hex");
};
/** Bytes waiting in a relay's links (towards its devices and masters, and on its mesh links). */
function buffered(r: Relay): number {
  let n = r.links.reduce((sum, l) => sum + l.queued, 0);
  const out = r.mesh.linkTo("relay-b") ?? r.mesh.linkTo("relay-a");
  if (out) n += out.link.queued;
  return n;
}

describe("a master on relay A reaches a device on relay B", () => {
  test("bytes both ways and a large transfer, compared by hash; both relays list the session", async () => {
    const { a, b, device, master } = await pair();
    const info = await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] });
    expect(info).toMatchObject({ master: "tech-1", onsite: "site-1", targets: ["10.0.0.5:80"] });
    expect(a.server.sessionList().map((s) => s.session)).toEqual([info.session]);
    expect(b.server.sessionList()).toMatchObject([{ session: info.session, master: "tech-1", onsite: "site-1" }]);
    // B applied its policy to the original master and says where it came from.
    expect(b.infos.join("\n")).toContain(`session ${info.session}: tech-1 → site-1 from 10.0.0.1 via relay relay-a`);
    expect(a.infos.join("\n")).toContain(`session ${info.session}: tech-1 → site-1 via relay relay-b`);

    const s = master.conn.openStream({ session: info.session, target: "10.0.0.5:80" });
    const up = [randomBytes(1_000_000), randomBytes(3_000_000), randomBytes(777)];
    const down = [randomBytes(2_000_000), randomBytes(12_345)];
    const atDevice: Uint8Array[] = [];
    const atMaster: Uint8Array[] = [];
    let deviceEnd = false;
    let masterEnd = false;
    s.ondata = (c) => atMaster.push(c.slice());
    s.onend = () => (masterEnd = true);
    s.resume();
    const ds = await waitFor(() => device.streams[0], 5_000, "the stream at the device");
    expect(ds.open).toEqual({ session: info.session, target: "10.0.0.5:80", master: "tech-1" });
    ds.ondata = (c) => atDevice.push(c.slice());
    ds.onend = () => (deviceEnd = true);
    ds.accept();
    ds.resume();
    for (const c of down) ds.write(c);
    ds.end();
    for (const c of up) s.write(c);
    s.end();
    await waitFor(() => deviceEnd && masterEnd, 15_000, () => `both ends (device ${atDevice.reduce((n, c) => n + c.length, 0)}, master ${atMaster.reduce((n, c) => n + c.length, 0)})`);
    expect(sha(atDevice)).toBe(sha(up));
    expect(sha(atMaster)).toBe(sha(down));
    await waitFor(() => a.server.stats().streams === 0 && b.server.stats().streams === 0, 5_000, "the stream gone on both relays");
    // The mesh's own figures: one link each way of who dialed, every byte counted (frames included).
    expect(metric(a, 'agent_relay_mesh_links{direction="out"}')).toBe(1);
    expect(metric(b, 'agent_relay_mesh_links{direction="in"}')).toBe(1);
    expect(metric(a, 'agent_relay_mesh_bytes_total{direction="out"}')).toBeGreaterThan(4_000_777);
    expect(metric(b, 'agent_relay_mesh_bytes_total{direction="out"}')).toBeGreaterThan(2_012_345);
    expect(metric(b, 'agent_relay_refusals_total{reason="mesh"}')).toBe(0);
  });

  test("a frozen reader on B holds the master to one window: no hop buffers more", async () => {
    const { a, b, device, master } = await pair();
    const info = await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] });
    const s = master.conn.openStream({ session: info.session, target: "10.0.0.5:80" });
    const data = randomBytes(4 * 1024 * 1024);
    s.write(data);
    s.end();
    const ds = await waitFor(() => device.streams[0], 5_000, "the stream at the device");
    const got: Uint8Array[] = [];
    let done = false;
    ds.ondata = (c) => got.push(c.slice());
    ds.onend = () => (done = true);
    ds.pause();
    ds.accept();
    // The master sends its first window, then nothing while the device does not read.
    await waitFor(() => s.bytesOut >= WINDOW, 5_000, "the first window out");
    await holdsFor(() => s.bytesOut > WINDOW, 300, () => `the master sent ${s.bytesOut} bytes past one window`);
    expect(s.bytesOut).toBe(WINDOW);
    expect(buffered(a)).toBeLessThanOrEqual(WINDOW + 4096);
    expect(buffered(b)).toBeLessThanOrEqual(WINDOW + 4096);
    ds.resume();
    await waitFor(() => done, 15_000, "the whole transfer after the reader resumed");
    expect(sha(got)).toBe(sha([data]));
  });

  test("packet streams: a routed tunnel's packets and a UDP forward's datagrams cross both relays; a mode switch crosses too", async () => {
    const tunnel = { mode: "routed", subnets: ["192.168.1.0/24"], onsite: { iface: "agt-t-1", addresses: ["10.99.0.2/30"], routes: [] } };
    const { device, master, b } = await pair({ offer: () => ({ tunnel }) });
    device.conn.handle(Msg.TUNNEL_MODE, (x) => ({ mode: x.mode, subnets: [], onsite: { iface: "agt-p-1", addresses: [], routes: [], bridge: "br-lan" } }));
    const info = await open(master, { onsite: "site-1", targets: [], udp: ["10.0.0.5:53"], tunnel: { mode: "routed", addressing: { master: "10.99.0.1/30", onsite: "10.99.0.2/30" } } });
    expect(info.tunnel).toMatchObject({ mode: "routed", subnets: ["192.168.1.0/24"], onsite: { iface: "agt-t-1" }, addressing: { master: "10.99.0.1/30" } });
    const t = master.conn.openStream({ session: info.session, packet: "routed" });
    const u = master.conn.openStream({ session: info.session, packet: "udp", target: "10.0.0.5:53" });
    const back: Uint8Array[] = [];
    t.onpacket = (p) => back.push(p.slice());
    const [dt, du] = await waitFor(() => device.streams.length === 2 && device.streams, 5_000, "both packet streams at the device");
    expect(dt!.open).toMatchObject({ session: info.session, packet: "routed", master: "tech-1" });
    expect(du!.open).toMatchObject({ session: info.session, packet: "udp", target: "10.0.0.5:53", master: "tech-1" });
    const atDevice: Uint8Array[] = [];
    const datagrams: Uint8Array[] = [];
    dt!.onpacket = (p) => atDevice.push(p.slice());
    du!.onpacket = (p) => datagrams.push(p.slice());
    dt!.accept();
    du!.accept();
    const packets = [randomBytes(1400), randomBytes(60), randomBytes(1420)];
    for (const p of packets) t.sendPacket(p);
    const dgram = Buffer.concat([Buffer.from([0, 0, 0, 7]), randomBytes(48)]);
    u.sendPacket(dgram);
    const reply = randomBytes(900);
    dt!.sendPacket(reply);
    await waitFor(() => atDevice.length === 3 && datagrams.length === 1 && back.length === 1, 5_000, "packets each way");
    expect(atDevice.map((p) => Buffer.from(p).toString("hex"))).toEqual(packets.map((p) => p.toString("hex")));
    expect(Buffer.from(datagrams[0]!)).toEqual(dgram);
    expect(Buffer.from(back[0]!)).toEqual(reply);
    expect(b.server.sessionList()[0]!.tunnel!.relay!.to_onsite.packets_out).toBe(4);

    // TUNNEL_MODE goes master → A → B → device; the old packet stream is reset on both ends.
    let tunnelReset = "";
    t.onclose = (e) => (tunnelReset = e?.message ?? "closed");
    const switched = (await master.conn.request(Msg.TUNNEL_MODE, { session: info.session, mode: "bridged" })) as { mode: string };
    expect(switched.mode).toBe("bridged");
    await waitFor(() => tunnelReset, 5_000, "the old tunnel stream reset at the master");
    expect(tunnelReset).toContain("switched to bridged");
    expect(b.server.sessionList()[0]!.tunnel!.mode).toBe("bridged");
    expect(u.closed).toBe(false); // the UDP forward's stream stays
  });
});

test("three relays: a master on A reaches devices on B and C at once, and a master on C reaches A's device over C's own link", async () => {
  const dir = new MemoryDirectory();
  const a = relay(dir, "relay-a");
  const b = relay(dir, "relay-b");
  const c = relay(dir, "relay-c");
  const echo = (p: Peer) => {
    // Each device echoes what it reads, prefixed with its id.
    const seen = new Set<Stream>();
    const timer = setInterval(() => {
      for (const s of p.streams) {
        if (seen.has(s)) continue;
        seen.add(s);
        s.ondata = (d) => s.write(Buffer.concat([Buffer.from(`${(s.open.target as string) ?? ""}|`), d]));
        s.onend = () => s.end();
        s.accept();
        s.resume();
      }
    }, 5);
    cleanups.push(() => clearInterval(timer));
  };
  const onB = await peer(dir, b, "onsite", "site-b");
  const onC = await peer(dir, c, "onsite", "site-c");
  const onA = await peer(dir, a, "onsite", "site-a");
  for (const d of [onA, onB, onC]) echo(d);
  const techA = await peer(dir, a, "master", "tech-a");
  const techC = await peer(dir, c, "master", "tech-c");
  const roundTrip = async (m: Peer, onsite: string) => {
    const info = await open(m, { onsite, targets: [`10.0.0.5:${onsite.length}0`] });
    const s = m.conn.openStream({ session: info.session, target: info.targets[0] });
    const got: Uint8Array[] = [];
    s.ondata = (x) => got.push(x.slice());
    s.resume();
    s.write(Buffer.from(`hello ${onsite}`));
    await waitFor(() => Buffer.concat(got).toString().endsWith(`hello ${onsite}`), 5_000, `the echo of ${onsite}`);
    return Buffer.concat(got).toString();
  };
  const [toB, toC, back] = await Promise.all([roundTrip(techA, "site-b"), roundTrip(techA, "site-c"), roundTrip(techC, "site-a")]);
  expect([toB, toC, back]).toEqual(["10.0.0.5:60|hello site-b", "10.0.0.5:60|hello site-c", "10.0.0.5:60|hello site-a"]);
  expect(a.mesh.linkTo("relay-b")).not.toBeNull();
  expect(a.mesh.linkTo("relay-c")).not.toBeNull();
  expect(c.mesh.linkTo("relay-a")).not.toBeNull();
  expect(b.mesh.linkTo("relay-a")).toBeNull(); // B's masters needed nothing: B dialed nobody
  expect(a.mesh.status()).toMatchObject({ out: [{ node: "relay-b", up: true }, { node: "relay-c", up: true }], in: [{ node: "relay-c" }] });
  // A second session to B reuses the link.
  const first = a.mesh.linkTo("relay-b");
  await roundTrip(techA, "site-b");
  expect(a.mesh.linkTo("relay-b")).toBe(first);
});

test("masters opening at once before any link exists share one dial", async () => {
  const { dir, a, b } = await pair();
  const masters = await Promise.all(["tech-2", "tech-3", "tech-4", "tech-5"].map((id) => peer(dir, a, "master", id)));
  const infos = await Promise.all(masters.map((m) => open(m, { onsite: "site-1", targets: ["10.0.0.5:80"] })));
  expect(new Set(infos.map((i) => i.session)).size).toBe(4);
  expect(b.server.sessionList().map((s) => s.master).sort()).toEqual(["tech-2", "tech-3", "tech-4", "tech-5"]);
  expect(b.mesh.status().in).toEqual([{ node: "relay-a", address: expect.any(String) }]);
  expect(b.infos.filter((l) => l.startsWith("mesh: relay relay-a linked in")).length).toBe(1);
});

describe("session ends cross the hop", () => {
  test("the master ends it: the device hears why, final", async () => {
    const { a, b, device, master } = await pair();
    const info = await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] });
    await master.conn.request(Msg.SESSION_END, { session: info.session, reason: "done here" });
    const c = await waitFor(() => device.closes[0], 5_000, "SESSION_CLOSE at the device");
    expect(c).toMatchObject({ session: info.session, final: true });
    expect(c.reason).toContain("ended by tech-1: done here");
    await waitFor(() => a.server.sessionList().length + b.server.sessionList().length === 0, 5_000, "no session left on either relay");
  });

  test("the device goes offline on B: the master on A hears why, not final (it may resume)", async () => {
    const { a, device, master } = await pair();
    const info = await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] });
    device.conn.close();
    const c = await waitFor(() => master.closes[0], 5_000, "SESSION_CLOSE at the master");
    expect(c).toMatchObject({ session: info.session, final: false });
    expect(c.reason).toContain("onsite site-1 went offline");
    expect(a.server.sessionList()).toEqual([]);
  });

  test("a TTL ends it on both ends", async () => {
    const { device, master } = await pair();
    await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"], ttl: 1000 });
    const [m, d] = await waitFor(() => master.closes.length && device.closes.length && [master.closes[0]!, device.closes[0]!], 5_000, "SESSION_CLOSE at both ends");
    expect(m).toMatchObject({ reason: "TTL of 1 s reached", final: true });
    expect(d.reason).toContain("TTL of 1 s reached");
    expect(d.final).toBe(true);
  });

  test("the mesh link breaks: sessions across it end with the reason on both ends, the link is dialled again and the session re-opens", async () => {
    const { a, b, device, master } = await pair();
    const info = await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] });
    const first = a.mesh.linkTo("relay-b")!;
    expect(first).not.toBeNull();
    first.link.destroy(); // the socket dies under the link: no GOAWAY
    const [m, d] = await waitFor(() => master.closes.length && device.closes.length && [master.closes[0]!, device.closes[0]!], 5_000, "SESSION_CLOSE at both ends");
    expect(m).toMatchObject({ session: info.session, final: false });
    expect(m.reason).toMatch(/^mesh link to relay relay-b lost: /);
    expect(d).toMatchObject({ session: info.session, final: false });
    expect(d.reason).toMatch(/^mesh link from relay relay-a lost: /);
    const again = await waitFor(() => a.mesh.linkTo("relay-b") !== first && a.mesh.linkTo("relay-b"), 5_000, "the link dialled again");
    expect(again.closed).toBe(false);
    expect(a.infos.join("\n")).toContain("mesh link to relay relay-b lost");
    // The master resumes with the same id, over the new link.
    const resumed = await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"], session: info.session });
    expect(resumed.session).toBe(info.session);
    expect(b.server.sessionList().map((s) => s.session)).toEqual([info.session]);
  });

  test("a master re-opens its session while the old one still lives on both relays: the old ones close, the new one stands", async () => {
    const { a, b, device, master } = await pair();
    const info = await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] });
    // No SESSION_CLOSE comes back over the mesh to end the new session while it opens.
    for (let i = 0; i < 3; i++) expect((await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"], session: info.session })).session).toBe(info.session);
    expect(a.server.sessionList().map((s) => s.session)).toEqual([info.session]);
    expect(b.server.sessionList().map((s) => s.session)).toEqual([info.session]);
    await holdsFor(() => a.server.sessionList().length !== 1 || b.server.sessionList().length !== 1, 200, "the re-opened session was closed afterwards");
    expect(device.closes.map((c) => c.reason)).toEqual(["re-opened", "re-opened", "re-opened"].map((r) => `ended on relay relay-a: ${r}`));
    const s = master.conn.openStream({ session: info.session, target: "10.0.0.5:80" });
    const ds = await waitFor(() => device.streams[0], 5_000, "a stream in the re-opened session");
    expect(ds.open.session).toBe(info.session);
    s.reset(0, "done");
  });

  test("a relay the directory declares gone: its link is closed and not dialled again", async () => {
    const { dir, a } = await pair();
    const master2 = await peer(dir, a, "master", "tech-2");
    await open(master2, { onsite: "site-1", targets: ["10.0.0.5:80"] });
    const link = a.mesh.linkTo("relay-b")!;
    dir.nodeDown("relay-b");
    await waitFor(() => link.closed, 5_000, "the link closed");
    await holdsFor(() => a.mesh.linkTo("relay-b"), 200, "a link to a relay that is gone");
    expect(master2.closes[0]?.reason).toMatch(/^mesh link to relay relay-b lost: .*left the cluster/);
  });
});

test("a relay whose certificate is revoked while linked: the link closes on reload, its sessions end, it is not let in again", async () => {
  const dir = new MemoryDirectory();
  let revoked = noRevocations;
  const a = relay(dir, "relay-a");
  const b = relay(dir, "relay-b", { revocations: () => revoked });
  await peer(dir, b, "onsite", "site-1");
  const master = await peer(dir, a, "master", "tech-1");
  await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] });
  const serial = relayCert("relay-a").serial;
  revoked = parseRevocations(`${REVOCATIONS_HEADER}\n${serial} relay-a 2026-12-01T00:00:00Z\n`);
  b.mesh.reload();
  const c = await waitFor(() => master.closes[0], 5_000, "SESSION_CLOSE at the master");
  expect(c.reason).toMatch(/^mesh link to relay relay-b lost: .*revoked/);
  expect(b.refusals).toContainEqual(expect.objectContaining({ code: "revoked", presented: "relay-a (relay)" }));
  const again = (await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] }).catch((e) => e)) as RemoteError;
  expect(again.code).toBe(ErrorCode.OFFLINE);
  expect(again.message).toContain("which this relay cannot reach over the mesh");
});

test("NAT_REQUEST crosses the hop: both relays' policies judge it, the device gets the source A saw", async () => {
  const nat: AccessRule[] = [{ masters: ["tech-1"], onsites: ["site-1"], nat: true }];
  const { b, device, master } = await pair({ rulesA: [...nat], rulesB: [...nat] });
  const asked: Record<string, unknown>[] = [];
  device.conn.handle(Msg.NAT_REQUEST, (x) => {
    asked.push(x);
    return { rule: { id: "r1", proto: "tcp", port: 8080 }, created: true };
  });
  const info = await open(master, { onsite: "site-1", targets: ["192.168.1.50:80"] });
  const r = (await master.conn.request(Msg.NAT_REQUEST, { session: info.session, port: 8080, to: "192.168.1.50:80", ttl: "15m", source: "6.6.6.6" })) as { created: boolean };
  expect(r.created).toBe(true);
  expect(asked).toMatchObject([{ session: info.session, port: 8080, to: "192.168.1.50:80", ttl: "15m", source: "10.0.0.1" }]);
  // B without nat = true refuses, whatever A allowed.
  b.rules.splice(0, 1, { masters: ["tech-1"], onsites: ["site-1"] });
  const err = (await master.conn.request(Msg.NAT_REQUEST, { session: info.session, port: 8081, to: "192.168.1.50:80", ttl: "15m" }).catch((e) => e)) as RemoteError;
  expect(err.code).toBe(ErrorCode.FORBIDDEN);
  expect(b.refusals).toMatchObject([{ code: "policy", presented: "tech-1", address: "via relay relay-a" }]);
  expect(asked.length).toBe(1);
});

test("the real master and onsite ends over the mesh: a TCP forward echoes, the link breaks, the master resumes by itself and the forward echoes again", async () => {
  const dir = new MemoryDirectory();
  const a = relay(dir, "relay-a");
  const b = relay(dir, "relay-b");
  const echo = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data: (sock, d) => void sock.write(d) } });
  cleanups.push(() => echo.stop(true));
  const onsite = new SessionServer({ id: "site-1", allow: () => [parseAllowEntry("127.0.0.1/32")], log: quiet, probeTimeout: 0 });
  await peer(dir, b, "onsite", "site-1", { onStream: (s) => onsite.serve(s), setup: (c) => onsite.setup(c) });
  let mconn: Connection | null = null;
  const sessions = new MasterSessions({ log: quiet, relay: () => mconn, relayState: () => "up" });
  cleanups.push(() => sessions.close());
  mconn = (await peer(dir, a, "master", "tech-1", { setup: (c) => sessions.setup(c) })).conn;
  const view = await sessions.connect("site-1", [parseForward(`0:127.0.0.1:${echo.port}`)], null);
  const port = view.forwards[0]!.port;
  const ping = async (text: string) => {
    let got = "";
    const sock = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data: (_s, d) => void (got += Buffer.from(d).toString()) } });
    sock.write(text);
    try {
      await waitFor(() => got === text, 5_000, () => `the echo of ${text} (got ${JSON.stringify(got)})`);
    } finally {
      sock.end();
    }
  };
  await ping("before the break");
  a.mesh.linkTo("relay-b")!.link.destroy();
  await waitFor(() => sessions.list()[0]!.state === "resuming", 5_000, "the master to see the interruption");
  expect(sessions.list()[0]!.reason).toMatch(/^mesh link to relay relay-b lost/);
  expect(metric(a, 'agent_relay_mesh_bytes_total{direction="out"}')).toBeGreaterThan(0); // the gone link's bytes stay counted
  expect(metric(a, 'agent_relay_mesh_dial_failures_total')).toBe(0);
  await waitFor(() => sessions.list()[0]!.state === "active", 10_000, () => `the master to resume by itself (${sessions.list()[0]!.reason})`);
  expect(sessions.list()[0]!.session).toBe(view.session);
  await ping("after the break");
});

test("a relay whose certificate expires while linked: the peer closes the link at the expiry and says so", async () => {
  const dir = new MemoryDirectory();
  const short = makeCert(fleetCa, { role: "relay", id: "relay-a", ips: ["127.0.0.1"], notAfter: new Date(Date.now() + 1500) });
  const a = relay(dir, "relay-a", { cert: short });
  const b = relay(dir, "relay-b");
  await peer(dir, b, "onsite", "site-1");
  const master = await peer(dir, a, "master", "tech-1");
  await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] });
  const c = await waitFor(() => master.closes[0], 5_000, "SESSION_CLOSE at the master");
  expect(c.reason).toMatch(/^mesh link to relay relay-b lost: .*certificate [0-9a-f]+ of relay relay-a expired at /);
  expect(b.refusals).toContainEqual(expect.objectContaining({ code: "certificate", presented: "relay-a (relay)" }));
});

describe("refusals", () => {
  test("B's access policy judges the original master, and logs it", async () => {
    const { b, master } = await pair({ rulesB: [{ masters: ["tech-9"], onsites: ["*"] }] });
    const err = (await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] }).catch((e) => e)) as RemoteError;
    expect(err).toBeInstanceOf(RemoteError);
    expect(err.code).toBe(ErrorCode.FORBIDDEN);
    expect(err.message).toBe("relay relay-b: tech-1 is not allowed to reach site-1 (relay access policy)");
    expect(b.refusals).toMatchObject([{ code: "policy", presented: "tech-1", address: "10.0.0.1 via relay relay-a" }]);
    expect(b.server.sessionList()).toEqual([]);
  });

  test("a device no relay holds: the usual not-found refusal; the directory unreachable: refused with the reason", async () => {
    const dir = new MemoryDirectory();
    let down = false;
    const a = relay(dir, "relay-a", {
      directory: (d) => ({ ...d, self: d.self, nodes: d.nodes, onNodes: d.onNodes, locate: async (id) => (down ? Promise.reject(new ClusterUnavailableError("connection refused")) : d.locate(id)) }),
    });
    const master = await peer(dir, a, "master", "tech-1");
    const missing = (await open(master, { onsite: "site-404", targets: ["10.0.0.5:80"] }).catch((e) => e)) as RemoteError;
    expect(missing.code).toBe(ErrorCode.UNKNOWN_DEVICE);
    down = true;
    const unavailable = (await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] }).catch((e) => e)) as RemoteError;
    expect(unavailable.code).toBe(ErrorCode.OFFLINE);
    expect(unavailable.message).toBe("cannot look for device site-1 on the other relays: the cluster store is unreachable: connection refused; sessions whose two ends this relay holds go on");
  });

  test("a directory that hangs or fails otherwise: refused as retryable, with the reason", async () => {
    const dir = new MemoryDirectory();
    let mode: "hang" | "throw" = "hang";
    const a = relay(dir, "relay-a", {
      locateTimeout: 200,
      directory: (d) => ({ ...d, locate: () => (mode === "hang" ? new Promise<never>(() => {}) : Promise.reject(new Error("presence value for site-1 is not JSON"))) }),
    });
    const master = await peer(dir, a, "master", "tech-1");
    const hung = (await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] }).catch((e) => e)) as RemoteError;
    expect(hung.code).toBe(ErrorCode.OFFLINE);
    expect(hung.message).toBe("cannot look for device site-1 on the other relays: the cluster store is unreachable: no answer within 0.2 s; sessions whose two ends this relay holds go on");
    mode = "throw";
    const failed = (await open(master, { onsite: "site-1", targets: ["10.0.0.5:80"] }).catch((e) => e)) as RemoteError;
    expect(failed.code).toBe(ErrorCode.OFFLINE);
    expect(failed.message).toBe("cannot look for device site-1 on the other relays: the cluster store failed: presence value for site-1 is not JSON; sessions whose two ends this relay holds go on");
  });

  test("a relay whose mesh port does not answer: refused with the relay and the address", async () => {
    const dir = new MemoryDirectory();
    const a = relay(dir, "relay-a");
    dir.view({ id: "relay-z", mesh: "127.0.0.1:1" });
    dir.publish({ device: "site-z", node: "relay-z", since: 1 });
    const master = await peer(dir, a, "master", "tech-1");
    const err = (await open(master, { onsite: "site-z", targets: ["10.0.0.5:80"] }).catch((e) => e)) as RemoteError;
    expect(err.code).toBe(ErrorCode.OFFLINE);
    expect(err.message).toMatch(/^device site-z is on relay relay-z, which this relay cannot reach over the mesh \(127\.0\.0\.1:1\): cannot connect/);
    expect(metric(a, "agent_relay_mesh_dial_failures_total")).toBeGreaterThanOrEqual(1);
    expect(a.infos.filter((l) => l.startsWith("mesh: cannot reach relay relay-z")).length).toBe(1); // said once, however often it redials
  });

  /** A TLS client on the mesh port: the bytes it received, once the relay closed it. */
  async function knock(port: number, cert: { certPem: string; keyPem: string }): Promise<number> {
    let bytes = 0;
    let closed!: () => void;
    const gone = new Promise<void>((r) => (closed = r));
    await Bun.connect({
      hostname: "127.0.0.1",
      port,
      tls: { cert: cert.certPem, key: cert.keyPem, rejectUnauthorized: false },
      socket: {
        handshake(s) {
          s.write(new Uint8Array(12)); // a frame header's worth, as if it spoke the protocol
        },
        data(_s, c) {
          bytes += c.length;
        },
        close: () => closed(),
        error: () => closed(),
        connectError: () => closed(),
      },
    });
    await gone;
    return bytes;
  }

  test("strangers on the mesh port get no byte and are logged: another CA's relay, a device and a master of the fleet", async () => {
    const dir = new MemoryDirectory();
    const b = relay(dir, "relay-b");
    const stranger = newCa("stranger CA");
    const other = makeCert(stranger, { role: "relay", id: "relay-x", ips: ["127.0.0.1"] });
    const device = issueCertificate(fleetCa, { role: "onsite", id: "site-1" });
    const masterCert = issueCertificate(fleetCa, { role: "master", id: "tech-1" });
    expect(await knock(b.mesh.port, other)).toBe(0);
    expect(await knock(b.mesh.port, device)).toBe(0);
    expect(await knock(b.mesh.port, masterCert)).toBe(0);
    await waitFor(() => b.refusals.length === 3, 5_000, "three refusals");
    expect(metric(b, 'agent_relay_refusals_total{reason="mesh"}')).toBe(3);
    expect(b.refusals).toMatchObject([
      { code: "mesh", presented: "relay-x (relay)", reason: "mesh port: certificate was not issued by this fleet's CA" },
      { code: "mesh", presented: "site-1 (onsite)", reason: "mesh port: a onsite certificate (only relay certificates of this fleet may link in)" },
      { code: "mesh", presented: "tech-1 (master)", reason: "mesh port: a master certificate (only relay certificates of this fleet may link in)" },
    ]);
    expect(b.server.stats().sessions).toBe(0);
  });

  test("a relay of the fleet whose HELLO names another relay is refused at the HELLO", async () => {
    const dir = new MemoryDirectory();
    const b = relay(dir, "relay-b");
    const { dialTls } = await import("../src/transport/tls.ts");
    const cert = relayCert("relay-a");
    const link = await dialTls({ host: "127.0.0.1", port: b.mesh.port, tls: { ...cert, caPem: fleetCa.certPem } });
    const conn = new Connection(link, { side: "dialer" });
    conn.send(Msg.HELLO, { versions: [1], role: "relay", id: "relay-c", agent: "" });
    const why = await conn.wait();
    expect(why.message).toBe('HELLO says id "relay-c" but the certificate is for relay-a');
    expect(b.refusals).toMatchObject([{ code: "mesh", presented: "relay-a (relay)", reason: 'mesh port: HELLO says id "relay-c" but the certificate is for relay-a' }]);
  });
});

describe("pure parts", () => {
  test("the Router holds each connection to its own stream limit and numbers a dialed mesh link's streams odd", () => {
    const written: { conn: string; type: number; stream: number; reason?: string }[] = [];
    const fake = (name: string) => ({ name, writeFrame: (type: number, _f: number, stream: number, payload?: Uint8Array) => written.push({ conn: name, type, stream, ...(type === FrameType.RESET && payload ? { reason: decodeReset(payload).reason } : {}) }) }) as unknown as Connection;
    const master = fake("master");
    const link = fake("mesh");
    const session = { id: "s-1a2b3c4d", master: "tech-1", targets: ["10.0.0.5:80"], masterConn: master, onsiteConn: link, streams: 0 };
    const router = new Router({ window: WINDOW, session: (id) => (id === session.id ? session : undefined), refuse: () => {} });
    router.attach(master, { id: "tech-1", role: "master" });
    router.attach(link, { id: "relay-b", role: "onsite" }, 1, 2);
    const syn = (stream: number) => router.route({ type: FrameType.DATA, flags: Flag.SYN, stream, length: 0, payload: encodeJson({ session: session.id, target: "10.0.0.5:80" }) }, master);
    syn(1);
    syn(3);
    syn(5);
    expect(written.filter((w) => w.conn === "mesh").map((w) => w.stream)).toEqual([1, 3]);
    expect(written.filter((w) => w.conn === "master")).toEqual([{ conn: "master", type: FrameType.RESET, stream: 5, reason: "too many streams on one connection (limit 2)" }]);
  });

  test.each([
    ["no master", { onsite: "site-1", targets: ["10.0.0.5:80"], session: "s-1a2b3c4d", address: "a" }, "master: expected a device id"],
    ["no session id (the dialing relay gives it)", { master: "tech-1", onsite: "site-1", targets: ["10.0.0.5:80"], address: "a" }, "session: expected an id such as s-1a2b3c4d"],
    ["no address", { master: "tech-1", onsite: "site-1", targets: ["10.0.0.5:80"], session: "s-1a2b3c4d" }, "address: expected a string, got nothing"],
    ["an address too long", { master: "tech-1", onsite: "site-1", targets: ["10.0.0.5:80"], session: "s-1a2b3c4d", address: "x".repeat(65) }, "address: expected an address of at most 64 characters"],
    ["SESSION_OPEN's own checks", { master: "tech-1", onsite: "site-1", targets: [], session: "s-1a2b3c4d", address: "a" }, "targets: expected 1-64 HOST:PORT strings"],
    ["a TTL out of range", { master: "tech-1", onsite: "site-1", targets: ["10.0.0.5:80"], ttl: 5, session: "s-1a2b3c4d", address: "a" }, "ttl: expected milliseconds between 1 s and 7 days"],
  ])("MESH_OPEN with %s is refused naming the field", (_name, body, message) => {
    let err: Error | null = null;
    try {
      decodeMeshOpen(body);
    } catch (e) {
      err = e as Error;
    }
    expect(err).toBeInstanceOf(MessageError);
    expect(err!.message).toBe(message);
    expect((err as MessageError).type).toBe(Msg.MESH_OPEN);
  });

  test("meshReason rewords a device certificate's refusal and leaves others", () => {
    expect(meshReason("a onsite certificate cannot connect as a device (allowed: relay)")).toBe("a onsite certificate (only relay certificates of this fleet may link in)");
    expect(meshReason("certificate has expired")).toBe("certificate has expired");
  });
  test("offerAnswer keeps what the device answered, not the far relay's counters", () => {
    const info: SessionInfo = {
      session: "s-1a2b3c4d",
      master: "tech-1",
      onsite: "site-1",
      targets: [],
      opened: "",
      expires: null,
      warnings: ["w"],
      tunnel: { mode: "routed", subnets: ["10.0.0.0/24"], onsite: { iface: "x", addresses: [], routes: [] }, addressing: { master: "a", onsite: "b" } },
    };
    expect(offerAnswer(info)).toEqual({ warnings: ["w"], tunnel: { mode: "routed", subnets: ["10.0.0.0/24"], onsite: { iface: "x", addresses: [], routes: [] } } });
    expect(offerAnswer({ ...info, warnings: undefined, tunnel: undefined })).toEqual({});
  });
});
