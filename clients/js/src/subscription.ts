/**
 * `Subscription`: one topic a client wants, across reconnects, and the tiny
 * listener registry it shares with the client.
 *
 * Invariants:
 * - `state` moves `subscribing` ⇄ `subscribed` (back to `subscribing` while
 *   the client reconnects) and ends in `unsubscribed` or `failed`; nothing
 *   leaves an end state, and an ended subscription is no longer the
 *   client's (`herald.subscribe(topic)` makes a new one).
 * - `position` only moves forward: it is the id of the last message handed
 *   to the listeners, or the `positions[topic]` of a `subscribed` reply,
 *   whichever came last (the gateway sends no message of a topic before
 *   its `subscribed` that is newer than the position in it).
 * - A `ready()` promise settles exactly once: on the first confirmation, on
 *   an end state, on `close()`, or after its own `timeoutMs`.
 * The client (herald.ts) drives every transition; this file only records
 * them and tells the listeners.
 * @module
 */

import { HeraldError, type Clock, type SubscriptionEvents, type SubscriptionState } from "./types.js";

type Listener = (value: any) => void;

/** Listeners per event name; `on` returns the function that removes one. */
export class Emitter<Events> {
  readonly #listeners = new Map<keyof Events, Set<Listener>>();

  /** Listens to an event; returns a function that stops listening. */
  on<K extends keyof Events>(event: K, listener: (value: Events[K]) => void): () => void {
    const set = this.#listeners.get(event) ?? new Set();
    this.#listeners.set(event, set.add(listener));
    return () => void set.delete(listener);
  }

  /** Calls every listener of `event`; one that throws is reported to `onThrow`, and the others still run. */
  protected emit<K extends keyof Events>(event: K, value: Events[K], onThrow: (e: unknown) => void): void {
    for (const listener of this.#listeners.get(event) ?? []) {
      try {
        listener(value);
      } catch (e) {
        onThrow(e);
      }
    }
  }
}

/** @internal What a subscription needs from its client. */
export interface SubscriptionHost {
  readonly clock: Clock;
  /** The client is closed for good (`close()`, or a close code that stops it). */
  closed(): boolean;
  /** `unsubscribe()` was called: forget the topic and tell the gateway. */
  release(sub: Subscription<any>): void;
  /** A listener threw. */
  fault(error: HeraldError): void;
}

interface Waiter {
  ok(): void;
  fail(e: HeraldError): void;
}

/**
 * A topic the client keeps subscribed, from `Herald.subscribe`.
 *
 * ```ts
 * const sub = herald.subscribe("stocks.AAPL");
 * sub.on("message", (m) => draw(m.data));
 * sub.on("recovered", ({ recovered }) => recovered || reload());
 * await sub.ready(5_000);
 * ```
 */
export class Subscription<T = unknown> extends Emitter<SubscriptionEvents<T>> {
  /** @internal */ _state: SubscriptionState = "subscribing";
  /** @internal The last message id, or the last position the gateway gave. */
  _pos?: string;
  /** @internal Recent ids, oldest first (a Set keeps insertion order). */
  readonly _seen = new Set<string>();
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
  readonly #host: SubscriptionHost;
  #error?: HeraldError;
  readonly #waiters = new Set<Waiter>();

  /** @internal */
  constructor(
    readonly topic: string,
    host: SubscriptionHost,
    since?: string,
  ) {
    super();
    this.#host = host;
    this._pos = since;
  }

  /** Where the subscription stands. */
  get state(): SubscriptionState {
    return this._state;
  }

  /** The id of the last message received, or the gateway's last position for the topic: a valid `since`. */
  get position(): string | undefined {
    return this._pos;
  }

  /**
   * Resolves once the gateway has confirmed the topic (at once if it already
   * has); rejects with the refusal (`forbidden`, `invalid_topic`…),
   * `unsubscribed` or `revoked`, `closed`, or `timeout` after `timeoutMs`
   * if given.
   */
  ready(timeoutMs?: number): Promise<this> {
    if (this.#error) return Promise.reject(this.#error); // an end state
    if (this._confirmed) return Promise.resolve(this);
    if (this.#host.closed()) return Promise.reject(new HeraldError("closed", "the client is closed", { topic: this.topic }));
    return new Promise((resolve, reject) => {
      const clock = this.#host.clock;
      let timer: unknown;
      const w: Waiter = {
        ok: () => {
          clock.clearTimeout(timer);
          resolve(this);
        },
        fail: (e) => {
          clock.clearTimeout(timer);
          reject(e);
        },
      };
      if (timeoutMs !== undefined) {
        timer = clock.setTimeout(() => {
          this.#waiters.delete(w);
          reject(new HeraldError("timeout", `${this.topic} not confirmed within ${timeoutMs} ms`, { topic: this.topic }));
        }, timeoutMs);
      }
      this.#waiters.add(w);
    });
  }

  /** Stops the subscription for good and tells the gateway; its `ready()` promises reject with `unsubscribed`. */
  unsubscribe(): void {
    if (this._state === "unsubscribed" || this._state === "failed") return;
    this.#host.release(this);
    this._end("unsubscribed", new HeraldError("unsubscribed", `${this.topic} was unsubscribed`, { topic: this.topic }), "client");
  }

  // ---- transitions, called by the client

  /** @internal */
  _emit<K extends keyof SubscriptionEvents<T>>(event: K, value: SubscriptionEvents<T>[K]): void {
    this.emit(event, value, (cause) =>
      this.#host.fault(new HeraldError("handler", `a '${String(event)}' listener of ${this.topic} threw`, { topic: this.topic, cause })),
    );
  }

  /** @internal The gateway confirmed the topic on this connection. */
  _subscribed(position: string | undefined): void {
    this._state = "subscribed";
    this._confirmed = true;
    if (position !== undefined) this._pos = position;
    this.#settle();
    this._emit("subscribed", { topic: this.topic, position: this._pos });
  }

  /** @internal The connection went away; resubscribed on the next one. */
  _disconnected(): void {
    this._wasLive ||= this._live;
    this._live = this._sent = false;
    if (this._state === "subscribed") this._state = "subscribing";
  }

  /** @internal The client closed: pending `ready()` promises reject with `closed`. */
  _closed(): void {
    this.#settle(new HeraldError("closed", "the client is closed", { topic: this.topic }));
  }

  /** @internal An end state: `failed` (with the refusal) or `unsubscribed` (`client` or `revoked`). */
  _end(state: "failed" | "unsubscribed", error: HeraldError, reason?: "client" | "revoked"): void {
    this._state = state;
    this._live = this._sent = false;
    this.#error = error;
    this.#settle(error);
    if (state === "failed") this._emit("error", error);
    else this._emit("unsubscribed", { topic: this.topic, reason: reason ?? "client" });
  }

  #settle(error?: HeraldError): void {
    for (const w of this.#waiters) {
      if (error) w.fail(error);
      else w.ok();
    }
    this.#waiters.clear();
  }
}
