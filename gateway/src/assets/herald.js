// src/codec.ts
function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 32768) s += String.fromCharCode(...bytes.subarray(i, i + 32768));
  return btoa(s);
}
function fromBase64(text) {
  const s = atob(text);
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes;
}
function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return void 0;
}
function frame(value) {
  if (typeof value !== "object" || value === null || Array.isArray(value) || typeof value.type !== "string") {
    throw new TypeError("not a frame");
  }
  return value;
}
var jsonCodec = {
  name: "herald.v2.json",
  encode(f) {
    const bytes = asBytes(f.data);
    if (bytes) {
      const { data: _, ...rest } = f;
      f = { ...rest, data_b64: toBase64(bytes) };
    }
    return JSON.stringify(f);
  },
  decode(data) {
    if (typeof data !== "string") throw new TypeError("a binary frame on a JSON connection");
    const f = frame(JSON.parse(data));
    if (typeof f.data_b64 === "string" && f.data === void 0) {
      f.data = fromBase64(f.data_b64);
      delete f.data_b64;
    }
    return f;
  }
};
function msgpackCodec(m) {
  return {
    name: "herald.v2.msgpack",
    encode: (f) => m.encode(f),
    decode(data) {
      const bytes = typeof data === "string" ? void 0 : asBytes(data);
      if (!bytes) throw new TypeError("a text frame on a MessagePack connection");
      return frame(m.decode(bytes));
    }
  };
}

// src/policy.ts
var DEFAULT_BACKOFF = { baseMs: 500, maxMs: 3e4, spreadMs: 1e3 };
function backoffDelay(attempt, backoff, random = Math.random) {
  return Math.floor(random() * Math.min(backoff.maxMs, backoff.baseMs * 2 ** attempt));
}
var CLOSE_ACTIONS = {
  1e3: "stop",
  4003: "stop",
  1012: "now",
  4001: "refresh",
  1002: "fault",
  1003: "fault",
  1007: "fault",
  1008: "fault",
  1009: "fault"
};
var REFUSALS = {
  unauthorized: "refresh",
  token_expired: "refresh",
  too_many_connections: "backoff",
  unavailable: "backoff"
};
function closeAction(code, reason = "") {
  if (code === 4005) return REFUSALS[reason] ?? "stop";
  return CLOSE_ACTIONS[code] ?? "backoff";
}
function handshakeAction(status) {
  if (status === 401) return "refresh";
  if (status === 403) return "stop";
  if (status === 400 || status === 426) return "fault";
  return "backoff";
}
function parseRetryAfter(value, now) {
  if (typeof value !== "string" || value.trim() === "") return void 0;
  const ms = /^\d+$/.test(value.trim()) ? Number(value) * 1e3 : Date.parse(value) - now;
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), 3e5) : void 0;
}
function tokenExpiry(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part + "=".repeat((4 - part.length % 4) % 4))).exp;
    return typeof exp === "number" ? exp * 1e3 : void 0;
  } catch {
    return void 0;
  }
}

// src/types.ts
var HeraldError = class extends Error {
  name = "HeraldError";
  code;
  topic;
  closeCode;
  constructor(code, message, extra = {}) {
    super(message, { cause: extra.cause });
    this.code = code;
    this.topic = extra.topic;
    this.closeCode = extra.closeCode;
  }
};

