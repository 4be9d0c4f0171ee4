// RelayClient.redial(): the path changed, so whatever the client is doing (up, waiting out a
// backoff, or in the middle of a dial that may hang on the old path) it dials again now.
// Driven over in-memory links (src/transport/link.ts) with a real relay-side Connection that
// answers HELLO with WELCOME.
import { describe, expect, test } from "bun:test";
import { RelayClient } from "../src/transport/client.ts";
import { linkPair, type Link } from "../src/transport/link.ts";
import { Msg } from "../src/transport/messages.ts";
import { Connection } from "../src/transport/mux.ts";
import { waitFor } from "./helpers/wait.ts";

/** A dial that the test completes (or never completes) by hand. */
function deferredDial() {
  let resolve!: (l: Link) => void;
  const promise = new Promise<Link>((r) => (resolve = r));
  return { promise, resolve };
}

/** The relay's end of a fresh link pair: answers HELLO with WELCOME. */
function relayEnd(seenAs: string, answer = true) {
  const [dialer, acceptor] = linkPair("10.0.0.1", seenAs);
  const conn = new Connection(acceptor, { side: "acceptor" });
  if (answer) conn.on(Msg.HELLO, () => conn.send(Msg.WELCOME, { version: 1, relay: "relay-1", address: seenAs, keepalive: 15_000 }));
  return { dialer, conn };
}

const until = (cond: () => boolean, ms = 2000) => waitFor(cond, ms, "the condition", { every: 5 });

describe("RelayClient: redial and close", () => {
  test("close() does not wait for a dial that hangs", async () => {
    let dials = 0;
    const client = new RelayClient({
      role: "onsite",
      id: "site-1",
      agent: "test",
      describe: "relay:443",
      dial: () => {
        dials++;
        return new Promise<Link>(() => {}); // SYNs into a black hole, forever
      },
      setup: () => {},
      log: { debug() {}, info() {}, warn() {} },
    });
    client.start();
    await until(() => dials === 1);
    await client.close();
    expect(client.state).toBe("closed");
  });

  test("a dial in flight (stuck on the old path) is abandoned and the next dial starts at once", async () => {
    const dials: ReturnType<typeof deferredDial>[] = [];
    const logs: string[] = [];
    const client = new RelayClient({
      role: "onsite",
      id: "site-1",
      agent: "test",
      describe: "relay:443",
      dial: () => {
        const d = deferredDial();
        dials.push(d);
        return d.promise;
      },
      setup: () => {},
      log: { debug: (m) => logs.push(String(m)), info: (m) => logs.push(String(m)), warn: (m) => logs.push(String(m)) },
      random: () => 0.99, // a backoff, if one were taken, would be long
    });
    client.start();
    try {
      await until(() => dials.length === 1);
      expect(client.state).toBe("connecting");
      client.redial("uplink wlan0: eth0 is down");
      await until(() => dials.length === 2);
      const fresh = relayEnd("10.92.2.2");
      dials[1]!.resolve(fresh.dialer);
      await until(() => client.state === "up");
      expect(client.welcome?.address).toBe("10.92.2.2");
      expect(logs.some((l) => l.includes("dial abandoned to redial: uplink wlan0"))).toBe(true);
      // The old dial completing late is closed, not used.
      const late = relayEnd("10.92.1.2");
      const closed = late.conn.wait();
      dials[0]!.resolve(late.dialer);
      await closed;
      expect(client.welcome?.address).toBe("10.92.2.2");
      expect(client.connection).not.toBeNull();
      expect(dials.length).toBe(2);
    } finally {
      await client.close();
    }
  });

  test("a HELLO without WELCOME yet is abandoned too", async () => {
    const ends: ReturnType<typeof relayEnd>[] = [];
    const client = new RelayClient({
      role: "onsite",
      id: "site-1",
      agent: "test",
      describe: "relay:443",
      dial: async () => {
        // The first relay end never answers: the WELCOME is lost on a dying path.
        const e = relayEnd(`10.92.${ends.length + 1}.2`, ends.length > 0);
        ends.push(e);
        return e.dialer;
      },
      setup: () => {},
      log: { debug() {}, info() {}, warn() {} },
      random: () => 0.99,
    });
    client.start();
    try {
      await until(() => ends.length === 1);
      await Bun.sleep(20);
      expect(client.state).toBe("connecting");
      const firstGone = ends[0]!.conn.wait();
      client.redial("uplink wlan0");
      await firstGone;
      await until(() => client.state === "up");
      expect(client.welcome?.address).toBe("10.92.2.2");
    } finally {
      await client.close();
    }
  });

  test("while up: the connection is closed and a new one dialed at once; while waiting: the backoff is cut short", async () => {
    let n = 0;
    let fail = false;
    const client = new RelayClient({
      role: "onsite",
      id: "site-1",
      agent: "test",
      describe: "relay:443",
      dial: async () => {
        n++;
        if (fail) throw new Error("ENETUNREACH");
        return relayEnd(`10.92.${n}.2`).dialer;
      },
      setup: () => {},
      log: { debug() {}, info() {}, warn() {} },
      random: () => 0.99,
    });
    client.start();
    try {
      await until(() => client.state === "up");
      expect(n).toBe(1);
      fail = true;
      client.redial("uplink wlan0");
      // The redial dial fails; the next retry waits out a backoff (random 0.99: long).
      await until(() => client.state === "waiting" && n >= 2);
      await Bun.sleep(50);
      expect(client.state).toBe("waiting");
      const dialsBefore = n;
      fail = false;
      client.redial("uplink eth0");
      await until(() => client.state === "up");
      expect(n).toBe(dialsBefore + 1);
    } finally {
      await client.close();
    }
  });
});

describe("RelayClient: a malformed WELCOME", () => {
  test("fails the dial at once, naming the field, instead of waiting out the HELLO deadline", async () => {
    const logs: string[] = [];
    const client = new RelayClient({
      role: "onsite",
      id: "site-1",
      agent: "test",
      describe: "relay:443",
      dial: async () => {
        const [dialer, acceptor] = linkPair("10.0.0.1", "10.0.0.2");
        const conn = new Connection(acceptor, { side: "acceptor" });
        conn.on(Msg.HELLO, () => conn.send(Msg.WELCOME, { version: 1, relay: "relay-1", address: "10.0.0.1" }));
        return dialer;
      },
      setup: () => {},
      log: { debug: (m) => logs.push(String(m)), info: (m) => logs.push(String(m)), warn: (m) => logs.push(String(m)) },
      random: () => 0.99,
    });
    client.start();
    try {
      // The HELLO deadline is 10 s; the malformed answer is reported well inside it.
      await until(() => client.lastError !== null, 3000);
      expect(client.lastError).toMatch(/WELCOME is malformed: .*keepalive/);
      expect(client.state).not.toBe("up");
    } finally {
      await client.close();
    }
  });
});
