// Pure pieces of the Wi-Fi client and the AP fallback: ctrl_iface parsers, configuration
// renderers, the fallback policy, netconnectd's request decoding, supervisor backoff.
import { describe, expect, test } from "bun:test";
import { defaults, resolveConfig, type ApConfig } from "../src/config.ts";
import { dhcpRange, generatePassphrase, renderDnsmasq, renderHostapd, renderNft } from "../src/uplink/apconf.ts";
import { decideAp, initialApState, type ApEvent, type ApState } from "../src/uplink/fallback.ts";
import { answerNetconnectd, parseNetconnectd, type NetconnectdBackend } from "../src/uplink/netconnectd.ts";
import { BACKOFF_MAX_MS, BACKOFF_MIN_MS, nextBackoff, sameProcess, STABLE_RUN_MS } from "../src/uplink/supervisor.ts";
import { channelOf, checkPsk, decodeSsid, networkCommands, parseEvent, parseScanResults, redact, securityOf } from "../src/uplink/wpa.ts";

const ap = (over: Partial<ApConfig> = {}): ApConfig => ({ ...defaults().ap, ...over });

describe("wpa_supplicant ctrl_iface parsing", () => {
  test.each([
    [2412, 1],
    [2437, 6],
    [2472, 13],
    [2484, 14],
    [5180, 36],
    [5745, 149],
    [5955, 1],
    [900, 0],
  ])("frequency %d MHz is channel %d", (f, c) => expect(channelOf(f)).toBe(c));

  test.each([
    ["[WPA2-PSK-CCMP][ESS]", "wpa2"],
    ["[WPA2-PSK+SAE-CCMP][ESS]", "wpa2/wpa3"],
    ["[WPA2-SAE-CCMP][ESS]", "wpa3"],
    ["[WPA-PSK-TKIP][ESS]", "wpa"],
    ["[WPA2-EAP-CCMP][ESS]", "enterprise"],
    ["[WEP][ESS]", "wep"],
    ["[ESS]", "open"],
  ])("flags %s are %s", (flags, sec) => expect(securityOf(flags)).toBe(sec as never));

  test.each([
    ["plain", "plain"],
    ["caf\\xc3\\xa9", "café"],
    ['quote\\"d', 'quote"d'],
    ["back\\\\slash", "back\\slash"],
    ["tab\\there", "tab\there"],
  ])("SSID %s decodes to %s", (raw, want) => expect(decodeSsid(raw)).toBe(want));

  test("SCAN_RESULTS: strongest first, one entry per SSID, hidden cells dropped", () => {
    const text =
      "bssid / frequency / signal level / flags / ssid\n" +
      "00:11:22:33:44:55\t2437\t-70\t[WPA2-PSK-CCMP][ESS]\tHome\n" +
      "00:11:22:33:44:56\t5180\t-50\t[WPA2-PSK-CCMP][ESS]\tHome\n" +
      "66:77:88:99:aa:bb\t2412\t-60\t[ESS]\tCaf\\xc3\\xa9 Libre\n" +
      "66:77:88:99:aa:bc\t2412\t-40\t[WPA2-PSK-CCMP][ESS]\t\n" +
      "garbage line\n";
    expect(parseScanResults(text)).toEqual([
      { ssid: "Home", bssid: "00:11:22:33:44:56", frequency: 5180, channel: 36, signal: -50, security: "wpa2", flags: "[WPA2-PSK-CCMP][ESS]" },
      { ssid: "Café Libre", bssid: "66:77:88:99:aa:bb", frequency: 2412, channel: 1, signal: -60, security: "open", flags: "[ESS]" },
    ]);
  });

  test.each([
    ["<2>CTRL-EVENT-CONNECTED - Connection to 00:11:22:33:44:55 completed [id=3 id_str=]", { type: "connected", bssid: "00:11:22:33:44:55", id: 3 }],
    ['<3>CTRL-EVENT-SSID-TEMP-DISABLED id=0 ssid="Home" auth_failures=1 duration=10 reason=WRONG_KEY', { type: "temp-disabled", id: 0, ssid: "Home", reason: "WRONG_KEY" }],
    ["<3>CTRL-EVENT-NETWORK-NOT-FOUND", { type: "not-found" }],
    ["<2>CTRL-EVENT-SCAN-RESULTS ", { type: "scan-results" }],
    ["<3>CTRL-EVENT-DISCONNECTED bssid=00:11:22:33:44:55 reason=3 locally_generated=1", { type: "disconnected", bssid: "00:11:22:33:44:55", reason: 3 }],
    ["<3>WPS-AP-AVAILABLE", { type: "other", text: "WPS-AP-AVAILABLE" }],
  ])("event %s", (raw, want) => expect(parseEvent(raw)).toEqual(want as never));

  test.each([
    ["12345678", undefined],
    ["a".repeat(63), undefined],
    ["f".repeat(64), undefined],
    ["short", "has 8 to 63 characters, this one has 5"],
    ["z".repeat(64), "has 8 to 63 characters, this one has 64"],
    ["pässwort123", "printable ASCII"],
  ])("PSK %s", (psk, problem) => {
    const r = checkPsk(psk);
    if (problem === undefined) expect(r).toBeUndefined();
    else {
      expect(r).toContain(problem);
      expect(r).not.toContain(psk); // never echoed
    }
  });

  test("SET_NETWORK commands: hex SSID, quoted passphrase, priority; redaction hides the secret", () => {
    const cmds = networkCommands(4, { ssid: 'My "Net"', psk: 'se"cret pass', priority: 7 });
    expect(cmds).toEqual([
      `SET_NETWORK 4 ssid ${Buffer.from('My "Net"').toString("hex")}`,
      "SET_NETWORK 4 scan_ssid 1",
      "SET_NETWORK 4 priority 7",
      "SET_NETWORK 4 key_mgmt WPA-PSK SAE",
      "SET_NETWORK 4 ieee80211w 1",
      'SET_NETWORK 4 psk "se"cret pass"',
    ]);
    expect(redact(cmds[5]!)).toBe("SET_NETWORK 4 psk [redacted]");
    expect(networkCommands(1, { ssid: "open", priority: 1 })).toContain("SET_NETWORK 1 key_mgmt NONE");
    expect(networkCommands(1, { ssid: "raw", psk: "a".repeat(64), priority: 1 })).toEqual(expect.arrayContaining(["SET_NETWORK 1 key_mgmt WPA-PSK", `SET_NETWORK 1 psk ${"a".repeat(64)}`]));
    expect(networkCommands(1, { ssid: "w3", psk: "12345678", priority: 1, security: "sae" })).toContain('SET_NETWORK 1 sae_password "12345678"');
  });
});

