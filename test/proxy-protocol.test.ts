// The PROXY protocol v2 parser (src/transport/proxy-protocol.ts), table-tested with what a
// load balancer sends and with hostile input: truncated, lying lengths, wrong versions, v1 text,
// a TLS ClientHello where the header should be, families the relay cannot use.
import { describe, expect, test } from "bun:test";
import { MAX_PROXY_HEADER, PROXY_V2_SIGNATURE, encodeProxyHeader, formatIPv6, parseProxyHeader } from "../src/transport/proxy-protocol.ts";

const v4 = encodeProxyHeader({ command: "proxy", family: "tcp4", source: { address: "203.0.113.7", port: 51234 }, destination: { address: "10.0.0.1", port: 443 } });
const v6 = encodeProxyHeader({ command: "proxy", family: "tcp6", source: { address: "2001:db8::7", port: 40000 }, destination: { address: "2001:db8::1", port: 443 } });
const local = encodeProxyHeader({ command: "local" });
const tlv = encodeProxyHeader({ command: "proxy", family: "tcp4", source: { address: "198.51.100.9", port: 1 }, destination: { address: "10.0.0.1", port: 443 } }, new Uint8Array([0x01, 0x00, 0x02, 0x68, 0x32])); // ALPN "h2"

/** A header with the fixed part changed at `at` to `value`. */
function patched(base: Uint8Array, at: number, value: number): Uint8Array {
  const b = base.slice();
  b[at] = value;
  return b;
}
const concat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.length) - p.length);
  return out;
};
const clientHello = new Uint8Array([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);

describe("well-formed headers", () => {
  test("IPv4 from HAProxy: the client's address and port, the header's length", () => {
    expect(parseProxyHeader(v4)).toEqual({ state: "ok", length: 28, header: { command: "proxy", family: "tcp4", source: { address: "203.0.113.7", port: 51234 }, destination: { address: "10.0.0.1", port: 443 } } });
  });
  test("IPv6", () => {
    const r = parseProxyHeader(v6);
    expect(r).toMatchObject({ state: "ok", length: 52, header: { family: "tcp6", source: { address: "2001:db8::7", port: 40000 } } });
  });
  test("LOCAL (a health check): no client address", () => expect(parseProxyHeader(local)).toEqual({ state: "ok", length: 16, header: { command: "local" } }));
  test("TLVs are read past", () => expect(parseProxyHeader(tlv)).toMatchObject({ state: "ok", length: 33, header: { source: { address: "198.51.100.9" } } }));
  test("the TLS bytes after the header are not part of it", () => {
    const r = parseProxyHeader(concat(v4, clientHello));
    expect(r).toMatchObject({ state: "ok", length: v4.length });
  });
  test("arriving a byte at a time: need, need, ..., ok", () => {
    for (let n = 0; n < v4.length; n++) expect(parseProxyHeader(v4.subarray(0, n)).state).toBe("need");
    expect(parseProxyHeader(v4).state).toBe("ok");
  });
});

describe("hostile or wrong input is refused with a reason", () => {
  test.each<[string, Uint8Array, string]>([
    ["a TLS ClientHello (balancer not sending PROXY, or a client around it)", clientHello, "a TLS ClientHello"],
    ["PROXY v1 text", new TextEncoder().encode("PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n"), "PROXY protocol v1"],
    ["a signature wrong in its last byte", patched(v4, 11, 0x0b), "no v2 header"],
    ["a signature wrong early (refused before 16 bytes arrive)", new Uint8Array([0x0d, 0x0a, 0x0d, 0x0b]), "no v2 header"],
    ["version 1 in the binary header", patched(v4, 12, 0x11), "version 1, only 2"],
    ["version 3", patched(v4, 12, 0x31), "version 3"],
    ["command 2", patched(v4, 12, 0x22), "unknown command 2"],
    ["a length over the limit (refused before it is buffered)", concat(PROXY_V2_SIGNATURE, new Uint8Array([0x21, 0x11, 0xff, 0xff])), "over the limit"],
    ["an IPv4 length too short for the addresses", concat(PROXY_V2_SIGNATURE, new Uint8Array([0x21, 0x11, 0x00, 0x08]), new Uint8Array(8)), "cannot hold the IPv4 addresses"],
    ["an IPv6 length too short", concat(PROXY_V2_SIGNATURE, new Uint8Array([0x21, 0x21, 0x00, 0x0c]), new Uint8Array(12)), "cannot hold the IPv6 addresses"],
    ["a UDP source", patched(v4, 13, 0x12), "DGRAM"],
    ["a UNIX socket source", concat(PROXY_V2_SIGNATURE, new Uint8Array([0x21, 0x31, 0x00, 0xd8])), "UNIX socket"],
    ["an unknown family", patched(v4, 13, 0x41), "unknown address family 4"],
    ["an unknown transport", patched(v4, 13, 0x13), "unknown transport 3"],
    ["all zeros", new Uint8Array(64), "no v2 header"],
  ])("%s", (_name, bytes, reason) => {
    const r = parseProxyHeader(bytes);
    expect(r.state).toBe("bad");
    expect(r.state === "bad" && r.reason).toContain(reason);
    expect(r.state === "bad" && r.reason.startsWith("PROXY protocol: ")).toBe(true);
  });

  test("a header exactly at the limit is taken, one byte more is not", () => {
    const room = MAX_PROXY_HEADER - 16 - 12;
    const at = encodeProxyHeader({ command: "proxy", family: "tcp4", source: { address: "1.2.3.4", port: 5 }, destination: { address: "5.6.7.8", port: 9 } }, new Uint8Array(room));
    expect(parseProxyHeader(at).state).toBe("ok");
    const over = encodeProxyHeader({ command: "proxy", family: "tcp4", source: { address: "1.2.3.4", port: 5 }, destination: { address: "5.6.7.8", port: 9 } }, new Uint8Array(room + 1));
    expect(parseProxyHeader(over.subarray(0, 16)).state).toBe("bad");
  });

  test("random bytes never throw, and whatever they are, the verdict is one of the three", () => {
    let x = 12345;
    for (let i = 0; i < 5000; i++) {
      const n = (x = (x * 1103515245 + 12345) >>> 0) % 80;
      const b = new Uint8Array(n);
      for (let j = 0; j < n; j++) b[j] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
      // Half of them start with the real signature, so the fields behind it get fuzzed too.
      if (i % 2 && n >= 12) b.set(PROXY_V2_SIGNATURE, 0);
      const r = parseProxyHeader(b);
      expect(["need", "ok", "bad"]).toContain(r.state);
      if (r.state === "ok") expect(r.length).toBeLessThanOrEqual(b.length);
    }
  });
});

test.each<[string, string]>([
  ["2001:db8::7", "2001:db8::7"],
  ["::1", "::1"],
  ["::", "::"],
  ["1:0:0:2:0:0:0:3", "1:0:0:2::3"],
  ["::ffff:203.0.113.7", "203.0.113.7"],
  ["fe80:1:2:3:4:5:6:7", "fe80:1:2:3:4:5:6:7"],
])("formatIPv6 %s", (input, want) => {
  const h = encodeProxyHeader({ command: "proxy", family: "tcp6", source: { address: input.startsWith("::ffff:") ? "::ffff:cb00:7107" : input, port: 1 }, destination: { address: "::1", port: 2 } });
  expect(formatIPv6(h.subarray(16, 32))).toBe(want);
});
