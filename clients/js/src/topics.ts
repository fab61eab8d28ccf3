/**
 * The topics a client wants: one `Subscription` each, and their
 * (re)subscription on every connection.
 *
 * Invariants:
 * - A topic is in `subs` exactly while its subscription is active; a
 *   refusal, `unsubscribe()` or a revocation removes it (and ends the
 *   subscription) in one step.
 * - `flush` asks, in frames of at most `TOPICS_PER_FRAME` topics, for every
 *   topic that is neither live nor asked for on the current connection, with
 *   `since` = its position; so after a reconnect every topic, quiet or not,
 *   is resubscribed from where it stood.
 * - `deliver` hands each message id of a topic to its listeners once (the
 *   last `dedupWindow` ids are remembered) and moves the position.
 * The connection (herald.ts) calls `flush` on `welcome`, `disconnected`
 * when a socket goes away, and `closed` on `close()`.
 * @module
 */

import type { Frame } from "./codec.js";
import type { Subscription } from "./subscription.js";
import { HeraldError, type HeraldEvents, type Message } from "./types.js";

/** Topics per `subscribe` frame, to stay well under the gateway's frame size limit. */
const TOPICS_PER_FRAME = 64;
/** Refusals retried on the same connection, after a backoff. */
const RETRYABLE = new Set(["unavailable", "rate_limited", "internal", "timeout"]);

/** What the topics need from the connection. */
export interface TopicsHost {
  /** A `welcome` was read on the current connection. */
  welcomed(): boolean;
  /** Sends a request (dropped silently with its connection); one reply or failure comes back. */
  call(frame: Frame, reply: (f: Frame) => void, fail: (e: HeraldError) => void): void;
  /** Runs `fn` after the backoff of retry `attempt`; returns what `cancel` takes. */
  later(attempt: number, fn: () => void): unknown;
  cancel(handle: unknown): void;
  /** Client-level events. */
  tell<K extends keyof HeraldEvents>(event: K, value: HeraldEvents[K]): void;
}

const noop = (): void => {};

/** The client's subscriptions by topic, and their subscribe frames. */
export class Topics {
  readonly subs = new Map<string, Subscription<any>>();
  #flushQueued = false;
  #attempt = 0;
  #retry?: unknown;

  readonly #host: TopicsHost;
  readonly #dedupWindow: number;

  constructor(host: TopicsHost, dedupWindow: number) {
    this.#host = host;
    this.#dedupWindow = dedupWindow;
  }

  /** Adds a new subscription; it is asked for with the next flush (this tick's additions share a frame). */
  add(sub: Subscription<any>): void {
    this.subs.set(sub.topic, sub);
    this.#schedule();
  }

  #schedule(): void {
    if (this.#flushQueued) return;
    this.#flushQueued = true;
    queueMicrotask(() => {
      this.#flushQueued = false;
      this.flush();
    });
  }

  /** Hands a message to its topic's listeners, once per id, and moves the topic's position. */
  deliver(m: Message): void {
    const s = this.subs.get(m.topic);
    if (!s || s._seen.has(m.id)) return;
    s._seen.add(m.id);
    if (s._seen.size > this.#dedupWindow) s._seen.delete(s._seen.values().next().value as string);
    s._pos = m.id;
    s._emit("message", m);
    this.#host.tell("message", m);
  }

  /** Subscribes every wanted topic that is neither live nor asked for, with `since` = its position where known. */
  flush(): void {
    if (!this.#host.welcomed()) return;
    const names = [...this.subs.values()].filter((s) => !s._live && !s._sent).map((s) => s.topic);
    for (let i = 0; i < names.length; i += TOPICS_PER_FRAME) {
      const topics = names.slice(i, i + TOPICS_PER_FRAME);
      const since: Record<string, string> = {};
      for (const name of topics) {
        const s = this.subs.get(name) as Subscription;
        s._sent = true;
        if (s._pos !== undefined) since[name] = s._pos;
      }
      const frame: Frame = { type: "subscribe", topics };
      if (Object.keys(since).length > 0) frame.since = since;
      this.#host.call(
        frame,
        (reply) => this.#subscribed(topics, since, reply),
        (e) => this.#refused(topics, e),
      );
    }
  }

  /** The socket went away: nothing is live any more. */
  disconnected(): void {
    this.#host.cancel(this.#retry);
    for (const s of this.subs.values()) s._disconnected();
  }

  /** The client closed: pending `ready()` promises reject. */
  closed(): void {
    for (const s of this.subs.values()) s._closed();
  }

  /** `unsubscribe()` of an active subscription: forget it, and tell the gateway if it knows the topic. */
  release(s: Subscription<any>): void {
    if (this.subs.get(s.topic) !== s) return;
    this.subs.delete(s.topic);
    if ((s._live || s._sent) && this.#host.welcomed()) this.#host.call({ type: "unsubscribe", topics: [s.topic] }, noop, noop);
  }

  /** A refreshed token no longer permits these topics: the gateway dropped them. */
  revoke(topics: string[], report: (e: HeraldError) => void): void {
    for (const name of topics) {
      const s = this.subs.get(name);
      if (!s) continue;
      this.subs.delete(name);
      const error = new HeraldError("revoked", `the refreshed token no longer permits ${name}`, { topic: name });
      s._end("unsubscribed", error, "revoked");
      report(error);
    }
  }

  #subscribed(topics: string[], since: Record<string, string>, reply: Frame): void {
    this.#attempt = 0;
    const recovered: Record<string, boolean> = reply.recovered ?? {};
    const positions: Record<string, unknown> = reply.positions ?? {};
    for (const name of topics) {
      const s = this.subs.get(name);
      if (!s?._sent) continue; // unsubscribed meanwhile
      s._sent = false;
      s._live = true;
      // Live before, but no position to send (a gateway without positions): nothing proves that nothing was missed.
      const ok = recovered[name] ?? (s._wasLive && !(name in since) ? false : undefined);
      s._wasLive = false;
      const position = positions[name];
      s._subscribed(typeof position === "string" ? position : undefined);
      this.#host.tell("subscribed", { topic: name });
      if (ok !== undefined) {
        s._emit("recovered", { topic: name, recovered: ok });
        this.#host.tell("recovered", { topic: name, recovered: ok });
      }
    }
  }

  /** A refused subscribe: the topics at fault fail for good, unless the refusal is worth a retry. */
  #refused(topics: string[], e: HeraldError): void {
    if (e.code === "disconnected" || e.code === "closed") return; // redone on the next welcome
    const retry = RETRYABLE.has(e.code);
    for (const name of topics) {
      const s = this.subs.get(name);
      if (!s) continue;
      s._sent = false;
      const error = new HeraldError(e.code, e.message, { topic: name });
      if (retry) {
        s._emit("error", error);
      } else if (e.topic === undefined || e.topic === name) {
        this.subs.delete(name);
        s._end("failed", error);
        this.#host.tell("error", error);
      }
    }
    if (!retry) return this.#schedule();
    this.#host.cancel(this.#retry);
    this.#retry = this.#host.later(this.#attempt++, () => this.flush());
  }
}