describe("AP configuration files", () => {
  test("hostapd: WPA2-PSK, country, channel, client isolation, field by field", () => {
    const conf = renderHostapd(ap({ interface: "wlan1", ssid: "Setup Ü", country: "DE", channel: 11 }), "abcdefghijkl");
    const kv = Object.fromEntries(conf.split("\n").filter((l) => l && !l.startsWith("#")).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
    expect(kv).toEqual({
      interface: "wlan1",
      driver: "nl80211",
      ssid: "Setup Ü",
      utf8_ssid: "1",
      country_code: "DE",
      ieee80211d: "1",
      hw_mode: "g",
      channel: "11",
      ieee80211n: "1",
      wmm_enabled: "1",
      auth_algs: "1",
      ignore_broadcast_ssid: "0",
      ap_isolate: "1",
      wpa: "2",
      rsn_pairwise: "CCMP",
      wpa_key_mgmt: "WPA-PSK",
      wpa_passphrase: "abcdefghijkl",
    });
  });

  test("hostapd: WPA3-SAE needs management frame protection; 5 GHz is hw_mode a", () => {
    const conf = renderHostapd(ap({ security: "sae", channel: 36 }), "abcdefghijkl");
    for (const l of ["wpa_key_mgmt=SAE", "ieee80211w=2", "sae_require_mfp=1", "sae_password=abcdefghijkl", "hw_mode=a"]) expect(conf).toContain(l + "\n");
    expect(conf).not.toContain("wpa_passphrase");
  });

  test.each([
    ["10.250.250.1/24", "10.250.250.100", "10.250.250.200", "255.255.255.0"],
    ["192.168.77.1/28", "192.168.77.2", "192.168.77.14", "255.255.255.240"],
    ["10.9.0.14/28", "10.9.0.1", "10.9.0.13", "255.255.255.240"],
    ["172.20.0.1/16", "172.20.0.100", "172.20.0.200", "255.255.0.0"],
  ])("DHCP range of %s", (cidr, start, end, mask) => {
    const cfg = resolveConfig([{ origin: { kind: "flag" }, raw: { ap: { address: cidr } } }]);
    expect(dhcpRange(cfg.ap.address)).toEqual({ start, end, netmask: mask });
  });

  test("dnsmasq: bound to the AP interface, range, AP address as router and DNS, captive DNS on and off", () => {
    const on = renderDnsmasq(ap({ interface: "wlan1" }), { leaseFile: "/s/leases" });
    for (const l of ["interface=wlan1", "bind-interfaces", "listen-address=10.250.250.1", "dhcp-range=10.250.250.100,10.250.250.200,255.255.255.0,1h", "dhcp-option=option:router,10.250.250.1", "dhcp-leasefile=/s/leases", "address=/#/10.250.250.1", "port=53", "no-resolv"])
      expect(on.split("\n")).toContain(l);
    const off = renderDnsmasq(ap({ captive_dns: false }), { leaseFile: "/s/leases" });
    expect(off.split("\n")).toContain("port=0");
    expect(off).not.toContain("address=/#/");
  });

  test("nft fence: forward dropped both ways, input only DHCP, DNS and the setup page", () => {
    const r = renderNft(ap({ interface: "wlan1", setup_port: 8080 }));
    expect(r).toContain('iifname "wlan1" drop');
    expect(r).toContain('oifname "wlan1" drop');
    expect(r).toContain("hook forward priority -300");
    expect(r).toContain('iifname "wlan1" ip daddr 10.250.250.1 tcp dport { 53, 8080 } accept');
  });

  const forwardRules = (r: string) => r.split("\n").filter((l) => / (accept|masquerade)$/.test(l) && !l.includes("dport") && !l.includes("icmp") && !l.includes('iifname "wlan1" ct state')).map((l) => l.trim());
  const SUB = 'iifname "wlan1" ip saddr 10.250.250.0/24';
  const BACK = 'oifname "wlan1" ip daddr 10.250.250.0/24 ct state established,related accept';
  test.each([
    ["default []: nothing forwarded, no NAT chain", [] as ApConfig["forward"], ["eth0", "wwan0"], [] as string[]],
    ['["lan"]: every interface but the AP and the uplinks', ["lan"], ["eth0", "wwan0"], [`${SUB} oifname != { "wlan1", "eth0", "wwan0" } accept`, BACK, `${SUB} oifname != { "wlan1", "eth0", "wwan0" } masquerade`]],
    ['["uplinks"]: the uplink interfaces only', ["uplinks"], ["eth0", "wwan0"], [`${SUB} oifname { "eth0", "wwan0" } accept`, BACK, `${SUB} oifname { "eth0", "wwan0" } masquerade`]],
    ['["uplinks"] without [[uplink]] entries: nothing', ["uplinks"], [], []],
    ['["lan"] without [[uplink]] entries: anything but the AP', ["lan"], [], [`${SUB} oifname != { "wlan1" } accept`, BACK, `${SUB} oifname != { "wlan1" } masquerade`]],
    ['["lan", "uplinks"], the AP interface also an uplink name: never forwarded to itself', ["lan", "uplinks"], ["eth0", "wlan1"], [
      `${SUB} oifname != { "wlan1", "eth0" } accept`,
      `${SUB} oifname { "eth0" } accept`,
      BACK,
      `${SUB} oifname != { "wlan1", "eth0" } masquerade`,
      `${SUB} oifname { "eth0" } masquerade`,
    ]],
  ])("nft fence with forward %s", (_n, forward, uplinks, rules) => {
    const r = renderNft(ap({ interface: "wlan1", forward: forward as ApConfig["forward"] }), uplinks);
    expect(forwardRules(r)).toEqual(rules);
    expect(r.includes("hook postrouting")).toBe(rules.length > 0);
    // The catch-all drops stay last in the forward chain whatever is opened.
    const fwd = r.slice(r.indexOf("chain forward"), r.indexOf("chain input"));
    expect(fwd.trim().split("\n").slice(-3).map((l) => l.trim())).toEqual(['iifname "wlan1" drop', 'oifname "wlan1" drop', "}"]);
  });

  test.each([
    [["lan"], ["lan"]],
    [["uplinks", "lan", "uplinks"], ["uplinks", "lan"]],
    [[], []],
  ])("[ap] forward = %j is accepted as %j", (raw, want) => {
    expect(resolveConfig([{ origin: { kind: "flag" }, raw: { ap: { forward: raw } } }]).ap.forward).toEqual(want as ApConfig["forward"]);
  });

  test("[ap] forward defaults to nothing", () => expect(defaults().ap.forward).toEqual([]));

  test("generated passphrases: 16 characters, no look-alikes, different each time", () => {
    const a = generatePassphrase();
    expect(a).toMatch(/^[a-km-zA-HJ-NP-Z2-9]{16}$/);
    expect(generatePassphrase()).not.toBe(a);
  });

  test.each([
    [{ passphrase: "short" }, "passphrase of 12-63 printable ASCII characters (value not shown)"],
    [{ retry: "1s" }, "ap.retry"],
    [{ setup_port: 0 }, "expected a whole number 1-65535, got 0"],
    [{ enabled: "yes" }, "ap.enabled"],
    [{ forward: ["wan"] }, 'ap.forward: item 1: expected one of lan, uplinks, got "wan"'],
    [{ forward: "lan" }, 'ap.forward: expected a list of "lan" and/or "uplinks"'],
  ])("bad [ap] %j is refused", (raw, msg) => {
    expect(() => resolveConfig([{ origin: { kind: "flag" }, raw: { ap: raw } }])).toThrow(msg);
  });
});

describe("AP fallback policy", () => {
  const o = { after: 60_000, retry: 300_000, stopOnUplink: true };
  const run = (events: [number, ApEvent][], s: ApState = initialApState(0), opts = o) => {
    const actions: string[] = [];
    for (const [t, ev] of events) {
      const d = decideAp(s, ev, t, opts);
      s = d.state;
      actions.push(...d.actions.map((a) => `${t}:${a.type}`));
    }
    return { s, actions };
  };
  const down = (known = 0): ApEvent => ({ type: "tick", healthy: false, known });
  const up: ApEvent = { type: "tick", healthy: true, known: 0 };

  test.each<[string, [number, ApEvent][], string[], ApState["mode"]]>([
    ["no uplink from the start: AP after `after`", [[0, down()], [59_999, down()], [60_000, down()]], ["60000:start-ap"], "ap"],
    ["healthy for a while: the clock starts at the loss", [[0, up], [30_000, up], [31_000, down()], [90_000, down()], [91_000, down()]], ["91000:start-ap"], "ap"],
    ["a healthy tick in between resets the clock", [[0, down()], [50_000, up], [60_000, down()], [100_000, down()]], [], "client"],
    ["healthy uplink ends the AP", [[60_000, down()], [61_000, up]], ["60000:start-ap", "61000:stop-ap"], "client"],
    ["known network: retried every `retry`", [[60_000, down(1)], [359_999, down(1)], [360_000, down(1)]], ["60000:start-ap", "360000:stop-ap", "360000:try-wifi"], "trying"],
    ["no known network: never leaves the AP to retry", [[60_000, down()], [400_000, down()]], ["60000:start-ap"], "ap"],
    ["failed try returns to the AP", [[60_000, down(1)], [360_000, down(1)], [361_000, { type: "try_result", ok: false }]], ["60000:start-ap", "360000:stop-ap", "360000:try-wifi", "361000:start-ap"], "ap"],
    ["good try ends AP mode", [[60_000, down(1)], [360_000, down(1)], [361_000, { type: "try_result", ok: true }]], ["60000:start-ap", "360000:stop-ap", "360000:try-wifi"], "client"],
    ["configured in AP mode: leave the AP and try now", [[60_000, down()], [70_000, { type: "configured" }]], ["60000:start-ap", "70000:stop-ap", "70000:try-wifi"], "trying"],
    ["configured in client mode: try without an AP; failure stays client", [[0, { type: "configured" }], [1000, { type: "try_result", ok: false }]], ["0:try-wifi"], "client"],
    ["manual start holds against health and retries", [[0, { type: "start_ap" }], [1000, up], [900_000, down(1)]], ["0:start-ap"], "ap"],
    ["manual stop restarts the clock", [[60_000, down()], [61_000, { type: "stop_ap" }], [120_000, down()], [121_000, down()]], ["60000:start-ap", "61000:stop-ap", "121000:start-ap"], "ap"],
    ["reset: AP at the next unhealthy tick", [[0, up], [1000, { type: "reset" }], [1500, down()]], ["1500:start-ap"], "ap"],
    ["configured during a try: one more try before the AP returns", [[60_000, down()], [70_000, { type: "configured" }], [71_000, { type: "configured" }], [72_000, { type: "try_result", ok: false }], [73_000, { type: "try_result", ok: false }]], ["60000:start-ap", "70000:stop-ap", "70000:try-wifi", "72000:try-wifi", "73000:start-ap"], "ap"],
    ["a second start_ap does nothing", [[0, { type: "start_ap" }], [1, { type: "start_ap" }]], ["0:start-ap"], "ap"],
  ])("%s", (_name, events, want, mode) => {
    const r = run(events);
    expect(r.actions).toEqual(want);
    expect(r.s.mode).toBe(mode);
  });

  test("stop_on_uplink = false: a healthy uplink leaves the AP up", () => {
    const r = run([[60_000, down()], [61_000, up]], initialApState(0), { ...o, stopOnUplink: false });
    expect(r.actions).toEqual(["60000:start-ap"]);
  });
});

describe("netconnectd requests", () => {
  test.each([
    ['{"status":{}}', { cmd: "status", params: {} }],
    ['{"list_wifi":{"force":true}}', { cmd: "list_wifi", params: { force: true } }],
    ['{"config_wifi":{"ssid":"x","psk":"12345678"}}', { cmd: "config_wifi", params: { ssid: "x", psk: "12345678" } }],
    ['{"start_ap":null}', { cmd: "start_ap", params: {} }],
  ])("%s", (text, want) => expect(parseNetconnectd(text)).toEqual(want as never));

  test.each([
    ["{nope", "not valid JSON"],
    ["[1]", "JSON object"],
    ['{"a":{},"b":{}}', "exactly one key"],
    ['{"explode":{}}', 'unknown message "explode"'],
    ['{"status":3}', "parameters of status must be an object"],
  ])("%s is refused", (text, msg) => {
    const r = parseNetconnectd(text);
    expect(r).toBeInstanceOf(Error);
    expect((r as Error).message).toContain(msg);
  });

  test("backend errors become {error}, bad parameters never reach it", async () => {
    const calls: string[] = [];
    const b = {
      netconnectdStatus: () => ({ link: false, devs: [], connections: { wifi: false, ap: true, wired: false }, wifi: { current_ssid: null, current_address: null, valid_config: false, present: true } }),
      startAp: async () => "started ap",
      stopAp: async () => {
        throw new Error("boom");
      },
      listWifi: async (f: boolean) => (calls.push(`list ${f}`), []),
      configWifi: async (s: string) => (calls.push(`config ${s}`), "ok"),
      startWifi: async () => "connected to wifi",
      forgetWifi: async () => "forgot configured wifi",
      reset: async () => "reset daemon",
    } satisfies NetconnectdBackend;
    expect(await answerNetconnectd(b, '{"stop_ap":{}}')).toEqual({ error: "boom" });
    expect(await answerNetconnectd(b, '{"list_wifi":{"force":"yes"}}')).toEqual({ error: "force must be true or false" });
    expect(await answerNetconnectd(b, '{"config_wifi":{"psk":"12345678"}}')).toEqual({ error: "Missing mandatory parameters: ['ssid'] (a string)" });
    expect(await answerNetconnectd(b, '{"list_wifi":{}}')).toEqual({ result: [] });
    expect(calls).toEqual(["list false"]);
  });
});

describe("supervisor", () => {
  test("backoff doubles up to the cap and resets after a stable run", () => {
    let b: number | undefined;
    const seen: number[] = [];
    for (let i = 0; i < 10; i++) seen.push((b = nextBackoff(b, 10)));
    expect(seen.slice(0, 4)).toEqual([BACKOFF_MIN_MS, BACKOFF_MIN_MS * 2, BACKOFF_MIN_MS * 4, BACKOFF_MIN_MS * 8]);
    expect(seen.at(-1)).toBe(BACKOFF_MAX_MS);
    expect(nextBackoff(BACKOFF_MAX_MS, STABLE_RUN_MS)).toBe(BACKOFF_MIN_MS);
  });

  test.each([
    [["/usr/sbin/hostapd", "/s/ap/hostapd.conf"], ["hostapd", "/s/ap/hostapd.conf"], true],
    [["/bin/sh", "/t/hostapd", "/s/ap/hostapd.conf"], ["/t/hostapd", "/s/ap/hostapd.conf"], true],
    [["/usr/sbin/hostapd", "/other/hostapd.conf"], ["hostapd", "/s/ap/hostapd.conf"], false],
    [["/usr/bin/hostapd-look-alike", "/s/ap/hostapd.conf"], ["hostapd", "/s/ap/hostapd.conf"], false],
    [["sleep", "100"], ["hostapd", "/s/ap/hostapd.conf"], false],
  ])("cmdline %j is our %j: %p", (cmdline, argv, want) => expect(sameProcess(cmdline, argv)).toBe(want));
});
