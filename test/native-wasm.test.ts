// The native host engine compiled to WebAssembly with the C++ reference kernels ("native-wasm"),
// checked against the TypeScript reference runtime and the independent PyTorch reference on
// generated models. Needs emcc (the module is built by native/build.mjs); torch checks need Debian's
// python3 with PyTorch.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import { InvalidInputError, LimitError, NotAvailableError } from "../core/errors.ts";
import type { GenerateOptions } from "../core/model/generate.ts";
import type { LoadedModel } from "../core/model/weights.ts";
import { loadModelDir } from "../core/node/load-model-dir.ts";
import { makeModelDir } from "../core/node/make-model.ts";
import { build } from "../native/build.mjs";
import { createNativeWasmRuntime, nativeWasmRuntimeFactory } from "../native/ts/wasm-runtime.ts";
import { haveEmcc, haveTorch, TORCH_PYTHON, tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
const hasEmcc = tool("emcc", haveEmcc(), "the native-wasm runtime tests");

function maxAbsDiff(a: Float32Array, b: Float32Array | Float64Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function tokens(n: number, vocab: number, seed = 1): Int32Array {
  return Int32Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729) % vocab);
}

describe.skipIf(!hasEmcc)("native-wasm runtime", () => {
  const dirs: string[] = [];
  const models = new Map<string, LoadedModel>();
  const base = mkdtempSync(join(tmpdir(), "ul-native-"));

  async function model(key: string, opts: GenerateOptions): Promise<LoadedModel> {
    let m = models.get(key);
    if (!m) {
      const dir = join(base, key);
      await makeModelDir(dir, { vocab: 384, ...opts });
      dirs.push(dir);
      m = await loadModelDir(dir);
      models.set(key, m);
    }
    return m;
  }

  beforeAll(async () => {
    await build({ root });
  });
  afterAll(() => rmSync(base, { recursive: true, force: true }));

  // The reference runtime computes dot products in f64; the C++ reference in f32 with four partial
  // sums. Logits of these small random models are O(1), so 1e-4 is ~100x the f32 rounding we see.
  const TOL = 1e-4;

  for (const rope of ["default", "linear", "llama3", "yarn"] as const) {
    it(`logits equal the TypeScript reference runtime (${rope} rope, bf16 weights)`, async () => {
      const m = await model(`rope-${rope}`, { rope, dtype: "bf16" });
      const ref = await createReferenceRuntime({ model: m, maxPositions: 64 });
      const nat = await createNativeWasmRuntime({ model: m, maxPositions: 64 });
      const t = tokens(23, 384);
      const a = await ref.forward(t);
      const b = await nat.forward(t);
      expect(maxAbsDiff(b, a)).toBeLessThan(TOL);
      expect(nat.position).toBe(23);
      await ref.close();
      await nat.close();
    });
  }

  it("GQA, tied embeddings, sharded f32 checkpoint: logits equal the reference runtime", async () => {
    const m = await model("gqa", {
      heads: 8,
      kvHeads: 2,
      hidden: 64,
      tieEmbeddings: true,
      shards: 3,
      layers: 3,
    });
    const ref = await createReferenceRuntime({ model: m, maxPositions: 40 });
    const nat = await createNativeWasmRuntime({ model: m, maxPositions: 40 });
    const t = tokens(17, 384, 3);
    expect(maxAbsDiff(await nat.forward(t), await ref.forward(t))).toBeLessThan(TOL);
  });

  it("chunked prefill + decode give the logits of one whole prefill", async () => {
    const m = await model("rope-yarn", { rope: "yarn", dtype: "bf16" });
    const whole = await createNativeWasmRuntime({ model: m, maxPositions: 600 });
    const parts = await createNativeWasmRuntime({ model: m, maxPositions: 600 });
    const t = tokens(530, 384, 5); // > 256: crosses the engine's internal chunk and the TS step
    const a = await whole.forward(t);
    await parts.prefill(t.subarray(0, 100));
    await parts.prefill(t.subarray(100, 529));
    const b = await parts.forward(t.subarray(529));
    // Same arithmetic per position whatever the chunking: bit-identical.
    expect(maxAbsDiff(b, a)).toBe(0);
    // truncate and recompute the last token
    parts.truncate(529);
    expect(maxAbsDiff(await parts.forward(t.subarray(529)), a)).toBe(0);
    await whole.close();
    await parts.close();
  });

  it("KV snapshots cross runtimes: export from native-wasm, import in the reference, and back", async () => {
    const m = await model("rope-llama3", { rope: "llama3", dtype: "bf16" });
    const t = tokens(30, 384, 7);
    const nat = await createNativeWasmRuntime({ model: m, maxPositions: 64 });
    const ref = await createReferenceRuntime({ model: m, maxPositions: 64 });
    const expected = await ref.forward(t);
    await nat.prefill(t.subarray(0, 29));
    const kvNative = await nat.exportKv(0, 29);
    const kvRef = await ref.exportKv(0, 29);
    expect(kvNative.byteLength).toBe(kvRef.byteLength);
    expect(
      maxAbsDiff(new Float32Array(kvNative.buffer), new Float32Array(kvRef.buffer)),
    ).toBeLessThan(1e-5);
    // native -> reference
    const ref2 = await createReferenceRuntime({ model: m, maxPositions: 64 });
    await ref2.importKv(kvNative, 29, "f32");
    expect(maxAbsDiff(await ref2.forward(t.subarray(29)), expected)).toBeLessThan(TOL);
    // reference -> native, a range export, and bf16 conversion on import
    const nat2 = await createNativeWasmRuntime({ model: m, maxPositions: 64, kvDtype: "bf16" });
    expect(nat2.info.kv.dtype).toBe("bf16");
    const bf = await createNativeWasmRuntime({ model: m, maxPositions: 64, kvDtype: "bf16" });
    await bf.prefill(t.subarray(0, 29));
    const head = await bf.exportKv(0, 10);
    const tail = await bf.exportKv(10, 29);
    await nat2.importKv(head, 10, "bf16");
    await nat2.importKv(tail, 19, "bf16");
    expect(nat2.position).toBe(29);
    const again = await nat2.exportKv(0, 29);
    expect(Buffer.from(again).equals(Buffer.from(await bf.exportKv(0, 29)))).toBe(true);
    // bf16 KV costs precision, not correctness
    expect(maxAbsDiff(await nat2.forward(t.subarray(29)), expected)).toBeLessThan(5e-2);
    for (const r of [nat, ref, ref2, nat2, bf]) await r.close();
  });

  it("fails with typed errors: bad token, full cache, unsupported KV dtype, closed runtime", async () => {
    const m = await model("rope-default", { rope: "default", dtype: "bf16" });
    const nat = await createNativeWasmRuntime({ model: m, maxPositions: 8 });
    await expect(nat.forward(Int32Array.of(384))).rejects.toBeInstanceOf(InvalidInputError);
    await expect(nat.forward(tokens(9, 384))).rejects.toBeInstanceOf(LimitError);
    expect(nat.position).toBe(0);
    await expect(nat.exportKv(0, 1)).rejects.toBeInstanceOf(InvalidInputError);
    await expect(nat.importKv(new Uint8Array(3), 1, "f32")).rejects.toBeInstanceOf(
      InvalidInputError,
    );
    // Every KvDtype is offered here (f32, bf16, f16, fp8-e4m3); a name outside them is refused.
    await expect(createNativeWasmRuntime({ model: m, kvDtype: "fp4" as "f32" })).rejects.toThrow(
      /runtime 'native-wasm' stores KV as f32, bf16, f16, fp8-e4m3, not fp4/,
    );
    await expect(
      createNativeWasmRuntime({ model: m, kvDtype: "fp4" as "f32" }),
    ).rejects.toBeInstanceOf(NotAvailableError);
    await nat.close();
    expect(() => nat.position).toThrow(InvalidInputError);
    expect(await nativeWasmRuntimeFactory.unavailableReason()).toBeNull();
  });

  it("cancels between chunks and keeps the position", async () => {
    const m = await model("rope-default", { rope: "default", dtype: "bf16" });
    const nat = await createNativeWasmRuntime({ model: m, maxPositions: 1024 });
    const ac = new AbortController();
    ac.abort();
    await expect(nat.prefill(tokens(600, 384), ac.signal)).rejects.toMatchObject({
      code: "cancelled",
    });
    expect(nat.position).toBe(0);
    await nat.close();
  });

  const hasTorch = tool("torch", haveTorch(), "the native-wasm vs PyTorch reference check");
  it.skipIf(!hasTorch)("logits equal the independent PyTorch reference (yarn, GQA)", async () => {
    const m = await model("torch", { rope: "yarn", heads: 8, kvHeads: 2, dtype: "f32", layers: 2 });
    const dir = dirs[dirs.length - 1];
    const t = tokens(19, 384, 11);
    const out = join(base, "torch-logits.bin");
    const tf = join(base, "torch-tokens.bin");
    writeFileSync(tf, Buffer.from(t.buffer));
    const r = spawnSync(
      TORCH_PYTHON,
      [
        join(root, "test/reference/llama_reference.py"),
        dir,
        "--tokens-file",
        tf,
        "--last",
        "1",
        "--out",
        out,
      ],
      { encoding: "utf8" },
    );
    expect(r.status, r.stderr).toBe(0);
    expect(existsSync(out)).toBe(true);
    const golden = new Float32Array(new Uint8Array(readFileSync(out)).buffer);
    const nat = await createNativeWasmRuntime({ model: m, maxPositions: 32 });
    // float64 reference vs f32 engine: f32 rounding through 2 layers, logits O(1).
    expect(maxAbsDiff(await nat.forward(t), golden)).toBeLessThan(TOL);
    await nat.close();
  });
});
