// The SDK against real processes, from Node (the `ws` package as WebSocket),
// with its defaults (protocol 2, JSON, the token in the connect frame): a
// herald-gateway node on Redis, herald-admin publishing. Subscribe, publish,
// token refresh, presence, and recovery across gateway restarts (SIGTERM and
// kill -9): every event published meanwhile arrives, once, in order.
// Also a handshake refused with 503 + Retry-After, from a tiny local server.
// Protocol 2's own features (MessagePack, bytes, positions of quiet topics,
// 4005, presence pages) are in protocol2.test.mjs.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import WebSocket, { WebSocketServer } from 'ws';
import { Herald } from '../../dist/herald.js';
import { startRedis, startAdmin, startGateway, mintToken, publish, stopAll, within, until, deadline } from '../../../../tests/support/processes.mjs';

deadline(200_000, 'gateway.test.mjs');

/** Resolves with the first `event` value for which `match` holds (bounded). */
function next(client, event, match = () => true, ms = 15_000) {
  let off;
  const seen = new Promise((resolve) => {
    off = client.on(event, (value) => match(value) && resolve(value));
  });
  return within(ms, `'${event}' event`, seen).finally(off);
}

/** A WebSocket class that also records every frame the client receives (JSON connections). */
function spyingWebSocket(frames) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      this.addEventListener('message', (ev) => frames.push(JSON.parse(ev.data)));
    }
  };
}

