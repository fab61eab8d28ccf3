/**
 * Herald client SDK: one WebSocket to a Herald gateway, speaking protocol 2
 * (JSON or MessagePack), kept alive across node loss, deploys and token
 * expiry.
 *
 * Invariants, each kept in one place:
 * - Every wanted topic is resubscribed on every `welcome`, with `since` =
 *   its position (the last id received, or the `positions[topic]` of its
 *   last `subscribed`), so events published while disconnected arrive in
 *   order before live ones, on quiet topics too; a listener never sees the
 *   same event id twice (both in topics.ts).
 * - The token goes in the first frame (`connect`) unless `tokenIn: "query"`;
 *   no other frame is sent before `welcome`.
 * - A reconnect waits as the close code says (`closeAction`, `retry`); a
 *   protocol fault (1002/1003/1007/1008/1009), or a token refused at connect
 *   (4005 `unauthorized`/`token_expired`, HTTP 401), is not retried in a
 *   loop, and a refused token is replaced before the next attempt.
 * - No frame for `heartbeat_ms` x 2 means a dead path: the socket is dropped
 *   and a new one opened (`checkWatchdog`); after `heartbeat_ms` of silence
 *   an application `ping` asks the server for a frame.
 * - The MessagePack module is imported only when `protocol: "msgpack"` asks
 *   for it (`loadCodec`).
 *
 * The wire protocol is docs/protocol.md; the API is docs/clients.md.
 * @module
 */

