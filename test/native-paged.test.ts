// The native engine as a PagedRuntime (native/ts/native-paged-runtime.ts over ul_engine_step),
// on the emscripten build (reference kernels): a batch of four sequences of different lengths,
// prefill pieces beside decode tokens, prefix blocks shared, a step longer than the engine's
// 256-row micro-batch, gives each sequence the logits it gets alone on the single-sequence
// native-wasm runtime (bit for bit: the reference kernels compute every row on its own) and on the
// TS reference runtime; f32, bf16 and fp8 KV; copyBlocks / export / import through tables in the
// snapshot layout (the bytes the single-sequence engine exports); typed errors that change nothing;
// core's BatchScheduler driving it. Needs emcc.

import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { PagedRuntime, StepItem } from "../core/engine/paged-runtime.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import type { Runtime } from "../core/engine/runtime.ts";
import { InvalidInputError, LimitError } from "../core/errors.ts";
import type { KvDtype } from "../core/kv/layout.ts";
import type { LoadedModel } from "../core/model/weights.ts";
import { build } from "../native/build.mjs";
import {
  createNativeWasmRuntime,
  createPagedNativeWasmRuntime,
  nativeWasmRuntimeFactory,
} from "../native/ts/wasm-runtime.ts";
import { loadTestModel, SMALL_VOCAB, UNEVEN_KV } from "./support/models.ts";
import { checkSchedulerMatchesAlone } from "./support/paged-scheduler.ts";
import { relativeError, suiteTokens } from "./support/runtime-suite.ts";
import { haveEmcc, tool } from "./support/tools.ts";

const root = join(import.meta.dirname, "..");
const hasEmcc = tool("emcc", haveEmcc(), "the native paged runtime tests");

/** Against the TS reference runtime: f64 vs f32 sums, as test/native-wasm.test.ts bounds it. */
const REF = 1e-4;
const MAX_POS = 512;

interface Seq {
  tokens: Int32Array;
  table: Int32Array;
}

/**
 * Four sequences; A, B and C share a 96-token prefix (blocks 0-5 of 16 positions), D has its own
 * blocks. Step 1: A's prefix (96 rows) beside D's 180-token prefill (rows 96-275: D straddles the
 * engine's 256-row micro-batch). Step 2: A, B, C continue from the shared blocks with 5, 37 and 1
 * tokens (B's piece starts mid-block: 96 = 6 x 16, so each starts a new block) while D decodes.
 * Step 3: one decode token each. Block ids are scattered so no table is contiguous. With 64-position
 * blocks the prefix ends mid-block 1: B and C get copies of A's block 1 after step 1 (`cow`, the
 * copy-on-write the scheduler does), as sharing is only allowed below an item's start.
 */
function plan(
  vocab: number,
  bs: number,
): { seqs: Seq[]; steps: StepItem[][]; cow: [number, number][] } {
  const prefix = suiteTokens(96, vocab, 1);
  const own = (n: number, seed: number) => {
    const t = new Int32Array(96 + n);
    t.set(prefix);
    t.set(suiteTokens(n, vocab, seed), 96);
    return t;
  };
  const small = bs === 16;
  const shared = small ? [9, 2, 30, 4, 17, 5] : [9];
  const blocks = (ids: number[]) => Int32Array.from([...shared, ...ids]);
  const seqs: Seq[] = [
    { tokens: own(6, 2), table: blocks(small ? [7] : [2]) },
    { tokens: own(38, 3), table: blocks(small ? [11, 12, 31] : [11, 12]) },
    { tokens: own(2, 4), table: blocks(small ? [13] : [13]) },
    {
      tokens: suiteTokens(182, vocab, 5),
      table: Int32Array.from(small ? [20, 1, 21, 0, 22, 3, 23, 6, 24, 8, 25, 10] : [20, 1, 21]),
    },
  ];
  const cow: [number, number][] = small
    ? []
    : [
        [2, 11],
        [2, 13],
      ];
  const piece = (s: number, start: number, n: number, logits = true): StepItem => ({
    tokens: seqs[s].tokens.subarray(start, start + n),
    start,
    table: seqs[s].table,
    logits,
  });
  const steps = [
    [piece(0, 0, 96, false), piece(3, 0, 180)],
    [piece(0, 96, 5), piece(1, 96, 37), piece(2, 96, 1), piece(3, 180, 1)],
    [piece(0, 101, 1), piece(1, 133, 1), piece(2, 97, 1), piece(3, 181, 1)],
  ];
  return { seqs, steps, cow };
}

