// Payloads through the client: bytes as `Uint8Array` both ways (`data_b64`
// on JSON connections, bin on MessagePack ones), JSON values through
// MessagePack, frames that cannot be decoded or encoded, and the MessagePack
// module imported only when asked for.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { connected, setup, socketOpened, msgpack, message, FakeClock, fakeWebSocket } from './fakes.mjs';

const bytes = (...b) => new Uint8Array(b);

/** Subscribes `topic` on a connected client; returns the messages its subscription receives. */
async function listen(t, topic) {
  const got = [];
  t.client.subscribe(topic).on('message', (m) => got.push(m));
  await t.clock.advance(0);
  t.latest().subscribed();
  return got;
}

describe('bytes on a JSON connection', () => {
  it('publish(Uint8Array) sends data_b64 in place of data', async () => {
    const t = await connected();
    void t.client.publish('ticks.bin', bytes(0, 1, 2, 255), { event: 'ticks' }).catch(() => {});
    void t.client.publish('ticks.bin', bytes(7).buffer).catch(() => {});
    const [first, second] = t.latest().frames('publish');
    assert.deepEqual({ ...first, ref: undefined }, { type: 'publish', ref: undefined, topic: 'ticks.bin', event: 'ticks', data_b64: 'AAEC/w==' });
    assert.equal('data' in first, false);
    assert.equal(second.data_b64, 'Bw==', 'an ArrayBuffer too');
    void t.client.publish('chat.lobby', { text: 'hi' }).catch(() => {});
    assert.deepEqual(t.latest().last('publish').data, { text: 'hi' }, 'JSON stays data');
    t.client.close();
  });

  it('a received data_b64 arrives as a Uint8Array in message.data', async () => {
    const t = await connected();
    const got = await listen(t, 'ticks.bin');
    const big = Uint8Array.from({ length: 100_000 }, (_, i) => (i * 7) % 256);
    t.latest().receive({ type: 'message', topic: 'ticks.bin', id: 'b1', data_b64: Buffer.from([0x43, 0x3d, 0, 0]).toString('base64'), ts: 1 });
    t.latest().receive({ type: 'message', topic: 'ticks.bin', id: 'b2', data_b64: Buffer.from(big).toString('base64'), ts: 2 });
    t.latest().receive({ type: 'message', topic: 'ticks.bin', id: 'b3', data_b64: '', ts: 3 });
    assert.ok(got.every((m) => m.data instanceof Uint8Array && !('data_b64' in m)));
    assert.deepEqual([...got[0].data], [0x43, 0x3d, 0, 0]);
    assert.deepEqual(got[1].data, big);
    assert.equal(got[2].data.length, 0);
    t.client.close();
  });

  it('reports a frame it cannot decode, and keeps the connection', async () => {
    const t = await connected();
    const got = await listen(t, 'news');
    t.latest().receiveRaw('{not json');
    t.latest().receiveRaw(new Uint8Array([0x80]).buffer);
    t.latest().receive({ type: 'message', topic: 'news', id: 'n1', data_b64: '***', ts: 1 });
    t.latest().receive(message('news', 'n2'));
    assert.deepEqual(t.events.error.map((e) => e.code), ['bad_frame', 'bad_frame', 'bad_frame']);
    assert.deepEqual(got.map((m) => m.id), ['n2']);
    assert.equal(t.client.state, 'connected');
    t.client.close();
  });

  it('rejects a publish it cannot encode with `encode`, and sends the next one', async () => {
    const t = await connected();
    const cycle = {};
    cycle.self = cycle;
    await assert.rejects(t.client.publish('chat.lobby', cycle), (e) => e.code === 'encode');
    await assert.rejects(t.client.publish('chat.lobby', { n: 1n }), (e) => e.code === 'encode', 'JSON has no bigint');
    const ok = t.client.publish('chat.lobby', { n: 1 });
    t.latest().receive({ type: 'published', ref: t.latest().last('publish').ref, topic: 'chat.lobby', id: 'c1' });
    assert.equal((await ok).id, 'c1');
    assert.equal(t.latest().frames('publish').length, 1, 'the unencodable ones were never sent');
    t.client.close();
  });
});

