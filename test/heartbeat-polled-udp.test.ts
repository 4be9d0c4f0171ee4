// The relay's batched heartbeat socket (src/transport/heartbeat/polled-udp.ts): on a fake of its
// system calls (a tick drains what queued, at most maxPerTick; EAGAIN ends a tick, other errors
// are counted; the sender's address comes from the sockaddr_in) and on a real socket on
// 127.0.0.1 (node:dgram datagrams arrive on the timer, a reply goes back, port 0 is resolved).
import { afterEach, describe, expect, test } from "bun:test";
import dgram from "node:dgram";
import { FakeClock } from "../src/clock.ts";
import { E } from "../src/os/libc.ts";
import { PolledUdp, sockaddrIn, type UdpOps } from "../src/transport/heartbeat/polled-udp.ts";
import type { Datagram } from "../src/transport/heartbeat/socket.ts";
import { waitFor } from "./helpers/wait.ts";

class FakeOps implements UdpOps {
  queue: ({ data: Uint8Array; from: [string, number] } | { errno: number })[] = [];
  sent: { data: Uint8Array; addr: Uint8Array }[] = [];
  closed = false;
  last = 0;
  open(): number {
    return 7;
  }
  port(): number {
    return 4443;
  }
  recvfrom(_fd: number, buf: Uint8Array, addr: Uint8Array, addrLen: Uint8Array): number {
    const next = this.queue.shift();
    if (!next) return (this.last = E.EAGAIN), -1;
    if ("errno" in next) return (this.last = next.errno), -1;
    buf.set(next.data);
    addr.set(sockaddrIn(...next.from));
    new DataView(addrLen.buffer, addrLen.byteOffset, 4).setUint32(0, 16, true);
    return next.data.length;
  }
  sendto(_fd: number, data: Uint8Array, addr: Uint8Array): number {
    this.sent.push({ data: data.slice(), addr: addr.slice() });
    return data.length;
  }
  errno(): number {
    return this.last;
  }
  close(): void {
    this.closed = true;
  }
}

const sockets: PolledUdp[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) await s.close();
});

describe("on a fake of its system calls", () => {
  test("a tick hands on every queued datagram with its sender, then stops at EAGAIN", () => {
    const ops = new FakeOps();
    const clock = new FakeClock();
    const s = new PolledUdp("0.0.0.0", 0, { ops, clock, periodMs: 50 });
    sockets.push(s);
    expect(s.local()).toEqual({ address: "0.0.0.0", port: 4443 });
    const got: { text: string; address: string; port: number }[] = [];
    s.onMessage((d: Datagram) => got.push({ text: new TextDecoder().decode(d.data), address: d.address, port: d.port }));
    ops.queue.push({ data: new TextEncoder().encode("one"), from: ["198.51.100.7", 40001] }, { data: new TextEncoder().encode("second"), from: ["10.0.0.2", 5] });
    expect(got).toEqual([]); // nothing before the timer
    clock.advance(50);
    expect(got).toEqual([
      { text: "one", address: "198.51.100.7", port: 40001 },
      { text: "second", address: "10.0.0.2", port: 5 },
    ]);
    expect(s.tick()).toBe(0);
  });

  test("at most maxPerTick per tick; the rest waits for the next; other errors are counted, not thrown", () => {
    const ops = new FakeOps();
    const clock = new FakeClock();
    const s = new PolledUdp("0.0.0.0", 0, { ops, clock, periodMs: 50, maxPerTick: 3 });
    sockets.push(s);
    let n = 0;
    s.onMessage(() => n++);
    for (let i = 0; i < 5; i++) ops.queue.push({ data: new Uint8Array([i]), from: ["10.0.0.1", 1] });
    clock.advance(50);
    expect(n).toBe(3);
    clock.advance(50);
    expect(n).toBe(5);
    ops.queue.push({ errno: E.ENOBUFS }, { data: new Uint8Array([9]), from: ["10.0.0.1", 1] });
    clock.advance(50);
    expect(s.errors).toBe(1);
    clock.advance(50);
    expect(n).toBe(6);
  });

  test("close stops the timer and closes the fd; send goes to the sockaddr asked for", async () => {
    const ops = new FakeOps();
    const clock = new FakeClock();
    const s = new PolledUdp("0.0.0.0", 0, { ops, clock });
    await s.send(new Uint8Array([1, 2]), 53, "192.168.1.1");
    expect(ops.sent[0]!.addr).toEqual(sockaddrIn("192.168.1.1", 53));
    await s.close();
    expect(ops.closed).toBe(true);
    expect(clock.pending).toBe(0);
    expect(() => sockaddrIn("relay.example", 1)).toThrow("not an IPv4 address");
  });
});

describe("on a real socket", () => {
  test("datagrams from node:dgram arrive on the timer with the sender's port; a reply reaches it", async () => {
    const s = new PolledUdp("127.0.0.1", 0, { periodMs: 10 });
    sockets.push(s);
    const port = s.local().port;
    expect(port).toBeGreaterThan(0);
    const got: { text: string; port: number }[] = [];
    s.onMessage((d) => got.push({ text: new TextDecoder().decode(d.data), port: d.port }));
    const c = dgram.createSocket("udp4");
    await new Promise<void>((r) => c.bind(0, "127.0.0.1", () => r()));
    const replies: string[] = [];
    c.on("message", (m) => replies.push(m.toString()));
    try {
      for (let i = 0; i < 20; i++) c.send(`beat ${i}`, port, "127.0.0.1");
      await waitFor(() => got.length === 20, 5_000, () => `20 datagrams, got ${got.length}`);
      expect(got.map((g) => g.text)).toEqual(Array.from({ length: 20 }, (_, i) => `beat ${i}`));
      expect(new Set(got.map((g) => g.port))).toEqual(new Set([c.address().port]));
      await s.send(new TextEncoder().encode("pong"), c.address().port, "127.0.0.1");
      await waitFor(() => replies.length === 1, 5_000, "the reply");
      expect(replies).toEqual(["pong"]);
    } finally {
      c.close();
    }
  });

  test("a port in use is refused with EADDRINUSE", () => {
    const a = new PolledUdp("127.0.0.1", 0);
    sockets.push(a);
    let err: unknown;
    try {
      sockets.push(new PolledUdp("127.0.0.1", a.local().port));
    } catch (e) {
      err = e;
    }
    expect((err as { code?: string }).code).toBe("EADDRINUSE");
  });
});
