// Reconnecting: backoff bounds and jitter, the close-code table, handshake
// refusals seen through Node's `ws` (503 + Retry-After, 401), and the
// protocol faults that must not loop.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, closeAction, handshakeAction, parseRetryAfter, DEFAULT_BACKOFF } from '../../dist/herald.js';
import { setup } from './fakes.mjs';

const reconnecting = (events) => events.state.filter((s) => s.state === 'reconnecting');

describe('backoffDelay', () => {
  it('stays within [0, min(max, base * 2^attempt))', () => {
    const b = { baseMs: 500, maxMs: 30_000, spreadMs: 1000 };
    for (let attempt = 0; attempt < 40; attempt++) {
      const cap = Math.min(b.maxMs, b.baseMs * 2 ** attempt);
      assert.equal(backoffDelay(attempt, b, () => 0), 0);
      const top = backoffDelay(attempt, b, () => 0.999999);
      assert.ok(top < cap && top >= cap - 1, `attempt ${attempt}: ${top} vs cap ${cap}`);
    }
  });

  it('is fully jittered: delays spread over the whole range', () => {
    const b = DEFAULT_BACKOFF;
    const cap = b.baseMs * 2 ** 4;
    const delays = Array.from({ length: 2000 }, () => backoffDelay(4, b));
    assert.ok(delays.every((d) => d >= 0 && d < cap));
    assert.ok(Math.min(...delays) < cap * 0.05, 'some delays near 0');
    assert.ok(Math.max(...delays) > cap * 0.95, 'some delays near the cap');
    const firstHalf = delays.filter((d) => d < cap / 2).length;
    assert.ok(firstHalf > 800 && firstHalf < 1200, `uniform: ${firstHalf} of 2000 in the lower half`);
  });

  it('grows per failed attempt and starts over after a welcome', async () => {
    const { client, clock, events, latest } = setup({ random: () => 0.999, backoff: { baseMs: 100, maxMs: 1000 } });
    client.connect();
    await clock.advance(0);
    for (let i = 0; i < 6; i++) {
      latest().serverClose(1006);
      await clock.advance(1000);
    }
    assert.deepEqual(reconnecting(events).map((s) => s.delayMs), [99, 199, 399, 799, 999, 999]);
    latest().accept();
    latest().serverClose(1006);
    assert.equal(reconnecting(events).at(-1).delayMs, 99);
    client.close();
  });
});

describe('the close-code table', () => {
  it('maps every code of the contract', () => {
    const table = {
      1000: 'stop', 4003: 'stop', 1012: 'now', 4001: 'refresh', 1003: 'fault',
      1002: 'fault', 1007: 'fault', 1008: 'fault', 1009: 'fault',
      1006: 'backoff', 1011: 'backoff', 4002: 'backoff', 4004: 'backoff', 1001: 'backoff',
    };
    for (const [code, action] of Object.entries(table)) assert.equal(closeAction(Number(code)), action, `close ${code}`);
    assert.equal(handshakeAction(401), 'refresh');
    assert.equal(handshakeAction(403), 'stop');
    assert.equal(handshakeAction(503), 'backoff');
    assert.equal(handshakeAction(429), 'backoff');
    assert.equal(handshakeAction(400), 'fault');
  });

  for (const code of [4003, 1000]) {
    it(`never reconnects after ${code}`, async () => {
      const { client, clock, sockets, events, latest } = setup();
      client.connect();
      await clock.advance(0);
      latest().accept();
      latest().serverClose(code, 'bye');
      await clock.advance(600_000);
      assert.equal(sockets.length, 1);
      assert.equal(client.state, 'closed');
      assert.equal(events.error.at(-1).code, 'stopped');
      assert.equal(events.error.at(-1).closeCode, code);
    });
  }

  it('reconnects at once after 1012, spread over spreadMs, however many attempts failed before', async () => {
    const { client, clock, sockets, events, latest } = setup({ random: () => 0.999, backoff: { spreadMs: 1000 } });
    client.connect();
    await clock.advance(0);
    for (let i = 0; i < 8; i++) {
      latest().serverClose(1006);
      await clock.advance(60_000);
    }
    latest().accept();
    latest().serverClose(1012, 'draining');
    assert.equal(reconnecting(events).at(-1).delayMs, 999);
    assert.equal(reconnecting(events).at(-1).code, 1012);
    const before = sockets.length;
    await clock.advance(999);
    assert.equal(sockets.length, before + 1);
    client.close();
  });

  it('after 4001 fetches a fresh token from the provider, then reconnects', async () => {
    let n = 0;
    const { client, clock, sockets, latest } = setup({ token: async () => `token-${++n}` });
    client.connect();
    await clock.advance(0);
    latest().accept();
    latest().serverClose(4001, 'token expired');
    await clock.advance(1000);
    assert.equal(sockets.length, 2);
    latest().open();
    assert.deepEqual(sockets.map((s) => s.token), ['token-1', 'token-2']);
    client.close();
  });

  it('after 4001 with a fixed token stops with token_expired', async () => {
    const { client, clock, sockets, events, latest } = setup();
    client.connect();
    await clock.advance(0);
    latest().accept();
    latest().serverClose(4001);
    await clock.advance(600_000);
    assert.equal(sockets.length, 1);
    assert.equal(events.error.at(-1).code, 'token_expired');
  });

  for (const code of [1007, 1008, 1009]) {
    it(`retries ${code} with backoff, but not in a loop`, async () => {
      const { client, clock, sockets, events, latest } = setup({ maxFaults: 3 });
      client.connect();
      await clock.advance(0);
      for (let i = 0; i < 5; i++) {
        latest().accept();
        latest().serverClose(code);
        await clock.advance(60_000);
      }
      assert.equal(sockets.length, 3, 'two retries, then it gives up');
      assert.equal(client.state, 'closed');
      assert.equal(events.error.at(-1).code, 'protocol_fault');
      assert.equal(events.error.at(-1).closeCode, code);
    });
  }

  it('counts only faults in a row: a clean drain in between starts the count again', async () => {
    const { client, clock, sockets, latest } = setup({ maxFaults: 2 });
    client.connect();
    await clock.advance(0);
    for (const code of [1009, 1012, 1009, 1012, 1009]) {
      latest().accept();
      latest().serverClose(code);
      await clock.advance(60_000);
    }
    assert.equal(sockets.length, 6);
    assert.notEqual(client.state, 'closed');
    client.close();
  });
});

