// The invariants every Runtime must pass (ARCHITECTURE.md, "Correctness"), one vitest test each:
//
//   - one prefill == prefill in chunks of 1, 7, 64 and 1000 tokens (or the sizes given)
//   - decode after prefill == prefill of the longer sequence
//   - export then import into a fresh runtime == continuing the original (and the imported bytes
//     export back unchanged; importing in two pieces == importing whole)
//   - truncate then recompute == never truncating
//   - an aborted signal rejects with CancelledError and leaves the position unchanged
//   - past maxPositions, LimitError
//   - (runtimes with threads) results independent of the thread count
//
// "==" compares the last position's logits AND the K/V of every position (exportKv), so a bug at
// any position shows, not only at the last one.
//
// Usage, in a runtime's test file:
//   runtimeInvariantSuite("wasm", wasmRuntimeFactory, { threads: [1, 2], kvDtypes: ["f32", "bf16"] });

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { RuntimeFactory, RuntimeOptions } from "../../core/engine/registry.ts";
import type { Runtime } from "../../core/engine/runtime.ts";
import { createRng } from "../../core/engine/sampling.ts";
import { CancelledError, LimitError } from "../../core/errors.ts";
import { fp8PayloadToF32 } from "../../core/kv/fp8.ts";
import type { KvDtype, KvLayout } from "../../core/kv/layout.ts";
import type { GenerateOptions } from "../../core/model/generate.ts";
import type { LoadedModel } from "../../core/model/weights.ts";
import { decodeToF32 } from "../../core/safetensors/dtype.ts";
import { loadTestModel, SMALL_VOCAB } from "./models.ts";

export type CreateRuntime = (options: RuntimeOptions) => Promise<Runtime>;

export interface RuntimeSuiteOptions {
  /** Generated models to run every invariant on (default: SUITE_MODELS). */
  models?: GenerateOptions[];
  /** KV cache dtypes to run (default ["f32"]). */
  kvDtypes?: KvDtype[];
  /** Thread counts to compare with each other; omit for single-threaded runtimes. */
  threads?: number[];
  /** Weight format passed to the runtime (default: the runtime's own). */
  weightFormat?: RuntimeOptions["weightFormat"];
  /** Prompt length (default 1100: the 1000-token chunking then ends with a partial chunk). */
  sequenceLength?: number;
  /**
   * Prefill chunk sizes compared with one prefill (default [1, 7, 64, 1000]). Pick sizes that do
   * not divide sequenceLength, so the last chunk is a partial one.
   */
  chunks?: number[];
}

/**
 * Default models: GQA 2 with yarn (UltraLong's rope type) and GQA 1 with llama3 and tied
 * embeddings, both with a 512-token vocab so the lm_head is cheap.
 */
export const SUITE_MODELS: GenerateOptions[] = [
  SMALL_VOCAB,
  { ...SMALL_VOCAB, heads: 4, kvHeads: 4, rope: "llama3", tieEmbeddings: true, seed: 2 },
];

/**
 * Tolerance on |a - b|max / max(1, |b|max), per KV dtype. The same runtime on the same tokens may
 * still sum in a different order when the chunking or thread count changes (SIMD tiles, online
 * softmax blocks, shards): f32 sums of n terms then differ by about sqrt(n) * 2^-24 relative, under
 * 1e-6 for these models. 1e-4 leaves 100x margin; a real bug (a wrong position, a dropped or
 * duplicated token, a stale cache row) moves logits by 1e-1 or more. A runtime that attends to the
 * current chunk's K/V before rounding them to a 16-bit cache differs from one that reads them back
 * rounded by up to a few units of the cache's precision: bf16 2^-8 = 3.9e-3, f16 2^-11 = 4.9e-4,
 * so 2e-2 and 3e-3. fp8 e4m3 keeps 3 mantissa bits (half an ulp is 2^-4 = 6.3e-2 of a value), and
 * a block's scale depends on how its 64 positions were written (a whole prefill sets it once; a
 * chunk of 1 or 7 starts it from a smaller amax and doubles it), so the same value can round onto
 * two grids: up to 2^-3 apart for one element, 6.2e-2 to 6.9e-2 measured on the KV of the suite's
 * first model (chunks of 64 give identical bytes: the same blocks) and under 1e-2 on logits.
 * 1e-1 sits between what was measured and that worst case.
 */
export const INVARIANT_TOLERANCE: Record<KvDtype, number> = {
  f32: 1e-4,
  bf16: 2e-2,
  f16: 3e-3,
  "fp8-e4m3": 1e-1,
};

