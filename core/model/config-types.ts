// The typed model configuration every part of the project reads. `parseConfig` (config.ts) turns a
// Hugging Face config.json into this, validated; nothing else reads config.json directly.

export type RopeType = "default" | "linear" | "dynamic" | "llama3" | "yarn";

/** rope_scaling as transformers accepts it for Llama, normalised (`type` -> `rope_type`). */
export type RopeScaling =
  | { ropeType: "default" }
  | { ropeType: "linear"; factor: number }
  | { ropeType: "dynamic"; factor: number; originalMaxPositionEmbeddings?: number }
  | {
      ropeType: "llama3";
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    }
  | {
      ropeType: "yarn";
      factor: number;
      originalMaxPositionEmbeddings?: number;
      betaFast?: number;
      betaSlow?: number;
      attentionFactor?: number;
      mscale?: number;
      mscaleAllDim?: number;
      truncate?: boolean;
    };

export type WeightDtype = "f32" | "bf16" | "f16";

export interface ModelConfig {
  /** config.json `architectures[0]`, e.g. "LlamaForCausalLM". */
  architecture: string;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  /** Explicit `head_dim`, else hidden_size / num_attention_heads. */
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** Present for every rope type; `{ ropeType: "default" }` when config.json has none. */
  ropeScaling: RopeScaling;
  /** transformers' partial_rotary_factor (1 for Llama). */
  partialRotaryFactor: number;
  maxPositionEmbeddings: number;
  vocabSize: number;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  /** Always a list (config.json may give an int or a list). */
  eosTokenIds: number[];
  padTokenId: number | null;
  /** `torch_dtype` (or `dtype`) of the checkpoint, if stated. */
  torchDtype: WeightDtype | null;
  attentionBias: boolean;
  mlpBias: boolean;
  hiddenAct: "silu";
}
