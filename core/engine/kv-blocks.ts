// Who owns which KV block of a PagedRuntime's pool (paged-runtime.ts), written once for every
// runtime: reference counts, a free list, and the blocks a prefix index remembers.
//
// A block is in one of three states:
//   used     refs > 0: in the table of at least one sequence (shared blocks have refs > 1)
//   cached   refs == 0 but named by a prefix-index entry (block-prefix-cache.ts): its KV is kept
//            for a later sequence with the same prefix, and is given away (least recently
//            released first) when the free list runs dry; the entry is told and forgets it
//   free     on the free list
// Lower ids are handed out first, so a runtime whose memory grows with the highest block used
// (the wasm runtime) takes no more memory than the peak in use.

import { assert } from "../errors.ts";

export interface KvBlockStats {
  total: number;
  used: number;
  cached: number;
  free: number;
}

export class KvBlockPool {
  readonly totalBlocks: number;
  readonly blockTokens: number;
  readonly #refs: Int32Array;
  /** Free ids, highest first, so pop() gives the lowest. */
  readonly #free: number[] = [];
  /** Blocks with refs == 0 that an index entry names, with the callback that drops the entry. */
  readonly #onEvict = new Map<number, () => void>();
  /** Cached blocks in the order they became evictable (Map keeps insertion order). */
  readonly #evictable = new Map<number, true>();

  constructor(totalBlocks: number, blockTokens: number) {
    assert(Number.isInteger(totalBlocks) && totalBlocks >= 1, "a pool has blocks");
    assert(Number.isInteger(blockTokens) && blockTokens >= 1, "a block holds positions");
    this.totalBlocks = totalBlocks;
    this.blockTokens = blockTokens;
    this.#refs = new Int32Array(totalBlocks);
    for (let b = totalBlocks - 1; b >= 0; b--) this.#free.push(b);
  }

  /** Blocks that allocate() could hand out now (free plus cached). */
  get available(): number {
    return this.#free.length + this.#evictable.size;
  }

  stats(): KvBlockStats {
    const free = this.#free.length;
    const cached = this.#evictable.size;
    return { total: this.totalBlocks, used: this.totalBlocks - free - cached, cached, free };
  }

  refs(block: number): number {
    return this.#refs[block];
  }

  /** Whether a prefix-index entry names `block` (its KV must not change: copy before writing). */
  isNamed(block: number): boolean {
    return this.#onEvict.has(block);
  }

  /**
   * `n` blocks with refs 1, or null (nothing taken) when fewer than n are free or cached. Cached
   * blocks are taken least recently released first; their index entries are dropped.
   */
  allocate(n: number): number[] | null {
    if (n > this.available) return null;
    const out: number[] = [];
    while (out.length < n) {
      const b = this.#free.pop();
      if (b !== undefined) {
        this.#refs[b] = 1;
        out.push(b);
        continue;
      }
      const evicted = this.#evictable.keys().next().value as number;
      const dropEntry = this.#forget(evicted);
      this.#refs[evicted] = 1; // before the entry unnames its other blocks
      out.push(evicted);
      dropEntry?.();
    }
    return out;
  }

  /** One more table holds `block` (a shared prefix). A cached block becomes used again. */
  retain(block: number): void {
    this.#check(block);
    if (this.#refs[block] === 0) {
      assert(this.#evictable.delete(block), `block ${block} is neither used nor cached`);
    }
    this.#refs[block]++;
  }

  /** A table lets go of `block`; at refs 0 it becomes cached (when an entry names it) or free. */
  release(block: number): void {
    this.#check(block);
    assert(this.#refs[block] > 0, `block ${block} released more often than held`);
    if (--this.#refs[block] > 0) return;
    if (this.#onEvict.has(block)) this.#evictable.set(block, true);
    else this.#free.push(block);
  }

  /**
   * An index entry names `block` (used now); when the block is later given away, `onEvict` runs
   * (the entry drops itself). A block is named by at most one entry.
   */
  name(block: number, onEvict: () => void): void {
    this.#check(block);
    assert(this.#refs[block] > 0, "only a block in use can be named");
    assert(!this.#onEvict.has(block), `block ${block} is already named`);
    this.#onEvict.set(block, onEvict);
  }

  /** The entry no longer names `block` (it was dropped for another of its blocks). */
  unname(block: number): void {
    const wasCached = this.#evictable.has(block);
    this.#forget(block);
    if (wasCached) this.#free.push(block);
  }

  /** Drops `block`'s name; a cached block leaves the evictable list (the caller reuses or frees). */
  #forget(block: number): (() => void) | undefined {
    const cb = this.#onEvict.get(block);
    this.#onEvict.delete(block);
    this.#evictable.delete(block);
    return cb;
  }

  #check(block: number): void {
    assert(
      Number.isInteger(block) && block >= 0 && block < this.totalBlocks,
      `block ${block} is not in the pool of ${this.totalBlocks}`,
    );
  }
}
