// Footprint: the idle RSS of each role (VmRSS once it has idled IDLE_MS, connected: the
// onsite device and the master online at the relay) next to the runtime's floor, a bare
// Bun.listen process, and that floor with node:crypto loaded (every role needs it for TLS
// identities and HMACs). Then the same fleet under Bun's smaller-heap option (--smol,
// passed as BUN_OPTIONS). Issue 18's goal: an idle onsite daemon <= 40 MB.
//
// Run:   make bench B=footprint   (or: node_modules/.bin/bun bench/footprint.bench.ts)
// Environment: FOOTPRINT_IDLE_MS=15000, FOOTPRINT_VARIANTS=default,smol
//   FOOTPRINT_EXE=dist/agent-onsite-linux-x64   also a compiled onsite executable (build/release.ts)
//                                               as a second device (site-2) of the same fleet
import { writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatTable } from "../src/table.ts";
import { BUN } from "../test/helpers/cli.ts";
import { readFileSync } from "node:fs";
import { rssKiB, spawnChild } from "../test/helpers/proc.ts";
import { agentCli, startFleet } from "./lib/ours.ts";

const EXE = process.env.FOOTPRINT_EXE;
const IDLE_MS = Math.max(1000, Number(process.env.FOOTPRINT_IDLE_MS ?? 15_000) || 15_000);
const variants = (process.env.FOOTPRINT_VARIANTS ?? "default,smol").split(",");
const OPTIONS: Record<string, string> = { default: "", smol: "--smol" };
const mib = (kib: number) => (kib / 1024).toFixed(1);
/** RssAnon and RssFile of /proc/PID/status, KiB: the heap against the mapped executable's pages. */
function split(pid: number): { anon: number; file: number } {
  const text = readFileSync(`/proc/${pid}/status`, "utf8");
  const get = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, "m").exec(text)?.[1] ?? NaN);
  return { anon: get("RssAnon"), file: get("RssFile") };
}

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
      let exe: ReturnType<typeof spawnChild> | undefined;
      try {
        if (EXE) {
          const bundle = join(fleet.dir, "site-2.bundle");
          await agentCli("pki issue site-2", ["pki", "issue", "--dir", join(fleet.dir, "pki"), "--role", "onsite", "--id", "site-2", "--out", bundle]);
          exe = spawnChild("compiled onsite", [EXE, "--role", "onsite", "--bundle", bundle, "--relay", `127.0.0.1:${fleet.relayPort}`, "--allow", "127.0.0.1/32",
            "--control", join(fleet.dir, "site-2.sock"), "--state-dir", join(fleet.dir, "site-2-state"), "--log-level", "warn"]);
        }
        await Bun.sleep(IDLE_MS);
        const floorKiB = rssKiB(floors[0]!.c.pid);
        const line = (what: string, pid: number) => {
          const kib = rssKiB(pid);
          const { anon, file } = split(pid);
          rows.push([v, what, mib(kib), mib(anon), mib(file), (kib / floorKiB).toFixed(2) + "x", kib <= 40 * 1024 ? "yes" : "no"]);
        };
        for (const f of floors) line(`floor: ${f.name}`, f.c.pid);
        line("onsite (connected, idle)", fleet.onsite.pid);
        line("master (connected, idle)", fleet.master.pid);
        line("relay (2 devices, idle)", fleet.relay.pid);
        if (exe?.running) line("onsite, compiled executable (idle)", exe.pid);
        else if (exe) rows.push([v, "onsite, compiled executable: EXITED", "-", "-", "-", "-", "-"]);
      } finally {
        await exe?.stop();
        await fleet.stop();
        for (const f of floors) await f.c.stop();
      }
    } finally {
      if (saved === undefined) delete process.env.BUN_OPTIONS;
      else process.env.BUN_OPTIONS = saved;
    }
  }
  console.log(`VmRSS after ${IDLE_MS / 1000} s idle, Bun ${Bun.version} (from source: bun src/main.ts --role ...)`);
  console.log(formatTable(["bun options", "process", "RSS MiB", "anon MiB", "file MiB", "x floor", "<= 40 MiB"], rows));
} catch (e) {
  console.error(`footprint benchmark failed: ${e instanceof Error ? e.message : e}`);
  failed = true;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
