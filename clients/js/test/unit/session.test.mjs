// One connection's life: requests and replies (publish, presence,
// subscribe errors), token refresh, and the heartbeat watchdog.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { HeraldError } from '../../dist/herald.js';
import { setup, connected, message, jwt } from './fakes.mjs';


describe('requests', () => {
  it('publish waits for a connection, then resolves with the id', async () => {
    const t = setup();
    const done = t.client.publish('chat.lobby', { text: 'hi' }, { event: 'line' });
    t.client.connect();
    await t.clock.advance(0);
    t.latest().accept();
    const sent = t.latest().last('publish');
    assert.deepEqual({ ...sent, ref: undefined }, { type: 'publish', ref: undefined, topic: 'chat.lobby', data: { text: 'hi' }, event: 'line' });
    t.latest().receive({ type: 'published', ref: sent.ref, topic: 'chat.lobby', id: 'c1' });
    assert.deepEqual(await done, { topic: 'chat.lobby', id: 'c1' });
    t.client.close();
  });

  it('rejects with the error code of the reply, and `disconnected` when the connection drops first', async () => {
    const t = await connected();
    const refused = t.client.publish('admin.x', 1);
    t.latest().receive({ type: 'error', ref: t.latest().last('publish').ref, code: 'forbidden', message: 'no', topic: 'admin.x' });
    await assert.rejects(refused, (e) => e instanceof HeraldError && e.code === 'forbidden' && e.topic === 'admin.x');
    const lost = t.client.publish('chat.lobby', 2);
    t.latest().serverClose(1006);
    await assert.rejects(lost, (e) => e.code === 'disconnected');
    t.client.close();
  });

  it('rejects with `timeout` when no reply comes within requestTimeoutMs, and `closed` after close()', async () => {
    const t = await connected({ requestTimeoutMs: 2000 });
    const slow = t.client.publish('chat.lobby', 1);
    const check = assert.rejects(slow, (e) => e.code === 'timeout');
    await t.clock.advance(2000);
    await check;
    const queued = setup();
    const never = queued.client.publish('chat.lobby', 1);
    queued.client.connect();
    queued.client.close();
    await assert.rejects(never, (e) => e.code === 'closed');
    await assert.rejects(queued.client.publish('chat.lobby', 1), (e) => e.code === 'closed');
    t.client.close();
  });

  it('presence answers a page of members; join and leave arrive as presence events', async () => {
    const t = await connected();
    const first = t.client.presence('chat.lobby', { limit: 2 });
    const req = t.latest().last('presence');
    assert.deepEqual({ ...req, ref: undefined }, { type: 'presence', ref: undefined, topic: 'chat.lobby', limit: 2 });
    const page1 = [{ sub: 'alice', session: 's1', since: 1 }, { sub: 'bob', session: 's2', since: 2 }];
    t.latest().receive({ type: 'presence', ref: req.ref, topic: 'chat.lobby', members: page1, count: 3, next_cursor: 'c-2' });
    assert.deepEqual(await first, { members: page1, count: 3, nextCursor: 'c-2' });
    const second = t.client.presence('chat.lobby', { limit: 2, cursor: 'c-2' });
    const req2 = t.latest().last('presence');
    assert.deepEqual([req2.limit, req2.cursor], [2, 'c-2'], 'the cursor of the previous page');
    const page2 = [{ sub: 'carol', session: 's3', since: 3 }];
    t.latest().receive({ type: 'presence', ref: req2.ref, topic: 'chat.lobby', members: page2, count: 3 });
    assert.deepEqual(await second, { members: page2, count: 3 }, 'no nextCursor on the last page');
    const plain = t.client.presence('chat.lobby');
    assert.deepEqual(Object.keys(t.latest().last('presence')).sort(), ['ref', 'topic', 'type'], 'no limit or cursor unless given');
    t.latest().receive({ type: 'presence', ref: t.latest().last('presence').ref, topic: 'chat.lobby', members: page2, count: 1 });
    assert.equal((await plain).count, 1);

    const stats = t.client.presenceStats('chat.lobby');
    const sreq = t.latest().last('presence_stats');
    assert.equal(sreq.topic, 'chat.lobby');
    t.latest().receive({ type: 'presence_stats', ref: sreq.ref, topic: 'chat.lobby', count: 3, users: 2 });
    assert.deepEqual(await stats, { count: 3, users: 2 });
    t.latest().receive({ type: 'join', topic: 'chat.lobby', sub: 'bob', session: 's2' });
    t.latest().receive({ type: 'leave', topic: 'chat.lobby', sub: 'bob', session: 's2' });
    assert.deepEqual(t.events.presence.map((p) => `${p.type} ${p.sub}`), ['join bob', 'leave bob']);
    const unsupported = t.client.presence('news');
    t.latest().receive({ type: 'error', ref: t.latest().last('presence').ref, code: 'bad_request', message: 'unknown type' });
    await assert.rejects(unsupported, (e) => e.code === 'bad_request');
    assert.equal(t.events.error.length, 0, 'a refused request is reported once, by its promise');
    t.client.close();
  });

  it('drops a forbidden topic, reports it, and still subscribes the others', async () => {
    const t = await connected();
    t.client.subscribe('news', () => {});
    t.client.subscribe('admin.x', () => {});
    await t.clock.advance(0);
    const first = t.latest().last('subscribe');
    t.latest().receive({ type: 'error', ref: first.ref, code: 'forbidden', message: 'no', topic: 'admin.x' });
    await t.clock.advance(0);
    assert.deepEqual(t.latest().last('subscribe').topics, ['news']);
    assert.deepEqual([t.events.error.at(-1).code, t.events.error.at(-1).topic], ['forbidden', 'admin.x']);
    t.client.close();
  });

  it('retries a subscribe refused as unavailable after a backoff, on the same connection', async () => {
    const t = await connected({ random: () => 0.999 });
    t.client.subscribe('news', () => {});
    await t.clock.advance(0);
    t.latest().receive({ type: 'error', ref: t.latest().last('subscribe').ref, code: 'unavailable', message: 'redis down' });
    await t.clock.advance(498);
    assert.equal(t.latest().frames('subscribe').length, 1);
    await t.clock.advance(1);
    assert.equal(t.latest().frames('subscribe').length, 2);
    assert.equal(t.events.error.length, 0);
    t.client.close();
  });

  it('forgets topics the gateway unsubscribed after a token refresh', async () => {
    const t = await connected();
    t.client.subscribe('alerts.user:alice', () => {});
    await t.clock.advance(0);
    t.latest().subscribed();
    t.latest().receive({ type: 'unsubscribed', topics: ['alerts.user:alice'] });
    assert.deepEqual([t.events.error.at(-1).code, t.events.error.at(-1).topic], ['revoked', 'alerts.user:alice']);
    t.latest().serverClose(1012);
    await t.clock.advance(60_000);
    t.latest().accept();
    await t.clock.advance(0);
    assert.equal(t.latest().frames('subscribe').length, 0);
    t.client.close();
  });
});

