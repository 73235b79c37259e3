// For the emscripten host only: the byte offsets of ul_config's and ul_step_item's fields, so the TypeScript glue
// (native/ts/wasm-host.ts) writes the structs from the compiler's own layout, not a copy of it.
#include <cstddef>

#include "ul_engine.h"

extern "C" {

/** Writes 17 int32: sizeof(ul_config), then the offset of each field in declaration order. */
void ul_wasm_config_layout(int32_t* out) {
  int i = 0;
  out[i++] = static_cast<int32_t>(sizeof(ul_config));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, hidden_size));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, intermediate_size));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, num_layers));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, num_heads));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, num_kv_heads));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, head_dim));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, vocab_size));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, tie_word_embeddings));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, rms_norm_eps));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, rotary_dim));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, inv_freq));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, attention_scaling));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, max_positions));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, kv_dtype));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, backend));
  out[i++] = static_cast<int32_t>(offsetof(ul_config, max_chunk));
}

/** Writes 7 int32: sizeof(ul_step_item), then the offset of each field in declaration order. */
void ul_wasm_step_item_layout(int32_t* out) {
  int i = 0;
  out[i++] = static_cast<int32_t>(sizeof(ul_step_item));
  out[i++] = static_cast<int32_t>(offsetof(ul_step_item, tokens));
  out[i++] = static_cast<int32_t>(offsetof(ul_step_item, n_tokens));
  out[i++] = static_cast<int32_t>(offsetof(ul_step_item, start));
  out[i++] = static_cast<int32_t>(offsetof(ul_step_item, table));
  out[i++] = static_cast<int32_t>(offsetof(ul_step_item, n_blocks));
  out[i++] = static_cast<int32_t>(offsetof(ul_step_item, want_logits));
}

}  // extern "C"
