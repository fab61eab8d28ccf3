/**
 * A small MessagePack encoder and decoder (https://github.com/msgpack/msgpack/blob/master/spec.md),
 * enough for protocol 2's `herald.v2.msgpack` frames and payloads.
 *
 * Its own entry point (`@herald-push/client/msgpack`, `dist/msgpack.js`):
 * the client imports it dynamically, only for `protocol: "msgpack"`, so the
 * default bundle does not carry it.
 *
 * Mapping (JavaScript ⇄ MessagePack), chosen to match what `JSON.stringify`
 * and the gateway's JSON side would do:
 * - `null`/`undefined` → nil → `null`; booleans ⇄ bool.
 * - An integral number in [-2^63, 2^64) → the smallest int/uint format;
 *   any other number → float64. Decoded ints and uint64s are numbers when
 *   they are safe integers (|n| ≤ 2^53 − 1), otherwise `bigint`; a `bigint`
 *   encodes as an int. float32 and float64 decode to numbers.
 * - string ⇄ str (UTF-8; invalid UTF-8 is an error when decoding).
 * - `Uint8Array` (also `ArrayBuffer` and other views) → bin → `Uint8Array`
 *   (a copy, not a view into the frame).
 * - Arrays ⇄ array (`undefined` items as nil). Plain objects and `Map`s →
 *   map; a decoded map is a plain object whose keys are the map's keys as
 *   strings (str, int or bool keys; any other key kind is an error).
 *   Object properties whose value is `undefined` are left out; an object with
 *   `toJSON()` is encoded as what it returns (so a `Date` is its ISO string).
 * - ext ⇄ `MsgpackExt` (the gateway sends none; kept so nothing is lost).
 *
 * Invariants: `decode` reads exactly one value and rejects trailing bytes,
 * truncated input, the never-used byte 0xc1 and nesting deeper than
 * `MAX_DEPTH`, always with `MsgpackError`; it never allocates more than the
 * input could hold. `encode` throws `MsgpackError` for functions, symbols,
 * integers outside the int64/uint64 range given as `bigint`, and nesting
 * deeper than `MAX_DEPTH` (a cycle).
 * @module
 */

/** Deepest nesting of arrays and maps, both ways. */
export const MAX_DEPTH = 256;

/** Invalid input to `decode`, or a value `encode` cannot represent. */
export class MsgpackError extends Error {
  override name = "MsgpackError";
}

/** A MessagePack extension value: `type` −128…127 and its raw bytes. */
export class MsgpackExt {
  constructor(
    readonly type: number,
    readonly data: Uint8Array,
  ) {}
}

const utf8 = new TextEncoder();
const strict = new TextDecoder("utf-8", { fatal: true });

// ---- encoding

class Writer {
  buf = new Uint8Array(256);
  view = new DataView(this.buf.buffer);
  pos = 0;

  /** Reserves `n` bytes and returns where they start. */
  take(n: number): number {
    if (this.pos + n > this.buf.length) {
      let size = this.buf.length * 2;
      while (size < this.pos + n) size *= 2;
      const bigger = new Uint8Array(size);
      bigger.set(this.buf.subarray(0, this.pos));
      this.buf = bigger;
      this.view = new DataView(bigger.buffer);
    }
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u8(x: number): void {
    const at = this.take(1); // may grow the buffer: read `buf` after
    this.buf[at] = x;
  }

  /** A type byte, then `len` in 1, 2 or 4 bytes: the first of `codes` that fits. */
  head(len: number, codes: [number, number, number]): void {
    if (len < 0x100) typed(this, codes[0], 1, (v, at) => v.setUint8(at, len));
    else if (len < 0x10000) typed(this, codes[1], 2, (v, at) => v.setUint16(at, len));
    else typed(this, codes[2], 4, (v, at) => v.setUint32(at, len));
  }

  bytes(b: Uint8Array): void {
    const at = this.take(b.length);
    this.buf.set(b, at);
  }
}

const TWO_64 = 2 ** 64;
const TWO_63 = 2 ** 63;

/** A type byte, then `n` written by `set` into the `size` bytes after it. */
function typed(w: Writer, code: number, size: number, set: (view: DataView, at: number) => void): void {
  w.u8(code);
  const at = w.take(size); // may grow the buffer, and replace the view
  set(w.view, at);
}

function writeInt(w: Writer, n: number): void {
  if (n >= 0 && n < 0x80) w.u8(n);
  else if (n < 0 && n >= -0x20) w.u8(n & 0xff);
  else if (n >= 0 && n < 0x100) typed(w, 0xcc, 1, (v, at) => v.setUint8(at, n));
  else if (n >= 0 && n < 0x10000) typed(w, 0xcd, 2, (v, at) => v.setUint16(at, n));
  else if (n >= 0 && n < 0x100000000) typed(w, 0xce, 4, (v, at) => v.setUint32(at, n));
  else if (n >= 0) typed(w, 0xcf, 8, (v, at) => v.setBigUint64(at, BigInt(n)));
  else if (n >= -0x80) typed(w, 0xd0, 1, (v, at) => v.setInt8(at, n));
  else if (n >= -0x8000) typed(w, 0xd1, 2, (v, at) => v.setInt16(at, n));
  else if (n >= -0x80000000) typed(w, 0xd2, 4, (v, at) => v.setInt32(at, n));
  else typed(w, 0xd3, 8, (v, at) => v.setBigInt64(at, BigInt(n)));
}

function writeBigInt(w: Writer, n: bigint): void {
  if (n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER)) writeInt(w, Number(n));
  else if (n >= 0n && n < 1n << 64n) typed(w, 0xcf, 8, (v, at) => v.setBigUint64(at, n));
  else if (n < 0n && n >= -(1n << 63n)) typed(w, 0xd3, 8, (v, at) => v.setBigInt64(at, n));
  else throw new MsgpackError(`msgpack: ${n} is outside the int64/uint64 range`);
}

