// Recovery: `since` bookkeeping per topic, `recovered` per topic, and no
// event delivered twice to a handler.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connected, message } from './fakes.mjs';


async function reconnect(t, code = 1012) {
  t.latest().serverClose(code);
  await t.clock.advance(60_000);
  t.latest().accept();
  await t.clock.advance(0);
}

describe('since bookkeeping', () => {
  it('resubscribes every topic in one frame with the last id seen on each', async () => {
    const t = await connected();
    const got = [];
    t.client.subscribe('news', (m) => got.push(m.id));
    t.client.subscribe('stocks.AAPL', (m) => got.push(m.id));
    t.client.subscribe('alerts', (m) => got.push(m.id));
    await t.clock.advance(0);
    assert.equal(t.latest().frames('subscribe').length, 1, 'subscribes of one tick share a frame');
    assert.deepEqual(t.latest().last('subscribe').topics, ['news', 'stocks.AAPL', 'alerts']);
    assert.equal(t.latest().last('subscribe').since, undefined);
    t.latest().subscribed();
    for (const m of [message('news', 'n1'), message('stocks.AAPL', 's1'), message('news', 'n2'), message('stocks.AAPL', 's2')]) {
      t.latest().receive(m);
    }
    await reconnect(t);
    const sub = t.latest().last('subscribe');
    assert.deepEqual(sub.topics, ['news', 'stocks.AAPL', 'alerts']);
    assert.deepEqual(sub.since, { news: 'n2', 'stocks.AAPL': 's2' });
    assert.deepEqual(got, ['n1', 's1', 'n2', 's2']);
    t.latest().subscribed({ news: true, 'stocks.AAPL': true });
    const confirmed = t.events.subscribed.map((s) => s.topic);
    assert.deepEqual(confirmed, ['news', 'stocks.AAPL', 'alerts', 'news', 'stocks.AAPL', 'alerts'], 'confirmed on each connection');
    t.client.close();
  });

  it('counts replayed messages as seen, so the next reconnect asks from there', async () => {
    const t = await connected();
    t.client.subscribe('news', () => {});
    await t.clock.advance(0);
    t.latest().subscribed();
    t.latest().receive(message('news', 'n1'));
    await reconnect(t);
    t.latest().receive(message('news', 'n2')); // replayed before `subscribed`
    t.latest().subscribed({ news: true });
    await reconnect(t);
    assert.deepEqual(t.latest().last('subscribe').since, { news: 'n2' });
    t.client.close();
  });

  it('reports recovered per topic, and false for a live topic that had no cursor yet', async () => {
    const t = await connected();
    t.client.subscribe('news', () => {});
    t.client.subscribe('stocks.AAPL', () => {});
    t.client.subscribe('chat.lobby', () => {});
    await t.clock.advance(0);
    t.latest().subscribed();
    assert.deepEqual(t.events.recovered, [], 'a first subscribe recovers nothing');
    t.latest().receive(message('news', 'n1'));
    t.latest().receive(message('stocks.AAPL', 's1'));
    await reconnect(t, 1006);
    t.latest().subscribed({ news: true, 'stocks.AAPL': false });
    assert.deepEqual(t.events.recovered, [
      { topic: 'news', recovered: true },
      { topic: 'stocks.AAPL', recovered: false },
      { topic: 'chat.lobby', recovered: false },
    ]);
    t.client.close();
  });

  it('forgets a topic unsubscribed while disconnected, and never reports it', async () => {
    const t = await connected();
    const off = t.client.subscribe('news', () => {});
    t.client.subscribe('alerts', () => {});
    await t.clock.advance(0);
    t.latest().subscribed();
    t.latest().receive(message('news', 'n1'));
    t.latest().serverClose(1006);
    off();
    await t.clock.advance(60_000);
    t.latest().accept();
    await t.clock.advance(0);
    assert.deepEqual(t.latest().last('subscribe').topics, ['alerts']);
    assert.equal(t.latest().last('subscribe').since, undefined);
    t.client.close();
  });
});

describe('duplicate suppression', () => {
  it('never hands the same id to a handler twice, across replays and reconnects', async () => {
    const t = await connected();
    const a = [];
    const b = [];
    t.client.subscribe('news', (m) => a.push(m.id));
    t.client.subscribe('news', (m) => b.push(m.id));
    await t.clock.advance(0);
    t.latest().subscribed();
    for (const id of ['n1', 'n2', 'n2']) t.latest().receive(message('news', id));
    await reconnect(t);
    for (const id of ['n1', 'n2', 'n3']) t.latest().receive(message('news', id)); // an overlapping replay
    t.latest().subscribed({ news: true });
    t.latest().receive(message('news', 'n3'));
    t.latest().receive(message('news', 'n4'));
    assert.deepEqual(a, ['n1', 'n2', 'n3', 'n4']);
    assert.deepEqual(b, ['n1', 'n2', 'n3', 'n4']);
    assert.deepEqual(t.events.message.map((m) => m.id), ['n1', 'n2', 'n3', 'n4']);
    t.client.close();
  });

  it('remembers a bounded window of ids per topic', async () => {
    const t = await connected({ dedupWindow: 3 });
    const got = [];
    t.client.subscribe('news', (m) => got.push(m.id));
    await t.clock.advance(0);
    t.latest().subscribed();
    for (const id of ['a', 'b', 'c', 'd', 'c', 'a']) t.latest().receive(message('news', id));
    // 'c' is still in the window of three; 'a' fell out of it.
    assert.deepEqual(got, ['a', 'b', 'c', 'd', 'a']);
    t.client.close();
  });

  it('keeps delivering to the other handlers when one throws, and reports it', async () => {
    const t = await connected();
    const got = [];
    t.client.subscribe('news', () => {
      throw new Error('boom');
    });
    t.client.subscribe('news', (m) => got.push(m.id));
    await t.clock.advance(0);
    t.latest().subscribed();
    t.latest().receive(message('news', 'n1'));
    assert.deepEqual(got, ['n1']);
    assert.equal(t.events.error.at(-1).code, 'handler');
    assert.equal(t.events.error.at(-1).cause.message, 'boom');
    t.client.close();
  });

  it('drops events of a topic once its last handler is gone', async () => {
    const t = await connected();
    const got = [];
    const off = t.client.subscribe('news', (m) => got.push(m.id));
    await t.clock.advance(0);
    t.latest().subscribed();
    off();
    off();
    assert.deepEqual(t.latest().last('unsubscribe').topics, ['news']);
    assert.equal(t.latest().frames('unsubscribe').length, 1);
    t.latest().receive(message('news', 'late'));
    assert.deepEqual(got, []);
    t.client.close();
  });
});
