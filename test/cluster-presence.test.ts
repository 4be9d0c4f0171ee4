// Cluster presence (issue 16): the pure rules on a fake clock (node liveness from heartbeats,
// the newer connection wins, bounded decoding of what Redis returns, the dial rotation), then
// RedisDirectory against a real redis-server: heartbeats, locate, a dead relay, a duplicate id,
// revocations, garbage and oversized values, Redis away and back.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { FakeClock } from "../src/clock.ts";
import { ClusterUnavailableError } from "../src/cluster/directory.ts";
import { ClusterLimits, GarbageError, NodeTable, decodeHeartbeat, decodePresence, decodeSerials, mergeRows, newer, onAnnounced } from "../src/cluster/presence.ts";
import { RelayRotation, avoidFirst, dialRound, shuffled } from "../src/cluster/relay-order.ts";
import { BunRedis } from "../src/cluster/redis-client.ts";
import { RedisDirectory, type SharedRow } from "../src/cluster/redis-directory.ts";
import { TestRedis, redisPresent } from "./helpers/redis.ts";
import { waitFor } from "./helpers/wait.ts";
import { redactRedisUrl, resolveConfig } from "../src/config.ts";

const hb = (id: string, extra: Partial<{ mesh: string; boot: number; access: string; bye: boolean }> = {}) => ({ id, mesh: "127.0.0.1:9000", boot: 1, access: "d", ...extra });

describe("[cluster] and relay lists in the config", () => {
  const file = (raw: Record<string, unknown>) => ({ origin: { kind: "file" as const, path: "/etc/agent/agent.toml" }, raw });
  test("[cluster] parses; the password never shows in what is logged", () => {
    const c = resolveConfig([file({ cluster: { redis: "rediss://:s3cret@10.0.0.5:6380", mesh: "10.0.0.1:8444", node: "relay-1" } })]).cluster!;
    expect(c.redis.protocol).toBe("rediss:");
    expect(c.mesh).toEqual({ host: "10.0.0.1", port: 8444 });
    expect(c.node).toBe("relay-1");
    expect(redactRedisUrl(c.redis)).toBe("rediss://:***@10.0.0.5:6380");
    expect(resolveConfig([file({})]).cluster).toBeUndefined();
  });
  test("relay may be a list: relay is its first, relays all; a flag with one relay replaces the list", () => {
    const cfg = resolveConfig([file({ relay: ["r1.example.net:443", "r2.example.net:8443"] })]);
    expect(cfg.relay).toEqual({ host: "r1.example.net", port: 443 });
    expect(cfg.relays).toEqual([{ host: "r1.example.net", port: 443 }, { host: "r2.example.net", port: 8443 }]);
    const flagged = resolveConfig([file({ relay: ["r1.example.net:443", "r2.example.net:8443"] }), { origin: { kind: "flag" }, raw: { relay: "r3.example.net:443" } }]);
    expect(flagged.relays).toEqual([{ host: "r3.example.net", port: 443 }]);
    expect(resolveConfig([file({ relay: "r1.example.net:443" })]).relays).toEqual([{ host: "r1.example.net", port: 443 }]);
  });
});

