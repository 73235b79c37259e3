// The test module's exports (wasm/build/ultralong-test.wasm): the product's, plus the scalar
// reference of each SIMD kernel, the one-pass `attention` (attention_state over all keys, no state
// carried: what the kernel tests hold both against), exp_f32 and exp2neg_f32 (exp4 and attention's
// exp2neg4 over an array) and the bench
// loops, for test/wasm-kernels.test.ts and `npm run bench -- runtime`. The runtime never loads it.
export * from "./index";
export { matmul_f32_ref, matmul_bf16_ref, matmul_i8_ref } from "./matmul";
export { rmsnorm_ref } from "./norm";
export { rope_apply_ref } from "./rope";
export { attention, attention_ref } from "./attention";
export { swiglu_ref, add_into_ref, exp_f32, exp2neg_f32 } from "./ffn";
export { peak_madd, read_bytes } from "./bench";
