// UDP forwards (issue 11): `agent connect ID --forward udp:[BIND:]LPORT:HOST:PORT` through the
// packet channel. Pure parts table-tested (the spec parser, the flow table and its idle sweep,
// the flow header); then real relay / onsite / master processes over real TLS carrying a real
// DNS query to a real dnsmasq on loopback and an echo test from two clients at once; the allow
// list applies as for TCP; bad specs exit 2 naming the problem.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { FlowTable, decodeFlowPacket, encodeFlowPacket, parseUdpForward } from "../src/tunnel/udp.ts";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { waitFor } from "./helpers/wait.ts";

describe("udp:[BIND:]LPORT:HOST:PORT", () => {
  test.each([
    ["udp:5353:192.168.1.1:53", { bind: "127.0.0.1", port: 5353, target: "192.168.1.1:53" }],
    ["udp:0.0.0.0:0:printer.lan:9100", { bind: "0.0.0.0", port: 0, target: "printer.lan:9100" }],
    ["udp:10.0.0.1:161:192.168.1.20:161", { bind: "10.0.0.1", port: 161, target: "192.168.1.20:161" }],
  ])("%s", (text, want) => {
    expect(parseUdpForward(text)).toEqual(want);
  });

  test.each([
    ["udp:53", '1 field after "udp:" where 3 or 4 are expected'],
    ["udp:a:b:c:d:e", "IPv6 addresses are not supported yet"],
    ["udp:[::1]:53:10.0.0.1:53", "IPv6 addresses are not supported yet"],
    ["udp:x.y:53:10.0.0.1:53", 'bind address "x.y" is not an IPv4 address'],
    ["udp:99999:10.0.0.1:53", "local port:"],
    ["udp:53:10.0.0.1:0", "10.0.0.1:0"],
    ["tcp:53:10.0.0.1:53", 'a UDP forward starts with "udp:"'],
  ])("%s is refused: %s", (text, why) => {
    expect(() => parseUdpForward(text)).toThrow(why);
    expect(() => parseUdpForward(text)).toThrow("expected udp:[BIND:]LPORT:HOST:PORT such as udp:5353:192.168.1.1:53");
  });

  test("the flow header: u32 id, then the datagram; a packet shorter than the id is none", () => {
    const p = encodeFlowPacket(0xdeadbeef, new Uint8Array([1, 2, 3]));
    expect([...p]).toEqual([0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
    expect(decodeFlowPacket(p)).toEqual({ flow: 0xdeadbeef, datagram: new Uint8Array([1, 2, 3]) });
    expect(decodeFlowPacket(new Uint8Array(3))).toBeNull();
  });

  test("flows: one id per client, activity keeps them, idle ones go, a full table refuses new ones", () => {
    const t = new FlowTable<string>(1000, 2);
    expect(t.flowOf("a:1", 0, () => "A")).toEqual({ id: 1, value: "A" });
    expect(t.flowOf("b:2", 100, () => "B")).toEqual({ id: 2, value: "B" });
    expect(t.flowOf("a:1", 200, () => "never")).toEqual({ id: 1, value: "A" });
    expect(t.flowOf("c:3", 300, () => "C")).toBeNull(); // full
    expect(t.touch(2, 900)).toBe("B");
    expect(t.sweep(1100).map((f) => f.key)).toEqual([]); // a: 900 ms idle, b: 200 ms
    expect(t.sweep(1200).map((f) => f.key)).toEqual(["a:1"]);
    expect(t.flowOf("c:3", 1300, () => "C")).toEqual({ id: 3, value: "C" });
    expect(t.sweep(5000).map((f) => f.key).sort()).toEqual(["b:2", "c:3"]);
    expect(t.size).toBe(0);
    // The onsite device's table is keyed by the ids the master picked.
    const o = new FlowTable<string>(1000, 10);
    expect(o.flowById(77, 0, (id) => `sock-${id}`)).toBe("sock-77");
    expect(o.flowById(77, 10, () => "never")).toBe("sock-77");
  });
});

/** A DNS query for `name`, type A, recursion desired (RFC 1035 §4.1). */
function dnsQuery(id: number, name: string): Uint8Array {
  const labels = name.split(".").flatMap((l) => [l.length, ...new TextEncoder().encode(l)]);
  return new Uint8Array([id >> 8, id & 255, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, ...labels, 0, 0, 1, 0, 1]);
}

/** The id, rcode and A records of a DNS answer. */
function dnsAnswer(b: Uint8Array): { id: number; rcode: number; a: string[] } {
  const v = new DataView(b.buffer, b.byteOffset, b.length);
  const id = v.getUint16(0);
  const rcode = v.getUint16(2) & 15;
  const an = v.getUint16(6);
  let at = 12;
  while (b[at] !== 0) at += b[at]! + 1; // the question's name
  at += 5;
  const a: string[] = [];
  for (let i = 0; i < an; i++) {
    at += (b[at]! & 0xc0) === 0xc0 ? 2 : (() => { let x = at; while (b[x] !== 0) x += b[x]! + 1; return x + 1 - at; })();
    const type = v.getUint16(at);
    const len = v.getUint16(at + 8);
    if (type === 1 && len === 4) a.push([...b.subarray(at + 10, at + 14)].join("."));
    at += 10 + len;
  }
  return { id, rcode, a };
}

type Sock = import("bun").udp.Socket<"buffer">;

/** A UDP client that collects what comes back. */
async function client(): Promise<{ sock: Sock; got: Uint8Array[] }> {
  const got: Uint8Array[] = [];
  const sock = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0, socket: { data: (_s, buf) => void got.push(new Uint8Array(buf)) } });
  return { sock, got };
}

