// The web GUI in a real browser (Debian's chromium, playwright-core) against a real fleet of
// agent processes on 127.0.0.1 (test/helpers/fleet.ts): the master's console (log in, the
// device with its location, a forward to a LAN web page opened in a new tab, a session that
// disappears from a second browser without a reload) and the relay's fleet view (no user yet,
// then kick a device and watch it go offline). Screenshots of every page go to docs/.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { UserStore } from "../src/gui/users.ts";
import { chromiumPresent, launchChromium, logIn, shot } from "./helpers/browser.ts";
import { BUN, MAIN } from "./helpers/cli.ts";
import { Fleet, type Daemon } from "./helpers/fleet.ts";
import { waitFor } from "./helpers/wait.ts";

const ok = chromiumPresent("test/gui-browser.test.ts");
const LOCATION = "Royal Champagne, cellar 2";
const PASSWORD = "a long test password";

describe.skipIf(!ok)("web GUI in chromium", () => {
  let fleet: Fleet;
  let browser: Browser;
  let relay: Daemon;
  let master: Daemon;
  let web: ReturnType<typeof Bun.serve>;
  let masterUrl = "";
  let relayUrl = "";
  const contexts: BrowserContext[] = [];

  const guiUrl = async (d: Daemon) => ((await fleet.status(d)).gui as { url: string }).url;
  const page = async (): Promise<Page> => {
    const c = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    contexts.push(c);
    return c.newPage();
  };

  beforeAll(async () => {
    web = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("<!doctype html><title>Router web UI</title><h1>Router web UI</h1>", { headers: { "content-type": "text/html" } }) });
    const [b, f] = await Promise.all([launchChromium(), Fleet.create()]);
    browser = b;
    fleet = f;
    relay = await fleet.startRelay("relay-1", ["--gui", "127.0.0.1:0"]);
    // The device's service catalogue: the LAN web page and an ssh server, as its config declares them.
    const conf = join(fleet.dir, "site-1.toml");
    await Bun.write(conf, `[[service]]\nname = "Router web UI"\ntarget = "127.0.0.1:${web.port}"\nkind = "http"\n\n[[service]]\nname = "Gateway shell"\ntarget = "127.0.0.1:22"\nkind = "ssh"\n`);
    await fleet.startOnsite("site-1", ["--config", conf, "--allow", "127.0.0.1/32", "--location", LOCATION]);
    // The master's user, made with the CLI as a person would (password on stdin), before it starts.
    const add = Bun.spawn([BUN, MAIN, "gui", "user", "add", "alice", "--state-dir", join(fleet.dir, "state-tech-1")], { stdin: new Blob([PASSWORD + "\n"]), stdout: "pipe", stderr: "pipe" });
    expect({ code: await add.exited, err: await new Response(add.stderr).text() }).toEqual({ code: 0, err: "" });
    master = await fleet.startMaster("tech-1", ["--gui", "127.0.0.1:0"]);
    await fleet.waitConnected(master);
    masterUrl = await guiUrl(master);
    relayUrl = await guiUrl(relay);
  }, 90_000);

  afterAll(async () => {
    for (const c of contexts) await c.close().catch(() => {});
    await browser?.close();
    await fleet?.close();
    web?.stop(true);
  });

  test("the master: log in, see the device with its location", async () => {
    const p = await page();
    await p.goto(masterUrl);
    await p.waitForSelector("#login-form");
    await shot(p, "login");
    // A wrong password first: said, and no way in.
    await p.fill("input[name=user]", "alice");
    await p.fill("input[name=password]", "not the password");
    await p.click("#login");
    await p.waitForSelector("#login-error:not([hidden])", { timeout: 20_000 });
    expect(await p.textContent("#login-error")).toContain("wrong user name or password");
    await logIn(p, masterUrl, "alice", PASSWORD);
    await p.waitForSelector("#relay-card .pill.up");
    expect(await p.textContent("#status-card")).toContain("uptime");
    await shot(p, "master-status");
    await p.click("nav a[data-page=devices]");
    const card = p.locator('.device[data-id="site-1"]');
    await card.waitFor();
    expect(await card.locator(".loc").textContent()).toBe(LOCATION);
    expect(await card.locator(".pill").textContent()).toBe("online");
    await shot(p, "master-devices");
    // The search filters in the page.
    await p.fill("#search", "no such place");
    expect(await card.isHidden()).toBe(true);
    await p.fill("#search", "champagne");
    expect(await card.isVisible()).toBe(true);
  });

  test("connect with a forward, open the LAN page in a new tab; a second browser sees the session go without a reload", async () => {
    const p = await page();
    await logIn(p, masterUrl + "#/devices", "alice", PASSWORD);
    const watcher = await page();
    await logIn(watcher, masterUrl + "#/sessions", "alice", PASSWORD);
    await watcher.waitForSelector("#no-sessions");
    await watcher.evaluate("window.__sameDocument = true");

    await p.locator('.device[data-id="site-1"] button.connect').click();
    await p.fill("#connect-dialog textarea[name=forwards]", `127.0.0.1:0:127.0.0.1:${web.port}`);
    await p.fill("#connect-dialog input[name=ttl]", "30");
    await shot(p, "master-connect");
    await p.click("#connect-ok");
    const session = p.locator(".session");
    await session.waitFor();
    const id = await session.getAttribute("data-session");
    expect(id).toMatch(/\S/);
    expect(await session.locator(".countdown").textContent()).toMatch(/min/);
    await shot(p, "master-sessions");

    // The forward's page, in a new tab, through the session.
    const [tab] = await Promise.all([p.waitForEvent("popup"), session.locator(".forward a").click()]);
    await tab.waitForLoadState();
    expect(await tab.title()).toBe("Router web UI");
    await tab.close();

    // The other browser got the session pushed, and sees it go, without a reload.
    await watcher.locator(`.session[data-session="${id}"]`).waitFor({ timeout: 15_000 });
    await session.locator("button.disconnect").click();
    await watcher.locator(`.session[data-session="${id}"]`).waitFor({ state: "detached", timeout: 15_000 });
    expect(await watcher.evaluate("window.__sameDocument")).toBe(true);
    await p.locator(`.session[data-session="${id}"]`).waitFor({ state: "detached" });
  });

  test("the service catalogue: one click opens the LAN web service through a forward in a new tab; ssh shows its command; extend", async () => {
    const p = await page();
    await logIn(p, masterUrl + "#/services", "alice", PASSWORD);
    const row = p.locator('.svc[data-service="Router web UI"]');
    await row.waitFor();
    expect(await p.locator("#services .loc").first().textContent()).toBe(LOCATION);
    await shot(p, "master-services");
    const [tab] = await Promise.all([p.waitForEvent("popup"), row.locator("button.open").click()]);
    await tab.waitForURL(/^http:\/\/127\.0\.0\.1:\d+\/$/, { timeout: 15_000 });
    expect(await tab.title()).toBe("Router web UI");
    const port = Number(new URL(tab.url()).port);
    expect(port).not.toBe(web.port); // through the forward, not the service itself
    await tab.close();
    await p.locator('.svc[data-service="Gateway shell"] button.open').click();
    await p.locator(".msg.ready code").waitFor();
    expect(await p.locator(".msg.ready code").textContent()).toMatch(/^ssh -p \d+ .*127\.0\.0\.1/);
    // Both forwards are sessions of this master; one is extended by an hour.
    await p.click("nav a[data-page=sessions]");
    const card = p.locator(".session").first();
    await card.waitFor();
    const id = (await card.getAttribute("data-session"))!;
    const before = (await fleet.json<{ session: string; expires: string }[]>(master, ["sessions"])).find((s) => s.session === id)!.expires;
    await card.locator("button.extend").click();
    await waitFor(async () => {
      const now = (await fleet.json<{ session: string; expires: string }[]>(master, ["sessions"])).find((s) => s.session === id)!.expires;
      return Date.parse(now) - Date.parse(before) > 50 * 60_000 || undefined;
    }, 15_000, "the session extended by an hour");
    for (const s of await fleet.json<{ session: string; state: string }[]>(master, ["sessions"])) if (s.state !== "closed") await fleet.cli(master, ["disconnect", s.session]);
    await p.locator(".session").first().waitFor({ state: "detached", timeout: 15_000 });
  });

  test("the relay: no user yet says how to make one; then kick a device and watch it go offline", async () => {
    const p = await page();
    await p.goto(relayUrl);
    await p.waitForSelector("#setup");
    expect(await p.textContent("#setup")).toContain("agent gui user add NAME");
    await shot(p, "setup");
    await new UserStore(join(fleet.dir, "state-relay-1")).add("ops", PASSWORD);
    await logIn(p, relayUrl, "ops", PASSWORD);
    const card = p.locator('.device[data-id="site-1"]');
    await card.waitFor();
    expect(await card.locator(".loc").textContent()).toBe(LOCATION);
    await waitFor(async () => (await card.locator(".pill").textContent()) === "online" || undefined, 15_000, "site-1 online in the fleet view");
    await shot(p, "relay-fleet");
    // Every state the card shows from now on, however briefly (the device dials again after its backoff).
    await p.evaluate(`(() => {
      const seen = (window.__seen = []);
      const note = () => {
        const t = document.querySelector('.device[data-id="site-1"] .pill')?.textContent;
        if (t && seen[seen.length - 1] !== t) seen.push(t);
      };
      new MutationObserver(note).observe(document.body, { subtree: true, childList: true, characterData: true });
    })()`);
    await card.locator("button.kick").click();
    await waitFor(async () => {
      const seen = (await p.evaluate("window.__seen")) as string[];
      return seen.some((s) => s !== "online") || undefined;
    }, 15_000, "site-1 shown offline after the kick");
    const refusalsOrKick = await fleet.json<{ kind: string }[]>(relay, ["devices", "history", "site-1"]).catch(() => []);
    expect(refusalsOrKick.length).toBeGreaterThan(0);
    await p.click("nav a[data-page=sessions]");
    await p.waitForSelector("h1:text('Sessions')");
    await shot(p, "relay-sessions");
    await p.click("nav a[data-page=refusals]");
    await p.waitForSelector("h1:text('Refusals')");
    await shot(p, "relay-refusals");
    await p.click("nav a[data-page=status]");
    await p.waitForSelector("#nymea-card");
    await shot(p, "relay-status");
  });

  test("on a phone screen the devices page fits the width", async () => {
    const c = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    contexts.push(c);
    const p = await c.newPage();
    await logIn(p, masterUrl + "#/devices", "alice", PASSWORD);
    await p.locator('.device[data-id="site-1"]').waitFor();
    const overflow = (await p.evaluate("document.documentElement.scrollWidth - window.innerWidth")) as number;
    expect(overflow).toBeLessThanOrEqual(0);
    await shot(p, "phone-devices");
  });
});
