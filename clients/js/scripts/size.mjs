// Measures what an app ships, gzipped at level 9: `npm run size`.
// - default: dist/herald.min.js, the <script> bundle (minified IIFE, no MessagePack);
// - esm: dist/herald.js through esbuild's minifier, as an app's bundler would ship it;
// - msgpack: dist/msgpack.js minified, loaded only for `protocol: "msgpack"`.
// test/bundle.test.mjs holds the first two to BUDGET and the third to MSGPACK_BUDGET.
import { readFile } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import { transform } from 'esbuild';

export const BUDGET = 6 * 1024;
export const MSGPACK_BUDGET = 3 * 1024;

const dist = new URL('../dist/', import.meta.url);

async function measure(file, { minify }) {
  let code = await readFile(new URL(file, dist), 'utf8');
  code = code.replace(/\n\/\/# sourceMappingURL=\S+\s*$/, '\n');
  if (minify) code = (await transform(code, { minify: true, format: 'esm', target: 'es2022' })).code;
  return { file, minified: Buffer.byteLength(code), gzipped: gzipSync(code, { level: 9 }).length };
}

export async function sizes() {
  return {
    default: await measure('herald.min.js', { minify: false }),
    esm: await measure('herald.js', { minify: true }),
    msgpack: await measure('msgpack.js', { minify: true }),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const [name, s] of Object.entries(await sizes())) {
    console.log(`${name.padEnd(8)} ${s.file.padEnd(14)} minified ${String(s.minified).padStart(6)} B, gzipped ${String(s.gzipped).padStart(5)} B`);
  }
}
