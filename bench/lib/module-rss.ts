// RSS of a fresh Bun after importing one module and a full GC: what a module costs by being
// loaded (docs/performance.md, Footprint, "module by module").
//   bun bench/lib/module-rss.ts [MODULE]   prints "VmRSS RssAnon" in MiB; no MODULE: the empty probe
import { readFileSync } from "node:fs";
import { resolve } from "node:path";

const mod = process.argv[2];
if (mod) await import(resolve(mod));
Bun.gc(true);
const status = readFileSync("/proc/self/status", "utf8");
const mib = (k: string) => (Number(new RegExp(`^${k}:\\s+(\\d+)`, "m").exec(status)?.[1] ?? NaN) / 1024).toFixed(1);
console.log(`${mib("VmRSS")} ${mib("RssAnon")}`);
