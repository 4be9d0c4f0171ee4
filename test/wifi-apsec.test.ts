// The setup access point exposes nothing else (issue 13 §6), the pure and in-process parts:
// the login delay (table), the page's own peer check, the fence's rule for the AP address,
// dnsmasq's user, and a damaged passphrase file reported instead of replaced. The port scans
// against the real daemon, dnsmasq and nft are in test/wifi-system.test.ts.
import { describe, expect, test } from "bun:test";
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { FakeClock } from "../src/clock.ts";
import { defaults, type ApConfig } from "../src/config.ts";
import { createLogger } from "../src/log.ts";
import { parseCidr } from "../src/netaddr.ts";
import { AccessPoint, apPassphrase, passphraseFileProblem, passwdHasUser } from "../src/uplink/ap.ts";
import { DNSMASQ_USER, renderDnsmasq, renderNft } from "../src/uplink/apconf.ts";
import { afterLogin, initialThrottle, LOGIN_DELAY_MAX_MS, LOGIN_FORGET_MS, loginDelay, loginGate, type LoginThrottle } from "../src/uplink/login-throttle.ts";
import { SetupPage } from "../src/uplink/setup-page.ts";
import { tempDir } from "./helpers/cli.ts";

const ap = (over: Partial<ApConfig> = {}): ApConfig => ({ ...defaults().ap, ...over });

describe("login delay after failed logins", () => {
  test.each([
    [0, 0],
    [1, 500],
    [2, 1000],
    [3, 2000],
    [6, 16_000],
    [7, LOGIN_DELAY_MAX_MS],
    [50, LOGIN_DELAY_MAX_MS],
    [5000, LOGIN_DELAY_MAX_MS],
  ])("failure #%d waits %d ms", (n, ms) => expect(loginDelay(n)).toBe(ms));

  // Each step: [at (mono ms), ok?] → the expected delay, failures, and whether the gate was open.
  type Step = { at: number; ok: boolean | "gate"; delay?: number; failures?: number; retry?: number };
  test.each<[string, Step[]]>([
    ["grows with each failure in a row", [
      { at: 0, ok: false, delay: 500, failures: 1 },
      { at: 500, ok: false, delay: 1000, failures: 2 },
      { at: 1500, ok: false, delay: 2000, failures: 3 },
    ]],
    ["a login before the delay is over is not checked", [
      { at: 0, ok: false, delay: 500, failures: 1 },
      { at: 200, ok: "gate", retry: 300 },
      { at: 500, ok: false, delay: 1000, failures: 2 },
      { at: 1499, ok: "gate", retry: 1 },
    ]],
    ["a good login clears the count", [
      { at: 0, ok: false, delay: 500, failures: 1 },
      { at: 500, ok: false, delay: 1000, failures: 2 },
      { at: 1500, ok: true, delay: 0, failures: 0 },
      { at: 1600, ok: false, delay: 500, failures: 1 },
    ]],
    ["failures long ago are forgotten", [
      { at: 0, ok: false, delay: 500, failures: 1 },
      { at: 500, ok: false, delay: 1000, failures: 2 },
      { at: 500 + LOGIN_FORGET_MS + 1, ok: false, delay: 500, failures: 1 },
    ]],
  ])("%s", (_name, steps) => {
    let s: LoginThrottle = initialThrottle();
    for (const st of steps) {
      const gate = loginGate(s, st.at);
      if (st.ok === "gate") {
        expect(gate).toEqual({ check: false, retryAfterMs: st.retry! });
        continue;
      }
      expect(gate).toEqual({ check: true });
      const r = afterLogin(s, st.ok, st.at);
      expect({ delay: r.delayMs, failures: r.state.failures }).toEqual({ delay: st.delay!, failures: st.failures! });
      s = r.state;
    }
  });
});

describe("the setup page itself", () => {
  const PASS = "page-test-passphrase";
  const make = (clock: FakeClock, lines: string[] = []) =>
    new SetupPage({
      hostname: "10.250.250.1",
      port: 80,
      passphrase: PASS,
      subnet: parseCidr("10.250.250.0/24"),
      clock,
      log: createLogger({ level: "warn", write: (l) => void lines.push(l) }),
      backend: { networks: () => [], statusLines: () => [["Mode", "ap"]], configure: async () => "ok" },
    });
  const get = (user: string, pass: string) => new Request("http://10.250.250.1/", { headers: { authorization: `Basic ${Buffer.from(`${user}:${pass}`).toString("base64")}` } });

  test.each([
    ["10.250.250.150", true],
    ["::ffff:10.250.250.7", true],
    ["10.250.251.1", false],
    ["192.168.77.10", false],
    ["::1", false],
    [undefined, false],
  ])("peer %p is an AP client: %p", (peer, ok) => expect(make(new FakeClock()).peerAllowed(peer)).toBe(ok));

  test("a peer outside the AP subnet gets 403 even with the right passphrase; an AP client gets the page", async () => {
    const lines: string[] = [];
    const page = make(new FakeClock(), lines);
    const lan = await page.handle(get("x", PASS), "192.168.77.10");
    expect(lan.status).toBe(403);
    expect(await lan.text()).toContain("only clients of the access point");
    expect(lines.join("")).toContain("refused 192.168.77.10");
    expect((await page.handle(get("x", PASS), "10.250.250.150")).status).toBe(200);
  });

  test("failed logins: the 401 waits on the clock, a login during the wait is 429, the right one after it works", async () => {
    const clock = new FakeClock();
    const page = make(clock);
    const peer = "10.250.250.150";
    // No credentials at all (a first visit) is no failed login.
    expect((await page.handle(new Request("http://10.250.250.1/"), peer)).status).toBe(401);
    let answered = false;
    const first = page.handle(get("x", "wrong-one"), peer).then((r) => ((answered = true), r));
    await clock.settle();
    expect(answered).toBe(false); // held for the delay
    const during = await page.handle(get("x", PASS), peer);
    expect(during.status).toBe(429); // not even the right passphrase is checked during the wait
    expect(during.headers.get("retry-after")).toBe("1");
    clock.advance(500);
    await clock.settle();
    expect((await first).status).toBe(401);
    // The second failure waits twice as long.
    let second = false;
    const p2 = page.handle(get("x", "wrong-two"), peer).then((r) => ((second = true), r));
    clock.advance(999);
    await clock.settle();
    expect(second).toBe(false);
    clock.advance(1);
    await clock.settle();
    expect((await p2).status).toBe(401);
    expect((await page.handle(get("x", PASS), peer)).status).toBe(200);
  });
});

