// Centrifugo's own JavaScript SDK (npm `centrifuge` 5.x, unchanged, under
// Node with the `ws` package) against Herald's Centrifugo-compatible
// endpoint (contract §10.7), in both of its encodings: JSON and Protobuf.
// Two herald-gateway nodes on Redis behind HAProxy, herald-admin
// publishing. What a Centrifugo app relies on: connect, subscribe, admin
// publications with offsets, client publish, presence and its stats,
// history, token refresh through getToken, recovery after a reconnect
// (the missed publications in order, `recovered: true`), a topic quiet
// before the disconnect recovered too, and a node killed with kill -9
// under a client, which recovers on the other node.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Centrifuge as CentrifugeJson } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';
import { startRedis, startAdmin, startGateway, startHaproxy, mintToken, publish, stopAll, within, until, deadline } from '../support/processes.mjs';

deadline(240_000, 'centrifuge.test.mjs');

/** Resolves with the next `event` of `emitter` for which `match` holds (bounded). */
function next(emitter, event, match = () => true, ms = 15_000) {
  let listener;
  const seen = new Promise((resolve) => {
    listener = (value) => match(value) && resolve(value);
    emitter.on(event, listener);
  });
  return within(ms, `'${event}' event`, seen).finally(() => emitter.removeListener(event, listener));
}

