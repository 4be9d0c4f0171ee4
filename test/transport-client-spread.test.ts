// Issue 17, item 3, the device side: after losing a relay whose WELCOME said `spread`, the
// RelayClient's first redial waits a uniformly random time over that window (here pinned by
// random()), and without one (an older relay) it waits the backoff as before. In-memory links,
// a real relay-side Connection, a fake clock (no wall time is asserted).
import { expect, test } from "bun:test";
import { RelayClient } from "../src/transport/client.ts";
import { linkPair, type Link } from "../src/transport/link.ts";
import { Msg } from "../src/transport/messages.ts";
import { Connection } from "../src/transport/mux.ts";
import { FakeClock } from "../src/clock.ts";
import { waitFor } from "./helpers/wait.ts";

async function lostWith(spread: number | undefined): Promise<number> {
  const clock = new FakeClock();
  const relays: Connection[] = [];
  const client = new RelayClient({
    role: "onsite",
    id: "site-1",
    agent: "test",
    describe: "relay:443",
    clock,
    random: () => 0.5,
    dial: async (): Promise<Link> => {
      const [dialer, acceptor] = linkPair("10.0.0.1", "10.0.0.2");
      const conn = new Connection(acceptor, { side: "acceptor", clock });
      conn.on(Msg.HELLO, () => conn.send(Msg.WELCOME, { version: 1, relay: "relay-1", address: "10.0.0.2", keepalive: 15_000, ...(spread !== undefined ? { spread } : {}) }));
      relays.push(conn);
      return dialer;
    },
    setup: () => {},
    log: { debug() {}, info() {}, warn() {} },
  });
  client.start();
  try {
    await waitFor(() => client.state === "up", 5_000, "up", { every: 5 });
    expect(client.welcome?.spread).toBe(spread);
    clock.advance(61_000); // a stable connection
    relays[0]!.close(0, "relay killed");
    await waitFor(() => client.state === "waiting", 5_000, "waiting to redial", { every: 5 });
    return client.nextRetryAt! - clock.now();
  } finally {
    await client.close();
  }
}

test("the first redial after losing the relay is spread over the WELCOME's window", async () => {
  expect(await lostWith(8_000)).toBe(4_000); // random 0.5 of 8 s
});

test("an older relay (no spread): within 250 ms, as before", async () => {
  expect(await lostWith(undefined)).toBe(125); // random 0.5 of 250 ms
});
