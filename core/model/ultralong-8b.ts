// UltraLong-8B's shape (Llama-3.1-8B: ARCHITECTURE.md), for plans made without its config.json at
// hand: the deploy's GPU choice and docs/deploy.md's table. The 1M, 2M and 4M variants differ only
// in rope scaling, which costs no memory.

import type { LlamaShape } from "./llama-tensors.ts";

export const ULTRALONG_8B: LlamaShape = {
  hiddenSize: 4096,
  intermediateSize: 14336,
  numHiddenLayers: 32,
  numAttentionHeads: 32,
  numKeyValueHeads: 8,
  headDim: 128,
  vocabSize: 128256,
  tieWordEmbeddings: false,
  attentionBias: false,
  mlpBias: false,
};
