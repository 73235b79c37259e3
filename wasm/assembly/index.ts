// The WebAssembly module's exports. Memory is imported (env.memory) so each worker owns one; the
// kernels allocate nothing: the glue (wasm/src/shard.mjs) places every buffer from heap_base() up.
export { matmul_f32, matmul_bf16, matmul_i8, matmul_f32_ref, matmul_bf16_ref, matmul_i8_ref, quantize_i8 } from "./matmul";
export { rmsnorm, rmsnorm_ref } from "./norm";
export { rope_table, rope_apply, rope_apply_ref } from "./rope";
export { attention, attention_ref, attention_scratch_bytes } from "./attention";
export { swiglu, swiglu_ref, add_into, add_into_ref, exp_f32 } from "./ffn";
export { kv_store } from "./kv";
export { peak_madd, read_bytes } from "./bench";

/** First byte the glue may use. */
export function heap_base(): usize {
  return __heap_base;
}
