// The SDK's <script> bundle (clients/js/dist/herald.min.js) in headless
// Chromium, on a page of the test's own, against two gateways on one Redis
// behind HAProxy (round robin, no stickiness; the same JWT secret, so either
// accepts the page's token). The global `Herald` works from a plain
// <script>; MessagePack is fetched (msgpack.js, next to the bundle) only by
// a page that asks for it; and a topic that was quiet before its node was
// killed (kill -9) is recovered on the other node from the position its
// `subscribed` gave: what herald-admin published while the page was away
// arrives once, in order, bytes included, before `recovered: true`.
// Run after `npm run build` in clients/js.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startRedis, startGateway, startAdmin, startHaproxy, mintToken, publish, stopAll, deadline, root } from '../support/processes.mjs';
import { launch, serveFiles, screenshot } from './browser.mjs';

deadline(170_000, 'sdk.test.mjs');

const dist = (file) => join(root, 'clients/js/dist', file);

// The page: the bundle from a plain <script>, a client built from the query,
// and a log of what happened, in order, for the test to read.
const PAGE = `<!doctype html><meta charset="utf-8"><title>Herald SDK</title>
<script src="/herald.min.js"></script>
<script>
  const q = new URLSearchParams(location.search);
  window.log = [];
  window.herald = new Herald({
    url: q.get("ws"),
    token: () => window.heraldToken(),
    protocol: q.get("protocol"),
    // The first reconnect waits 0.9 x 2 s: time enough for the test to publish while the page is away.
    backoff: { baseMs: 2000, maxMs: 2000, spreadMs: 200 },
    random: () => 0.9,
  });
  herald.on("state", (s) => log.push({ kind: "state", state: s.state, code: s.code }));
  herald.on("error", (e) => log.push({ kind: "error", code: e.code, message: e.message }));
  window.watch = (topic) => {
    const sub = herald.subscribe(topic);
    sub.on("message", (m) => log.push({ kind: "message", topic, id: m.id, data: m.data instanceof Uint8Array ? { bytes: [...m.data] } : m.data }));
    sub.on("recovered", (r) => log.push({ kind: "recovered", ...r }));
    return sub.ready(15000).then(() => sub.position);
  };
  herald.connect();
</script>`;

describe('the SDK bundle in a browser, across the loss of a node', { timeout: 160_000 }, () => {
  const nodes = {};
  let admin;
  let lb;
  let site;
  let browser;

  before(async () => {
    const redis = await startRedis();
    for (const id of ['n1', 'n2']) nodes[id] = await startGateway({ redisUrl: redis.url, nodeId: id });
    admin = await startAdmin({ redisUrl: redis.url });
    lb = await startHaproxy(Object.values(nodes).map((n) => n.port));
    site = await serveFiles({
      '/': { body: PAGE },
      '/herald.min.js': dist('herald.min.js'),
      '/herald.min.js.map': dist('herald.min.js.map'),
      '/msgpack.js': dist('msgpack.js'),
      '/msgpack.js.map': dist('msgpack.js.map'),
    });
    browser = await launch();
  });

  after(async () => {
    await browser?.close();
    site?.close();
    await stopAll();
  });

  /** Opens the page with `protocol`, connected through HAProxy; page errors land in `page.errors`. */
  async function openPage(protocol) {
    const page = await browser.newPage();
    page.errors = [];
    page.on('pageerror', (e) => page.errors.push(e.message));
    page.setDefaultTimeout(20_000);
    await page.exposeFunction('heraldToken', () => mintToken({ sub: `browser-${protocol}`, topics: 'quiet.>,news' }));
    const ws = lb.url.replace('http:', 'ws:') + '/ws';
    await page.goto(`${site.url}/?protocol=${protocol}&ws=${encodeURIComponent(ws)}`);
    await page.waitForFunction(() => window.herald.state === 'connected');
    return page;
  }

  it('runs from a plain <script>, and fetches msgpack.js only for protocol "msgpack"', async () => {
    const json = await openPage('json');
    assert.equal(await json.evaluate(() => window.herald.socket.protocol), 'herald.v2.json');
    assert.equal(site.requests.filter((p) => p === '/msgpack.js').length, 0, 'not loaded for JSON');
    const mp = await openPage('msgpack');
    assert.equal(await mp.evaluate(() => window.herald.socket.protocol), 'herald.v2.msgpack');
    assert.equal(await mp.evaluate(() => [typeof Herald, typeof Herald.HeraldError, Herald.PROTOCOL_VERSION, window.herald.connection.protocol].join()), 'function,function,2,2');
    assert.equal(site.requests.filter((p) => p === '/msgpack.js').length, 1, 'loaded once, for the MessagePack page');
    assert.deepEqual([...json.errors, ...mp.errors], []);
    await json.close();
    await mp.close();
  });

  it('recovers a topic that was quiet before its node was killed', async () => {
    const page = await openPage('msgpack');
    const position = await page.evaluate(() => window.watch('quiet.browser'));
    assert.equal(typeof position, 'string', 'subscribed gave a position');
    const first = await page.evaluate(() => window.herald.connection.node);
    const other = first === 'n1' ? 'n2' : 'n1';
    assert.deepEqual(await page.evaluate(() => window.log.filter((e) => e.kind === 'message')), [], 'quiet: nothing yet');

    await nodes[first].stop('SIGKILL');
    await page.waitForFunction(() => window.herald.state === 'reconnecting');
    // Published while the page is away (its reconnect waits 1.8 s): only a since can bring these back.
    await publish(admin.url, { topic: 'quiet.browser', data: { text: 'one' } });
    await publish(admin.url, { topic: 'quiet.browser', data_b64: Buffer.from([1, 2, 254]).toString('base64') });
    await publish(admin.url, { topic: 'quiet.browser', data: { text: 'three' } });
    await page.waitForFunction(() => window.log.some((e) => e.kind === 'recovered'), null, { timeout: 30_000 });

    assert.equal(await page.evaluate(() => window.herald.connection.node), other, 'reconnected to the other node');
    const log = await page.evaluate(() => window.log.filter((e) => e.kind === 'message' || e.kind === 'recovered'));
    assert.deepEqual(log.map((e) => (e.kind === 'message' ? e.data : e)), [
      { text: 'one' },
      { bytes: [1, 2, 254] },
      { text: 'three' },
      { kind: 'recovered', topic: 'quiet.browser', recovered: true },
    ], 'replayed once, in order, before recovered: true');
    assert.equal(await page.evaluate(() => window.herald.subscription('quiet.browser').position), log[2].id);
    assert.deepEqual(await page.evaluate(() => window.log.filter((e) => e.kind === 'error')), []);
    assert.deepEqual(page.errors, []);
    await screenshot(page, 'browser-sdk-recovery.png');
  });
});
