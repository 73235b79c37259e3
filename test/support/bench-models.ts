// Model shapes several benchmarks share (test/bench/*.ts), so their figures are about one model.

import type { GenerateOptions } from "../../core/model/generate.ts";

/**
 * Issue 14's CPU comparison model: 12 layers, hidden 768, 12 query / 4 KV heads (head_dim 64),
 * FFN 2048, Llama 3's 128256 vocabulary, YaRN rope (`npm run bench -- profile`, `-- cpu-peer`).
 */
export const ISSUE14_MODEL: GenerateOptions = {
  layers: 12,
  hidden: 768,
  heads: 12,
  kvHeads: 4,
  ffn: 2048,
  vocab: 128256,
  rope: "yarn",
};

/**
 * Issue 15's batching model, about 157M parameters: 8 layers, hidden 512, 8 query / 4 KV heads
 * (head_dim 64), FFN 1536, Llama 3's 128256 vocabulary (the untied embedding and lm_head are 131M
 * of the 157M), yarn rope (`npm run bench -- batching`). Smaller layers than issue 14's model so an
 * 8K-token document prefills in seconds per sequence on two cores; decode still reads ~360 MB of f32
 * weights per step, which is what batching shares.
 */
export const ISSUE15_MODEL: GenerateOptions = {
  layers: 8,
  hidden: 512,
  heads: 8,
  kvHeads: 4,
  ffn: 1536,
  vocab: 128256,
  rope: "yarn",
};
