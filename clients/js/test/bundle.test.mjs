// The build artefacts (run after `npm run build`): herald-gateway embeds the
// current build for the demo page; the default bundles stay within their
// size budget and carry no MessagePack code (only a dynamic import of the
// sibling module); the <script> bundle sets a working global `Herald`; the
// CommonJS build exports what the ES module does; every file the `exports`
// map names exists.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import vm from 'node:vm';
import * as esm from '../dist/herald.js';
import { sizes, BUDGET, MSGPACK_BUDGET } from '../scripts/size.mjs';

const dist = (file) => new URL(`../dist/${file}`, import.meta.url);
const read = (file) => readFileSync(dist(file), 'utf8');

test('the gateway embeds the current build of the SDK and of its MessagePack module', () => {
  for (const file of ['herald.js', 'msgpack.js']) {
    const embedded = new URL(`../../../gateway/src/assets/${file}`, import.meta.url);
    assert.ok(
      existsSync(embedded) && readFileSync(embedded, 'utf8') === read(file),
      `gateway/src/assets/${file} differs from a fresh build: run \`npm run gateway-asset\` in clients/js and rebuild herald-gateway`,
    );
  }
});

test('the default bundles stay within the size budget; the MessagePack module is apart', async (t) => {
  const s = await sizes();
  for (const [name, size] of Object.entries(s)) t.diagnostic(`${name}: ${size.file} minified ${size.minified} B, gzipped ${size.gzipped} B`);
  assert.ok(s.default.gzipped <= BUDGET, `herald.min.js: ${s.default.gzipped} B gzipped > ${BUDGET}`);
  assert.ok(s.esm.gzipped <= BUDGET, `herald.js minified: ${s.esm.gzipped} B gzipped > ${BUDGET}`);
  assert.ok(s.msgpack.gzipped <= MSGPACK_BUDGET, `msgpack.js minified: ${s.msgpack.gzipped} B gzipped > ${MSGPACK_BUDGET}`);
});

test('no default bundle contains MessagePack code, only the import of its sibling module', () => {
  for (const [file, sibling] of [['herald.js', './msgpack.js'], ['herald.cjs', './msgpack.cjs'], ['herald.min.js', './msgpack.js']]) {
    const code = read(file);
    assert.doesNotMatch(code, /MsgpackError|getBigUint64/, `${file} bundles the MessagePack module`);
    assert.ok(code.includes(`import("${sibling}")`), `${file} imports ${sibling} dynamically`);
  }
});

test('the <script> bundle sets the global Herald: the class, with the other exports on it', () => {
  class FakeSocket {
    constructor(url, protocols) {
      Object.assign(this, { url, protocols, readyState: 0 });
    }
  }
  const context = vm.createContext({ URL, queueMicrotask, setTimeout, clearTimeout, console, WebSocket: FakeSocket, atob, btoa, TextEncoder, TextDecoder });
  vm.runInContext(read('herald.min.js'), context, { filename: 'herald.min.js' });
  const Herald = context.Herald;
  assert.equal(typeof Herald, 'function');
  for (const name of Object.keys(esm)) assert.ok(name in Herald, `Herald.${name}`);
  assert.equal(Herald.PROTOCOL_VERSION, 2);
  const client = new Herald({ url: 'ws://gateway.test/ws', token: 't' });
  const sub = client.subscribe('news');
  assert.ok(sub instanceof Herald.Subscription);
  assert.equal(sub.state, 'subscribing');
  assert.equal(new Herald.HeraldError('x', 'y').code, 'x');
});

test('the CommonJS build exports what the ES module does', () => {
  const require = createRequire(import.meta.url);
  const cjs = require('../dist/herald.cjs');
  assert.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort());
  const codec = require('../dist/msgpack.cjs');
  assert.deepEqual(codec.decode(codec.encode({ a: [1, 'x'] })), { a: [1, 'x'] });
});

test('every file of the exports map exists, with a source map next to each script', () => {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
  const files = new Set();
  const walk = (v) => (typeof v === 'string' ? files.add(v) : Object.values(v).forEach(walk));
  walk(pkg.exports);
  for (const key of ['main', 'module', 'types', 'unpkg']) files.add(pkg[key]);
  for (const file of files) {
    assert.ok(existsSync(new URL(`../${file}`, import.meta.url)), `${file} is missing`);
    if (/\.c?js$/.test(file)) assert.ok(existsSync(new URL(`../${file}.map`, import.meta.url)), `${file}.map is missing`);
  }
});
