// Protocol 2 end to end, from Node (the `ws` package), against a
// herald-gateway node on Redis with herald-admin publishing: both encodings
// negotiated; the token in the connect frame, and 4005 refusals followed as
// the SDK promises; bytes both ways between JSON and MessagePack sessions and
// the admin API; a quiet topic (no event before the node dies) recovered
// across a kill -9 from the position `subscribed` gave; presence in pages.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Herald } from '../../dist/herald.js';
import { startRedis, startAdmin, startGateway, mintToken, signToken, publish, stopAll, within, until, deadline } from '../../../../tests/support/processes.mjs';

deadline(200_000, 'protocol2.test.mjs');

/** Resolves with the first `event` value of `emitter` for which `match` holds (bounded). */
function next(emitter, event, match = () => true, ms = 15_000) {
  let off;
  const seen = new Promise((resolve) => {
    off = emitter.on(event, (value) => match(value) && resolve(value));
  });
  return within(ms, `'${event}' event`, seen).finally(off);
}

/** A `ws` class that records the URLs it opens and the frames the client sends (decoded by the test). */
function spying(log) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      log.push({ url, protocols, sent: [] });
      const entry = log.at(-1);
      const send = this.send.bind(this);
      this.send = (data, ...rest) => {
        entry.sent.push(data);
        return send(data, ...rest);
      };
    }
  };
}

const bytes = (...b) => new Uint8Array(b);
const list = (u8) => [...u8];

