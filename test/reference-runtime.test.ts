// The reference runtime: the shared invariants, and its logits and KV against the independent
// float64 PyTorch implementation (test/reference/llama_reference.py), for each rope type, GQA
// ratios 1, 2 and 4, head_dim 16 and 64, tied and untied embeddings, and F32 and BF16 weights.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import {
  createReferenceRuntime,
  referenceRuntimeFactory,
} from "../core/engine/reference-runtime.ts";
import { InvalidInputError, NotAvailableError } from "../core/errors.ts";
import { kvBytesPerToken } from "../core/kv/layout.ts";
import type { GenerateOptions } from "../core/model/generate.ts";
import { runtimes } from "../functions/runtimes.ts";
import { loadTestModel, SMALL_VOCAB, scratchDir, testModelDir } from "./support/models.ts";
import {
  kvValues,
  relativeError,
  runtimeInvariantSuite,
  suiteTokens,
} from "./support/runtime-suite.ts";
import { haveTorch, TORCH_PYTHON, tool } from "./support/tools.ts";

// The reference runtime's arithmetic per position does not depend on the chunking, and its cache
// starts at 256 positions, so 300 tokens in chunks of 1, 7, 64 and 256 (each chunking ending on a
// partial chunk and growing the cache past 256) check what the default 1100 would, for less.
const REFERENCE_SUITE = { sequenceLength: 300, chunks: [1, 7, 64, 256] };
runtimeInvariantSuite("reference", referenceRuntimeFactory, REFERENCE_SUITE);
runtimeInvariantSuite("reference", referenceRuntimeFactory, {
  ...REFERENCE_SUITE,
  kvDtypes: ["bf16"],
  models: [SMALL_VOCAB],
});

describe("reference runtime", () => {
  it("is registered in functions/runtimes.ts and picked by name", async () => {
    expect((await runtimes.pick("reference")).name).toBe("reference");
  });

  it("reports its KV layout, bytes and capacity", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const rt = await createReferenceRuntime({ model, kvDtype: "bf16", maxPositions: 1000 });
    const c = model.config;
    expect(rt.info).toMatchObject({
      name: "reference",
      kv: { layers: c.numHiddenLayers, kvHeads: c.numKeyValueHeads, headDim: c.headDim },
      threads: 1,
      maxPositions: 1000,
      kvCapacityBytes: 1000 * kvBytesPerToken(rt.info.kv),
    });
    // 2 (K, V) * layers * kv heads * head_dim * 2 bytes.
    expect(kvBytesPerToken(rt.info.kv)).toBe(
      2 * c.numHiddenLayers * c.numKeyValueHeads * c.headDim * 2,
    );
    await rt.prefill(suiteTokens(5, c.vocabSize));
    expect((await rt.exportKv(1, 4)).byteLength).toBe(3 * kvBytesPerToken(rt.info.kv));
    await rt.close();
  });

  it("converts KV between dtypes on import (f32 export into a bf16 cache)", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const tokens = suiteTokens(30, model.config.vocabSize);
    const a = await createReferenceRuntime({ model, kvDtype: "f32" });
    await a.prefill(tokens);
    const f32 = await a.exportKv(0, 30);
    const b = await createReferenceRuntime({ model, kvDtype: "bf16" });
    await b.importKv(f32, 30, "f32");
    const back = kvValues(await b.exportKv(0, 30), "bf16");
    // bf16 keeps 8 significant bits: each value within half an ulp, at most 2^-8 relative.
    const want = kvValues(f32, "f32");
    for (let i = 0; i < want.length; i++) {
      expect(Math.abs(back[i] - want[i])).toBeLessThanOrEqual(Math.abs(want[i]) * 2 ** -8);
    }
    await expect(b.importKv(f32.subarray(1), 30, "f32")).rejects.toThrow(/bytes/);
    // fp8 payloads carry their block scales: a bare bytes-per-token size is refused.
    await expect(b.importKv(new Uint8Array(30 * 256), 30, "fp8-e4m3")).rejects.toThrow(/bytes/);
  });

  it("with weightFormat bf16 computes what a bf16 checkpoint of the same weights gives", async () => {
    // The generator writes bf16 files as the round-to-nearest-even of its f32 values.
    const tokens = suiteTokens(40, 512);
    const rounded = await createReferenceRuntime({
      model: await loadTestModel(SMALL_VOCAB),
      weightFormat: "bf16",
    });
    const bf16File = await createReferenceRuntime({
      model: await loadTestModel({ ...SMALL_VOCAB, dtype: "bf16" }),
    });
    const plain = await createReferenceRuntime({ model: await loadTestModel(SMALL_VOCAB) });
    const a = await rounded.forward(tokens);
    expect(Array.from(a)).toEqual(Array.from(await bf16File.forward(tokens)));
    expect(relativeError(a, await plain.forward(tokens))).toBeGreaterThan(0);
  });

  it("refuses truncate and export ranges outside what it holds, keeping its position", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const rt = await createReferenceRuntime({ model, maxPositions: 16 });
    await rt.prefill(suiteTokens(5, model.config.vocabSize));
    for (const bad of [-1, 6, 2.5]) expect(() => rt.truncate(bad)).toThrow(InvalidInputError);
    for (const [start, end] of [
      [-1, 2],
      [3, 2],
      [0, 6],
      [0.5, 2],
    ]) {
      await expect(rt.exportKv(start, end)).rejects.toThrow(InvalidInputError);
    }
    expect(rt.position).toBe(5);
    expect((await rt.exportKv(5, 5)).byteLength).toBe(0);
    await rt.close();
  });

  it("runtimes sharing a model's weights stay independent: closing one leaves the others", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const tokens = suiteTokens(20, model.config.vocabSize);
    const a = await createReferenceRuntime({ model });
    const b = await createReferenceRuntime({ model });
    const want = await a.forward(tokens);
    await a.close();
    expect(Array.from(await b.forward(tokens))).toEqual(Array.from(want));
    await b.close();
    // After the last one closed, a new runtime loads the weights again and computes the same.
    const c = await createReferenceRuntime({ model });
    expect(Array.from(await c.forward(tokens))).toEqual(Array.from(want));
    await c.close();
  });

  it("refuses KV and weight formats it does not have", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    await expect(createReferenceRuntime({ model, kvDtype: "fp8-e4m3" })).rejects.toThrow(
      NotAvailableError,
    );
    await expect(createReferenceRuntime({ model, weightFormat: "int8" })).rejects.toThrow(
      NotAvailableError,
    );
  });
});

