// The product module's exports (wasm/build/ultralong.wasm): only what the glue (wasm/src/shard.mjs)
// calls. Memory is imported (env.memory) so each worker owns one; the kernels allocate nothing: the
// glue places every buffer from heap_base() up. The scalar references and the bench loops are in
// the test module (test.ts), so they do not ship.
export { matmul_f32, matmul_bf16, matmul_i8, quantize_i8 } from "./matmul";
export { rmsnorm } from "./norm";
export { rope_table, rope_apply } from "./rope";
export { attention_state, attention_scratch_bytes } from "./attention";
export { swiglu, add_into } from "./ffn";
export { kv_store, kv_panel_rows } from "./kv";
export { relaxed_simd } from "./simd";

/** First byte the glue may use. */
export function heap_base(): usize {
  return __heap_base;
}
