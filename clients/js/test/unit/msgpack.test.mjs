// The MessagePack codec (dist/msgpack.js) on its own: every format at its
// boundaries, byte for byte; uint64 and int64 beyond 2^53 as bigint; bin as
// Uint8Array; nested maps; random round trips; and invalid input, which must
// fail with MsgpackError rather than loop, allocate or return garbage.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { encode, decode, MsgpackError, MsgpackExt, MAX_DEPTH } from '../../dist/msgpack.js';

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const bytes = (h) => new Uint8Array(Buffer.from(h.replace(/\s+/g, ''), 'hex'));
const roundTrip = (value) => decode(encode(value));

describe('encoding, format by format', () => {
  it('nil, bool', () => {
    assert.equal(hex(encode(null)), 'c0');
    assert.equal(hex(encode(undefined)), 'c0');
    assert.equal(hex(encode(false)), 'c2');
    assert.equal(hex(encode(true)), 'c3');
    assert.equal(decode(bytes('c0')), null);
  });

  it('integers take the smallest format, at every boundary', () => {
    const cases = [
      [0, '00'], [127, '7f'], [128, 'cc80'], [255, 'ccff'], [256, 'cd0100'], [65535, 'cdffff'],
      [65536, 'ce00010000'], [2 ** 32 - 1, 'ceffffffff'], [2 ** 32, 'cf0000000100000000'],
      [Number.MAX_SAFE_INTEGER, 'cf001fffffffffffff'],
      [-1, 'ff'], [-32, 'e0'], [-33, 'd0df'], [-128, 'd080'], [-129, 'd1ff7f'], [-32768, 'd18000'],
      [-32769, 'd2ffff7fff'], [-(2 ** 31), 'd280000000'], [-(2 ** 31) - 1, 'd3ffffffff7fffffff'],
      [Number.MIN_SAFE_INTEGER, 'd3ffe0000000000001'],
    ];
    for (const [n, expected] of cases) {
      assert.equal(hex(encode(n)), expected, `encode(${n})`);
      assert.equal(decode(bytes(expected)), n, `decode(${expected})`);
    }
    assert.equal(hex(encode(-0)), '00', '-0 is 0, as in JSON');
  });

  it('uint64 and int64 outside the safe range decode as bigint, and bigints encode as ints', () => {
    assert.equal(decode(bytes('cf ffffffffffffffff')), 2n ** 64n - 1n);
    assert.equal(decode(bytes('cf 0020000000000000')), 2n ** 53n, '2^53 is not a safe integer');
    assert.equal(decode(bytes('d3 8000000000000000')), -(2n ** 63n));
    assert.equal(hex(encode(2n ** 64n - 1n)), 'cfffffffffffffffff');
    assert.equal(hex(encode(-(2n ** 63n))), 'd38000000000000000');
    assert.equal(hex(encode(5n)), '05', 'a small bigint takes the smallest format');
    assert.equal(roundTrip(2 ** 60), 2n ** 60n, 'an integral number beyond 2^53 is sent as an int');
    assert.throws(() => encode(2n ** 64n), MsgpackError);
    assert.throws(() => encode(-(2n ** 63n) - 1n), MsgpackError);
  });

  it('floats: float64 out, float32 and float64 in', () => {
    assert.equal(hex(encode(1.5)), 'cb3ff8000000000000');
    assert.equal(decode(bytes('ca 3fc00000')), 1.5);
    assert.equal(decode(bytes('cb 400921fb54442d18')), Math.PI);
    assert.ok(Number.isNaN(roundTrip(NaN)));
    assert.equal(roundTrip(-Infinity), -Infinity);
    assert.equal(hex(encode(2 ** 64)), 'cb43f0000000000000', '2^64 does not fit a uint64');
  });

  it('strings: fixstr, str8, str16, str32, and UTF-8', () => {
    for (const [len, head] of [[0, 'a0'], [31, 'bf'], [32, 'd920'], [255, 'd9ff'], [256, 'da0100'], [65536, 'db00010000']]) {
      const s = 'x'.repeat(len);
      assert.ok(hex(encode(s)).startsWith(head), `length ${len}`);
      assert.equal(roundTrip(s), s);
    }
    const text = 'é € 😀 日本';
    assert.equal(hex(encode(text)).slice(2), Buffer.from(text).toString('hex'));
    assert.equal(roundTrip(text), text);
  });

  it('bin: bin8, bin16, bin32, decoded as a Uint8Array that owns its bytes', () => {
    for (const [len, head] of [[0, 'c400'], [255, 'c4ff'], [256, 'c50100'], [65536, 'c600010000']]) {
      const b = Uint8Array.from({ length: len }, (_, i) => i % 251);
      assert.ok(hex(encode(b)).startsWith(head), `length ${len}`);
      const back = roundTrip(b);
      assert.ok(back instanceof Uint8Array);
      assert.deepEqual([...back], [...b]);
    }
    const frame = encode({ data: new Uint8Array([1, 2, 3]), after: 'x' });
    const data = decode(frame).data;
    assert.equal(data.buffer.byteLength, 3, 'a copy, not a view into the frame');
    frame.fill(0);
    assert.deepEqual([...data], [1, 2, 3]);
    assert.equal(hex(encode(new Uint8Array([9, 8]).buffer)), 'c4020908', 'an ArrayBuffer is bin too');
    assert.equal(hex(encode(new Uint16Array([0x0102]))), 'c4020201', 'and any view, as its bytes');
  });

  it('arrays and maps: fix, 16 and 32-bit counts', () => {
    assert.equal(hex(encode([])), '90');
    assert.equal(hex(encode(Array(15).fill(0))).slice(0, 2), '9f');
    assert.equal(hex(encode(Array(16).fill(0))).slice(0, 6), 'dc0010');
    assert.equal(hex(encode(Array(65536).fill(0))).slice(0, 10), 'dd00010000');
    assert.equal(roundTrip(Array(65536).fill(7)).length, 65536);
    const obj = (n) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, i]));
    assert.equal(hex(encode({})), '80');
    assert.equal(hex(encode(obj(15))).slice(0, 2), '8f');
    assert.equal(hex(encode(obj(16))).slice(0, 6), 'de0010');
    assert.equal(hex(encode(obj(65536))).slice(0, 10), 'df00010000');
    assert.deepEqual(roundTrip(obj(70_000)), obj(70_000));
  });

  it('matches the reference encoding of msgpack.org', () => {
    assert.equal(hex(encode({ compact: true, schema: 0 })), '82a7636f6d70616374c3a6736368656d6100');
  });

  it('nested maps, a protocol frame with a bin payload', () => {
    const frame = {
      type: 'subscribed',
      ref: '1',
      topics: ['news', 'ticks.bin'],
      recovered: { news: true },
      positions: { news: 'e1-42', 'ticks.bin': 'e1-0' },
      deep: { a: { b: { c: [1, { d: [null, false, 'x'] }] } } },
    };
    assert.deepEqual(roundTrip(frame), frame);
    const message = { type: 'message', topic: 'ticks.bin', id: 'e1-43', data: new Uint8Array([0, 1, 2]), ts: 1767222000123 };
    const back = roundTrip(message);
    assert.deepEqual({ ...back, data: [...back.data] }, { ...message, data: [0, 1, 2] });
  });

  it('follows JSON for undefined, toJSON and Map; a "__proto__" key stays data', () => {
    assert.deepEqual(roundTrip({ a: 1, b: undefined }), { a: 1 });
    assert.deepEqual(roundTrip([1, undefined]), [1, null]);
    const when = new Date(Date.UTC(2026, 0, 1));
    assert.equal(roundTrip(when), '2026-01-01T00:00:00.000Z');
    assert.deepEqual(roundTrip(new Map([['a', 1], [2, 'b']])), { a: 1, 2: 'b' });
    const tricky = decode(bytes('81 a9 5f5f70726f746f5f5f 81 a1 78 01')); // {"__proto__": {"x": 1}}
    assert.equal(Object.getPrototypeOf(tricky), Object.prototype);
    assert.equal(tricky.x, undefined);
    assert.deepEqual(Object.keys(tricky), ['__proto__']);
    assert.deepEqual(decode(bytes('82 01 a1 61 c3 a1 62')), { 1: 'a', true: 'b' }, 'int and bool keys as strings');
  });

  it('ext values round trip as MsgpackExt', () => {
    for (const len of [1, 2, 4, 8, 16, 3, 300]) {
      const ext = new MsgpackExt(-1, Uint8Array.from({ length: len }, (_, i) => i));
      const back = roundTrip(ext);
      assert.ok(back instanceof MsgpackExt);
      assert.equal(back.type, -1);
      assert.deepEqual([...back.data], [...ext.data]);
    }
  });
});