describe('bytes and JSON on a MessagePack connection', () => {
  it('publish(Uint8Array) sends a bin; JSON data stays a map', async () => {
    const t = await connected({ protocol: 'msgpack', msgpack });
    void t.client.publish('ticks.bin', bytes(1, 2, 3)).catch(() => {});
    void t.client.publish('chat.lobby', { text: 'hi', n: [1, 2.5] }).catch(() => {});
    const [bin, json] = t.latest().frames('publish');
    assert.ok(bin.data instanceof Uint8Array);
    assert.deepEqual([...bin.data], [1, 2, 3]);
    assert.equal('data_b64' in bin, false);
    assert.deepEqual(json.data, { text: 'hi', n: [1, 2.5] });
    // The bin is on the wire as bin 8 (0xc4 0x03 01 02 03), not base64 text.
    assert.ok(Buffer.from(t.latest().raw.at(-2)).includes(Buffer.from([0xc4, 3, 1, 2, 3])));
    t.client.close();
  });

  it('a received bin arrives as a Uint8Array; maps, floats and uint64 as JavaScript values', async () => {
    const t = await connected({ protocol: 'msgpack', msgpack });
    const got = await listen(t, 'ticks.bin');
    const ticks = new Uint8Array(16);
    new DataView(ticks.buffer).setFloat32(0, 189.25, false);
    t.latest().receive({ type: 'message', topic: 'ticks.bin', id: 't1', event: 'ticks', data: ticks, ts: 1767222000123 });
    t.latest().receive({ type: 'message', topic: 'ticks.bin', id: 't2', data: { big: 2n ** 63n, f: 0.1, nested: { a: [null] } }, ts: 2 });
    assert.ok(got[0].data instanceof Uint8Array);
    assert.equal(new DataView(got[0].data.buffer).getFloat32(0, false), 189.25);
    assert.equal(got[0].ts, 1767222000123);
    assert.deepEqual(got[1].data, { big: 2n ** 63n, f: 0.1, nested: { a: [null] } });
    t.client.close();
  });

  it('a text frame, or bytes that are not a map, are bad frames', async () => {
    const t = await connected({ protocol: 'msgpack', msgpack });
    t.latest().receiveRaw('{"type":"pong"}');
    t.latest().receiveRaw(msgpack.encode([1, 2]).buffer);
    t.latest().receiveRaw(new Uint8Array([0xc1]).buffer);
    assert.deepEqual(t.events.error.map((e) => e.code), ['bad_frame', 'bad_frame', 'bad_frame']);
    assert.equal(t.client.state, 'connected');
    t.client.close();
  });
});

describe('loading the MessagePack module', () => {
  it('imports dist/msgpack.js by itself when protocol is "msgpack"', async () => {
    const t = setup({ protocol: 'msgpack' });
    t.client.connect();
    const ws = await socketOpened(t, 1);
    ws.accept();
    await t.clock.advance(0);
    assert.equal(t.client.state, 'connected');
    assert.equal(ws.protocols, 'herald.v2.msgpack');
    assert.deepEqual(ws.sent, [{ type: 'connect', token: 'static-token' }]);
    t.client.close();
  });

  it('reports a module that cannot be loaded, and retries with backoff', async () => {
    // A copy of the SDK in a folder without msgpack.js next to it.
    const dir = mkdtempSync(join(tmpdir(), 'herald-no-msgpack-'));
    copyFileSync(new URL('../../dist/herald.js', import.meta.url), join(dir, 'herald.js'));
    const { Herald } = await import(pathToFileURL(join(dir, 'herald.js')).href);
    const clock = new FakeClock();
    const { FakeSocket, sockets } = fakeWebSocket();
    const client = new Herald({ url: 'ws://gateway.test/ws', token: 't', WebSocket: FakeSocket, clock, random: () => 0.5, protocol: 'msgpack' });
    const errors = [];
    client.on('error', (e) => errors.push(e));
    client.connect();
    for (let i = 0; i < 200 && errors.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(errors[0]?.code, 'codec');
    assert.equal(client.state, 'reconnecting');
    assert.equal(sockets.length, 0, 'no socket without a codec');
    copyFileSync(new URL('../../dist/msgpack.js', import.meta.url), join(dir, 'msgpack.js'));
    await clock.advance(250);
    await socketOpened({ sockets }, 1);
    assert.equal(sockets[0].protocols, 'herald.v2.msgpack', 'loaded on the next attempt');
    client.close();
  });
});
