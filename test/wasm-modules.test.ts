// The kernel modules wasm/build.mjs builds, each in a plain SIMD128 and a relaxed-SIMD build: the
// product ones (wasm/build/ultralong{,-relaxed}.wasm) export exactly the kernels the glue calls,
// none of the scalar references or bench loops, and the runtime runs on either; the test ones add
// the references and bench loops. The loader takes the relaxed build where V8 validates it (Node 20
// once its flag is on) unless ULTRALONG_WASM_SIMD=plain.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import v8 from "node:v8";
import { describe, expect, it } from "vitest";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import {
  ensureBuilt,
  RELAXED_TEST_WASM_FILE,
  RELAXED_WASM_FILE,
  TEST_WASM_FILE,
  WASM_FILE,
} from "../wasm/build.mjs";
import { kernelsName, wasmUrl } from "../wasm/src/module.ts";
import { createWasmRuntime } from "../wasm/src/runtime.ts";
import { loadTestModel, SMALL_VOCAB } from "./support/models.ts";
import { relativeError, suiteTokens } from "./support/runtime-suite.ts";

const root = join(import.meta.dirname, "..");
await ensureBuilt({ root });
v8.setFlagsFromString("--experimental-wasm-relaxed-simd");

const compile = (file: string) => new WebAssembly.Module(readFileSync(join(root, file)));
const functions = (m: WebAssembly.Module) =>
  WebAssembly.Module.exports(m)
    .filter((e) => e.kind === "function")
    .map((e) => e.name)
    .sort();

// What wasm/src/shard.mjs calls on its instance; memory is imported, so none is exported.
const RUNTIME = [
  "add_into",
  "attention_scratch_bytes",
  "attention_state",
  "heap_base",
  "kv_panel_rows",
  "kv_store",
  "matmul_bf16",
  "matmul_f32",
  "matmul_i8",
  "quantize_i8",
  "relaxed_simd",
  "rmsnorm",
  "rope_apply",
  "rope_table",
  "swiglu",
];
// Only the test module's: each SIMD kernel's scalar reference, exp4 and exp2neg4 over an array, the bench peers.
const TEST_ONLY = [
  "add_into_ref",
  "attention",
  "attention_ref",
  "exp2neg_f32",
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
  const builds = [
    { name: "plain", product: WASM_FILE, test: TEST_WASM_FILE, kernels: "wasm-simd128" },
    {
      name: "relaxed",
      product: RELAXED_WASM_FILE,
      test: RELAXED_TEST_WASM_FILE,
      kernels: "wasm-simd128+relaxed-madd",
    },
  ];
  for (const b of builds) {
    const product = compile(b.product);

    it(`${b.name}: the product module exports only the runtime's kernels, no reference or bench function`, () => {
      expect(functions(product)).toEqual(RUNTIME);
      for (const name of TEST_ONLY) expect(functions(product)).not.toContain(name);
      expect(kernelsName(product)).toBe(b.kernels);
    });

    it(`${b.name}: the test module exports the runtime's kernels plus the references and bench loops`, () => {
      expect(functions(compile(b.test))).toEqual([...RUNTIME, ...TEST_ONLY].sort());
    });

    it(`${b.name}: the runtime on the product module matches the TS reference runtime (1 and 2 threads)`, async () => {
      const model = await loadTestModel(SMALL_VOCAB);
      const tokens = suiteTokens(40, model.config.vocabSize);
      const want = await (await createReferenceRuntime({ model })).forward(tokens);
      for (const threads of [1, 2]) {
        const rt = await createWasmRuntime({ model, threads, wasmModule: product });
        try {
          expect(rt.info.kernels).toBe(b.kernels);
          // f32 sums in a different order: ~sqrt(K) 2^-24 relative per product, 1e-5 leaves >10x.
          expect(relativeError(await rt.forward(tokens), want)).toBeLessThanOrEqual(1e-5);
        } finally {
          await rt.close();
        }
      }
    });
  }

  it("the plain product module is the default path; the loader takes the relaxed one unless told plain", () => {
    expect(fileURLToPath(wasmUrl())).toBe(join(root, WASM_FILE));
    expect(fileURLToPath(wasmUrl("relaxed"))).toBe(join(root, RELAXED_WASM_FILE));
    // A fresh process each: Node 20 starts with relaxed SIMD off, and the loader caches its pick.
    const code = `import { kernelsName, loadWasmModule } from "./wasm/src/module.ts";
      console.log(kernelsName(await loadWasmModule()));`;
    const picked = (env: Record<string, string>) => {
      const r = spawnSync(
        process.execPath,
        ["--import", "tsx", "--input-type=module", "-e", code],
        {
          cwd: root,
          env: { ...process.env, ...env },
          encoding: "utf8",
        },
      );
      expect(r.status, r.stderr).toBe(0);
      return r.stdout.trim();
    };
    expect(picked({})).toBe("wasm-simd128+relaxed-madd");
    expect(picked({ ULTRALONG_WASM_SIMD: "plain" })).toBe("wasm-simd128");
  });
});