async function runPlan(rt: PagedRuntime, steps: StepItem[][], cow: [number, number][]) {
  const out: (Float32Array | null)[][] = [];
  for (const items of steps) {
    out.push(await rt.step(items));
    if (out.length === 1) await rt.copyBlocks(cow);
  }
  return out;
}

/** The engine's micro-batch: rows of one step run through the layers together. */
const MICRO_BATCH = 256;

/** `item`'s tokens cut where its step's micro-batches end. */
function microBatches(steps: StepItem[][], item: StepItem): Int32Array[] {
  const step = steps.find((items) => items.includes(item))!;
  let row = 0;
  for (const x of step) {
    if (x === item) break;
    row += x.tokens.length;
  }
  const out: Int32Array[] = [];
  for (let off = 0; off < item.tokens.length; ) {
    const n = Math.min(item.tokens.length - off, MICRO_BATCH - ((row + off) % MICRO_BATCH));
    out.push(item.tokens.subarray(off, off + n));
    off += n;
  }
  return out;
}

/** The logits of the last token of `tokens`, computed alone from position 0. */
async function alone(rt: Runtime, tokens: Int32Array): Promise<Float32Array> {
  rt.truncate(0);
  return rt.forward(tokens);
}

function paged(
  model: LoadedModel,
  kvDtype: KvDtype,
  blockTokens: number,
  blocks = 32,
): Promise<PagedRuntime> {
  return createPagedNativeWasmRuntime({
    model,
    kvDtype,
    maxPositions: MAX_POS,
    blockTokens,
    poolPositions: blocks * blockTokens,
  });
}