/**
 * Models compared with PyTorch: every rope type, GQA 1/2/4, head_dim 16 and 64, tied, BF16 weights,
 * two shards. 512-token vocab so the comparison covers every logit cheaply.
 */
const TORCH_MODELS: Record<string, GenerateOptions> = {
  "yarn, GQA 2": SMALL_VOCAB,
  "default rope, GQA 1, tied": { ...SMALL_VOCAB, rope: "default", kvHeads: 4, tieEmbeddings: true },
  "linear rope, GQA 4": { ...SMALL_VOCAB, rope: "linear", heads: 8, kvHeads: 2, hidden: 128 },
  "llama3 rope, head_dim 64, bf16 weights, 2 shards": {
    ...SMALL_VOCAB,
    rope: "llama3",
    hidden: 128,
    heads: 2,
    kvHeads: 1,
    dtype: "bf16",
    shards: 2,
  },
  // max_position_embeddings 64, so the 80-token prompt makes the NTK base grow.
  "dynamic rope past max_position_embeddings": { ...SMALL_VOCAB, rope: "dynamic", maxPos: 64 },
};

/**
 * Tolerance against the float64 reference, on |a - b|max / max(1, |b|max). We store weights and
 * activations in f32 (relative rounding 2^-24 = 6e-8 per op) but accumulate in f64; through two
 * layers of a few dozen rounded ops the error stays near 1e-6 relative. 1e-4 leaves margin and is
 * still far below what any semantic slip (rope convention, GQA mapping, norm placement) causes.
 */
const TORCH_TOLERANCE = 1e-4;

describe.skipIf(!tool("torch", haveTorch(), "the PyTorch comparison of the reference runtime"))(
  "reference runtime vs PyTorch float64 (test/reference/llama_reference.py)",
  () => {
    const T = 80;
    const golden = new Map<string, { logits: Float32Array; kv: Float32Array }>();

    beforeAll(async () => {
      // One python process for every model: torch's import is most of the cost.
      const out = scratchDir("torch");
      const jobs: { name: string; dir: string; tokens: number[]; out: string; kv: string }[] = [];
      for (const [name, opts] of Object.entries(TORCH_MODELS)) {
        const i = jobs.length;
        jobs.push({
          name,
          dir: await testModelDir(opts),
          tokens: Array.from(suiteTokens(T, 512, 7 + i)),
          out: join(out, `${i}.logits`),
          kv: join(out, `${i}.kv`),
        });
      }
      const script = [
        "import json, sys, subprocess",
        "jobs = json.loads(sys.argv[1])",
        "sys.argv = ['llama_reference.py']",
        "sys.path.insert(0, 'test/reference')",
        "import llama_reference",
        "for j in jobs:",
        "    rc = llama_reference.main([j['dir'], '--tokens', ','.join(map(str, j['tokens'])),",
        "                               '--out', j['out'], '--kv-out', j['kv']])",
        "    if rc: sys.exit(rc)",
      ].join("\n");
      const r = spawnSync(TORCH_PYTHON, ["-c", script, JSON.stringify(jobs)], {
        encoding: "utf8",
        timeout: 300_000,
      });
      expect(r.status, r.stderr).toBe(0);
      for (const j of jobs) {
        const f32 = (path: string) => new Float32Array(new Uint8Array(readFileSync(path)).buffer);
        golden.set(j.name, { logits: f32(j.out), kv: f32(j.kv) });
      }
    });

    for (const [i, [name, opts]] of Object.entries(TORCH_MODELS).entries()) {
      it(`${name}: logits at every position and the KV cache match`, async () => {
        const model = await loadTestModel(opts);
        const vocab = model.config.vocabSize;
        const want = golden.get(name)!;
        expect(want.logits.length).toBe(T * vocab);
        const tokens = suiteTokens(T, 512, 7 + i);
        const rt = await createReferenceRuntime({ model, maxPositions: T });
        // One forward over everything: the last position's logits and every position's K and V.
        const last = await rt.forward(tokens);
        expect(relativeError(last, want.logits.subarray((T - 1) * vocab))).toBeLessThanOrEqual(
          TORCH_TOLERANCE,
        );
        const kv = kvValues(await rt.exportKv(0, T), "f32");
        expect(relativeError(kv, want.kv)).toBeLessThanOrEqual(TORCH_TOLERANCE);
        if (opts.rope !== "dynamic") {
          // Prefill a part, then one token at a time: the logits of every later position. (Not
          // for dynamic rope, whose frequencies depend on how many positions a call covers.)
          const first = 20;
          rt.truncate(first - 1);
          let worst = 0;
          for (let t = first - 1; t < T; t++) {
            const got = await rt.forward(tokens.subarray(t, t + 1));
            const row = want.logits.subarray(t * vocab, (t + 1) * vocab);
            worst = Math.max(worst, relativeError(got, row));
          }
          expect(worst).toBeLessThanOrEqual(TORCH_TOLERANCE);
        }
        await rt.close();
      });
    }
  },
);
