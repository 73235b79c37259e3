// The seam between the sequence driver and KV snapshots (core/kv). The driver asks the cache to
// restore the longest stored prefix before prefill, and hands it each finished chunk to persist.
// Implementations decide keys, format, encryption and stores; the driver knows none of that.

import type { Runtime } from "./runtime.ts";

export interface PrefixCacheRestore {
  /** Prompt tokens this call imported from snapshots (a multiple of chunkTokens). */
  restoredTokens: number;
}

export interface PrefixCache {
  /** Snapshot chunk size in tokens; the driver prefills in chunks aligned to this. */
  readonly chunkTokens: number;

  /**
   * The runtime holds `tokens[0, runtime.position)` with its position at a chunk boundary (0, or
   * chunks restored or computed earlier): import the longest chain of stored chunks of `tokens`
   * that continues it. A chunk that fails any check is a miss (and is quarantined), never wrong KV.
   */
  restore(runtime: Runtime, tokens: Int32Array, signal?: AbortSignal): Promise<PrefixCacheRestore>;

  /**
   * The runtime has just computed prompt positions [start, end) (one whole chunk, end - start ===
   * chunkTokens). Export and persist them. May return before the upload finishes (uploads run
   * behind compute with bounded memory); errors are logged, never thrown into the generation.
   */
  save(runtime: Runtime, tokens: Int32Array, start: number, end: number): Promise<void>;

  /** Wait for every pending upload (before a function returns). */
  flush(): Promise<void>;
}
