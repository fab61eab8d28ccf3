// Recovery: `since` bookkeeping per topic (the last id received, or the
// position `subscribed` gave, so quiet topics recover too), `recovered` per
// topic, and no event delivered twice to a listener.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connected, setup, message, record } from './fakes.mjs';


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

  it('reports recovered per topic; from a gateway without positions, false for a live topic that had no cursor yet', async () => {
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

describe('positions', () => {
  it('a quiet topic keeps the position of its subscribed reply and sends it as since after a reconnect', async () => {
    const t = await connected();
    const quiet = t.client.subscribe('quiet');
    const busy = t.client.subscribe('busy');
    const events = record(quiet);
    await t.clock.advance(0);
    t.latest().subscribed(undefined, { quiet: 'q-0', busy: 'b-5' });
    assert.equal(quiet.position, 'q-0');
    t.latest().receive(message('busy', 'b-6'));
    assert.equal(busy.position, 'b-6', 'a message moves the position');
    await reconnect(t, 1006);
    assert.deepEqual(t.latest().last('subscribe').since, { quiet: 'q-0', busy: 'b-6' });
    t.latest().receive(message('quiet', 'q-1')); // published while away, replayed
    t.latest().subscribed({ quiet: true, busy: true }, { quiet: 'q-1', busy: 'b-6' });
    assert.deepEqual(t.events.recovered, [
      { topic: 'quiet', recovered: true },
      { topic: 'busy', recovered: true },
    ]);
    assert.deepEqual(events.recovered, [{ topic: 'quiet', recovered: true }], 'on the subscription too');
    assert.deepEqual(events.message.map((m) => m.id), ['q-1']);
    assert.equal(quiet.position, 'q-1');
    t.client.close();
  });

  it('follows the position when recovery failed: the next reconnect asks from where live delivery began', async () => {
    const t = await connected();
    const news = t.client.subscribe('news');
    await t.clock.advance(0);
    t.latest().subscribed(undefined, { news: 'e1-3' });
    await reconnect(t, 1006);
    assert.deepEqual(t.latest().last('subscribe').since, { news: 'e1-3' });
    t.latest().subscribed({ news: false }, { news: 'e2-9' }); // a new history epoch: nothing replayed
    assert.deepEqual(t.events.recovered, [{ topic: 'news', recovered: false }]);
    assert.equal(news.position, 'e2-9');
    await reconnect(t, 1006);
    assert.deepEqual(t.latest().last('subscribe').since, { news: 'e2-9' });
    t.client.close();
  });

  it('subscribe(topic, { since }) starts from a known id: replayed first, then recovered', async () => {
    const t = setup();
    const news = t.client.subscribe('news', { since: 'n-7' });
    assert.equal(news.position, 'n-7');
    const events = record(news);
    t.client.connect();
    await t.clock.advance(0);
    t.latest().accept();
    await t.clock.advance(0);
    assert.deepEqual(t.latest().last('subscribe').since, { news: 'n-7' }, 'on the first subscribe');
    t.latest().receive(message('news', 'n-8'));
    t.latest().subscribed({ news: true }, { news: 'n-8' });
    assert.deepEqual(events.message.map((m) => m.id), ['n-8']);
    assert.deepEqual(events.recovered, [{ topic: 'news', recovered: true }]);
    assert.deepEqual(events.subscribed, [{ topic: 'news', position: 'n-8' }]);
    t.client.close();
  });

  it('a position never overwrites a message that came after it', async () => {
    const t = await connected();
    const news = t.client.subscribe('news');
    await t.clock.advance(0);
    t.latest().subscribed(undefined, { news: 'p-1' });
    t.latest().receive(message('news', 'p-2'));
    t.client.subscribe('other');
    await t.clock.advance(0);
    t.latest().subscribed(undefined, { other: 'o-0' }); // another topic's reply
    assert.equal(news.position, 'p-2');
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
