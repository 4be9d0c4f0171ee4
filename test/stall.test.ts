// A peer that stops reading (issue 17 §5). Before, there was no write timeout: a stalled peer
// was closed only at 64 MiB queued, and one that kept sending PINGs while it never read was
// never closed. Now a connection with bytes waiting and none taken for writeStallTimeout is
// closed, and says why.
//
// - judgeWrites / writeStallTimeout: the pure decision, table-tested.
// - Connection on a FakeClock over an in-memory pair: the peer's reader frozen, its PINGs
//   still coming; closed after the timeout, and not before. A slow reader is not closed.
// - The real relay process against a real peer process (socat holding the TLS connection)
//   whose reader (`cat` on the far end of a FIFO) is frozen by SIGSTOP, while the test keeps
//   sending PINGs and requests through it: the relay closes it and logs why.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FakeClock } from "../src/clock.ts";
import { FrameType, GoAwayCode, encodeFrame, encodeJson } from "../src/transport/frame.ts";
import { linkPair } from "../src/transport/link.ts";
import { Msg } from "../src/transport/messages.ts";
import { Connection } from "../src/transport/mux.ts";
import { Timing, judgeWrites, writeStallTimeout } from "../src/transport/policy.ts";
import { parseBundle } from "../src/pki.ts";
import { Fleet } from "./helpers/fleet.ts";
import { programsPresent } from "./helpers/proc.ts";
import { waitFor } from "./helpers/wait.ts";
import { flush, stepper } from "./helpers/fake-time.ts";

describe("judgeWrites: has the peer stopped reading? (pure)", () => {
  const T = 20_000;
  test.each([
    ["queue empty: progress", { flushed: 100, at: 0 }, 0, 100, 30_000, { flushed: 100, at: 30_000 }, null],
    ["bytes taken since the last look: progress", { flushed: 100, at: 0 }, 5000, 101, 30_000, { flushed: 101, at: 30_000 }, null],
    ["nothing taken, under the timeout", { flushed: 100, at: 0 }, 5000, 100, 19_999, { flushed: 100, at: 0 }, null],
    ["nothing taken, at the timeout: stalled", { flushed: 100, at: 0 }, 5000, 100, 20_000, { flushed: 100, at: 0 }, 20_000],
    ["nothing taken, long past: stalled for all of it", { flushed: 100, at: 1000 }, 1, 100, 61_000, { flushed: 100, at: 1000 }, 60_000],
  ] as const)("%s", (_name, prev, queued, flushed, now, progress, stalledFor) => {
    expect(judgeWrites(prev, queued, flushed, now, T)).toEqual({ progress, stalledFor });
  });

  test("the timeout is never shorter than the connection's dead-peer timeout", () => {
    expect(writeStallTimeout(null)).toBe(Timing.writeStallTimeout);
    expect(writeStallTimeout({ timeout: 15_000 })).toBe(Timing.writeStallTimeout);
    expect(writeStallTimeout({ timeout: 180_000 })).toBe(180_000);
    expect(Timing.writeStallTimeout).toBeGreaterThan(Timing.keepaliveTimeout);
  });
});

const run = stepper(500);

describe("a connection whose peer stops reading (fake clock)", () => {
  function setup() {
    const clock = new FakeClock();
    const [relayEnd, peerEnd] = linkPair();
    const warned: string[] = [];
    const conn = new Connection(relayEnd, { side: "acceptor", clock, log: { debug() {}, info() {}, warn: (m: unknown) => void warned.push(String(m)) } });
    conn.startKeepalive();
    const got: Uint8Array[] = [];
    peerEnd.setHandlers({ data: (c) => void got.push(c), drain() {}, closed() {} });
    return { clock, conn, peerEnd, warned, got };
  }

  test("frozen reader, PINGs still coming: closed after the write stall timeout, not before, saying why", async () => {
    const { clock, conn, peerEnd, warned } = setup();
    peerEnd.pause(); // the peer's reader is frozen: what the relay writes stays queued
    const ping = encodeFrame(FrameType.PING, 0, 0, undefined, 1);
    const tick = async (ms: number) => {
      for (let t = 0; t < ms; t += 1000) {
        peerEnd.write(ping); // it still sends: the keepalive never fires
        conn.send(Msg.SESSIONS, { pad: "x".repeat(1000) }); // and the relay has things to say
        await run(clock, 1000);
      }
    };
    await tick(Timing.writeStallTimeout - Timing.keepaliveInterval);
    expect(conn.closed).toBe(false);
    expect(conn.link.queued).toBeGreaterThan(0);
    await tick(2 * Timing.keepaliveInterval + 1000);
    expect(conn.closed).toBe(true);
    expect(conn.closedWith!.code).toBe(GoAwayCode.KEEPALIVE);
    expect(conn.closedWith!.message).toMatch(/^peer is not reading: no write progress for 2\d s with \d+ bytes queued \(write stall timeout\)$/);
    expect(warned.some((w) => w.startsWith("peer is not reading"))).toBe(true);
  });

  test("a slow reader that takes something now and then is not closed", async () => {
    const { clock, conn, peerEnd } = setup();
    peerEnd.pause();
    for (let s = 0; s < 4 * Timing.writeStallTimeout; s += 1000) {
      peerEnd.write(encodeFrame(FrameType.PING, 0, 0, undefined, s));
      conn.send(Msg.SESSIONS, { pad: "x".repeat(1000) });
      // Every 15 s it reads what is there, then freezes again.
      if (s % 15_000 === 0) {
        peerEnd.resume();
        await flush();
        peerEnd.pause();
      }
      await run(clock, 1000);
    }
    expect(conn.closed).toBe(false);
  });

  test("an idle connection (nothing queued) is never a stall", async () => {
    const { clock, conn, peerEnd } = setup();
    for (let s = 0; s < 3 * Timing.writeStallTimeout; s += 2000) {
      peerEnd.write(encodeFrame(FrameType.PING, 0, 0, undefined, s));
      await run(clock, 2000);
    }
    expect(conn.closed).toBe(false);
  });
});

