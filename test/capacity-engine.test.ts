// core/model/capacity.ts against what the native engine itself allocates (ul_engine_memory through
// the emscripten host, reference kernels): the KV cache of every position in bf16 and in fp8 with
// its block scales, one prefill chunk's scratch, and the weights. The CUDA engine allocates the same
// list (engine.cpp ul_engine_create), with bf16 weights and activations, so the GPU sizing
// `inspect --gpu-memory` and the deploy use is the engine's own arithmetic.
import { describe, expect, it } from "vitest";
import { chunkActivationBytes, kvCacheBytes, memoryFor } from "../core/model/capacity.ts";
import { Dtype } from "../native/ts/abi.ts";
import { engineConfig } from "../native/ts/native-runtime.ts";
import { loadWasmHost, wasmUnavailableReason } from "../native/ts/wasm-host.ts";
import { NATIVE_WASM_SPEC } from "../native/ts/wasm-runtime.ts";
import { loadTestModel, SMALL_VOCAB } from "./support/models.ts";
import { tool } from "./support/tools.ts";

const haveNativeWasm = tool(
  "native/build/wasm (emcc)",
  wasmUnavailableReason() === null,
  "the capacity plan against the engine's own allocations",
);

describe.skipIf(!haveNativeWasm)("the capacity plan is what the engine allocates", () => {
  it("for bf16 and fp8 caches of one and sixteen 64-position blocks, and a chosen chunk", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const c = model.config;
    const host = await loadWasmHost();
    const rows = 48;
    for (const kv of ["bf16", "fp8-e4m3"] as const) {
      // Whole 64-position blocks: the engine's pool is made of them (1000 would take 1024).
      for (const positions of [64, 1024]) {
        const engine = host.create({
          ...engineConfig(c, NATIVE_WASM_SPEC, positions, kv),
          maxChunk: rows,
        });
        try {
          for (const t of model.weights.tensors()) {
            engine.setTensor(t.name, t.shape, await model.weights.read(t.name, "f32"), Dtype.f32);
          }
          const mem = engine.memory();
          const label = `${kv} ${positions}`;
          expect(mem.kvBytes, label).toBe(kvCacheBytes(c, kv, positions));
          // the reference kernels keep weights and activations in f32
          const f32 = { chunkRows: rows, activationBytesPerElement: 4, weightBytesPerElement: 4 };
          expect(mem.activationBytes, label).toBe(chunkActivationBytes(c, f32));
          expect(mem.weightBytes, label).toBe(memoryFor(c, kv, positions, f32).weights);
        } finally {
          engine.destroy();
        }
      }
    }
  });
});
