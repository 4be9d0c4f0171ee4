import { describe, expect, test } from "bun:test";
import { decidePairing, mayReach, natSource, newSessionId, parseSessionRequest } from "../src/tunnel/pairing.ts";
import { ErrorCode, MessageError, Msg } from "../src/transport/messages.ts";

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

describe("decidePairing", () => {
  const rules = [{ masters: ["tech-*"], onsites: ["site-1", "lab-*"] }];
  test.each([
    ["an unknown device", "tech-1", "site-9", { known: false, online: false }, ErrorCode.UNKNOWN_DEVICE],
    ["a device outside the rules", "tech-1", "site-2", { known: true, online: true }, ErrorCode.FORBIDDEN],
    ["a master outside the rules", "ops-1", "site-1", { known: true, online: true }, ErrorCode.FORBIDDEN],
    ["an offline device", "tech-1", "lab-3", { known: true, online: false }, ErrorCode.OFFLINE],
    ["an allowed, online device", "tech-1", "lab-3", { known: true, online: true }, null],
  ])("%s", (_name, master, onsite, facts, code) => {
    const d = decidePairing(rules, master, onsite, facts);
    expect(d.ok ? null : d.code).toBe(code);
  });

  test("no rules: everyone reaches everything", () => {
    expect(mayReach([], "anyone", "anything")).toBe(true);
  });
});

test("parseSessionRequest is the catalogue's SESSION_OPEN decoder: same body, same errors", () => {
  expect(parseSessionRequest({ onsite: "site-1", targets: ["10.0.0.5:80"] })).toEqual({ onsite: "site-1", targets: ["10.0.0.5:80"], ttl: null, session: null });
  expect(() => parseSessionRequest({ onsite: "site-1", targets: [] })).toThrow(new MessageError(Msg.SESSION_OPEN, "targets", "1-64 HOST:PORT strings"));
});

test("newSessionId draws 8 base-36 characters from the injected random source", () => {
  expect(newSessionId(() => 0)).toBe("s-00000000");
  expect(newSessionId(() => 0.999)).toBe("s-zzzzzzzz");
  expect(newSessionId()).toMatch(/^s-[a-z0-9]{8}$/);
});