describe('token refresh', () => {
  it('answers token_expiring with auth and a fresh token from the provider', async () => {
    const tokens = ['first', 'second'];
    const t = await connected({ token: async () => tokens.shift() });
    t.latest().receive({ type: 'token_expiring', exp: 1234 });
    await t.clock.advance(0);
    const auth = t.latest().last('auth');
    assert.equal(auth.token, 'second');
    t.latest().receive({ type: 'authed', ref: auth.ref, exp: 5678 });
    await t.clock.advance(0);
    assert.deepEqual(t.events.token_expiring, [{ exp: 1234 }]);
    assert.equal(t.events.error.length, 0);
    t.client.close();
  });

  it('reports a refused auth', async () => {
    const t = await connected({ token: async () => 'tok' });
    t.latest().receive({ type: 'token_expiring', exp: 1 });
    await t.clock.advance(0);
    t.latest().receive({ type: 'error', ref: t.latest().last('auth').ref, code: 'forbidden', message: 'another sub' });
    await t.clock.advance(0);
    assert.equal(t.events.error.at(-1).code, 'forbidden');
    t.client.close();
  });

  it('reuses a token far from expiry across reconnects, and fetches one close to expiry', async () => {
    let calls = 0;
    let exp;
    const t = setup({ token: async () => (calls++, jwt(exp)) });
    exp = t.clock.now() + 3_600_000;
    t.client.connect();
    await t.clock.advance(0);
    t.latest().accept();
    t.latest().serverClose(1012);
    await t.clock.advance(1000);
    assert.equal(calls, 1, 'an hour left: reused');
    t.latest().accept();
    await t.clock.advance(3_600_000 - 61_000);
    t.latest().serverClose(1012);
    await t.clock.advance(1000);
    assert.equal(calls, 2, 'under a minute left: a new one');
    t.client.close();
  });

  it('fetches a fresh token after two failed attempts in a row (a browser cannot see a 401)', async () => {
    let calls = 0;
    const t = setup({ token: async () => `tok-${++calls}` });
    t.client.connect();
    await t.clock.advance(0);
    for (let i = 0; i < 3; i++) {
      t.latest().open();
      t.latest().serverClose(1006);
      await t.clock.advance(60_000);
    }
    t.latest().open();
    assert.deepEqual(t.sockets.map((s) => s.token), ['tok-1', 'tok-1', 'tok-2', 'tok-3']);
    t.client.close();
  });
});

describe('heartbeat watchdog', () => {
  it('pings after heartbeat_ms of silence and reconnects after heartbeat_ms x 2', async () => {
    const t = await connected({}, { heartbeat_ms: 1000 });
    await t.clock.advance(999);
    assert.equal(t.latest().frames('ping').length, 0);
    await t.clock.advance(1);
    assert.equal(t.latest().frames('ping').length, 1, 'a ping after heartbeat_ms of silence');
    await t.clock.advance(999);
    assert.equal(t.latest().closedWith, undefined);
    assert.equal(t.sockets.length, 1);
    await t.clock.advance(1);
    assert.deepEqual(t.sockets[0].closedWith, { code: 4000, reason: 'heartbeat timeout' });
    assert.equal(t.events.state.at(-1).reason, 'heartbeat timeout');
    await t.clock.advance(1000);
    assert.equal(t.sockets.length, 2, 'a new connection within spreadMs');
    t.client.close();
  });

  it('counts any frame as liveness: pongs and messages keep the connection', async () => {
    const t = await connected({}, { heartbeat_ms: 1000 });
    t.client.subscribe('news', () => {});
    await t.clock.advance(0);
    t.latest().subscribed();
    for (let i = 0; i < 10; i++) {
      await t.clock.advance(1500);
      t.latest().receive(i % 2 ? { type: 'pong' } : message('news', `n${i}`));
    }
    assert.equal(t.sockets.length, 1);
    assert.equal(t.latest().closedWith, undefined);
    assert.ok(t.latest().frames('ping').length >= 5, 'it asked for a frame each time it went quiet');
    t.client.close();
  });

  it('leaves no timer behind after close()', async () => {
    const t = await connected({ token: async () => 'tok' }, { heartbeat_ms: 1000 });
    t.client.subscribe('news', () => {});
    t.client.close();
    await t.clock.advance(0);
    assert.equal(t.clock.timers.size, 0);
    assert.equal(t.client.state, 'closed');
  });
});
