// Headless Chromium (Debian's package) for the browser tests, helpers that
// read the demo page, and a static server for pages of the tests' own. The
// demo page is the one embedded in the gateway of this checkout, so its
// tests run target/debug (or $HERALD_DEMO_BIN_DIR), never $HERALD_BIN_DIR.
import { mkdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { extname, join } from 'node:path';
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

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.map': 'application/json' };

/**
 * Serves `routes` (path -> file path or { body }) on a free loopback port;
 * anything else is 404. Every request's path is kept in `server.requests`.
 * Resolves with the server, its `url` set; `server.close()` stops it.
 */
export async function serveFiles(routes) {
  const requests = [];
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    requests.push(path);
    const route = routes[path];
    if (!route) return res.writeHead(404).end();
    const body = typeof route === 'string' ? readFileSync(route) : route.body;
    res.writeHead(200, { 'content-type': TYPES[extname(typeof route === 'string' ? route : path) || '.html'] ?? 'application/octet-stream' }).end(body);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return Object.assign(server, { requests, url: `http://127.0.0.1:${server.address().port}` });
}
