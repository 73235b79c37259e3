// Shared-prefix (cascade) attention in the WASM paged runtime (issue 15 item 2): the kernel's
// state-carrying call (one pass of several sequences' queries over shared blocks, then each
// sequence's own keys resumed from that state) against the one-pass kernel; the grouping rule
// (wasm/src/prefix-groups.mjs); and batched steps whose items share prefix blocks (groups of 2 to
// 16, prefixes of 1 to 3 blocks, members at different starts, beside prefill pieces and lone
// items, f32 and bf16 KV, 1 and 2 threads) giving each sequence the logits it gets alone, on the
// single-sequence runtime and on the TS reference runtime.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import v8 from "node:v8";
import { beforeAll, describe, expect, it } from "vitest";
import type { StepItem } from "../core/engine/paged-runtime.ts";
import { createReferenceRuntime } from "../core/engine/reference-runtime.ts";
import type { Runtime } from "../core/engine/runtime.ts";
import { createRng } from "../core/engine/sampling.ts";
import { f32ToBf16 } from "../core/safetensors/dtype.ts";
import {
  ensureBuilt,
  INITIAL_PAGES,
  RELAXED_TEST_WASM_FILE,
  TEST_WASM_FILE,
} from "../wasm/build.mjs";
import { createPagedWasmRuntime } from "../wasm/src/paged-runtime.ts";
import { prefixGroups } from "../wasm/src/prefix-groups.mjs";
import { createWasmRuntime } from "../wasm/src/runtime.ts";
import { loadTestModel, UNEVEN_KV } from "./support/models.ts";
import { INVARIANT_TOLERANCE, relativeError, suiteTokens } from "./support/runtime-suite.ts";

const root = join(import.meta.dirname, "..");
await ensureBuilt({ root });
v8.setFlagsFromString("--experimental-wasm-relaxed-simd");

type Fn = (...args: number[]) => number;

