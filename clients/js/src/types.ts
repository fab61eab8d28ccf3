/**
 * The SDK's public types: what the gateway sends (messages, presence), what
 * the client emits, its options, and the one error class.
 *
 * Invariant: nothing here does work at run time except `HeraldError`; the
 * shapes follow docs/protocol.md, with camelCase only where the SDK builds
 * an object of its own (`nextCursor`).
 * @module
 */

/** `closed` before `connect()` and after `close()` or a final close code. */
export type ConnectionState = "closed" | "connecting" | "connected" | "reconnecting";

/** The encoding of protocol 2: `Sec-WebSocket-Protocol` `herald.v2.json` or `herald.v2.msgpack`. */
export type Protocol = "json" | "msgpack";

/** Where the token goes: the `connect` frame (default), or the `token` query parameter. */
export type TokenPlacement = "frame" | "query";

/**
 * An event on a topic, as published. A byte payload (`data_b64` on JSON
 * connections, a MessagePack bin) arrives as a `Uint8Array`.
 */
export interface Message<T = unknown> {
  topic: string;
  /** Opaque cursor: never parse or compare it. */
  id: string;
  event?: string;
  data: T;
  /** Publish time, ms since the Unix epoch. */
  ts: number;
}

/** The gateway's acknowledgement of `publish`. */
export interface Published {
  topic: string;
  id: string;
}

/** One session present on a topic. */
export interface Member {
  sub: string;
  session: string;
  /** When it joined, ms since the Unix epoch. */
  since: number;
  /** What your backend's connect hook attached to the session, if anything. */
  info?: unknown;
}

/** One page of a topic's members. */
export interface PresencePage {
  members: Member[];
  /** Every member of the topic, not just this page. */
  count: number;
  /** Pass it as `cursor` for the next page; absent on the last one. */
  nextCursor?: string;
}

/** How many sessions (`count`) and distinct users (`users`) are on a topic. */
export interface PresenceStats {
  count: number;
  users: number;
}

/** A member came (`join`) or went (`leave`) on a subscribed presence topic. */
export interface PresenceChange {
  type: "join" | "leave";
  topic: string;
  sub: string;
  session: string;
  /** The member's `info` from the connect hook, if any. */
  info?: unknown;
}

/** Payload of the `state` event. */
export interface StateChange {
  state: ConnectionState;
  /** `connected`: the gateway node and session (from `welcome`). */
  node?: string;
  session?: string;
  /** The close code and reason that ended the previous connection, if any. */
  code?: number;
  reason?: string;
  /** `reconnecting`: how long until the next attempt. */
  delayMs?: number;
}

/**
 * Payload of the `recovered` event, once per topic resubscribed after a
 * reconnect (or first subscribed with `since`). `recovered: false`: events
 * may have been missed and cannot be replayed; reload the topic's state from
 * your backend.
 */
export interface Recovered {
  topic: string;
  recovered: boolean;
}

/** The events of `Herald.on`: every topic's, and the connection's. */
export interface HeraldEvents {
  state: StateChange;
  /** The gateway confirmed `topic` (on every connection): events published from now on arrive. */
  subscribed: { topic: string };
  message: Message;
  error: HeraldError;
  recovered: Recovered;
  token_expiring: { exp: number };
  presence: PresenceChange;
}

/** `subscribing` until the gateway confirms it (again after every reconnect); `failed` and `unsubscribed` are final. */
export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed" | "failed";

export interface SubscribeOptions {
  /** Start after this message id (or position): what was published after it is replayed first. */
  since?: string;
}

/** The events of `Subscription.on`. */
export interface SubscriptionEvents<T = unknown> {
  message: Message<T>;
  /** Confirmed on a connection; `position` is where the topic stands (a valid `since`). */
  subscribed: { topic: string; position?: string };
  recovered: Recovered;
  /** A refusal: final (`state` is `failed`) or retried (`unavailable`, `rate_limited`…: still `subscribing`). */
  error: HeraldError;
  /** `client`: `unsubscribe()`; `revoked`: a refreshed token no longer permits the topic. */
  unsubscribed: { topic: string; reason: "client" | "revoked" };
}

/**
 * An error from the gateway (`code` is the protocol's error code, or a 4005
 * refusal's reason) or from the SDK: `disconnected` (the connection dropped
 * before the reply: the outcome is unknown), `closed`, `timeout`,
 * `token_provider`, `connect`, `codec`, `bad_frame`, `token_expired`,
 * `stopped` (a close code that forbids reconnecting, see `closeCode`),
 * `protocol_fault`, `revoked`, `unsubscribed`, `handler` (a listener threw;
 * see `cause`). docs/clients.md lists when each happens.
 */
export class HeraldError extends Error {
  override name = "HeraldError";
  readonly code: string;
  readonly topic?: string;
  readonly closeCode?: number;

  constructor(code: string, message: string, extra: { topic?: string; closeCode?: number; cause?: unknown } = {}) {
    super(message, { cause: extra.cause });
    this.code = code;
    this.topic = extra.topic;
    this.closeCode = extra.closeCode;
  }
}

/** Returns a token; called again whenever the current one is near expiry or refused. */
export type TokenProvider = () => string | Promise<string>;

/** The part of the WebSocket API the SDK uses (browsers, Node's, or the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  /** The subprotocol the server chose. */
  readonly protocol?: string;
  binaryType?: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

/** A WebSocket class, such as `globalThis.WebSocket` or `ws`'s default export. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => unknown;

/** The MessagePack module (`@herald-push/client/msgpack`), for `HeraldOptions.msgpack`. */
export interface MsgpackModule {
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array): unknown;
}

/** Time, injectable for tests. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** Reconnect delays: full jitter, `random() * min(maxMs, baseMs * 2^attempt)`. */
export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
  /** Spread of an immediate reconnect (after 1012, 4001, a dead path). */
  spreadMs: number;
}

export interface HeraldOptions {
  /** `wss://host/ws`; in a browser also `/ws` (resolved against the page). */
  url: string;
  token: string | TokenProvider;
  /** Frame encoding (default `json`); `msgpack` loads the codec module on first connect. */
  protocol?: Protocol;
  /** Default `frame`: the token goes in the first frame, never in the URL. */
  tokenIn?: TokenPlacement;
  /** The MessagePack module, to skip its dynamic import (e.g. `import * as msgpack from "@herald-push/client/msgpack"`). */
  msgpack?: MsgpackModule;
  /** Default: `globalThis.WebSocket`. In Node 20 pass the `ws` package's. */
  WebSocket?: WebSocketConstructor;
  backoff?: Partial<BackoffOptions>;
  /** Protocol-fault closes, or refused tokens, in a row before giving up (default 3). */
  maxFaults?: number;
  /** Bound on a request's reply, waiting for a connection included (default 15 s). */
  requestTimeoutMs?: number;
  /** Bound on the token provider's answer, and from opening a socket to its `welcome` (default 10 s). */
  connectTimeoutMs?: number;
  /** Ids remembered per topic to drop duplicates (default 1000). */
  dedupWindow?: number;
  clock?: Clock;
  random?: () => number;
}
