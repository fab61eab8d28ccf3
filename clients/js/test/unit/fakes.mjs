// Test doubles for the SDK's unit tests: a clock whose time moves only when
// told, and a WebSocket whose server side the test plays by hand.
import { Herald } from '../../dist/herald.js';

/** Lets promise chains and queued microtasks run. */
export const settle = () => new Promise((resolve) => setImmediate(resolve));

export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.t = start;
    this.timers = new Map();
    this.seq = 0;
  }

  now() {
    return this.t;
  }

  setTimeout(fn, ms) {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  /** Moves time forward by `ms`, firing due timers in order, settling after each. */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      await settle();
      let next;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (!next || timer.at < next[1].at)) next = [id, timer];
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = end;
    await settle();
  }
}

/** A WebSocket class whose instances land in `sockets`; `nodeStyle` adds `ws`'s `on`/`terminate`. */
export function fakeWebSocket({ nodeStyle = false } = {}) {
  const sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = undefined;
      this.listeners = {};
      sockets.push(this);
    }

    get token() {
      return new URL(this.url).searchParams.get('token');
    }

    send(text) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.sent.push(JSON.parse(text));
    }

    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }

    // ---- the server's side

    /** Opens the socket and sends `welcome`. */
    accept(welcome = {}) {
      this.readyState = 1;
      this.receive({ type: 'welcome', session: `s${sockets.indexOf(this)}`, node: 'n1', heartbeat_ms: 25_000, protocol: 1, ...welcome });
    }

    receive(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }

    /** The server (or the network) closes the connection. */
    serverClose(code, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }

    /** Frames of `type` the client sent. */
    frames(type) {
      return this.sent.filter((f) => f.type === type);
    }

    last(type) {
      return this.frames(type).at(-1);
    }

    /** Answers the last `subscribe` with `subscribed` (and `recovered`, if given). */
    subscribed(recovered) {
      const sub = this.last('subscribe');
      this.receive({ type: 'subscribed', ref: sub.ref, topics: sub.topics, ...(recovered ? { recovered } : {}) });
    }

    // ---- Node's `ws` only

    on(event, fn) {
      if (!nodeStyle) throw new Error('not a node-style socket');
      (this.listeners[event] ??= []).push(fn);
    }

    terminate() {
      this.readyState = 3;
      queueMicrotask(() => this.onclose?.({ code: 1006, reason: '' }));
    }

    /** The handshake is answered with HTTP `status`, as `ws` reports it. */
    refuse(status, headers = {}) {
      for (const fn of this.listeners['unexpected-response'] ?? []) fn({}, { statusCode: status, headers });
    }
  }
  if (!nodeStyle) {
    delete FakeSocket.prototype.on;
    delete FakeSocket.prototype.terminate;
  }
  return { FakeSocket, sockets };
}

/** A client on a fake clock and fake sockets, with every event it emits recorded. */
export function setup(options = {}, { nodeStyle = false } = {}) {
  const clock = new FakeClock();
  const { FakeSocket, sockets } = fakeWebSocket({ nodeStyle });
  const client = new Herald({
    url: 'ws://gateway.test/ws',
    token: 'static-token',
    WebSocket: FakeSocket,
    clock,
    random: () => 0.5,
    connectTimeoutMs: 3_600_000, // tests that move time far would otherwise hit it
    ...options,
  });
  const events = { state: [], subscribed: [], message: [], error: [], recovered: [], token_expiring: [], presence: [] };
  for (const name of Object.keys(events)) client.on(name, (value) => events[name].push(value));
  return { client, clock, sockets, events, latest: () => sockets.at(-1) };
}

/** `setup`, connected: the first socket accepted with `welcome` (merged into the default one). */
export async function connected(options, welcome) {
  const t = setup(options);
  t.client.connect();
  await t.clock.advance(0);
  t.latest().accept(welcome);
  await t.clock.advance(0);
  return t;
}

/** An unsigned JWT-shaped token whose `exp` is `expMs` (the SDK only reads it). */
export function jwt(expMs, sub = 'alice') {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'HS256' })}.${b64({ sub, exp: Math.floor(expMs / 1000) })}.sig`;
}

export const message = (topic, id, data = {}) => ({ type: 'message', topic, id, data, ts: 1 });
