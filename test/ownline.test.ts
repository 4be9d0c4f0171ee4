// ownline's Gen 1 protocol (seed 001) as src/ownline serves it: the pure pieces table-tested,
// messages sealed by the `openssl enc` command (test/fixtures/ownline/client.ts, written from
// PROTOCOLS.md §6) decrypted by ours, and the TLS listener on loopback answering an
// `openssl s_client` client, with a recording NAT behind it (the real one, with real rules,
// is test/ownline-system.test.ts). The known server is 127.0.0.1; "another address" is
// 127.0.0.2 (`s_client -bind`), which loopback carries without any setup.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCa, issueCertificate, parseCa } from "../src/pki.ts";
import { ConfigError, ignoredForRole, resolveConfig, type ConfigSource } from "../src/config.ts";
import { createLogger } from "../src/log.ts";
import { parseIPv4 } from "../src/netaddr.ts";
import type { NatRequest } from "../src/nat/rule.ts";
import { MAX_CONNECTIONS, OwnlineListener, PeerLogLimiter, peerIPv4, readSecretFile } from "../src/ownline/listener.ts";
import { FakeClock } from "../src/clock.ts";
import {
  answer,
  decrypt,
  deriveKey,
  encrypt,
  findForward,
  looksWhole,
  messageState,
  OWNLINE_OWNER,
  OwnlineRefusal,
  pad,
  parseRequest,
  secretsEqual,
  toNatRequest,
  unpad,
  type ListedRule,
  type OwnlineNat,
} from "../src/ownline/protocol.ts";
import { badPadding, ownlinePad, seal, send, sendRaw } from "./fixtures/ownline/client.ts";
import { waitFor } from "./helpers/wait.ts";

const AES = "zzzzzzzzzzzzzzzzzzzzz-aes";
const API = "zzzzzzzzzzzzzzzzzzzzz-api";
const ADD = { ip_src: "1.1.1.1", port_dst: 7890, ip_dst_lan: "192.168.1.50", port_dst_lan: 80, rule_timeout: 30, action: "add", api_key: API };

/** A NAT that records what it is asked (what the listener would make `agent nat add` do). */
class RecordingNat implements OwnlineNat {
  calls: string[] = [];
  rules: ListedRule[] = [];
  refuse: string | undefined;
  async add(req: NatRequest, owner: string) {
    this.calls.push(`add ${JSON.stringify(req)} owner=${owner}`);
    if (this.refuse) throw new Error(this.refuse);
    this.rules.push({ id: `r${this.rules.length}`, proto: String(req.proto), src: `${String(req.src)}/32`, port: Number(req.port), to: String(req.to), owner });
    return {};
  }
  async list() {
    return this.rules;
  }
  async del(id: string) {
    this.calls.push(`del ${id}`);
    this.rules = this.rules.filter((r) => r.id !== id);
    return {};
  }
  async removeByOwner(owner: string) {
    this.calls.push(`flush owner=${owner}`);
    const n = this.rules.filter((r) => r.owner === owner).length;
    this.rules = this.rules.filter((r) => r.owner !== owner);
    return n;
  }
}

