// Issue 17, item 1, against the real relay process: a storm of strangers (silent TCP
// connections and certificate-less TLS handshakes from 200 addresses of a namespace of our
// own, 450 new connections a second) while 100 legitimate devices, each with its own
// certificate and address, have their connections cut and reconnect through it by their own
// reconnect loop. At least 95 % must be back within 30 s, and the relay's refusal logging stays
// bounded (the first few per source, a summary line for the rest).
//
// This is the suite's short version (the storm runs 5 s before the cut and on until the
// devices are back, at most 30 s more); the full 60 s storm is `make bench B=storm`
// (bench/storm.bench.ts), with the same lab (test/helpers/storm-lab.ts).
import { expect, test } from "bun:test";
import { programsPresent } from "./helpers/proc.ts";
import { backFigures, runStorm } from "./helpers/storm-lab.ts";

const ok = process.getuid?.() === 0 && programsPresent("test/relay-storm.test.ts", ["ip"]);
if (!ok && process.env.CI) throw new Error("test/relay-storm.test.ts needs root (network namespaces); in CI this is a failure, not a skip");

test.skipIf(!ok)("100 devices get back in within 30 s through a storm of 450 strangers' connections a second from 200 addresses", async () => {
  const r = await runStorm({ devices: 100, strangers: 200, stormMs: 35_000, dropAfterMs: 5_000, silentRate: 300, tlsRate: 150, maxOpen: 3_000, backWithinMs: 30_000 });
  const f = backFigures(r.back, 30_000);
  console.log(`storm: ${JSON.stringify(r.storm)}; devices back within 30 s: ${f.within}/${r.devices} (p50 ${f.p50} ms, p95 ${f.p95} ms, max ${f.max} ms); relay CPU ${(r.relayCpu * 100).toFixed(0)} % of a core; dropped ${JSON.stringify(r.admission.dropped)}; refusal lines ${r.refusalLogLines} (summaries ${r.summaryLines}), audit lines ${r.auditLines}`);
  // The storm was one: thousands of connections, and the relay turned strangers away at open.
  expect(r.storm.silent + r.storm.handshakes).toBeGreaterThan(1_000);
  expect(r.admission.dropped.held).toBeGreaterThan(0); // failed handshakes held their sources off
  // The figure the issue asks for.
  expect(f.share).toBeGreaterThanOrEqual(0.95);
  // Logging stayed bounded: per minute at most 200 lines one by one (and a summary per source).
  expect(r.refusalLogLines).toBeLessThanOrEqual(200 + 200);
  expect(r.auditLines).toBeLessThanOrEqual(200 + 200 + 5);
}, 150_000);
