// The tensors a Hugging Face LlamaForCausalLM checkpoint holds, with their shapes, derived from the
// config alone. Listed in state-dict order (the order transformers saves and shards them in).
// Linear weights are (out_features, in_features), as nn.Linear stores them.

import type { ModelConfig } from "./config-types.ts";

export interface ExpectedTensor {
  name: string;
  shape: number[];
}

/**
 * Tensors old checkpoints carry that transformers ignores on load
 * (`_keys_to_ignore_on_load_unexpected`): the rotary buffers of transformers < 4.31.
 */
export const IGNORED_TENSOR = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;

/** The config fields a Llama checkpoint's tensor shapes follow from. */
export type LlamaShape = Pick<
  ModelConfig,
  | "hiddenSize"
  | "intermediateSize"
  | "numHiddenLayers"
  | "numAttentionHeads"
  | "numKeyValueHeads"
  | "headDim"
  | "vocabSize"
  | "tieWordEmbeddings"
  | "attentionBias"
  | "mlpBias"
>;

export function llamaTensors(config: LlamaShape): ExpectedTensor[] {
  const h = config.hiddenSize;
  const q = config.numAttentionHeads * config.headDim;
  const kv = config.numKeyValueHeads * config.headDim;
  const ffn = config.intermediateSize;
  const out: ExpectedTensor[] = [
    { name: "model.embed_tokens.weight", shape: [config.vocabSize, h] }, // (vocab, hidden)
  ];
  for (let l = 0; l < config.numHiddenLayers; l++) {
    const p = `model.layers.${l}`;
    const linear = (name: string, outF: number, inF: number, bias: boolean) => {
      out.push({ name: `${p}.${name}.weight`, shape: [outF, inF] });
      if (bias) out.push({ name: `${p}.${name}.bias`, shape: [outF] });
    };
    linear("self_attn.q_proj", q, h, config.attentionBias); // (heads*head_dim, hidden)
    linear("self_attn.k_proj", kv, h, config.attentionBias); // (kv_heads*head_dim, hidden)
    linear("self_attn.v_proj", kv, h, config.attentionBias); // (kv_heads*head_dim, hidden)
    linear("self_attn.o_proj", h, q, config.attentionBias); // (hidden, heads*head_dim)
    linear("mlp.gate_proj", ffn, h, config.mlpBias); // (ffn, hidden)
    linear("mlp.up_proj", ffn, h, config.mlpBias); // (ffn, hidden)
    linear("mlp.down_proj", h, ffn, config.mlpBias); // (hidden, ffn)
    out.push({ name: `${p}.input_layernorm.weight`, shape: [h] });
    out.push({ name: `${p}.post_attention_layernorm.weight`, shape: [h] });
  }
  out.push({ name: "model.norm.weight", shape: [h] });
  if (!config.tieWordEmbeddings) out.push({ name: "lm_head.weight", shape: [config.vocabSize, h] });
  return out;
}
