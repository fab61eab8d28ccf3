// Builds dist/ from src/: `npm run build`.
//
//   herald.js      ES module (bundled, readable) + herald.js.map
//   herald.cjs     CommonJS, the same code + herald.cjs.map
//   herald.min.js  minified IIFE for a <script> tag: sets the global `Herald` + .map
//   msgpack.js / msgpack.cjs   the MessagePack module, ES module and CommonJS + maps
//   *.d.ts / *.d.cts           declarations (tsc), for `import` and `require`
//
// Invariant: no bundle contains the MessagePack module. The client's
// `import("./msgpack.js")` stays a dynamic import of the sibling file
// (`./msgpack.cjs` from herald.cjs), so only apps that ask for
// `protocol: "msgpack"` load it.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { build } from 'esbuild';

const root = new URL('../', import.meta.url);
const dist = new URL('dist/', root);
const src = (name) => new URL(`src/${name}`, root).pathname;
const out = (name) => new URL(name, dist).pathname;

rmSync(dist, { recursive: true, force: true });
// Type-checks everything, and writes the declarations (emitDeclarationOnly).
execFileSync(process.execPath, [new URL('node_modules/typescript/bin/tsc', root).pathname, '-p', new URL('.', root).pathname], { stdio: 'inherit' });

/** Keeps `import("./msgpack.js")` out of the bundle, naming the sibling file of `format`. */
const lazyMsgpack = (file) => ({
  name: 'lazy-msgpack',
  setup(b) {
    b.onResolve({ filter: /^\.\/msgpack\.js$/ }, (args) => (args.kind === 'dynamic-import' ? { path: `./${file}`, external: true } : undefined));
  },
});

const common = { bundle: true, target: 'es2022', sourcemap: true, legalComments: 'none', logLevel: 'warning' };
await Promise.all([
  build({ ...common, entryPoints: [src('herald.ts')], outfile: out('herald.js'), format: 'esm', plugins: [lazyMsgpack('msgpack.js')] }),
  // platform 'node' annotates the CommonJS exports, so Node's `import()` of msgpack.cjs sees them by name.
  build({ ...common, entryPoints: [src('herald.ts')], outfile: out('herald.cjs'), format: 'cjs', platform: 'node', plugins: [lazyMsgpack('msgpack.cjs')] }),
  build({
    ...common,
    entryPoints: [src('iife.ts')],
    outfile: out('herald.min.js'),
    // An ES module with no exports, wrapped in a function: format 'iife' would add
    // unused require/interop helpers for the external dynamic import.
    format: 'esm',
    banner: { js: '(()=>{' },
    footer: { js: '})();' },
    minify: true,
    // Members the SDK's own classes share internally (`_state`, `_pos`…); nothing outside the bundle reads them.
    mangleProps: /^_/,
    plugins: [lazyMsgpack('msgpack.js')],
  }),
  build({ ...common, entryPoints: [src('msgpack.ts')], outfile: out('msgpack.js'), format: 'esm' }),
  build({ ...common, entryPoints: [src('msgpack.ts')], outfile: out('msgpack.cjs'), format: 'cjs', platform: 'node' }),
]);

// Declarations for `require`: the same text, as .d.cts files that import each other.
for (const name of readdirSync(dist).filter((f) => f.endsWith('.d.ts'))) {
  const text = readFileSync(out(name), 'utf8').replace(/(from\s+["']\.\/[\w-]+)\.js(["'])/g, '$1.cjs$2');
  writeFileSync(out(name.replace(/\.d\.ts$/, '.d.cts')), text);
}

for (const file of ['herald.js', 'herald.cjs', 'herald.min.js']) {
  if (/MsgpackError|MAX_DEPTH/.test(readFileSync(out(file), 'utf8'))) throw new Error(`${file} contains the MessagePack module`);
}
