// issue 19, "NAT targets": a subnet's broadcast or network address is refused as a target
// also when the device has no address in that subnet (the allow list names the LAN's
// subnets; the README promises "never … a broadcast address"), and an --iface the device
// does not have is refused with the list of those it has.
import { describe, expect, test } from "bun:test";
import { UsageError } from "../src/errors.ts";
import { createLogger } from "../src/log.ts";
import { parseAllowEntry, parseIPv4 } from "../src/netaddr.ts";
import { FakeBackend } from "../src/nat/backend.ts";
import { parseIpLinkJson } from "../src/nat/component.ts";
import { FieldError, forbiddenTarget, unknownIface, validateRequest, type NatLimits } from "../src/nat/rule.ts";
import { NatService } from "../src/nat/service.ts";
import { MemoryRuleStore } from "../src/nat/store.ts";

const limits: NatLimits = {
  minTtlMs: 1000,
  maxTtlMs: 8 * 3_600_000,
  maxRules: 10,
  allowAnySource: false,
  allow: ["192.168.1.0/24", "10.20.0.0/16", "10.0.0.5/32:22,80", "10.9.9.0/31"].map(parseAllowEntry),
};
// The device's own address is on another subnet than the targets (a router's WAN side only).
const own = [{ addr: parseIPv4("203.0.113.9"), prefix: 24 }];
const req = (to: string) => ({ src: "203.0.113.7", port: "8080", to, ttl: "30m" });

describe("broadcast and network addresses of the allow list's subnets", () => {
  test.each([
    ["192.168.1.255:80", "is the broadcast address of 192.168.1.0/24 (a subnet of the allow list)"],
    ["192.168.1.0:80", "is the network address of 192.168.1.0/24 (a subnet of the allow list)"],
    ["10.20.255.255:80", "is the broadcast address of 10.20.0.0/16 (a subnet of the allow list)"],
    ["10.20.0.0:80", "is the network address of 10.20.0.0/16 (a subnet of the allow list)"],
  ])("--to %s is refused: %s", (to, why) => {
    expect(() => validateRequest(req(to), limits, own)).toThrow(new FieldError("to", `${to.split(":")[0]} ${why}; a forward must lead to a device on the LAN`).message);
  });

  test.each([
    ["192.168.1.254:80"],
    ["10.20.1.255:80"], // a host of the /16, not a broadcast
    ["10.0.0.5:22"], // a /32 entry: one host
    ["10.9.9.0:80"], // a /31 (RFC 3021): both addresses are hosts
    ["10.9.9.1:80"],
  ])("--to %s is a host and accepted", (to) => {
    expect(validateRequest(req(to), limits, own).toAddr).toBe(to.split(":")[0]!);
  });

  test("forbiddenTarget without subnets keeps its old answers", () => {
    expect(forbiddenTarget(parseIPv4("192.168.1.255"), own)).toBeUndefined();
    expect(forbiddenTarget(parseIPv4("203.0.113.255"), own)).toBe("is the broadcast address of 203.0.113.0/24");
  });
});

test("an allow-list refusal names the onsite device's allow, not a --allow of the caller's command (a master's nat add has none)", () => {
  expect(() => validateRequest(req("192.168.2.50:80"), limits, own)).toThrow(
    "to: 192.168.2.50:80 is outside the LAN allow list; that list is the onsite device's own (`allow` in its config file, or --allow of its daemon), not an option of this command",
  );
});

describe("--iface the device does not have", () => {
  test.each([
    ["eth0", ["lo", "eth0", "wan"], undefined],
    ["wan", ["lo", "eth0", "wan"], undefined],
    ["eht0", ["lo", "wan", "eth0"], 'no interface "eht0" on this device; present: eth0, wan (or leave --iface out to match every interface)'],
    ["eth0", [], 'no interface "eth0" on this device; present: none (or leave --iface out to match every interface)'],
  ] as [string, string[], string | undefined][])("unknownIface(%p, %p)", (iface, present, want) => {
    expect(unknownIface(iface, present)).toBe(want);
  });

  test("parseIpLinkJson reads the names", () => {
    expect(parseIpLinkJson(JSON.stringify([{ ifindex: 1, ifname: "lo" }, { ifindex: 2, ifname: "eth0" }, { ifindex: 3 }]))).toEqual(["lo", "eth0"]);
  });

  function service(interfaces?: () => Promise<string[]>) {
    const backend = new FakeBackend();
    return {
      backend,
      svc: new NatService({
        backend,
        store: new MemoryRuleStore(),
        limits,
        keepOnStop: false,
        ownAddresses: async () => own,
        interfaces,
        cutFlows: async () => {},
        log: createLogger({ level: "silent" }),
      }),
    };
  }

  test("nat add refuses it, naming the interfaces present, and installs nothing", async () => {
    const { svc, backend } = service(async () => ["lo", "eth0", "wan"]);
    await svc.start();
    const bad = svc.add({ ...req("192.168.1.50:80"), iface: "eht0" }, "local");
    await expect(bad).rejects.toBeInstanceOf(UsageError);
    await expect(svc.add({ ...req("192.168.1.50:80"), iface: "eht0" }, "local")).rejects.toThrow('iface: no interface "eht0" on this device; present: eth0, wan');
    expect(backend.applies).toBe(0);
    const ok = await svc.add({ ...req("192.168.1.50:80"), iface: "wan" }, "local");
    expect(ok.created).toBe(true);
    await svc.close();
  });

  test("a lister that fails leaves --iface unchecked (the check is help, not a fence)", async () => {
    const { svc } = service(async () => {
      throw new Error("no ip");
    });
    await svc.start();
    expect((await svc.add({ ...req("192.168.1.50:80"), iface: "eht0" }, "local")).created).toBe(true);
    await svc.close();
  });
});
