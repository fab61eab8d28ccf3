// The --dev demo page in headless Chromium, one gateway with compression:
// the page (built on the SDK served at /herald.js, speaking protocol 2 in
// MessagePack with the codec from /msgpack.js) fetches a token, connects and
// shows the feed (ticks with their charts, the 16-byte binary ticks decoded,
// news, alerts); an admin publish shows up; a chat line typed in one page
// appears in another; the browser's own WebSocket negotiated
// permessage-deflate and herald.v2.msgpack; after a restart of the gateway
// the page reconnects and notes each topic it could not recover.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, publish, stopAll, deadline } from '../support/processes.mjs';

deadline(150_000, 'demo.test.mjs');
import { demoBinDir, launch, open, say, seesChat, chatLines, screenshot } from './browser.mjs';

describe('the demo page on one gateway', { timeout: 120_000 }, () => {
  let gateway;
  let browser;

  before(async () => {
    gateway = await startGateway({ dev: true, bin: demoBinDir, args: ['--compression'] });
    browser = await launch();
  });

  after(async () => {
    await browser?.close();
    await stopAll();
  });

  it('serves the SDK and its MessagePack module as JavaScript', async () => {
    for (const [path, exported] of [['/herald.js', 'Herald'], ['/msgpack.js', 'decode']]) {
      const res = await fetch(`${gateway.url}${path}`);
      assert.equal(res.status, 200, path);
      assert.match(res.headers.get('content-type'), /^text\/javascript/, path);
      assert.match(await res.text(), new RegExp(`export \\{[^}]*\\b${exported}\\b`), `${path} exports ${exported}`);
    }
  });

  it('shows the feed, admin publishes and chat between two pages', async () => {
    const a = await open(browser, `${gateway.url}/`);
    await a.waitForSelector('#stocks td.price');
    await a.waitForSelector('#stocks svg.spark polyline');
    await a.waitForSelector('#news li');
    await a.waitForSelector('#alerts li');
    // Charts get a point per tick.
    await a.waitForFunction(() => document.querySelector('#stocks svg.spark polyline').getAttribute('points').split(' ').length >= 3, null, { timeout: 20_000 });

    const extensions = await a.evaluate(() => window.herald.socket.extensions);
    assert.match(extensions, /permessage-deflate/, 'the browser negotiated compression');
    assert.equal(await a.evaluate(() => window.herald.socket.protocol), 'herald.v2.msgpack');
    assert.equal(await a.evaluate(() => window.herald.connection.protocol), 2);

    // Binary ticks: the page shows the 16 bytes and the four float32 prices it decoded from them.
    await a.waitForFunction(() => document.querySelectorAll('#ticks tr').length === 4 && /^16 bytes:/.test(document.getElementById('ticks-bytes').textContent), null, { timeout: 10_000 });
    const ticks = await a.evaluate(() => ({
      bytes: document.getElementById('ticks-bytes').textContent,
      rows: [...document.querySelectorAll('#ticks tr')].map((r) => [r.cells[0].textContent, r.cells[2].textContent]),
    }));
    const hex = ticks.bytes.replace(/^16 bytes: /, '').split(' ');
    assert.equal(hex.length, 16, ticks.bytes);
    const view = new DataView(Uint8Array.from(hex, (h) => parseInt(h, 16)).buffer);
    assert.deepEqual(ticks.rows, ['AAPL', 'MSFT', 'GOOG', 'AMZN'].map((s, i) => [s, view.getFloat32(i * 4, false).toFixed(2)]), 'big-endian float32s, in order');
    await a.waitForFunction(() => document.querySelector('#ticks svg.spark polyline').getAttribute('points').split(' ').length >= 3, null, { timeout: 20_000 });

    const title = `from the browser test ${Date.now()}`;
    await publish(gateway.adminUrl, { topic: 'news', data: { title } });
    await a.waitForFunction((t) => document.getElementById('news').textContent.includes(t), title, { timeout: 10_000 });

    const b = await open(browser, `${gateway.url}/`);
    await say(a, 'hello from page a');
    await seesChat(b, 'hello from page a');
    await seesChat(a, 'hello from page a');
    await say(b, 'and hello from page b');
    await seesChat(a, 'and hello from page b');
    assert.deepEqual(await chatLines(a), ['hello from page a', 'and hello from page b']);

    // --dev tracks presence on chat.>: each page shows who is in the room,
    // and a page that goes away leaves it.
    const members = () => a.evaluate(() => ({ hidden: document.getElementById('members').hidden, text: document.getElementById('members').textContent }));
    await a.waitForFunction(() => /^2 here: /.test(document.getElementById('members').textContent), null, { timeout: 10_000 });
    const shown = await members();
    assert.equal(shown.hidden, false, JSON.stringify(shown));
    const subs = await Promise.all([a, b].map((p) => p.evaluate(() => window.herald.connection.session)));
    assert.equal(new Set(subs).size, 2, 'two sessions');
    assert.equal(await a.locator('#notes .gap').count(), 0, 'nothing to recover on a first connection');
    assert.deepEqual([...a.errors, ...b.errors], []);
    await screenshot(a, 'browser-demo.png');
    await b.close();
    await a.waitForFunction(() => /^1 here: /.test(document.getElementById('members').textContent), null, { timeout: 10_000 });
  });

  it('notes each topic it could not recover after the gateway restarts', async () => {
    // A single node keeps history in memory: a restart starts a new history
    // epoch, so the page's cursors are unknown and every topic answers
    // recovered:false. The page reconnects by itself and says so per topic.
    const page = await open(browser, `${gateway.url}/`);
    await page.waitForSelector('#news li');
    await say(page, 'before the restart');
    await seesChat(page, 'before the restart');
    const before = await page.evaluate(() => window.herald.connection.session);
    await gateway.stop('SIGTERM');
    gateway = await startGateway({ port: gateway.port, adminPort: gateway.adminPort, dev: true, bin: demoBinDir, args: ['--compression'] });
    await page.waitForFunction((s) => window.herald.state === 'connected' && window.herald.connection.session !== s, before, { timeout: 20_000 });
    await page.waitForFunction(() => document.querySelectorAll('#notes .gap').length >= 8, null, { timeout: 10_000 });
    const noted = await page.evaluate(() => [...document.querySelectorAll('#notes .gap')].map((n) => n.dataset.topic).sort());
    assert.deepEqual(noted, ['alerts', 'chat.lobby', 'news', 'stocks.AAPL', 'stocks.AMZN', 'stocks.GOOG', 'stocks.MSFT', 'ticks.bin']);
    // Live events flow again on the new node.
    await say(page, 'after the restart');
    await seesChat(page, 'after the restart');
    assert.deepEqual(page.errors, []);
    await screenshot(page, 'browser-demo-recovery.png');
  });
});
