// Connecting with protocol 2: the subprotocol asked for, the token in the
// first frame (and nothing else before `welcome`), and close 4005 per refusal
// reason: a refused token is replaced (never retried as it is), a failing
// provider or a fixed token then stops, too_many_connections / unavailable
// back off, anything else stops.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Herald, closeAction } from '../../dist/herald.js';
import { setup, connected, msgpack, fakeWebSocket } from './fakes.mjs';

const reconnecting = (events) => events.state.filter((s) => s.state === 'reconnecting');

describe('the handshake', () => {
  it('asks for herald.v2.json, binary frames as ArrayBuffers, no token in the URL', async () => {
    const t = setup({ token: async () => 'tok-1' });
    t.client.connect();
    await t.clock.advance(0);
    const ws = t.latest();
    assert.equal(ws.protocols, 'herald.v2.json');
    assert.equal(ws.binaryType, 'arraybuffer');
    assert.equal(new URL(ws.url).searchParams.has('token'), false);
    t.client.close();
  });

  it('sends the token as the first frame, and nothing else before welcome', async () => {
    const t = setup({ token: async () => 'tok-1' });
    t.client.subscribe('news');
    const published = t.client.publish('chat.lobby', { text: 'early' });
    t.client.connect();
    await t.clock.advance(0);
    assert.deepEqual(t.latest().sent, [], 'nothing before the socket opens');
    t.latest().open();
    await t.clock.advance(0);
    assert.deepEqual(t.latest().sent, [{ type: 'connect', token: 'tok-1' }], 'no ref: the gateway answers with welcome');
    t.latest().accept();
    await t.clock.advance(0);
    assert.deepEqual(t.latest().sent.map((f) => f.type), ['connect', 'subscribe', 'publish']);
    t.latest().receive({ type: 'published', ref: t.latest().last('publish').ref, topic: 'chat.lobby', id: 'c1' });
    assert.equal((await published).id, 'c1');
    assert.deepEqual(t.client.connection, { node: 'n1', session: 's0', protocol: 2 });
    t.client.close();
  });

  it('with protocol "msgpack", asks for herald.v2.msgpack and sends every frame as MessagePack', async () => {
    const t = await connected({ protocol: 'msgpack', msgpack, token: 'tok' });
    const ws = t.latest();
    assert.equal(ws.protocols, 'herald.v2.msgpack');
    t.client.subscribe('news');
    await t.clock.advance(0);
    ws.subscribed(undefined, { news: 'e-0' });
    assert.ok(ws.raw.every((frame) => frame instanceof Uint8Array), 'binary frames only (the fake throws on text)');
    assert.deepEqual(ws.sent.map((f) => f.type), ['connect', 'subscribe']);
    assert.equal(ws.sent[0].token, 'tok');
    assert.equal(t.client.subscription('news').state, 'subscribed', 'replies decoded from MessagePack');
    t.client.close();
  });

  it('refuses unknown protocol and tokenIn values', () => {
    const { FakeSocket } = fakeWebSocket();
    assert.throws(() => new Herald({ url: 'ws://x/ws', token: 't', WebSocket: FakeSocket, protocol: 'json1' }), TypeError);
    assert.throws(() => new Herald({ url: 'ws://x/ws', token: 't', WebSocket: FakeSocket, tokenIn: 'header' }), TypeError);
  });
});

