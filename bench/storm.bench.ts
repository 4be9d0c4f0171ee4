// `make bench B=storm`: issue 17's storm at full length. For 60 s, strangers from 200 addresses
// of a namespace of our own open 300 silent TCP connections and 150 certificate-less TLS
// handshakes a second against the real relay, while 100 devices (each its own certificate and
// address) are cut 15 s into it and reconnect through the rest by their own reconnect loop.
// Reported: how many are back within 30 s, the percentiles, the relay's CPU, what admission
// turned away, and how many refusal lines were written. The suite runs a shorter storm
// (test/relay-storm.test.ts) with the same lab (test/helpers/storm-lab.ts).
//
//   STORM_MS=60000 STORM_SILENT=300 STORM_TLS=150 make bench B=storm
import { backFigures, runStorm } from "../test/helpers/storm-lab.ts";

const stormMs = Number(process.env.STORM_MS ?? 60_000);
const silentRate = Number(process.env.STORM_SILENT ?? 300);
const tlsRate = Number(process.env.STORM_TLS ?? 150);
const r = await runStorm({ devices: 100, strangers: 200, stormMs, dropAfterMs: 15_000, silentRate, tlsRate, maxOpen: 4_000, backWithinMs: 30_000, log: (l) => console.log(l) });
const f = backFigures(r.back, 30_000);
console.log(`\nstorm: ${stormMs / 1000} s, 200 strangers, ${silentRate} silent + ${tlsRate} TLS connections a second offered`);
console.log(`  strangers' connections: ${r.storm.silent} silent, ${r.storm.handshakes} TLS attempted (${r.storm.tlsDone} completed TLS), ${r.storm.refused} refused or reset, ${r.storm.skipped} skipped at the storm's own bound`);
console.log(`  devices back within 30 s of the cut: ${f.within} of ${r.devices} (${(f.share * 100).toFixed(0)} %); p50 ${f.p50} ms, p95 ${f.p95} ms, slowest ${f.max} ms`);
console.log(`  relay CPU over the storm: ${(r.relayCpu * 100).toFixed(0)} % of one core`);
console.log(`  turned away at open: ${JSON.stringify(r.admission.dropped)}; sources held off at the end: ${r.admission.held_off}`);
console.log(`  refusal lines on stderr: ${r.refusalLogLines} (of which summaries ${r.summaryLines}); audit file lines: ${r.auditLines}`);
if (f.share < 0.95) process.exitCode = 1;