describe("attention_state: a shared pass then each member resumed == the one-pass kernel", () => {
  for (const file of [TEST_WASM_FILE, RELAXED_TEST_WASM_FILE]) {
    let exports: Record<string, unknown>;
    let memory: WebAssembly.Memory;
    let top = 0;
    const fn = (name: string) => exports[name] as Fn;
    const alloc = (bytes: number) => {
      const p = top;
      top += Math.ceil(bytes / 64) * 64;
      const need = top - memory.buffer.byteLength;
      if (need > 0) memory.grow(Math.ceil(need / 65536));
      return p;
    };
    const f32 = (p: number, n: number) => new Float32Array(memory.buffer, p, n);
    beforeAll(() => {
      const module = new WebAssembly.Module(readFileSync(join(root, file)));
      memory = new WebAssembly.Memory({ initial: INITIAL_PAGES, maximum: 65536 });
      exports = new WebAssembly.Instance(module, { env: { memory } }).exports;
    });

    // Members: [first position, rows]. Every member's first position lies past the shared blocks.
    const cases = [
      {
        nh: 12,
        nkv: 4,
        hd: 64,
        bs: 64,
        shared: 3,
        members: [
          [192, 1],
          [200, 1],
          [250, 3],
        ],
      },
      // 20 one-row members: two query tiles of 16 tokens over the shared blocks
      {
        nh: 8,
        nkv: 2,
        hd: 128,
        bs: 64,
        shared: 2,
        members: Array.from({ length: 20 }, (_, i) => [128 + i * 7, 1]),
      },
      // a 40-row prefill piece beside decode rows, bf16 cache
      {
        nh: 4,
        nkv: 1,
        hd: 64,
        bs: 64,
        shared: 1,
        members: [
          [64, 40],
          [70, 1],
          [130, 2],
        ],
        bf16: 1,
      },
      // blocks of two key tiles
      {
        nh: 6,
        nkv: 2,
        hd: 64,
        bs: 128,
        shared: 2,
        members: [
          [256, 17],
          [300, 1],
        ],
        bf16: 1,
      },
    ];
    for (const c of cases) {
      it(`${file}: heads ${c.nh}/${c.nkv} hd ${c.hd}, ${c.members.length} members over ${c.shared} shared block(s) of ${c.bs}${c.bf16 ? ", bf16" : ""}`, () => {
        top = Math.ceil((exports.heap_base as () => number)() / 64) * 64;
        const r = createRng(c.nh * 7 + c.members.length);
        const rand = () => r() - 0.5;
        const eb = c.bf16 ? 2 : 4;
        const ctx = Math.max(...c.members.map(([p0, n]) => p0 + n));
        const perSeq = Math.ceil(ctx / c.bs);
        // Pool: the shared blocks, then each member's own blocks after them.
        const poolBlocks = c.shared + c.members.length * perSeq;
        const blockStride = c.nkv * c.bs * c.hd * eb;
        const kc = alloc(poolBlocks * blockStride);
        const vc = alloc(poolBlocks * blockStride);
        for (const p of [kc, vc]) {
          const n = (poolBlocks * blockStride) / eb;
          if (c.bf16) {
            const b = new Uint16Array(memory.buffer, p, n);
            for (let i = 0; i < n; i++) b[i] = f32ToBf16(rand() * 4);
          } else f32(p, n).set(Float32Array.from({ length: n }, () => rand() * 4));
        }
        const tables = c.members.map((_, m) => {
          const t = alloc(perSeq * 4);
          const ids = new Int32Array(memory.buffer, t, perSeq);
          for (let b = 0; b < perSeq; b++) {
            ids[b] = b < c.shared ? b : c.shared + m * perSeq + b;
          }
          return t;
        });
        // The members' rows in one (rows, nh hd) batch, as a micro-batch holds them.
        const T = c.members.reduce((s, [, n]) => s + n, 0);
        const qStride = (c.nh + 2 * c.nkv) * c.hd;
        const oStride = c.nh * c.hd;
        const q = alloc(T * qStride * 4);
        f32(q, T * qStride).set(Float32Array.from({ length: T * qStride }, () => rand() * 4));
        const want = alloc(T * oStride * 4);
        const got = alloc(T * oStride * 4);
        const scratch = alloc(fn("attention_scratch_bytes")(c.nh, c.nkv, c.hd));
        const state = alloc(T * c.nh * 8);
        const rows = alloc(T * 4);
        const rowIds = new Int32Array(memory.buffer, rows, T);
        // Listed in reverse: the shared pass must address each row by its id, not its order.
        for (let i = 0; i < T; i++) rowIds[i] = T - 1 - i;
        const scale = 1 / Math.sqrt(c.hd);
        const dims = [c.nh, c.nkv, c.hd, kc, vc];
        const keys = c.shared * c.bs;
        fn("attention_state")(
          q,
          qStride,
          got,
          oStride,
          rows,
          T,
          keys,
          0,
          keys,
          ...dims,
          tables[0],
          c.bs,
          blockStride,
          c.bf16 ?? 0,
          scale,
          scratch,
          state,
          0,
          1,
        );
        let row = 0;
        for (const [m, [p0, n]] of c.members.entries()) {
          const qm = q + row * qStride * 4;
          const at = row * oStride * 4;
          const tail = [tables[m], c.bs, blockStride, c.bf16 ?? 0, scale, scratch];
          fn("attention")(qm, qStride, want + at, oStride, n, p0, ...dims, ...tail);
          fn("attention_state")(
            qm,
            qStride,
            got + at,
            oStride,
            0,
            n,
            p0,
            keys,
            p0 + n,
            ...dims,
            ...tail,
            state + row * c.nh * 8,
            1,
            0,
          );
          row += n;
        }
        // The same tiles in the same order with the same operations per row: which other rows
        // share a query tile changes no row's sums, so the results are bit-identical.
        const a = f32(got, T * oStride);
        expect(a.every(Number.isFinite)).toBe(true);
        expect(a).toEqual(f32(want, T * oStride));
      });
    }

    it(`${file}: one sequence split at a key tile: partial, then resumed == one pass`, () => {
      top = Math.ceil((exports.heap_base as () => number)() / 64) * 64;
      const [nh, nkv, hd, bs, T, p0] = [12, 4, 64, 64, 20, 180];
      const r = createRng(3);
      const blockStride = nkv * bs * hd * 4;
      const blocks = Math.ceil((p0 + T) / bs);
      const kc = alloc(blocks * blockStride);
      const vc = alloc(blocks * blockStride);
      for (const p of [kc, vc])
        f32(p, (blocks * blockStride) / 4).forEach((_, i, a) => {
          a[i] = r() * 2 - 1;
        });
      const table = alloc(blocks * 4);
      new Int32Array(memory.buffer, table, blocks).forEach((_, i, a) => {
        a[i] = blocks - 1 - i;
      });
      const qStride = nh * hd;
      const q = alloc(T * qStride * 4);
      f32(q, T * qStride).forEach((_, i, a) => {
        a[i] = r() * 2 - 1;
      });
      const want = alloc(T * qStride * 4);
      const got = alloc(T * qStride * 4);
      const scratch = alloc(fn("attention_scratch_bytes")(nh, nkv, hd));
      const state = alloc(T * nh * 8);
      const dims = [nh, nkv, hd, kc, vc, table, bs, blockStride, 0, 1 / Math.sqrt(hd), scratch];
      fn("attention")(q, qStride, want, qStride, T, p0, ...dims);
      // Keys [0, 128) with every query's causal limit (all lie past 128), then [128, p0 + T).
      fn("attention_state")(q, qStride, got, qStride, 0, T, p0, 0, 128, ...dims, state, 0, 1);
      fn("attention_state")(q, qStride, got, qStride, 0, T, p0, 128, p0 + T, ...dims, state, 1, 0);
      expect(f32(got, T * qStride)).toEqual(f32(want, T * qStride));
    });
  }
});

