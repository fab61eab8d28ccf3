// The package as npm ships it: `npm pack`, installed from the tarball into a
// fresh folder, used from Node through `import` and through `require`
// (and the `/msgpack` subpath both ways), its types resolved by tsc under
// `node16` for both, and, when this checkout has a built herald-gateway,
// both flavours connected to a real gateway (JSON and MessagePack) and
// receiving an event. Run after `npm run build`.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { binDir, deadline, mintToken, publish, startGateway, stopAll } from '../../../tests/support/processes.mjs';

deadline(170_000, 'package.test.mjs');

const run = promisify(execFile);
const sdkDir = fileURLToPath(new URL('..', import.meta.url));
const gatewayBin = join(binDir, 'herald-gateway');
const wsUrl = pathToFileURL(join(sdkDir, 'node_modules/ws/wrapper.mjs')).href;

/** Runs `node file` in `cwd` with `env`; resolves with its stdout (bounded). */
async function node(cwd, file, env = {}) {
  const { stdout } = await run(process.execPath, [file], { cwd, env: { ...process.env, ...env }, timeout: 60_000 });
  return stdout;
}

describe('the packed package', { timeout: 160_000 }, () => {
  let work;
  let tarball;
  let files;

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'herald-pack-'));
    const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', work], { cwd: sdkDir, timeout: 60_000 });
    const [info] = JSON.parse(stdout);
    tarball = join(work, info.filename);
    files = info.files.map((f) => f.path).sort();
    const app = join(work, 'app');
    await run('mkdir', ['-p', app]);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'commonjs' }));
    await run('npm', ['install', '--no-audit', '--no-fund', '--offline', tarball], { cwd: app, timeout: 60_000 });
  });

  after(async () => {
    await stopAll();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('ships the builds, declarations and maps, and nothing else', () => {
    for (const f of ['package.json', 'README.md', 'dist/herald.js', 'dist/herald.cjs', 'dist/herald.min.js', 'dist/msgpack.js', 'dist/msgpack.cjs', 'dist/herald.d.ts', 'dist/herald.d.cts', 'dist/msgpack.d.ts', 'dist/msgpack.d.cts', 'dist/herald.js.map']) {
      assert.ok(files.includes(f), `${f} is packed: ${files.join(', ')}`);
    }
    assert.deepEqual(files.filter((f) => !f.startsWith('dist/') && !['package.json', 'README.md'].includes(f)), []);
    assert.ok(!files.some((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')), 'no sources');
  });

  it('works through import and require, the /msgpack subpath too', async () => {
    const app = join(work, 'app');
    const probe = `
      const out = {};
      out.protocol = sdk.PROTOCOL_VERSION;
      const client = new sdk.Herald({ url: 'ws://127.0.0.1:9/ws', token: 't', WebSocket: class {} });
      out.state = client.subscribe('news').state;
      out.error = new sdk.HeraldError('forbidden', 'no') instanceof Error;
      out.roundTrip = codec.decode(codec.encode({ bin: new Uint8Array([1, 2]) })).bin instanceof Uint8Array;
      console.log(JSON.stringify(out));`;
    writeFileSync(join(app, 'esm.mjs'), `import * as sdk from '@herald-push/client'; import * as codec from '@herald-push/client/msgpack';${probe}`);
    writeFileSync(join(app, 'cjs.cjs'), `const sdk = require('@herald-push/client'); const codec = require('@herald-push/client/msgpack');${probe}`);
    const expected = { protocol: 2, state: 'subscribing', error: true, roundTrip: true };
    assert.deepEqual(JSON.parse(await node(app, 'esm.mjs')), expected);
    assert.deepEqual(JSON.parse(await node(app, 'cjs.cjs')), expected);
  });

  it('gives TypeScript the right declarations for import and for require (node16)', async () => {
    const app = join(work, 'app');
    const use = `
      const client = new Herald({ url: 'ws://x/ws', token: 't', protocol: 'msgpack', tokenIn: 'frame' });
      const sub: Subscription<Uint8Array> = client.subscribe<Uint8Array>('ticks.bin');
      sub.on('message', (m) => m.data.byteLength);
      const page: Promise<PresencePage> = client.presence('chat.a', { limit: 10 });
      const bytes: Uint8Array = encode({ a: 1 });
      void page; void bytes;`;
    writeFileSync(join(app, 'esm.mts'), `import { Herald, Subscription, type PresencePage } from '@herald-push/client'; import { encode } from '@herald-push/client/msgpack';${use}`);
    writeFileSync(join(app, 'cjs.cts'), `import { Herald, Subscription, type PresencePage } from '@herald-push/client'; import { encode } from '@herald-push/client/msgpack';${use}`);
    const compilerOptions = { noEmit: true, strict: true, module: 'node16', moduleResolution: 'node16', target: 'es2022', lib: ['es2022', 'dom'], types: [] };
    writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: ['esm.mts', 'cjs.cts'] }));
    const tsc = join(sdkDir, 'node_modules/typescript/bin/tsc');
    const result = await run(process.execPath, [tsc, '-p', '.'], { cwd: app, timeout: 60_000 }).catch((e) => e);
    assert.equal(result.code ?? 0, 0, `tsc: ${result.stdout}${result.stderr}`);
  });

  it('connects to a real gateway from both, JSON through import and MessagePack through require', { skip: !existsSync(gatewayBin) && `no ${gatewayBin}` }, async () => {
    const gateway = await startGateway({});
    const app = join(work, 'app');
    const client = (load) => `
      ${load}
      const client = new Herald({ url: process.env.URL, token: process.env.TOKEN, WebSocket: WS, protocol: process.env.PROTOCOL, backoff: { baseMs: 50, maxMs: 200 } });
      const sub = client.subscribe('news');
      const timer = setTimeout(() => { console.log(JSON.stringify({ error: 'no event within 20 s', state: client.state })); process.exit(1); }, 20_000);
      client.on('error', (e) => console.error('herald error', e.code, e.message));
      sub.on('message', (m) => { console.log(JSON.stringify({ data: m.data, protocol: client.connection.protocol, negotiated: client.socket.protocol })); clearTimeout(timer); client.close(); });
      sub.ready().then(() => console.log('READY'));
      client.connect();`;
    writeFileSync(join(app, 'live.mjs'), client(`import { Herald } from '@herald-push/client'; const { default: WS } = await import(process.env.WS_URL);`));
    writeFileSync(join(app, 'live.cjs'), client(`const { Herald } = require('@herald-push/client'); const WS = require(require('node:url').fileURLToPath(process.env.WS_URL).replace('wrapper.mjs', 'index.js'));`));
    for (const [file, protocol] of [['live.mjs', 'json'], ['live.cjs', 'msgpack']]) {
      const env = { URL: `ws://127.0.0.1:${gateway.port}/ws`, TOKEN: await mintToken({ sub: `pack-${protocol}` }), WS_URL: wsUrl, PROTOCOL: protocol };
      const child = execFile(process.execPath, [file], { cwd: app, env: { ...process.env, ...env }, timeout: 30_000 });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => {
        stdout += d;
        // Publish once the subscription is live: `subscribed` means the event will arrive.
        if (String(d).includes('READY')) void publish(gateway.adminUrl, { topic: 'news', data: { via: file } });
      });
      child.stderr.on('data', (d) => (stderr += d));
      const code = await new Promise((resolve) => child.on('exit', resolve));
      assert.equal(code, 0, `${file}: ${stdout}${stderr}`);
      const result = JSON.parse(stdout.trim().split('\n').at(-1));
      assert.deepEqual(result, { data: { via: file }, protocol: 2, negotiated: `herald.v2.${protocol}` });
    }
  });
});
