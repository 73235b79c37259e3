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