describe("prefixGroups: which segments share a pass", () => {
  const t = (...ids: number[]) => Int32Array.from(ids);
  it("groups tables with common leading blocks wholly below every member's start", () => {
    // Three on blocks 0 1 2 past 192; one that starts inside block 2 shares 2 of them (its own
    // keys in block 2 need the mask) and is left out, since 3 x (3 - 1) saves more than 2 x 3.
    const tables = [t(0, 1, 2, 5), t(0, 1, 2, 6), t(0, 1, 2, 7), t(0, 1, 2), t(9, 10)];
    const starts = [200, 192, 250, 130, 100];
    expect(prefixGroups(tables, starts, 64)).toEqual([{ members: [0, 1, 2], blocks: 3 }]);
  });
  it("a longer common prefix for fewer members loses to a shorter one for more", () => {
    const tables = [t(0, 1, 2, 3, 8), t(0, 1, 2, 3, 9), t(0, 4), t(0, 5), t(0, 6)];
    const starts = [300, 300, 70, 70, 70];
    // blocks 4: 1 x 4 saved; blocks 1: 4 x 1 saved: the tie keeps the first (longer) found.
    expect(prefixGroups(tables, starts, 64)).toEqual([
      { members: [0, 1], blocks: 4 },
      { members: [2, 3, 4], blocks: 1 },
    ]);
    const more = [...tables, t(0, 7)];
    expect(prefixGroups(more, [...starts, 64], 64)).toEqual([
      { members: [0, 1, 2, 3, 4, 5], blocks: 1 },
    ]);
  });
  it("no group for lone items, starts inside the first block, or different first blocks", () => {
    expect(prefixGroups([t(0, 1)], [100], 64)).toEqual([]);
    expect(prefixGroups([t(0, 1), t(0, 2)], [63, 100], 64)).toEqual([]);
    expect(prefixGroups([t(0, 1), t(3, 1)], [100, 100], 64)).toEqual([]);
    expect(prefixGroups([t(0, 1), t(0, 2)], [100, 100], 128)).toEqual([]);
  });
});

