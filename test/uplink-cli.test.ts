// `agent uplink ...` as a user runs it, without a daemon; the daemon side is in
// test/uplink-system.test.ts. Also the config defaults that the failover timing rests on.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { defaults } from "../src/config.ts";
import { agent, tempDir } from "./helpers/cli.ts";

test("`agent uplink status` without a daemon says so and exits 1", () => {
  using dir = tempDir("uplink-cli");
  return agent(["uplink", "status", "--control", join(dir.path, "none.sock")]).then((r) => {
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("no daemon control socket");
  });
});

test("`agent uplink` needs a subcommand (exit 2)", async () => {
  const r = await agent(["uplink"]);
  expect(r.code).toBe(2);
  expect(r.stderr).toContain("status");
});

test("`agent uplink status --help` describes the command", async () => {
  const r = await agent(["uplink", "status", "--help"]);
  expect(r.code).toBe(0);
  expect(r.stdout).toContain("--json");
});

// Arithmetic on the defaults, not behaviour: the worst case these numbers allow. The
// detection itself is measured in test/uplink-system.test.ts (black hole, cut cable, loss).
test("the tracking defaults' worst case, computed: a black hole within 5 s, a 10 % lossy link under 0.05 false downs a day", () => {
  const t = defaults().tracking;
  // Worst case: the cut lands just after a good round began; `down` failed rounds follow,
  // the first starting at most one interval later, each ending at its timeout.
  const worst = t.interval + (t.down - 1) * Math.max(t.interval, t.timeout) + t.timeout;
  expect(worst).toBeLessThanOrEqual(5000);
  // And a 10%-lossy link (loss both ways: a connect fails with p = 0.19) must not fail
  // `down` rounds in a row more often than about once a month at this interval.
  const pRound = 0.19 ** t.count;
  const perDay = (86_400_000 / t.interval) * pRound ** t.down;
  expect(perDay).toBeLessThan(0.05);
});
