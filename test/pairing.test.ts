import { describe, expect, test } from "bun:test";
import { natSource } from "../src/tunnel/pairing.ts";

describe("natSource: a master's address as a NAT rule's source", () => {
  test.each([
    ["198.18.0.2", "198.18.0.2"],
    ["::ffff:198.18.0.2", "198.18.0.2"], // a relay listening on [::] sees IPv4 peers mapped
    ["::FFFF:10.0.0.1", "10.0.0.1"],
  ])("%s → %s", (remote, source) => {
    expect(natSource(remote)).toEqual({ ok: true, source });
  });

  test.each(["2001:db8::7", "::1", "", "::ffff:2001:db8::1"])("%p is refused with the reason", (remote) => {
    const r = natSource(remote);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toMatch(/^NAT rules are IPv4-only and the relay sees this master at /);
  });
});