describe("NodeTable: liveness from heartbeats (fake clock)", () => {
  test("a relay is live while it beats, dead after deadAfter without, back with its next beat", () => {
    const clock = new FakeClock();
    const t = new NodeTable(clock, { id: "a", mesh: "127.0.0.1:1" }, 3_500);
    expect(t.heard(hb("b"))).toBe(true);
    expect(t.heard(hb("b"))).toBe(false); // no change
    expect(t.isLive("b")).toBe(true);
    clock.advance(3_000);
    t.heard(hb("b"));
    clock.advance(3_400);
    expect(t.sweep()).toEqual([]);
    clock.advance(200);
    expect(t.sweep()).toEqual(["b"]);
    expect(t.isLive("b")).toBe(false);
    expect(t.heard(hb("b"))).toBe(true);
    expect(t.nodes().map((n) => n.id)).toEqual(["a", "b"]);
  });

  test("itself is always live; a bye removes at once; a new boot or mesh address is a change", () => {
    const clock = new FakeClock();
    const t = new NodeTable(clock, { id: "a", mesh: "127.0.0.1:1" });
    expect(t.heard(hb("a"))).toBe(false);
    expect(t.isLive("a")).toBe(true);
    t.heard(hb("c"));
    expect(t.heard(hb("c", { boot: 2 }))).toBe(true);
    expect(t.heard(hb("c", { boot: 2, mesh: "127.0.0.1:9001" }))).toBe(true);
    expect(t.get("c")?.mesh).toBe("127.0.0.1:9001");
    expect(t.heard(hb("c", { bye: true }))).toBe(true);
    expect(t.isLive("c")).toBe(false);
  });

  test("paused (Redis away: nobody is heard) declares no death; resume gives a fresh deadline", () => {
    const clock = new FakeClock();
    const t = new NodeTable(clock, { id: "a", mesh: "127.0.0.1:1" }, 3_500);
    t.heard(hb("b"));
    t.pause();
    clock.advance(60_000);
    expect(t.sweep()).toEqual([]);
    t.resume();
    clock.advance(3_000);
    expect(t.sweep()).toEqual([]);
    clock.advance(600);
    expect(t.sweep()).toEqual(["b"]);
  });

  test("relays whose access digest differs are named", () => {
    const t = new NodeTable(new FakeClock(), { id: "a", mesh: "127.0.0.1:1" });
    t.heard(hb("b", { access: "x" }));
    t.heard(hb("c", { access: "d" }));
    expect(t.disagreeing("d")).toEqual(["b"]);
  });
});

describe("the newer connection wins (pure)", () => {
  const e = (node: string, since: number) => ({ device: "site-1", node, since });
  test.each([
    [e("a", 1), e("b", 2), "b"],
    [e("a", 3), e("b", 2), "a"],
    [e("a", 2), e("b", 2), "b"], // a tie: the larger node id, on both relays alike
    [e("b", 2), e("a", 2), "b"],
  ])("newer(%o, %o) is on %s", (x, y, node) => expect(newer(x, y).node).toBe(node));
  test.each([
    [null, e("b", 2), "none"],
    [e("a", 1), e("b", 2), "yield"],
    [e("a", 3), e("b", 2), "keep"],
    [e("a", 1), e("a", 5), "none"],
  ] as const)("holding %o, hearing %o: %s", (mine, theirs, verdict) => expect(onAnnounced(mine, theirs)).toBe(verdict));
});

describe("what Redis returns is checked before it is believed", () => {
  test.each([
    ["not text", 42, "expected text"],
    ["not JSON", "{nope", "not JSON"],
    ["an array", "[1]", "not a JSON object"],
    ["oversized", JSON.stringify({ device: "x".repeat(ClusterLimits.message) }), "more than the 4096 allowed"],
    ["a bad id", JSON.stringify({ device: "Bad Id", node: "a", since: 1 }), "device is not an id"],
    ["a bad time", JSON.stringify({ device: "s", node: "a", since: -1 }), "since is not a time"],
  ])("a presence entry that is %s is refused", (_, v, why) => {
    expect(() => decodePresence(v)).toThrow(GarbageError);
    expect(() => decodePresence(v)).toThrow(why);
  });
  test("good values decode", () => {
    expect(decodePresence(JSON.stringify({ device: "site-1", node: "relay-a", since: 5 }))).toEqual({ device: "site-1", node: "relay-a", since: 5 });
    expect(decodeHeartbeat(JSON.stringify(hb("relay-b")))).toEqual(hb("relay-b"));
    expect(decodeSerials(JSON.stringify({ node: "r", serials: ["ab12"] }))).toEqual({ node: "r", serials: ["ab12"] });
  });
  test.each([
    [{ ...hb("b"), mesh: "nowhere" }, "mesh is not HOST:PORT"],
    [{ ...hb("b"), access: 5 }, "access is not a digest"],
  ])("a heartbeat %o is refused", (v, why) => expect(() => decodeHeartbeat(JSON.stringify(v))).toThrow(why));
  test("a revocation with a serial that is not hex is refused", () => expect(() => decodeSerials(JSON.stringify({ node: "r", serials: ["zz"] }))).toThrow("not a serial"));
});

