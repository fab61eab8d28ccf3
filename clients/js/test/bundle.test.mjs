// The build artefacts: the copy of dist/herald.js that herald-gateway embeds
// for the demo page (gateway/src/assets/herald.js) equals a fresh `tsc`
// build, and the minified SDK stays within its size budget.
// Run after `npm run build`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { measure } from '../scripts/size.mjs';

const built = new URL('../dist/herald.js', import.meta.url);
const embedded = new URL('../../../gateway/src/assets/herald.js', import.meta.url);

test('the gateway embeds the current build of the SDK', () => {
  assert.ok(
    readFileSync(embedded, 'utf8') === readFileSync(built, 'utf8'),
    'gateway/src/assets/herald.js differs from a fresh build: run `npm run gateway-asset` in clients/js and rebuild herald-gateway',
  );
});

test('the minified SDK stays small', async (t) => {
  const size = await measure(built);
  t.diagnostic(`minified ${size.minified} B, gzipped ${size.gzipped} B`);
  assert.ok(size.minified <= 12 * 1024, `minified: ${size.minified} B > 12 KiB`);
  assert.ok(size.gzipped <= 5 * 1024, `gzipped: ${size.gzipped} B > 5 KiB`);
});