describe('random round trips', () => {
  // A small deterministic generator: the same cases on every run.
  let seed = 0x2f6b1d;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const int = (n) => Math.floor(rand() * n);
  const pick = (...fs) => fs[int(fs.length)]();
  const str = () => Array.from({ length: int(40) }, () => pick(() => String.fromCharCode(32 + int(90)), () => 'é', () => '😀', () => '日')).join('');
  function value(depth) {
    return pick(
      () => null,
      () => rand() < 0.5,
      () => int(2 ** 31) - 2 ** 30,
      () => int(Number.MAX_SAFE_INTEGER) * (rand() < 0.5 ? 1 : -1) || 1,
      () => (rand() - 0.5) * 10 ** int(15), // beyond 2^53 an integral float would come back as a bigint
      str,
      () => Uint8Array.from({ length: int(70) }, () => int(256)),
      () => (depth > 4 ? 1 : Array.from({ length: int(20) }, () => value(depth + 1))),
      () => (depth > 4 ? 'leaf' : Object.fromEntries(Array.from({ length: int(20) }, () => [str(), value(depth + 1)]))),
    );
  }

  it('decode(encode(v)) equals v for 2,000 random values', () => {
    for (let i = 0; i < 2000; i++) {
      const v = value(0);
      assert.deepEqual(roundTrip(v), v, `case ${i}`);
    }
  });
});