describe("mergeRows: one row per device over the relays", () => {
  test("online wins, else the latest seen", () => {
    const a = [
      { id: "s1", online: false, last_seen: "2026-01-01T00:00:05Z", relay: "a" },
      { id: "s2", online: false, last_seen: "2026-01-01T00:00:01Z", relay: "a" },
    ];
    const b = [
      { id: "s1", online: true, last_seen: "2026-01-01T00:00:02Z", relay: "b" },
      { id: "s2", online: false, last_seen: "2026-01-01T00:00:03Z", relay: "b" },
      { id: "s0", online: false, last_seen: "2026-01-01T00:00:00Z", relay: "b" },
    ];
    expect(mergeRows([a, b]).map((r) => `${r.id}@${r.relay}`)).toEqual(["s0@b", "s1@b", "s2@b"]);
  });
});

describe("where a device dials: a shuffled rotation (pure)", () => {
  const seq = (...xs: number[]) => {
    let i = 0;
    return () => xs[i++ % xs.length]!;
  };
  test("shuffled is a permutation driven by the random source", () => {
    expect(shuffled([1, 2, 3], seq(0, 0))).toEqual([2, 3, 1]);
    expect(shuffled([1, 2, 3], seq(0.99, 0.99))).toEqual([1, 2, 3]);
    expect(shuffled([1, 2, 3, 4], Math.random).sort()).toEqual([1, 2, 3, 4]);
  });
  test.each([
    ["two relays", [{ host: "r1", port: 443 }, { host: "r2", port: 443 }], {}, ["r1:443", "r2:443"]],
    ["a name with two addresses", [{ host: "relay.example.net", port: 443 }], { "relay.example.net": ["10.0.0.1", "10.0.0.2"] }, ["10.0.0.1:443", "10.0.0.2:443"]],
    ["a name with one address is dialled by name", [{ host: "relay.example.net", port: 443 }], { "relay.example.net": ["10.0.0.1"] }, ["relay.example.net:443"]],
    ["duplicates dropped", [{ host: "r", port: 1 }, { host: "r", port: 1 }, { host: "r", port: 2 }], {}, ["r:1", "r:2"]],
  ])("%s", (_, relays, resolved, expected) => {
    const round = dialRound(relays, new Map(Object.entries(resolved)), seq(0.99));
    expect(round.map((c) => `${c.host}:${c.port}`).sort()).toEqual(expected);
  });
  const c = (host: string, port = 443) => ({ host, port, name: `${host}:${port}` });
  test.each([
    ["the last one first goes to the end", [c("r1"), c("r2"), c("r3")], c("r1"), ["r2", "r3", "r1"]],
    ["the last one elsewhere: unchanged", [c("r2"), c("r1")], c("r1"), ["r2", "r1"]],
    ["nothing dialled yet: unchanged", [c("r1"), c("r2")], null, ["r1", "r2"]],
    ["a single candidate stays", [c("r1")], c("r1"), ["r1"]],
    ["same host, other port: not the same relay", [c("r1", 1), c("r1", 2)], c("r1", 2), ["r1", "r1"]],
  ] as const)("avoidFirst: %s", (_, round, last, hosts) => {
    const out = avoidFirst(round, last);
    expect(out.map((x) => x.host)).toEqual([...hosts]);
    expect(out).toHaveLength(round.length);
  });
  test("a new round does not start with the relay dialled last (the one just lost)", async () => {
    // The shuffle of two takes one random number per round: 0.99 keeps [r1, r2], 0 swaps it
    // to [r2, r1]. So round 1 is r1, r2 and a plain round 2 would start with r2 again.
    const rot = new RelayRotation([{ host: "10.0.0.1", port: 1 }, { host: "10.0.0.2", port: 2 }], async () => [], seq(0.99, 0));
    const got = [];
    for (let i = 0; i < 6; i++) got.push((await rot.next()).port);
    // Never the same relay twice in a row, across round boundaries too.
    for (let i = 1; i < got.length; i++) expect(got[i]).not.toBe(got[i - 1]);
    expect(got.filter((p) => p === 1)).toHaveLength(3);
  });
  test("each dial takes the next; a used-up round is resolved and shuffled again", async () => {
    let resolved = 0;
    const rot = new RelayRotation([{ host: "r1.test", port: 1 }, { host: "r2.test", port: 2 }], async () => (resolved++, []), seq(0.99));
    const got = [];
    for (let i = 0; i < 4; i++) got.push((await rot.next()).port);
    expect(got).toEqual([1, 2, 1, 2]);
    expect(resolved).toBe(4); // two names, two rounds
    expect(rot.several).toBe(true);
  });
});

