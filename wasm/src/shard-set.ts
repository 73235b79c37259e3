// What the runtime drives: its shards, either one in this thread (LocalShards: no workers, no
// node: imports, so it runs in workerd and browsers) or one per worker thread (WorkerShards).
import type { MatrixKey, VectorKey } from "./shard.mjs";

export interface ShardSet {
  readonly count: number;
  setVector(shard: number, key: VectorKey, layer: number, data: Float32Array): Promise<void>;
  /** `data` must own its buffer (it may be transferred to a worker). */
  setMatrix(
    shard: number,
    key: MatrixKey,
    layer: number,
    rowOffset: number,
    data: Float32Array | Uint16Array,
  ): Promise<void>;
  setRope(invFreq: Float64Array, scaling: number): Promise<void>;
  /**
   * One micro-batch: `input` (T, hidden) embeddings of the rows that `step` (shard.mjs stepLayout,
   * its used prefix) describes: positions, KV slots, sequence segments and their block tables.
   * Writes the rows' K/V into their slots and leaves the last layer's residuals for logits().
   * Rejects with CancelledError when `signal` fires (checked between layers).
   */
  forward(input: Float32Array, step: Int32Array, signal?: AbortSignal): Promise<void>;
  /**
   * The whole vocabulary's logits of `rows` (rows of the last forward, at most LOGIT_ROWS):
   * (rows.length, vocab) f32. A copy; with `view`, where the set can, a view of its logits buffer
   * that the next logits() call overwrites.
   */
  logits(rows: Int32Array, view?: boolean): Promise<Float32Array>;
  /** Each shard's KV for positions [start, end) of the sequence in `table` (shard.mjs exportKv layout). */
  exportKv(table: Int32Array, start: number, end: number): Promise<Uint8Array[]>;
  importKv(parts: Uint8Array[], table: Int32Array, start: number, n: number): Promise<void>;
  /** In every shard, block `to` becomes a copy of block `from`, pair by pair: (from, to) flat. */
  copyBlocks(pairs: Int32Array): Promise<void>;
  /** Per-phase profiling on (zeroed) or off (shard.mjs PROFILE_PHASES). */
  setProfiling(on: boolean): Promise<void>;
  /** Each shard's profile since it was turned on: ms per phase, then the forwards' total ms. */
  profile(): Promise<Float64Array[]>;
  /** Bytes of WebAssembly memory each shard holds now. */
  memoryBytes(): Promise<number[]>;
  close(): Promise<void>;
}
