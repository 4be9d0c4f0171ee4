// Timed-access grants live on the master (src/roles/master-grants.ts), not in a page's memory:
// granted in one browser, they are listed in a second one and after a reload; revoked from the
// second, they leave the first without a reload and the DNAT rule leaves the device. A grant
// made through the control socket (what `agent nat add --session` / `agent nat list` /
// `agent nat del` call) shows in the page too. Chromium against a relay, a master and an onsite
// daemon composed in this process (test/helpers/tunnel-trio.ts; the device's NAT service on its
// recording backend).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { formatNatListing } from "../src/cli/nat.ts";
import { UserStore } from "../src/gui/users.ts";
import type { MasterNatListing } from "../src/roles/api.ts";
import { chromiumPresent, expectShown, launchChromium, logIn, shot } from "./helpers/browser.ts";
import { Trio } from "./helpers/tunnel-trio.ts";
import { waitFor } from "./helpers/wait.ts";

const ok = chromiumPresent("test/gui-grants.test.ts");
const PASSWORD = "a long test password";

describe.skipIf(!ok)("web GUI: timed-access grants from the master's API", () => {
  let trio: Trio;
  let browser: Browser;
  let url = "";
  const contexts: BrowserContext[] = [];
  const page = async (): Promise<Page> => {
    const c = await browser.newContext({ viewport: { width: 1100, height: 800 } });
    contexts.push(c);
    const p = await c.newPage();
    await logIn(p, url + "#/sessions", "alice", PASSWORD);
    await p.waitForSelector("body[data-live=yes]");
    return p;
  };
  const masterGrants = async () => (await trio.masterApi.call("natList")) as unknown as MasterNatListing;
  const deviceRules = async () => (await trio.onsiteApi.call("natList")).rules;

  beforeAll(async () => {
    const [b, t] = await Promise.all([launchChromium(), Trio.start({ relay: { access: [{ masters: ["tech-1"], onsites: ["site-1"], nat: true }] }, master: { gui: "127.0.0.1:0" }, onsite: { location: "Cellar 2", nat: { min_ttl: "1s" } } })]);
    browser = b;
    trio = t;
    await new UserStore(join(trio.dir, "state-tech-1")).add("alice", PASSWORD);
    url = ((await trio.masterApi.call("status")).gui as { url: string }).url;
  }, 60_000);

  afterAll(async () => {
    for (const c of contexts) await c.close().catch(() => {});
    await browser?.close();
    await trio?.close();
  });

  test("granted in one browser: listed in a second and after a reload; revoked from the second: gone from both and from the device", async () => {
    const a = await page();
    const b = await page();
    await a.goto(url + "#/devices");
    await a.locator('.device[data-id="site-1"] button.connect').click();
    await a.fill("#connect-dialog textarea[name=forwards]", "0:192.168.1.10:443");
    await a.click("#connect-ok");
    await expectShown(a, ".session");
    await a.locator(".session button.grant").click();
    await a.fill("#grant-dialog input[name=port]", "8443");
    await a.fill("#grant-dialog input[name=to]", "192.168.1.10:443");
    await a.fill("#grant-dialog input[name=duration]", "10m");
    await a.click("#grant-ok");
    await expectShown(a, ".grant[data-rule]");
    const id = (await a.locator(".grant[data-rule]").getAttribute("data-rule"))!;
    expect(id).toBeTruthy();
    // The master holds it, with the device's rule: target, source, expiry.
    const held = (await masterGrants()).rules;
    expect(held.map((g) => [g.id, g.onsite, g.port, g.to, g.src, g.state])).toEqual([[id, "site-1", 8443, "192.168.1.10:443", "127.0.0.1/32", "active"]]);
    expect(held[0]!.remaining_ms).toBeGreaterThan(9 * 60_000);
    expect(formatNatListing(await masterGrants())).toContain(id);
    expect((await deviceRules()).map((r) => r.id)).toEqual([id]);
    // The second browser, without a reload: live over the event stream.
    const inB = b.locator(`.grant[data-rule="${id}"]`);
    await inB.waitFor({ timeout: 15_000 });
    expect(await inB.textContent()).toContain("192.168.1.10:443");
    expect(await inB.locator(".pill").textContent()).toBe("active");
    // The first, after a reload.
    await a.reload();
    await a.locator(`.grant[data-rule="${id}"]`).waitFor({ timeout: 15_000 });
    await shot(a, "master-grants");
    // Revoked from the second browser.
    await inB.locator("button.revoke").click();
    await inB.waitFor({ state: "detached", timeout: 15_000 });
    await a.locator(`.grant[data-rule="${id}"]`).waitFor({ state: "detached", timeout: 15_000 });
    expect((await masterGrants()).rules).toEqual([]);
    expect(await deviceRules()).toEqual([]);
    // The session itself stays: only the grant went.
    expect((await trio.masterApi.call("sessions")).filter((s) => s.state === "active")).toHaveLength(1);
  });

  test("what the CLI calls (nat add --session, nat list, nat del on the master's socket) shows in the page", async () => {
    const p = await page();
    const session = (await trio.masterApi.call("sessions")).find((s) => s.state === "active")!.session;
    const added = await trio.masterApi.call("natAdd", { session, port: "8080", to: "192.168.1.10:443", ttl: "5m" });
    const id = added.rule.id;
    const card = p.locator(`.grant[data-rule="${id}"]`);
    await card.waitFor({ timeout: 15_000 });
    expect(await card.textContent()).toContain("8080");
    const gone = await trio.masterApi.call("natDel", { id });
    expect(gone).toMatchObject({ id, onsite: "site-1", to: "192.168.1.10:443", port: 8080 });
    await card.waitFor({ state: "detached", timeout: 15_000 });
    expect(await deviceRules()).toEqual([]);
    // A grant the master does not hold is "not found", said with where to look.
    await expect(trio.masterApi.call("natDel", { id })).rejects.toThrow(/no grant .* on this master/);
  });

  test("a grant that expires on the device is shown expired, and the master lists it expired", async () => {
    const p = await page();
    const session = (await trio.masterApi.call("sessions")).find((s) => s.state === "active")!.session;
    const { rule } = await trio.masterApi.call("natAdd", { session, port: "8081", to: "192.168.1.10:443", ttl: "2s" });
    const card = p.locator(`.grant[data-rule="${rule.id}"]`);
    await card.waitFor({ timeout: 15_000 });
    await waitFor(async () => (await card.locator(".pill").textContent()) === "expired" || undefined, 20_000, "the grant shown expired");
    await waitFor(async () => (await deviceRules()).length === 0 || undefined, 20_000, "the rule gone from the device");
    await waitFor(async () => (await masterGrants()).rules.find((g) => g.id === rule.id)?.state === "expired" || undefined, 10_000, "the master lists it expired");
  });
});
