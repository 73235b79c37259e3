// The batched Runtime seam (ARCHITECTURE.md, "Runtime"): a runtime that holds the KV of many
// sequences in one pool of fixed-size blocks and runs one forward over a batch of them.
//
// The runtime keeps NO per-sequence state. Like vLLM's model runner it is handed, per step and per
// sequence, the block table (which physical blocks hold positions [0, start + tokens.length), in
// order) and the new tokens; it writes their K/V at
//   slot(p) = table[floor(p / blockTokens)] * blockTokens + p % blockTokens
// and attends each sequence's queries over its own table. Who owns which block, reference counts,
// prefix sharing, copy-on-write and preemption live above it in core (kv-blocks.ts,
// scheduler.ts), written once for every runtime.
//
// Implemented by the reference runtime (the oracle) and the wasm runtime.

import type { KvDtype } from "../kv/layout.ts";
import type { ModelConfig } from "../model/config-types.ts";
import type { RuntimeOptions } from "./registry.ts";
import type { RuntimeInfo } from "./runtime.ts";

export interface PagedRuntimeInfo extends RuntimeInfo {
  /** Positions per KV block. */
  blockTokens: number;
  /** Blocks in the pool (block ids are 0 .. totalBlocks - 1). */
  totalBlocks: number;
  /**
   * `maxPositions` is the most positions ONE sequence may reach (its context limit);
   * `kvCapacityBytes` is the whole pool's.
   */
  maxPositions: number;
}

/** One sequence's share of a step. */
export interface StepItem {
  /** New tokens at positions [start, start + tokens.length): a prefill piece or one decode token. */
  tokens: Int32Array;
  /** Positions [0, start) are already in the blocks of `table`. */
  start: number;
  /** Physical blocks for positions [0, start + tokens.length), ceil(end / blockTokens) of them. */
  table: Int32Array;
  /** Whether to return the logits (vocab floats) of this item's last token. */
  logits: boolean;
  /**
   * The caller reads this item's logits before the runtime's next step: they may be a view of a
   * buffer that step reuses, instead of a copy (Runtime's ForwardOptions.transientLogits).
   */
  transientLogits?: boolean;
}

export interface PagedRuntime {
  readonly config: ModelConfig;
  readonly info: PagedRuntimeInfo;

  /**
   * One forward over every item: rows of all items go through the projections together; attention
   * runs per item over its table (causal within the item, everything before `start` visible).
   * Resolves with one entry per item: its last token's logits when `logits`, else null. A step
   * that rejects (CancelledError when `signal` fires between layers, or an error) may have written
   * K/V into the items' slots at positions >= start, nothing else: callers treat those positions
   * as not held. Items must not write to the same slot; a table may share blocks with other
   * tables only below its `start` (copy-on-write is the caller's: copyBlocks first).
   */
  step(items: readonly StepItem[], signal?: AbortSignal): Promise<(Float32Array | null)[]>;

  /** Copy whole blocks: for each pair, block `to` becomes a copy of block `from` (copy-on-write). */
  copyBlocks(pairs: ReadonlyArray<readonly [from: number, to: number]>): Promise<void>;

  /**
   * The KV of positions [start, end) of the sequence whose blocks are `table`, in the snapshot
   * layout of core/kv/layout.ts, in `info.kv.dtype`.
   */
  exportKv(table: Int32Array, start: number, end: number): Promise<Uint8Array>;

  /**
   * Write `tokens` positions of snapshot-layout KV (dtype `dtype`, converted to the cache's) at
   * positions [start, start + tokens) of the sequence whose blocks are `table`.
   */
  importKv(
    table: Int32Array,
    start: number,
    bytes: Uint8Array,
    tokens: number,
    dtype: KvDtype,
  ): Promise<void>;

  close(): Promise<void>;
}

export interface PagedRuntimeOptions extends RuntimeOptions {
  /** Positions per block (default: the runtime's own, stated in its info). */
  blockTokens?: number;
  /**
   * Positions the whole pool holds (rounded up to whole blocks); default `maxPositions`. Memory
   * is taken as blocks are first used, up to this.
   */
  poolPositions?: number;
}

/** The slot (physical row) of position p in a block table. */
export function slotOf(table: Int32Array, blockTokens: number, p: number): number {
  return table[Math.floor(p / blockTokens)] * blockTokens + (p % blockTokens);
}
