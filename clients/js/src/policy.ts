/**
 * When and how soon to reconnect: the close-code table of docs/protocol.md
 * (with 4005's refusal reasons), refused handshakes, full-jitter backoff,
 * `Retry-After`, and a token's `exp`.
 *
 * Invariant: pure functions of their arguments, so the table can be tested
 * entry by entry; the client (herald.ts) only acts on what they answer.
 * @module
 */

import type { BackoffOptions } from "./types.js";

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 500, maxMs: 30_000, spreadMs: 1_000 };

/** Delay before reconnect attempt `attempt` (0-based): uniform in [0, min(maxMs, baseMs * 2^attempt)). */
export function backoffDelay(attempt: number, backoff: BackoffOptions, random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(backoff.maxMs, backoff.baseMs * 2 ** attempt));
}

/**
 * What to do after a close: `stop` for good, reconnect `now` (spread),
 * after `backoff`, after a fresh token (`refresh`), or after backoff but at
 * most `maxFaults` times in a row (`fault`).
 */
export type CloseAction = "stop" | "now" | "backoff" | "refresh" | "fault";

const CLOSE_ACTIONS: Record<number, CloseAction> = {
  1000: "stop",
  4003: "stop",
  1012: "now",
  4001: "refresh",
  1002: "fault",
  1003: "fault",
  1007: "fault",
  1008: "fault",
  1009: "fault",
};

/** 4005's close reason is the refusal's code; only these two are retried as they are. */
const REFUSALS: Record<string, CloseAction> = {
  unauthorized: "refresh",
  token_expired: "refresh",
  too_many_connections: "backoff",
  unavailable: "backoff",
};

/**
 * The close-code table of the contract (§6, §10); anything else (1006,
 * 1011, 4002, 4004…) backs off. A 4005 (refused at `connect`) follows its
 * `reason`: a refused token is replaced first, `too_many_connections` and
 * `unavailable` back off, any other refusal (`forbidden`…) stops.
 */
export function closeAction(code: number, reason = ""): CloseAction {
  if (code === 4005) return REFUSALS[reason] ?? "stop";
  return CLOSE_ACTIONS[code] ?? "backoff";
}

/** A refused handshake, when the WebSocket implementation shows its status (Node's `ws`). */
export function handshakeAction(status: number): CloseAction {
  if (status === 401) return "refresh";
  if (status === 403) return "stop";
  if (status === 400 || status === 426) return "fault";
  return "backoff";
}

/** `Retry-After` (seconds or an HTTP date) in ms from `now`, or undefined. */
export function parseRetryAfter(value: unknown, now: number): number | undefined {
  if (typeof value !== "string" || value.trim() === "") return undefined;
  const ms = /^\d+$/.test(value.trim()) ? Number(value) * 1000 : Date.parse(value) - now;
  return Number.isFinite(ms) ? Math.min(Math.max(ms, 0), 300_000) : undefined;
}

/** The `exp` claim of a JWT in ms, without verifying it; undefined if unreadable. */
export function tokenExpiry(jwt: string): number | undefined {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4))).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}
