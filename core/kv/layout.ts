// The runtime-neutral KV layout shared by every runtime's export/import and by snapshot payloads.
//
// For a position range [start, end) of one sequence, the payload is, in order:
//   for layer in 0..layers:
//     K: (kv_head, pos, head_dim)   keys AFTER rotary embedding (absolute positions)
//     V: (kv_head, pos, head_dim)
// each element in `dtype`, little-endian, densely packed. So one token costs
//   2 * layers * kvHeads * headDim * bytesPerElement(dtype)
// bytes (Llama-3.1-8B in bf16: 2 * 32 * 8 * 128 * 2 = 128 KiB). fp8-e4m3 is reserved: it needs
// per-head scales and no runtime produces it yet.

import type { ModelConfig } from "../model/config-types.ts";

export type KvDtype = "f32" | "bf16" | "f16" | "fp8-e4m3";

export interface KvLayout {
  layers: number;
  kvHeads: number;
  headDim: number;
  dtype: KvDtype;
}

/** A model's KV layout in `dtype`: its layers, KV heads and head_dim. */
export function kvLayoutOf(
  config: Pick<ModelConfig, "numHiddenLayers" | "numKeyValueHeads" | "headDim">,
  dtype: KvDtype,
): KvLayout {
  return {
    layers: config.numHiddenLayers,
    kvHeads: config.numKeyValueHeads,
    headDim: config.headDim,
    dtype,
  };
}

export function kvBytesPerElement(dtype: KvDtype): number {
  switch (dtype) {
    case "f32":
      return 4;
    case "bf16":
    case "f16":
      return 2;
    case "fp8-e4m3":
      return 1;
  }
}

export function kvBytesPerToken(layout: KvLayout): number {
  return 2 * layout.layers * layout.kvHeads * layout.headDim * kvBytesPerElement(layout.dtype);
}

/** Byte size of the payload for `tokens` positions. */
export function kvPayloadBytes(layout: KvLayout, tokens: number): number {
  return kvBytesPerToken(layout) * tokens;
}
