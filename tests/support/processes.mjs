// Real processes for the client tests: redis-server, herald-gateway,
// herald-admin and HAProxy on free loopback ports, each killed when the test
// process ends. Every wait here is bounded, and waits on a condition (a log
// line, an answer, a port that accepts), never on time alone.
//
// Binaries come from $HERALD_BIN_DIR (default: target/debug of this checkout).
import { spawn, execFile } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createServer, connect } from 'node:net';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const root = new URL('../../', import.meta.url).pathname;
export const binDir = process.env.HERALD_BIN_DIR || join(root, 'target/debug');
export const SECRET = 'client-tests-hs256-secret-0123456789abcdef';
export const ADMIN_KEY = 'client-tests-admin-key';

const running = new Set();
const killAll = () => {
  for (const p of running) p.child.kill('SIGKILL');
};
process.on('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    killAll();
    process.exit(1);
  });
}

/**
 * Ends the test process with a failure if it is still running after `ms`:
 * a hung hook or a wait that forgot its bound cannot keep CI waiting.
 */
export function deadline(ms, name) {
  setTimeout(() => {
    console.error(`${name}: still running after ${ms} ms; giving up`);
    for (const p of running) console.error(p.tail(15));
    process.exit(1); // the exit handler kills what is still running
  }, ms).unref();
}

/** Rejects with `what` if `promise` has not settled within `ms`. */
export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `check` (sync or async) every `everyMs` until it returns truthy; fails after `ms`. */
export async function until(what, check, { ms = 10_000, everyMs = 50 } = {}) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}

/** A port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** A child process whose output is kept (for `waitFor` and for failure reports). */
export class Proc {
  constructor(name, command, args) {
    this.name = name;
    this.output = [];
    this.waiters = new Set();
    this.child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(this);
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        running.delete(this);
        this.exitStatus = { code, signal };
        for (const w of this.waiters) w.reject(new Error(`${name} exited (${code ?? signal}) while waiting for ${w.pattern}\n${this.tail()}`));
        resolve(this.exitStatus);
      });
    });
    for (const stream of [this.child.stdout, this.child.stderr]) {
      let rest = '';
      stream.on('data', (chunk) => {
        const lines = (rest + chunk).split('\n');
        rest = lines.pop();
        for (const line of lines) this.line(line);
      });
    }
  }

  line(line) {
    this.output.push(line);
    if (this.output.length > 400) this.output.shift();
    for (const w of this.waiters) {
      const m = line.match(w.pattern);
      if (m) {
        this.waiters.delete(w);
        w.resolve(m);
      }
    }
  }

  /** Resolves with the match of the first output line (from now on) matching `pattern`. */
  waitFor(pattern, ms = 15_000) {
    if (this.exitStatus) return Promise.reject(new Error(`${this.name} is not running`));
    const waiter = { pattern };
    const found = new Promise((resolve, reject) => Object.assign(waiter, { resolve, reject }));
    this.waiters.add(waiter);
    return within(ms, `${this.name}: a line matching ${pattern}`, found).finally(() => this.waiters.delete(waiter));
  }

  tail(n = 30) {
    return this.output.slice(-n).map((l) => `  ${this.name}| ${l}`).join('\n');
  }

  /** Sends `signal` and waits (bounded) for the exit. */
  async stop(signal = 'SIGTERM', ms = 15_000) {
    if (this.exitStatus) return this.exitStatus;
    this.child.kill(signal);
    try {
      return await within(ms, `${this.name} to exit after ${signal}`, this.exited);
    } catch (e) {
      this.child.kill('SIGKILL');
      await this.exited;
      throw e;
    }
  }
}

/** Stops every process still running; SIGKILL after a bounded SIGTERM. */
export async function stopAll() {
  await Promise.allSettled([...running].map((p) => p.stop('SIGTERM', 5000)));
}

