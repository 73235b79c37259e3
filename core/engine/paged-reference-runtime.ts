// The batched reference runtime (paged-runtime.ts): the oracle for batching. Each step stacks the
// rows of every item and runs reference-layers.ts' forwardRows over them, each item's rows
// attending over its own block table; since every row is computed exactly as the single-sequence
// reference runtime computes it (same arithmetic, same order), a sequence's logits in a batch equal
// its logits alone bit for bit, and the scheduler's tests can demand equality.
//
// The pool: per layer K and V, each (kv_head, slots, head_dim) with slot = block * B + offset,
// grown by doubling up to totalBlocks * B slots as higher blocks are first written.

import { assert, InvalidInputError, LimitError } from "../errors.ts";
import { type KvDtype, kvPayloadBytes } from "../kv/layout.ts";
import type { ModelConfig } from "../model/config-types.ts";
import { computeRope, type RopeParams } from "../model/rope.ts";
import { isTokenId } from "../tokenizer/token-id.ts";
import {
  type PagedRuntime,
  type PagedRuntimeInfo,
  type PagedRuntimeOptions,
  type StepItem,
  slotOf,
} from "./paged-runtime.ts";
import {
  forwardRows,
  growKvRows,
  importablePayload,
  type KvRows,
  layerCheckpoint,
  type RowSegment,
  readKvRows,
  rowLogits,
  type Weights,
  writeKvRows,
} from "./reference-layers.ts";
import { referenceInfo, referenceOptions, referenceWeights } from "./reference-runtime.ts";

/** Positions per block when the caller does not say (vLLM's default). */
export const REFERENCE_BLOCK_TOKENS = 16;

class PagedReferenceRuntime implements PagedRuntime {
  readonly config: ModelConfig;
  readonly info: PagedRuntimeInfo;
  readonly #weights: Weights;
  readonly #rope: RopeParams | null;
  readonly #release: () => void;
  readonly #kv: KvRows = { k: [], v: [], capacity: 0 };
  #busy = false;
  #closed = false;

  constructor(config: ModelConfig, weights: Weights, info: PagedRuntimeInfo, release: () => void) {
    this.config = config;
    this.#weights = weights;
    this.info = info;
    this.#release = release;
    this.#rope = config.ropeScaling.ropeType === "dynamic" ? null : computeRope(config);
  }