// ---- the real relay, a real peer process with a frozen reader --------------------------------

const haveTools = programsPresent("test/stall.test.ts", ["socat", "cat", "mkfifo"]);

describe.skipIf(!haveTools)("the relay process closes a peer whose reader is frozen by SIGSTOP", () => {
  let fleet: Fleet | undefined;
  const procs: { kill(sig?: string | number): void; exitCode: number | null; pid: number }[] = [];
  const dir = mkdtempSync(join(tmpdir(), "agent-stall-"));
  afterAll(async () => {
    for (const p of procs) {
      try {
        p.kill("SIGCONT");
        p.kill("SIGKILL");
      } catch {}
    }
    await fleet?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a master that sends PINGs and requests but never reads is closed within the stall timeout, and the relay says why", async () => {
    fleet = await Fleet.create();
    const relay = await fleet.startRelay("relay-stall");
    const b = parseBundle(await Bun.file(await fleet.issue("master", "tech-stall")).text(), "tech-stall.bundle");
    for (const [n, t] of [["cert.pem", b.certPem], ["key.pem", b.keyPem], ["ca.pem", b.caPem]] as const) writeFileSync(join(dir, n), t, { mode: 0o600 });
    const fifo = join(dir, "down.fifo");
    const mk = Bun.spawnSync(["mkfifo", fifo]);
    expect(mk.exitCode).toBe(0);
    // The reader: cat drains what the relay sends (socat writes it into the FIFO).
    const reader = Bun.spawn(["cat", fifo], { stdout: "ignore", stderr: "ignore" });
    procs.push(reader);
    // The peer: socat holds the TLS connection; what the test writes to its stdin goes to the
    // relay, what the relay sends goes to the FIFO. A small receive buffer and small reads, so
    // the relay's queue fills soon once the reader stops, and socat keeps forwarding our PINGs.
    const socat = Bun.spawn(
      ["socat", "-b", "512", `STDIN!!OPEN:${fifo},wronly`, `OPENSSL:127.0.0.1:${fleet.relayPort},cert=${join(dir, "cert.pem")},key=${join(dir, "key.pem")},cafile=${join(dir, "ca.pem")},verify=0,rcvbuf=4096`],
      { stdin: "pipe", stdout: "ignore", stderr: "pipe" },
    );
    procs.push(socat);
    let socatErr = "";
    void (async () => {
      for await (const c of socat.stderr) socatErr += new TextDecoder().decode(c);
    })();
    const control = (type: number, body: Record<string, unknown>) => {
      const json = encodeJson(body);
      const p = new Uint8Array(2 + json.length);
      new DataView(p.buffer).setUint16(0, type);
      p.set(json, 2);
      return encodeFrame(FrameType.CONTROL, 0, 0, p);
    };
    socat.stdin.write(control(Msg.HELLO, { versions: [1], role: "master", id: "tech-stall", agent: "stall-test" }));
    await socat.stdin.flush();
    await waitFor(() => relay.log().includes("master tech-stall connected"), 15_000, "the raw master's HELLO", { detail: () => relay.log().slice(-1500) + socatErr });

    reader.kill("SIGSTOP"); // the reader is frozen; socat, and the test's PINGs, go on
    let rid = 1;
    let sending = true;
    const pinger = (async () => {
      // PINGs keep the relay's keepalive content; each one, and each request, makes the relay
      // write (a PING ACK, an error REPLY), which now piles up.
      const burst: Uint8Array[] = [];
      while (sending && socat.exitCode === null) {
        burst.length = 0;
        for (let i = 0; i < 4000; i++) burst.push(encodeFrame(FrameType.PING, 0, 0, undefined, i));
        for (let i = 0; i < 20; i++) burst.push(control(999, { rid: rid++, pad: "p".repeat(200) }));
        try {
          socat.stdin.write(Buffer.concat(burst));
          await socat.stdin.flush();
        } catch {
          break;
        }
        await Bun.sleep(100);
      }
    })();
    try {
      await waitFor(() => /master tech-stall disconnected: peer is not reading: no write progress for \d+ s with \d+ bytes queued \(write stall timeout\)/.test(relay.log()), Timing.writeStallTimeout + 25_000, "the relay to close the stalled master", {
        detail: () => relay.log().slice(-2000) + socatErr,
      });
    } finally {
      sending = false;
      await pinger;
    }
    // Closed for the stall after the timeout, not by the keepalive (the PINGs kept coming)
    // nor at the 64 MiB cap.
    const stalled = Number(/no write progress for (\d+) s/.exec(relay.log())![1]);
    expect(stalled).toBeGreaterThanOrEqual(Timing.writeStallTimeout / 1000);
    expect(relay.log()).not.toMatch(/master tech-stall disconnected: no frame from the peer/);
    expect(relay.log()).not.toMatch(/peer is not reading \(\d+ bytes queued\)/);
    // The relay is still serving: its own control socket answers.
    expect((await fleet.status(relay)).relay).toBeDefined();
    reader.kill("SIGCONT");
  }, 90_000);
});