/** A sequence: all its tokens and its block table. */
interface Seq {
  tokens: Int32Array;
  table: Int32Array;
}

/**
 * Document A (200 tokens: blocks 0-2 full, 3 partial) read by 16 sequences, each with its own copy
 * of block 3 (copy-on-write) and suffix; 3 sequences that share only A's first 128 tokens (blocks
 * 0 and 1), then diverge; document E (64 tokens, one block) read by 2; one lone sequence. Step 1
 * prefills A, E and the lone one; step 2 gives every reader a piece (1 to 70 tokens, 141 rows in
 * all: two micro-batches) while the lone one decodes; steps 3 and 4 decode everyone (starts differ).
 */
function plan(vocab: number) {
  const docA = suiteTokens(200, vocab, 11);
  const docE = suiteTokens(64, vocab, 12);
  let next = 40; // own blocks from here
  const own = () => next++;
  const seqs: Seq[] = [];
  const reader = (
    doc: Int32Array,
    keep: number,
    prefixBlocks: number[],
    n: number,
    seed: number,
  ) => {
    const tokens = new Int32Array(keep + n + 2);
    tokens.set(doc.subarray(0, keep));
    tokens.set(suiteTokens(n + 2, vocab, seed), keep);
    const blocks = Math.ceil(tokens.length / 64);
    const table = Int32Array.from({ length: blocks }, (_, b) =>
      b < prefixBlocks.length ? prefixBlocks[b] : own(),
    );
    seqs.push({ tokens, table });
    return { tokens, table, keep, n };
  };
  const pieceLens = [1, 1, 2, 1, 5, 1, 1, 30, 1, 3, 1, 1, 70, 1, 2, 1];
  const aReaders = pieceLens.map((n, i) => reader(docA, 200, [0, 1, 2], n, 100 + i));
  const bReaders = [10, 1, 4].map((n, i) => reader(docA, 128, [0, 1], n, 200 + i));
  const eReaders = [3, 1].map((n, i) => reader(docE, 64, [20], n, 300 + i));
  const lone: Seq = { tokens: suiteTokens(43, vocab, 13), table: Int32Array.of(30) };
  seqs.push(lone);
  const docItem = (tokens: Int32Array, table: Int32Array): StepItem => ({
    tokens,
    start: 0,
    table,
    logits: false,
  });
  const readers = [...aReaders, ...bReaders, ...eReaders];
  const piece = (s: (typeof readers)[number], from: number, n: number): StepItem => ({
    tokens: s.tokens.subarray(from, from + n),
    start: from,
    table: s.table,
    logits: true,
  });
  const loneAt = (p: number): StepItem => ({
    tokens: lone.tokens.subarray(p, p + 1),
    start: p,
    table: lone.table,
    logits: true,
  });
  const steps: StepItem[][] = [
    [
      docItem(docA, Int32Array.of(0, 1, 2, 3)),
      docItem(docE, Int32Array.of(20)),
      docItem(lone.tokens.subarray(0, 40), lone.table),
    ],
    [...readers.map((s) => piece(s, s.keep, s.n)), loneAt(40)],
    [...readers.map((s) => piece(s, s.keep + s.n, 1)), loneAt(41)],
    [...readers.map((s) => piece(s, s.keep + s.n + 1, 1)), loneAt(42)],
  ];
  // Before step 2: each A reader's block 3 becomes a copy of A's partial block 3.
  const copies = aReaders.map((s) => [3, s.table[3]] as const);
  // Rows that attend in a group pass in step 2: the 128-row micro-batch cut falls inside the
  // first B reader's piece: its first 6 rows share their micro-batch with no other B reader (the
  // A readers share 3 blocks; the 2 in common are not worth a group with it), its last 4 group
  // with the other B readers in the next micro-batch, as do the E readers.
  const rows2 = pieceLens.reduce((s, n) => s + n, 0) + (15 - 6) + 4;
  return { seqs, steps, copies, readers: readers.length, rows2, blocks: next };
}