describe('protocol 2 against a gateway on Redis', { timeout: 180_000 }, () => {
  let redis;
  let admin;
  let gateway;
  const clients = [];

  const client = (options = {}) => {
    const c = new Herald({
      url: `ws://127.0.0.1:${gateway.port}/ws`,
      token: () => mintToken({ sub: 'p2', topics: 'news,alerts,quiet.>,chat.>,room.>', presence: 'room.>' }),
      WebSocket,
      backoff: { baseMs: 100, maxMs: 1000, spreadMs: 200 },
      ...options,
    });
    clients.push(c);
    return c;
  };

  const startNode = (port, adminPort) =>
    startGateway({ port, adminPort, redisUrl: redis.url, nodeId: 'n1', args: ['--presence-topics', 'room.>'] });

  before(async () => {
    redis = await startRedis();
    admin = await startAdmin({ redisUrl: redis.url });
    gateway = await startNode();
  });

  after(async () => {
    for (const c of clients) c.close();
    await stopAll();
  });

  for (const protocol of ['json', 'msgpack']) {
    it(`negotiates herald.v2.${protocol}, with the token in the first frame only`, async () => {
      const log = [];
      const c = client({ protocol, WebSocket: spying(log) });
      const news = c.subscribe('news');
      c.connect();
      await news.ready(15_000);
      assert.equal(c.socket.protocol, `herald.v2.${protocol}`, 'the server echoed the subprotocol');
      assert.equal(c.connection.protocol, 2, 'welcome.protocol');
      assert.equal(new URL(log[0].url).searchParams.has('token'), false, 'no token in the URL');
      const first = log[0].sent[0];
      assert.equal(typeof first === 'string', protocol === 'json', 'text frames for JSON, binary for MessagePack');
      assert.ok(log[0].sent.every((f) => typeof f === typeof first));
      const decoded = protocol === 'json' ? JSON.parse(first) : (await import('../../dist/msgpack.js')).decode(first);
      assert.equal(decoded.type, 'connect');
      assert.match(decoded.token, /^ey/);
      assert.equal(typeof news.position, 'string', 'subscribed carried a position');
      c.close();
    });
  }

  it('still connects with the token in the query (tokenIn: "query")', async () => {
    const log = [];
    const c = client({ tokenIn: 'query', WebSocket: spying(log) });
    const news = c.subscribe('news');
    c.connect();
    await news.ready(15_000);
    assert.match(new URL(log[0].url).searchParams.get('token'), /^ey/);
    assert.equal(log[0].sent.some((f) => JSON.parse(f).type === 'connect'), false);
    c.close();
  });

  it('4005 token_expired: asks the provider for a fresh token and connects with it', async () => {
    const expired = signToken({ sub: 'late', exp: Math.floor(Date.now() / 1000) - 3600, topics: ['news'] });
    const tokens = [expired];
    let calls = 0;
    const c = client({ token: async () => (++calls, tokens.shift() ?? mintToken({ sub: 'late' })) });
    const refused = next(c, 'state', (s) => s.state === 'reconnecting');
    const news = c.subscribe('news');
    c.connect();
    const why = await refused;
    assert.deepEqual([why.code, why.reason], [4005, 'token_expired']);
    await news.ready(15_000);
    assert.equal(calls, 2, 'one fresh token after the refusal');
    c.close();
  });

  it('4005 unauthorized with a fixed token: stops, and says why', async () => {
    const forged = signToken({ sub: 'mallory', exp: Math.floor(Date.now() / 1000) + 3600, topics: ['news'] }, 'not-the-secret');
    const c = client({ token: forged });
    const stopped = next(c, 'error');
    c.connect();
    const e = await stopped;
    assert.deepEqual([e.code, e.closeCode], ['unauthorized', 4005]);
    await until('the client is closed', () => c.state === 'closed');
  });

  it('carries bytes both ways, between JSON and MessagePack sessions and the admin API', async () => {
    const json = client({ protocol: 'json' });
    const mp = client({ protocol: 'msgpack' });
    const got = { json: [], mp: [] };
    const subs = [json.subscribe('chat.bytes'), mp.subscribe('chat.bytes')];
    subs[0].on('message', (m) => got.json.push(m));
    subs[1].on('message', (m) => got.mp.push(m));
    json.connect();
    mp.connect();
    await Promise.all(subs.map((s) => s.ready(15_000)));

    const big = Uint8Array.from({ length: 40_000 }, (_, i) => (i * 31) % 256);
    await publish(admin.url, { topic: 'chat.bytes', event: 'raw', data_b64: Buffer.from([0, 1, 2, 255]).toString('base64') });
    await mp.publish('chat.bytes', bytes(9, 8, 7));
    await json.publish('chat.bytes', big);
    await mp.publish('chat.bytes', { text: 'json through msgpack', n: 1.5 });
    await until('four events on both sessions', () => got.json.length === 4 && got.mp.length === 4);

    for (const [name, msgs] of Object.entries(got)) {
      assert.ok(msgs.slice(0, 3).every((m) => m.data instanceof Uint8Array), `${name}: bytes as Uint8Array`);
      assert.deepEqual(list(msgs[0].data), [0, 1, 2, 255], `${name}: the admin's data_b64`);
      assert.equal(msgs[0].event, 'raw');
      assert.deepEqual(list(msgs[1].data), [9, 8, 7], `${name}: the MessagePack client's bin`);
      assert.deepEqual(msgs[2].data, big, `${name}: the JSON client's data_b64`);
      assert.deepEqual(msgs[3].data, { text: 'json through msgpack', n: 1.5 }, `${name}: JSON stays JSON`);
    }
    assert.deepEqual(got.json.map((m) => m.id), got.mp.map((m) => m.id));
    json.close();
    mp.close();
  });

  it('recovers a topic that was quiet before a kill -9, from the position subscribed gave', async () => {
    const log = [];
    const c = client({ WebSocket: spying(log) });
    const quiet = c.subscribe('quiet.before');
    const got = [];
    const recovered = [];
    quiet.on('message', (m) => got.push(m));
    quiet.on('recovered', (r) => recovered.push(r));
    c.connect();
    await quiet.ready(15_000);
    const position = quiet.position;
    assert.equal(typeof position, 'string');
    assert.equal(got.length, 0, 'nothing was ever published there');

    const down = next(c, 'state', (s) => s.state === 'reconnecting');
    await gateway.stop('SIGKILL');
    await down;
    const missed = ['while', 'the node', 'was down'];
    for (const text of missed) await publish(admin.url, { topic: 'quiet.before', data: { text } });
    const back = next(quiet, 'recovered', () => true, 30_000);
    gateway = await startNode(gateway.port, gateway.adminPort);
    assert.deepEqual(await back, { topic: 'quiet.before', recovered: true });
    assert.deepEqual(got.map((m) => m.data.text), missed, 'replayed, once, in order, before the recovered event');
    const resubscribe = log.at(-1).sent.map((f) => JSON.parse(f)).find((f) => f.type === 'subscribe');
    assert.deepEqual(resubscribe.since, { 'quiet.before': position }, 'the position was the since');
    assert.equal(quiet.position, got.at(-1).id);
    assert.deepEqual(recovered, [{ topic: 'quiet.before', recovered: true }]);
    c.close();
  });

  it('pages through presence with limit and cursor; presenceStats counts sessions and users', async () => {
    const member = (sub) => client({ token: () => mintToken({ sub, topics: 'room.>' }) });
    const members = ['m1', 'm1', 'm2', 'm3', 'm4', 'm5'].map(member); // m1 twice: six sessions, five users
    const subs = members.map((m) => m.subscribe('room.paged'));
    members.forEach((m) => m.connect());
    await Promise.all(subs.map((s) => s.ready(15_000)));
    const viewer = client();
    viewer.connect();
    await until('six members', async () => (await viewer.presenceStats('room.paged')).count === 6, { ms: 15_000, everyMs: 100 });
    assert.deepEqual(await viewer.presenceStats('room.paged'), { count: 6, users: 5 });

    const seen = [];
    let cursor;
    let pages = 0;
    do {
      const page = await viewer.presence('room.paged', { limit: 2, cursor });
      assert.ok(page.members.length <= 2, `a page of at most 2: ${page.members.length}`);
      assert.equal(page.count, 6);
      seen.push(...page.members);
      cursor = page.nextCursor;
      assert.ok(++pages <= 10, 'the walk ends');
    } while (cursor !== undefined);
    const sessions = new Set(seen.map((m) => m.session));
    assert.equal(sessions.size, 6, `every session listed: ${JSON.stringify(seen)}`);
    assert.deepEqual([...new Set(seen.map((m) => m.sub))].sort(), ['m1', 'm2', 'm3', 'm4', 'm5']);
    await assert.rejects(viewer.presence('room.paged', { limit: 0 }), (e) => e.code === 'bad_request');
    for (const c of [...members, viewer]) c.close();
  });
});
