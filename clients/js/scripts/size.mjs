// Measures the SDK as an app ships it: dist/herald.js minified by esbuild
// (ESM, as a bundler would), raw and gzipped. `npm run size` prints it.
import { readFile } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import { transform } from 'esbuild';

export async function measure(path = new URL('../dist/herald.js', import.meta.url)) {
  const source = await readFile(path, 'utf8');
  const { code } = await transform(source, { minify: true, format: 'esm', target: 'es2022' });
  return { source: Buffer.byteLength(source), minified: Buffer.byteLength(code), gzipped: gzipSync(code, { level: 9 }).length };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const size = await measure();
  console.log(`dist/herald.js: ${size.source} B; minified ${size.minified} B; minified + gzip ${size.gzipped} B`);
}
