// TcpDuplex's write path (issue 18): the first write of a tick goes straight to the socket,
// the writes that follow it in the same tick are sent together as one write at the tick's end,
// order and backpressure unchanged. A fake socket records every write the duplex makes.
import { describe, expect, test } from "bun:test";
import type { Socket } from "bun";
import { TcpDuplex } from "../src/tunnel/tcp.ts";

class FakeSocket {
  data: unknown = null;
  writes: Uint8Array[] = [];
  /** How many bytes the next writes may take in total (then 0 until raised). */
  room = Infinity;
  ended = false;
  shut = false;
  setNoDelay() {}
  write(b: Uint8Array): number {
    const n = Math.min(b.length, this.room);
    this.room -= n;
    if (n > 0) this.writes.push(Uint8Array.from(b.subarray(0, n)));
    return n;
  }
  pause() {}
  resume() {}
  shutdown() {
    this.shut = true;
  }
  end() {
    this.ended = true;
  }
  terminate() {}
  get bytes(): number[] {
    return this.writes.flatMap((w) => [...w]);
  }
}

const bytes = (from: number, n: number) => Uint8Array.from({ length: n }, (_, i) => (from + i) & 0xff);
const tick = () => new Promise<void>((r) => queueMicrotask(r));

function duplex() {
  const sock = new FakeSocket();
  const d = new TcpDuplex(sock as unknown as Socket<{ duplex: TcpDuplex | null }>);
  let drains = 0;
  d.setHandlers({ data() {}, end() {}, drain: () => void drains++, close() {} });
  return { sock, d, drains: () => drains };
}

describe("TcpDuplex write gathering", () => {
  test("a lone write goes out at once, not at the tick's end", () => {
    const { sock, d } = duplex();
    expect(d.write(bytes(0, 64))).toBe(true);
    expect(sock.writes.map((w) => w.length)).toEqual([64]);
  });

  test("writes after the first in one tick become one write at its end, in order", async () => {
    const { sock, d } = duplex();
    expect(d.write(bytes(0, 100))).toBe(true);
    expect(d.write(bytes(100, 100))).toBe(true);
    expect(d.write(bytes(200, 100))).toBe(true);
    expect(sock.writes.map((w) => w.length)).toEqual([100]);
    await tick();
    expect(sock.writes.map((w) => w.length)).toEqual([100, 200]);
    expect(sock.bytes).toEqual([...bytes(0, 300)]);
    // The next tick starts over: its first write goes straight out again.
    d.write(bytes(44, 10));
    expect(sock.writes.length).toBe(3);
  });

  test("more than the gather buffer in one tick: flushed as it fills, nothing lost or reordered", async () => {
    const { sock, d } = duplex();
    const sizes = [1000, 60_000, 60_000, 60_000, 200_000, 5];
    let at = 0;
    for (const n of sizes) {
      d.write(bytes(at, n));
      at += n;
    }
    await tick();
    expect(sock.bytes.length).toBe(at);
    expect(sock.bytes).toEqual([...bytes(0, at)]);
    expect(sock.writes.length).toBeLessThan(sizes.length);
  });

  test("a socket that takes part of the gathered write: the rest waits for drain, later writes say false", async () => {
    const { sock, d, drains } = duplex();
    d.write(bytes(0, 10));
    d.write(bytes(10, 10));
    d.write(bytes(20, 10));
    sock.room = 5; // of the 20 gathered
    await tick();
    expect(d.write(bytes(30, 10))).toBe(false);
    sock.room = Infinity;
    d.onDrain();
    expect(drains()).toBe(1);
    expect(sock.bytes).toEqual([...bytes(0, 40)]);
  });

  test("end() right after gathered writes sends them before the FIN", () => {
    const { sock, d } = duplex();
    d.write(bytes(0, 10));
    d.write(bytes(10, 10));
    d.end();
    expect(sock.bytes).toEqual([...bytes(0, 20)]);
    expect(sock.shut).toBe(true);
  });

  test("reset() drops what was gathered", async () => {
    const { sock, d } = duplex();
    d.write(bytes(0, 10));
    d.write(bytes(10, 10));
    d.reset(new Error("gone"));
    await tick();
    expect(sock.bytes).toEqual([...bytes(0, 10)]);
  });
});
