// Debian's chromium driven by playwright-core, for the web GUI's tests. Never downloads a
// browser: without /usr/bin/chromium a test file skips saying why, and with CI=true fails
// (scripts/deps.sh installs it). One launch per test file; a context per simulated user.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { programsPresent } from "./proc.ts";
import { ROOT } from "./cli.ts";

export const CHROMIUM = "/usr/bin/chromium";
export const CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"];

export function chromiumPresent(file: string): boolean {
  return programsPresent(file, [CHROMIUM]);
}

export async function launchChromium(): Promise<Browser> {
  const { chromium } = await import("playwright-core");
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 60_000 });
}

/** Where the tests' screenshots go with GUI_SCREENSHOTS=1 (`make screenshots`): docs/ (the README shows them). */
export const SHOTS = join(ROOT, "docs");
/** Whether screenshots are kept in docs/; otherwise each is taken in a temp dir, checked and removed (the tree stays clean). */
export const KEEP_SHOTS = process.env.GUI_SCREENSHOTS === "1";

/** Takes a full-page screenshot and checks it is a non-empty PNG; returns its path in docs/ (GUI_SCREENSHOTS=1), else "" (removed). */
export async function shot(page: Page, name: string): Promise<string> {
  const dir = KEEP_SHOTS ? SHOTS : mkdtempSync(join(tmpdir(), "agent-gui-shot-"));
  try {
    mkdirSync(dir, { recursive: true });
    const path = join(dir, `gui-${name}.png`);
    await page.screenshot({ path, fullPage: true });
    const head = readFileSync(path).subarray(0, 8);
    if (statSync(path).size <= 8 || !head.equals(PNG_MAGIC)) throw new Error(`the screenshot ${name} is not a PNG (${statSync(path).size} bytes)`);
    return KEEP_SHOTS ? path : "";
  } finally {
    if (!KEEP_SHOTS) rmSync(dir, { recursive: true, force: true });
  }
}
const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Logs in through the page's form. */
export async function logIn(page: Page, url: string, user: string, password: string): Promise<void> {
  await page.goto(url);
  await page.fill("#login-form input[name=user]", user);
  await page.fill("#login-form input[name=password]", password);
  await page.click("#login");
  await page.waitForSelector("#logout");
}

/** Waits for `selector`, or fails with the error the page shows instead. */
export async function expectShown(page: Page, selector: string, timeout = 15_000): Promise<void> {
  await page.waitForSelector(`${selector}, #flash.err`, { timeout });
  const err = await page.$("#flash.err");
  if (err && !(await page.$(selector))) throw new Error(`the page says: ${await err.textContent()}`);
}
