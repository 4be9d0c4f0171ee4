// `write_stall_timeout` (relay): how long a connection may have bytes queued for a peer that
// takes none of them before the relay closes it (Timing.writeStallTimeout, 20 s, by default;
// never below the connection's keepalive timeout). The key is parsed and bounded like the
// relay's other durations, and RelayServer hands it to every connection it accepts: over an
// in-memory link on a fake clock a frozen reader is closed at the configured time, not before.
import { afterEach, describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { defaults, ignoredForRole, parseToml, resolveConfig, type ConfigSource } from "../src/config.ts";
import { FrameType, GoAwayCode, MAX_CONTROL_MESSAGE, encodeFrame } from "../src/transport/frame.ts";
import { linkPair } from "../src/transport/link.ts";
import { Msg } from "../src/transport/messages.ts";
import { Connection } from "../src/transport/mux.ts";
import { Timing } from "../src/transport/policy.ts";
import { RelayServer } from "../src/tunnel/relay/server.ts";
import { stepper } from "./helpers/fake-time.ts";

const src = (toml: string): ConfigSource => ({ origin: { kind: "file", path: "relay.toml" }, raw: parseToml(toml, "relay.toml") });

describe("the write_stall_timeout key", () => {
  test.each([
    ["", Timing.writeStallTimeout],
    ['write_stall_timeout = "45s"', 45_000],
    ['write_stall_timeout = "1s"', 1_000],
    ['write_stall_timeout = "1h"', 3_600_000],
  ])("%p → %p ms", (toml, ms) => {
    expect(resolveConfig([src(toml)]).write_stall_timeout).toBe(ms);
  });

  test.each([
    ['write_stall_timeout = "500ms"', "write_stall_timeout"],
    ['write_stall_timeout = "2h"', "write_stall_timeout"],
    ["write_stall_timeout = 20", "write_stall_timeout"],
  ])("%p is refused, naming the key", (toml, key) => {
    expect(() => resolveConfig([src(toml)])).toThrow(key);
  });

  test("the default is the transport's policy, and the key does nothing on a device (said so)", () => {
    expect(defaults().write_stall_timeout).toBe(Timing.writeStallTimeout);
    expect(ignoredForRole([src('write_stall_timeout = "30s"')], "onsite")).toEqual([expect.stringContaining("write_stall_timeout has no effect on")]);
    expect(ignoredForRole([src('write_stall_timeout = "30s"')], "relay")).toEqual([]);
  });
});

describe("RelayServer closes a peer that stops reading after write_stall_timeout", () => {
  const quiet = { debug() {}, info() {}, warn() {} };
  const closers: (() => unknown)[] = [];
  afterEach(async () => {
    for (const c of closers.splice(0)) await c();
  });
  const run = stepper(1000);

  /** A device whose reader is frozen, sending PINGs (so the keepalive stays happy) while the relay has things to say. */
  async function frozenDevice(writeStallTimeout: number | undefined) {
    const clock = new FakeClock();
    const r = new RelayServer({ id: "relay-1", log: quiet, access: () => [], clock, helloDeadline: 10_000, keepaliveInterval: Timing.keepaliveInterval, writeStallTimeout });
    closers.push(() => r.close());
    const [link, relayLink] = linkPair("10.0.0.1", "10.9.9.9");
    const dev = new Connection(link, { side: "dialer", maxControlIn: MAX_CONTROL_MESSAGE });
    closers.push(() => dev.close());
    const welcomed = new Promise((resolve) => dev.on(Msg.WELCOME, resolve));
    const conn = r.accept(relayLink, { id: "site-1", role: "onsite", serial: "serial-1" });
    dev.send(Msg.HELLO, { versions: [1], role: "onsite", id: "site-1", agent: "test/1" });
    await welcomed;
    link.pause();
    const ping = encodeFrame(FrameType.PING, 0, 0, undefined, 1);
    const tick = async (ms: number) => {
      for (let t = 0; t < ms; t += 1000) {
        link.write(ping);
        conn.send(Msg.SESSIONS, { pad: "x".repeat(1000) });
        await run(clock, 1000);
      }
    };
    return { conn, tick };
  }

  test.each([
    ["the key at 45 s", 45_000],
    ["no key: the 20 s default", undefined],
  ])("%s", async (_name, configured) => {
    const limit = configured ?? Timing.writeStallTimeout;
    const { conn, tick } = await frozenDevice(configured);
    await tick(limit - 2 * Timing.keepaliveInterval);
    expect(conn.closed).toBe(false);
    await tick(3 * Timing.keepaliveInterval + 2000);
    expect(conn.closed).toBe(true);
    expect(conn.closedWith!.code).toBe(GoAwayCode.KEEPALIVE);
    expect(conn.closedWith!.message).toContain("(write stall timeout)");
  });
});
