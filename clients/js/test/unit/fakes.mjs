// Test doubles for the SDK's unit tests: a clock whose time moves only when
// told, and a WebSocket whose server side the test plays by hand, in the
// encoding the client asked for (JSON text, or MessagePack in binary frames).
import { Herald } from '../../dist/herald.js';
import * as msgpack from '../../dist/msgpack.js';

export { msgpack };

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
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.binaryType = 'blob';
      this.readyState = 0;
      this.sent = [];
      this.raw = [];
      this.closedWith = undefined;
      this.listeners = {};
      sockets.push(this);
    }

    /** The negotiated subprotocol: the server echoes what was asked. */
    get protocol() {
      return [this.protocols].flat()[0] ?? '';
    }

    get msgpack() {
      return this.protocol === 'herald.v2.msgpack';
    }

    /** The token of the `connect` frame, else of the query. */
    get token() {
      return this.sent.find((f) => f.type === 'connect')?.token ?? new URL(this.url).searchParams.get('token');
    }

    send(data) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.raw.push(data);
      if (this.msgpack !== (data instanceof Uint8Array)) throw new Error(`a ${typeof data} frame on a ${this.protocol} socket`);
      this.sent.push(this.msgpack ? msgpack.decode(data) : JSON.parse(data));
    }

    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }

    // ---- the server's side

    /** The upgrade succeeded: the client may send (its `connect` frame first). */
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }

    /** Opens the socket (if not yet) and sends `welcome`. */
    accept(welcome = {}) {
      if (this.readyState !== 1) this.open();
      this.receive({ type: 'welcome', session: `s${sockets.indexOf(this)}`, node: 'n1', heartbeat_ms: 25_000, protocol: 2, ...welcome });
    }

    /** Sends `frame` in the socket's encoding (an ArrayBuffer for MessagePack, as `binaryType = "arraybuffer"` gives). */
    receive(frame) {
      this.receiveRaw(this.msgpack ? msgpack.encode(frame).buffer : JSON.stringify(frame));
    }

    receiveRaw(data) {
      this.onmessage?.({ data });
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

    /** Answers the last `subscribe` with `subscribed` (and `recovered` and `positions`, if given). */
    subscribed(recovered, positions) {
      const sub = this.last('subscribe');
      this.receive({ type: 'subscribed', ref: sub.ref, topics: sub.topics, ...(recovered ? { recovered } : {}), ...(positions ? { positions } : {}) });
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

/** Waits (bounded) until the client opened socket number `n` (1-based): opening may await a dynamic import. */
export async function socketOpened(t, n = t.sockets.length + 1) {
  for (let i = 0; i < 200 && t.sockets.length < n; i++) await new Promise((resolve) => setTimeout(resolve, 5));
  if (t.sockets.length < n) throw new Error(`no socket ${n} within 1 s`);
  return t.sockets[n - 1];
}

/** Records every event of `sub` (a Subscription). */
export function record(sub) {
  const events = { message: [], subscribed: [], recovered: [], error: [], unsubscribed: [] };
  for (const name of Object.keys(events)) sub.on(name, (value) => events[name].push(value));
  return events;
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
