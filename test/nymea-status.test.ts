// The nymea listeners in the relay's text `agent status`, and a changed [nymea] named on SIGHUP
// as taking a restart (the listeners are bound at start).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { formatStatus, nymeaRow } from "../src/cli/status.ts";
import { resolveConfig, type Config, type RawConfig } from "../src/config.ts";
import { createLogger } from "../src/log.ts";
import { Daemon, type DaemonStatus } from "../src/roles/daemon.ts";

const dir = mkdtempSync(join(tmpdir(), "agent-nymea-status-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("agent status on a relay with [nymea]", () => {
  test.each([
    [{ tcp: "0.0.0.0:2213", ws: "0.0.0.0:2212", clients: 3, authenticated: 1, tunnels: 1, total_tunnels: 7 }, "tcp 0.0.0.0:2213, ws 0.0.0.0:2212; 3 clients (1 waiting), 1 tunnels (7 since start)"],
    [{ tcp: null, ws: "127.0.0.1:2212", clients: 0, authenticated: 0, tunnels: 0, total_tunnels: 0 }, "ws 127.0.0.1:2212; 0 clients (0 waiting), 0 tunnels (0 since start)"],
    [{ tcp: null, ws: null }, "no listener up; 0 clients (0 waiting), 0 tunnels (0 since start)"],
  ])("%j → %s", (part, row) => {
    expect(nymeaRow(part)).toBe(row);
  });

  test("the row appears only when the relay reports a nymea part", () => {
    const base = { role: "relay", id: "relay", version: "0", commit: "x", target: "t", pid: 1, uptime_s: 1, started: "2026-12-01T00:00:00Z", control: "/c", state_dir: "/s" };
    const without = formatStatus({ ...base, relay: { listen: "0.0.0.0:8443" } } as unknown as DaemonStatus).text;
    expect(without).not.toContain("nymea");
    const withN = formatStatus({ ...base, relay: { listen: "0.0.0.0:8443", nymea: { tcp: "0.0.0.0:2213", ws: null, clients: 2, authenticated: 2, tunnels: 0, total_tunnels: 0 } } } as unknown as DaemonStatus).text;
    expect(withN).toMatch(/^nymea +tcp 0\.0\.0\.0:2213; 2 clients \(2 waiting\), 0 tunnels/m);
  });
});

test("SIGHUP names a changed [nymea] as taking a restart", async () => {
  const config = (raw: RawConfig = {}): Config => resolveConfig([{ origin: { kind: "flag" }, raw: { listen: "127.0.0.1:8443", control: join(dir, "c.sock"), state_dir: dir, ...raw } }]);
  const lines: string[] = [];
  const log = createLogger({ level: "info", json: true, write: (l) => void lines.push(l), journald: false });
  const next = config({ nymea: { tcp: "127.0.0.1:2213", dummy: true } } as RawConfig);
  const daemon = new Daemon({ role: "relay", id: "relay" }, config(), log, { reloadConfig: async () => next });
  await daemon.reload();
  expect(lines.map((l) => JSON.parse(l).msg)).toContain("SIGHUP: nymea changed; that takes a restart");
});
