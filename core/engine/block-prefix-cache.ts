// Prefix sharing between the sequences of one batched runtime: the first tier of the prefix cache.
//
// A finished chunk's blocks are named in an index by the chunk's chain key (core/kv/chain-key.ts:
// the same keys the snapshots use, so the tenant salt is part of them and blocks are never shared
// across tenants unless their salts are). A later sequence whose prompt has that chain of chunks
// takes the blocks by reference (no copy, no compute: many questions about one document read the
// document's KV from the same blocks). Named blocks whose sequences have all ended stay cached
// until the pool needs them (kv-blocks.ts); a sequence that would write into a named block copies
// it first (scheduler.ts reserve).
//
// With a snapshot cache as `next`, restore continues from the store where the blocks end (and
// names what it imported, so the next sequence gets it from memory), and save persists to both.

import { toHex } from "../hash/hex.ts";
import type { KvBlockPool } from "./kv-blocks.ts";
import { PagedSequence } from "./paged-sequence.ts";
import type { PrefixCache, PrefixCacheRestore } from "./prefix-cache.ts";
import type { Runtime } from "./runtime.ts";

/** The chunks' blocks by chain key (hex), for one pool. */
export class BlockPrefixIndex {
  readonly pool: KvBlockPool;
  readonly #entries = new Map<string, number[]>();

  constructor(pool: KvBlockPool) {
    this.pool = pool;
  }

  get size(): number {
    return this.#entries.size;
  }

  lookup(key: string): readonly number[] | undefined {
    return this.#entries.get(key);
  }

  /** Names `blocks` (held by a sequence now) as the chunk `key`; a known key is left as it is. */
  add(key: string, blocks: readonly number[]): void {
    if (this.#entries.has(key) || blocks.some((b) => this.pool.isNamed(b))) return;
    this.#entries.set(key, [...blocks]);
    for (const b of blocks) this.pool.name(b, () => this.#drop(key));
  }

  /** One of the entry's blocks was given away: the chunk is no longer whole; forget it. */
  #drop(key: string): void {
    const blocks = this.#entries.get(key);
    this.#entries.delete(key);
    for (const b of blocks ?? []) this.pool.unname(b);
  }
}

export interface BlockPrefixCacheOptions {
  index: BlockPrefixIndex;
  /** Chunk size in tokens: a multiple of the pool's block size (the snapshot chunk when tiered). */
  chunkTokens: number;
  /** Chain keys of the first `chunks` chunks of `tokens` (the tenant's context bound in). */
  chainKeys(tokens: Int32Array, chunks: number): Promise<Uint8Array[]>;
  /** The next tier (a snapshot cache), if any. */
  next?: PrefixCache;
}

export function createBlockPrefixCache(opts: BlockPrefixCacheOptions): PrefixCache {
  const { index, chunkTokens: C, next } = opts;
  const B = index.pool.blockTokens;
  if (C % B !== 0) {
    throw new Error(`assertion failed: chunk of ${C} tokens is not whole blocks of ${B}`);
  }

  async function restore(
    runtime: Runtime,
    tokens: Int32Array,
    signal?: AbortSignal,
  ): Promise<PrefixCacheRestore> {
    if (!(runtime instanceof PagedSequence)) {
      return next ? next.restore(runtime, tokens, signal) : { restoredTokens: 0 };
    }
    const chunks = Math.floor(tokens.length / C);
    const from = runtime.position;
    const keys = await opts.chainKeys(tokens, chunks);
    for (let i = from / C; i < chunks; i++) {
      const blocks = index.lookup(toHex(keys[i]));
      if (!blocks) break;
      runtime.attach(blocks);
    }
    if (next && runtime.position < chunks * C) {
      const at = runtime.position;
      const { restoredTokens } = await next.restore(runtime, tokens, signal);
      for (let s = at; s < at + restoredTokens; s += C) {
        index.add(toHex(keys[s / C]), runtime.blocksOf(s, s + C));
      }
    }
    return { restoredTokens: runtime.position - from };
  }

  async function save(
    runtime: Runtime,
    tokens: Int32Array,
    start: number,
    end: number,
  ): Promise<void> {
    if (runtime instanceof PagedSequence) {
      const keys = await opts.chainKeys(tokens, end / C);
      index.add(toHex(keys[end / C - 1]), runtime.blocksOf(start, end));
    }
    await next?.save(runtime, tokens, start, end);
  }

  return {
    chunkTokens: C,
    restore,
    save,
    flush: async () => {
      await next?.flush();
    },
  };
}