describe("padding, keys and decoding", () => {
  test("ownline's padding: to 32-byte blocks, a full block when already aligned, every byte checked", () => {
    expect(pad(Buffer.alloc(31)).length).toBe(32);
    expect(pad(Buffer.alloc(32)).length).toBe(64);
    expect([...pad(Buffer.from("ab")).subarray(2)]).toEqual(Array(30).fill(30));
    expect(unpad(pad(Buffer.from("hello"))).toString()).toBe("hello");
    const bad = pad(Buffer.from("hello"));
    bad[10] = 7;
    expect(() => unpad(bad)).toThrow("padding bytes differ");
    expect(() => unpad(Buffer.from([1, 2, 0]))).toThrow("last byte 0");
    expect(() => unpad(Buffer.alloc(32, 33))).toThrow("last byte 33");
  });

  test("the fixture's padding is the same as ours (two implementations from one text)", () => {
    for (const n of [0, 1, 31, 32, 33, 200]) expect(ownlinePad(Buffer.alloc(n, 65)).equals(pad(Buffer.alloc(n, 65)))).toBe(true);
  });

  test("a message sealed by the openssl command decrypts to its JSON", async () => {
    const json = JSON.stringify(ADD);
    const msg = await seal(json, AES);
    expect(looksWhole(msg)).toBe(true);
    expect(decrypt(msg, deriveKey(AES))).toBe(json);
    // Our encoder agrees with openssl's output for the same IV.
    const iv = Buffer.from(msg, "base64").subarray(0, 16);
    expect(encrypt(json, deriveKey(AES), iv)).toBe(msg);
  });

  test("the wrong aes_key does not decrypt (bad padding or not UTF-8 or not JSON, never a request)", async () => {
    const msg = await seal(JSON.stringify(ADD), "another aes key");
    expect(() => parseRequest(decrypt(msg, deriveKey(AES)), API)).toThrow(OwnlineRefusal);
  });

  test("looksWhole: only base64 of an IV plus whole AES blocks", () => {
    const one = Buffer.alloc(48).toString("base64");
    expect(looksWhole(one)).toBe(true);
    expect(looksWhole(one + "\n")).toBe(true);
    expect(looksWhole(one.slice(0, 40))).toBe(false);
    expect(looksWhole(Buffer.alloc(40).toString("base64"))).toBe(false);
    expect(looksWhole("$(reboot)")).toBe(false);
    expect(messageState("$(reboot)")).toBe("invalid");
    expect(messageState(one.slice(0, 40))).toBe("partial");
    expect(messageState("AAAA=AAA")).toBe("invalid");
    expect(messageState(Buffer.alloc(40).toString("base64"))).toBe("invalid"); // ends in "=": cannot grow
    expect(messageState(one)).toBe("whole");
    expect(() => decrypt("$(reboot);;;", deriveKey(AES))).toThrow("not base64");
  });

  test("secretsEqual compares whole secrets of any length", () => {
    expect(secretsEqual(API, API)).toBe(true);
    expect(secretsEqual(API, API + "x")).toBe(false);
    expect(secretsEqual(API, "")).toBe(false);
  });
});

describe("parseRequest", () => {
  const j = (o: unknown) => JSON.stringify(o);
  test("seed 001's add, with ownline's defaults for port_dst_lan and rule_timeout", () => {
    expect(parseRequest(j(ADD), API)).toEqual({ action: "add", forward: { ip_src: "1.1.1.1", port_dst: 7890, ip_dst_lan: "192.168.1.50", port_dst_lan: 80, rule_timeout: 30 } });
    const { port_dst_lan: _p, rule_timeout: _t, ...bare } = ADD;
    expect(parseRequest(j(bare), API).forward).toMatchObject({ port_dst_lan: 7890, rule_timeout: 5 });
  });
  test("the api_key is checked before anything else: flush with a wrong key is refused (upstream accepts it)", () => {
    expect(() => parseRequest(j({ action: "flush", api_key: "wrong" }), API)).toThrow("wrong api_key");
    expect(() => parseRequest(j({ action: "flush" }), API)).toThrow("wrong api_key");
    expect(() => parseRequest(j({ ...ADD, api_key: "wrong", bogus: 1 }), API)).toThrow("wrong api_key");
    expect(parseRequest(j({ action: "flush", api_key: API }), API)).toEqual({ action: "flush" });
  });
  test.each([
    [{ ...ADD, action: "open" }, "action"],
    [{ ...ADD, port_dst: 80 }, "port_dst: expected a whole number 1024-65534"],
    [{ ...ADD, port_dst: 70000 }, "port_dst"],
    [{ ...ADD, rule_timeout: 0 }, "rule_timeout"],
    [{ ...ADD, rule_timeout: 999 }, "rule_timeout"],
    [{ ...ADD, ip_src: "1.1.1.1; iptables -F" }, "ip_src"],
    [{ ...ADD, ip_dst_lan: "$(reboot)" }, "ip_dst_lan"],
    [{ ...ADD, port_dst_lan: "80`id`" }, "port_dst_lan"],
    [{ ...ADD, extra: "x" }, 'unknown field "extra"'],
    [[1, 2], "not a JSON object"],
  ])("refused: %j", (req, why) => {
    expect(() => parseRequest(j(req), API)).toThrow(why);
  });
  test("not JSON", () => expect(() => parseRequest("{nope", API)).toThrow("not JSON"));
  test("toNatRequest is what `agent nat add` gets", () => {
    expect(toNatRequest(parseRequest(j(ADD), API).forward!)).toEqual({ proto: "tcp", src: "1.1.1.1", port: 7890, to: "192.168.1.50:80", ttl: "30m" });
  });
  test("findForward: only ownline's own rule of the same forward", () => {
    const f = parseRequest(j(ADD), API).forward!;
    const mine = { id: "a", proto: "tcp", src: "1.1.1.1/32", port: 7890, to: "192.168.1.50:80", owner: OWNLINE_OWNER };
    expect(findForward([{ ...mine, owner: "local" }, mine], f)?.id).toBe("a");
    expect(findForward([{ ...mine, owner: "local" }], f)).toBeUndefined();
    expect(findForward([{ ...mine, to: "192.168.1.50:81" }], f)).toBeUndefined();
  });
});

