// The scheduler: many sequences on one PagedRuntime (paged-runtime.ts), written once for every
// runtime, like the sequence driver. Each request's driver runs on a PagedSequence (a Runtime of
// its own); their forward and prefill calls land here and are run in steps:
//
//   1. decode tokens (one-token calls) of every waiting sequence go first, oldest sequence first,
//      so a long prefill never stalls a running generation by more than one step;
//   2. the rest of the step's token budget (maxBatchTokens; at most maxPrefillTokens when the step
//      has decode tokens) goes to prefill pieces, shared out
//      between tenants in turn (the tenant served longest ago first, each at most its fair share
//      of what is left), then to whoever still has tokens: one tenant's long prompt cannot starve
//      another tenant's; a prompt longer than the budget runs as pieces over several steps, in
//      order (a sequence's own tokens are never reordered);
//   3. blocks for each piece are reserved (copy-on-write of a shared or prefix-named block that
//      would be written); when the pool runs dry a sequence that is not in the step is preempted
//      (the newest whose preemption frees enough blocks, else the one freeing most; one whose
//      blocks are all shared frees none and is left alone): its KV is saved (kv-swap.ts: snapshot
//      objects in the store, else host memory up to a budget), except the leading blocks running
//      sequences share with it (a document's: they stay in its table, unwritten), its other blocks
//      freed, and it is restored, exactly, before its next piece runs (its pieces are read back
//      from the store first, outside the steps: the others' steps do not wait for the store).
//      A victim whose KV cannot be kept, or whose restore fails, fails alone (its request gets the
//      error); the oldest sequence always progresses; a sequence that alone cannot fit fails with
//      LimitError;
//   4. one runtime.step() over all pieces; each call resolves once its last piece has run.
//
// Before a step it yields to the event loop (a few turns at most, only while some open sequence has
// no call queued), so the drivers whose tokens just came back can sample, stream and submit the
// next token in time for the same step. Cancellation: a queued call whose
// signal fires is rejected and its sequence keeps only what it held before the call; a step is
// never interrupted for one sequence (it is at most maxBatchTokens long).

import { assert, BusyError, CancelledError, InvalidInputError, LimitError } from "../errors.ts";
import { isTokenId } from "../tokenizer/token-id.ts";
import { KvBlockPool, type KvBlockStats } from "./kv-blocks.ts";
import {
  KvSwap,
  type KvSwapOptions,
  type KvSwapStats,
  type PoolKv,
  type SwappedKv,
} from "./kv-swap.ts";
import type { PagedRuntime, StepItem } from "./paged-runtime.ts";
import { PagedSequence, type SequenceHost } from "./paged-sequence.ts";

/** Default step budget in tokens (`--max-batch-tokens`), docs/batching.md. */
export const DEFAULT_MAX_BATCH_TOKENS = 256;

export interface SchedulerOptions {
  /** Most tokens one step runs, decode tokens and prefill pieces together. */
  maxBatchTokens?: number;
  /**
   * Most prompt tokens a step runs beside decode tokens (`--max-prefill-tokens`; default
   * maxBatchTokens): bounds what a running generation's next token waits for when new prompts
   * arrive. A step without decode tokens runs prompt pieces up to maxBatchTokens.
   */
  maxPrefillTokens?: number;
  /** Where preempted sequences' KV goes (kv-swap.ts); default: host memory, 1 GiB at most. */
  swap?: KvSwapOptions;
}

export interface SchedulerStats {
  /** Sequences open (a request each). */
  sequences: number;
  /** Sequences with a call queued for the next step. */
  waiting: number;
  /** Sequences preempted, their KV in the swap store or host memory. */
  swapped: number;
  /** The swap's counters (kv-swap.ts). */
  swap: KvSwapStats;
  blocks: KvBlockStats;
  steps: number;
  /** Tokens and sequences of the last step. */
  lastStepTokens: number;
  lastStepSequences: number;
  /** Sums over all steps, for averages. */
  stepTokens: number;
  stepSequences: number;
  preemptions: number;
  /**
   * Blocks preemptions left in the pool because running sequences hold them too (a shared
   * document's), so writing them out would have freed nothing (cumulative).
   */
  preemptionKeptBlocks: number;
}

