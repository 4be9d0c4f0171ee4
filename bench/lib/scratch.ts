// A benchmark path's child processes and its scratch folder, which stop together: every path
// that spawns its own processes (bench/lib/peers.ts, bench/lib/ours.ts, bench/transport-splice.ts)
// starts in one, so a failed start leaves no process and no folder behind.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Children } from "../../test/helpers/proc.ts";
import { startOrClean } from "./path.ts";

export interface Scratch {
  kids: Children;
  /** A fresh folder under the system temp folder, removed by stop(). */
  dir: string;
  /** Stops every child, then removes the folder. */
  stop(): Promise<void>;
}

/** Runs `build` with a new scratch named `prefix…`; if it throws, stops the scratch and rethrows. */
export function inScratch<T>(prefix: string, build: (s: Scratch) => Promise<T>): Promise<T> {
  const kids = new Children();
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const stop = async () => {
    await kids.stopAll();
    rmSync(dir, { recursive: true, force: true });
  };
  return startOrClean(() => build({ kids, dir, stop }), stop);
}
