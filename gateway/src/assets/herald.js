/**
 * Herald client SDK: one WebSocket to a Herald gateway, kept alive across
 * node loss, deploys and token expiry.
 *
 * Invariants, each kept in one place below:
 * - Every wanted topic is resubscribed on every `welcome`, with `since` = the
 *   last id seen on it, so events published while disconnected arrive in
 *   order before live ones (`onSubscribed` reports `recovered` per topic).
 * - A handler never sees the same event id twice (`deliver`).
 * - A reconnect waits as the close code says (`closeAction`, `retry`), and
 *   a protocol fault (1002/1007/1008/1009) is not retried in a loop.
 * - No frame for `heartbeat_ms` x 2 means a dead path: the socket is dropped
 *   and a new one opened (`checkWatchdog`); after `heartbeat_ms` of silence
 *   an application `ping` asks the server for a frame.
 *
 * The wire protocol is docs/protocol.md; the API is docs/clients.md.
 * @module
 */
/** The protocol version this SDK speaks (`welcome.protocol`). */
export const PROTOCOL_VERSION = 1;
/**
 * An error from the gateway (`code` is the protocol's error code) or from
 * the SDK: `disconnected` (the connection dropped before the reply: the
 * outcome is unknown), `closed`, `timeout`, `token_provider`, `connect`,
 * `token_expired`, `stopped` (a close code that forbids reconnecting, see
 * `closeCode`), `protocol_fault`, `revoked` (a refreshed token no longer
 * permits `topic`), `handler` (a topic handler threw; see `cause`).
 */
export class HeraldError extends Error {
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
}
export const DEFAULT_BACKOFF = { baseMs: 500, maxMs: 30_000, spreadMs: 1_000 };
/** Delay before reconnect attempt `attempt` (0-based): uniform in [0, min(maxMs, baseMs * 2^attempt)). */
export function backoffDelay(attempt, backoff, random = Math.random) {
    return Math.floor(random() * Math.min(backoff.maxMs, backoff.baseMs * 2 ** attempt));
}
const CLOSE_ACTIONS = {
    1000: "stop",
    4003: "stop",
    1012: "now",
    4001: "refresh",
    1002: "fault",
    1007: "fault",
    1008: "fault",
    1009: "fault",
};
/** The close-code table of the contract (§6); anything else (1006, 1011, 4002, 4004…) backs off. */
export function closeAction(code) {
    return CLOSE_ACTIONS[code] ?? "backoff";
}
/** A refused handshake, when the WebSocket implementation shows its status (Node's `ws`). */
export function handshakeAction(status) {
    if (status === 401)
        return "refresh";
    if (status === 403)
        return "stop";
    if (status === 400 || status === 426)
        return "fault";
    return "backoff";
}
/** `Retry-After` (seconds or an HTTP date) in ms from `now`, or undefined. */
export function parseRetryAfter(value, now) {
    if (typeof value !== "string" || value.trim() === "")
        return undefined;
    const ms = /^\d+$/.test(value.trim()) ? Number(value) * 1000 : Date.parse(value) - now;
    return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), 300_000) : undefined;
}
/** The `exp` claim of a JWT in ms, without verifying it; undefined if unreadable. */
export function tokenExpiry(jwt) {
    try {
        const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
        const exp = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4))).exp;
        return typeof exp === "number" ? exp * 1000 : undefined;
    }
    catch {
        return undefined;
    }
}
/** A token this close to `exp` is not reused for a new connection. */
const TOKEN_MARGIN_MS = 60_000;
/** Topics per `subscribe` frame, to stay well under the gateway's frame size limit. */
const TOPICS_PER_FRAME = 64;
const RETRYABLE = new Set(["unavailable", "rate_limited", "internal", "timeout"]);
const noop = () => { };
const systemClock = {
    now: () => Date.now(),
    setTimeout: (fn, ms) => setTimeout(fn, ms),
    clearTimeout: (handle) => clearTimeout(handle),
};
function resolveUrl(url) {
    const u = new URL(url, typeof location === "undefined" ? undefined : location.href);
    if (u.protocol === "http:")
        u.protocol = "ws:";
    if (u.protocol === "https:")
        u.protocol = "wss:";
    if (u.protocol !== "ws:" && u.protocol !== "wss:")
        throw new TypeError(`not a WebSocket URL: ${url}`);
    return u.toString();
}
/**
 * A client of one Herald deployment.
 *
 * ```ts
 * const herald = new Herald({ url: "wss://push.example.com/ws", token: () => fetchToken() });
 * const off = herald.subscribe("news", (m) => console.log(m.data));
 * herald.on("recovered", ({ topic, recovered }) => recovered || reload(topic));
 * herald.connect();
 * ```
 */
