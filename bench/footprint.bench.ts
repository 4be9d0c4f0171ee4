// Footprint: the idle RSS of each role (VmRSS once it has idled IDLE_MS, connected: the
// onsite device and the master online at the relay) next to the runtime's floor, a bare
// Bun.listen process, and that floor with node:crypto loaded (every role needs it for TLS
// identities and HMACs). Then the same fleet under Bun's smaller-heap option (--smol,
// passed as BUN_OPTIONS). Issue 18's goal: an idle onsite daemon <= 40 MB.
//
// Run:   make bench B=footprint   (or: node_modules/.bin/bun bench/footprint.bench.ts)
// Environment: FOOTPRINT_IDLE_MS=15000, FOOTPRINT_VARIANTS=default,smol
import { writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatTable } from "../src/table.ts";
import { BUN } from "../test/helpers/cli.ts";
import { rssKiB, spawnChild } from "../test/helpers/proc.ts";
import { startFleet } from "./lib/ours.ts";

const IDLE_MS = Math.max(1000, Number(process.env.FOOTPRINT_IDLE_MS ?? 15_000) || 15_000);
const variants = (process.env.FOOTPRINT_VARIANTS ?? "default,smol").split(",");
const OPTIONS: Record<string, string> = { default: "", smol: "--smol" };
const mib = (kib: number) => (kib / 1024).toFixed(1);

const dir = mkdtempSync(join(tmpdir(), "agent-bench-footprint-"));
const floorScript = join(dir, "floor.ts");
writeFileSync(floorScript, 'Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });\nsetInterval(() => {}, 60_000);\nconsole.log("ready");\n');
const cryptoScript = join(dir, "floor-crypto.ts");
writeFileSync(cryptoScript, 'import "node:crypto";\nBun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });\nsetInterval(() => {}, 60_000);\nconsole.log("ready");\n');

const rows: string[][] = [];
let failed = false;
try {
  for (const v of variants) {
    if (!(v in OPTIONS)) throw new Error(`FOOTPRINT_VARIANTS: unknown ${JSON.stringify(v)}; have ${Object.keys(OPTIONS).join(", ")}`);
    const saved = process.env.BUN_OPTIONS;
    process.env.BUN_OPTIONS = OPTIONS[v];
    try {
      const floors = [["bare Bun.listen", floorScript], ["Bun.listen + node:crypto", cryptoScript]].map(([name, f]) => ({ name: name!, c: spawnChild(name!, [BUN, f!]) }));
      const fleet = await startFleet();
      try {
        await Bun.sleep(IDLE_MS);
        const floorKiB = rssKiB(floors[0]!.c.pid);
        const line = (what: string, kib: number) => rows.push([v, what, mib(kib), (kib / floorKiB).toFixed(2) + "x", kib <= 40 * 1024 ? "yes" : "no"]);
        for (const f of floors) line(`floor: ${f.name}`, rssKiB(f.c.pid));
        line("onsite (connected, idle)", rssKiB(fleet.onsite.pid));
        line("master (connected, idle)", rssKiB(fleet.master.pid));
        line("relay (2 devices, idle)", rssKiB(fleet.relay.pid));
      } finally {
        await fleet.stop();
        for (const f of floors) await f.c.stop();
      }
    } finally {
      if (saved === undefined) delete process.env.BUN_OPTIONS;
      else process.env.BUN_OPTIONS = saved;
    }
  }
  console.log(`VmRSS after ${IDLE_MS / 1000} s idle, Bun ${Bun.version} (from source: bun src/main.ts --role ...)`);
  console.log(formatTable(["bun options", "process", "RSS MiB", "x floor", "<= 40 MiB"], rows));
} catch (e) {
  console.error(`footprint benchmark failed: ${e instanceof Error ? e.message : e}`);
  failed = true;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
