// One sequence of a batched runtime, seen through the single-sequence Runtime seam (runtime.ts), so
// the sequence driver, the snapshot cache and everything else written against Runtime work on it
// unchanged. Its forward/prefill calls go to the scheduler (scheduler.ts), which runs them in steps
// together with other sequences' tokens; its KV lives in the blocks of `blocks` (its block table)
// in the scheduler's pool (kv-blocks.ts).
//
// State: positions [0, position) are held, in blocks[0 .. ceil(position / B)). The table may hold
// more blocks than that (taken for a step that then failed); they are reused by the next step and
// given back by truncate or close. While preempted, the KV of [swapped.from, swapped.tokens) is
// held by the scheduler's swap (kv-swap.ts: the snapshot store or host memory) instead of blocks,
// and `blocks` holds only [0, swapped.from): leading blocks other sequences held too when it was
// preempted (often none).

import { assert, InvalidInputError, LimitError } from "../errors.ts";
import type { KvDtype } from "../kv/layout.ts";
import type { ModelConfig } from "../model/config-types.ts";
import type { KvBlockPool } from "./kv-blocks.ts";
import type { SwappedKv } from "./kv-swap.ts";
import type { PagedRuntime } from "./paged-runtime.ts";
import {
  checkKvRange,
  checkTruncate,
  type ForwardOptions,
  type Runtime,
  type RuntimeInfo,
} from "./runtime.ts";

/** What a sequence needs from its scheduler. */
export interface SequenceHost {
  readonly runtime: PagedRuntime;
  readonly pool: KvBlockPool;
  /**
   * Run tokens at [position, position + n) in a later step; logits of the last when asked (a view
   * the next step reuses when `transient`: ForwardOptions.transientLogits).
   */
  submit(
    seq: PagedSequence,
    tokens: Int32Array,
    logits: boolean,
    signal?: AbortSignal,
    transient?: boolean,
  ): Promise<Float32Array | null>;
  /** Run `fn` with the runtime to itself (between steps), the sequence swapped in first. */
  exclusive<T>(seq: PagedSequence, fn: () => Promise<T>): Promise<T>;
  /** Make room for positions [start, end) in seq's table (copy-on-write included); false: full. */
  reserve(seq: PagedSequence, start: number, end: number): Promise<boolean>;
  closed(seq: PagedSequence): void;
}

export class PagedSequence implements Runtime {
  readonly config: ModelConfig;
  readonly info: RuntimeInfo;
  /** Isolation key: prefix blocks are shared only between sequences of the same tenant. */
  readonly tenant: string;
  /** Opening order (lower: older); the scheduler preempts the newest first. */
  readonly order: number;
  /** The scheduler's: the block table. */
  blocks: number[] = [];
  /** The scheduler's: where the KV is while preempted. */
  swapped: SwappedKv | null = null;
  /** The scheduler's: a forward or prefill of this sequence is queued or running. */
  busy = false;
  #position = 0;
  #closed = false;
  readonly #host: SequenceHost;

  constructor(host: SequenceHost, tenant: string, order: number) {
    this.#host = host;
    this.config = host.runtime.config;
    const info = host.runtime.info;
    this.info = {
      name: info.name,
      kv: info.kv,
      maxPositions: info.maxPositions,
      threads: info.threads,
      kernels: info.kernels,
      weightBytes: info.weightBytes,
      kvCapacityBytes: info.kvCapacityBytes,
      ...(info.weightFormat ? { weightFormat: info.weightFormat } : {}),
      ...(info.preferredChunkTokens ? { preferredChunkTokens: info.preferredChunkTokens } : {}),
    };
    this.tenant = tenant;
    this.order = order;
  }

  get position(): number {
    return this.#position;
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  /** The scheduler's: positions now held (after a step, a swap-in, an import). */
  setPosition(p: number): void {
    this.#position = p;
  }

  /** The block table as the runtime takes it: the first `n` blocks. */
  table(n: number): Int32Array {
    assert(n <= this.blocks.length, "the table holds the blocks asked for");
    return Int32Array.from(this.blocks.slice(0, n));
  }

  forward(
    tokens: Int32Array,
    signal?: AbortSignal,
    options?: ForwardOptions,
  ): Promise<Float32Array> {
    this.#open();
    const transient = options?.transientLogits === true;
    return this.#host.submit(this, tokens, true, signal, transient) as Promise<Float32Array>;
  }

  async prefill(tokens: Int32Array, signal?: AbortSignal): Promise<void> {
    this.#open();
    await this.#host.submit(this, tokens, false, signal);
  }

  truncate(position: number): void {
    this.#open();
    assert(!this.busy, "truncate while a forward of this sequence runs");
    checkTruncate(position, this.#position);
    this.#position = position;
    if (this.swapped) return; // swap-in restores what is below position, then cuts to it
    this.releaseFrom(Math.ceil(position / this.#host.pool.blockTokens));
  }

  /** The scheduler's: give back blocks[keep ..]. */
  releaseFrom(keep: number): void {
    for (const b of this.blocks.splice(keep)) this.#host.pool.release(b);
  }

  async exportKv(start: number, end: number): Promise<Uint8Array> {
    this.#open();
    checkKvRange(start, end, this.#position);
    const B = this.#host.pool.blockTokens;
    return this.#host.exclusive(this, () =>
      this.#host.runtime.exportKv(this.table(Math.ceil(end / B)), start, end),
    );
  }

  async importKv(bytes: Uint8Array, tokens: number, dtype: KvDtype): Promise<void> {
    this.#open();
    if (!Number.isInteger(tokens) || tokens < 0) {
      throw new InvalidInputError(`importKv: token count ${tokens} is not a count`);
    }
    const B = this.#host.pool.blockTokens;
    await this.#host.exclusive(this, async () => {
      const start = this.#position;
      const end = start + tokens;
      if (end > this.info.maxPositions) {
        throw new LimitError(
          `importKv: ${end} positions exceed this runtime's ${this.info.maxPositions}`,
        );
      }
      if (!(await this.#host.reserve(this, start, end))) {
        throw new LimitError("importKv: the KV pool has no free blocks");
      }
      await this.#host.runtime.importKv(
        this.table(Math.ceil(end / B)),
        start,
        bytes,
        tokens,
        dtype,
      );
      this.#position = end;
    });
  }

  /**
   * The prefix cache's (block-prefix-cache.ts): append shared blocks holding the next positions.
   * The sequence must sit at a block boundary with no spare blocks; each block gains a reference.
   */
  attach(blocks: readonly number[]): void {
    this.#open();
    const B = this.#host.pool.blockTokens;
    assert(!this.swapped && !this.busy, "attach to a sequence at rest");
    assert(this.#position % B === 0, "attach at a block boundary");
    this.releaseFrom(this.#position / B);
    for (const b of blocks) {
      this.#host.pool.retain(b);
      this.blocks.push(b);
    }
    this.#position += blocks.length * B;
  }

  /** Blocks holding positions [start, end) (both multiples of the block size). */
  blocksOf(start: number, end: number): number[] {
    const B = this.#host.pool.blockTokens;
    assert(start % B === 0 && end % B === 0 && end <= this.#position, "whole held blocks");
    return this.blocks.slice(start / B, end / B);
  }

  /** Gives back every block; the sequence is unusable afterwards. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.releaseFrom(0);
    this.#host.closed(this); // which lets go of a swap too
  }

  #open(): void {
    assert(!this.#closed, "the sequence is closed");
  }
}
