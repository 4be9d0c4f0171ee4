// The Wi-Fi client against a fake wpa_supplicant control socket that speaks the real
// protocol (datagrams, replies, ATTACH events), and netconnectd's NUL framing on a real
// control socket. No root needed.
import { afterAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { ControlServer, controlRequest } from "../src/control.ts";
import { createLogger } from "../src/log.ts";
import { answerNetconnectd, encodeNetconnectd, type NetconnectdBackend } from "../src/uplink/netconnectd.ts";
import { WifiClient, WpaClient } from "../src/uplink/wpa.ts";
import { tempDir } from "./helpers/cli.ts";
import { FakeWpaSupplicant } from "./helpers/fake-wpa.ts";

const tmp = tempDir("wf-wpa");
afterAll(() => tmp[Symbol.dispose]());
const log = createLogger({ level: "error", json: false });

function setup(name: string) {
  const fake = new FakeWpaSupplicant(join(tmp.path, `${name}.ctrl`));
  fake.cells = [
    { bssid: "02:00:00:00:01:01", freq: 2437, signal: -48, flags: "[WPA2-PSK-CCMP][ESS]", ssid: "Shop WiFi", psk: "correct horse" },
    { bssid: "02:00:00:00:01:02", freq: 5180, signal: -70, flags: "[ESS]", ssid: "Guest" },
  ];
  const ctl = new WpaClient(fake.path, join(tmp.path, `${name}-client`));
  return { fake, ctl, wifi: new WifiClient(ctl), [Symbol.dispose]: () => (ctl.close(), fake.close()) };
}

describe("wpa_supplicant client", () => {
  test("scan: SCAN, waits for CTRL-EVENT-SCAN-RESULTS, SCAN_RESULTS parsed", async () => {
    using s = setup("scan");
    const nets = await s.wifi.scan(5000);
    expect(nets.map((n) => [n.ssid, n.channel, n.security, n.signal, n.bssid])).toEqual([
      ["Shop WiFi", 6, "wpa2", -48, "02:00:00:00:01:01"],
      ["Guest", 36, "open", -70, "02:00:00:00:01:02"],
    ]);
    expect(s.fake.commands.slice(0, 3)).toEqual(["ATTACH", "SCAN", "SCAN_RESULTS"]);
  });

  test("configure + connect: ADD/SET/ENABLE/SAVE_CONFIG, SELECT_NETWORK, CTRL-EVENT-CONNECTED", async () => {
    using s = setup("connect");
    const { id, saved } = await s.wifi.upsert({ ssid: "Shop WiFi", psk: "correct horse", priority: 5 });
    expect(saved).toBe(true);
    const net = s.fake.networks.get(id)!;
    expect(net).toMatchObject({ ssid: "Shop WiFi", psk: "correct horse", priority: 5, enabled: true });
    const r = await s.wifi.connect(id, 5000);
    expect(r.bssid).toBe("02:00:00:00:01:01");
    expect(await s.wifi.status()).toMatchObject({ wpa_state: "COMPLETED", ssid: "Shop WiFi", bssid: "02:00:00:00:01:01" });
    // Configuring the same SSID again replaces it rather than piling up duplicates.
    await s.wifi.upsert({ ssid: "Shop WiFi", psk: "correct horse", priority: 6 });
    expect((await s.wifi.networks()).filter((n) => n.ssid === "Shop WiFi")).toHaveLength(1);
  });

  test("wrong passphrase: CTRL-EVENT-SSID-TEMP-DISABLED reason=WRONG_KEY rejects, naming no secret", async () => {
    using s = setup("wrongkey");
    const { id } = await s.wifi.upsert({ ssid: "Shop WiFi", psk: "battery staple", priority: 1 });
    const err = await s.wifi.connect(id, 5000).catch((e: Error) => e);
    expect((err as Error).message).toBe("wrong passphrase for Shop WiFi");
    expect((err as Error).message).not.toContain("battery");
  });

  test("network not found: CTRL-EVENT-NETWORK-NOT-FOUND rejects", async () => {
    using s = setup("notfound");
    const { id } = await s.wifi.upsert({ ssid: "Elsewhere", psk: "12345678", priority: 1 });
    await expect(s.wifi.connect(id, 5000)).rejects.toThrow("network not found");
  });

  test("several known networks: REASSOCIATE picks the highest priority one in range", async () => {
    using s = setup("prio");
    s.fake.cells.push({ bssid: "02:00:00:00:01:03", freq: 2412, signal: -80, flags: "[WPA2-PSK-CCMP][ESS]", ssid: "Backoffice", psk: "backoffice-pass" });
    await s.wifi.upsert({ ssid: "Shop WiFi", psk: "correct horse", priority: 1 });
    await s.wifi.upsert({ ssid: "Backoffice", psk: "backoffice-pass", priority: 9 });
    await s.wifi.upsert({ ssid: "Far away", psk: "far-away-pass", priority: 20 });
    await s.wifi.connect(undefined, 5000);
    expect((await s.wifi.status()).ssid).toBe("Backoffice");
  });

  test("no supplicant: a clear error, no hang", async () => {
    expect(() => new WpaClient(join(tmp.path, "absent.ctrl"), join(tmp.path, "absent-client"))).toThrow(/cannot reach wpa_supplicant at .*absent\.ctrl/);
  });

  test("a supplicant that stops answering: the request times out", async () => {
    using s = setup("silent");
    s.fake.sock.onMessage(() => {}); // swallows everything from now on
    await expect(s.ctl.request("PING", 200)).rejects.toThrow("did not answer PING within 0.2s");
  });
});

describe("netconnectd framing on the control socket", () => {
  const backend: NetconnectdBackend = {
    netconnectdStatus: () => ({ link: true, devs: ["eth0"], connections: { wifi: false, ap: false, wired: true }, wifi: { current_ssid: null, current_address: null, valid_config: false, present: false } }),
    startAp: async () => "started ap",
    stopAp: async () => "access point is not running",
    listWifi: async () => [],
    configWifi: async (ssid) => `configured wifi as "${ssid}"`,
    startWifi: async () => {
      throw new Error("wifi is not yet configured");
    },
    forgetWifi: async () => "wifi was not configured yet",
    reset: async () => "reset daemon",
  };

  async function withServer(fn: (path: string) => Promise<void>) {
    const path = join(tmp.path, `ctl-${Math.random().toString(36).slice(2)}.sock`);
    const srv = new ControlServer(path, log);
    srv.handle("ping", () => "pong");
    srv.nulProtocol(async (t) => encodeNetconnectd(await answerNetconnectd(backend, t)));
    await srv.start();
    try {
      await fn(path);
    } finally {
      srv.close();
    }
  }

  /** Sends raw bytes, returns everything until the server closes (or `ms`). */
  function raw(path: string, bytes: string, ms = 8000): Promise<{ text: string; closed: boolean }> {
    return new Promise((resolve) => {
      let text = "";
      const t = setTimeout(() => resolve({ text, closed: false }), ms);
      void Bun.connect({
        unix: path,
        socket: {
          open(s) {
            s.write(bytes);
          },
          data(_s, d) {
            text += d.toString();
          },
          close() {
            clearTimeout(t);
            resolve({ text, closed: true });
          },
        },
      });
    });
  }

  test("a request ending in NUL gets {result}+NUL and the connection closes", async () => {
    await withServer(async (p) => {
      const r = await raw(p, '{"status":{}}\0');
      expect(r.closed).toBe(true);
      expect(r.text.endsWith("\0")).toBe(true);
      expect(JSON.parse(r.text.slice(0, -1))).toEqual({ result: backend.netconnectdStatus() as never });
      expect(JSON.parse((await raw(p, '{"config_wifi":{"ssid":"A","psk":"12345678","force":true}}\0')).text.slice(0, -1))).toEqual({ result: 'configured wifi as "A"' });
      expect(JSON.parse((await raw(p, '{"start_wifi":{}}\0')).text.slice(0, -1))).toEqual({ error: "wifi is not yet configured" });
    });
  });

  test.each([
    ["broken JSON", "{status\0", "not valid JSON"],
    ["unknown command", '{"format_disk":{}}\0', 'unknown message "format_disk"'],
    ["two commands", '{"status":{},"reset":{}}\0', "exactly one key"],
  ])("%s gets an error", async (_n, bytes, msg) => {
    await withServer(async (p) => {
      const r = await raw(p, bytes);
      expect(r.closed).toBe(true);
      expect((JSON.parse(r.text.slice(0, -1)) as { error: string }).error).toContain(msg);
    });
  });

  test("no NUL: an error after the timeout, connection closed, server still serving", async () => {
    await withServer(async (p) => {
      const r = await raw(p, '{"status":{}}');
      expect(r.closed).toBe(true);
      expect(JSON.parse(r.text.slice(0, -1))).toEqual({ error: "request not terminated within 5s" });
      expect(await controlRequest(p, "ping")).toBe("pong");
    }, );
  }, 15_000);

  test("a client that disconnects before the answer does not break the server", async () => {
    await withServer(async (p) => {
      for (let i = 0; i < 5; i++) {
        const s = await Bun.connect({ unix: p, socket: { data() {} } });
        s.write('{"list_wifi":{"force":false}}\0');
        s.end();
      }
      const half = await Bun.connect({ unix: p, socket: { data() {} } });
      half.write('{"stat');
      half.end();
      await Bun.sleep(50);
      expect(await controlRequest(p, "ping")).toBe("pong");
      expect(JSON.parse((await raw(p, '{"reset":{}}\0')).text.slice(0, -1))).toEqual({ result: "reset daemon" });
    });
  });

  test("JSON-lines clients are unaffected", async () => {
    await withServer(async (p) => {
      expect(await controlRequest(p, "ping")).toBe("pong");
      const r = await raw(p, '{"cmd":"ping"}\n{"cmd":"ping"}\n', 500);
      expect(r.text).toBe('{"ok":true,"result":"pong"}\n{"ok":true,"result":"pong"}\n');
    });
  });
});
