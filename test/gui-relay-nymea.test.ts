// The relay's status page shows its nymea listener's counts, and they follow real nymea clients
// without a reload: a relay process with [nymea] (plain TCP on loopback, a tokens file), real
// clients speaking nymea-remoteproxy's protocol (test/fixtures/nymea/clients.ts), and Debian's
// chromium on the relay's GUI. Two clients connect (clients 2), authenticate with one token and
// nonce and are paired (tunnels 1), then leave (clients 0, tunnels 0, 1 tunnel since start).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { UserStore } from "../src/gui/users.ts";
import { auth, TcpClient } from "./fixtures/nymea/clients.ts";
import { chromiumPresent, launchChromium, logIn, shot } from "./helpers/browser.ts";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { waitFor } from "./helpers/wait.ts";

const ok = chromiumPresent("test/gui-relay-nymea.test.ts");
const PASSWORD = "a long test password";
const TOKEN = "token-" + crypto.randomUUID();

describe.skipIf(!ok)("relay GUI: the nymea listener's counts", () => {
  let fleet: Fleet;
  let browser: Browser;
  let relay: Daemon;
  let p: Page;
  let port = 0;
  const clients: TcpClient[] = [];

  /** The nymea card's rows as the page shows them. */
  const card = async (): Promise<Record<string, string>> => {
    const dts = await p.locator("#nymea-card dt").allTextContents();
    const dds = await p.locator("#nymea-card dd").allTextContents();
    return Object.fromEntries(dts.map((k, i) => [k, dds[i] ?? ""]));
  };
  const shows = (want: Record<string, string>) => {
    let seen: Record<string, string> = {};
    return waitFor(async () => {
      seen = await card();
      return Object.entries(want).every(([k, v]) => seen[k] === v) || undefined;
    }, 15_000, () => `the nymea card to show ${JSON.stringify(want)}; it shows ${JSON.stringify(seen)}`);
  };

  beforeAll(async () => {
    const [b, f] = await Promise.all([launchChromium(), Fleet.create()]);
    browser = b;
    fleet = f;
    const tokens = join(fleet.dir, "nymea-tokens");
    writeFileSync(tokens, `${TOKEN}\n`);
    const conf = join(fleet.dir, "relay.toml");
    writeFileSync(conf, `gui = "127.0.0.1:0"\n\n[nymea]\ntcp = "127.0.0.1:0"\nplain = true\ntokens = "${tokens}"\n`);
    await new UserStore(join(fleet.dir, "state-relay-1")).add("alice", PASSWORD);
    relay = await fleet.startRelay("relay-1", ["--config", conf]);
    const st = await fleet.status(relay);
    port = Number(((st.relay as { nymea: { tcp: string } }).nymea.tcp).split(":").pop());
    const url = (st.gui as { url: string }).url;
    p = await (await browser.newContext({ viewport: { width: 1100, height: 800 } })).newPage();
    await logIn(p, url + "#/status", "alice", PASSWORD);
    await p.waitForSelector("body[data-live=yes]");
  }, 60_000);

  afterAll(async () => {
    for (const c of clients) if (!c.closed) c.end();
    await browser?.close();
    await fleet?.close();
  });

  test("clients, pairing and leaving move the numbers on the page, live", async () => {
    expect(port).toBeGreaterThan(0);
    await shows({ clients: "0", authenticated: "0", tunnels: "0", total_tunnels: "0" });
    const a = await TcpClient.connect(port, false);
    const b = await TcpClient.connect(port, false);
    clients.push(a, b);
    await shows({ clients: "2", authenticated: "0", tunnels: "0" });
    const nonce = crypto.randomUUID();
    expect((await auth(a, TOKEN, { nonce, name: "box" })).params.authenticationError).toBe("AuthenticationErrorNoError");
    expect((await auth(b, TOKEN, { nonce, name: "app" })).params.authenticationError).toBe("AuthenticationErrorNoError");
    await shows({ clients: "2", tunnels: "1", total_tunnels: "1" });
    await shot(p, "relay-nymea");
    // The page says what the relay's own status says.
    const n = ((await fleet.status(relay)).relay as { nymea: Record<string, number> }).nymea;
    expect(n).toMatchObject({ clients: 2, tunnels: 1, total_tunnels: 1 });
    a.end();
    b.end();
    await shows({ clients: "0", tunnels: "0", total_tunnels: "1", total_clients: "2" });
  });
});
