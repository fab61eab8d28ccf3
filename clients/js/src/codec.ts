/**
 * Frames to and from the wire, for each encoding of protocol 2.
 *
 * Invariants:
 * - A byte payload is a `Uint8Array` on the SDK's side of a codec. On JSON
 *   connections it travels as `data_b64` (standard base64) in place of
 *   `data`, both ways; on MessagePack ones as a bin, which the MessagePack
 *   module maps to and from `Uint8Array` by itself.
 * - The MessagePack module is not imported here: the client loads it only
 *   when `protocol: "msgpack"` asks for it, so the default bundle stays small.
 * @module
 */

import type { MsgpackModule } from "./types.js";

export type Frame = Record<string, any>;

export interface Codec {
  /** `Sec-WebSocket-Protocol`. */
  name: string;
  encode(frame: Frame): string | Uint8Array;
  /** Throws on anything that is not one frame of this encoding. */
  decode(data: unknown): Frame;
}

/** Standard base64 of `bytes`. */
export function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** The bytes of standard base64 `text`; throws on invalid input. */
export function fromBase64(text: string): Uint8Array {
  const s = atob(text);
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes;
}

/** `Uint8Array` for binary payloads given as an `ArrayBuffer` or any typed array view; undefined otherwise. */
export function asBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return undefined;
}

/** A decoded frame is a map with a string `type`. */
function frame(value: unknown): Frame {
  if (typeof value !== "object" || value === null || Array.isArray(value) || typeof (value as Frame).type !== "string") {
    throw new TypeError("not a frame");
  }
  return value as Frame;
}

export const jsonCodec: Codec = {
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
    if (typeof f.data_b64 === "string" && f.data === undefined) {
      f.data = fromBase64(f.data_b64);
      delete f.data_b64;
    }
    return f;
  },
};

export function msgpackCodec(m: MsgpackModule): Codec {
  return {
    name: "herald.v2.msgpack",
    encode: (f) => m.encode(f),
    decode(data) {
      const bytes = typeof data === "string" ? undefined : asBytes(data);
      if (!bytes) throw new TypeError("a text frame on a MessagePack connection");
      return frame(m.decode(bytes));
    },
  };
}