// ---- against a real redis-server ----------------------------------------------------------

const HAVE = redisPresent("test/cluster-presence.test.ts");

describe.skipIf(!HAVE)("RedisDirectory on a real redis-server", () => {
  let redis: TestRedis;
  const made: RedisDirectory[] = [];
  const timing = { heartbeat: 100, deadAfter: 600, presenceRefresh: 300, snapshot: 100, presenceTtl: 3_000 };

  interface Node {
    dir: RedisDirectory;
    replaced: string[];
    revoked: Set<string>;
    rows: SharedRow[];
    logs: string[];
    link: BunRedis;
  }

  const node = (id: string, opts: { access?: string } = {}): Node => {
    const n: Node = { replaced: [], revoked: new Set(), rows: [], logs: [], link: new BunRedis({ url: redis.url }) } as unknown as Node;
    n.dir = new RedisDirectory({
      redis: n.link,
      self: { id, mesh: `127.0.0.1:${9000 + made.length}` },
      timing,
      log: { info: (m) => n.logs.push(m), warn: (m) => n.logs.push(m) },
      hooks: {
        replaced: (d, why) => {
          n.replaced.push(`${d}: ${why}`);
          n.dir.disconnected(d);
        },
        revoked: (s) => (n.revoked = new Set(s)),
        since: () => null,
        rows: () => n.rows,
        sessions: () => [],
        accessDigest: () => opts.access ?? "same",
      },
    });
    made.push(n.dir);
    n.dir.start();
    return n;
  };

  beforeAll(async () => {
    redis = await TestRedis.create();
  });
  afterAll(async () => {
    await Promise.allSettled(made.map((d) => d.close()));
    await redis?.close();
  });

  test("relays hear each other; a device is located on its relay; a kill (no bye) is noticed within seconds", async () => {
    const a = node("relay-a");
    const b = node("relay-b");
    await waitFor(() => a.dir.nodes().length === 2 && b.dir.nodes().length === 2, 5_000, "both relays seeing two");
    b.dir.connected("site-1", Date.now());
    await waitFor(async () => (await a.dir.locate("site-1"))?.id === "relay-b", 5_000, "site-1 located on relay-b from relay-a");
    expect((await a.dir.locate("site-1"))?.mesh).toBe(b.dir.self.mesh);
    expect(await a.dir.locate("nobody")).toBeNull();
    // kill: the link drops with no bye; relay-a's sweep drops it, so its devices are gone.
    const dead: string[][] = [];
    a.dir.onNodes((ns) => dead.push(ns.map((x) => x.id)));
    b.link.close();
    await waitFor(() => dead.some((ns) => !ns.includes("relay-b")), 5_000, "relay-b declared dead");
    expect(await a.dir.locate("site-1")).toBeNull();
    await a.dir.close();
  });

  test("the same id on two relays: the newer connection wins, the older relay closes its own", async () => {
    const c = node("relay-c");
    const d = node("relay-d");
    await waitFor(() => c.dir.nodes().length >= 2 && d.dir.nodes().some((x) => x.id === "relay-c"), 5_000, "c and d seeing each other");
    const t = Date.now();
    c.dir.connected("site-dup", t);
    await waitFor(async () => (await d.dir.locate("site-dup"))?.id === "relay-c", 5_000, "site-dup on c");
    d.dir.connected("site-dup", t + 10);
    await waitFor(() => c.replaced.length === 1, 5_000, "relay-c closing its older connection");
    expect(c.replaced[0]).toContain("site-dup: replaced: site-dup connected to another relay more recently");
    expect(d.replaced).toEqual([]);
    expect((await c.dir.locate("site-dup"))?.id).toBe("relay-d");
    // An older claim arriving late does not take it back.
    c.dir.connected("site-dup", t + 5);
    await waitFor(() => c.replaced.length === 2, 5_000, "the late older claim yielding at once");
    expect((await d.dir.locate("site-dup"))?.id).toBe("relay-d");
  });

  test("a revocation published by one relay reaches the others", async () => {
    const e = node("relay-e");
    const f = node("relay-f");
    await waitFor(() => f.dir.nodes().some((x) => x.id === "relay-e"), 5_000, "f seeing e");
    await e.dir.publishRevoked(["ab12cd", "not-hex"]);
    await waitFor(() => f.revoked.has("ab12cd"), 2_000, "relay-f hearing the revoked serial");
    expect(f.revoked.has("not-hex")).toBe(false);
    // A relay that starts later reads the shared set.
    const g = node("relay-g");
    await waitFor(() => g.revoked.has("ab12cd"), 5_000, "a later relay reading the set");
    // A relay whose list was loaded before Redis answered publishes it once connected.
    const early = node("relay-early");
    await early.dir.publishRevoked(["ef34"]).catch(() => {}); // may fail: not connected yet
    await waitFor(() => g.revoked.has("ef34"), 5_000, "the early relay's serial reaching relay-g");
  });

  test("the fleet listing: every relay's rows, one per device, each naming its relay; garbage rows refused", async () => {
    const h = node("relay-h");
    const i = node("relay-i");
    h.rows = [{ id: "site-h", online: true, last_seen: "2026-01-01T00:00:00Z" }];
    i.rows = [{ id: "site-i", online: true, last_seen: "2026-01-01T00:00:00Z" }];
    await waitFor(async () => (await h.dir.fleetRows(h.rows)).rows.some((r) => r.id === "site-i"), 5_000, "relay-h listing relay-i's device");
    const { rows } = await h.dir.fleetRows(h.rows);
    expect(rows.find((r) => r.id === "site-i")).toMatchObject({ relay: "relay-i", online: true });
    expect(rows.find((r) => r.id === "site-h")).toMatchObject({ relay: "relay-h" });
    const c = await redis.client();
    try {
      await c.send("HSET", ["agent:inventory:relay-i", "site-bad", "{garbage", "site-big", JSON.stringify({ id: "site-big", online: true, last_seen: "x", pad: "x".repeat(ClusterLimits.row) }), "site-odd", JSON.stringify({ id: "other" })]);
      const before = h.dir.garbage;
      const again = (await h.dir.fleetRows(h.rows)).rows.map((r) => r.id);
      expect(again).toContain("site-i");
      expect(again).not.toContain("site-bad");
      expect(again).not.toContain("site-big");
      expect(again).not.toContain("site-odd");
      expect(h.dir.garbage - before).toBe(3);
      // A garbage presence value: the device is not located, and the refusal is counted.
      await c.send("SET", ["agent:presence:site-x", "\u0000\u0001 not json"]);
      expect(await h.dir.locate("site-x")).toBeNull();
      await c.send("SET", ["agent:presence:site-y", JSON.stringify({ device: "site-y", node: "relay-i", since: 1, pad: "x".repeat(5000) })]);
      expect(await h.dir.locate("site-y")).toBeNull();
      expect(h.dir.garbage - before).toBe(5);
      expect(h.logs.join("\n")).toContain("refused a presence entry from Redis");
    } finally {
      c.close();
    }
  });

  test("different [[access]] rules are said", async () => {
    const j = node("relay-j", { access: "other" });
    const k = node("relay-k");
    await waitFor(() => k.logs.some((l) => l.includes("relay relay-j has different [[access]] rules")), 5_000, "relay-k warning about relay-j's rules");
    expect((k.dir.status().access_differs as string[])).toContain("relay-j");
    void j;
  });

  test("Redis away: locate refuses with the reason, nothing throws elsewhere; back: presence catches up", async () => {
    const m = node("relay-m");
    const n = node("relay-n");
    await waitFor(() => m.dir.nodes().some((x) => x.id === "relay-n"), 5_000, "m seeing n");
    n.dir.connected("site-n", Date.now());
    await waitFor(async () => (await m.dir.locate("site-n"))?.id === "relay-n", 5_000, "site-n located");
    await redis.kill();
    await waitFor(() => !m.dir.available, 5_000, "relay-m noticing Redis gone");
    const err = await m.dir.locate("site-n").catch((e) => e);
    expect(err).toBeInstanceOf(ClusterUnavailableError);
    expect((err as Error).message).toMatch(/^the cluster store is unreachable: 127\.0\.0\.1:\d+: /);
    // While away: a connect is held locally, a disconnect too; nothing throws.
    n.dir.connected("site-n2", Date.now());
    expect((await m.dir.fleetRows([])).partial).not.toBeNull();
    // Nobody is declared dead while nobody can be heard.
    expect(m.dir.nodes().some((x) => x.id === "relay-n")).toBe(true);
    await redis.start(); // empty: every key is gone
    await waitFor(async () => m.dir.available && (await m.dir.locate("site-n2").catch(() => null))?.id === "relay-n", 15_000, "site-n2 published once Redis is back");
    expect((await m.dir.locate("site-n"))?.id).toBe("relay-n");
  }, 30_000);
});

