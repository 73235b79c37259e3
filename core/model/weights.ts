// What a runtime gets to build itself: the validated config and tensor-by-tensor access to the
// weights. Implemented by core/model/load.ts over core/safetensors; runtimes never parse files.

import type { ModelFiles } from "../io/byte-source.ts";
import type { ModelConfig, WeightDtype } from "./config-types.ts";

export interface TensorInfo {
  /** HF name, e.g. "model.layers.0.self_attn.q_proj.weight". */
  name: string;
  /** Element type as stored in the checkpoint. */
  dtype: WeightDtype;
  /** Row-major shape as stored, e.g. (out_features, in_features) for a Linear weight. */
  shape: number[];
}

export interface ModelWeights {
  /** Every tensor in the checkpoint (all shards). */
  tensors(): TensorInfo[];
  /** One tensor converted on read to f32 values. */
  read(name: string, as: "f32"): Promise<Float32Array>;
  /** One tensor converted on read to bf16 / f16 bit patterns. */
  read(name: string, as: "bf16" | "f16"): Promise<Uint16Array>;
}

/** Sampling defaults and extra stop ids from generation_config.json, when present. */
export interface GenerationDefaults {
  eosTokenIds: number[];
  temperature?: number;
  topP?: number;
  topK?: number;
}

export interface LoadedModel {
  files: ModelFiles;
  config: ModelConfig;
  weights: ModelWeights;
  generation: GenerationDefaults;
  /** SHA-256 hex over every weight byte + config + tokenizer + rope settings; cached. */
  fingerprint(): Promise<string>;
}
