import { describe, expect, test } from "bun:test";
import { allowListPermits, formatIPv4, parseAllowEntry, parseCidr, parseHostPort, parseIPv4, parsePort, parsePortList } from "../src/netaddr.ts";

describe("parseIPv4", () => {
  test.each(["0.0.0.0", "192.168.1.10", "255.255.255.255", "10.0.0.1"])("accepts %s", (s) => expect(formatIPv4(parseIPv4(s))).toBe(s));
  test.each(["", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.256", " 1.2.3.4", "1.2.3.4 ", "1.2.3.-1", "0x7f.0.0.1", "a.b.c.d", "1.2.3.4;ls", "1..2.3", "localhost"])(
    "refuses %p",
    (s) => expect(() => parseIPv4(s)).toThrow("expected an IPv4 address"),
  );
});

describe("parsePort", () => {
  test.each([["1", 1], ["22", 22], ["65535", 65535]] as const)("accepts %s", (s, n) => expect(parsePort(s)).toBe(n));
  test.each(["0", "65536", "-1", "22-80", "0x16", "022", "", " 22", "22 ", "1e3", "+22"])("refuses %p", (s) => expect(() => parsePort(s)).toThrow("expected a port number 1-65535"));
  test("port lists and ranges", () => {
    expect(parsePortList("22,80,8000-8100")).toEqual([{ from: 22, to: 22 }, { from: 80, to: 80 }, { from: 8000, to: 8100 }]);
    expect(() => parsePortList("90-80")).toThrow("runs backwards");
  });
});

describe("parseCidr / allow list", () => {
  test("host bits must be clear", () => expect(() => parseCidr("10.1.2.3/8")).toThrow("did you mean 10.0.0.0/8?"));
  test.each(["10.0.0.0/33", "10.0.0.0/", "10.0.0.0/08", "10.0.0.0/-1"])("bad prefix %p", (s) => expect(() => parseCidr(s)).toThrow());
  test("bare address is a /32", () => expect(parseCidr("10.0.0.5").prefix).toBe(32));
  const list = ["192.168.1.0/24", "10.0.0.5/32:22,80"].map(parseAllowEntry);
  test.each([
    ["192.168.1.50", 443, true],
    ["192.168.2.50", 443, false],
    ["10.0.0.5", 22, true],
    ["10.0.0.5", 23, false],
    ["10.0.0.6", 22, false],
  ] as const)("%s:%d permitted=%p", (ip, port, ok) => expect(allowListPermits(list, parseIPv4(ip), port)).toBe(ok));
});

describe("parseHostPort", () => {
  test.each([
    ["relay.example.net:443", "relay.example.net", 443],
    ["127.0.0.1:0".replace(":0", ":1"), "127.0.0.1", 1],
    ["[::1]:8443", "::1", 8443],
    ["localhost:9", "localhost", 9],
  ] as const)("%s", (s, host, port) => expect(parseHostPort(s)).toEqual({ host, port }));
  test.each(["relay.example.net", ":443", "host:0", "host:65536", "ho st:1", "a;b:1", "[::1:443", "300.1.1.1:5", "host:22-23"])("refuses %p", (s) =>
    expect(() => parseHostPort(s)).toThrow(),
  );
});