/** |a - b|max / max(1, |b|max). */
export function relativeError(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Number.POSITIVE_INFINITY;
  let diff = 0;
  let scale = 1;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= diff)) diff = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return diff / scale;
}

/** Exported KV bytes as f32 values; fp8 payloads (scales inside) need their layout and length. */
export function kvValues(
  bytes: Uint8Array,
  dtype: KvDtype,
  fp8?: { layout: KvLayout; tokens: number },
): Float32Array {
  if (dtype === "fp8-e4m3") {
    if (!fp8) throw new Error("kvValues: an fp8 payload needs its layout and token count");
    const f32 = fp8PayloadToF32(fp8.layout, fp8.tokens, bytes);
    return new Float32Array(f32.buffer, f32.byteOffset, f32.byteLength / 4);
  }
  const size = dtype === "f32" ? 4 : 2;
  const out = new Float32Array(bytes.byteLength / size);
  decodeToF32(dtype, bytes, out, 0);
  return out;
}

/** `n` token ids in [0, vocab), reproducible. */
export function suiteTokens(n: number, vocab: number, seed = 1234): Int32Array {
  const rng = createRng(seed);
  return Int32Array.from({ length: n }, () => Math.floor(rng() * vocab));
}

interface Result {
  logits: Float32Array;
  kv: Float32Array;
}