function writeStr(w: Writer, s: string): void {
  const b = utf8.encode(s);
  if (b.length < 32) w.u8(0xa0 | b.length);
  else w.head(b.length, [0xd9, 0xda, 0xdb]);
  w.bytes(b);
}

/** A container header: fix form under 16 items, then 16- or 32-bit counts. */
function writeCount(w: Writer, n: number, fix: number, c16: number, c32: number): void {
  if (n < 16) w.u8(fix | n);
  else if (n < 0x10000) typed(w, c16, 2, (v, at) => v.setUint16(at, n));
  else typed(w, c32, 4, (v, at) => v.setUint32(at, n));
}

function write(w: Writer, v: unknown, depth: number): void {
  if (v === null || v === undefined) return w.u8(0xc0);
  switch (typeof v) {
    case "boolean":
      return w.u8(v ? 0xc3 : 0xc2);
    case "number":
      if (Number.isInteger(v) && v >= -TWO_63 && v < TWO_64) return writeInt(w, v === 0 ? 0 : v);
      return typed(w, 0xcb, 8, (view, at) => view.setFloat64(at, v));
    case "bigint":
      return writeBigInt(w, v);
    case "string":
      return writeStr(w, v);
    case "function":
    case "symbol":
      throw new MsgpackError(`msgpack: cannot encode a ${typeof v}`);
  }
  if (depth >= MAX_DEPTH) throw new MsgpackError(`msgpack: nested deeper than ${MAX_DEPTH} (a cycle?)`);
  if (v instanceof MsgpackExt) return writeExt(w, v);
  const bytes = v instanceof ArrayBuffer ? new Uint8Array(v) : ArrayBuffer.isView(v) ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength) : undefined;
  if (bytes) {
    w.head(bytes.length, [0xc4, 0xc5, 0xc6]);
    return w.bytes(bytes);
  }
  if (Array.isArray(v)) {
    writeCount(w, v.length, 0x90, 0xdc, 0xdd);
    for (const item of v) write(w, item, depth + 1);
    return;
  }
  if (v instanceof Map) {
    writeCount(w, v.size, 0x80, 0xde, 0xdf);
    for (const [key, value] of v) {
      write(w, key, depth + 1);
      write(w, value, depth + 1);
    }
    return;
  }
  const o = v as Record<string, unknown> & { toJSON?: () => unknown };
  if (typeof o.toJSON === "function") return write(w, o.toJSON(), depth + 1);
  const keys = Object.keys(o).filter((k) => o[k] !== undefined);
  writeCount(w, keys.length, 0x80, 0xde, 0xdf);
  for (const key of keys) {
    writeStr(w, key);
    write(w, o[key], depth + 1);
  }
}

function writeExt(w: Writer, e: MsgpackExt): void {
  const fixed = [1, 2, 4, 8, 16].indexOf(e.data.length);
  if (fixed >= 0) w.u8(0xd4 + fixed);
  else w.head(e.data.length, [0xc7, 0xc8, 0xc9]);
  w.u8(e.type & 0xff);
  w.bytes(e.data);
}

/** `value` as MessagePack bytes. */
export function encode(value: unknown): Uint8Array {
  const w = new Writer();
  write(w, value, 0);
  return w.buf.slice(0, w.pos);
}

// ---- decoding

class Reader {
  view: DataView;
  pos = 0;