// src/subscription.ts
var Emitter = class {
  #listeners = /* @__PURE__ */ new Map();
  /** Listens to an event; returns a function that stops listening. */
  on(event, listener) {
    const set = this.#listeners.get(event) ?? /* @__PURE__ */ new Set();
    this.#listeners.set(event, set.add(listener));
    return () => void set.delete(listener);
  }
  /** Calls every listener of `event`; one that throws is reported to `onThrow`, and the others still run. */
  emit(event, value, onThrow) {
    for (const listener of this.#listeners.get(event) ?? []) {
      try {
        listener(value);
      } catch (e) {
        onThrow(e);
      }
    }
  }
};
var Subscription = class extends Emitter {
  /** @internal */
  constructor(topic, host, since) {
    super();
    this.topic = topic;
    this.#host = host;
    this._pos = since;
  }
  topic;
  /** @internal */
  _state = "subscribing";
  /** @internal The last message id, or the last position the gateway gave. */
  _pos;
  /** @internal Recent ids, oldest first (a Set keeps insertion order). */
  _seen = /* @__PURE__ */ new Set();
  /** @internal `subscribed` was read on the current connection. */
  _live = false;
  /** @internal A `subscribe` for it is in flight on the current connection. */
  _sent = false;
  /** @internal Live on an earlier connection, not yet resubscribed. */
  _wasLive = false;
  /** @internal Confirmed at least once. */
  _confirmed = false;
  /** @internal Handlers added through the `subscribe(topic, handler)` form. */
  _handlers = 0;
  #host;
  #error;
  #waiters = /* @__PURE__ */ new Set();
  /** Where the subscription stands. */
  get state() {
    return this._state;
  }
  /** The id of the last message received, or the gateway's last position for the topic: a valid `since`. */
  get position() {
    return this._pos;
  }
  /**
   * Resolves once the gateway has confirmed the topic (at once if it already
   * has); rejects with the refusal (`forbidden`, `invalid_topic`…),
   * `unsubscribed` or `revoked`, `closed`, or `timeout` after `timeoutMs`
   * if given.
   */
  ready(timeoutMs) {
    if (this.#error) return Promise.reject(this.#error);
    if (this._confirmed) return Promise.resolve(this);
    if (this.#host.closed()) return Promise.reject(new HeraldError("closed", "the client is closed", { topic: this.topic }));
    return new Promise((resolve, reject) => {
      const clock = this.#host.clock;
      let timer;
      const w = {
        ok: () => {
          clock.clearTimeout(timer);
          resolve(this);
        },
        fail: (e) => {
          clock.clearTimeout(timer);
          reject(e);
        }
      };
      if (timeoutMs !== void 0) {
        timer = clock.setTimeout(() => {
          this.#waiters.delete(w);
          reject(new HeraldError("timeout", `${this.topic} not confirmed within ${timeoutMs} ms`, { topic: this.topic }));
        }, timeoutMs);
      }
      this.#waiters.add(w);
    });
  }
  /** Stops the subscription for good and tells the gateway; its `ready()` promises reject with `unsubscribed`. */
  unsubscribe() {
    if (this._state === "unsubscribed" || this._state === "failed") return;
    this.#host.release(this);
    this._end("unsubscribed", new HeraldError("unsubscribed", `${this.topic} was unsubscribed`, { topic: this.topic }), "client");
  }
  // ---- transitions, called by the client
  /** @internal */
  _emit(event, value) {
    this.emit(
      event,
      value,
      (cause) => this.#host.fault(new HeraldError("handler", `a '${String(event)}' listener of ${this.topic} threw`, { topic: this.topic, cause }))
    );
  }
  /** @internal The gateway confirmed the topic on this connection. */
  _subscribed(position) {
    this._state = "subscribed";
    this._confirmed = true;
    if (position !== void 0) this._pos = position;
    this.#settle();
    this._emit("subscribed", { topic: this.topic, position: this._pos });
  }
  /** @internal The connection went away; resubscribed on the next one. */
  _disconnected() {
    this._wasLive ||= this._live;
    this._live = this._sent = false;
    if (this._state === "subscribed") this._state = "subscribing";
  }
  /** @internal The client closed: pending `ready()` promises reject with `closed`. */
  _closed() {
    this.#settle(new HeraldError("closed", "the client is closed", { topic: this.topic }));
  }
  /** @internal An end state: `failed` (with the refusal) or `unsubscribed` (`client` or `revoked`). */
  _end(state, error, reason) {
    this._state = state;
    this._live = this._sent = false;
    this.#error = error;
    this.#settle(error);
    if (state === "failed") this._emit("error", error);
    else this._emit("unsubscribed", { topic: this.topic, reason: reason ?? "client" });
  }
  #settle(error) {
    for (const w of this.#waiters) {
      if (error) w.fail(error);
      else w.ok();
    }
    this.#waiters.clear();
  }
};

// src/topics.ts
var TOPICS_PER_FRAME = 64;
var RETRYABLE = /* @__PURE__ */ new Set(["unavailable", "rate_limited", "internal", "timeout"]);
var noop = () => {
};
var Topics = class {
  subs = /* @__PURE__ */ new Map();
  #flushQueued = false;
  #attempt = 0;
  #retry;
  #host;
  #dedupWindow;
  constructor(host, dedupWindow) {
    this.#host = host;
    this.#dedupWindow = dedupWindow;
  }
  /** Adds a new subscription; it is asked for with the next flush (this tick's additions share a frame). */
  add(sub) {
    this.subs.set(sub.topic, sub);
    this.#schedule();
  }
  #schedule() {
    if (this.#flushQueued) return;
    this.#flushQueued = true;
    queueMicrotask(() => {
      this.#flushQueued = false;
      this.flush();
    });
  }
  /** Hands a message to its topic's listeners, once per id, and moves the topic's position. */
  deliver(m) {
    const s = this.subs.get(m.topic);
    if (!s || s._seen.has(m.id)) return;
    s._seen.add(m.id);
    if (s._seen.size > this.#dedupWindow) s._seen.delete(s._seen.values().next().value);
    s._pos = m.id;
    s._emit("message", m);
    this.#host.tell("message", m);
  }
  /** Subscribes every wanted topic that is neither live nor asked for, with `since` = its position where known. */
  flush() {
    if (!this.#host.welcomed()) return;
    const names = [...this.subs.values()].filter((s) => !s._live && !s._sent).map((s) => s.topic);
    for (let i = 0; i < names.length; i += TOPICS_PER_FRAME) {
      const topics = names.slice(i, i + TOPICS_PER_FRAME);
      const since = {};
      for (const name of topics) {
        const s = this.subs.get(name);
        s._sent = true;
        if (s._pos !== void 0) since[name] = s._pos;
      }
      const frame2 = { type: "subscribe", topics };
      if (Object.keys(since).length > 0) frame2.since = since;
      this.#host.call(
        frame2,
        (reply) => this.#subscribed(topics, since, reply),
        (e) => this.#refused(topics, e)
      );
    }
  }
  /** The socket went away: nothing is live any more. */
  disconnected() {
    this.#host.cancel(this.#retry);
    for (const s of this.subs.values()) s._disconnected();
  }
  /** The client closed: pending `ready()` promises reject. */
  closed() {
    for (const s of this.subs.values()) s._closed();
  }
  /** `unsubscribe()` of an active subscription: forget it, and tell the gateway if it knows the topic. */
  release(s) {
    if (this.subs.get(s.topic) !== s) return;
    this.subs.delete(s.topic);
    if ((s._live || s._sent) && this.#host.welcomed()) this.#host.call({ type: "unsubscribe", topics: [s.topic] }, noop, noop);
  }
  /** A refreshed token no longer permits these topics: the gateway dropped them. */
  revoke(topics, report) {
    for (const name of topics) {
      const s = this.subs.get(name);
      if (!s) continue;
      this.subs.delete(name);
      const error = new HeraldError("revoked", `the refreshed token no longer permits ${name}`, { topic: name });
      s._end("unsubscribed", error, "revoked");
      report(error);
    }
  }
  #subscribed(topics, since, reply) {
    this.#attempt = 0;
    const recovered = reply.recovered ?? {};
    const positions = reply.positions ?? {};
    for (const name of topics) {
      const s = this.subs.get(name);
      if (!s?._sent) continue;
      s._sent = false;
      s._live = true;
      const ok = recovered[name] ?? (s._wasLive && !(name in since) ? false : void 0);
      s._wasLive = false;
      const position = positions[name];
      s._subscribed(typeof position === "string" ? position : void 0);
      this.#host.tell("subscribed", { topic: name });
      if (ok !== void 0) {
        s._emit("recovered", { topic: name, recovered: ok });
        this.#host.tell("recovered", { topic: name, recovered: ok });
      }
    }
  }
  /** A refused subscribe: the topics at fault fail for good, unless the refusal is worth a retry. */
  #refused(topics, e) {
    if (e.code === "disconnected" || e.code === "closed") return;
    const retry = RETRYABLE.has(e.code);
    for (const name of topics) {
      const s = this.subs.get(name);
      if (!s) continue;
      s._sent = false;
      const error = new HeraldError(e.code, e.message, { topic: name });
      if (retry) {
        s._emit("error", error);
      } else if (e.topic === void 0 || e.topic === name) {
        this.subs.delete(name);
        s._end("failed", error);
        this.#host.tell("error", error);
      }
    }
    if (!retry) return this.#schedule();
    this.#host.cancel(this.#retry);
    this.#retry = this.#host.later(this.#attempt++, () => this.flush());
  }
};

// src/herald.ts
var PROTOCOL_VERSION = 2;
var TOKEN_MARGIN_MS = 6e4;
var systemClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle)
};
function resolveUrl(url) {
  const u = new URL(url, typeof location === "undefined" ? void 0 : location.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") throw new TypeError(`not a WebSocket URL: ${url}`);
  return u.toString();
}
var Herald = class extends Emitter {
  #options;
  #url;
  #Socket;
  #tokenIn;
  #backoff;
  #clock;
  #random;
  #limits;
  #topics;
  #pending = /* @__PURE__ */ new Map();
  #host;
  #codec;
  #current = "closed";
  #stopped = true;
  /** `close()` was called, or a close code ended it: requests fail at once. */
  #ended = false;
  #ws;
  #welcomed = false;
  #info = {};
  /** Bumped by every `open` and `stop`: a stale async `open` gives up. */
  #generation = 0;
  #ref = 0;
  #attempt = 0;
  #faults = 0;
  /** Tokens refused at connect in a row (4005 `unauthorized`/`token_expired`, HTTP 401). */
  #refusals = 0;
  /** The last close refused the token: if the provider now fails, stop. */
  #refused = false;
  #token;
  #needFreshToken = false;
  #handshake;
  #heartbeatMs = 25e3;
  #lastFrameAt = 0;
  #pinged = false;
  #timers = {};
  constructor(options) {
    super();
    this.#options = options;
    this.#url = resolveUrl(options.url);
    const Socket = options.WebSocket ?? globalThis.WebSocket;
    if (!Socket) {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket (the ws package) or run Node with --experimental-websocket");
    }
    if (![void 0, "json", "msgpack"].includes(options.protocol)) throw new TypeError(`unknown protocol: ${options.protocol}`);
    if (![void 0, "frame", "query"].includes(options.tokenIn)) throw new TypeError(`unknown tokenIn: ${options.tokenIn}`);
    this.#Socket = Socket;
    this.#tokenIn = options.tokenIn ?? "frame";
    this.#backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#limits = {
      maxFaults: options.maxFaults ?? 3,
      requestTimeoutMs: options.requestTimeoutMs ?? 15e3,
      connectTimeoutMs: options.connectTimeoutMs ?? 1e4,
      dedupWindow: options.dedupWindow ?? 1e3
    };
    this.#host = { clock: this.#clock, closed: () => this.#ended, release: (s) => this.#topics.release(s), fault: (e) => this.#emitError(e) };
    this.#topics = new Topics(
      {
        welcomed: () => this.#welcomed,
        call: (frame2, reply, fail) => this.#call(frame2, true, reply, fail),
        later: (attempt, fn) => this.#clock.setTimeout(fn, backoffDelay(attempt, this.#backoff, this.#random)),
        cancel: (handle) => this.#clock.clearTimeout(handle),
        tell: (event, value) => this.#tell(event, value)
      },
      this.#limits.dedupWindow
    );
  }
  /** The connection state. */
  get state() {
    return this.#current;
  }
  /** The gateway node, session and protocol version of the current connection (from `welcome`). */
  get connection() {
    return { ...this.#info };
  }
  /** The current socket, for diagnostics (e.g. its negotiated `protocol` and `extensions`). */
  get socket() {
    return this.#ws;
  }
  /** Starts connecting, and keeps reconnecting until `close()`. Idempotent. */
  connect() {
    if (this.#stopped) {
      this.#stopped = false;
      this.#ended = false;
      this.#attempt = this.#faults = this.#refusals = 0;
      this.#setState("connecting");
      void this.#open();
    }
    return this;
  }
  /** Closes the connection for good (1000); requests in flight fail with `closed`. `connect()` starts again. */
  close() {
    if (!this.#stopped) this.#stop();
  }
  subscribe(topic, arg) {
    let sub = this.#topics.subs.get(topic);
    if (!sub) {
      sub = new Subscription(topic, this.#host, typeof arg === "object" ? arg?.since : void 0);
      this.#topics.add(sub);
    }
    if (typeof arg !== "function") return sub;
    const s = sub;
    const off = s.on("message", arg);
    s._handlers++;
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      off();
      if (--s._handlers === 0) s.unsubscribe();
    };
  }
  /** The active subscription of `topic`, if any. */
  subscription(topic) {
    return this.#topics.subs.get(topic);
  }
  /**
   * Publishes `data` to `topic` (the token's `publish` claim must allow it);
   * a `Uint8Array` (or `ArrayBuffer`) is sent as bytes. Waits for a connection.
   */
  publish(topic, data, options = {}) {
    const frame2 = { type: "publish", topic, data: asBytes(data) ?? data };
    if (options.event !== void 0) frame2.event = options.event;
    return this.#request(frame2).then((f) => ({ topic: f.topic, id: f.id }));
  }
  /**
   * A page of the sessions present on `topic` (the token's `presence` claim
   * must allow it): at most `limit` (1–1000, the gateway's default 100),
   * from `cursor` (a previous page's `nextCursor`).
   */
  presence(topic, options = {}) {
    const frame2 = { type: "presence", topic };
    if (options.limit !== void 0) frame2.limit = options.limit;
    if (options.cursor !== void 0) frame2.cursor = options.cursor;
    return this.#request(frame2).then((f) => {
      const page = { members: f.members ?? [], count: f.count ?? f.members?.length ?? 0 };
      if (typeof f.next_cursor === "string") page.nextCursor = f.next_cursor;
      return page;
    });
  }
  /** How many sessions and distinct users are on `topic` (same permission as `presence`). */
  presenceStats(topic) {
    return this.#request({ type: "presence_stats", topic }).then((f) => ({ count: f.count, users: f.users }));
  }
  // ---- connection lifecycle
  async #open() {
    const generation = ++this.#generation;
    let token;
    try {
      this.#codec ??= await this.#loadCodec();
      token = await this.#getToken(this.#needFreshToken || this.#attempt >= 2);
    } catch (e) {
      if (generation !== this.#generation) return;
      const error = e instanceof HeraldError ? e : new HeraldError("token_provider", "the token provider failed", { cause: e });
      if (this.#refused && error.code === "token_provider") {
        this.#stop(new HeraldError("token_provider", "the gateway refused the token and the token provider failed", { cause: error }));
        return;
      }
      this.#emitError(error);
      this.#retry("backoff");
      return;
    }
    if (generation !== this.#generation) return;
    this.#needFreshToken = false;
    let url = this.#url;
    if (this.#tokenIn === "query") {
      const u = new URL(url);
      u.searchParams.set("token", token);
      url = u.toString();
    }
    let ws;
    try {
      ws = new this.#Socket(url, this.#codec.name);
      ws.binaryType = "arraybuffer";
    } catch (e) {
      this.#emitError(new HeraldError("connect", "cannot open a WebSocket", { cause: e }));
      this.#retry("backoff");
      return;
    }
    this.#ws = ws;
    this.#welcomed = false;
    this.#handshake = void 0;
    ws.onopen = () => this.#ws === ws && this.#tokenIn === "frame" && this.#send({ type: "connect", token });
    ws.onmessage = (ev) => this.#ws === ws && this.#onFrame(ev.data);
    ws.onclose = (ev) => this.#ws === ws && this.#onClose(ev.code, ev.reason);
    ws.onerror = () => {
    };
    const emitter = ws;
    if (typeof emitter.on === "function") {
      emitter.on("unexpected-response", (_req, res) => {
        this.#handshake = { status: res.statusCode ?? 0, retryAfterMs: parseRetryAfter(res.headers?.["retry-after"], this.#clock.now()) };
        emitter.terminate?.();
      });
    }
    this.#timers.connect = this.#clock.setTimeout(() => {
      if (this.#ws === ws && !this.#welcomed) this.#drop(ws, "backoff", "connect timeout");
    }, this.#limits.connectTimeoutMs);
  }
  /** The codec of `options.protocol`; the MessagePack module is imported here, and only here. */
  async #loadCodec() {
    if (this.#options.protocol !== "msgpack") return jsonCodec;
    try {
      const m = this.#options.msgpack ?? await import("./msgpack.js");
      return msgpackCodec(m.encode ? m : m.default);
    } catch (e) {
      throw new HeraldError("codec", "cannot load the MessagePack module (msgpack.js next to the SDK, or options.msgpack)", { cause: e });
    }
  }
  #onClose(code, reason, action) {
    const welcomed = this.#welcomed;
    this.#detach();
    if (this.#stopped) return;
    const handshake = welcomed ? void 0 : this.#handshake;
    const act = action ?? (handshake ? handshakeAction(handshake.status) : closeAction(code, reason));
    if (welcomed && act !== "fault") this.#faults = 0;
    const why = { code: handshake ? void 0 : code, reason: handshake ? `handshake refused with HTTP ${handshake.status}` : reason };
    const closeCode = why.code;
    this.#refused = act === "refresh" && !welcomed;
    const refusal = code === 4005 ? reason : "token_expired";
    if (act === "stop") {
      this.#stop(new HeraldError("stopped", `not reconnecting: ${why.reason || `closed with ${code}`}`, { closeCode }), why);
    } else if (act === "fault" && ++this.#faults >= this.#limits.maxFaults) {
      this.#stop(new HeraldError("protocol_fault", `closed ${this.#faults} times in a row for a client fault`, { closeCode }), why);
    } else if (act === "refresh" && typeof this.#options.token === "string") {
      this.#stop(new HeraldError(refusal, `the token was refused or expired (${why.reason || code}) and no token provider was given`, { closeCode }), why);
    } else if (this.#refused && ++this.#refusals >= this.#limits.maxFaults) {
      this.#stop(new HeraldError(refusal, `the gateway refused ${this.#refusals} tokens in a row (${why.reason || code})`, { closeCode }), why);
    } else {
      if (act === "refresh") this.#needFreshToken = true;
      this.#retry(act === "now" || act === "refresh" && welcomed ? "now" : "backoff", why);
    }
  }
  /** Gives up on `ws` without waiting for its close handshake (dead path, no welcome). */
  #drop(ws, action, reason) {
    const emitter = ws;
    try {
      if (emitter.terminate) emitter.terminate();
      else ws.close(4e3, reason);
    } catch {
    }
    this.#onClose(1006, reason, action);
  }
  /** Forgets the current socket: its timers, its in-flight requests, its live subscriptions. */
  #detach() {
    this.#ws = void 0;
    this.#welcomed = false;
    for (const key of ["connect", "watchdog"]) this.#clock.clearTimeout(this.#timers[key]);
    this.#topics.disconnected();
    for (const [ref, p] of this.#pending) {
      if (!p.sent) continue;
      this.#pending.delete(ref);
      this.#clock.clearTimeout(p.timer);
      if (!p.internal) p.fail(new HeraldError("disconnected", "the connection closed before the reply"));
    }
  }
  #retry(kind, why = {}) {
    let delayMs = kind === "now" ? Math.floor(this.#random() * this.#backoff.spreadMs) : backoffDelay(this.#attempt++, this.#backoff, this.#random);
    const retryAfter = this.#handshake?.retryAfterMs;
    if (retryAfter !== void 0) delayMs = Math.max(delayMs, retryAfter + Math.floor(this.#random() * this.#backoff.spreadMs));
    this.#handshake = void 0;
    this.#setState("reconnecting", { ...why, delayMs });
    this.#timers.retry = this.#clock.setTimeout(() => void this.#open(), delayMs);
  }
  #stop(error, why = {}) {
    const ws = this.#ws;
    this.#stopped = this.#ended = true;
    this.#generation++;
    this.#clock.clearTimeout(this.#timers.retry);
    this.#detach();
    try {
      ws?.close(1e3);
    } catch {
    }
    for (const [ref, p] of this.#pending) {
      this.#pending.delete(ref);
      this.#clock.clearTimeout(p.timer);
      p.fail(new HeraldError("closed", "the client is closed"));
    }
    this.#topics.closed();
    if (error) this.#emitError(error);
    this.#info = {};
    this.#setState("closed", why);
  }
  async #getToken(fresh) {
    const source = this.#options.token;
    if (typeof source === "string") return source;
    if (!fresh && this.#token !== void 0) {
      const exp = tokenExpiry(this.#token);
      if (exp === void 0 || exp - this.#clock.now() > TOKEN_MARGIN_MS) return this.#token;
    }
    const ms = this.#limits.connectTimeoutMs;
    const token = await new Promise((resolve, reject) => {
      const timer = this.#clock.setTimeout(() => reject(new HeraldError("token_provider", `the token provider did not answer within ${ms} ms`)), ms);
      Promise.resolve().then(source).then(resolve, reject).finally(() => this.#clock.clearTimeout(timer));
    });
    if (typeof token !== "string" || token === "") throw new HeraldError("token_provider", "the token provider returned no token");
    return this.#token = token;
  }
  // ---- frames
  #onFrame(raw) {
    this.#lastFrameAt = this.#clock.now();
    this.#pinged = false;
    let f;
    try {
      f = this.#codec.decode(raw);
    } catch (e) {
      return this.#emitError(new HeraldError("bad_frame", "a frame from the gateway could not be decoded", { cause: e }));
    }
    switch (f.type) {
      case "welcome":
        return this.#onWelcome(f);
      case "message":
        return this.#topics.deliver(f);
      case "join":
      case "leave":
        return this.#tell("presence", {
          type: f.type,
          topic: f.topic,
          sub: f.sub,
          session: f.session,
          ...f.info === void 0 ? {} : { info: f.info }
        });
      case "token_expiring":
        return void this.#refreshToken(f.exp);
      case "unsubscribed":
        if (f.ref === void 0) return this.#topics.revoke(f.topics ?? [], (e) => this.#emitError(e));
        break;
      case "error":
        if (!this.#pending.has(f.ref)) return this.#emitError(new HeraldError(f.code, f.message ?? f.code, { topic: f.topic }));
    }
    const p = typeof f.ref === "string" ? this.#pending.get(f.ref) : void 0;
    if (!p) return;
    this.#pending.delete(f.ref);
    this.#clock.clearTimeout(p.timer);
    if (f.type === "error") p.fail(new HeraldError(f.code, f.message ?? f.code, { topic: f.topic }));
    else p.reply(f);
  }
  #onWelcome(f) {
    this.#clock.clearTimeout(this.#timers.connect);
    this.#welcomed = true;
    this.#attempt = this.#refusals = 0;
    this.#refused = false;
    this.#info = { node: f.node, session: f.session, protocol: f.protocol };
    this.#heartbeatMs = f.heartbeat_ms > 0 ? f.heartbeat_ms : 25e3;
    this.#timers.watchdog = this.#clock.setTimeout(this.#checkWatchdog, this.#heartbeatMs);
    this.#topics.flush();
    for (const p of this.#pending.values()) if (!p.sent) this.#transmit(p);
    this.#setState("connected", { node: f.node, session: f.session });
  }
  async #refreshToken(exp) {
    this.#tell("token_expiring", { exp });
    if (typeof this.#options.token === "string") return;
    const ws = this.#ws;
    try {
      const token = await this.#getToken(true);
      if (this.#ws === ws && this.#welcomed) await this.#request({ type: "auth", token });
    } catch (e) {
      if (e instanceof HeraldError && (e.code === "disconnected" || e.code === "closed")) return;
      this.#emitError(e instanceof HeraldError ? e : new HeraldError("token_provider", "the token provider failed", { cause: e }));
    }
  }
  #checkWatchdog = () => {
    const ws = this.#ws;
    if (!ws || !this.#welcomed) return;
    const idle = this.#clock.now() - this.#lastFrameAt;
    if (idle >= 2 * this.#heartbeatMs) return this.#drop(ws, "now", "heartbeat timeout");
    if (idle >= this.#heartbeatMs && !this.#pinged) {
      this.#pinged = true;
      this.#send({ type: "ping" });
    }
    const next = (idle >= this.#heartbeatMs ? 2 : 1) * this.#heartbeatMs - idle;
    this.#timers.watchdog = this.#clock.setTimeout(this.#checkWatchdog, next);
  };
  // ---- requests
  /** Sends `frame` with a fresh `ref`; waits for a connection if there is none yet. */
  #request(frame2) {
    return new Promise((reply, fail) => {
      if (this.#ended) fail(new HeraldError("closed", "the client is closed"));
      else this.#call(frame2, false, reply, fail);
    });
  }
  /** `request` with callbacks, called as the reply is read; `internal` ones are dropped with their connection. */
  #call(frame2, internal, reply, fail) {
    const ref = String(++this.#ref);
    const p = { frame: { ...frame2, ref }, sent: false, internal, timer: void 0, reply, fail };
    p.timer = this.#clock.setTimeout(() => {
      this.#pending.delete(ref);
      fail(new HeraldError("timeout", `no reply to ${frame2.type} within ${this.#limits.requestTimeoutMs} ms`));
    }, this.#limits.requestTimeoutMs);
    this.#pending.set(ref, p);
    if (this.#welcomed) this.#transmit(p);
  }
  /** Sends a pending request; one that cannot be encoded (a cycle, a function…) fails with `encode`. */
  #transmit(p) {
    let data;
    try {
      data = this.#codec.encode(p.frame);
    } catch (e) {
      this.#pending.delete(p.frame.ref);
      this.#clock.clearTimeout(p.timer);
      return p.fail(new HeraldError("encode", `cannot encode the ${p.frame.type} frame`, { cause: e }));
    }
    p.sent = true;
    this.#write(data);
  }
  #send(frame2) {
    this.#write(this.#codec.encode(frame2));
  }
  #write(data) {
    try {
      this.#ws?.send(data);
    } catch {
    }
  }
  // ---- events
  #setState(state, detail = {}) {
    this.#current = state;
    this.#tell("state", { state, ...detail });
  }
  #emitError(error) {
    this.#tell("error", error);
  }
  #tell(event, value) {
    this.emit(event, value, (e) => console.error(`herald: a '${event}' listener threw`, e));
  }
};
export {
  DEFAULT_BACKOFF,
  Herald,
  HeraldError,
  PROTOCOL_VERSION,
  Subscription,
  backoffDelay,
  closeAction,
  handshakeAction,
  parseRetryAfter,
  tokenExpiry
};
//# sourceMappingURL=herald.js.map
