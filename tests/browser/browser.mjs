// Headless Chromium (Debian's package) for the demo-page tests, and helpers
// that read the page. The demo page is the one embedded in the gateway of
// this checkout, so these tests run target/debug (or $HERALD_DEMO_BIN_DIR),
// never $HERALD_BIN_DIR.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { root } from '../support/processes.mjs';

export const demoBinDir = process.env.HERALD_DEMO_BIN_DIR || join(root, 'target/debug');

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking'],
    timeout: 30_000,
  });
}

/** Opens `url` in a new page; page errors (uncaught exceptions) are collected in `page.errors`. */
export async function open(browser, url) {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  page.setDefaultTimeout(20_000);
  await page.goto(url);
  await page.waitForSelector('#status.live');
  return page;
}

/** The chat lines of the page, oldest first. */
export function chatLines(page) {
  return page.evaluate(() => [...document.querySelectorAll('#chat li')].map((li) => li.lastChild.textContent).reverse());
}

/** Waits until the chat of `page` shows `text`. */
export function seesChat(page, text, timeout = 15_000) {
  return page.waitForFunction((t) => [...document.querySelectorAll('#chat li')].some((li) => li.lastChild.textContent === t), text, { timeout });
}

/** Types `text` into the chat form and sends it. */
export async function say(page, text) {
  await page.fill('#chat-input', text);
  await page.click('#chat-form button');
}

export function node(page) {
  return page.evaluate(() => window.herald.connection.node);
}

export async function screenshot(page, name) {
  mkdirSync(join(root, 'target'), { recursive: true });
  const path = join(root, 'target', name);
  await page.screenshot({ path, fullPage: true });
  return path;
}
