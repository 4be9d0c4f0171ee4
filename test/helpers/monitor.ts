// `agent monitor` as a test reads it: a real CLI process against a daemon's control socket,
// its output collected as it comes (test/catalog-system.test.ts, test/ops-observe.test.ts).
import type { Subprocess } from "bun";
import { BUN, MAIN } from "./cli.ts";

export interface MonitorReader {
  /** The `--json` lines parsed so far, in order. */
  events: Record<string, unknown>[];
  /** The events as one string, for a failure message. */
  text(): string;
  proc: Subprocess;
}

/** Starts `agent monitor --json --control sock`; the caller kills `proc` when done. */
export function monitorJson(sock: string): MonitorReader {
  const proc = Bun.spawn([BUN, MAIN, "monitor", "--json", "--control", sock], { stdout: "pipe", stderr: "pipe" });
  const events: Record<string, unknown>[] = [];
  let buf = "";
  void (async () => {
    const dec = new TextDecoder();
    for await (const c of proc.stdout) {
      buf += dec.decode(c, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        events.push(JSON.parse(buf.slice(0, nl)));
        buf = buf.slice(nl + 1);
      }
    }
  })();
  return { events, text: () => JSON.stringify(events), proc };
}
