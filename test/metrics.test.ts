// src/metrics.ts: the registry and the text exposition renderer, pinned by a golden file and
// checked by Prometheus's own `promtool check metrics`.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { HANDSHAKE_BUCKETS, Registry, formatValue, renderExposition, serveMetrics } from "../src/metrics.ts";

const GOLDEN = join(import.meta.dir, "fixtures", "metrics", "golden.prom");
const CI = process.env.CI === "true";

/** `promtool check metrics` on `text`: its exit code and what it said. */
async function promtool(text: string): Promise<{ code: number; out: string } | null> {
  if (!Bun.which("promtool")) {
    if (CI) throw new Error("promtool is missing (Debian package prometheus; scripts/deps.sh)");
    return null;
  }
  const p = Bun.spawn(["promtool", "check", "metrics"], { stdin: new Blob([text]), stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
  return { code, out: out + err };
}

function sample(): Registry {
  const r = new Registry();
  const refusals = r.counter("agent_relay_refusals_total", "Connections and requests the relay refused, by reason.", { reason: ["tls", "revoked"] });
  refusals.inc({ reason: "revoked" });
  refusals.inc({ reason: "revoked" }, 2);
  refusals.inc({ reason: "a \"free\" text\nthat must not become a series" });
  const bytes = r.counter("agent_relay_bytes_total", "Bytes through the relay's device connections.", { direction: ["in", "out"], role: ["onsite", "master"] });
  bytes.inc({ direction: "in", role: "onsite" }, 1500);
  r.gauge("agent_relay_sessions", "Active sessions.").set(3);
  const h = r.histogram("agent_relay_handshake_seconds", "TLS handshake duration.", [0.01, 0.1, 1]);
  for (const v of [0.005, 0.05, 0.05, 2]) h.observe(v);
  r.collect("agent_relay_connections", "Live device connections by role.", "gauge", () => [{ labels: { role: "onsite" }, value: 2 }, { labels: { role: "master" }, value: 1 }], { role: ["onsite", "master"] });
  r.collect("agent_build_info", 'Build of this agent; help with a backslash \\ and\na newline.', "gauge", () => [{ labels: { version: 'v1 "quoted"' }, value: 1 }], { version: ['v1 "quoted"'] });
  return r;
}

describe("the exposition renderer", () => {
  test("matches the golden file (UPDATE_GOLDEN=1 rewrites it)", async () => {
    const text = sample().render();
    if (process.env.UPDATE_GOLDEN) await Bun.write(GOLDEN, text);
    expect(text).toBe(await Bun.file(GOLDEN).text());
  });

  test("promtool check metrics accepts it", async () => {
    const r = await promtool(sample().render());
    if (!r) return console.warn("skipped: promtool not installed (Debian prometheus)");
    expect(r.out).toBe("");
    expect(r.code).toBe(0);
  });

  test("promtool would catch a broken exposition (the check can fail)", async () => {
    const r = await promtool(renderExposition([{ name: "agent_x_total", help: "x", type: "counter", samples: [{ labels: { a: "1" }, value: 1 }] }]).replace("agent_x_total{", "agent_x_total {{"));
    if (!r) return;
    expect(r.code).not.toBe(0);
  });

  test.each<[number, string]>([
    [0, "0"],
    [1.5, "1.5"],
    [Infinity, "+Inf"],
    [-Infinity, "-Inf"],
    [NaN, "NaN"],
    [1e21, "1e+21"],
  ])("formatValue(%p) = %s", (v, want) => expect(formatValue(v)).toBe(want));
});

describe("the registry keeps series bounded and shapes consistent", () => {
  test("a value outside the declared set is counted as other; declared ones start at 0", () => {
    const r = new Registry();
    const c = r.counter("x_total", "x", { reason: ["a", "b"] });
    for (let i = 0; i < 1000; i++) c.inc({ reason: `device-${i}` });
    const f = r.snapshot()[0]!;
    expect(f.samples).toEqual([
      { labels: { reason: "a" }, value: 0 },
      { labels: { reason: "b" }, value: 0 },
      { labels: { reason: "other" }, value: 1000 },
    ]);
  });
  test("the same name and shape twice is one family; another shape throws", () => {
    const r = new Registry();
    r.counter("x_total", "x", { reason: ["a"] }).inc({ reason: "a" });
    r.counter("x_total", "x", { reason: ["a"] }).inc({ reason: "a" });
    expect(r.snapshot()[0]!.samples[0]!.value).toBe(2);
    expect(() => r.gauge("x_total", "x")).toThrow("registered twice with different shapes");
  });
  test.each<[string, () => void, string]>([
    ["a counter without _total", () => new Registry().counter("x", "x"), "must end in _total"],
    ["a bad name", () => new Registry().gauge("1x", "x"), "is not valid"],
    ["a reserved label", () => new Registry().gauge("x", "x", { le: ["1"] }), 'label name "le"'],
    ["a counter going down", () => new Registry().counter("x_total", "x").inc({}, -1), "can only go up"],
    ["a missing label", () => new Registry().counter("x_total", "x", { reason: ["a"] }).inc({}), "do not match"],
  ])("%s is refused", (_n, f, msg) => expect(f).toThrow(msg));
  test("histogram buckets are cumulative, with +Inf, _sum and _count", () => {
    const r = new Registry();
    const h = r.histogram("d_seconds", "d", HANDSHAKE_BUCKETS);
    h.observe(0.02);
    h.observe(20);
    const s = r.snapshot()[0]!.samples;
    expect(s.find((x) => x.labels.le === "0.025")!.value).toBe(1);
    expect(s.find((x) => x.labels.le === "10")!.value).toBe(1);
    expect(s.find((x) => x.labels.le === "+Inf")!.value).toBe(2);
    expect(s.find((x) => x.suffix === "_count")!.value).toBe(2);
    expect(s.find((x) => x.suffix === "_sum")!.value).toBeCloseTo(20.02);
  });
  test("a collector that throws leaves only its own family out", () => {
    const r = new Registry();
    r.collect("bad", "b", "gauge", () => {
      throw new Error("gone");
    });
    r.gauge("good", "g").set(1);
    expect(r.render()).toContain("good 1\n");
    expect(r.render()).not.toContain("bad");
  });
});

test("serveMetrics answers GET /metrics with the text format, 404 elsewhere (curl)", async () => {
  const r = new Registry();
  const c = r.counter("agent_test_total", "t");
  const srv = serveMetrics("127.0.0.1", 0, r);
  try {
    c.inc();
    const url = `http://127.0.0.1:${srv.port}`;
    const p = Bun.spawn(["curl", "-sS", "-D", "-", `${url}/metrics`], { stdout: "pipe" });
    const out = await new Response(p.stdout).text();
    expect(await p.exited).toBe(0);
    expect(out.toLowerCase()).toContain("content-type: text/plain; version=0.0.4");
    expect(out).toContain("agent_test_total 1\n");
    expect((await fetch(`${url}/`)).status).toBe(404);
    expect((await fetch(`${url}/metrics`, { method: "POST" })).status).toBe(405);
  } finally {
    srv.stop();
  }
});
