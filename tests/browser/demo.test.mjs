// The demo page in a real browser: headless Chromium (Debian's package) loads
// the page of `herald-gateway --dev --compression`, which fetches a token,
// connects, subscribes and shows the demo feed; an admin-API publish and a
// chat line typed into the page appear live; the browser's own WebSocket
// negotiated permessage-deflate. Bounded: the whole test fails after 90 s.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

const root = new URL('../../', import.meta.url).pathname;
const fail = (message) => {
  console.error(`browser test: FAILED: ${message}`);
  process.exitCode = 1;
  cleanup();
};
const deadline = setTimeout(() => fail('timed out after 90 s'), 90_000);

const gateway = spawn(`${root}target/debug/herald-gateway`, [
  '--dev', '--compression', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--log-level', 'warn',
], { stdio: ['ignore', 'ignore', 'pipe'] });
let browser;
function cleanup() {
  clearTimeout(deadline);
  gateway.kill('SIGTERM');
  if (browser) browser.close().catch(() => {});
}

// The dev banner names the demo page, the admin key and the admin address.
const banner = {};
await new Promise((resolve, reject) => {
  const lines = createInterface({ input: gateway.stderr });
  lines.on('line', (line) => {
    let m;
    if ((m = line.match(/demo page:\s+(http:\/\/\S+)/))) banner.page = m[1];
    if ((m = line.match(/admin key\s+=\s+(\S+)/))) banner.key = m[1];
    if ((m = line.match(/(http:\/\/[\d.:]+)\/v1\/publish/))) banner.admin = m[1];
    if (banner.page && banner.key && banner.admin) resolve();
  });
  gateway.on('exit', (code) => reject(new Error(`gateway exited with ${code}`)));
});

try {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking'],
  });
  const page = await browser.newPage();
  await page.goto(banner.page);
  await page.waitForSelector('#status.live', { timeout: 20_000 });
  // The demo feed: a stock tick and a headline arrive within a few seconds.
  await page.waitForSelector('#stocks td.price', { timeout: 20_000 });
  await page.waitForSelector('#news li', { timeout: 20_000 });

  const extensions = await page.evaluate(() => window.heraldSocket.extensions);
  if (!extensions.includes('permessage-deflate')) throw new Error(`no compression negotiated: '${extensions}'`);

  // A publish through the admin API shows up on the page.
  const title = `from the browser test ${Date.now()}`;
  const res = await fetch(`${banner.admin}/v1/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${banner.key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ topic: 'news', data: { title } }),
  });
  if (res.status !== 200) throw new Error(`publish answered ${res.status}`);
  await page.waitForFunction((t) => document.getElementById('news').textContent.includes(t), title, { timeout: 10_000 });

  // A chat line typed in the page is published by the browser and comes back.
  await page.fill('#chat-input', 'hello from chromium');
  await page.click('#chat-form button');
  await page.waitForFunction(() => document.getElementById('chat').textContent.includes('hello from chromium'), null, { timeout: 10_000 });

  mkdirSync(`${root}target`, { recursive: true });
  await page.screenshot({ path: `${root}target/browser-demo.png`, fullPage: true });
  console.log(`browser test: ok (extensions: ${extensions})`);
  cleanup();
} catch (e) {
  fail(e.message);
}