/** True once something accepts TCP connections on the port. */
function accepts(port) {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.on('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });
}

async function ready(proc, url, ms = 20_000) {
  await until(`${proc.name} answers 200 on ${url}`, async () => {
    if (proc.exitStatus) throw new Error(`${proc.name} exited (${proc.exitStatus.code ?? proc.exitStatus.signal})\n${proc.tail()}`);
    try {
      return (await fetch(url)).status === 200;
    } catch {
      return false;
    }
  }, { ms, everyMs: 100 });
}

/** redis-server on a free port, nothing on disk. */
export async function startRedis() {
  const port = await freePort();
  const proc = new Proc(`redis:${port}`, 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
  await proc.waitFor(/Ready to accept connections/);
  proc.url = `redis://127.0.0.1:${port}`;
  return proc;
}

/**
 * herald-gateway on `port` (a free one if not given), ready: /readyz answers 200.
 * Cluster mode with `redisUrl`; `dev` adds --dev (demo page, feed, /dev/token)
 * with the shared secret and admin key, so several nodes accept each other's tokens.
 */
export async function startGateway({ port, adminPort, redisUrl, nodeId, dev = false, bin = binDir, args = [] } = {}) {
  port ??= await freePort();
  adminPort ??= await freePort();
  const argv = [
    '--listen', `127.0.0.1:${port}`,
    '--admin-listen', `127.0.0.1:${adminPort}`,
    '--jwt-hs256-secret', SECRET,
    '--admin-api-keys', ADMIN_KEY,
    '--log-level', 'warn',
    '--drain-timeout', '2s',
    ...(redisUrl ? ['--redis-url', redisUrl] : []),
    ...(nodeId ? ['--node-id', nodeId] : []),
    ...(dev ? ['--dev'] : []),
    ...args,
  ];
  const proc = new Proc(`gateway:${nodeId ?? port}`, join(bin, 'herald-gateway'), argv);
  Object.assign(proc, { port, adminPort, url: `http://127.0.0.1:${port}`, adminUrl: `http://127.0.0.1:${adminPort}`, nodeId });
  await ready(proc, `${proc.url}/readyz`);
  return proc;
}

/** herald-admin (the admin API as its own service) on a free port, ready. */
export async function startAdmin({ redisUrl, bin = binDir }) {
  const port = await freePort();
  const proc = new Proc(`admin:${port}`, join(bin, 'herald-admin'), [
    '--admin-listen', `127.0.0.1:${port}`, '--redis-url', redisUrl, '--admin-api-keys', ADMIN_KEY, '--log-level', 'warn', '--drain-timeout', '2s',
  ]);
  proc.url = `http://127.0.0.1:${port}`;
  await ready(proc, `${proc.url}/readyz`);
  return proc;
}

/** HAProxy on a free port, round robin over `backends` (ports), no stickiness. */
export async function startHaproxy(backends) {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'herald-haproxy-'));
  const servers = backends.map((p, i) => `  server n${i + 1} 127.0.0.1:${p} check inter 300ms fall 1 rise 2`).join('\n');
  writeFileSync(join(dir, 'haproxy.cfg'), `global
  maxconn 1000
defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
  retries 3
  option redispatch
frontend public
  bind 127.0.0.1:${port}
  default_backend gateways
backend gateways
  balance roundrobin
  option httpchk GET /readyz
${servers}
`);
  const haproxy = process.env.HAPROXY || (existsSync('/usr/sbin/haproxy') ? '/usr/sbin/haproxy' : 'haproxy');
  const proc = new Proc(`haproxy:${port}`, haproxy, ['-db', '-f', join(dir, 'haproxy.cfg')]);
  proc.url = `http://127.0.0.1:${port}`;
  await until(`haproxy accepts on ${port}`, () => accepts(port));
  return proc;
}

/** A token signed with SECRET, from `herald-gateway token`. */
export function mintToken({ sub = 'tester', topics = 'news,alerts,stocks.*,chat.>', publish = 'chat.>', presence = '', ttl = '1h', bin = binDir } = {}) {
  const args = ['token', '--sub', sub, '--topics', topics, '--publish', publish, '--ttl', ttl, '--jwt-hs256-secret', SECRET];
  if (presence) args.push('--presence', presence);
  return new Promise((resolve, reject) => {
    execFile(join(bin, 'herald-gateway'), args, { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`herald-gateway token: ${err.message}\n${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

/**
 * An HS256 JWT signed in-process (no herald-gateway needed): for tokens the
 * CLI will not mint, such as expired ones or ones signed with another key.
 */
export function signToken(claims, secret = SECRET) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/** POST /v1/publish; resolves with the results. */
export async function publish(adminUrl, body) {
  const res = await fetch(`${adminUrl}/v1/publish`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`publish answered ${res.status}: ${text}`);
  return JSON.parse(text).results;
}