describe('the SDK against a gateway on Redis', { timeout: 180_000 }, () => {
  let redis;
  let admin;
  let gateway;
  const clients = [];

  const client = (options = {}) => {
    const c = new Herald({
      url: `ws://127.0.0.1:${gateway.port}/ws`,
      token: () => mintToken({ sub: 'node-sdk' }),
      WebSocket,
      backoff: { baseMs: 100, maxMs: 1000, spreadMs: 200 },
      ...options,
    });
    clients.push(c);
    return c;
  };

  const restartGateway = () => startGateway({ port: gateway.port, adminPort: gateway.adminPort, redisUrl: redis.url, nodeId: 'n1' });

  before(async () => {
    redis = await startRedis();
    admin = await startAdmin({ redisUrl: redis.url });
    gateway = await startGateway({ redisUrl: redis.url, nodeId: 'n1' });
  });

  after(async () => {
    for (const c of clients) c.close();
    await stopAll();
  });

  it('subscribes, receives admin publishes, and publishes itself', async () => {
    const c = client();
    const news = [];
    const chat = [];
    const subs = [c.subscribe('news'), c.subscribe('chat.node')];
    subs[0].on('message', (m) => news.push(m));
    subs[1].on('message', (m) => chat.push(m));
    c.connect();
    await Promise.all(subs.map((s) => s.ready(15_000)));
    assert.deepEqual(subs.map((s) => s.state), ['subscribed', 'subscribed']);
    assert.equal(c.state, 'connected');
    assert.deepEqual(c.connection, { node: 'n1', session: c.connection.session, protocol: 2 });

    await publish(admin.url, { topic: 'news', event: 'headline', data: { title: 'hello' } });
    await until('the news event', () => news.length === 1);
    assert.equal(news[0].event, 'headline');
    assert.deepEqual(news[0].data, { title: 'hello' });

    const ack = await c.publish('chat.node', { text: 'from node' });
    await until('its own chat line', () => chat.length === 1);
    assert.equal(chat[0].id, ack.id);
    assert.deepEqual(chat[0].data, { text: 'from node' });

    await assert.rejects(c.publish('news', 1), (e) => e.code === 'forbidden');
    // A topic the token does not permit fails on its own; the others stay.
    await assert.rejects(c.subscribe('admin.x').ready(15_000), (e) => e.code === 'forbidden' && e.topic === 'admin.x');
    assert.equal(c.subscription('admin.x'), undefined);
    // Presence of a topic the gateway does not track: a protocol error; the session stays.
    await assert.rejects(c.presence('chat.node'), (e) => e.code === 'bad_request' || e.code === 'forbidden');
    assert.equal(c.state, 'connected');
    assert.equal(subs[0].state, 'subscribed');
    c.close();
  });

  it('refreshes a token close to expiry through the provider, on the same connection', async () => {
    const frames = [];
    const ttls = ['45s', '1h'];
    const c = client({ token: () => mintToken({ sub: 'refresher', ttl: ttls.shift() ?? '1h' }), WebSocket: spyingWebSocket(frames) });
    const expiring = next(c, 'token_expiring');
    c.connect();
    await expiring;
    await until('an authed reply', () => frames.some((f) => f.type === 'authed'), { ms: 15_000 });
    assert.equal(ttls.length, 0, 'the provider was asked again');
    assert.equal(frames.filter((f) => f.type === 'welcome').length, 1, 'no reconnect');
    assert.equal(c.state, 'connected');
    c.close();
  });

  it('shows who is in a room: presence(), then join and leave as members come and go', async () => {
    // A second node on the same Redis, tracking presence on room.>.
    const node = await startGateway({ redisUrl: redis.url, nodeId: 'n2', args: ['--presence-topics', 'room.>'] });
    const member = (sub) => {
      const c = new Herald({
        url: `ws://127.0.0.1:${node.port}/ws`,
        token: () => mintToken({ sub, topics: 'room.>', presence: 'room.>' }),
        WebSocket,
      });
      clients.push(c);
      return c;
    };
    const ann = member('ann');
    const changes = [];
    ann.on('presence', (p) => changes.push(p));
    ann.subscribe('room.sdk');
    const annIn = next(ann, 'presence', (p) => p.type === 'join' && p.sub === 'ann');
    ann.connect();
    await annIn;
    const ben = member('ben');
    ben.subscribe('room.sdk');
    const benIn = next(ann, 'presence', (p) => p.type === 'join' && p.sub === 'ben');
    ben.connect();
    await benIn;
    const here = await ann.presence('room.sdk');
    assert.equal(here.count, 2);
    assert.equal(here.nextCursor, undefined, 'one page');
    assert.deepEqual(here.members.map((m) => m.sub).sort(), ['ann', 'ben']);
    assert.ok(here.members.every((m) => typeof m.session === 'string' && m.since > 0), JSON.stringify(here));
    const benOut = next(ann, 'presence', (p) => p.type === 'leave' && p.sub === 'ben');
    ben.close();
    await benOut;
    assert.deepEqual(changes.map((p) => `${p.type} ${p.sub}`), ['join ann', 'join ben', 'leave ben']);
    await assert.rejects(ann.presence('news'), (e) => e.code === 'bad_request');
    ann.close();
  });

  it('recovers across gateway restarts: events published meanwhile arrive once, in order', async () => {
    const c = client();
    const got = [];
    const recovered = [];
    const news = c.subscribe('news');
    news.on('message', (m) => got.push(m));
    news.on('recovered', (r) => recovered.push(r));
    c.connect();
    await news.ready(15_000);

    let n = 0;
    const publishMany = async (count) => {
      for (let i = 0; i < count; i++) await publish(admin.url, { topic: 'news', data: { n: n++ } });
    };
    await publishMany(5);
    await until('the first five events', () => got.length === 5);

    for (const signal of ['SIGTERM', 'SIGKILL']) {
      const down = next(c, 'state', (s) => s.state === 'reconnecting');
      await gateway.stop(signal);
      const closed = await down;
      if (signal === 'SIGTERM') assert.equal(closed.code, 1012, 'a draining node closes with 1012');
      await publishMany(10); // nobody is connected: these wait in Redis's history
      const back = next(c, 'recovered', (r) => r.topic === 'news', 30_000);
      gateway = await restartGateway();
      assert.deepEqual(await back, { topic: 'news', recovered: true });
      await publishMany(2);
      await until(`all ${n} events after ${signal}`, () => got.length >= n);
    }
    await publishMany(1);
    await until('the last event', () => got.length >= n);
    assert.deepEqual(got.map((m) => m.data.n), Array.from({ length: n }, (_, i) => i), 'each once, in order');
    assert.equal(new Set(got.map((m) => m.id)).size, n);
    assert.deepEqual(recovered, [{ topic: 'news', recovered: true }, { topic: 'news', recovered: true }], 'once per restart');
    c.close();
  });
});

describe('a handshake refused with 503 + Retry-After (Node sees the status)', { timeout: 30_000 }, () => {
  it('waits Retry-After before the next attempt', async () => {
    const wss = new WebSocketServer({ noServer: true });
    const attempts = [];
    const server = createServer();
    server.on('upgrade', (req, socket, head) => {
      attempts.push(Date.now());
      if (attempts.length === 1) {
        socket.end('HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => {
        ws.send(JSON.stringify({ type: 'welcome', session: 's', node: 'fake', heartbeat_ms: 25_000, protocol: 2 }));
      });
    });
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const c = new Herald({ url: `ws://127.0.0.1:${server.address().port}/ws`, token: 't', WebSocket, backoff: { baseMs: 10, spreadMs: 100 } });
    const states = [];
    c.on('state', (s) => states.push(s));
    try {
      const connected = next(c, 'state', (s) => s.state === 'connected');
      c.connect();
      await connected;
      assert.equal(attempts.length, 2);
      assert.ok(attempts[1] - attempts[0] >= 1000, `retried after ${attempts[1] - attempts[0]} ms`);
      assert.match(states.find((s) => s.state === 'reconnecting').reason, /HTTP 503/);
    } finally {
      c.close();
      for (const ws of wss.clients) ws.terminate();
      server.close();
    }
  });
});