describe("answer", () => {
  const keys = { aes: deriveKey(AES), api: API };
  test("add, del and flush reach the NAT service as owner ownline", async () => {
    const nat = new RecordingNat();
    expect((await answer(encrypt(JSON.stringify(ADD), keys.aes, Buffer.alloc(16, 1)), keys, nat)).reply).toBe("OK");
    expect((await answer(encrypt(JSON.stringify({ ...ADD, action: "del" }), keys.aes, Buffer.alloc(16, 2)), keys, nat)).reply).toBe("OK");
    expect((await answer(encrypt(JSON.stringify({ ...ADD, action: "del" }), keys.aes, Buffer.alloc(16, 3)), keys, nat)).reply).toBe("FAIL");
    expect((await answer(encrypt(JSON.stringify({ action: "flush", api_key: API }), keys.aes, Buffer.alloc(16, 4)), keys, nat)).reply).toBe("OK");
    expect(nat.calls).toEqual([`add {"proto":"tcp","src":"1.1.1.1","port":7890,"to":"192.168.1.50:80","ttl":"30m"} owner=ownline`, "del r0", "flush owner=ownline"]);
  });
  test("a refusal of the NAT service is FAIL, with its reason in the detail", async () => {
    const nat = new RecordingNat();
    nat.refuse = "to: 192.168.1.50 is not in the allow list";
    const out = await answer(encrypt(JSON.stringify(ADD), keys.aes, Buffer.alloc(16)), keys, nat);
    expect(out).toMatchObject({ reply: "FAIL", action: "add" });
    expect(out.detail).toContain("allow list");
  });
  test("a wrong key never reaches the NAT service, and the detail does not carry the key", async () => {
    const nat = new RecordingNat();
    const out = await answer(encrypt(JSON.stringify({ action: "flush", api_key: "guess-123" }), keys.aes, Buffer.alloc(16)), keys, nat);
    expect(out.reply).toBe("FAIL");
    expect(out.detail).not.toContain("guess-123");
    expect(nat.calls).toEqual([]);
  });
});

describe("PeerLogLimiter", () => {
  test("one line per address per minute, the next one counting what was left out; addresses bounded", () => {
    const clock = new FakeClock();
    const lim = new PeerLogLimiter(clock, 60_000, 2);
    expect(lim.take("a")).toBe(0);
    expect(lim.take("a")).toBeUndefined();
    expect(lim.take("a")).toBeUndefined();
    expect(lim.take("b")).toBe(0);
    clock.advance(60_000);
    expect(lim.take("a")).toBe(2);
    expect(lim.take("c")).toBe(0); // forgets the oldest (b)
    expect(lim.take("b")).toBe(0);
  });
});

describe("secret files", () => {
  let dir = "";
  beforeAll(() => (dir = mkdtempSync(join(tmpdir(), "agent-ownline-keys-"))));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  test("one trailing newline is not part of the key; group/other-readable, empty and missing files are refused with the fix", () => {
    const p = join(dir, "k");
    writeFileSync(p, "secret\n", { mode: 0o600 });
    expect(readSecretFile(p, "aes_key_file")).toBe("secret");
    chmodSync(p, 0o644);
    expect(() => readSecretFile(p, "aes_key_file")).toThrow("readable by others (mode 0644)");
    try {
      readSecretFile(p, "aes_key_file");
    } catch (e) {
      expect((e as { hint?: string }).hint).toBe(`chmod 600 ${p}`);
    }
    writeFileSync(join(dir, "empty"), "\n", { mode: 0o600 });
    expect(() => readSecretFile(join(dir, "empty"), "api_key_file")).toThrow("is empty");
    expect(() => readSecretFile(join(dir, "nope"), "api_key_file")).toThrow("ENOENT");
  });
  test("peerIPv4 reads plain and v4-mapped addresses", () => {
    expect(peerIPv4("127.0.0.1")).toBe(parseIPv4("127.0.0.1"));
    expect(peerIPv4("::ffff:10.0.0.1")).toBe(parseIPv4("10.0.0.1"));
    expect(peerIPv4("::1")).toBeUndefined();
  });
});

