// Types for shard.mjs (plain JS so worker threads need no TS loader).

export type WeightFormat = "f32" | "bf16" | "int8";
export type MatrixKey = "qkv" | "o" | "gu" | "down" | "lm";
export type VectorKey = "attnNorm" | "ffnNorm" | "finalNorm";

/** One shard's dims: counts are LOCAL to the shard (its heads, FFN columns, vocab rows). */
export interface ShardSpec {
  hidden: number;
  layers: number;
  headDim: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  vocab: number;
  eps: number;
  weightFormat: WeightFormat;
  kvDtype: "f32" | "bf16";
  /** Tokens per micro-batch (activation buffers are sized for it). */
  maxBatch: number;
  maxPositions: number;
}

export const INITIAL_PAGES: number;
export function matrixBytes(rows: number, cols: number, format: WeightFormat): number;
export function attentionScratchBytes(nh: number, nkv: number, hd: number): number;
export function shardBytes(spec: ShardSpec): {
  weights: number;
  activations: number;
  kvPerPosition: number;
};

export class Shard {
  constructor(module: WebAssembly.Module, spec: ShardSpec);
  readonly spec: ShardSpec;
  readonly weightBytes: number;
  readonly memoryBytes: number;
  setVector(key: VectorKey, layer: number, data: Float32Array): void;
  setMatrix(
    key: MatrixKey,
    layer: number,
    rowOffset: number,
    data: Float32Array | Uint16Array,
  ): void;
  setRope(invFreq: Float64Array, scaling: number): void;
  input(): Float32Array;
  reserve(end: number, keep: number): void;
  begin(p0: number, T: number): void;
  attention(layer: number, reduce: ((partial: Float32Array) => void) | null): void;
  ffn(layer: number, reduce: ((partial: Float32Array) => void) | null): void;
  addToResidual(partial: Float32Array): void;
  logits(): Float32Array;
  exportKv(start: number, end: number): Uint8Array;
  importKv(bytes: Uint8Array, start: number, n: number): void;
}
