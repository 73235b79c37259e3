// GGUF (version 3), the file format of ggml and llama.cpp, as ggml's docs/gguf.md specifies it:
//
//   u32 magic "GGUF" | u32 version (3) | u64 tensor_count | u64 metadata_kv_count
//   metadata_kv_count x { string key | u32 value_type | value }
//   tensor_count x { string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset }
//   zero padding to `general.alignment` (default 32)
//   tensor data: each tensor at data_start + offset, every offset a multiple of the alignment
//
// Everything is little-endian. A string is a u64 byte length and UTF-8 bytes (no terminator); an
// array is a u32 element type, a u64 count and the elements. `dims` are ggml's `ne`: the fastest-
// varying dimension first, so a row-major (rows, cols) matrix is dims [cols, rows].

/** "GGUF" read as a little-endian u32. */
export const GGUF_MAGIC = 0x46554747;
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** gguf_type: the metadata value types and their wire codes. */
export const GGUF_VALUE_TYPES = {
  u8: 0,
  i8: 1,
  u16: 2,
  i16: 3,
  u32: 4,
  i32: 5,
  f32: 6,
  bool: 7,
  string: 8,
  array: 9,
  u64: 10,
  i64: 11,
  f64: 12,
} as const;

export type GgufScalarType = Exclude<keyof typeof GGUF_VALUE_TYPES, "array">;

/** One metadata value. 64-bit integers are bigint (they may exceed 2^53). */
export type GgufValue =
  | { type: Exclude<GgufScalarType, "string" | "bool" | "u64" | "i64">; value: number }
  | { type: "u64" | "i64"; value: bigint }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string }
  | { type: "array"; of: GgufScalarType; values: Array<number | bigint | boolean | string> };

/** The ggml tensor types this project writes (ggml.h enum ggml_type). */
export const GGML_TYPES = { f32: 0, f16: 1, bf16: 30 } as const;
export type GgmlType = keyof typeof GGML_TYPES;

export function ggmlTypeBytes(t: GgmlType): number {
  return t === "f32" ? 4 : 2;
}

/** A tensor as the file's tensor-info table lists it. */
export interface GgufTensorInfo {
  name: string;
  type: GgmlType;
  /** ggml ne: fastest-varying first. */
  dims: number[];
  /** Bytes from the start of the data section; a multiple of the alignment. */
  offset: number;
}

export function ggufTensorBytes(t: Pick<GgufTensorInfo, "type" | "dims">): number {
  return t.dims.reduce((a, d) => a * d, 1) * ggmlTypeBytes(t.type);
}

export function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}
