// Debian's chromium driven by playwright-core, for the web GUI's tests. Never downloads a
// browser: without /usr/bin/chromium a test file skips saying why, and with CI=true fails
// (scripts/deps.sh installs it). One launch per test file; a context per simulated user.
import { mkdirSync } from "node:fs";
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

/** Where the tests' screenshots go: docs/ (the README shows them). */
export const SHOTS = join(ROOT, "docs");

export async function shot(page: Page, name: string): Promise<string> {
  mkdirSync(SHOTS, { recursive: true });
  const path = join(SHOTS, `gui-${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

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
