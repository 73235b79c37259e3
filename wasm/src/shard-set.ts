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
   * One micro-batch: `input` (T, hidden) embeddings at positions [p0, p0 + T). Resolves with the
   * whole vocabulary's logits of the last row when `wantLogits`, else null. Rejects with
   * CancelledError when `signal` fires (checked between layers).
   */
  forward(
    p0: number,
    input: Float32Array,
    T: number,
    wantLogits: boolean,
    signal?: AbortSignal,
  ): Promise<Float32Array | null>;
  /** Each shard's KV for [start, end) (its heads; shard.mjs exportKv layout). */
  exportKv(start: number, end: number): Promise<Uint8Array[]>;
  importKv(parts: Uint8Array[], start: number, n: number): Promise<void>;
  /** Per-phase profiling on (zeroed) or off (shard.mjs PROFILE_PHASES). */
  setProfiling(on: boolean): Promise<void>;
  /** Each shard's profile since it was turned on: ms per phase, then the forwards' total ms. */
  profile(): Promise<Float64Array[]>;
  /** Bytes of WebAssembly memory each shard holds now. */
  memoryBytes(): Promise<number[]>;
  close(): Promise<void>;
}