/**
 * Each sequence's logits where the plan asks for them, computed alone on `rt`: from position 0, one
 * forward up to the first such end, then one per further end (the plan's decode tokens).
 */
async function aloneLogits(
  rt: Runtime,
  p: ReturnType<typeof plan>,
): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [q, seq] of p.seqs.entries()) {
    const ends = p.steps.flatMap((items) =>
      items
        .filter((it) => it.logits && it.table === seq.table)
        .map((it) => it.start + it.tokens.length),
    );
    rt.truncate(0);
    let at = 0;
    for (const end of ends) {
      out.set(`${q}:${end}`, await rt.forward(seq.tokens.subarray(at, end)));
      at = end;
    }
  }
  return out;
}

describe("wasm paged runtime: shared-prefix attention in batched steps", () => {
  const p = plan(UNEVEN_KV.vocab!);
  // The TS reference runtime's logits, the same for every case below (it keeps K/V in f32).
  let reference: Promise<Map<string, Float32Array>> | null = null;
  const referenceLogits = async () => {
    reference ??= loadTestModel(UNEVEN_KV).then(async (model) => {
      const ref = await createReferenceRuntime({ model, maxPositions: 320 });
      return aloneLogits(ref, p).finally(() => ref.close());
    });
    return reference;
  };
  for (const [threads, kvDtype] of [
    [1, "f32"],
    [2, "f32"],
    [1, "bf16"],
    [2, "bf16"],
  ] as const) {
    it(`groups of 2 to 16 over 1 to 3 shared blocks == each sequence alone (${threads} thread(s), ${kvDtype} KV)`, async () => {
      const model = await loadTestModel(UNEVEN_KV);
      const rt = await createPagedWasmRuntime({
        model,
        threads,
        kvDtype,
        maxPositions: 320,
        poolPositions: p.blocks * 64,
      });
      const got: (Float32Array | null)[][] = [];
      const grouped: number[] = [];
      try {
        for (const [s, items] of p.steps.entries()) {
          if (s === 1) await rt.copyBlocks(p.copies);
          await rt.setProfiling(true);
          got.push(await rt.step(items));
          grouped.push((await rt.profile()).sharedPrefixRows);
        }
      } finally {
        await rt.close();
      }
      // Step 1 has nothing to share; then the three groups (16, 3, 2 members) each step.
      expect(grouped).toEqual([0, p.rows2, p.readers, p.readers]);
      const single = await createWasmRuntime({ model, threads, kvDtype, maxPositions: 320 });
      const want = await aloneLogits(single, p).finally(() => single.close());
      const ref = await referenceLogits();
      // bf16 KV: both wasm runtimes round K/V alike, the reference keeps f32 (the suite's bound).
      const same = INVARIANT_TOLERANCE[kvDtype];
      const vsRef = kvDtype === "f32" ? 1e-5 : INVARIANT_TOLERANCE.bf16;
      let checked = 0;
      for (const [s, items] of p.steps.entries()) {
        for (const [i, item] of items.entries()) {
          if (!item.logits) {
            expect(got[s][i]).toBeNull();
            continue;
          }
          const key = `${p.seqs.findIndex((q) => q.table === item.table)}:${item.start + item.tokens.length}`;
          const logits = got[s][i]!;
          expect(relativeError(logits, want.get(key)!)).toBeLessThanOrEqual(same);
          expect(relativeError(logits, ref.get(key)!)).toBeLessThanOrEqual(vsRef);
          checked++;
        }
      }
      expect(checked).toBe(3 * (p.readers + 1));
    });
  }
});
