// The WASM runtime as a PagedRuntime (wasm/src/paged-runtime.ts): a batch of sequences of
// different lengths, prefill pieces mixed with decode tokens and prefix blocks shared, gives each
// sequence the logits it gets alone (on the single-sequence wasm runtime and on the TS reference
// runtime) and what the batched reference runtime gives for the same steps; the same under core's
// BatchScheduler (prefix sharing, copy-on-write through copyBlocks); an item straddling a micro-batch boundary; copyBlocks and export/import; 1 and 2
// threads; typed errors that change nothing.

import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SequenceDriver } from "../core/engine/driver.ts";
import { createPagedReferenceRuntime } from "../core/engine/paged-reference-runtime.ts";
import type { PagedRuntime, StepItem } from "../core/engine/paged-runtime.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import type { Runtime } from "../core/engine/runtime.ts";
import { BatchScheduler } from "../core/engine/scheduler.ts";
import { InvalidInputError, LimitError } from "../core/errors.ts";
import { kvPayloadBytes } from "../core/kv/layout.ts";
import type { LoadedModel } from "../core/model/weights.ts";
import { ensureBuilt } from "../wasm/build.mjs";
import { createPagedWasmRuntime } from "../wasm/src/paged-runtime.ts";
import { createWasmRuntime, wasmRuntimeFactory } from "../wasm/src/runtime.ts";
import { loadTestModel, SMALL_VOCAB, UNEVEN_KV } from "./support/models.ts";
import { checkSchedulerMatchesAlone } from "./support/paged-scheduler.ts";
import { INVARIANT_TOLERANCE, relativeError, suiteTokens } from "./support/runtime-suite.ts";

const root = join(import.meta.dirname, "..");
await ensureBuilt({ root });

// 3 KV heads: over 2 threads the shards are uneven (2 + 1 heads).
const ODD = UNEVEN_KV;

const BS = 64;
/** Batched vs alone on the same runtime: the same kernels, other micro-batch cuts (suite's bound). */
const SAME = INVARIANT_TOLERANCE.f32;
/** Against the TS reference: f32 sums in another order, as test/wasm-runtime.test.ts bounds it. */
const REF = 1e-5;

/** A sequence of the plan: its whole token list and its block table. */
interface Seq {
  tokens: Int32Array;
  table: Int32Array;
}

/**
 * Four sequences, A B C sharing a 128-token prefix (blocks 0 and 1), D on its own blocks, in three
 * steps: prefill of the prefix (A) beside D's 70-token prefill (rows 128-197: D straddles the
 * 128-row micro-batch); then A, B, C each continue from the shared blocks with pieces of 5, 50 and
 * 1 tokens while D decodes; then one decode token for each.
 */
function plan(vocab: number): { seqs: Seq[]; steps: StepItem[][] } {
  const prefix = suiteTokens(128, vocab, 1);
  const own = (n: number, seed: number) => {
    const t = new Int32Array(128 + n);
    t.set(prefix);
    t.set(suiteTokens(n, vocab, seed), 128);
    return t;
  };
  const seqs: Seq[] = [
    { tokens: own(6, 2), table: Int32Array.from([0, 1, 4]) },
    { tokens: own(51, 3), table: Int32Array.from([0, 1, 2]) },
    { tokens: own(2, 4), table: Int32Array.from([0, 1, 3]) },
    { tokens: suiteTokens(72, vocab, 5), table: Int32Array.from([10, 11]) },
  ];
  const piece = (s: number, start: number, n: number, logits = true): StepItem => ({
    tokens: seqs[s].tokens.subarray(start, start + n),
    start,
    table: seqs[s].table,
    logits,
  });
  const steps = [
    [piece(0, 0, 128, false), piece(3, 0, 70)],
    [piece(0, 128, 5), piece(1, 128, 50), piece(2, 128, 1), piece(3, 70, 1)],
    [piece(0, 133, 1), piece(1, 178, 1), piece(2, 129, 1), piece(3, 71, 1)],
  ];
  return { seqs, steps };
}

/** Runs every step; returns each step's logits per item. */
async function runPlan(rt: PagedRuntime, steps: StepItem[][]) {
  const out: (Float32Array | null)[][] = [];
  for (const items of steps) out.push(await rt.step(items));
  return out;
}

