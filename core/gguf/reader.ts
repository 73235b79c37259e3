// Reads a GGUF file's header (core/gguf/format.ts): metadata and tensor infos, through a ByteSource
// in blocks, so a 10 MB tokenizer table is parsed without reading the weights. Any malformed field
// is one FormatError naming the file and the byte offset.

import { FormatError } from "../errors.ts";
import type { ByteSource } from "../io/byte-source.ts";
import {
  alignUp,
  GGML_TYPES,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_VALUE_TYPES,
  type GgmlType,
  type GgufScalarType,
  type GgufTensorInfo,
  type GgufValue,
  ggufTensorBytes,
} from "./format.ts";

export interface GgufHeader {
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** File offset of the data section: tensor t lives at dataStart + t.offset. */
  dataStart: number;
}

const TYPE_NAMES = new Map<number, keyof typeof GGUF_VALUE_TYPES>(
  Object.entries(GGUF_VALUE_TYPES).map(([k, v]) => [v, k as keyof typeof GGUF_VALUE_TYPES]),
);
const GGML_NAMES = new Map<number, GgmlType>(
  Object.entries(GGML_TYPES).map(([k, v]) => [v, k as GgmlType]),
);
const BLOCK = 1 << 20;

/** Sequential little-endian reads over a ByteSource, fetched a block at a time. */
class Cursor {
  #buf: Uint8Array = new Uint8Array(0);
  #bufStart = 0;
  pos = 0;
  readonly #utf8 = new TextDecoder("utf-8", { fatal: true });

  constructor(
    readonly source: ByteSource,
    readonly size: number,
  ) {}

  fail(what: string): never {
    throw new FormatError(`${this.source.name}: GGUF: ${what} (at byte ${this.pos})`);
  }

  async #need(n: number): Promise<number> {
    if (this.pos + n > this.size) this.fail(`truncated: ${n} bytes wanted, file ends`);
    const end = this.#bufStart + this.#buf.length;
    if (this.pos < this.#bufStart || this.pos + n > end) {
      const len = Math.min(Math.max(n, BLOCK), this.size - this.pos);
      this.#buf = await this.source.read(this.pos, len);
      this.#bufStart = this.pos;
    }
    const at = this.pos - this.#bufStart;
    this.pos += n;
    return at;
  }

  /** A view over the next `n` bytes (taken after the await, never over a replaced block). */
  async #take(n: number): Promise<DataView> {
    const at = await this.#need(n);
    return new DataView(this.#buf.buffer, this.#buf.byteOffset + at, n);
  }

  async u32(): Promise<number> {
    return (await this.#take(4)).getUint32(0, true);
  }
  async u64(): Promise<number> {
    const v = (await this.#take(8)).getBigUint64(0, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`count ${v} is too large`);
    return Number(v);
  }
  async string(): Promise<string> {
    const n = await this.u64();
    const at = await this.#need(n);
    try {
      return this.#utf8.decode(this.#buf.subarray(at, at + n));
    } catch {
      this.pos -= n;
      return this.fail("string is not UTF-8");
    }
  }

  async scalar(type: GgufScalarType): Promise<number | bigint | boolean | string> {
    switch (type) {
      case "u8":
        return (await this.#take(1)).getUint8(0);
      case "i8":
        return (await this.#take(1)).getInt8(0);
      case "u16":
        return (await this.#take(2)).getUint16(0, true);
      case "i16":
        return (await this.#take(2)).getInt16(0, true);
      case "u32":
        return (await this.#take(4)).getUint32(0, true);
      case "i32":
        return (await this.#take(4)).getInt32(0, true);
      case "f32":
        return (await this.#take(4)).getFloat32(0, true);
      case "f64":
        return (await this.#take(8)).getFloat64(0, true);
      case "u64":
        return (await this.#take(8)).getBigUint64(0, true);
      case "i64":
        return (await this.#take(8)).getBigInt64(0, true);
      case "bool": {
        const b = (await this.#take(1)).getUint8(0);
        if (b > 1) this.fail(`bool value ${b}`);
        return b === 1;
      }
      case "string":
        return this.string();
    }
  }

  async valueType(): Promise<keyof typeof GGUF_VALUE_TYPES> {
    const code = await this.u32();
    const name = TYPE_NAMES.get(code);
    if (name === undefined) this.fail(`unknown value type ${code}`);
    return name;
  }

  async value(): Promise<GgufValue> {
    const type = await this.valueType();
    if (type !== "array") return { type, value: await this.scalar(type) } as GgufValue;
    const of = await this.valueType();
    if (of === "array") this.fail("nested arrays are not supported");
    const n = await this.u64();
    const values: Array<number | bigint | boolean | string> = [];
    for (let i = 0; i < n; i++) values.push(await this.scalar(of));
    return { type, of, values };
  }
}

export async function readGgufHeader(source: ByteSource): Promise<GgufHeader> {
  const c = new Cursor(source, await source.size());
  if ((await c.u32()) !== GGUF_MAGIC) {
    c.pos = 0;
    c.fail("not a GGUF file (no GGUF magic)");
  }
  const version = await c.u32();
  if (version !== 3) c.fail(`version ${version}: only version 3 is read`);
  const tensorCount = await c.u64();
  const kvCount = await c.u64();
  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = await c.string();
    if (metadata.has(key)) c.fail(`metadata key ${key} appears twice`);
    metadata.set(key, await c.value());
  }
  const a = metadata.get("general.alignment");
  const alignment = a?.type === "u32" ? a.value : GGUF_DEFAULT_ALIGNMENT;
  const tensors: GgufTensorInfo[] = [];
  for (let i = 0; i < tensorCount; i++) {
    const name = await c.string();
    const nDims = await c.u32();
    if (nDims < 1 || nDims > 4) c.fail(`tensor ${name}: ${nDims} dimensions`);
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) dims.push(await c.u64());
    const code = await c.u32();
    const type = GGML_NAMES.get(code);
    if (type === undefined)
      return c.fail(`tensor ${name}: ggml type ${code} is not f32, f16 or bf16`);
    const offset = await c.u64();
    if (offset % alignment !== 0) c.fail(`tensor ${name}: offset ${offset} is not aligned`);
    tensors.push({ name, type, dims, offset });
  }
  const dataStart = alignUp(c.pos, alignment);
  for (const t of tensors) {
    if (dataStart + t.offset + ggufTensorBytes(t) > c.size) {
      c.fail(`tensor ${t.name}: data runs past the end of the file`);
    }
  }
  return { version, metadata, tensors, alignment, dataStart };
}
