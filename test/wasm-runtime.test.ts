// The WASM runtime: the shared invariants (test/support/runtime-suite.ts) with 1 and 2 threads and
// f32 and bf16 KV, plus what is specific to it: agreement with the TS reference runtime, KV against
// the float64 reference's K/V, exact KV sizes, dtype conversion on import, cancellation while a
// forward is running (in-thread and across workers), registry entry and typed errors.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import { CancelledError, InvalidInputError, NotAvailableError } from "../core/errors.ts";
import { kvBytesPerToken } from "../core/kv/layout.ts";
import { decodeToF32 } from "../core/safetensors/dtype.ts";
import { runtimes } from "../functions/runtimes.ts";
import { ensureBuilt } from "../wasm/build.mjs";
import { createWasmRuntime, wasmRuntimeFactory } from "../wasm/src/runtime.ts";
import {
  loadTestModel,
  SMALL_VOCAB,
  scratchDir,
  testModelDir,
  UNEVEN_KV,
} from "./support/models.ts";
import {
  relativeError,
  runtimeInvariantSuite,
  SUITE_MODELS,
  suiteTokens,
} from "./support/runtime-suite.ts";
import { haveTorch, TORCH_PYTHON, tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
await ensureBuilt({ root });

// Every suite model with f32 KV; bf16 KV on the first (yarn, GQA 2) to keep this file fast.
runtimeInvariantSuite("wasm", wasmRuntimeFactory, { threads: [1, 2], kvDtypes: ["f32"] });
runtimeInvariantSuite("wasm", wasmRuntimeFactory, {
  threads: [1, 2],
  kvDtypes: ["bf16"],
  models: [SUITE_MODELS[0]],
});

// 3 KV heads over 2 threads: uneven shards.
const ODD = UNEVEN_KV;

describe("wasm runtime", () => {
  it("is registered in functions/runtimes.ts and picked by name", async () => {
    expect((await runtimes.pick("wasm")).name).toBe("wasm");
  });

  it("matches the TS reference runtime within f32 rounding, with uneven shards over 1-3 threads", async () => {
    const model = await loadTestModel(ODD);
    const tokens = suiteTokens(150, model.config.vocabSize);
    const ref = await createReferenceRuntime({ model });
    const want = await ref.forward(tokens);
    for (const threads of [1, 2, 3]) {
      const rt = await createWasmRuntime({ model, threads });
      try {
        // f32 sums in a different order: ~sqrt(K) 2^-24 relative per product, 1e-5 leaves >10x.
        expect(relativeError(await rt.forward(tokens), want)).toBeLessThanOrEqual(1e-5);
      } finally {
        await rt.close();
      }
    }
  });

  it("states exact KV bytes per token and converts dtypes on import", async () => {
    const model = await loadTestModel(ODD);
    const c = model.config;
    const tokens = suiteTokens(40, c.vocabSize);
    const f32rt = await createWasmRuntime({ model, threads: 2, maxPositions: 64 });
    const bf16rt = await createWasmRuntime({
      model,
      threads: 1,
      kvDtype: "bf16",
      maxPositions: 64,
    });
    try {
      expect(kvBytesPerToken(f32rt.info.kv)).toBe(
        2 * c.numHiddenLayers * c.numKeyValueHeads * c.headDim * 4,
      );
      expect(kvBytesPerToken(bf16rt.info.kv)).toBe(
        2 * c.numHiddenLayers * c.numKeyValueHeads * c.headDim * 2,
      );
      expect(f32rt.info.kvCapacityBytes).toBe(64 * kvBytesPerToken(f32rt.info.kv));
      await f32rt.prefill(tokens);
      const f32bytes = await f32rt.exportKv(0, 40);
      expect(f32bytes.byteLength).toBe(40 * kvBytesPerToken(f32rt.info.kv));
      // f32 -> bf16 cache: each value rounded to nearest even, exactly core's conversion.
      await bf16rt.importKv(f32bytes, 40, "f32");
      const back = await bf16rt.exportKv(0, 40);
      const want = new Uint16Array(f32bytes.byteLength / 4);
      const src = new Float32Array(f32bytes.buffer, f32bytes.byteOffset, want.length);
      const { f32ToBf16 } = await import("../core/safetensors/dtype.ts");
      for (let i = 0; i < want.length; i++) want[i] = f32ToBf16(src[i]);
      expect(new Uint16Array(back.buffer, back.byteOffset, want.length)).toEqual(want);
      // bf16 -> f32 and f16 -> f32 are exact widenings.
      const fresh = await createWasmRuntime({ model, threads: 1, maxPositions: 64 });
      await fresh.importKv(back, 40, "bf16");
      const widened = new Float32Array(want.length);
      decodeToF32("bf16", back, widened, 0);
      const got = await fresh.exportKv(0, 40);
      expect(new Float32Array(got.buffer, got.byteOffset, want.length)).toEqual(widened);
      await expect(fresh.importKv(back.subarray(1), 40, "bf16")).rejects.toThrow(InvalidInputError);
      // An fp8 payload carries its block scales: bf16-sized bytes are not one.
      await expect(fresh.importKv(back, 40, "fp8-e4m3")).rejects.toThrow(InvalidInputError);
      await expect(createWasmRuntime({ model, threads: 1, kvDtype: "fp8-e4m3" })).rejects.toThrow(
        /runtime 'wasm' stores KV as f32, bf16, not fp8-e4m3/,
      );
      await fresh.close();
    } finally {
      await f32rt.close();
      await bf16rt.close();
    }
  });

  for (const threads of [1, 2]) {
    it(`an abort during a long forward stops it between layers (${threads} thread(s))`, async () => {
      const model = await loadTestModel({ ...SMALL_VOCAB, layers: 6, seed: 8 });
      const rt = await createWasmRuntime({ model, threads, maxPositions: 8192 });
      try {
        await rt.prefill(suiteTokens(10, model.config.vocabSize));
        const controller = new AbortController();
        const run = rt.prefill(suiteTokens(6000, model.config.vocabSize, 3), controller.signal);
        setTimeout(() => controller.abort(), 50);
        await expect(run).rejects.toThrow(CancelledError);
        expect(rt.position).toBe(10);
        // Still usable, and nothing of the cancelled call is visible.
        const after = await rt.forward(suiteTokens(5, model.config.vocabSize, 4));
        const clean = await createWasmRuntime({ model, threads: 1, maxPositions: 64 });
        await clean.prefill(suiteTokens(10, model.config.vocabSize));
        expect(
          relativeError(after, await clean.forward(suiteTokens(5, model.config.vocabSize, 4))),
        ).toBeLessThanOrEqual(1e-5);
        await clean.close();
      } finally {
        await rt.close();
      }
    });
  }

  it("bundles for workerd: no static node: import on the single-threaded path", async () => {
    const { build } = await import("esbuild");
    const r = await build({
      entryPoints: [join(root, "wasm/src/runtime.ts")],
      bundle: true,
      write: false,
      format: "esm",
      platform: "neutral",
      external: ["node:*"],
      metafile: true,
      logLevel: "silent",
    });
    const nodeImports = Object.entries(r.metafile.inputs).flatMap(([file, input]) =>
      input.imports
        .filter((i) => i.path.startsWith("node:"))
        .map((i) => `${file} ${i.path} ${i.kind}`),
    );
    // node:fs/url (loading the .wasm file) and node:os (default thread count) are Node-only, lazy.
    expect(nodeImports.length).toBeGreaterThan(0);
    for (const line of nodeImports) expect(line).toMatch(/ dynamic-import$/);
  });

  it("refuses what it cannot run with typed errors", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    await expect(createWasmRuntime({ model, kvDtype: "f16" })).rejects.toThrow(NotAvailableError);
    // head_dim 16 is not a multiple of 32, which int8 blocks need.
    await expect(createWasmRuntime({ model, weightFormat: "int8" })).rejects.toThrow(
      InvalidInputError,
    );
    const rt = await createWasmRuntime({ model, threads: 1, maxPositions: 32 });
    await expect(rt.forward(new Int32Array([512]))).rejects.toThrow(InvalidInputError);
    await expect(rt.forward(new Int32Array(0))).rejects.toThrow(InvalidInputError);
    expect(() => rt.truncate(1)).toThrow(InvalidInputError);
    await rt.close();
  });
});