interface Call {
  seq: PagedSequence;
  tokens: Int32Array;
  /** The sequence's position when the call was made. */
  start: number;
  /** Tokens of the call already run. */
  done: number;
  logits: boolean;
  /** The caller reads the logits at once: a view of the runtime's buffer will do. */
  transient: boolean;
  signal?: AbortSignal;
  resolve(v: Float32Array | null): void;
  reject(e: unknown): void;
}

interface Piece {
  call: Call;
  n: number;
}

/** One turn of the event loop (setImmediate where there is one: it runs right after I/O). */
const nextTurn: () => Promise<void> =
  typeof setImmediate === "function"
    ? () => new Promise((resolve) => setImmediate(resolve))
    : () => new Promise((resolve) => setTimeout(resolve, 0));

/**
 * Turns of the event loop a step waits for open sequences that have no call queued (a driver
 * between tokens: sampling, streaming its token out) before it starts without them.
 */
const GATHER_TURNS = 4;

export class BatchScheduler implements SequenceHost {
  readonly runtime: PagedRuntime;
  readonly pool: KvBlockPool;
  readonly maxBatchTokens: number;
  readonly maxPrefillTokens: number;
  readonly swap: KvSwap;
  readonly #calls: Call[] = [];
  readonly #exclusive: Array<() => Promise<void>> = [];
  readonly #sequences = new Set<PagedSequence>();
  /** Step number at which each tenant's prefill was last served. */
  readonly #served = new Map<string, number>();
  #pumping = false;
  /** Calls the current #plan deferred until their sequence's pieces are read back. */
  #deferred = 0;
  /**
   * Something may have changed since the current #plan began (a call submitted or cancelled, a
   * read-back ended: every #kick sets it): a pump that found nothing to run looks again.
   */
  #wake = false;
  #order = 0;
  /** Calls failed outside a step (a victim's KV lost, a failed restore): #plan looks again. */
  #failures = 0;
  readonly #stats = {
    steps: 0,
    lastStepTokens: 0,
    lastStepSequences: 0,
    stepTokens: 0,
    stepSequences: 0,
    preemptions: 0,
    preemptionKeptBlocks: 0,
  };

  constructor(runtime: PagedRuntime, options: SchedulerOptions = {}) {
    const budget = options.maxBatchTokens ?? DEFAULT_MAX_BATCH_TOKENS;
    if (!Number.isSafeInteger(budget) || budget < 1) {
      throw new InvalidInputError(`max batch tokens must be a positive integer, not ${budget}`);
    }
    const prefillCap = options.maxPrefillTokens ?? budget;
    if (!Number.isSafeInteger(prefillCap) || prefillCap < 1) {
      throw new InvalidInputError(
        `max prefill tokens must be a positive integer, not ${prefillCap}`,
      );
    }
    this.runtime = runtime;
    this.pool = new KvBlockPool(runtime.info.totalBlocks, runtime.info.blockTokens);
    this.maxBatchTokens = budget;
    this.maxPrefillTokens = Math.min(prefillCap, budget);
    this.swap = new KvSwap(runtime.info.kv, runtime.info.blockTokens, options.swap);
  }

  /** A new, empty sequence for one request of `tenant`. Close it to give its blocks back. */
  open(tenant: string): PagedSequence {
    const seq = new PagedSequence(this, tenant, this.#order++);
    this.#sequences.add(seq);
    return seq;
  }

  stats(): SchedulerStats {
    let swapped = 0;
    for (const s of this.#sequences) if (s.swapped && !s.swapped.lost) swapped++;
    return {
      sequences: this.#sequences.size,
      waiting: this.#calls.length,
      swapped,
      swap: this.swap.stats(),
      blocks: this.pool.stats(),
      ...this.#stats,
    };
  }

  submit(
    seq: PagedSequence,
    tokens: Int32Array,
    logits: boolean,
    signal?: AbortSignal,
    transient = false,
  ): Promise<Float32Array | null> {
    if (tokens.length === 0) return Promise.reject(new InvalidInputError("forward: no tokens"));
    const V = this.runtime.config.vocabSize;
    for (const t of tokens) {
      if (!isTokenId(t, V)) {
        return Promise.reject(new InvalidInputError(`token id ${t} is outside [0, ${V})`));
      }
    }
    const end = seq.position + tokens.length;
    if (end > seq.info.maxPositions) {
      return Promise.reject(
        new LimitError(`${end} positions exceed this runtime's ${seq.info.maxPositions}`),
      );
    }
    if (signal?.aborted) return Promise.reject(new CancelledError());
    assert(!seq.busy, "one forward at a time per sequence");
    seq.busy = true;
    return new Promise((resolve, reject) => {
      // An abort wakes the pump (which drops the call); the listener goes with the call, so a long
      // generation does not pile one up per token on its request's signal.
      const onAbort = () => this.#kick();
      const call: Call = {
        seq,
        tokens,
        start: seq.position,
        done: 0,
        logits,
        transient,
        signal,
        resolve: (v) => {
          signal?.removeEventListener("abort", onAbort);
          seq.busy = false;
          resolve(v);
        },
        reject: (e) => {
          signal?.removeEventListener("abort", onAbort);
          seq.busy = false;
          seq.setPosition(call.start); // nothing of a failed call stays visible
          reject(e);
        },
      };
      this.#calls.push(call);
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#kick();
    });
  }

  exclusive<T>(seq: PagedSequence, fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#exclusive.push(async () => {
        try {
          await this.#swapIn(seq, true);
          resolve(await fn());
        } catch (err) {
          reject(err);
        }
      });
      this.#kick();
    });
  }

  closed(seq: PagedSequence): void {
    this.#sequences.delete(seq);
    if (seq.swapped) this.swap.drop(seq.swapped);
    seq.swapped = null;
    this.#fail(seq, new CancelledError("the sequence was closed"));
  }

  /** Rejects seq's queued call, if it has one. */
  #fail(seq: PagedSequence, err: unknown): void {
    const i = this.#calls.findIndex((c) => c.seq === seq);
    if (i >= 0) this.#calls.splice(i, 1)[0].reject(err);
    this.#failures++;
  }

  /** Table indexes of seq's blocks in [start, end) that a write must copy first, and the growth. */
  #writePlan(seq: PagedSequence, start: number, end: number): { cow: number[]; grow: number } {
    const B = this.pool.blockTokens;
    const first = Math.floor(start / B);
    const last = Math.ceil(end / B); // exclusive
    // Blocks that would be written but are shared, or named by the prefix index: copied first.
    const cow: number[] = [];
    for (let i = first; i < Math.min(last, seq.blocks.length); i++) {
      const b = seq.blocks[i];
      if (this.pool.refs(b) > 1 || this.pool.isNamed(b)) cow.push(i);
    }
    return { cow, grow: Math.max(0, last - seq.blocks.length) };
  }

  async reserve(seq: PagedSequence, start: number, end: number): Promise<boolean> {
    const { cow, grow } = this.#writePlan(seq, start, end);
    const got = this.pool.allocate(grow + cow.length);
    if (!got) return false;
    const pairs: Array<[number, number]> = [];
    cow.forEach((i, k) => {
      pairs.push([seq.blocks[i], got[k]]);
    });
    if (pairs.length) await this.runtime.copyBlocks(pairs);
    cow.forEach((i, k) => {
      this.pool.release(seq.blocks[i]);
      seq.blocks[i] = got[k];
    });
    seq.blocks.push(...got.slice(cow.length));
    return true;
  }

  #kick(): void {
    this.#wake = true;
    if (this.#pumping) return;
    this.#pumping = true;
    void this.#pump();
  }

  async #pump(): Promise<void> {
    let waitsForReads = false;
    try {
      for (;;) {
        while (this.#exclusive.length) await this.#exclusive.shift()?.();
        for (let turn = 0; turn < GATHER_TURNS && this.#idle() > 0; turn++) await nextTurn();
        while (this.#exclusive.length) await this.#exclusive.shift()?.();
        this.#dropCancelled();
        if (this.#calls.length === 0) break;
        this.#wake = false;
        const failures = this.#failures;
        const pieces = await this.#plan();
        if (pieces.length === 0) {
          // The calls left wait for their swapped KV to be read back (or for room they can only
          // get after those reads): the reads' ends, like any new call, wake the pump.
          if (this.#deferred > 0 && !this.#wake && this.#failures === failures) {
            waitsForReads = true;
            break;
          }
          continue; // #plan failed a call that cannot fit; look again
        }
        await this.#step(pieces);
      }
    } finally {
      this.#pumping = false;
    }
    // Work queued by the last resolutions (after the loop saw none) starts a new pump; a pump
    // that stopped for reads is started again by them, or by whatever woke it meanwhile.
    if (this.#exclusive.length || (this.#calls.length && (!waitsForReads || this.#wake))) {
      this.#kick();
    }
  }

  /** Open sequences with no call queued. */
  #idle(): number {
    let n = 0;
    for (const s of this.#sequences) if (!s.busy) n++;
    return n;
  }

  #dropCancelled(): void {
    for (let i = this.#calls.length - 1; i >= 0; i--) {
      const c = this.#calls[i];
      if (c.signal?.aborted || c.seq.isClosed) {
        this.#calls.splice(i, 1);
        c.reject(new CancelledError());
      }
    }
  }

  /** The next step's pieces, blocks reserved; preempts when the pool is full (see the header). */
  async #plan(): Promise<Piece[]> {
    const step = this.#stats.steps;
    const byAge = [...this.#calls].sort((a, b) => a.seq.order - b.seq.order);
    const decode = byAge.filter((c) => c.tokens.length - c.done === 1);
    const prefill = byAge.filter((c) => c.tokens.length - c.done > 1);
    const pieces: Piece[] = [];
    let budget = this.maxBatchTokens;
    const failures = this.#failures;
    this.#deferred = 0;
    const take = async (call: Call, n: number): Promise<boolean> => {
      if (!this.#calls.includes(call)) return false; // failed since byAge was taken
      if (this.#readingBack(call.seq)) {
        this.#deferred++;
        return false;
      }
      if (!(await this.#fit(call, n, pieces))) return false;
      pieces.push({ call, n });
      budget -= n;
      return true;
    };
    for (const call of decode) {
      if (budget === 0) break;
      await take(call, 1);
    }
    // Beside decode tokens, prompt pieces get at most maxPrefillTokens of the step.
    if (pieces.length > 0) budget = Math.min(budget, this.maxPrefillTokens);
    // Prefill: one piece per tenant in turn, least recently served tenant first, fair shares.
    const tenants = [...new Set(prefill.map((c) => c.seq.tenant))].sort(
      (a, b) => (this.#served.get(a) ?? -1) - (this.#served.get(b) ?? -1),
    );
    const placed = new Set<Call>();
    for (let t = 0; t < tenants.length && budget > 0; t++) {
      const call = prefill.find((c) => c.seq.tenant === tenants[t]);
      if (!call) continue;
      const share = Math.ceil(budget / (tenants.length - t));
      if (!(await take(call, Math.min(share, call.tokens.length - call.done)))) continue;
      placed.add(call);
      this.#served.set(tenants[t], step);
    }
    for (const call of prefill) {
      if (budget === 0) break;
      if (placed.has(call)) continue;
      await take(call, Math.min(budget, call.tokens.length - call.done));
    }
    if (pieces.length === 0 && this.#failures === failures && this.#deferred === 0) {
      // The oldest call cannot get its blocks even with every newer sequence preempted.
      const oldest = byAge[0];
      this.#calls.splice(this.#calls.indexOf(oldest), 1);
      oldest.reject(
        new LimitError(
          `the KV pool (${this.pool.totalBlocks} blocks of ${this.pool.blockTokens} positions) cannot hold this sequence`,
        ),
      );
    }
    return pieces;
  }

  /**
   * Blocks for `n` more tokens of `call` (its sequence swapped in first), preempting sequences
   * that are not in `pieces` and are newer than it or idle (no call queued), newest first. False
   * when even that is not enough.
   */
  async #fit(call: Call, n: number, pieces: Piece[]): Promise<boolean> {
    const seq = call.seq;
    const at = call.start + call.done;
    for (;;) {
      let restored: boolean;
      try {
        restored = await this.#swapIn(seq, false);
      } catch (err) {
        this.#fail(seq, err); // this request alone: its KV cannot be restored
        return false;
      }
      if (restored && (await this.reserve(seq, at, at + n))) return true;
      const victim = this.#victim(seq, this.#shortfall(seq, at, at + n), pieces);
      if (!victim) return false;
      await this.#swapOut(victim);
    }
  }

  /**
   * Whom to preempt for `seq`, `short` blocks short: among the sequences that may lose their
   * blocks (newer than seq, or idle between calls; not in this step) and whose preemption frees
   * any, the newest that frees enough alone, else the one that frees most (newest on a tie). A
   * sequence whose blocks other tables all hold too (questions about one document, nothing
   * generated yet) frees nothing and is never preempted.
   */
  #victim(seq: PagedSequence, short: number, pieces: Piece[]): PagedSequence | undefined {
    const inStep = new Set(pieces.map((p) => p.call.seq));
    const queued = new Set(this.#calls.map((c) => c.seq));
    let enough: PagedSequence | undefined;
    let most: { s: PagedSequence; frees: number } | undefined;
    for (const s of this.#sequences) {
      const mayLose = s.order > seq.order || !queued.has(s); // newer, or idle between calls
      if (!mayLose || s === seq || inStep.has(s) || s.swapped?.lost) continue;
      const frees = this.#freedBy(s);
      if (frees === 0) continue;
      if (frees >= short && (!enough || s.order > enough.order)) enough = s;
      if (!most || frees > most.frees || (frees === most.frees && s.order > most.s.order)) {
        most = { s, frees };
      }
    }
    return enough ?? most?.s;
  }

  /**
   * Whether seq's call must wait for its swapped pieces to be read back from the store: the step
   * does not wait for a store read (a piece of 8K positions from S3 takes ~1 s) while the other
   * sequences could run. The first time, the reads start (within the host budget: a piece that
   * does not fit is read by the restore itself, on the step's path, as before); when they have
   * settled the pump is woken and the restore imports from memory.
   */
  #readingBack(seq: PagedSequence): boolean {
    const saved = seq.swapped;
    if (!saved || saved.lost || saved.fetched || !this.swap.store) return false;
    // Started once per swap (prefetch sets saved.prefetched at once); its end wakes the pump.
    if (!saved.prefetched) void this.swap.prefetch(saved, seq.position).then(() => this.#kick());
    return true;
  }

  /** Blocks a preemption of `s` gives back to the pool: those no other table holds. */
  #freedBy(s: PagedSequence): number {
    let n = 0;
    for (const b of s.blocks) if (this.pool.refs(b) === 1) n++;
    return n;
  }

  /** Blocks seq lacks to write [start, end): its restore's, then the write's, less what is free. */
  #shortfall(seq: PagedSequence, start: number, end: number): number {
    const B = this.pool.blockTokens;
    let restore = 0;
    const saved = seq.swapped;
    if (saved && !saved.lost) {
      const upTo = saved.pieces.filter((p) => p.start < seq.position).at(-1)?.end ?? 0;
      restore = Math.max(0, Math.ceil(upTo / B) - seq.blocks.length);
    }
    const { cow, grow } = this.#writePlan(seq, start, end);
    return Math.max(0, restore + cow.length + Math.max(0, grow - restore) - this.pool.available);
  }

  /**
   * Preempts `seq`: its KV saved (the store, else host memory), its blocks freed, except the
   * leading run that other tables hold too (a shared document's blocks: freeing them frees
   * nothing, so they stay in its table and are not written). A sequence already preempted loses
   * the blocks it kept that way (saved ahead of its other pieces) once nobody else holds them.
   * When the KV cannot be kept (no room in the host budget), the sequence fails instead: its
   * queued call now, every later one with the same error, so the others go on and memory stays
   * bounded.
   */
  async #swapOut(seq: PagedSequence): Promise<void> {
    const B = this.pool.blockTokens;
    const prior = seq.swapped;
    // A queued call's pieces so far are in seq.position already.
    const to = prior ? prior.from : seq.position;
    let keep = 0;
    while (keep < Math.floor(to / B) && this.pool.refs(seq.blocks[keep]) > 1) keep++;
    keep -= keep % (this.swap.unitTokens / B);
    this.#stats.preemptions++;
    let saved: SwappedKv;
    try {
      saved = await this.swap.save(seq.tenant, seq.order, keep * B, to, this.#poolKv(seq));
      if (prior) {
        saved.pieces.push(...prior.pieces);
        saved.tokens = prior.tokens;
      }
      this.#stats.preemptionKeptBlocks += keep;
    } catch (err) {
      if (prior) this.swap.drop(prior);
      saved = lostSwap(err);
      if (!seq.isClosed) this.#fail(seq, saved.lost);
    }
    seq.releaseFrom(saved.lost ? 0 : keep);
    if (seq.isClosed)
      this.swap.drop(saved); // closed while its KV was being written
    else seq.swapped = saved;
  }

  /** Restores a preempted sequence's KV (exact). False when the pool cannot hold it now. */
  async #swapIn(seq: PagedSequence, mustFit: boolean): Promise<boolean> {
    const saved = seq.swapped;
    if (!saved) return true;
    if (saved.lost) throw saved.lost;
    // Only the pieces below the position (a truncate while swapped out drops the rest); the
    // blocks of [0, from) never left the table.
    const need = saved.pieces.filter((p) => p.start < seq.position).at(-1)?.end ?? 0;
    if (need > saved.from && !(await this.reserve(seq, saved.from, need))) {
      seq.releaseFrom(saved.from / this.pool.blockTokens);
      if (mustFit) throw new BusyError("the KV pool has no room to restore this sequence now");
      // It waits for room (its pieces were read back before it got here: #readingBack).
      return false;
    }
    try {
      await this.swap.restore(saved, seq.position, this.#poolKv(seq));
    } catch (err) {
      seq.releaseFrom(0);
      seq.swapped = lostSwap(err);
      throw err;
    }
    seq.swapped = null;
    seq.releaseFrom(Math.ceil(seq.position / this.pool.blockTokens));
    return true;
  }

  /** seq's positions in the pool, through its block table. */
  #poolKv(seq: PagedSequence): PoolKv {
    const B = this.pool.blockTokens;
    const table = (end: number) => {
      if (seq.isClosed) throw new CancelledError("the sequence was closed");
      return seq.table(Math.ceil(end / B));
    };
    return {
      export: (start, end) => this.runtime.exportKv(table(end), start, end),
      import: (start, end, bytes) =>
        this.runtime.importKv(table(end), start, bytes, end - start, this.runtime.info.kv.dtype),
    };
  }

  async #step(pieces: Piece[]): Promise<void> {
    const B = this.pool.blockTokens;
    const items: StepItem[] = pieces.map(({ call, n }) => {
      const start = call.start + call.done;
      const done = call.done + n === call.tokens.length;
      return {
        tokens: call.tokens.subarray(call.done, call.done + n),
        start,
        table: call.seq.table(Math.ceil((start + n) / B)),
        logits: done && call.logits,
        transientLogits: done && call.logits && call.transient,
      };
    });
    const s = this.#stats;
    s.steps++;
    s.lastStepTokens = pieces.reduce((sum, p) => sum + p.n, 0);
    s.lastStepSequences = pieces.length;
    s.stepTokens += s.lastStepTokens;
    s.stepSequences += pieces.length;
    let out: (Float32Array | null)[];
    try {
      out = await this.runtime.step(items);
    } catch (err) {
      for (const { call } of pieces) {
        this.#calls.splice(this.#calls.indexOf(call), 1);
        call.reject(err);
      }
      return;
    }
    pieces.forEach(({ call, n }, i) => {
      call.done += n;
      call.seq.setPosition(call.start + call.done);
      if (call.done === call.tokens.length) {
        this.#calls.splice(this.#calls.indexOf(call), 1);
        call.resolve(out[i]);
      }
    });
  }
}

/** A swap that cannot be restored: every later call of its sequence fails with `err`. */
function lostSwap(err: unknown): SwappedKv {
  return {
    from: 0,
    tokens: 0,
    pieces: [],
    lost: err instanceof Error ? err : new Error(String(err)),
  };
}