async function freeUdpPort(): Promise<number> {
  const s = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0 });
  const p = s.port;
  s.close();
  return p;
}

describe("UDP forwards through real relay, onsite and master processes", () => {
  let fleet: Fleet;
  let master: Daemon;
  let dnsmasq: ReturnType<typeof Bun.spawn> | null = null;
  let dnsPort = 0;
  let echo: Sock;
  const socks: Sock[] = [];

  beforeAll(async () => {
    fleet = await Fleet.create();
    dnsPort = await freeUdpPort();
    // dnsmasq on loopback stands in for the customer's DNS server; it answers one name itself.
    dnsmasq = Bun.spawn(
      ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--listen-address=127.0.0.1", "--bind-interfaces", `--port=${dnsPort}`, "--address=/printer.lan/192.168.1.77", `--pid-file=${join(fleet.dir, "dnsmasq.pid")}`],
      { stdout: "ignore", stderr: "pipe" },
    );
    echo = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0, socket: { data: (s, buf, port, addr) => void s.send(buf, port, addr) } });
    await fleet.startRelay();
    const onsite = await fleet.startOnsite("site-1", ["--allow", "127.0.0.1/32"]);
    master = await fleet.startMaster();
    await Promise.all([onsite, master].map((d) => fleet.waitConnected(d)));
  }, 60_000);

  afterAll(async () => {
    for (const s of socks) s.close();
    echo?.close();
    if (dnsmasq) {
      dnsmasq.kill();
      await dnsmasq.exited;
    }
    await fleet?.close();
  });

  async function forward(...targets: string[]): Promise<{ session: string; ports: number[] }> {
    const s = await fleet.json<{ session: string; forwards: { port: number; proto?: string }[] }>(master, ["connect", "site-1", ...targets.flatMap((t) => ["--forward", `udp:127.0.0.1:0:${t}`])]);
    expect(s.forwards.every((f) => f.proto === "udp")).toBe(true);
    return { session: s.session, ports: s.forwards.map((f) => f.port) };
  }

  test("a DNS query to dnsmasq behind the device gets its answer", async () => {
    const { ports } = await forward(`127.0.0.1:${dnsPort}`);
    const c = await client();
    socks.push(c.sock);
    // The first datagram may race the packet stream's opening: ask until answered (bounded).
    await waitFor(() => {
      if (c.got.length === 0) c.sock.send(dnsQuery(0x1234, "printer.lan"), ports[0]!, "127.0.0.1");
      return c.got.length > 0;
    }, 10_000, "a DNS answer through the forward");
    expect(dnsAnswer(c.got[0]!)).toEqual({ id: 0x1234, rcode: 0, a: ["192.168.1.77"] });
  });

  test("echo: two clients at once each get their own datagrams back, whole", async () => {
    const { ports, session } = await forward(`127.0.0.1:${echo.port}`);
    const [a, b] = [await client(), await client()];
    socks.push(a.sock, b.sock);
    const port = ports[0]!;
    await waitFor(() => {
      if (a.got.length === 0) a.sock.send(new Uint8Array([0xff]), port, "127.0.0.1");
      return a.got.length > 0;
    }, 10_000, "the first echo");
    a.got.length = 0;
    const sizes = [1, 100, 512, 1400, 8000, 30000];
    for (const [i, n] of sizes.entries()) {
      a.sock.send(new Uint8Array(n).fill(i + 1), port, "127.0.0.1");
      b.sock.send(new Uint8Array(n).fill(100 + i), port, "127.0.0.1");
    }
    await waitFor(() => a.got.length === sizes.length && b.got.length === sizes.length, 10_000, "every echo back");
    expect(a.got.map((d) => [d.length, d[0]]).sort((x, y) => x[0]! - y[0]!)).toEqual(sizes.map((n, i) => [n, i + 1]));
    expect(b.got.map((d) => [d.length, d[0]]).sort((x, y) => x[0]! - y[0]!)).toEqual(sizes.map((n, i) => [n, 100 + i]));
    const view = (await fleet.json<{ session: string; forwards: { connections: number; active: number; datagrams_out: number }[] }[]>(master, ["sessions"])).find((s) => s.session === session)!;
    expect(view.forwards[0]).toMatchObject({ connections: 2, active: 2 });
    expect(view.forwards[0]!.datagrams_out).toBeGreaterThanOrEqual(2 * sizes.length + 1);
    const text = (await fleet.cli(master, ["sessions"])).stdout;
    expect(text).toContain(`udp:127.0.0.1:${port}→127.0.0.1:${echo.port}`);
  });

  test("a UDP target outside the onsite allow list refuses the session, as for TCP (exit 1)", async () => {
    const r = await fleet.cli(master, ["connect", "site-1", "--forward", "udp:0:10.9.9.9:53"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("UDP target 10.9.9.9:53 is not in the allow list (127.0.0.1/32)");
  });

  test.each([
    ["udp:53", '1 field after "udp:" where 3 or 4 are expected'],
    ["udp:x:127.0.0.1:53", "local port:"],
    ["udp:0:127.0.0.1:99999", "99999"],
    ["udp:1.2.3:0:127.0.0.1:53", 'bind address "1.2.3" is not an IPv4 address'],
  ])("--forward %s exits 2 naming the problem", async (spec, why) => {
    const r = await fleet.cli(master, ["connect", "site-1", "--forward", spec]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(why);
    expect(r.stderr).toContain(`--forward ${JSON.stringify(spec)}`);
  });
});