describe('handshake refusals seen by Node', () => {
  it('honours 503 + Retry-After', async () => {
    const { client, clock, sockets, events, latest } = setup({ random: () => 0 }, { nodeStyle: true });
    client.connect();
    await clock.advance(0);
    latest().refuse(503, { 'retry-after': '7' });
    await clock.advance(0);
    assert.equal(reconnecting(events).at(-1).delayMs, 7000);
    assert.match(reconnecting(events).at(-1).reason, /HTTP 503/);
    await clock.advance(6999);
    assert.equal(sockets.length, 1, 'not before Retry-After');
    await clock.advance(1);
    assert.equal(sockets.length, 2);
    client.close();
  });

  it('fetches a fresh token after 401 (a token in the query)', async () => {
    let n = 0;
    const { client, clock, sockets, latest } = setup({ token: () => `token-${++n}`, tokenIn: 'query' }, { nodeStyle: true });
    client.connect();
    await clock.advance(0);
    latest().refuse(401);
    await clock.advance(1000);
    assert.deepEqual(sockets.map((s) => s.token), ['token-1', 'token-2']);
    client.close();
  });

  it('stops on 403 (origin not allowed)', async () => {
    const { client, clock, sockets, latest } = setup({}, { nodeStyle: true });
    client.connect();
    await clock.advance(0);
    latest().refuse(403);
    await clock.advance(600_000);
    assert.equal(sockets.length, 1);
    assert.equal(client.state, 'closed');
  });

  it('reads Retry-After as seconds or an HTTP date', () => {
    const now = Date.parse('2026-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('3', now), 3000);
    assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:10 GMT', now), 10_000);
    assert.equal(parseRetryAfter(undefined, now), undefined);
    assert.equal(parseRetryAfter('soon', now), undefined);
    assert.equal(parseRetryAfter('99999', now), 300_000, 'capped at 5 minutes');
  });
});

describe('connecting', () => {
  it('gives up on a socket that gets no welcome within connectTimeoutMs', async () => {
    const { client, clock, sockets, latest } = setup({ connectTimeoutMs: 5000 });
    client.connect();
    await clock.advance(0);
    await clock.advance(4999);
    assert.equal(latest().closedWith, undefined);
    await clock.advance(1);
    assert.equal(sockets[0].closedWith.code, 4000);
    await clock.advance(1000);
    assert.equal(sockets.length, 2);
    client.close();
  });

  it('backs off when the token provider fails, and says so', async () => {
    let calls = 0;
    const { client, clock, sockets, events } = setup({
      token: async () => {
        if (++calls < 3) throw new Error('backend down');
        return 'ok';
      },
    });
    client.connect();
    await clock.advance(10_000);
    assert.equal(calls, 3);
    assert.equal(sockets.length, 1);
    assert.equal(events.error.filter((e) => e.code === 'token_provider').length, 2);
    client.close();
  });

  it('bounds a token provider that never answers by connectTimeoutMs', async () => {
    let calls = 0;
    const { client, clock, sockets, events } = setup({
      connectTimeoutMs: 5000,
      token: () => (++calls === 1 ? new Promise(() => {}) : 'ok'),
    });
    client.connect();
    await clock.advance(4999);
    assert.equal(events.error.length, 0);
    await clock.advance(1);
    assert.match(events.error[0].message, /did not answer within 5000 ms/);
    await clock.advance(1000);
    assert.equal(calls, 2);
    assert.equal(sockets.length, 1);
    client.close();
  });

  it('with tokenIn "query", puts the token in the URL; resolves http(s) URLs to ws(s)', async () => {
    const { client, clock, latest } = setup({ url: 'https://push.example/ws?x=1', token: 'a b', tokenIn: 'query' });
    client.connect();
    await clock.advance(0);
    const url = new URL(latest().url);
    assert.equal(url.protocol, 'wss:');
    assert.equal(url.searchParams.get('x'), '1');
    assert.equal(url.searchParams.get('token'), 'a b');
    latest().accept();
    assert.equal(latest().frames('connect').length, 0, 'no connect frame');
    client.close();
  });
});