export function runtimeInvariantSuite(
  name: string,
  factory: RuntimeFactory | CreateRuntime,
  options: RuntimeSuiteOptions = {},
): void {
  const create: CreateRuntime = typeof factory === "function" ? factory : (o) => factory.create(o);
  const L = options.sequenceLength ?? 1100;
  for (const modelOpts of options.models ?? SUITE_MODELS) {
    for (const kvDtype of options.kvDtypes ?? ["f32"]) {
      const label = `${name} runtime, ${describeModel(modelOpts)}, ${kvDtype} KV`;
      describe(label, () => {
        const tol = INVARIANT_TOLERANCE[kvDtype];
        let model: LoadedModel;
        let tokens: Int32Array;
        let whole: Result;
        const open: Runtime[] = [];
        const fresh = async (threads?: number) => {
          const rt = await create({
            model,
            kvDtype,
            maxPositions: L + 16,
            threads: threads ?? options.threads?.[0],
            weightFormat: options.weightFormat,
          });
          open.push(rt);
          return rt;
        };
        const result = async (rt: Runtime, logits: Float32Array): Promise<Result> => ({
          logits,
          kv: kvValues(await rt.exportKv(0, rt.position), kvDtype, {
            layout: rt.info.kv,
            tokens: rt.position,
          }),
        });
        const expectClose = (got: Result, want: Result, what: string) => {
          expect(relativeError(got.logits, want.logits), `${what}: logits`).toBeLessThanOrEqual(
            tol,
          );
          expect(relativeError(got.kv, want.kv), `${what}: KV`).toBeLessThanOrEqual(tol);
        };

        beforeAll(async () => {
          model = await loadTestModel(modelOpts);
          tokens = suiteTokens(L, model.config.vocabSize);
          const rt = await fresh();
          whole = await result(rt, await rt.forward(tokens));
          expect(rt.position).toBe(L);
          expect(rt.info.kv.dtype).toBe(kvDtype);
        });
        afterAll(async () => {
          for (const rt of open) await rt.close();
        });

        for (const chunk of options.chunks ?? [1, 7, 64, 1000]) {
          it(`one prefill == prefill in chunks of ${chunk}`, async () => {
            const rt = await fresh();
            let logits: Float32Array | undefined;
            for (let at = 0; at < L; at += chunk) {
              const span = tokens.subarray(at, Math.min(at + chunk, L));
              if (at + chunk >= L) logits = await rt.forward(span);
              else await rt.prefill(span);
            }
            expect(rt.position).toBe(L);
            expectClose(await result(rt, logits!), whole, `chunks of ${chunk}`);
          });
        }

        it("decode after prefill == prefill of the longer sequence", async () => {
          const rt = await fresh();
          let logits = await rt.forward(tokens.subarray(0, L - 8));
          for (let at = L - 8; at < L; at++) logits = await rt.forward(tokens.subarray(at, at + 1));
          expectClose(await result(rt, logits), whole, "decode after prefill");
        });

        it("export then import into a fresh runtime == continuing the original", async () => {
          const P = Math.floor(L / 2);
          const a = await fresh();
          await a.prefill(tokens.subarray(0, P));
          const bytes = await a.exportKv(0, P);
          const b = await fresh();
          await b.importKv(bytes, P, kvDtype);
          expect(b.position).toBe(P);
          // Imported bytes export back unchanged.
          expect(Buffer.from(await b.exportKv(0, P)).equals(Buffer.from(bytes))).toBe(true);
          // `whole` is the original continued without interruption (chunking is checked above).
          const logits = await b.forward(tokens.subarray(P));
          expectClose(await result(b, logits), whole, "imported, then continued");
        });

        it("importing in two pieces == importing whole", async () => {
          const P = Math.floor(L / 2);
          const cut = 37;
          const a = await fresh();
          await a.prefill(tokens.subarray(0, P));
          const b = await fresh();
          await b.importKv(await a.exportKv(0, cut), cut, kvDtype);
          await b.importKv(await a.exportKv(cut, P), P - cut, kvDtype);
          const both = await a.exportKv(0, P);
          if (kvDtype === "fp8-e4m3") {
            // The second piece starts inside a 64-position scale block: the exporter requantises
            // it with its own block scales and the importer writes it as a forward would, so the
            // bytes differ by fp8 rounding; the values agree within the fp8 tolerance.
            const values = (bytes: Uint8Array) =>
              kvValues(bytes, kvDtype, { layout: a.info.kv, tokens: P });
            expect(relativeError(values(await b.exportKv(0, P)), values(both))).toBeLessThanOrEqual(
              tol,
            );
          } else {
            expect(Buffer.from(await b.exportKv(0, P)).equals(Buffer.from(both))).toBe(true);
          }
          expectClose(await result(b, await b.forward(tokens.subarray(P))), whole, "two pieces");
        });

        it("truncate then recompute == never truncating", async () => {
          const rt = await fresh();
          const keep = L - 100;
          await rt.prefill(tokens);
          rt.truncate(keep);
          expect(rt.position).toBe(keep);
          // Different tokens first, so stale rows past the truncation point would show.
          await rt.prefill(suiteTokens(50, model.config.vocabSize, 99));
          rt.truncate(keep);
          const logits = await rt.forward(tokens.subarray(keep));
          expectClose(await result(rt, logits), whole, "truncate and recompute");
        });

        it("an aborted signal rejects with CancelledError and keeps the position", async () => {
          const rt = await fresh();
          await rt.prefill(tokens.subarray(0, 10));
          const controller = new AbortController();
          controller.abort();
          await expect(rt.forward(tokens.subarray(10, 20), controller.signal)).rejects.toThrow(
            CancelledError,
          );
          expect(rt.position).toBe(10);
          const after = await result(rt, await rt.forward(tokens.subarray(10, 20)));
          const plain = await fresh();
          expectClose(after, await result(plain, await plain.forward(tokens.subarray(0, 20))), "");
        });

        it("refuses to go past maxPositions with LimitError", async () => {
          const rt = await create({
            model,
            kvDtype,
            maxPositions: 32,
            threads: options.threads?.[0],
          });
          open.push(rt);
          expect(rt.info.maxPositions).toBe(32);
          await rt.prefill(tokens.subarray(0, 30));
          await expect(rt.prefill(tokens.subarray(0, 3))).rejects.toThrow(LimitError);
          expect(rt.position).toBe(30);
          await rt.prefill(tokens.subarray(30, 32));
          expect(rt.position).toBe(32);
        });

        const threadCounts = options.threads ?? [];
        if (threadCounts.length > 1) {
          it(`results do not depend on the thread count (${threadCounts.join(", ")})`, async () => {
            for (const threads of threadCounts) {
              const rt = await fresh(threads);
              expect(rt.info.threads).toBe(threads);
              let logits: Float32Array | undefined;
              for (let at = 0; at < L; at += 64) {
                const span = tokens.subarray(at, Math.min(at + 64, L));
                if (at + 64 >= L) logits = await rt.forward(span);
                else await rt.prefill(span);
              }
              expectClose(await result(rt, logits!), whole, `${threads} threads`);
              await rt.close();
              open.splice(open.indexOf(rt), 1);
            }
          });
        }
      });
    }
  }
}

function describeModel(o: GenerateOptions): string {
  const parts = [
    `${o.layers ?? 2} layers`,
    `hidden ${o.hidden ?? 64}`,
    `${o.heads ?? 4}/${o.kvHeads ?? 2} heads`,
    `rope ${o.rope ?? "yarn"}`,
  ];
  if (o.tieEmbeddings) parts.push("tied");
  if (o.dtype) parts.push(o.dtype);
  return parts.join(", ");
}