  async step(items: readonly StepItem[], signal?: AbortSignal): Promise<(Float32Array | null)[]> {
    return this.#enter(async () => {
      if (items.length === 0) throw new InvalidInputError("step: no items");
      const c = this.config;
      const B = this.info.blockTokens;
      const H = c.hiddenSize;
      let rows = 0;
      for (const it of items) {
        this.#checkItem(it);
        rows += it.tokens.length;
      }
      for (const it of items) this.#growFor(it.table);
      const w = this.#weights;
      const x = new Float32Array(rows * H);
      const segments: RowSegment[] = [];
      let row0 = 0;
      for (const it of items) {
        const T = it.tokens.length;
        for (let t = 0; t < T; t++) {
          const id = it.tokens[t];
          x.set(w.embed.subarray(id * H, (id + 1) * H), (row0 + t) * H);
        }
        segments.push({ row0, T, start: it.start, slot: (p) => slotOf(it.table, B, p) });
        row0 += T;
      }
      await forwardRows(c, w, this.#rope, x, segments, {
        ...this.#kv,
        dtype: this.info.kv.dtype,
        checkpoint: layerCheckpoint(signal),
      });
      return segments.map((seg, i) =>
        items[i].logits ? rowLogits(c, w, x, seg.row0 + seg.T - 1) : null,
      );
    });
  }

  async copyBlocks(pairs: ReadonlyArray<readonly [number, number]>): Promise<void> {
    return this.#enter(async () => {
      const B = this.info.blockTokens;
      const hd = this.config.headDim;
      for (const [from, to] of pairs) {
        this.#checkBlock(from);
        this.#checkBlock(to);
      }
      this.#growFor(pairs.flat());
      const cap = this.#kv.capacity;
      for (const cache of [...this.#kv.k, ...this.#kv.v]) {
        for (let h = 0; h < this.config.numKeyValueHeads; h++) {
          for (const [from, to] of pairs) {
            const src = (h * cap + from * B) * hd;
            cache.copyWithin((h * cap + to * B) * hd, src, src + B * hd);
          }
        }
      }
    });
  }

  async exportKv(table: Int32Array, start: number, end: number): Promise<Uint8Array> {
    return this.#enter(async () => {
      const B = this.info.blockTokens;
      if (!(Number.isInteger(start) && Number.isInteger(end) && 0 <= start && start <= end)) {
        throw new InvalidInputError(`exportKv(${start}, ${end}): not a position range`);
      }
      this.#checkTable(table, end);
      this.#growFor(table);
      return readKvRows(this.#kv, this.info.kv, (p) => slotOf(table, B, p), start, end - start);
    });
  }

  async importKv(
    table: Int32Array,
    start: number,
    bytes: Uint8Array,
    tokens: number,
    dtype: KvDtype,
  ): Promise<void> {
    return this.#enter(async () => {
      const B = this.info.blockTokens;
      const payload = importablePayload(this.info.kv, bytes, tokens, dtype);
      if (!Number.isInteger(start) || start < 0) {
        throw new InvalidInputError(`importKv: start ${start} is not a position`);
      }
      this.#checkTable(table, start + tokens);
      this.#growFor(table);
      writeKvRows(this.#kv, this.info.kv, (p) => slotOf(table, B, p), start, tokens, payload);
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#release();
    this.#kv.k = [];
    this.#kv.v = [];
  }

  async #enter<T>(fn: () => Promise<T>): Promise<T> {
    assert(!this.#closed, "the runtime is closed");
    assert(!this.#busy, "one call at a time on a paged runtime");
    this.#busy = true;
    try {
      return await fn();
    } finally {
      this.#busy = false;
    }
  }

  #checkItem(it: StepItem): void {
    const V = this.config.vocabSize;
    if (it.tokens.length === 0) throw new InvalidInputError("step: an item has no tokens");
    for (const t of it.tokens) {
      if (!isTokenId(t, V)) throw new InvalidInputError(`token id ${t} is outside [0, ${V})`);
    }
    if (!Number.isInteger(it.start) || it.start < 0) {
      throw new InvalidInputError(`step: start ${it.start} is not a position`);
    }
    const end = it.start + it.tokens.length;
    if (end > this.info.maxPositions) {
      throw new LimitError(`${end} positions exceed this runtime's ${this.info.maxPositions}`);
    }
    this.#checkTable(it.table, end);
  }

  #checkTable(table: Int32Array, end: number): void {
    const need = Math.ceil(end / this.info.blockTokens);
    if (table.length < need) {
      throw new InvalidInputError(
        `block table of ${table.length} blocks cannot hold ${end} positions (${need} needed)`,
      );
    }
    for (const b of table.subarray(0, need)) this.#checkBlock(b);
  }

  #checkBlock(b: number): void {
    if (!Number.isInteger(b) || b < 0 || b >= this.info.totalBlocks) {
      throw new InvalidInputError(`block ${b} is not in the pool of ${this.info.totalBlocks}`);
    }
  }

  /** Every slot of the blocks `blocks` names exists. */
  #growFor(blocks: ArrayLike<number>): void {
    let top = -1;
    for (let i = 0; i < blocks.length; i++) top = Math.max(top, blocks[i]);
    this.#grow((top + 1) * this.info.blockTokens);
  }

  /** Slots [0, slots) exist (capacity doubles, capped at the pool). */
  #grow(slots: number): void {
    if (slots <= this.#kv.capacity) return;
    const all = this.info.totalBlocks * this.info.blockTokens;
    const capacity = Math.min(all, Math.max(slots, this.#kv.capacity * 2, 256));
    growKvRows(this.#kv, this.info.kv, capacity, this.#kv.capacity);
  }
}

/** The reference runtime in batched form (RuntimeFactory.createPaged). */
export async function createPagedReferenceRuntime(
  options: PagedRuntimeOptions,
): Promise<PagedRuntime> {
  const { model } = options;
  const c = model.config;
  const opts = referenceOptions(options);
  const blockTokens = options.blockTokens ?? REFERENCE_BLOCK_TOKENS;
  if (!Number.isInteger(blockTokens) || blockTokens < 1) {
    throw new InvalidInputError(`block size must be a positive integer, not ${blockTokens}`);
  }
  const poolPositions = options.poolPositions ?? opts.maxPositions;
  if (!Number.isInteger(poolPositions) || poolPositions < 1) {
    throw new InvalidInputError(`pool positions must be a positive integer, not ${poolPositions}`);
  }
  const totalBlocks = Math.ceil(poolPositions / blockTokens);
  const { weights, release } = await referenceWeights(options, opts);
  const info = referenceInfo(c, opts, weights);
  return new PagedReferenceRuntime(
    c,
    weights,
    {
      ...info,
      blockTokens,
      totalBlocks,
      kvCapacityBytes: kvPayloadBytes(info.kv, totalBlocks * blockTokens),
    },
    release,
  );
}
