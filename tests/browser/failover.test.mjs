// Node loss under a browser: two --dev gateways on one Redis (the same JWT
// secret and admin key, so either accepts the other's tokens) behind HAProxy
// (round robin, no stickiness). Page A is served through HAProxy, page B
// straight by the other node. Chat crosses nodes both ways; then, while
// herald-admin keeps publishing, the node holding page A is killed with
// kill -9: page A reconnects through HAProxy to the other node, and both
// pages show every event exactly once, in order, with no gap note.
// (Both nodes run the --dev feed, so ticks and headlines come twice a second,
// each an event of its own; the chat carries the events counted here.)
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startRedis, startGateway, startAdmin, startHaproxy, publish, stopAll, deadline } from '../support/processes.mjs';

deadline(180_000, 'failover.test.mjs');
import { demoBinDir, launch, open, say, seesChat, chatLines, node, screenshot } from './browser.mjs';

const EVENTS = 40;

describe('the demo page across the loss of a node', { timeout: 150_000 }, () => {
  const nodes = {};
  let admin;
  let lb;
  let browser;

  before(async () => {
    const redis = await startRedis();
    for (const id of ['n1', 'n2']) nodes[id] = await startGateway({ dev: true, redisUrl: redis.url, nodeId: id, bin: demoBinDir });
    admin = await startAdmin({ redisUrl: redis.url, bin: demoBinDir });
    lb = await startHaproxy(Object.values(nodes).map((n) => n.port));
    browser = await launch();
  });

  after(async () => {
    await browser?.close();
    await stopAll();
  });

  it('reconnects to the other node and shows every event once', async () => {
    const a = await open(browser, `${lb.url}/`);
    const first = await node(a);
    const other = first === 'n1' ? 'n2' : 'n1';
    const b = await open(browser, `${nodes[other].url}/`);
    assert.equal(await node(b), other);

    await say(a, `hello from ${first}`);
    await seesChat(b, `hello from ${first}`);
    await say(b, `hello from ${other}`);
    await seesChat(a, `hello from ${other}`);

    // Events keep coming, about ten a second, from herald-admin through Redis.
    const texts = Array.from({ length: EVENTS }, (_, i) => `event ${i + 1}`);
    const publisher = (async () => {
      for (const text of texts) {
        await publish(admin.url, { topic: 'chat.lobby', data: { text, from: 'backend' } });
        await new Promise((resolve) => setTimeout(resolve, 100)); // pacing, not synchronisation
      }
    })();
    await a.evaluate(() => {
      window.recoveredLog = [];
      window.herald.on('recovered', (r) => window.recoveredLog.push(r));
    });
    await seesChat(a, 'event 10');
    await nodes[first].stop('SIGKILL');
    await a.waitForFunction((n) => window.herald.connection.node === n, other, { timeout: 15_000 });
    await publisher;
    await seesChat(a, `event ${EVENTS}`, 30_000);
    await seesChat(b, `event ${EVENTS}`, 30_000);
    await a.waitForSelector('#status.live');

    const expected = [`hello from ${first}`, `hello from ${other}`, ...texts];
    assert.deepEqual(await chatLines(a), expected, 'page A: every event once, in order');
    assert.deepEqual(await chatLines(b), expected, 'page B: every event once, in order');
    assert.equal(await a.locator('#notes .gap').count(), 0, 'every topic was recovered');
    const recovered = await a.evaluate(() => window.recoveredLog);
    assert.deepEqual(recovered.find((r) => r.topic === 'chat.lobby'), { topic: 'chat.lobby', recovered: true }, 'resubscribed with since');
    await a.waitForSelector('#stocks td.price');
    assert.deepEqual([...a.errors, ...b.errors], []);
    await screenshot(a, 'browser-failover.png');
  });
});
