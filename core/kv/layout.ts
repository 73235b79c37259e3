// The runtime-neutral KV layout shared by every runtime's export/import and by snapshot payloads.
//
// For a position range [start, end) of one sequence, the payload is, in order:
//   for layer in 0..layers:
//     K: (kv_head, pos, head_dim)   keys AFTER rotary embedding (absolute positions)
//     V: (kv_head, pos, head_dim)
// each element in `dtype`, little-endian, densely packed. So one token costs
//   2 * layers * kvHeads * headDim * bytesPerElement(dtype)
// bytes (Llama-3.1-8B in bf16: 2 * 32 * 8 * 128 * 2 = 128 KiB).
//
// fp8-e4m3 (OCP "fn": max 448, no inf) carries its scales in the payload, in front of what they
// scale: each K and each V above is
//     scales (kv_head, block) f32, then values (kv_head, pos, head_dim) fp8
// with block = (pos - start) / FP8_BLOCK_POSITIONS, so x = fp8 * scales[kv_head][block]. Blocks are
// counted from the payload's first position: the size depends only on the token count. The
// engine's cache blocks are aligned to absolute multiples of 64, so a payload starting on one is
// the cache's bytes and scales as stored (every snapshot chunk of a multiple of 64 tokens).

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

/** Positions per fp8 scale block (UL_FP8_BLOCK in native/include/ul_engine.h). */
export const FP8_BLOCK_POSITIONS = 64;

/** Scale blocks of one kv head in a payload of `tokens` positions. */
export function fp8ScaleBlocks(tokens: number): number {
  return Math.ceil(tokens / FP8_BLOCK_POSITIONS);
}

/** Bytes of fp8 scales in a payload of `tokens` positions (0 for other dtypes). */
export function kvScaleBytes(layout: KvLayout, tokens: number): number {
  if (layout.dtype !== "fp8-e4m3") return 0;
  return 2 * layout.layers * layout.kvHeads * fp8ScaleBlocks(tokens) * 4;
}

/** Byte size of the payload for `tokens` positions, fp8 scales included. */
export function kvPayloadBytes(layout: KvLayout, tokens: number): number {
  return kvBytesPerToken(layout) * tokens + kvScaleBytes(layout, tokens);
}