describe.skipIf(!HAVE)("Redis with a password and TLS (the production set-up)", () => {
  let redis: TestRedis;
  beforeAll(async () => {
    redis = await TestRedis.create({ password: "s3cret-pass", tls: true });
  });
  afterAll(() => redis?.close());

  test("rediss:// with the password and the CA: two relays hear each other and locate a device", async () => {
    const mk = (id: string, url: string, ca: string | undefined) => {
      const d = new RedisDirectory({
        redis: new BunRedis({ url, ca }),
        self: { id, mesh: "127.0.0.1:9999" },
        timing: { heartbeat: 100, deadAfter: 600 },
        log: { info: () => {}, warn: () => {} },
        hooks: { replaced: () => {}, revoked: () => {}, since: () => null, rows: () => [], sessions: () => [], accessDigest: () => "x" },
      });
      d.start();
      return d;
    };
    const a = mk("relay-a", redis.url, redis.ca!);
    const b = mk("relay-b", redis.url, redis.ca!);
    // A wrong password, and TLS without the CA: never up, and locate says the store is unreachable.
    const wrong = mk("relay-w", redis.url.replace("s3cret-pass", "wrong"), redis.ca!);
    const untrusted = mk("relay-u", redis.url, undefined);
    try {
      await waitFor(() => a.nodes().length === 2 && b.nodes().length === 2, 5_000, "both relays over TLS seeing two");
      b.connected("site-tls", Date.now());
      await waitFor(async () => (await a.locate("site-tls"))?.id === "relay-b", 5_000, "site-tls located over TLS");
      expect(a.nodes().map((n) => n.id)).not.toContain("relay-w");
      for (const d of [wrong, untrusted]) {
        expect(d.available).toBe(false);
        expect(await d.locate("site-tls").catch((e) => e)).toBeInstanceOf(ClusterUnavailableError);
      }
    } finally {
      await Promise.all([a, b, wrong, untrusted].map((d) => d.close()));
    }
  });
});