/** The logits of the last token of `tokens`, computed alone from position 0 on `rt`. */
async function alone(rt: Runtime, tokens: Int32Array): Promise<Float32Array> {
  rt.truncate(0);
  return rt.forward(tokens);
}

async function withPaged<T>(
  model: LoadedModel,
  threads: number,
  fn: (rt: PagedRuntime) => Promise<T>,
  kvDtype: "f32" | "bf16" = "f32",
): Promise<T> {
  const rt = await createPagedWasmRuntime({
    model,
    threads,
    kvDtype,
    maxPositions: 256,
    poolPositions: 16 * BS,
  });
  try {
    return await fn(rt);
  } finally {
    await rt.close();
  }
}

describe("wasm paged runtime", () => {
  it("is the registry entry's createPaged and states its blocks", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const rt = await wasmRuntimeFactory.createPaged!({
      model,
      threads: 1,
      maxPositions: 100,
      poolPositions: 1000,
    });
    try {
      expect(rt.info.blockTokens).toBe(64);
      expect(rt.info.totalBlocks).toBe(16); // 1000 positions in whole blocks of 64
      expect(rt.info.maxPositions).toBe(100);
      expect(rt.info.kvCapacityBytes).toBe(kvPayloadBytes(rt.info.kv, 16 * 64));
    } finally {
      await rt.close();
    }
    for (const blockTokens of [32, 100, 0]) {
      await expect(
        createPagedWasmRuntime({ model, threads: 1, maxPositions: 100, blockTokens }),
      ).rejects.toThrow(InvalidInputError);
    }
    const big = await createPagedWasmRuntime({ model, threads: 1, blockTokens: 128 });
    expect(big.info.blockTokens).toBe(128);
    await big.close();
  });

  for (const threads of [1, 2]) {
    it(`a batch with shared prefix blocks, prefill pieces and decode tokens == each sequence alone (${threads} thread(s))`, async () => {
      const model = await loadTestModel(ODD);
      const { seqs, steps } = plan(model.config.vocabSize);
      const got = await withPaged(model, threads, (rt) => runPlan(rt, steps));
      // The batched reference runtime (the oracle), on the same tables and steps.
      const pagedRef = await createPagedReferenceRuntime({
        model,
        maxPositions: 256,
        poolPositions: 16 * BS,
        blockTokens: BS,
      });
      const oracle = await runPlan(pagedRef, steps).finally(() => pagedRef.close());
      const single = await createWasmRuntime({ model, threads, maxPositions: 256 });
      const ref = await createReferenceRuntime({ model, maxPositions: 256 });
      try {
        for (let s = 0; s < steps.length; s++) {
          for (let i = 0; i < steps[s].length; i++) {
            const item = steps[s][i];
            const logits = got[s][i];
            if (!item.logits) {
              expect(logits).toBeNull();
              continue;
            }
            const seq = seqs.find((q) => q.table === item.table)!;
            const upTo = seq.tokens.subarray(0, item.start + item.tokens.length);
            expect(logits).not.toBeNull();
            expect(relativeError(logits!, oracle[s][i]!)).toBeLessThanOrEqual(REF);
            expect(relativeError(logits!, await alone(single, upTo))).toBeLessThanOrEqual(SAME);
            expect(relativeError(logits!, await alone(ref, upTo))).toBeLessThanOrEqual(REF);
          }
        }
      } finally {
        await single.close();
        await ref.close();
      }
    });
  }

  it("1 and 2 threads agree on the whole plan, and batched K/V == K/V written alone", async () => {
    const model = await loadTestModel(ODD);
    const { seqs, steps } = plan(model.config.vocabSize);
    const run = (threads: number) =>
      withPaged(model, threads, async (rt) => {
        const logits = await runPlan(rt, steps);
        const kv = await Promise.all(seqs.map((q) => rt.exportKv(q.table, 0, q.tokens.length)));
        return { logits, kv };
      });
    const one = await run(1);
    const two = await run(2);
    for (const [s, step] of one.logits.entries()) {
      for (const [i, logits] of step.entries()) {
        if (logits === null) expect(two.logits[s][i]).toBeNull();
        else expect(relativeError(two.logits[s][i]!, logits)).toBeLessThanOrEqual(SAME);
      }
    }
    const single = await createWasmRuntime({ model, threads: 1, maxPositions: 256 });
    try {
      for (let q = 0; q < seqs.length; q++) {
        await single.prefill(seqs[q].tokens);
        const want = await single.exportKv(0, seqs[q].tokens.length);
        single.truncate(0);
        for (const got of [one.kv[q], two.kv[q]]) {
          const a = new Float32Array(got.buffer, got.byteOffset, got.byteLength / 4);
          const b = new Float32Array(want.buffer, want.byteOffset, want.byteLength / 4);
          expect(relativeError(a, b)).toBeLessThanOrEqual(SAME);
        }
      }
    } finally {
      await single.close();
    }
  });

  it("gives transientLogits items views of the last lm_head pass, copies of earlier ones, the same values (2 threads)", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const rt = await createPagedWasmRuntime({
      model,
      threads: 2,
      maxPositions: 256,
      poolPositions: 48 * BS,
    });
    try {
      const prefix = suiteTokens(BS, SMALL_VOCAB.vocab!, 5);
      await rt.step([{ tokens: prefix, start: 0, table: Int32Array.of(0), logits: false }]);
      // 40 decode tokens after the shared block, each into a block of its own: two lm_head passes
      // (32 rows, then 8).
      const items = (transient: boolean): StepItem[] =>
        Array.from({ length: 40 }, (_, i) => ({
          tokens: Int32Array.of((7 * i + 3) % SMALL_VOCAB.vocab!),
          start: BS,
          table: Int32Array.of(0, 1 + i),
          logits: true,
          transientLogits: transient,
        }));
      const copies = (await rt.step(items(false))).map((l) => Array.from(l as Float32Array));
      const got = await rt.step(items(true));
      got.forEach((l, i) => {
        const shared = (l as Float32Array).buffer instanceof SharedArrayBuffer;
        expect(shared, `item ${i}`).toBe(i >= 32); // the first pass's were copied before the second
        expect(Array.from(l as Float32Array)).toEqual(copies[i]);
      });
      // Without the flag nothing is a view.
      for (const l of await rt.step(items(false))) {
        expect((l as Float32Array).buffer instanceof SharedArrayBuffer).toBe(false);
      }
    } finally {
      await rt.close();
    }
  });

  it("bf16 KV: the batch plan == each sequence alone on the single-sequence runtime (2 threads)", async () => {
    const model = await loadTestModel(ODD);
    const { seqs, steps } = plan(model.config.vocabSize);
    const got = await withPaged(model, 2, (rt) => runPlan(rt, steps), "bf16");
    const single = await createWasmRuntime({
      model,
      threads: 1,
      kvDtype: "bf16",
      maxPositions: 256,
    });
    try {
      for (const [s, items] of steps.entries()) {
        for (const [i, item] of items.entries()) {
          if (!item.logits) continue;
          const seq = seqs.find((q) => q.table === item.table)!;
          const upTo = seq.tokens.subarray(0, item.start + item.tokens.length);
          // Both read K/V back rounded to bf16; what differs is the sums' order and where a
          // prefill's keys were cut into micro-batches, so the suite's bf16 bound.
          const err = relativeError(got[s][i]!, await alone(single, upTo));
          expect(err).toBeLessThanOrEqual(INVARIANT_TOLERANCE.bf16);
        }
      }
    } finally {
      await single.close();
    }
  });

  it("under core's BatchScheduler (2 threads): each sequence's logits == alone, a shared prefix copied on write", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const single = await createWasmRuntime({ model, threads: 1, maxPositions: 256 });
    try {
      await withPaged(model, 2, (rt) =>
        checkSchedulerMatchesAlone(rt, single, (got, want) =>
          expect(relativeError(got, want)).toBeLessThanOrEqual(SAME),
        ),
      );
    } finally {
      await single.close();
    }
  });

  it("drivers under the scheduler (2 threads: logits handed over as views): a slow consumer's tokens are its own", async () => {
    // The worker shards hand decode logits over as views of a buffer the next step reuses. A
    // consumer slower than a step (streaming its token out) must still sample its own logits:
    // the driver samples them as they come back, not when the consumer asks for the next token.
    // Two sequences at most in a step and one prompt token for the other keep every step under 4
    // rows, where each row's GEMMs are the one-row kernels: the slow one's tokens alone are exact.
    const model = await loadTestModel(SMALL_VOCAB);
    const V = model.config.vocabSize;
    const slowPrompt = Array.from(suiteTokens(20, V, 21));
    await withPaged(model, 2, async (rt) => {
      const scheduler = new BatchScheduler(rt);
      const generate = async (prompt: number[], each: (i: number) => Promise<void>) => {
        const seq = scheduler.open("t");
        const driver = new SequenceDriver(seq, { eosTokenIds: [] });
        const ids: number[] = [];
        const request = { prompt, maxTokens: 8, sampling: { temperature: 0 } };
        for await (const e of driver.generate(request)) {
          if (e.type !== "token") continue;
          ids.push(e.id);
          await each(ids.length);
        }
        await seq.close();
        return ids;
      };
      const alone = await generate(slowPrompt, async () => {});
      // After the slow one's prefill, another sequence decodes beside it, request after request,
      // until it ends: their decode rows share lm_head passes (views), then the other one steps
      // on alone while the slow consumer is busy.
      let slowDone = false;
      let fast: Promise<number> | undefined;
      const slow = await generate(slowPrompt, async (i) => {
        if (i === 1) {
          fast = (async () => {
            let runs = 0;
            while (!slowDone) await generate([(runs++ * 37 + 5) % V], async () => {});
            return runs;
          })();
        }
        await new Promise((r) => setTimeout(r, 25)); // the token going out over a socket
      });
      slowDone = true;
      expect(await fast).toBeGreaterThan(1);
      expect(slow).toEqual(alone);
    });
  });

  it("an item straddling the 128-row micro-batch boundary attends to the rows written before it", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const V = model.config.vocabSize;
    const x = suiteTokens(100, V, 7);
    const y = suiteTokens(160, V, 8);
    const ref = await createReferenceRuntime({ model, maxPositions: 256 });
    try {
      const got = await withPaged(model, 1, (rt) =>
        rt.step([
          { tokens: x, start: 0, table: Int32Array.from([3, 5]), logits: true },
          // rows 100-259: 28 in the first micro-batch, 128 in the second, 4 in a third
          { tokens: y, start: 0, table: Int32Array.from([0, 7, 2]), logits: true },
        ]),
      );
      expect(relativeError(got[0]!, await alone(ref, x))).toBeLessThanOrEqual(REF);
      expect(relativeError(got[1]!, await alone(ref, y))).toBeLessThanOrEqual(REF);
    } finally {
      await ref.close();
    }
  });

  it("dynamic rope: items whose ends give other frequencies run as their own passes, each as alone", async () => {
    // Past max_position_embeddings (64) dynamic NTK's frequencies depend on the forward's end.
    const model = await loadTestModel({ ...SMALL_VOCAB, rope: "dynamic", maxPos: 64, seed: 11 });
    const V = model.config.vocabSize;
    const p = suiteTokens(41, V, 12);
    const q = suiteTokens(101, V, 13);
    const pt = Int32Array.from([2]);
    const qt = Int32Array.from([0, 1]);
    const ref = await createReferenceRuntime({ model, maxPositions: 256 });
    try {
      await withPaged(model, 1, async (rt) => {
        const first = await rt.step([
          { tokens: p.subarray(0, 40), start: 0, table: pt, logits: true },
          { tokens: q.subarray(0, 100), start: 0, table: qt, logits: true },
        ]);
        expect(relativeError(first[0]!, await alone(ref, p.subarray(0, 40)))).toBeLessThanOrEqual(
          REF,
        );
        expect(relativeError(first[1]!, await alone(ref, q.subarray(0, 100)))).toBeLessThanOrEqual(
          REF,
        );
        const next = await rt.step([
          { tokens: p.subarray(40, 41), start: 40, table: pt, logits: true },
          { tokens: q.subarray(100, 101), start: 100, table: qt, logits: true },
        ]);
        // Alone: the same pieces, so cached keys keep the rotation they were written with.
        for (const [i, tokens, cut] of [
          [0, p, 40],
          [1, q, 100],
        ] as const) {
          ref.truncate(0);
          await ref.prefill(tokens.subarray(0, cut));
          const want = await ref.forward(tokens.subarray(cut, cut + 1));
          expect(relativeError(next[i]!, want)).toBeLessThanOrEqual(REF);
        }
      });
    } finally {
      await ref.close();
    }
  });

  it("copyBlocks copies every layer's K/V; export then import elsewhere continues identically", async () => {
    const model = await loadTestModel(ODD);
    const V = model.config.vocabSize;
    const tokens = suiteTokens(101, V, 9);
    await withPaged(model, 2, async (rt) => {
      const table = Int32Array.from([5, 6]);
      await rt.step([{ tokens: tokens.subarray(0, 100), start: 0, table, logits: false }]);
      const kv = await rt.exportKv(table, 0, 100);
      await rt.copyBlocks([
        [5, 7],
        [6, 8],
      ]);
      const copy = Int32Array.from([7, 8]);
      expect(await rt.exportKv(copy, 0, 100)).toEqual(kv);
      // Continuing the copy writes only its blocks: the original is unchanged.
      const next = { tokens: tokens.subarray(100, 101), start: 100, logits: true };
      const [onCopy] = await rt.step([{ ...next, table: copy }]);
      expect(await rt.exportKv(table, 0, 101)).not.toEqual(await rt.exportKv(copy, 0, 101));
      expect(await rt.exportKv(table, 0, 100)).toEqual(kv);
      // Import in two pieces onto other blocks: the same bytes, then the same next logits.
      const moved = Int32Array.from([9, 3]);
      const [head, tail] = [await rt.exportKv(table, 0, 70), await rt.exportKv(table, 70, 100)];
      await withPaged(model, 1, async (other) => {
        await other.importKv(moved, 0, head, 70, "f32");
        await other.importKv(moved, 70, tail, 30, "f32");
        expect(await other.exportKv(moved, 0, 100)).toEqual(kv);
        const [onImport] = await other.step([{ ...next, table: moved }]);
        expect(relativeError(onImport!, onCopy!)).toBeLessThanOrEqual(SAME);
      });
    });
  });

  it("bad input gives one typed error and changes nothing", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const V = model.config.vocabSize;
    const tokens = suiteTokens(101, V, 10);
    await withPaged(model, 1, async (rt) => {
      const table = Int32Array.from([0, 1]);
      await rt.step([{ tokens: tokens.subarray(0, 100), start: 0, table, logits: false }]);
      const before = await rt.exportKv(table, 0, 101);
      const good: StepItem = { tokens: tokens.subarray(100, 101), start: 100, table, logits: true };
      const item = (o: Partial<StepItem>): StepItem => ({
        tokens: tokens.subarray(0, 3),
        start: 0,
        table: Int32Array.from([4]),
        logits: true,
        ...o,
      });
      const bad: [StepItem, typeof InvalidInputError | typeof LimitError][] = [
        [item({ table: Int32Array.from([16]) }), InvalidInputError], // pool is 16 blocks
        [item({ table: Int32Array.from([-1]) }), InvalidInputError],
        [item({ start: 64, table: Int32Array.from([4]) }), InvalidInputError], // needs 2 blocks
        [item({ tokens: Int32Array.from([1, V, 2]) }), InvalidInputError],
        [item({ tokens: new Int32Array(0) }), InvalidInputError],
        [item({ start: -1 }), InvalidInputError],
        [item({ start: 254, table: Int32Array.from([4, 5, 6, 7]) }), LimitError], // 257 > 256
      ];
      for (const [b, type] of bad) {
        // The good item comes first: a step checks every item before it runs any.
        await expect(rt.step([good, b])).rejects.toThrow(type);
        expect(await rt.exportKv(table, 0, 101)).toEqual(before);
      }
      await expect(rt.copyBlocks([[0, 16]])).rejects.toThrow(InvalidInputError);
      await expect(rt.exportKv(Int32Array.from([0]), 0, 100)).rejects.toThrow(InvalidInputError);
      await expect(
        rt.importKv(Int32Array.from([2, 99]), 0, new Uint8Array(before.byteLength), 101, "f32"),
      ).rejects.toThrow(InvalidInputError);
      expect(await rt.exportKv(table, 0, 101)).toEqual(before);
      // And the runtime still works: the good item alone.
      const [logits] = await rt.step([good]);
      const ref = await createReferenceRuntime({ model, maxPositions: 256 });
      try {
        expect(relativeError(logits!, await alone(ref, tokens))).toBeLessThanOrEqual(REF);
      } finally {
        await ref.close();
      }
    });
  });
});