describe('close 4005: refused at connect', () => {
  it('maps each reason', () => {
    assert.equal(closeAction(4005, 'unauthorized'), 'refresh');
    assert.equal(closeAction(4005, 'token_expired'), 'refresh');
    assert.equal(closeAction(4005, 'too_many_connections'), 'backoff');
    assert.equal(closeAction(4005, 'unavailable'), 'backoff');
    assert.equal(closeAction(4005, 'forbidden'), 'stop');
    assert.equal(closeAction(4005), 'stop');
  });

  for (const reason of ['unauthorized', 'token_expired']) {
    it(`${reason}: fetches a fresh token, then retries after a backoff`, async () => {
      let calls = 0;
      const t = setup({ token: async () => `tok-${++calls}`, random: () => 0.5 });
      t.client.connect();
      await t.clock.advance(0);
      t.latest().open();
      t.latest().serverClose(4005, reason);
      assert.deepEqual(reconnecting(t.events).at(-1), { state: 'reconnecting', code: 4005, reason, delayMs: 250 }, 'a backoff, not at once');
      await t.clock.advance(250);
      assert.equal(t.sockets.length, 2);
      t.latest().open();
      assert.equal(t.latest().token, 'tok-2', 'a fresh token, not the refused one');
      t.latest().accept();
      assert.equal(t.client.state, 'connected');
      assert.equal(t.events.error.length, 0);
      t.client.close();
    });
  }

  it('with a fixed token, stops at once: the same token would be refused again', async () => {
    const t = setup();
    t.client.connect();
    await t.clock.advance(0);
    t.latest().open();
    t.latest().serverClose(4005, 'unauthorized');
    await t.clock.advance(600_000);
    assert.equal(t.sockets.length, 1);
    assert.equal(t.client.state, 'closed');
    assert.deepEqual([t.events.error.at(-1).code, t.events.error.at(-1).closeCode], ['unauthorized', 4005]);
  });

  it('stops when the token provider fails after a refusal', async () => {
    let calls = 0;
    const t = setup({
      token: async () => {
        if (++calls > 1) throw new Error('logged out');
        return 'tok-1';
      },
    });
    t.client.connect();
    await t.clock.advance(0);
    t.latest().open();
    t.latest().serverClose(4005, 'token_expired');
    await t.clock.advance(600_000);
    assert.equal(calls, 2);
    assert.equal(t.sockets.length, 1, 'no attempt with no token');
    assert.equal(t.client.state, 'closed');
    assert.equal(t.events.error.at(-1).code, 'token_provider');
    assert.equal(t.events.error.at(-1).cause.cause.message, 'logged out');
  });

  it('a provider failure without a refusal is retried as before', async () => {
    let calls = 0;
    const t = setup({
      token: async () => {
        if (++calls === 3) throw new Error('backend blip');
        return `tok-${calls}`;
      },
    });
    t.client.connect();
    await t.clock.advance(0);
    for (let i = 0; i < 3; i++) {
      t.latest().open();
      t.latest().serverClose(1006); // after two failures, each attempt asks for a fresh token
      await t.clock.advance(60_000);
    }
    assert.equal(calls, 4, 'asked again after the failure');
    assert.equal(t.events.error.filter((e) => e.code === 'token_provider').length, 1);
    assert.notEqual(t.client.state, 'closed');
    t.client.close();
  });

  it('stops after maxFaults fresh tokens refused in a row; a welcome starts the count again', async () => {
    let calls = 0;
    const t = setup({ token: async () => `tok-${++calls}`, maxFaults: 3 });
    t.client.connect();
    await t.clock.advance(0);
    const refuse = async () => {
      t.latest().open();
      t.latest().serverClose(4005, 'unauthorized');
      await t.clock.advance(60_000);
    };
    await refuse();
    await refuse();
    t.latest().accept();
    t.latest().serverClose(1006);
    await t.clock.advance(60_000);
    await refuse();
    await refuse();
    assert.notEqual(t.client.state, 'closed', 'two in a row, twice');
    await refuse();
    assert.equal(t.client.state, 'closed');
    assert.deepEqual([t.events.error.at(-1).code, t.events.error.at(-1).closeCode], ['unauthorized', 4005]);
    assert.match(t.events.error.at(-1).message, /refused 3 tokens in a row/);
  });

  for (const reason of ['too_many_connections', 'unavailable']) {
    it(`${reason}: retries with backoff and the same token`, async () => {
      let calls = 0;
      const t = setup({ token: async () => `tok-${++calls}`, random: () => 0.999, backoff: { baseMs: 100, maxMs: 1000 } });
      t.client.connect();
      await t.clock.advance(0);
      for (let i = 0; i < 3; i++) {
        t.latest().open();
        t.latest().serverClose(4005, reason);
        await t.clock.advance(1000);
      }
      assert.deepEqual(reconnecting(t.events).map((s) => s.delayMs), [99, 199, 399], 'growing backoff');
      assert.equal(t.sockets.length, 4);
      t.latest().open();
      assert.deepEqual(t.sockets.map((s) => s.token), ['tok-1', 'tok-1', 'tok-2', 'tok-3'], 'the token was not refused: reused, until two failures in a row');
      assert.equal(t.events.error.length, 0);
      t.client.close();
    });
  }

  it('any other refusal stops', async () => {
    const t = setup({ token: async () => 'tok' });
    t.client.connect();
    await t.clock.advance(0);
    t.latest().open();
    t.latest().serverClose(4005, 'forbidden');
    await t.clock.advance(600_000);
    assert.equal(t.sockets.length, 1);
    assert.deepEqual([t.events.error.at(-1).code, t.events.error.at(-1).closeCode], ['stopped', 4005]);
  });
});