describe('invalid input', () => {
  it('every truncation of a valid frame fails with MsgpackError', () => {
    const whole = encode({ type: 'message', topic: 'ticks.bin', id: 'e1-7', data: new Uint8Array(300), n: 2 ** 40, f: 0.5, s: 'x'.repeat(40) });
    for (let end = 0; end < whole.length; end++) {
      assert.throws(() => decode(whole.subarray(0, end)), MsgpackError, `cut at ${end} of ${whole.length}`);
    }
  });

  it('rejects bytes left over, the never-used 0xc1, invalid UTF-8 and container keys', () => {
    assert.throws(() => decode(bytes('c0 c0')), /left over/);
    assert.throws(() => decode(bytes('c1')), /0xc1/);
    assert.throws(() => decode(bytes('a2 c3 28')), /UTF-8/);
    assert.throws(() => decode(bytes('81 90 01')), /map key/);
    assert.throws(() => decode(new Uint8Array(0)), MsgpackError);
  });

  it('refuses counts the input cannot hold, without allocating them', () => {
    assert.throws(() => decode(bytes('dd ffffffff c0')), /cannot fit/);
    assert.throws(() => decode(bytes('df ffffffff c0 c0')), /cannot fit/);
    assert.throws(() => decode(bytes('c6 ffffffff 00')), /ends/);
    assert.throws(() => decode(bytes('db ffffffff 61')), /ends/);
  });

  it('bounds nesting both ways', () => {
    const deep = new Uint8Array(MAX_DEPTH + 2).fill(0x91);
    deep[deep.length - 1] = 0xc0;
    assert.throws(() => decode(deep), /deeper/);
    const fine = new Uint8Array(MAX_DEPTH + 1).fill(0x91);
    fine[fine.length - 1] = 0xc0;
    assert.doesNotThrow(() => decode(fine.subarray(1)));
    const cycle = { a: 1 };
    cycle.self = cycle;
    assert.throws(() => encode(cycle), /deeper/);
  });

  it('refuses functions and symbols', () => {
    assert.throws(() => encode({ f() {} }), /function/);
    assert.throws(() => encode([Symbol('s')]), /symbol/);
  });
});
