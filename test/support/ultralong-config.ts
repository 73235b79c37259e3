// UltraLong-8B-1M's config.json as tests write or parse it: its shape and rope settings
// (ARCHITECTURE.md), in transformers 4 layout.

export const ULTRALONG_CONFIG = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 4096,
  intermediate_size: 14336,
  num_hidden_layers: 32,
  num_attention_heads: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 500000.0,
  max_position_embeddings: 1048576,
  vocab_size: 128256,
  tie_word_embeddings: false,
  bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009],
  torch_dtype: "float32",
  hidden_act: "silu",
  attention_bias: false,
  mlp_bias: false,
  rope_scaling: {
    rope_type: "yarn",
    factor: 128.0,
    original_max_position_embeddings: 8192,
  },
};