describe("the listener on loopback, spoken to by openssl s_client", () => {
  let dir = "";
  let listener: OwnlineListener;
  const nat = new RecordingNat();
  const lines: string[] = [];
  let address = "";
  // The device's bundle certificate is a client certificate (TLS client auth only): ownline's
  // own client does not verify, and neither does this one here. The system test verifies a
  // server certificate given as cert_file/key_file.
  const opts = () => ({ address });

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "agent-ownline-"));
    const made = createCa({ name: "ownline test CA" });
    const ca = parseCa(made.certPem, made.keyPem);
    const dev = issueCertificate(ca, { role: "onsite", id: "ol-site" });
    writeFileSync(join(dir, "aes"), AES + "\n", { mode: 0o600 });
    writeFileSync(join(dir, "api"), API, { mode: 0o600 });
    listener = new OwnlineListener({
      config: { listen: { host: "127.0.0.1", port: 0 }, known_server: parseIPv4("127.0.0.1"), aes_key_file: join(dir, "aes"), api_key_file: join(dir, "api"), read_timeout: 1000 },
      tls: { certPem: dev.certPem, keyPem: dev.keyPem },
      nat,
      log: createLogger({ level: "info", write: (l) => void lines.push(l) }),
    });
    listener.start();
    const st = listener.status();
    expect(st.unavailable).toBeUndefined();
    address = String(st.listen);
  });
  afterAll(() => {
    listener?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("seed 001's request gets OK and becomes one NAT add", async () => {
    expect(await send(ADD, AES, opts())).toBe("OK");
    expect(nat.calls.at(-1)).toBe(`add {"proto":"tcp","src":"1.1.1.1","port":7890,"to":"192.168.1.50:80","ttl":"30m"} owner=ownline`);
    expect(lines.join("")).toContain("OK to 127.0.0.1: added tcp 1.1.1.1");
  });

  test("hostile requests all get FAIL and reach nothing", async () => {
    const before = nat.calls.length;
    const cases: [string, () => Promise<string>][] = [
      ["wrong api_key", () => send({ ...ADD, api_key: "wrong" }, AES, opts())],
      ["flush, wrong api_key", () => send({ action: "flush", api_key: "wrong" }, AES, opts())],
      ["wrong aes_key", () => send(ADD, "not the aes key", opts())],
      ["from another address", () => send(ADD, AES, { ...opts(), bind: "127.0.0.2" })],
      ["bad padding", async () => sendRaw(await seal("", AES, badPadding(JSON.stringify(ADD))), opts())],
      ["oversized", () => sendRaw("A".repeat(64 * 1024), opts())],
      ["not base64", () => sendRaw("$(reboot)`id`;|&", opts())],
      ["shell in ip_src", () => send({ ...ADD, ip_src: "1.1.1.1;iptables -F" }, AES, opts())],
    ];
    for (const [what, go] of cases) expect([what, await go()]).toEqual([what, "FAIL"]);
    expect(nat.calls.length).toBe(before);
    const log = lines.join("");
    expect(log).toContain("wrong api_key");
    expect(log).toContain("only the known server 127.0.0.1 may send requests");
    expect(log).toContain("over 4096 bytes");
    expect(log).not.toContain("zzzzzzzzzzzzzzzzzzzzz");
  }, 60_000);

  test("a message that never completes gets FAIL at read_timeout", async () => {
    const half = (await seal(JSON.stringify(ADD), AES)).slice(0, 50);
    expect(await sendRaw(half, opts())).toBe("FAIL");
    expect(lines.join("")).toContain("no whole message within 1s");
  });

  test("at most MAX_CONNECTIONS at once; a silent one is closed at read_timeout", async () => {
    await waitFor(() => listener.status().open === 0, 5000, "earlier connections to close");
    const closed: number[] = [];
    const port = Number(address.split(":")[1]);
    const conns = await Promise.all(
      [...Array(MAX_CONNECTIONS + 1).keys()].map((i) => Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {}, close: () => void closed.push(i) } })),
    );
    // Plain TCP, no TLS handshake, nothing sent: the one over the cap is cut at once...
    await waitFor(() => listener.status().cut === 1, 5000, "the connection over the cap to be cut");
    expect(listener.status().open).toBe(MAX_CONNECTIONS);
    // ...and the others at read_timeout (1 s here), handshake or not.
    await waitFor(() => listener.status().open === 0 && closed.length === MAX_CONNECTIONS + 1, 10_000, "the silent connections to be closed");
    for (const c of conns) c.end();
    expect(lines.join("")).toContain(`cut a connection from 127.0.0.1: ${MAX_CONNECTIONS} already open`);
  });

  test("strangers filling their places do not crowd out the known server", async () => {
    const port = Number(address.split(":")[1]);
    const strangers = await Promise.all(
      [...Array(MAX_CONNECTIONS).keys()].map(
        () => new Promise<Socket>((resolve, reject) => {
          const c = connect({ host: "127.0.0.1", port, localAddress: "127.0.0.2" }, () => resolve(c));
          c.on("error", reject);
        }),
      ),
    );
    await waitFor(() => listener.status().open === MAX_CONNECTIONS, 5000, "the strangers' connections to be counted");
    expect(await send({ action: "flush", api_key: API }, AES, opts())).toBe("OK");
    for (const c of strangers) c.destroy();
    await waitFor(() => listener.status().open === 0, 5000, "the strangers' connections to close");
  });

  test("a key file readable by others keeps the listener off, with the fix in status", () => {
    chmodSync(join(dir, "api"), 0o640);
    const l = new OwnlineListener({
      config: { listen: { host: "127.0.0.1", port: 0 }, known_server: parseIPv4("127.0.0.1"), aes_key_file: join(dir, "aes"), api_key_file: join(dir, "api"), read_timeout: 1000 },
      tls: { certPem: "", keyPem: "" },
      nat,
      log: createLogger({ level: "silent" }),
    });
    l.start();
    expect(l.status().unavailable).toBe(`[ownline] api_key_file ${join(dir, "api")} is readable by others (mode 0640); fix: chmod 600 ${join(dir, "api")}`);
    chmodSync(join(dir, "api"), 0o600);
  });

  test("status counts what happened", async () => {
    await waitFor(() => listener.status().open === 0, 5000, "connections to close");
    expect(listener.status()).toMatchObject({ known_server: "127.0.0.1", ok: 2, refused_peer: 1, cut: 1 });
    expect(Number(listener.status().fail)).toBeGreaterThanOrEqual(8);
  });
});