describe.skipIf(!tool("torch", haveTorch(), "the WASM runtime's KV against the float64 reference"))(
  "wasm runtime KV == float64 reference K/V",
  () => {
    it("exported K (after rope) and V match llama_reference.py --kv-out", async () => {
      const opts = { ...SMALL_VOCAB, rope: "yarn" as const, seed: 21 };
      const dir = await testModelDir(opts);
      const model = await loadTestModel(opts);
      const tokens = suiteTokens(200, model.config.vocabSize);
      const work = scratchDir("kv");
      const out = join(work, "logits.bin");
      const kvOut = join(work, "kv.bin");
      const r = spawnSync(
        TORCH_PYTHON,
        [
          join(root, "test/reference/llama_reference.py"),
          dir,
          "--tokens",
          tokens.join(","),
          "--last",
          "1",
          "--out",
          out,
          "--kv-out",
          kvOut,
        ],
        { encoding: "utf8" },
      );
      expect(r.status, r.stderr).toBe(0);
      const raw = readFileSync(kvOut);
      const want = new Float32Array(
        raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength),
      );
      const rt = await createWasmRuntime({ model, threads: 2 });
      try {
        await rt.prefill(tokens);
        const got = await rt.exportKv(0, 200);
        // f32 activations vs float64: K and V are one projection of a normed row (K <= 64 terms)
        // plus rope; 1e-5 relative is > 10x the f32 rounding.
        expect(
          relativeError(new Float32Array(got.buffer, got.byteOffset, want.length), want),
        ).toBeLessThanOrEqual(1e-5);
      } finally {
        await rt.close();
      }
    }, 120_000);
  },
);
