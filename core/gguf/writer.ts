// Writes GGUF files (core/gguf/format.ts gives the layout): the header (metadata and tensor infos)
// as one buffer, then each tensor's bytes, padded to the alignment, streamed one tensor at a time
// so a multi-GB model is never whole in memory.

import { assert } from "../errors.ts";
import {
  alignUp,
  GGML_TYPES,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_VALUE_TYPES,
  GGUF_VERSION,
  type GgmlType,
  type GgufScalarType,
  type GgufTensorInfo,
  type GgufValue,
  ggufTensorBytes,
} from "./format.ts";

/** A tensor to write: its info without the offset, which the writer assigns. */
export interface GgufTensorSpec {
  name: string;
  type: GgmlType;
  /** ggml ne: fastest-varying first. */
  dims: number[];
}

/** Growable little-endian byte buffer. */
class ByteWriter {
  #buf = new Uint8Array(1 << 16);
  #len = 0;
  readonly #utf8 = new TextEncoder();

  #room(n: number): number {
    if (this.#len + n > this.#buf.length) {
      const next = new Uint8Array(Math.max(this.#buf.length * 2, this.#len + n));
      next.set(this.#buf.subarray(0, this.#len));
      this.#buf = next;
    }
    const at = this.#len;
    this.#len += n;
    return at;
  }

  /** A view over `n` new bytes (taken after any growth, so it is never a stale buffer's). */
  #at(n: number): DataView {
    const at = this.#room(n);
    return new DataView(this.#buf.buffer, at, n);
  }

  u8(v: number) {
    this.#at(1).setUint8(0, v);
  }
  u32(v: number) {
    this.#at(4).setUint32(0, v, true);
  }
  u64(v: number | bigint) {
    this.#at(8).setBigUint64(0, BigInt(v), true);
  }
  string(s: string) {
    const bytes = this.#utf8.encode(s);
    this.u64(bytes.length);
    const at = this.#room(bytes.length);
    this.#buf.set(bytes, at);
  }

  scalar(type: GgufScalarType, v: number | bigint | boolean | string) {
    const num = () => {
      assert(typeof v === "number", `gguf ${type} value must be a number`);
      return v;
    };
    switch (type) {
      case "u8":
        return this.#at(1).setUint8(0, num());
      case "i8":
        return this.#at(1).setInt8(0, num());
      case "u16":
        return this.#at(2).setUint16(0, num(), true);
      case "i16":
        return this.#at(2).setInt16(0, num(), true);
      case "u32":
        return this.#at(4).setUint32(0, num(), true);
      case "i32":
        return this.#at(4).setInt32(0, num(), true);
      case "f32":
        return this.#at(4).setFloat32(0, num(), true);
      case "f64":
        return this.#at(8).setFloat64(0, num(), true);
      case "u64":
        return this.#at(8).setBigUint64(0, BigInt(v as number | bigint), true);
      case "i64":
        return this.#at(8).setBigInt64(0, BigInt(v as number | bigint), true);
      case "bool":
        return this.u8(v ? 1 : 0);
      case "string":
        assert(typeof v === "string", "gguf string value must be a string");
        return this.string(v);
    }
  }

  value(v: GgufValue) {
    this.u32(GGUF_VALUE_TYPES[v.type]);
    if (v.type === "array") {
      this.u32(GGUF_VALUE_TYPES[v.of]);
      this.u64(v.values.length);
      for (const x of v.values) this.scalar(v.of, x);
    } else {
      this.scalar(v.type, v.value);
    }
  }

  padTo(alignment: number) {
    this.#room(alignUp(this.#len, alignment) - this.#len); // new bytes are zero
  }

  bytes(): Uint8Array {
    return this.#buf.subarray(0, this.#len);
  }
}

export interface GgufLayout {
  /** The header through its padding: data starts at header.length. */
  header: Uint8Array;
  tensors: GgufTensorInfo[];
  alignment: number;
}

/**
 * The header for `metadata` and `tensors` (in file order), with tensor offsets assigned in that
 * order. The alignment is `general.alignment` when the metadata sets it (a u32), else 32.
 */
export function ggufLayout(
  metadata: Array<[string, GgufValue]>,
  specs: GgufTensorSpec[],
): GgufLayout {
  const a = metadata.find(([k]) => k === "general.alignment")?.[1];
  const alignment = a && a.type === "u32" ? a.value : GGUF_DEFAULT_ALIGNMENT;
  const keys = new Set<string>();
  const w = new ByteWriter();
  w.u32(GGUF_MAGIC);
  w.u32(GGUF_VERSION);
  w.u64(specs.length);
  w.u64(metadata.length);
  for (const [key, value] of metadata) {
    assert(!keys.has(key), `gguf metadata key ${key} given twice`);
    keys.add(key);
    w.string(key);
    w.value(value);
  }
  const tensors: GgufTensorInfo[] = [];
  let offset = 0;
  for (const s of specs) {
    w.string(s.name);
    w.u32(s.dims.length);
    for (const d of s.dims) w.u64(d);
    w.u32(GGML_TYPES[s.type]);
    w.u64(offset);
    tensors.push({ ...s, offset });
    offset = alignUp(offset + ggufTensorBytes(s), alignment);
  }
  w.padTo(alignment);
  return { header: w.bytes(), tensors, alignment };
}

/**
 * A whole GGUF file as a stream of chunks: the header, then each tensor's bytes from `data`
 * (called once per tensor, in order) followed by its zero padding.
 */
export async function* ggufChunks(
  layout: GgufLayout,
  data: (t: GgufTensorInfo) => Promise<Uint8Array> | Uint8Array,
): AsyncGenerator<Uint8Array> {
  yield layout.header;
  let at = 0;
  for (const t of layout.tensors) {
    assert(at === t.offset, `${t.name}: data at ${at}, info says ${t.offset}`);
    const bytes = await data(t);
    const n = ggufTensorBytes(t);
    assert(bytes.byteLength === n, `${t.name}: ${bytes.byteLength} bytes, want ${n}`);
    yield bytes;
    const pad = alignUp(n, layout.alignment) - n;
    if (pad > 0) yield new Uint8Array(pad);
    at += n + pad;
  }
}
