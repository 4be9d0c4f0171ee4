// Issue 19: with net.ipv4.ip_forward=0 a DNAT rule is installed but forwards nothing. `nat add`
// still applies it (forwarding may be turned on next), but says so, in its answer and in the log.
import { describe, expect, test } from "bun:test";
import { createLogger } from "../src/log.ts";
import { parseAllowEntry, parseIPv4 } from "../src/netaddr.ts";
import { FakeBackend } from "../src/nat/backend.ts";
import type { NatLimits } from "../src/nat/rule.ts";
import { forwardingWarning, NatService } from "../src/nat/service.ts";
import { MemoryRuleStore } from "../src/nat/store.ts";

const limits: NatLimits = {
  minTtlMs: 1_000,
  maxTtlMs: 8 * 3_600_000,
  maxRules: 64,
  allowAnySource: false,
  allow: [parseAllowEntry("192.168.1.0/24")],
};

function service(ipForward: () => string | null) {
  const lines: string[] = [];
  const backend = new FakeBackend();
  const svc = new NatService({
    backend,
    store: new MemoryRuleStore(),
    limits,
    keepOnStop: false,
    ownAddresses: async () => [{ addr: parseIPv4("203.0.113.9"), prefix: 24 }],
    ipForward,
    cutFlows: async () => {},
    log: createLogger({ level: "info", write: (l) => lines.push(l) }),
  });
  return { svc, backend, lines };
}

const req = { src: "198.51.100.7", port: 8080, to: "192.168.1.50:80", ttl: "10m" };

describe("forwardingWarning", () => {
  test.each([
    ["1", false],
    ["0", true],
    [null, false],
  ] as const)("ip_forward %p → warning %p", (value, warns) => {
    expect(forwardingWarning(value) !== undefined).toBe(warns);
  });
});

describe("nat add with IPv4 forwarding off", () => {
  test("applies the rule and answers with a warning that names the fix; the log says it too", async () => {
    const { svc, backend, lines } = service(() => "0");
    await svc.start();
    const r = await svc.add(req, "local");
    expect(r.created).toBe(true);
    expect(backend.installed.size).toBe(1);
    expect(r.warning).toMatch(/net\.ipv4\.ip_forward=0.*sysctl -w net\.ipv4\.ip_forward=1/);
    expect(lines.some((l) => / WARN /.test(l) && l.includes(`rule ${r.rule.id}: IPv4 forwarding is off`))).toBe(true);
    await svc.close();
  });

  test("with forwarding on there is no warning", async () => {
    const { svc, lines } = service(() => "1");
    await svc.start();
    const r = await svc.add(req, "local");
    expect(r.warning).toBeUndefined();
    expect(lines.some((l) => l.includes("IPv4 forwarding is off"))).toBe(false);
    await svc.close();
  });
});