/** Collects `publication` events of `sub`. */
function collect(sub) {
  const got = [];
  sub.on('publication', (ctx) => got.push(ctx));
  return got;
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

describe('centrifuge (npm) against /connection/websocket', { timeout: 220_000 }, () => {
  let redis;
  let admin;
  const nodes = {};
  let lb;
  const clients = [];

  before(async () => {
    redis = await startRedis();
    admin = await startAdmin({ redisUrl: redis.url });
    for (const nodeId of ['n1', 'n2']) {
      nodes[nodeId] = await startGateway({
        redisUrl: redis.url,
        nodeId,
        args: ['--compat-centrifugo', 'true', '--presence-topics', 'room.>'],
      });
    }
    lb = await startHaproxy(Object.values(nodes).map((n) => n.port));
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    await stopAll();
  });

  for (const codec of ['json', 'protobuf']) {
    const Centrifuge = codec === 'json' ? CentrifugeJson : CentrifugeProtobuf;
    // Protobuf carries bytes: the SDK hands them over as they came.
    const data = (ctx) => (codec === 'json' ? ctx.data : JSON.parse(decoder.decode(ctx.data)));
    const payload = (value) => (codec === 'json' ? value : encoder.encode(JSON.stringify(value)));
    const tokenFor = (sub, ttl = '1h') =>
      mintToken({ sub, topics: `news.>,quiet.>,chat.>,room.>,ha.>`, publish: 'chat.>', presence: 'room.>', ttl });
    const client = (url, options = {}) => {
      const c = new Centrifuge(`${url.replace('http', 'ws')}/connection/websocket`, {
        websocket: WebSocket,
        minReconnectDelay: 100,
        maxReconnectDelay: 1000,
        ...options,
      });
      clients.push(c);
      return c;
    };
    const subscribed = async (c, channel) => {
      const sub = c.newSubscription(channel);
      const got = collect(sub);
      const ctx = next(sub, 'subscribed');
      sub.subscribe();
      return { sub, got, ctx: await ctx };
    };

    it(`${codec}: connects, subscribes, receives the admin API's publications and publishes`, async () => {
      const c = client(nodes.n1.url, { token: await tokenFor(`a-${codec}`) });
      const connected = next(c, 'connected');
      c.connect();
      assert.equal((await connected).transport, 'websocket');
      const { got, ctx } = await subscribed(c, `news.${codec}`);
      assert.equal(ctx.recoverable, true, 'every subscription is recoverable');
      assert.equal(ctx.positioned, true);
      assert.match(ctx.streamPosition.epoch, /^[0-9a-f]{8}$/);
      const [{ id }] = await publish(admin.url, { topic: `news.${codec}`, data: { n: 1 } });
      await until('the publication', () => got.length === 1);
      assert.deepEqual(data(got[0]), { n: 1 });
      assert.equal(`${ctx.streamPosition.epoch}-${got[0].offset}`, id, 'offset and epoch are the Herald id');

      const chat = await subscribed(c, `chat.${codec}`);
      await chat.sub.publish(payload({ said: 'hi' }));
      await until('its own publication', () => chat.got.length === 1);
      assert.deepEqual(data(chat.got[0]), { said: 'hi' });
      const history = await chat.sub.history({ limit: 10 });
      assert.equal(history.publications.length, 1);
      assert.deepEqual(data(history.publications[0]), { said: 'hi' });
      assert.equal(history.epoch, chat.ctx.streamPosition.epoch);
      c.disconnect();
    });

    it(`${codec}: presence, presence stats and join/leave`, async () => {
      const a = client(nodes.n1.url, { token: await tokenFor(`pa-${codec}`) });
      const b = client(nodes.n2.url, { token: await tokenFor(`pb-${codec}`) });
      a.connect();
      b.connect();
      const room = `room.${codec}`;
      const { sub } = await subscribed(a, room);
      const joined = next(sub, 'join', (ctx) => ctx.info.user === `pb-${codec}`);
      await subscribed(b, room);
      await joined;
      const presence = await sub.presence();
      const users = Object.values(presence.clients).map((i) => i.user).sort();
      assert.deepEqual(users, [`pa-${codec}`, `pb-${codec}`]);
      assert.deepEqual(await sub.presenceStats(), { numClients: 2, numUsers: 2 });
      const left = next(sub, 'leave', (ctx) => ctx.info.user === `pb-${codec}`);
      b.disconnect();
      await left;
      a.disconnect();
    });

    it(`${codec}: refreshes its token through getToken before it expires`, async () => {
      let calls = 0;
      const c = client(nodes.n1.url, {
        getToken: async () => {
          calls += 1;
          return tokenFor(`r-${codec}`, '2s');
        },
      });
      const errors = [];
      c.on('error', (e) => errors.push(e));
      c.connect();
      await next(c, 'connected');
      const { got } = await subscribed(c, `news.refresh.${codec}`);
      await until('a refresh', () => calls >= 2, { ms: 10_000 });
      await publish(admin.url, { topic: `news.refresh.${codec}`, data: 'after' });
      await until('a publication after the refresh', () => got.length === 1);
      assert.equal(c.state, 'connected');
      assert.deepEqual(errors, []);
      c.disconnect();
    });

    it(`${codec}: recovers what it missed while away, a quiet topic too`, async () => {
      const c = client(nodes.n1.url, { token: await tokenFor(`rec-${codec}`) });
      c.connect();
      const busy = await subscribed(c, `news.rec.${codec}`);
      const quiet = await subscribed(c, `quiet.${codec}`);
      await publish(admin.url, { topic: `news.rec.${codec}`, data: 1 });
      await until('the first publication', () => busy.got.length === 1);
      c.disconnect();
      for (const n of [2, 3, 4]) await publish(admin.url, { topic: `news.rec.${codec}`, data: n });
      await publish(admin.url, { topic: `quiet.${codec}`, data: 'while away' });
      const again = [next(busy.sub, 'subscribed'), next(quiet.sub, 'subscribed')];
      c.connect();
      const [busyCtx, quietCtx] = await Promise.all(again);
      for (const ctx of [busyCtx, quietCtx]) {
        assert.equal(ctx.wasRecovering, true);
        assert.equal(ctx.recovered, true);
      }
      await until('the missed publications', () => busy.got.length === 4 && quiet.got.length === 1);
      assert.deepEqual(busy.got.map(data), [1, 2, 3, 4], 'in order, each once');
      assert.deepEqual(quiet.got.map(data), ['while away']);
      c.disconnect();
    });

    it(`${codec}: a node killed under the client: it recovers on the other node`, async () => {
      const c = client(lb.url, { token: await tokenFor(`ha-${codec}`) });
      c.connect();
      const { sub, got } = await subscribed(c, `ha.${codec}`);
      await publish(admin.url, { topic: `ha.${codec}`, data: 1 });
      await until('the first publication', () => got.length === 1);
      const holding = await until('the node holding the client', async () => {
        for (const [id, n] of Object.entries(nodes)) {
          if (n.killed) continue;
          const text = await (await fetch(`${n.adminUrl}/metrics`)).text();
          if (/^herald_connections 1$/m.test(text)) return id;
        }
        return null;
      });
      const resubscribed = next(sub, 'subscribed', () => true, 30_000);
      await nodes[holding].stop('SIGKILL');
      nodes[holding].killed = true;
      for (const n of [2, 3]) await publish(admin.url, { topic: `ha.${codec}`, data: n });
      const ctx = await resubscribed;
      assert.equal(ctx.recovered, true, 'recovered on the other node');
      await publish(admin.url, { topic: `ha.${codec}`, data: 4 });
      await until('every publication', () => got.length === 4, { ms: 15_000 });
      assert.deepEqual(got.map(data), [1, 2, 3, 4], 'in order, each once');
      c.disconnect();
      // The next encoding gets both nodes again.
      const restarted = await startGateway({
        port: nodes[holding].port,
        adminPort: nodes[holding].adminPort,
        redisUrl: redis.url,
        nodeId: holding,
        args: ['--compat-centrifugo', 'true', '--presence-topics', 'room.>'],
      });
      nodes[holding] = restarted;
      await until('haproxy sees both nodes', async () => {
        const res = await fetch(`${lb.url}/readyz`).catch(() => null);
        return res?.ok;
      });
    });
  }
});
