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
//
// Chunks a sequence is about to compute are claimed: another sequence of the same tenant whose
// prompt has them waits for each to be finished and takes its blocks, instead of computing the same
// chunk at the same time. A claim ends when the chunk is saved or its sequence ends (`abandon`,
// called when the request ends however it ends): the waiter then computes the rest itself.

import { CancelledError } from "../errors.ts";
import { toHex } from "../hash/hex.ts";
import type { KvBlockPool } from "./kv-blocks.ts";
import { PagedSequence } from "./paged-sequence.ts";
import type { PrefixCache, PrefixCacheRestore } from "./prefix-cache.ts";
import type { Runtime } from "./runtime.ts";

/** A chunk a sequence is computing now: others wanting it wait instead of computing it too. */
interface Pending {
  owner: PagedSequence;
  /** Settles when the chunk is named or its owner gives up (ended, failed, cancelled). */
  settled: Promise<void>;
  settle(): void;
}

/** The chunks' blocks by chain key (hex), for one pool. */
export class BlockPrefixIndex {
  readonly pool: KvBlockPool;
  readonly #entries = new Map<string, number[]>();
  readonly #pending = new Map<string, Pending>();

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
    this.#pending.get(key)?.settle();
    if (this.#entries.has(key) || blocks.some((b) => this.pool.isNamed(b))) return;
    this.#entries.set(key, [...blocks]);
    for (const b of blocks) this.pool.name(b, () => this.#drop(key));
  }

  /** `owner` is about to compute these chunks (unless another sequence already is). */
  claim(owner: PagedSequence, keys: readonly string[]): void {
    for (const key of keys) {
      if (this.#entries.has(key) || this.#pending.has(key)) continue;
      let settle = () => {};
      const settled = new Promise<void>((resolve) => {
        settle = () => {
          if (this.#pending.get(key) === entry) this.#pending.delete(key);
          resolve();
        };
      });
      const entry: Pending = { owner, settled, settle };
      this.#pending.set(key, entry);
    }
  }

  /** Another sequence's claim on `key`, if there is one (own claims do not count). */
  claimedByOther(key: string, seq: PagedSequence): Promise<void> | undefined {
    const p = this.#pending.get(key);
    return p && p.owner !== seq ? p.settled : undefined;
  }

  /** `owner` ended: whatever it claimed and did not finish is free for others to compute. */
  abandon(owner: PagedSequence): void {
    for (const p of [...this.#pending.values()]) if (p.owner === owner) p.settle();
  }

  /** One of the entry's blocks was given away: the chunk is no longer whole; forget it. */
  #drop(key: string): void {
    const blocks = this.#entries.get(key);
    this.#entries.delete(key);
    for (const b of blocks ?? []) this.pool.unname(b);
  }
}

/** Resolves when `p` settles; rejects with CancelledError when `signal` fires first. */
function untilSettled(p: Promise<void>, signal?: AbortSignal): Promise<void> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(new CancelledError());
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => reject(new CancelledError());
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    });
  });
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
    const keys = (await opts.chainKeys(tokens, chunks)).map(toHex);
    for (let i = from / C; i < chunks; i++) {
      let blocks = index.lookup(keys[i]);
      // Another sequence of this tenant is computing this chunk now: wait for it rather than
      // compute it twice (many questions arriving at once about one new document).
      const other = blocks ? undefined : index.claimedByOther(keys[i], runtime);
      if (other) {
        await untilSettled(other, signal);
        blocks = index.lookup(keys[i]);
      }
      if (!blocks) break;
      runtime.attach(blocks);
    }
    if (next && runtime.position < chunks * C) {
      const at = runtime.position;
      const { restoredTokens } = await next.restore(runtime, tokens, signal);
      for (let s = at; s < at + restoredTokens; s += C) {
        index.add(keys[s / C], runtime.blocksOf(s, s + C));
      }
    }
    // What is still missing, this sequence computes next: others asking for it wait for it.
    index.claim(runtime, keys.slice(runtime.position / C));
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