import { asBytes, jsonCodec, msgpackCodec, type Codec, type Frame } from "./codec.js";
import { DEFAULT_BACKOFF, backoffDelay, closeAction, handshakeAction, parseRetryAfter, tokenExpiry, type CloseAction } from "./policy.js";
import { Emitter, Subscription, type SubscriptionHost } from "./subscription.js";
import { Topics } from "./topics.js";
import {
  HeraldError,
  type BackoffOptions,
  type Clock,
  type ConnectionState,
  type HeraldEvents,
  type HeraldOptions,
  type Message,
  type PresencePage,
  type PresenceStats,
  type Published,
  type StateChange,
  type SubscribeOptions,
  type TokenPlacement,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./types.js";

export * from "./types.js";
export { Subscription } from "./subscription.js";
export { DEFAULT_BACKOFF, backoffDelay, closeAction, handshakeAction, parseRetryAfter, tokenExpiry, type CloseAction } from "./policy.js";

/** The protocol version this SDK speaks (`welcome.protocol`). */
export const PROTOCOL_VERSION = 2;

/** A token this close to `exp` is not reused for a new connection. */
const TOKEN_MARGIN_MS = 60_000;

interface Pending {
  frame: Frame;
  sent: boolean;
  /** Dropped silently with its connection (subscribes are redone on `welcome`). */
  internal: boolean;
  timer: unknown;
  reply(frame: Frame): void;
  fail(error: HeraldError): void;
}

const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

function resolveUrl(url: string): string {
  const u = new URL(url, typeof location === "undefined" ? undefined : location.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") throw new TypeError(`not a WebSocket URL: ${url}`);
  return u.toString();
}

/**
 * A client of one Herald deployment.
 *
 * ```ts
 * const herald = new Herald({ url: "wss://push.example.com/ws", token: () => fetchToken() });
 * const news = herald.subscribe("news");
 * news.on("message", (m) => console.log(m.data));
 * news.on("recovered", ({ recovered }) => recovered || reload());
 * herald.connect();
 * ```
 */
export class Herald extends Emitter<HeraldEvents> {
  readonly #options: HeraldOptions;
  readonly #url: string;
  readonly #Socket: new (url: string, protocols?: string | string[]) => WebSocketLike;
  readonly #tokenIn: TokenPlacement;
  readonly #backoff: BackoffOptions;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #limits: { maxFaults: number; requestTimeoutMs: number; connectTimeoutMs: number; dedupWindow: number };
  readonly #topics: Topics;
  readonly #pending = new Map<string, Pending>();
  readonly #host: SubscriptionHost;
  #codec?: Codec;

  #current: ConnectionState = "closed";
  #stopped = true;
  /** `close()` was called, or a close code ended it: requests fail at once. */
  #ended = false;
  #ws?: WebSocketLike;
  #welcomed = false;
  #info: { node?: string; session?: string; protocol?: number } = {};
  /** Bumped by every `open` and `stop`: a stale async `open` gives up. */
  #generation = 0;
  #ref = 0;
  #attempt = 0;
  #faults = 0;
  /** Tokens refused at connect in a row (4005 `unauthorized`/`token_expired`, HTTP 401). */
  #refusals = 0;
  /** The last close refused the token: if the provider now fails, stop. */
  #refused = false;
  #token?: string;
  #needFreshToken = false;
  #handshake?: { status: number; retryAfterMs?: number };
  #heartbeatMs = 25_000;
  #lastFrameAt = 0;
  #pinged = false;
  #timers: { retry?: unknown; connect?: unknown; watchdog?: unknown } = {};

  constructor(options: HeraldOptions) {
    super();
    this.#options = options;
    this.#url = resolveUrl(options.url);
    const Socket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Socket) {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket (the ws package) or run Node with --experimental-websocket");
    }
    if (![undefined, "json", "msgpack"].includes(options.protocol)) throw new TypeError(`unknown protocol: ${options.protocol}`);
    if (![undefined, "frame", "query"].includes(options.tokenIn)) throw new TypeError(`unknown tokenIn: ${options.tokenIn}`);
    this.#Socket = Socket as new (url: string, protocols?: string | string[]) => WebSocketLike;
    this.#tokenIn = options.tokenIn ?? "frame";
    this.#backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#limits = {
      maxFaults: options.maxFaults ?? 3,
      requestTimeoutMs: options.requestTimeoutMs ?? 15_000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      dedupWindow: options.dedupWindow ?? 1000,
    };
    this.#host = { clock: this.#clock, closed: () => this.#ended, release: (s) => this.#topics.release(s), fault: (e) => this.#emitError(e) };
    this.#topics = new Topics(
      {
        welcomed: () => this.#welcomed,
        call: (frame, reply, fail) => this.#call(frame, true, reply, fail),
        later: (attempt, fn) => this.#clock.setTimeout(fn, backoffDelay(attempt, this.#backoff, this.#random)),
        cancel: (handle) => this.#clock.clearTimeout(handle),
        tell: (event, value) => this.#tell(event, value),
      },
      this.#limits.dedupWindow,
    );
  }

  /** The connection state. */
  get state(): ConnectionState {
    return this.#current;
  }

  /** The gateway node, session and protocol version of the current connection (from `welcome`). */
  get connection(): { node?: string; session?: string; protocol?: number } {
    return { ...this.#info };
  }

  /** The current socket, for diagnostics (e.g. its negotiated `protocol` and `extensions`). */
  get socket(): WebSocketLike | undefined {
    return this.#ws;
  }

  /** Starts connecting, and keeps reconnecting until `close()`. Idempotent. */
  connect(): this {
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
  close(): void {
    if (!this.#stopped) this.#stop();
  }

  /**
   * Keeps `topic` subscribed, from now on and across reconnects, with
   * recovery: see `Subscription`. One subscription per topic: while one is
   * active, this returns it (and ignores `options`).
   */
  subscribe<T = unknown>(topic: string, options?: SubscribeOptions): Subscription<T>;
  /**
   * The protocol-1 SDK's form: calls `handler` with every event on `topic`;
   * returns the function that removes it, and that unsubscribes once no
   * handler added this way is left.
   * @deprecated Use `subscribe(topic).on("message", handler)`.
   */
  subscribe<T = unknown>(topic: string, handler: (message: Message<T>) => void): () => void;
  subscribe<T = unknown>(topic: string, arg?: SubscribeOptions | ((message: Message<T>) => void)): Subscription<T> | (() => void) {
    let sub = this.#topics.subs.get(topic) as Subscription<T> | undefined;
    if (!sub) {
      sub = new Subscription<T>(topic, this.#host, typeof arg === "object" ? arg?.since : undefined);
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
  subscription<T = unknown>(topic: string): Subscription<T> | undefined {
    return this.#topics.subs.get(topic);
  }

  /**
   * Publishes `data` to `topic` (the token's `publish` claim must allow it);
   * a `Uint8Array` (or `ArrayBuffer`) is sent as bytes. Waits for a connection.
   */
  publish(topic: string, data: unknown, options: { event?: string } = {}): Promise<Published> {
    const frame: Frame = { type: "publish", topic, data: asBytes(data) ?? data };
    if (options.event !== undefined) frame.event = options.event;
    return this.#request(frame).then((f) => ({ topic: f.topic, id: f.id }));
  }

  /**
   * A page of the sessions present on `topic` (the token's `presence` claim
   * must allow it): at most `limit` (1–1000, the gateway's default 100),
   * from `cursor` (a previous page's `nextCursor`).
   */
  presence(topic: string, options: { limit?: number; cursor?: string } = {}): Promise<PresencePage> {
    const frame: Frame = { type: "presence", topic };
    if (options.limit !== undefined) frame.limit = options.limit;
    if (options.cursor !== undefined) frame.cursor = options.cursor;
    return this.#request(frame).then((f) => {
      const page: PresencePage = { members: f.members ?? [], count: f.count ?? f.members?.length ?? 0 };
      if (typeof f.next_cursor === "string") page.nextCursor = f.next_cursor;
      return page;
    });
  }

  /** How many sessions and distinct users are on `topic` (same permission as `presence`). */
  presenceStats(topic: string): Promise<PresenceStats> {
    return this.#request({ type: "presence_stats", topic }).then((f) => ({ count: f.count, users: f.users }));
  }

  // ---- connection lifecycle

  async #open(): Promise<void> {
    const generation = ++this.#generation;
    let token: string;
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
    let ws: WebSocketLike;
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
    this.#handshake = undefined;
    ws.onopen = () => this.#ws === ws && this.#tokenIn === "frame" && this.#send({ type: "connect", token });
    ws.onmessage = (ev) => this.#ws === ws && this.#onFrame(ev.data);
    ws.onclose = (ev) => this.#ws === ws && this.#onClose(ev.code, ev.reason);
    ws.onerror = () => {}; // a close follows
    const emitter = ws as unknown as { on?: (event: string, fn: (...args: any[]) => void) => void; terminate?: () => void };
    if (typeof emitter.on === "function") {
      // Node's `ws`: a refused handshake shows its status; honour 401 and 503 + Retry-After.
      emitter.on("unexpected-response", (_req: unknown, res: { statusCode?: number; headers?: Record<string, unknown> }) => {
        this.#handshake = { status: res.statusCode ?? 0, retryAfterMs: parseRetryAfter(res.headers?.["retry-after"], this.#clock.now()) };
        emitter.terminate?.();
      });
    }
    this.#timers.connect = this.#clock.setTimeout(() => {
      if (this.#ws === ws && !this.#welcomed) this.#drop(ws, "backoff", "connect timeout");
    }, this.#limits.connectTimeoutMs);
  }

  /** The codec of `options.protocol`; the MessagePack module is imported here, and only here. */
  async #loadCodec(): Promise<Codec> {
    if (this.#options.protocol !== "msgpack") return jsonCodec;
    try {
      const m: any = this.#options.msgpack ?? (await import("./msgpack.js"));
      return msgpackCodec(m.encode ? m : m.default); // `default`: a CommonJS build seen through a bundler's import()
    } catch (e) {
      throw new HeraldError("codec", "cannot load the MessagePack module (msgpack.js next to the SDK, or options.msgpack)", { cause: e });
    }
  }

  #onClose(code: number, reason: string, action?: CloseAction): void {
    const welcomed = this.#welcomed;
    this.#detach();
    if (this.#stopped) return;
    const handshake = welcomed ? undefined : this.#handshake;
    const act = action ?? (handshake ? handshakeAction(handshake.status) : closeAction(code, reason));
    if (welcomed && act !== "fault") this.#faults = 0;
    const why = { code: handshake ? undefined : code, reason: handshake ? `handshake refused with HTTP ${handshake.status}` : reason };
    const closeCode = why.code;
    // Refused at connect (4005, HTTP 401), as opposed to expiring on a live connection (4001).
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
      this.#retry(act === "now" || (act === "refresh" && welcomed) ? "now" : "backoff", why);
    }
  }

  /** Gives up on `ws` without waiting for its close handshake (dead path, no welcome). */
  #drop(ws: WebSocketLike, action: CloseAction, reason: string): void {
    const emitter = ws as unknown as { terminate?: () => void };
    try {
      if (emitter.terminate) emitter.terminate();
      else ws.close(4000, reason);
    } catch {
      // already closing
    }
    this.#onClose(1006, reason, action);
  }

  /** Forgets the current socket: its timers, its in-flight requests, its live subscriptions. */
  #detach(): void {
    this.#ws = undefined;
    this.#welcomed = false;
    for (const key of ["connect", "watchdog"] as const) this.#clock.clearTimeout(this.#timers[key]);
    this.#topics.disconnected();
    for (const [ref, p] of this.#pending) {
      if (!p.sent) continue;
      this.#pending.delete(ref);
      this.#clock.clearTimeout(p.timer);
      if (!p.internal) p.fail(new HeraldError("disconnected", "the connection closed before the reply"));
    }
  }

  #retry(kind: "now" | "backoff", why: { code?: number; reason?: string } = {}): void {
    let delayMs = kind === "now" ? Math.floor(this.#random() * this.#backoff.spreadMs) : backoffDelay(this.#attempt++, this.#backoff, this.#random);
    const retryAfter = this.#handshake?.retryAfterMs;
    if (retryAfter !== undefined) delayMs = Math.max(delayMs, retryAfter + Math.floor(this.#random() * this.#backoff.spreadMs));
    this.#handshake = undefined;
    this.#setState("reconnecting", { ...why, delayMs });
    this.#timers.retry = this.#clock.setTimeout(() => void this.#open(), delayMs);
  }

  #stop(error?: HeraldError, why: { code?: number; reason?: string } = {}): void {
    const ws = this.#ws;
    this.#stopped = this.#ended = true;
    this.#generation++;
    this.#clock.clearTimeout(this.#timers.retry);
    this.#detach();
    try {
      ws?.close(1000);
    } catch {
      // already closing
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

  async #getToken(fresh: boolean): Promise<string> {
    const source = this.#options.token;
    if (typeof source === "string") return source;
    if (!fresh && this.#token !== undefined) {
      const exp = tokenExpiry(this.#token);
      if (exp === undefined || exp - this.#clock.now() > TOKEN_MARGIN_MS) return this.#token;
    }
    const ms = this.#limits.connectTimeoutMs;
    const token = await new Promise<unknown>((resolve, reject) => {
      const timer = this.#clock.setTimeout(() => reject(new HeraldError("token_provider", `the token provider did not answer within ${ms} ms`)), ms);
      Promise.resolve()
        .then(source)
        .then(resolve, reject)
        .finally(() => this.#clock.clearTimeout(timer));
    });
    if (typeof token !== "string" || token === "") throw new HeraldError("token_provider", "the token provider returned no token");
    return (this.#token = token);
  }

  // ---- frames

  #onFrame(raw: unknown): void {
    this.#lastFrameAt = this.#clock.now();
    this.#pinged = false;
    let f: Frame;
    try {
      f = (this.#codec as Codec).decode(raw);
    } catch (e) {
      return this.#emitError(new HeraldError("bad_frame", "a frame from the gateway could not be decoded", { cause: e }));
    }
    switch (f.type) {
      case "welcome":
        return this.#onWelcome(f);
      case "message":
        return this.#topics.deliver(f as unknown as Message);
      case "join":
      case "leave":
        return this.#tell("presence", {
          type: f.type,
          topic: f.topic,
          sub: f.sub,
          session: f.session,
          ...(f.info === undefined ? {} : { info: f.info }),
        });
      case "token_expiring":
        return void this.#refreshToken(f.exp);
      case "unsubscribed":
        if (f.ref === undefined) return this.#topics.revoke(f.topics ?? [], (e) => this.#emitError(e));
        break;
      case "error":
        if (!this.#pending.has(f.ref)) return this.#emitError(new HeraldError(f.code, f.message ?? f.code, { topic: f.topic }));
    }
    const p = typeof f.ref === "string" ? this.#pending.get(f.ref) : undefined;
    if (!p) return;
    this.#pending.delete(f.ref);
    this.#clock.clearTimeout(p.timer);
    if (f.type === "error") p.fail(new HeraldError(f.code, f.message ?? f.code, { topic: f.topic }));
    else p.reply(f);
  }

  #onWelcome(f: Frame): void {
    this.#clock.clearTimeout(this.#timers.connect);
    this.#welcomed = true;
    this.#attempt = this.#refusals = 0;
    this.#refused = false;
    this.#info = { node: f.node, session: f.session, protocol: f.protocol };
    this.#heartbeatMs = f.heartbeat_ms > 0 ? f.heartbeat_ms : 25_000;
    this.#timers.watchdog = this.#clock.setTimeout(this.#checkWatchdog, this.#heartbeatMs);
    this.#topics.flush();
    for (const p of this.#pending.values()) if (!p.sent) this.#transmit(p);
    this.#setState("connected", { node: f.node, session: f.session });
  }

  async #refreshToken(exp: number): Promise<void> {
    this.#tell("token_expiring", { exp });
    if (typeof this.#options.token === "string") return; // 4001 follows; nothing to refresh with
    const ws = this.#ws;
    try {
      const token = await this.#getToken(true);
      if (this.#ws === ws && this.#welcomed) await this.#request({ type: "auth", token });
    } catch (e) {
      if (e instanceof HeraldError && (e.code === "disconnected" || e.code === "closed")) return;
      this.#emitError(e instanceof HeraldError ? e : new HeraldError("token_provider", "the token provider failed", { cause: e }));
    }
  }

  readonly #checkWatchdog = (): void => {
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
  #request(frame: Frame): Promise<Frame> {
    return new Promise((reply, fail) => {
      if (this.#ended) fail(new HeraldError("closed", "the client is closed"));
      else this.#call(frame, false, reply, fail);
    });
  }

  /** `request` with callbacks, called as the reply is read; `internal` ones are dropped with their connection. */
  #call(frame: Frame, internal: boolean, reply: (f: Frame) => void, fail: (e: HeraldError) => void): void {
    const ref = String(++this.#ref);
    const p: Pending = { frame: { ...frame, ref }, sent: false, internal, timer: undefined, reply, fail };
    p.timer = this.#clock.setTimeout(() => {
      this.#pending.delete(ref);
      fail(new HeraldError("timeout", `no reply to ${frame.type} within ${this.#limits.requestTimeoutMs} ms`));
    }, this.#limits.requestTimeoutMs);
    this.#pending.set(ref, p);
    if (this.#welcomed) this.#transmit(p);
  }

  /** Sends a pending request; one that cannot be encoded (a cycle, a function…) fails with `encode`. */
  #transmit(p: Pending): void {
    let data: string | Uint8Array;
    try {
      data = (this.#codec as Codec).encode(p.frame);
    } catch (e) {
      this.#pending.delete(p.frame.ref);
      this.#clock.clearTimeout(p.timer);
      return p.fail(new HeraldError("encode", `cannot encode the ${p.frame.type} frame`, { cause: e }));
    }
    p.sent = true; // if the send fails, the socket is closing and its close settles `p`
    this.#write(data);
  }

  #send(frame: Frame): void {
    this.#write((this.#codec as Codec).encode(frame));
  }

  #write(data: string | Uint8Array): void {
    try {
      this.#ws?.send(data);
    } catch {
      // closing
    }
  }

  // ---- events

  #setState(state: ConnectionState, detail: Omit<StateChange, "state"> = {}): void {
    this.#current = state;
    this.#tell("state", { state, ...detail });
  }

  #emitError(error: HeraldError): void {
    this.#tell("error", error);
  }

  #tell<K extends keyof HeraldEvents>(event: K, value: HeraldEvents[K]): void {
    this.emit(event, value, (e) => console.error(`herald: a '${event}' listener threw`, e));
  }
}
