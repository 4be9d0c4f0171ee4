// Debian's chromium inside a network namespace this run made (`ip netns exec`, through
// test/fixtures/chromium-in-netns.sh): a browser on a device of a lab, e.g. on the master's own
// terminal, where the GUI answers on that namespace's loopback. Same flags as ./browser.ts.
import { join } from "node:path";
import type { Browser } from "playwright-core";
import { CHROMIUM_ARGS } from "./browser.ts";

export const CHROMIUM_IN_NETNS = join(import.meta.dir, "..", "fixtures", "chromium-in-netns.sh");

export async function launchChromiumIn(netns: string): Promise<Browser> {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(netns)) throw new Error(`not a namespace name: ${JSON.stringify(netns)}`);
  const { chromium } = await import("playwright-core");
  return chromium.launch({ executablePath: CHROMIUM_IN_NETNS, args: CHROMIUM_ARGS, env: { ...process.env, AGT_CHROMIUM_NETNS: netns }, timeout: 60_000 });
}
