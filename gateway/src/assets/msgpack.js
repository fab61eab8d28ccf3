// src/msgpack.ts
var MAX_DEPTH = 256;
var MsgpackError = class extends Error {
  name = "MsgpackError";
};
var MsgpackExt = class {
  constructor(type, data) {
    this.type = type;
    this.data = data;
  }
  type;
  data;
};
var utf8 = new TextEncoder();
var strict = new TextDecoder("utf-8", { fatal: true });
var Writer = class {
  buf = new Uint8Array(256);
  view = new DataView(this.buf.buffer);
  pos = 0;
  /** Reserves `n` bytes and returns where they start. */
  take(n) {
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
  u8(x) {
    const at = this.take(1);
    this.buf[at] = x;
  }
  /** A type byte, then `len` in 1, 2 or 4 bytes: the first of `codes` that fits. */
  head(len, codes) {
    if (len < 256) typed(this, codes[0], 1, (v, at) => v.setUint8(at, len));
    else if (len < 65536) typed(this, codes[1], 2, (v, at) => v.setUint16(at, len));
    else typed(this, codes[2], 4, (v, at) => v.setUint32(at, len));
  }
  bytes(b) {
    const at = this.take(b.length);
    this.buf.set(b, at);
  }
};
var TWO_64 = 2 ** 64;
var TWO_63 = 2 ** 63;
function typed(w, code, size, set) {
  w.u8(code);
  const at = w.take(size);
  set(w.view, at);
}
function writeInt(w, n) {
  if (n >= 0 && n < 128) w.u8(n);
  else if (n < 0 && n >= -32) w.u8(n & 255);
  else if (n >= 0 && n < 256) typed(w, 204, 1, (v, at) => v.setUint8(at, n));
  else if (n >= 0 && n < 65536) typed(w, 205, 2, (v, at) => v.setUint16(at, n));
  else if (n >= 0 && n < 4294967296) typed(w, 206, 4, (v, at) => v.setUint32(at, n));
  else if (n >= 0) typed(w, 207, 8, (v, at) => v.setBigUint64(at, BigInt(n)));
  else if (n >= -128) typed(w, 208, 1, (v, at) => v.setInt8(at, n));
  else if (n >= -32768) typed(w, 209, 2, (v, at) => v.setInt16(at, n));
  else if (n >= -2147483648) typed(w, 210, 4, (v, at) => v.setInt32(at, n));
  else typed(w, 211, 8, (v, at) => v.setBigInt64(at, BigInt(n)));
}
function writeBigInt(w, n) {
  if (n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER)) writeInt(w, Number(n));
  else if (n >= 0n && n < 1n << 64n) typed(w, 207, 8, (v, at) => v.setBigUint64(at, n));
  else if (n < 0n && n >= -(1n << 63n)) typed(w, 211, 8, (v, at) => v.setBigInt64(at, n));
  else throw new MsgpackError(`msgpack: ${n} is outside the int64/uint64 range`);
}
function writeStr(w, s) {
  const b = utf8.encode(s);
  if (b.length < 32) w.u8(160 | b.length);
  else w.head(b.length, [217, 218, 219]);
  w.bytes(b);
}
function writeCount(w, n, fix, c16, c32) {
  if (n < 16) w.u8(fix | n);
  else if (n < 65536) typed(w, c16, 2, (v, at) => v.setUint16(at, n));
  else typed(w, c32, 4, (v, at) => v.setUint32(at, n));
}
function write(w, v, depth) {
  if (v === null || v === void 0) return w.u8(192);
  switch (typeof v) {
    case "boolean":
      return w.u8(v ? 195 : 194);
    case "number":
      if (Number.isInteger(v) && v >= -TWO_63 && v < TWO_64) return writeInt(w, v === 0 ? 0 : v);
      return typed(w, 203, 8, (view, at) => view.setFloat64(at, v));
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
  const bytes = v instanceof ArrayBuffer ? new Uint8Array(v) : ArrayBuffer.isView(v) ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength) : void 0;
  if (bytes) {
    w.head(bytes.length, [196, 197, 198]);
    return w.bytes(bytes);
  }
  if (Array.isArray(v)) {
    writeCount(w, v.length, 144, 220, 221);
    for (const item of v) write(w, item, depth + 1);
    return;
  }
  if (v instanceof Map) {
    writeCount(w, v.size, 128, 222, 223);
    for (const [key, value] of v) {
      write(w, key, depth + 1);
      write(w, value, depth + 1);
    }
    return;
  }
  const o = v;
  if (typeof o.toJSON === "function") return write(w, o.toJSON(), depth + 1);
  const keys = Object.keys(o).filter((k) => o[k] !== void 0);
  writeCount(w, keys.length, 128, 222, 223);
  for (const key of keys) {
    writeStr(w, key);
    write(w, o[key], depth + 1);
  }
}
function writeExt(w, e) {
  const fixed = [1, 2, 4, 8, 16].indexOf(e.data.length);
  if (fixed >= 0) w.u8(212 + fixed);
  else w.head(e.data.length, [199, 200, 201]);
  w.u8(e.type & 255);
  w.bytes(e.data);
}
function encode(value) {
  const w = new Writer();
  write(w, value, 0);
  return w.buf.slice(0, w.pos);
}
var Reader = class {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  bytes;
  view;
  pos = 0;
  /** Skips `n` bytes and returns where they start; throws if the input ends first. */
  need(n) {
    if (this.pos + n > this.bytes.length) throw new MsgpackError(`msgpack: input ends ${this.pos + n - this.bytes.length} bytes early`);
    const at = this.pos;
    this.pos += n;
    return at;
  }
  u8() {
    return this.bytes[this.need(1)];
  }
  u16() {
    return this.view.getUint16(this.need(2));
  }
  u32() {
    return this.view.getUint32(this.need(4));
  }
  raw(n) {
    const at = this.need(n);
    return this.bytes.slice(at, at + n);
  }
  str(n) {
    const at = this.need(n);
    try {
      return strict.decode(this.bytes.subarray(at, at + n));
    } catch {
      throw new MsgpackError(`msgpack: invalid UTF-8 in a str at byte ${at}`);
    }
  }
};
var safe = (n) => n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
function readArray(r, n, depth) {
  if (n > r.bytes.length - r.pos) throw new MsgpackError(`msgpack: an array of ${n} items cannot fit in the input`);
  const out = new Array(n);
  for (let i = 0; i < n; i++) out[i] = read(r, depth + 1);
  return out;
}
function readMap(r, n, depth) {
  if (2 * n > r.bytes.length - r.pos) throw new MsgpackError(`msgpack: a map of ${n} entries cannot fit in the input`);
  const out = {};
  for (let i = 0; i < n; i++) {
    const at = r.pos;
    const key = read(r, depth + 1);
    if (typeof key !== "string" && typeof key !== "number" && typeof key !== "bigint" && typeof key !== "boolean") {
      throw new MsgpackError(`msgpack: a map key at byte ${at} is not a str, int or bool`);
    }
    const value = read(r, depth + 1);
    const name = String(key);
    if (name === "__proto__") Object.defineProperty(out, name, { value, enumerable: true, writable: true, configurable: true });
    else out[name] = value;
  }
  return out;
}
function read(r, depth) {
  if (depth > MAX_DEPTH) throw new MsgpackError(`msgpack: nested deeper than ${MAX_DEPTH}`);
  const at = r.pos;
  const b = r.u8();
  if (b < 128) return b;
  if (b < 144) return readMap(r, b & 15, depth);
  if (b < 160) return readArray(r, b & 15, depth);
  if (b < 192) return r.str(b & 31);
  if (b >= 224) return b - 256;
  const v = r.view;
  switch (b) {
    case 192:
      return null;
    case 194:
      return false;
    case 195:
      return true;
    case 196:
      return r.raw(r.u8());
    case 197:
      return r.raw(r.u16());
    case 198:
      return r.raw(r.u32());
    case 199:
    case 200:
    case 201: {
      const n = b === 199 ? r.u8() : b === 200 ? r.u16() : r.u32();
      const type = v.getInt8(r.need(1));
      return new MsgpackExt(type, r.raw(n));
    }
    case 202:
      return v.getFloat32(r.need(4));
    case 203:
      return v.getFloat64(r.need(8));
    case 204:
      return r.u8();
    case 205:
      return r.u16();
    case 206:
      return r.u32();
    case 207:
      return safe(v.getBigUint64(r.need(8)));
    case 208:
      return v.getInt8(r.need(1));
    case 209:
      return v.getInt16(r.need(2));
    case 210:
      return v.getInt32(r.need(4));
    case 211:
      return safe(v.getBigInt64(r.need(8)));
    case 212:
    case 213:
    case 214:
    case 215:
    case 216: {
      const type = v.getInt8(r.need(1));
      return new MsgpackExt(type, r.raw(1 << b - 212));
    }
    case 217:
      return r.str(r.u8());
    case 218:
      return r.str(r.u16());
    case 219:
      return r.str(r.u32());
    case 220:
      return readArray(r, r.u16(), depth);
    case 221:
      return readArray(r, r.u32(), depth);
    case 222:
      return readMap(r, r.u16(), depth);
    case 223:
      return readMap(r, r.u32(), depth);
  }
  throw new MsgpackError(`msgpack: byte 0x${b.toString(16)} at ${at} starts no value`);
}
function decode(bytes) {
  const r = new Reader(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes));
  const value = read(r, 0);
  if (r.pos !== r.bytes.length) throw new MsgpackError(`msgpack: ${r.bytes.length - r.pos} bytes left over after the value`);
  return value;
}
export {
  MAX_DEPTH,
  MsgpackError,
  MsgpackExt,
  decode,
  encode
};
//# sourceMappingURL=msgpack.js.map