describe.skipIf(!hasEmcc)("native paged runtime (native-wasm)", () => {
  beforeAll(async () => {
    await build({ root });
  });

  it("is the registry entry's createPaged, states its pool, and refuses bad block sizes", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const rt = await nativeWasmRuntimeFactory.createPaged!({
      model,
      maxPositions: 100,
      poolPositions: 1000,
    });
    try {
      expect(rt.info.name).toBe("native-wasm");
      expect(rt.info.blockTokens).toBe(64);
      expect(rt.info.totalBlocks).toBe(16); // 1000 positions in whole blocks of 64
      expect(rt.info.maxPositions).toBe(100);
      expect(rt.info.kernels).toBe("cpp-reference");
      const c = model.config;
      // f32: 2 (K, V) x layers x kv_heads x head_dim x 4 bytes per pool slot.
      expect(rt.info.kvCapacityBytes).toBe(
        2 * c.numHiddenLayers * c.numKeyValueHeads * c.headDim * 4 * 16 * 64,
      );
    } finally {
      await rt.close();
    }
    for (const blockTokens of [0, -64, 1.5]) {
      await expect(paged(model, "f32", blockTokens)).rejects.toThrow(InvalidInputError);
    }
    // fp8 scales are per 64 positions: a KV block must hold whole scale blocks.
    await expect(paged(model, "fp8-e4m3", 32)).rejects.toThrow(/multiple of 64/);
    await expect(paged(model, "fp8-e4m3", 32)).rejects.toThrow(InvalidInputError);
  });

  for (const [kvDtype, bs] of [
    ["f32", 16],
    ["bf16", 16],
    ["fp8-e4m3", 64],
  ] as const) {
    it(`${kvDtype} KV, ${bs}-position blocks: a batch with shared prefix blocks, prefill pieces and decode tokens == each sequence alone`, async () => {
      const model = await loadTestModel(UNEVEN_KV);
      const { seqs, steps, cow } = plan(model.config.vocabSize, bs);
      const rt = await paged(model, kvDtype, bs);
      const got = await runPlan(rt, steps, cow).finally(() => rt.close());
      const single = await createNativeWasmRuntime({ model, kvDtype, maxPositions: MAX_POS });
      const ref = await createReferenceRuntime({ model, maxPositions: MAX_POS });
      try {
        for (const [s, items] of steps.entries()) {
          for (const [i, item] of items.entries()) {
            if (!item.logits) {
              expect(got[s][i]).toBeNull();
              continue;
            }
            const seq = seqs.find((q) => q.table === item.table)!;
            const upTo = seq.tokens.subarray(0, item.start + item.tokens.length);
            // Alone on the single-sequence engine, in the same writes (for fp8 the block scales
            // then grow at the same points): the shared prefix as A wrote it, then its own
            // pieces, each cut where the step's 256-row micro-batches were.
            single.truncate(0);
            const earlier = steps.slice(0, s).flat();
            const pieces = earlier.filter(
              (e) =>
                e.table === item.table ||
                (e.start === 0 && e.tokens.length === 96 && item.start >= 96 && seq !== seqs[3]),
            );
            for (const e of pieces) {
              if (single.position !== e.start) continue;
              for (const part of microBatches(steps, e)) await single.prefill(part);
            }
            expect(single.position).toBe(item.start);
            const parts = microBatches(steps, item);
            for (const part of parts.slice(0, -1)) await single.prefill(part);
            const want = await single.forward(parts[parts.length - 1]);
            expect(got[s][i]).toEqual(want);
            if (kvDtype === "f32") {
              expect(relativeError(got[s][i]!, await alone(ref, upTo))).toBeLessThanOrEqual(REF);
            }
          }
        }
      } finally {
        await single.close();
        await ref.close();
      }
    });
  }

  it("exports what the single-sequence engine exports; copyBlocks, then import elsewhere continues identically", async () => {
    const model = await loadTestModel(UNEVEN_KV);
    const V = model.config.vocabSize;
    const tokens = suiteTokens(101, V, 9);
    for (const [kvDtype, bs] of [
      ["f32", 16],
      ["fp8-e4m3", 64],
    ] as const) {
      const rt = await paged(model, kvDtype, bs);
      const single = await createNativeWasmRuntime({ model, kvDtype, maxPositions: MAX_POS });
      try {
        const table = bs === 16 ? Int32Array.from([5, 0, 8, 3, 9, 12, 1]) : Int32Array.from([5, 2]);
        await rt.step([{ tokens: tokens.subarray(0, 100), start: 0, table, logits: false }]);
        await single.prefill(tokens.subarray(0, 100));
        const kv = await rt.exportKv(table, 0, 100);
        expect(kv).toEqual(await single.exportKv(0, 100));
        // A range that does not start on a block (fp8: requantised per payload block, as single).
        expect(await rt.exportKv(table, 37, 90)).toEqual(await single.exportKv(37, 90));
        const copy =
          bs === 16 ? Int32Array.from([20, 21, 22, 23, 24, 25, 26]) : Int32Array.from([7, 8]);
        await rt.copyBlocks(Array.from(table, (from, i) => [from, copy[i]] as const));
        expect(await rt.exportKv(copy, 0, 100)).toEqual(kv);
        // Continuing the copy writes only its blocks: the original is unchanged.
        const next = { tokens: tokens.subarray(100, 101), start: 100, logits: true };
        const [onCopy] = await rt.step([{ ...next, table: copy }]);
        expect(await rt.exportKv(table, 0, 100)).toEqual(kv);
        expect(onCopy).toEqual(await single.forward(tokens.subarray(100, 101)));
        // Import in two pieces (the second mid-block) onto other blocks of another engine.
        const moved =
          bs === 16 ? Int32Array.from([30, 4, 2, 6, 7, 10, 11]) : Int32Array.from([9, 3]);
        const other = await paged(model, kvDtype, bs);
        try {
          const cut = 64;
          await other.importKv(moved, 0, await rt.exportKv(table, 0, cut), cut, kvDtype);
          await other.importKv(moved, cut, await rt.exportKv(table, cut, 100), 100 - cut, kvDtype);
          expect(await other.exportKv(moved, 0, 100)).toEqual(kv);
          const [onImport] = await other.step([{ ...next, table: moved }]);
          expect(onImport).toEqual(onCopy);
        } finally {
          await other.close();
        }
      } finally {
        await rt.close();
        await single.close();
      }
    }
  });

  it("bad tables, tokens and ranges give one typed error and change nothing", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const V = model.config.vocabSize;
    const tokens = suiteTokens(101, V, 10);
    const rt = await paged(model, "f32", 16, 16);
    try {
      const table = Int32Array.from([0, 1, 2, 3, 4, 5, 6]);
      await rt.step([{ tokens: tokens.subarray(0, 100), start: 0, table, logits: false }]);
      const before = await rt.exportKv(table, 0, 100);
      const good: StepItem = { tokens: tokens.subarray(100, 101), start: 100, table, logits: true };
      const item = (o: Partial<StepItem>): StepItem => ({
        tokens: tokens.subarray(0, 3),
        start: 0,
        table: Int32Array.from([9]),
        logits: true,
        ...o,
      });
      const bad: [StepItem, typeof InvalidInputError | typeof LimitError][] = [
        [item({ table: Int32Array.from([16]) }), InvalidInputError], // pool is 16 blocks
        [item({ table: Int32Array.from([-1]) }), InvalidInputError],
        [item({ start: 16, table: Int32Array.from([9]) }), InvalidInputError], // needs 2 blocks
        [item({ table: new Int32Array(0) }), InvalidInputError],
        [item({ tokens: Int32Array.from([1, V, 2]) }), InvalidInputError],
        [item({ tokens: Int32Array.from([1, -1]) }), InvalidInputError],
        [item({ tokens: new Int32Array(0) }), InvalidInputError],
        [item({ start: -1 }), InvalidInputError],
        [item({ table: [9] as unknown as Int32Array }), InvalidInputError],
        [item({ start: 510, table: new Int32Array(32).fill(9) }), LimitError], // 513 > 512
      ];
      for (const [b, type] of bad) {
        // The good item comes first: a step checks every item before it runs any.
        await expect(rt.step([good, b])).rejects.toThrow(type);
        expect(await rt.exportKv(table, 0, 100)).toEqual(before);
      }
      await expect(rt.copyBlocks([[0, 16]])).rejects.toThrow(InvalidInputError);
      await expect(rt.copyBlocks([[-1, 3]])).rejects.toThrow(InvalidInputError);
      await expect(rt.exportKv(Int32Array.from([0]), 0, 100)).rejects.toThrow(InvalidInputError);
      await expect(rt.exportKv(table, 0, 513)).rejects.toThrow(LimitError);
      await expect(rt.exportKv(table, 5, 4)).rejects.toThrow(InvalidInputError);
      // Wrong payload size, and a table whose 7th block is outside the pool.
      await expect(rt.importKv(table, 0, new Uint8Array(7), 100, "f32")).rejects.toThrow(
        InvalidInputError,
      );
      await expect(
        rt.importKv(Int32Array.from([7, 8, 9, 10, 11, 12, 99]), 0, before, 100, "f32"),
      ).rejects.toThrow(InvalidInputError);
      expect(await rt.exportKv(table, 0, 100)).toEqual(before);
      // And the runtime still works: the good item alone.
      const [logits] = await rt.step([good]);
      const ref = await createReferenceRuntime({ model, maxPositions: MAX_POS });
      try {
        expect(relativeError(logits!, await alone(ref, tokens))).toBeLessThanOrEqual(REF);
      } finally {
        await ref.close();
      }
    } finally {
      await rt.close();
    }
  });

  it("under core's BatchScheduler: each sequence's logits == alone, a shared prefix copied on write", async () => {
    const model = await loadTestModel(SMALL_VOCAB);
    const single = await createNativeWasmRuntime({ model, maxPositions: MAX_POS });
    const rt = await paged(model, "f32", 64, 16);
    try {
      await checkSchedulerMatchesAlone(rt, single, (got, want) => expect(got).toEqual(want));
    } finally {
      await rt.close();
      await single.close();
    }
  });
});