  constructor(readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Skips `n` bytes and returns where they start; throws if the input ends first. */
  need(n: number): number {
    if (this.pos + n > this.bytes.length) throw new MsgpackError(`msgpack: input ends ${this.pos + n - this.bytes.length} bytes early`);
    const at = this.pos;
    this.pos += n;
    return at;
  }

  u8(): number {
    return this.bytes[this.need(1)];
  }

  u16(): number {
    return this.view.getUint16(this.need(2));
  }

  u32(): number {
    return this.view.getUint32(this.need(4));
  }

  raw(n: number): Uint8Array {
    const at = this.need(n);
    return this.bytes.slice(at, at + n);
  }

  str(n: number): string {
    const at = this.need(n);
    try {
      return strict.decode(this.bytes.subarray(at, at + n));
    } catch {
      throw new MsgpackError(`msgpack: invalid UTF-8 in a str at byte ${at}`);
    }
  }
}

const safe = (n: bigint): number | bigint => (n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n);

function readArray(r: Reader, n: number, depth: number): unknown[] {
  if (n > r.bytes.length - r.pos) throw new MsgpackError(`msgpack: an array of ${n} items cannot fit in the input`);
  const out = new Array(n);
  for (let i = 0; i < n; i++) out[i] = read(r, depth + 1);
  return out;
}

function readMap(r: Reader, n: number, depth: number): Record<string, unknown> {
  if (2 * n > r.bytes.length - r.pos) throw new MsgpackError(`msgpack: a map of ${n} entries cannot fit in the input`);
  const out: Record<string, unknown> = {};
  for (let i = 0; i < n; i++) {
    const at = r.pos;
    const key = read(r, depth + 1);
    if (typeof key !== "string" && typeof key !== "number" && typeof key !== "bigint" && typeof key !== "boolean") {
      throw new MsgpackError(`msgpack: a map key at byte ${at} is not a str, int or bool`);
    }
    const value = read(r, depth + 1);
    const name = String(key);
    // A key "__proto__" is data, not the object's prototype.
    if (name === "__proto__") Object.defineProperty(out, name, { value, enumerable: true, writable: true, configurable: true });
    else out[name] = value;
  }
  return out;
}

function read(r: Reader, depth: number): unknown {
  if (depth > MAX_DEPTH) throw new MsgpackError(`msgpack: nested deeper than ${MAX_DEPTH}`);
  const at = r.pos;
  const b = r.u8();
  if (b < 0x80) return b;
  if (b < 0x90) return readMap(r, b & 0x0f, depth);
  if (b < 0xa0) return readArray(r, b & 0x0f, depth);
  if (b < 0xc0) return r.str(b & 0x1f);
  if (b >= 0xe0) return b - 0x100;
  const v = r.view;
  switch (b) {
    case 0xc0:
      return null;
    case 0xc2:
      return false;
    case 0xc3:
      return true;
    case 0xc4:
      return r.raw(r.u8());
    case 0xc5:
      return r.raw(r.u16());
    case 0xc6:
      return r.raw(r.u32());
    case 0xc7:
    case 0xc8:
    case 0xc9: {
      const n = b === 0xc7 ? r.u8() : b === 0xc8 ? r.u16() : r.u32();
      const type = v.getInt8(r.need(1));
      return new MsgpackExt(type, r.raw(n));
    }
    case 0xca:
      return v.getFloat32(r.need(4));
    case 0xcb:
      return v.getFloat64(r.need(8));
    case 0xcc:
      return r.u8();
    case 0xcd:
      return r.u16();
    case 0xce:
      return r.u32();
    case 0xcf:
      return safe(v.getBigUint64(r.need(8)));
    case 0xd0:
      return v.getInt8(r.need(1));
    case 0xd1:
      return v.getInt16(r.need(2));
    case 0xd2:
      return v.getInt32(r.need(4));
    case 0xd3:
      return safe(v.getBigInt64(r.need(8)));
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8: {
      const type = v.getInt8(r.need(1));
      return new MsgpackExt(type, r.raw(1 << (b - 0xd4)));
    }
    case 0xd9:
      return r.str(r.u8());
    case 0xda:
      return r.str(r.u16());
    case 0xdb:
      return r.str(r.u32());
    case 0xdc:
      return readArray(r, r.u16(), depth);
    case 0xdd:
      return readArray(r, r.u32(), depth);
    case 0xde:
      return readMap(r, r.u16(), depth);
    case 0xdf:
      return readMap(r, r.u32(), depth);
  }
  throw new MsgpackError(`msgpack: byte 0x${b.toString(16)} at ${at} starts no value`);
}

/** The one value in `bytes`; throws `MsgpackError` on invalid input or bytes left over. */
export function decode(bytes: Uint8Array | ArrayBuffer): unknown {
  const r = new Reader(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes));
  const value = read(r, 0);
  if (r.pos !== r.bytes.length) throw new MsgpackError(`msgpack: ${r.bytes.length - r.pos} bytes left over after the value`);
  return value;
}