describe("[ownline] in the config", () => {
  const src = (raw: Record<string, unknown>): ConfigSource => ({ origin: { kind: "file", path: "/etc/agent/agent.toml" }, raw });
  const section = { listen: "0.0.0.0:9999", known_server: "203.0.113.7", api_key_file: "/etc/agent/ownline.api_key", aes_key_file: "/etc/agent/ownline.aes_key" };
  test("the issue's example section resolves, read_timeout defaulting to 5 s; no section, no listener", () => {
    const cfg = resolveConfig([src({ ownline: section })]);
    expect(cfg.ownline).toEqual({ listen: { host: "0.0.0.0", port: 9999 }, known_server: parseIPv4("203.0.113.7"), api_key_file: section.api_key_file, aes_key_file: section.aes_key_file, read_timeout: 5000 });
    expect(resolveConfig([src({})]).ownline).toBeUndefined();
  });
  test("a bad key's error quotes the section's expected form", () => {
    try {
      resolveConfig([src({ ownline: { ...section, known_server: "x" } })]);
      throw new Error("not refused");
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      expect((e as ConfigError).hint).toContain('[ownline] listen = "0.0.0.0:9999", known_server = "203.0.113.7"');
    }
  });
  test("only an onsite device uses it", () => {
    expect(ignoredForRole([src({ ownline: section })], "master")).toEqual(["/etc/agent/agent.toml: [ownline] has no effect on a master: only an onsite device serves ownline's requests"]);
    expect(ignoredForRole([src({ ownline: section })], "onsite")).toEqual([]);
  });
});