export class Herald {
    options;
    url;
    Socket;
    backoff;
    clock;
    random;
    limits;
    listeners = new Map();
    topics = new Map();
    pending = new Map();
    current = "closed";
    stopped = true;
    /** `close()` was called, or a close code ended it: requests fail at once. */
    ended = false;
    ws;
    welcomed = false;
    info = {};
    /** Bumped by every `open` and `stop`: a stale async `open` gives up. */
    generation = 0;
    ref = 0;
    attempt = 0;
    faults = 0;
    subscribeAttempt = 0;
    token;
    needFreshToken = false;
    handshake;
    heartbeatMs = 25_000;
    lastFrameAt = 0;
    pinged = false;
    flushQueued = false;
    timers = {};
    constructor(options) {
        this.options = options;
        this.url = resolveUrl(options.url);
        const Socket = options.WebSocket ?? globalThis.WebSocket;
        if (!Socket) {
            throw new TypeError("no WebSocket implementation: pass options.WebSocket (the ws package) or run Node with --experimental-websocket");
        }
        this.Socket = Socket;
        this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
        this.clock = options.clock ?? systemClock;
        this.random = options.random ?? Math.random;
        this.limits = {
            maxFaults: options.maxFaults ?? 3,
            requestTimeoutMs: options.requestTimeoutMs ?? 15_000,
            connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
            dedupWindow: options.dedupWindow ?? 1000,
        };
    }
    /** The connection state. */
    get state() {
        return this.current;
    }
    /** The gateway node and session of the current connection. */
    get connection() {
        return { ...this.info };
    }
    /** The current socket, for diagnostics (e.g. its negotiated `extensions`). */
    get socket() {
        return this.ws;
    }
    /** Listens to an event; returns a function that stops listening. */
    on(event, listener) {
        const set = this.listeners.get(event) ?? new Set();
        this.listeners.set(event, set.add(listener));
        return () => void set.delete(listener);
    }
    /** Starts connecting, and keeps reconnecting until `close()`. Idempotent. */
    connect() {
        if (this.stopped) {
            this.stopped = false;
            this.ended = false;
            this.attempt = 0;
            this.faults = 0;
            this.setState("connecting");
            void this.open();
        }
        return this;
    }
    /** Closes the connection for good (1000); requests in flight fail with `closed`. `connect()` starts again. */
    close() {
        if (!this.stopped)
            this.stop();
    }
    /**
     * Calls `handler` with every event on `topic`, from now on and across
     * reconnects, each event once. Returns the function that unsubscribes.
     */
    subscribe(topic, handler) {
        let t = this.topics.get(topic);
        if (!t) {
            t = { handlers: new Set(), seen: new Set(), live: false, sent: false, wasLive: false };
            this.topics.set(topic, t);
            this.scheduleFlush();
        }
        const state = t;
        state.handlers.add(handler);
        return () => {
            if (this.topics.get(topic) !== state || !state.handlers.delete(handler) || state.handlers.size > 0)
                return;
            this.topics.delete(topic);
            if ((state.live || state.sent) && this.welcomed) {
                this.call({ type: "unsubscribe", topics: [topic] }, true, noop, noop);
            }
        };
    }
    /** Publishes `data` to `topic` (the token's `publish` claim must allow it). Waits for a connection. */
    publish(topic, data, options = {}) {
        const frame = { type: "publish", topic, data };
        if (options.event !== undefined)
            frame.event = options.event;
        return this.request(frame).then((f) => ({ topic: f.topic, id: f.id }));
    }
    /** The sessions present on `topic` (the token's `presence` claim must allow it). */
    presence(topic) {
        return this.request({ type: "presence", topic }).then((f) => f.members ?? []);
    }
    // ---- connection lifecycle
    async open() {
        const generation = ++this.generation;
        let token;
        try {
            token = await this.getToken(this.needFreshToken || this.attempt >= 2);
        }
        catch (e) {
            if (generation !== this.generation)
                return;
            this.emitError(e instanceof HeraldError ? e : new HeraldError("token_provider", "the token provider failed", { cause: e }));
            this.retry("backoff");
            return;
        }
        if (generation !== this.generation)
            return;
        this.needFreshToken = false;
        const url = new URL(this.url);
        url.searchParams.set("token", token);
        let ws;
        try {
            ws = new this.Socket(url.toString());
        }
        catch (e) {
            this.emitError(new HeraldError("connect", "cannot open a WebSocket", { cause: e }));
            this.retry("backoff");
            return;
        }
        this.ws = ws;
        this.welcomed = false;
        this.handshake = undefined;
        ws.onmessage = (ev) => this.ws === ws && this.onFrame(ev.data);
        ws.onclose = (ev) => this.ws === ws && this.onClose(ev.code, ev.reason);
        ws.onerror = () => { }; // a close follows
        const emitter = ws;
        if (typeof emitter.on === "function") {
            // Node's `ws`: a refused handshake shows its status; honour 401 and 503 + Retry-After.
            emitter.on("unexpected-response", (_req, res) => {
                this.handshake = { status: res.statusCode ?? 0, retryAfterMs: parseRetryAfter(res.headers?.["retry-after"], this.clock.now()) };
                emitter.terminate?.();
            });
        }
        this.timers.connect = this.clock.setTimeout(() => {
            if (this.ws === ws && !this.welcomed)
                this.drop(ws, "backoff", "connect timeout");
        }, this.limits.connectTimeoutMs);
    }
    onClose(code, reason, action) {
        const welcomed = this.welcomed;
        this.detach();
        if (this.stopped)
            return;
        const handshake = welcomed ? undefined : this.handshake;
        const act = action ?? (handshake ? handshakeAction(handshake.status) : closeAction(code));
        if (welcomed && act !== "fault")
            this.faults = 0;
        const why = { code: handshake ? undefined : code, reason: handshake ? `handshake refused with HTTP ${handshake.status}` : reason };
        if (act === "stop") {
            this.stop(new HeraldError("stopped", `not reconnecting: ${why.reason || `closed with ${code}`}`, { closeCode: why.code }), why);
        }
        else if (act === "fault" && ++this.faults >= this.limits.maxFaults) {
            this.stop(new HeraldError("protocol_fault", `closed ${this.faults} times in a row for a client fault`, { closeCode: why.code }), why);
        }
        else if (act === "refresh" && typeof this.options.token === "string") {
            this.stop(new HeraldError("token_expired", "the token expired and no token provider was given", { closeCode: why.code }), why);
        }
        else {
            if (act === "refresh")
                this.needFreshToken = true;
            this.retry(act === "now" || (act === "refresh" && welcomed) ? "now" : "backoff", why);
        }
    }
    /** Gives up on `ws` without waiting for its close handshake (dead path, no welcome). */
    drop(ws, action, reason) {
        const emitter = ws;
        try {
            if (emitter.terminate)
                emitter.terminate();
            else
                ws.close(4000, reason);
        }
        catch {
            // already closing
        }
        this.onClose(1006, reason, action);
    }
    /** Forgets the current socket: its timers, its in-flight requests, its live subscriptions. */
    detach() {
        this.ws = undefined;
        this.welcomed = false;
        for (const key of ["connect", "watchdog", "resubscribe"])
            this.clock.clearTimeout(this.timers[key]);
        for (const t of this.topics.values()) {
            t.wasLive ||= t.live;
            t.live = t.sent = false;
        }
        for (const [ref, p] of this.pending) {
            if (!p.sent)
                continue;
            this.pending.delete(ref);
            this.clock.clearTimeout(p.timer);
            if (!p.internal)
                p.fail(new HeraldError("disconnected", "the connection closed before the reply"));
        }
    }
    retry(kind, why = {}) {
        let delayMs = kind === "now" ? Math.floor(this.random() * this.backoff.spreadMs) : backoffDelay(this.attempt++, this.backoff, this.random);
        const retryAfter = this.handshake?.retryAfterMs;
        if (retryAfter !== undefined)
            delayMs = Math.max(delayMs, retryAfter + Math.floor(this.random() * this.backoff.spreadMs));
        this.handshake = undefined;
        this.setState("reconnecting", { ...why, delayMs });
        this.timers.retry = this.clock.setTimeout(() => void this.open(), delayMs);
    }
    stop(error, why = {}) {
        const ws = this.ws;
        this.stopped = this.ended = true;
        this.generation++;
        this.clock.clearTimeout(this.timers.retry);
        this.detach();
        try {
            ws?.close(1000);
        }
        catch {
            // already closing
        }
        for (const [ref, p] of this.pending) {
            this.pending.delete(ref);
            this.clock.clearTimeout(p.timer);
            p.fail(new HeraldError("closed", "the client is closed"));
        }
        if (error)
            this.emitError(error);
        this.info = {};
        this.setState("closed", why);
    }
    async getToken(fresh) {
        const source = this.options.token;
        if (typeof source === "string")
            return source;
        if (!fresh && this.token !== undefined) {
            const exp = tokenExpiry(this.token);
            if (exp === undefined || exp - this.clock.now() > TOKEN_MARGIN_MS)
                return this.token;
        }
        const ms = this.limits.connectTimeoutMs;
        const token = await new Promise((resolve, reject) => {
            const timer = this.clock.setTimeout(() => reject(new HeraldError("token_provider", `the token provider did not answer within ${ms} ms`)), ms);
            Promise.resolve()
                .then(source)
                .then(resolve, reject)
                .finally(() => this.clock.clearTimeout(timer));
        });
        if (typeof token !== "string" || token === "")
            throw new HeraldError("token_provider", "the token provider returned no token");
        return (this.token = token);
    }
    // ---- frames
    onFrame(raw) {
        this.lastFrameAt = this.clock.now();
        this.pinged = false;
        let f;
        try {
            f = JSON.parse(String(raw));
        }
        catch {
            return;
        }
        switch (f?.type) {
            case "welcome":
                return this.onWelcome(f);
            case "message":
                return this.deliver(f);
            case "join":
            case "leave":
                return this.emit("presence", { type: f.type, topic: f.topic, sub: f.sub, session: f.session });
            case "token_expiring":
                return void this.refreshToken(f.exp);
            case "unsubscribed":
                if (f.ref === undefined)
                    return this.revoke(f.topics ?? []);
                break;
            case "error":
                if (!this.pending.has(f.ref))
                    return this.emitError(new HeraldError(f.code, f.message ?? f.code, { topic: f.topic }));
        }
        const p = typeof f?.ref === "string" ? this.pending.get(f.ref) : undefined;
        if (!p)
            return;
        this.pending.delete(f.ref);
        this.clock.clearTimeout(p.timer);
        if (f.type === "error")
            p.fail(new HeraldError(f.code, f.message ?? f.code, { topic: f.topic }));
        else
            p.reply(f);
    }
    onWelcome(f) {
        this.clock.clearTimeout(this.timers.connect);
        this.welcomed = true;
        this.attempt = 0;
        this.info = { node: f.node, session: f.session };
        this.heartbeatMs = f.heartbeat_ms > 0 ? f.heartbeat_ms : 25_000;
        this.timers.watchdog = this.clock.setTimeout(this.checkWatchdog, this.heartbeatMs);
        this.flushSubscriptions();
        for (const p of this.pending.values())
            if (!p.sent)
                this.transmit(p);
        this.setState("connected", this.info);
    }
    deliver(m) {
        const t = this.topics.get(m.topic);
        if (!t || t.seen.has(m.id))
            return;
        t.seen.add(m.id);
        if (t.seen.size > this.limits.dedupWindow)
            t.seen.delete(t.seen.values().next().value);
        t.lastId = m.id;
        for (const handler of t.handlers) {
            try {
                handler(m);
            }
            catch (e) {
                this.emitError(new HeraldError("handler", `a handler of ${m.topic} threw`, { topic: m.topic, cause: e }));
            }
        }
        this.emit("message", m);
    }
    scheduleFlush() {
        if (this.flushQueued)
            return;
        this.flushQueued = true;
        queueMicrotask(() => {
            this.flushQueued = false;
            this.flushSubscriptions();
        });
    }
    /** Subscribes every wanted topic that is neither live nor asked for, with `since` where known. */
    flushSubscriptions() {
        if (!this.welcomed)
            return;
        const names = [...this.topics].filter(([, t]) => !t.live && !t.sent).map(([name]) => name);
        for (let i = 0; i < names.length; i += TOPICS_PER_FRAME) {
            const topics = names.slice(i, i + TOPICS_PER_FRAME);
            const since = {};
            for (const name of topics) {
                const t = this.topics.get(name);
                t.sent = true;
                if (t.lastId !== undefined)
                    since[name] = t.lastId;
            }
            const frame = { type: "subscribe", topics };
            if (Object.keys(since).length > 0)
                frame.since = since;
            this.call(frame, true, (reply) => this.onSubscribed(topics, reply.recovered ?? {}), (e) => this.onSubscribeFailed(topics, e));
        }
    }
    onSubscribed(topics, recovered) {
        this.subscribeAttempt = 0;
        for (const name of topics) {
            const t = this.topics.get(name);
            if (!t?.sent)
                continue; // unsubscribed meanwhile
            t.sent = false;
            t.live = true;
            // Live before, but no event seen: no cursor, so nothing proves that nothing was missed.
            const ok = recovered[name] ?? (t.wasLive && t.lastId === undefined ? false : undefined);
            t.wasLive = false;
            this.emit("subscribed", { topic: name });
            if (ok !== undefined)
                this.emit("recovered", { topic: name, recovered: ok });
        }
    }
    onSubscribeFailed(topics, e) {
        if (e.code === "disconnected" || e.code === "closed")
            return; // redone on the next welcome
        const retry = RETRYABLE.has(e.code);
        for (const name of topics) {
            const t = this.topics.get(name);
            if (!t)
                continue;
            t.sent = false;
            if (!retry && (e.topic === undefined || e.topic === name)) {
                this.topics.delete(name);
                this.emitError(new HeraldError(e.code, e.message, { topic: name }));
            }
        }
        if (!retry)
            return this.scheduleFlush();
        this.clock.clearTimeout(this.timers.resubscribe);
        this.timers.resubscribe = this.clock.setTimeout(() => this.flushSubscriptions(), backoffDelay(this.subscribeAttempt++, this.backoff, this.random));
    }
    /** A refreshed token no longer permits these topics: the gateway dropped them. */
    revoke(topics) {
        for (const name of topics) {
            if (!this.topics.delete(name))
                continue;
            this.emitError(new HeraldError("revoked", `the refreshed token no longer permits ${name}`, { topic: name }));
        }
    }
    async refreshToken(exp) {
        this.emit("token_expiring", { exp });
        if (typeof this.options.token === "string")
            return; // 4001 follows; nothing to refresh with
        const ws = this.ws;
        try {
            const token = await this.getToken(true);
            if (this.ws === ws && this.welcomed)
                await this.request({ type: "auth", token });
        }
        catch (e) {
            if (e instanceof HeraldError && (e.code === "disconnected" || e.code === "closed"))
                return;
            this.emitError(e instanceof HeraldError ? e : new HeraldError("token_provider", "the token provider failed", { cause: e }));
        }
    }
    checkWatchdog = () => {
        const ws = this.ws;
        if (!ws || !this.welcomed)
            return;
        const idle = this.clock.now() - this.lastFrameAt;
        if (idle >= 2 * this.heartbeatMs)
            return this.drop(ws, "now", "heartbeat timeout");
        if (idle >= this.heartbeatMs && !this.pinged) {
            this.pinged = true;
            this.send({ type: "ping" });
        }
        const next = (idle >= this.heartbeatMs ? 2 : 1) * this.heartbeatMs - idle;
        this.timers.watchdog = this.clock.setTimeout(this.checkWatchdog, next);
    };
    // ---- requests
    /** Sends `frame` with a fresh `ref`; waits for a connection if there is none yet. */
    request(frame) {
        return new Promise((reply, fail) => {
            if (this.ended)
                fail(new HeraldError("closed", "the client is closed"));
            else
                this.call(frame, false, reply, fail);
        });
    }
    /** `request` with callbacks, called as the reply is read; `internal` ones are dropped with their connection. */
    call(frame, internal, reply, fail) {
        const ref = String(++this.ref);
        const p = { frame: { ...frame, ref }, sent: false, internal, timer: undefined, reply, fail };
        p.timer = this.clock.setTimeout(() => {
            this.pending.delete(ref);
            fail(new HeraldError("timeout", `no reply to ${frame.type} within ${this.limits.requestTimeoutMs} ms`));
        }, this.limits.requestTimeoutMs);
        this.pending.set(ref, p);
        if (this.welcomed)
            this.transmit(p);
    }
    transmit(p) {
        p.sent = true; // if the send fails, the socket is closing and its close settles `p`
        this.send(p.frame);
    }
    send(frame) {
        try {
            this.ws?.send(JSON.stringify(frame));
        }
        catch {
            // closing
        }
    }
    // ---- events
    setState(state, detail = {}) {
        this.current = state;
        this.emit("state", { state, ...detail });
    }
    emitError(error) {
        this.emit("error", error);
    }
    emit(event, value) {
        for (const listener of this.listeners.get(event) ?? []) {
            try {
                listener(value);
            }
            catch (e) {
                console.error(`herald: a '${event}' listener threw`, e);
            }
        }
    }
}
