// The master's console driving seed 001's timed access, in chromium, against a relay, a master
// and an onsite daemon composed in this process (test/helpers/tunnel-trio.ts: real TLS, mux,
// relay routing and sessions; the NAT service on its recording backend). Grant timed access and
// see it expire (on the page and on the device); a lost connection shows and recovers. The
// packet tunnel (routed, switched to bridged, disconnected) is driven against real TUN/TAP
// devices in test/gui-tunnel-real.test.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { UserStore } from "../src/gui/users.ts";
import { chromiumPresent, expectShown, launchChromium, logIn, shot } from "./helpers/browser.ts";
import { Trio } from "./helpers/tunnel-trio.ts";
import { waitFor } from "./helpers/wait.ts";

const ok = chromiumPresent("test/gui-tunnel.test.ts");
const PASSWORD = "a long test password";

describe.skipIf(!ok)("web GUI: tunnels and timed access", () => {
  let trio: Trio;
  let browser: Browser;
  let p: Page;
  let url = "";

  beforeAll(async () => {
    // A fixed port, so the GUI can be stopped and started again where the page expects it.
    const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = probe.port;
    probe.stop(true);
    const [b, t] = await Promise.all([launchChromium(), Trio.start({ relay: { access: [{ masters: ["tech-1"], onsites: ["site-1"], nat: true }] }, master: { gui: `127.0.0.1:${port}` }, onsite: { location: "Cellar 2", nat: { min_ttl: "1s" }, tunnel: { enabled: true, bridged: true } } })]);
    browser = b;
    trio = t;
    await new UserStore(join(trio.dir, "state-tech-1")).add("alice", PASSWORD);
    url = ((await trio.masterApi.call("status")).gui as { url: string }).url;
    p = await (await browser.newContext({ viewport: { width: 1100, height: 800 } })).newPage();
    await logIn(p, url + "#/devices", "alice", PASSWORD);
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await trio?.close();
  });

  test("grant timed access through the device's DNAT, see its expiry, see it expire", async () => {
    await p.goto(url + "#/devices");
    await p.locator('.device[data-id="site-1"] button.connect').click();
    await p.fill("#connect-dialog textarea[name=forwards]", "0:192.168.1.10:443");
    await p.click("#connect-ok");
    await expectShown(p, ".session");
    const card = p.locator(".session");
    await card.locator("button.grant").click();
    await p.fill("#grant-dialog input[name=port]", "8443");
    await p.fill("#grant-dialog input[name=to]", "192.168.1.10:443");
    await p.fill("#grant-dialog input[name=duration]", "4s");
    await p.click("#grant-ok");
    await expectShown(p, ".grant[data-rule]");
    const grant = p.locator(".grant[data-rule]");
    expect(await grant.locator(".pill").textContent()).toBe("active");
    const text = (await grant.textContent())!;
    expect(text).toContain("192.168.1.10:443");
    expect(text).toMatch(/expires\d{4}-\d\d-\d\dT/);
    // The device holds the rule, for the master's public address as the relay saw it.
    const rules = (await trio.onsiteApi.call("natList")).rules;
    expect(rules.map((r) => [r.port, r.to, r.src])).toEqual([[8443, "192.168.1.10:443", "127.0.0.1/32"]]);
    await shot(p, "master-timed-access");
    await waitFor(async () => (await grant.locator(".pill").textContent()) === "expired" || undefined, 20_000, "the grant shown expired");
    await waitFor(async () => (await trio.onsiteApi.call("natList")).rules.length === 0 || undefined, 20_000, "the rule gone from the device");
  });

  test("a lost connection shows in the page, and the page recovers when the GUI is back", async () => {
    await p.goto(url + "#/sessions");
    await p.waitForSelector("body[data-live=yes]");
    const gui = (trio.master as unknown as { components: { name: string; close(): Promise<void>; start(): Promise<void> }[] }).components.find((c) => c.name === "gui")!;
    await gui.close();
    await p.waitForSelector("#banner:not([hidden])", { timeout: 15_000 });
    expect(await p.textContent("#banner")).toContain("lost");
    await shot(p, "connection-lost");
    await gui.start();
    await p.waitForSelector("#banner", { state: "hidden", timeout: 20_000 });
    await p.waitForSelector("body[data-live=yes]");
    // Still logged in, still live: a session opened elsewhere shows up without a reload.
    const s = await trio.masterApi.call("connect", { onsite: "site-1", forwards: ["127.0.0.1:0:192.168.1.10:80"] });
    await p.locator(`.session[data-session="${s.session}"]`).waitFor({ timeout: 15_000 });
  });
});
