// The Subscription object: its states across a connection's life, ready(),
// its events, per-topic refusals (final or retried), unsubscribe(), and the
// protocol-1 SDK's `subscribe(topic, handler)` form.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldError, Subscription } from '../../dist/herald.js';
import { connected, setup, message, record } from './fakes.mjs';

async function reconnect(t, code = 1012) {
  t.latest().serverClose(code);
  await t.clock.advance(60_000);
  t.latest().accept();
  await t.clock.advance(0);
}

/** Settled state of a promise, without waiting for it. */
async function peek(promise) {
  const marker = {};
  const value = await Promise.race([promise.then((v) => ({ ok: v }), (e) => ({ err: e })), Promise.resolve().then(() => marker)]);
  return value === marker ? 'pending' : value;
}

describe('states and ready()', () => {
  it('subscribing → subscribed → subscribing while reconnecting → subscribed → unsubscribed', async () => {
    const t = await connected();
    const sub = t.client.subscribe('news');
    assert.ok(sub instanceof Subscription);
    assert.equal(sub.topic, 'news');
    const ev = record(sub);
    assert.equal(sub.state, 'subscribing');
    const ready = sub.ready();
    await t.clock.advance(0);
    assert.equal(await peek(ready), 'pending');
    t.latest().subscribed(undefined, { news: 'e1-0' });
    assert.equal(sub.state, 'subscribed');
    assert.equal(await ready, sub);
    assert.deepEqual(ev.subscribed, [{ topic: 'news', position: 'e1-0' }]);

    t.latest().serverClose(1006);
    assert.equal(sub.state, 'subscribing');
    assert.equal(await sub.ready(), sub, 'ready() stays resolved once confirmed, also while reconnecting');
    await t.clock.advance(60_000);
    t.latest().accept();
    await t.clock.advance(0);
    t.latest().subscribed({ news: true }, { news: 'e1-0' });
    assert.equal(sub.state, 'subscribed');
    assert.equal(ev.subscribed.length, 2, 'confirmed again on the new connection');

    sub.unsubscribe();
    sub.unsubscribe();
    assert.equal(sub.state, 'unsubscribed');
    assert.deepEqual(t.latest().last('unsubscribe').topics, ['news']);
    assert.equal(t.latest().frames('unsubscribe').length, 1);
    assert.deepEqual(ev.unsubscribed, [{ topic: 'news', reason: 'client' }]);
    await assert.rejects(sub.ready(), (e) => e.code === 'unsubscribed');
    t.latest().receive(message('news', 'late'));
    assert.equal(ev.message.length, 0, 'nothing after unsubscribe()');
    assert.equal(t.client.subscription('news'), undefined);
    assert.notEqual(t.client.subscribe('news'), sub, 'subscribing again makes a new one');
    t.client.close();
  });

  it('one subscription per topic: subscribing again returns it', async () => {
    const t = await connected();
    const a = t.client.subscribe('news');
    const b = t.client.subscribe('news', { since: 'ignored' });
    assert.equal(a, b);
    assert.equal(t.client.subscription('news'), a);
    await t.clock.advance(0);
    assert.equal(t.latest().frames('subscribe').length, 1);
    assert.equal(t.latest().last('subscribe').since, undefined, 'the options of a repeat are ignored');
    t.client.close();
  });

  it('ready() before connect() waits for the connection; ready(timeoutMs) gives up alone', async () => {
    const t = setup();
    const sub = t.client.subscribe('news');
    const early = sub.ready();
    const bounded = sub.ready(5000);
    const check = assert.rejects(bounded, (e) => e instanceof HeraldError && e.code === 'timeout' && e.topic === 'news');
    t.client.connect();
    await t.clock.advance(0);
    t.latest().accept();
    await t.clock.advance(5000);
    await check;
    assert.equal(await peek(early), 'pending', 'the subscription goes on');
    t.latest().subscribed();
    assert.equal(await early, sub);
    t.client.close();
  });

  it('close() rejects pending ready() with `closed`; the subscription resumes on connect()', async () => {
    const t = await connected();
    const sub = t.client.subscribe('news');
    const pending = sub.ready();
    t.client.close();
    await assert.rejects(pending, (e) => e.code === 'closed');
    await assert.rejects(sub.ready(), (e) => e.code === 'closed');
    assert.equal(sub.state, 'subscribing');
    t.client.connect();
    await t.clock.advance(0);
    t.latest().accept();
    await t.clock.advance(0);
    t.latest().subscribed();
    assert.equal(await sub.ready(), sub);
    t.client.close();
  });
});

