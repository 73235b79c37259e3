// The two kernel modules wasm/build.mjs builds: the product one (wasm/build/ultralong.wasm) exports
// exactly the kernels the glue calls, none of the scalar references or bench loops, and the runtime
// loads it by default and runs on it; the test one adds the references and bench loops.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import { ensureBuilt, TEST_WASM_FILE, WASM_FILE } from "../wasm/build.mjs";
import { wasmUrl } from "../wasm/src/module.ts";
import { createWasmRuntime } from "../wasm/src/runtime.ts";
import { loadTestModel, SMALL_VOCAB } from "./support/models.ts";
import { relativeError, suiteTokens } from "./support/runtime-suite.ts";

const root = join(import.meta.dirname, "..");
await ensureBuilt({ root });

const compile = (file: string) => new WebAssembly.Module(readFileSync(join(root, file)));
const functions = (m: WebAssembly.Module) =>
  WebAssembly.Module.exports(m)
    .filter((e) => e.kind === "function")
    .map((e) => e.name)
    .sort();

// What wasm/src/shard.mjs calls on its instance; memory is imported, so none is exported.
const RUNTIME = [
  "add_into",
  "attention",
  "attention_scratch_bytes",
  "heap_base",
  "kv_store",
  "matmul_bf16",
  "matmul_f32",
  "matmul_i8",
  "quantize_i8",
  "rmsnorm",
  "rope_apply",
  "rope_table",
  "swiglu",
];
// Only the test module's: each SIMD kernel's scalar reference, exp4 over an array, the bench peers.
const TEST_ONLY = [
  "add_into_ref",
  "attention_ref",
  "exp_f32",
  "matmul_bf16_ref",
  "matmul_f32_ref",
  "matmul_i8_ref",
  "peak_madd",
  "read_bytes",
  "rmsnorm_ref",
  "rope_apply_ref",
  "swiglu_ref",
];

describe("wasm kernel modules", () => {
  const product = compile(WASM_FILE);

  it("the product module exports only the runtime's kernels, no reference or bench function", () => {
    expect(functions(product)).toEqual(RUNTIME);
    for (const name of TEST_ONLY) expect(functions(product)).not.toContain(name);
  });

  it("the test module exports the runtime's kernels plus the references and bench loops", () => {
    expect(functions(compile(TEST_WASM_FILE))).toEqual([...RUNTIME, ...TEST_ONLY].sort());
  });

  it("the runtime loads the product module by default", () => {
    expect(fileURLToPath(wasmUrl())).toBe(join(root, WASM_FILE));
  });

  it("the runtime on the product module matches the TS reference runtime (1 and 2 threads)", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const tokens = suiteTokens(40, model.config.vocabSize);
    const want = await (await createReferenceRuntime({ model })).forward(tokens);
    for (const threads of [1, 2]) {
      const rt = await createWasmRuntime({ model, threads, wasmModule: product });
      try {
        // f32 sums in a different order: ~sqrt(K) 2^-24 relative per product, 1e-5 leaves >10x.
        expect(relativeError(await rt.forward(tokens), want)).toBeLessThanOrEqual(1e-5);
      } finally {
        await rt.close();
      }
    }
  });
});
