// `make bench`: runs every bench/*.bench.ts (or the ones named on the command line) one after
// another, each in its own process, so one benchmark's sockets and memory do not colour the
// next. nat, transport and wifi print their figures next to peers measured in the same run;
// uplink measures the agent and labels its mwan3 figures as computed (see the Makefile).
import { readdirSync } from "node:fs";
import { join } from "node:path";

const dir = import.meta.dir;
const wanted = process.argv.slice(2);
const all = readdirSync(dir).filter((f) => f.endsWith(".bench.ts")).sort();
const chosen = wanted.length ? all.filter((f) => wanted.some((w) => f.startsWith(w))) : all;
if (chosen.length === 0) {
  console.error(`no benchmark matches ${wanted.join(", ")}; have: ${all.join(", ")}`);
  process.exit(2);
}
let failed = 0;
for (const f of chosen) {
  console.log(`\n=== ${f} ===`);
  const p = Bun.spawn([process.execPath, join(dir, f)], { stdio: ["inherit", "inherit", "inherit"] });
  if ((await p.exited) !== 0) {
    failed++;
    console.log(`${f}: FAILED (exit ${p.exitCode})`);
  }
}
process.exit(failed ? 1 : 0);