describe('refusals', () => {
  it('forbidden: failed, ready() rejects, error events; the other topics of the frame still subscribe', async () => {
    const t = await connected();
    const news = t.client.subscribe('news');
    const admin = t.client.subscribe('admin.x');
    const ev = record(admin);
    const rejected = assert.rejects(admin.ready(), (e) => e.code === 'forbidden' && e.topic === 'admin.x');
    await t.clock.advance(0);
    t.latest().receive({ type: 'error', ref: t.latest().last('subscribe').ref, code: 'forbidden', message: 'no', topic: 'admin.x' });
    await t.clock.advance(0);
    assert.equal(admin.state, 'failed');
    await rejected;
    await assert.rejects(admin.ready(), (e) => e.code === 'forbidden', 'later calls too');
    assert.deepEqual(ev.error.map((e) => e.code), ['forbidden']);
    assert.deepEqual([t.events.error.at(-1).code, t.events.error.at(-1).topic], ['forbidden', 'admin.x']);
    assert.equal(t.client.subscription('admin.x'), undefined);
    assert.deepEqual(t.latest().last('subscribe').topics, ['news'], 'resubscribed without it');
    t.latest().subscribed();
    assert.equal(news.state, 'subscribed');
    admin.unsubscribe();
    assert.equal(admin.state, 'failed', 'an end state stays');
    t.client.close();
  });

  it('an error without a topic (too_many_subscriptions) fails every topic of its frame', async () => {
    const t = await connected();
    const subs = ['a', 'b'].map((topic) => t.client.subscribe(topic));
    await t.clock.advance(0);
    t.latest().receive({ type: 'error', ref: t.latest().last('subscribe').ref, code: 'too_many_subscriptions', message: 'limit' });
    assert.deepEqual(subs.map((s) => s.state), ['failed', 'failed']);
    t.client.close();
  });

  it('unavailable: stays subscribing, says so on the subscription, and is retried until confirmed', async () => {
    const t = await connected({ random: () => 0.5 });
    const sub = t.client.subscribe('news');
    const ev = record(sub);
    const ready = sub.ready();
    await t.clock.advance(0);
    t.latest().receive({ type: 'error', ref: t.latest().last('subscribe').ref, code: 'unavailable', message: 'redis down' });
    assert.equal(sub.state, 'subscribing');
    assert.deepEqual(ev.error.map((e) => e.code), ['unavailable']);
    assert.equal(t.events.error.length, 0, 'not a client-level error');
    await t.clock.advance(250);
    assert.equal(t.latest().frames('subscribe').length, 2);
    t.latest().subscribed();
    assert.equal(await ready, sub);
    t.client.close();
  });

  it('revoked by a refreshed token: unsubscribed with reason `revoked`', async () => {
    const t = await connected();
    const sub = t.client.subscribe('alerts.user:alice');
    const ev = record(sub);
    await t.clock.advance(0);
    t.latest().subscribed();
    t.latest().receive({ type: 'unsubscribed', topics: ['alerts.user:alice'] });
    assert.equal(sub.state, 'unsubscribed');
    assert.deepEqual(ev.unsubscribed, [{ topic: 'alerts.user:alice', reason: 'revoked' }]);
    await assert.rejects(sub.ready(), (e) => e.code === 'revoked');
    assert.equal(t.latest().frames('unsubscribe').length, 0, 'the gateway already dropped it');
    t.client.close();
  });

  it('unsubscribe() before the reply: no confirmation afterwards, ready() rejects', async () => {
    const t = await connected();
    const sub = t.client.subscribe('news');
    const ev = record(sub);
    const ready = sub.ready();
    await t.clock.advance(0);
    sub.unsubscribe();
    await assert.rejects(ready, (e) => e.code === 'unsubscribed');
    assert.deepEqual(t.latest().last('unsubscribe').topics, ['news'], 'the gateway is told, the subscribe was in flight');
    t.latest().subscribed();
    assert.equal(sub.state, 'unsubscribed');
    assert.equal(ev.subscribed.length, 0);
    t.client.close();
  });
});

describe('events', () => {
  it('message reaches the subscription of its topic only, and the client', async () => {
    const t = await connected();
    const news = record(t.client.subscribe('news'));
    const chat = record(t.client.subscribe('chat.lobby'));
    await t.clock.advance(0);
    t.latest().subscribed();
    t.latest().receive(message('news', 'n1', { title: 'x' }));
    t.latest().receive(message('chat.lobby', 'c1'));
    t.latest().receive(message('other', 'o1'));
    assert.deepEqual(news.message.map((m) => [m.id, m.data]), [['n1', { title: 'x' }]]);
    assert.deepEqual(chat.message.map((m) => m.id), ['c1']);
    assert.deepEqual(t.events.message.map((m) => m.id), ['n1', 'c1']);
    t.client.close();
  });

  it('a listener that throws is reported as `handler`; the others still run; on() returns its remover', async () => {
    const t = await connected();
    const sub = t.client.subscribe('news');
    const got = [];
    sub.on('message', () => {
      throw new Error('boom');
    });
    const off = sub.on('message', (m) => got.push(m.id));
    await t.clock.advance(0);
    t.latest().subscribed();
    t.latest().receive(message('news', 'n1'));
    off();
    t.latest().receive(message('news', 'n2'));
    assert.deepEqual(got, ['n1']);
    assert.deepEqual([t.events.error[0].code, t.events.error[0].topic, t.events.error[0].cause.message], ['handler', 'news', 'boom']);
    t.client.close();
  });

  it('the handler form returns a remover, and unsubscribes when its last handler is gone', async () => {
    const t = await connected();
    const a = [];
    const offA = t.client.subscribe('news', (m) => a.push(m.id));
    const offB = t.client.subscribe('news', () => {});
    assert.equal(typeof offA, 'function');
    await t.clock.advance(0);
    t.latest().subscribed();
    t.latest().receive(message('news', 'n1'));
    offA();
    assert.equal(t.latest().frames('unsubscribe').length, 0, 'one handler left');
    offB();
    assert.equal(t.latest().frames('unsubscribe').length, 1);
    assert.deepEqual(a, ['n1']);
    t.client.close();
  });
});