describe("the fence and dnsmasq", () => {
  test("the AP address answers nothing that arrives on another interface (but lo)", () => {
    const r = renderNft(ap({ interface: "wlan1" }));
    const input = r.slice(r.indexOf("chain input"));
    const rules = input.split("\n").map((l) => l.trim()).filter((l) => /(accept|drop)$/.test(l));
    // First in the chain: before any accept could let a LAN host's SYN to the setup port in.
    expect(rules[0]).toBe('iifname != { "wlan1", "lo" } ip daddr 10.250.250.1 drop');
  });

  test("dnsmasq drops root to its own user", () => {
    const lines = renderDnsmasq(ap(), { leaseFile: "/s/leases" }).split("\n");
    expect(lines).toContain(`user=${DNSMASQ_USER}`);
    expect(lines).not.toContain("user=root");
    expect(DNSMASQ_USER).toBe("dnsmasq");
  });

  test.each([
    ["root:x:0:0:root:/root:/bin/bash\ndnsmasq:x:999:65534:dnsmasq:/var/lib/misc:/usr/sbin/nologin\n", true],
    ["root:x:0:0:root:/root:/bin/bash\n", false],
    ["dnsmasqx:x:1:1::/:/bin/false\n", false],
  ])("passwd has dnsmasq (%#)", (text, yes) => expect(passwdHasUser(text, "dnsmasq")).toBe(yes));
});

describe("the AP passphrase file", () => {
  test.each([
    ["abcdefghijkmnp\n", undefined],
    ["abcdefghijkmnp", undefined],
    ["abcdefghijkmnp\r\n", undefined],
    ["", "it is empty"],
    ["\n", "it is empty"],
    ["short\n", "it holds 5 characters, expected 12-63"],
    ["abcdefghijkmnp\nsecond line\n", "it has 2 lines, expected one"],
    ["abcdefghijkmnp\u0000\u0000\n", "it holds characters other than printable ASCII"],
    ["x".repeat(64), "it holds 64 characters, expected 12-63"],
  ])("%j: %p", (text, problem) => expect(passphraseFileProblem(text)).toBe(problem as never));

  test("generated once (0600), read back, and a damaged file is an error that leaves it as it is", () => {
    using tmp = tempDir("apsec-pass");
    const file = join(tmp.path, "ap-passphrase");
    const p = apPassphrase(ap(), tmp.path);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(apPassphrase(ap(), tmp.path)).toBe(p);
    // Power cut halfway through a copy, a bad edit: the file is damaged.
    writeFileSync(file, p.slice(0, 5) + "\n");
    chmodSync(file, 0o600);
    expect(() => apPassphrase(ap(), tmp.path)).toThrow(`the access point's passphrase file ${file} is damaged (it holds 5 characters, expected 12-63); the access point stays down.`);
    expect(readFileSync(file, "utf8")).toBe(p.slice(0, 5) + "\n"); // not replaced
    // A configured passphrase does not read the file at all.
    expect(apPassphrase(ap({ passphrase: "configured-passphrase" }), tmp.path)).toBe("configured-passphrase");
    expect(existsSync(file)).toBe(true);
  });

  test("the access point with a damaged file: logged as an error, in its status, and it does not start; nothing is run", async () => {
    using tmp = tempDir("apsec-ap");
    writeFileSync(join(tmp.path, "ap-passphrase"), "\n", { mode: 0o600 });
    const lines: string[] = [];
    const ran: string[][] = [];
    const ap = new AccessPoint(defaults().ap, tmp.path, async (argv) => (ran.push([...argv]), { code: 0, stdout: "", stderr: "" }), createLogger({ level: "error", write: (l) => void lines.push(l) }));
    expect(lines.join("")).toContain("ap-passphrase is damaged (it is empty)");
    expect(ap.status().error).toContain("is damaged (it is empty); the access point stays down");
    const e = (await ap.start().catch((e: Error) => e)) as Error;
    expect(e.message).toBe("access point on wlan0 did not start");
    expect((e.cause as Error).message).toContain("is damaged");
    expect(ran.filter((a) => a[0] === "nft" && a[1] === "-f")).toEqual([]); // no fence, no hostapd, no dnsmasq
    expect(readFileSync(join(tmp.path, "ap-passphrase"), "utf8")).toBe("\n");
  });
});
