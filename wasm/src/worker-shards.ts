// One shard per worker thread (core/node/worker-pool.ts, entry worker.mjs), each with its own
// WebAssembly memory, so the model may exceed one 4 GiB memory and every core works on every layer.
// Node only: runtime.ts imports this module dynamically, on the threaded path alone.
//
// Per micro-batch the main thread writes the embeddings into shared memory and posts `forward` to
// every worker; the workers run all layers, meeting at a barrier for each of the two all-reduces
// per layer (worker.mjs). Cancellation sets a flag that the last worker at a barrier turns into a
// decision all workers share, so they stop at the same layer.
import { CancelledError } from "../../core/errors.ts";
import { WorkerCallError, WorkerPool } from "../../core/node/worker-pool.ts";
import {
  LOGIT_ROWS,
  type MatrixKey,
  type ShardSpec,
  stepLayout,
  type VectorKey,
} from "./shard.mjs";
import { rethrowShardError } from "./shard-errors.ts";
import type { ShardSet } from "./shard-set.ts";

const ARRIVED = 0;
const CANCEL = 2;
const FAILED = 4;

export class WorkerShards implements ShardSet {
  readonly #pool: WorkerPool;
  readonly #ctl: Int32Array; // (16) barrier state, see worker.mjs
  readonly #input: Float32Array; // (maxBatch, hidden) f32
  readonly #step: Int32Array; // shard.mjs stepLayout
  readonly #hidden: number;
  readonly #vocab: number;
  readonly #logits: Float32Array; // (LOGIT_ROWS, vocab) f32

  private constructor(
    pool: WorkerPool,
    sab: SharedArrayBuffer,
    layout: SabLayout,
    H: number,
    B: number,
  ) {
    this.#pool = pool;
    this.#ctl = new Int32Array(sab, layout.ctl, 16);
    this.#input = new Float32Array(sab, layout.input, B * H);
    this.#step = new Int32Array(sab, layout.step, layout.stepInts);
    this.#hidden = H;
    this.#vocab = layout.vocab;
    this.#logits = new Float32Array(sab, layout.logits, LOGIT_ROWS * layout.vocab);
  }

  static async start(
    module: WebAssembly.Module,
    specs: ShardSpec[],
    vocabOffsets: number[],
    vocab: number,
  ): Promise<WorkerShards> {
    const W = specs.length;
    const { hidden: H, maxBatch: B, maxPositions, blockTokens } = specs[0];
    const stepInts = stepLayout(B, Math.ceil(maxPositions / blockTokens)).ints;
    const input = 64;
    const step = input + B * H * 4;
    const slots = step + stepInts * 4;
    const logits = slots + 2 * W * B * H * 4;
    const layout: SabLayout = {
      ctl: 0,
      input,
      step,
      stepInts,
      slots,
      logits,
      vocab,
      vocabOffset: 0,
    };
    const sab = new SharedArrayBuffer(logits + LOGIT_ROWS * vocab * 4);
    const pool = new WorkerPool(new URL("./worker.mjs", import.meta.url), W, "wasm-shard");
    try {
      await Promise.all(
        pool.workers.map((w, i) =>
          w.call("init", [
            module,
            specs[i],
            sab,
            { ...layout, vocabOffset: vocabOffsets[i] },
            i,
            W,
          ]),
        ),
      );
    } catch (err) {
      await pool.close();
      rethrowWorker(err);
    }
    return new WorkerShards(pool, sab, layout, H, B);
  }

  get count() {
    return this.#pool.size;
  }

  async setVector(s: number, key: VectorKey, layer: number, data: Float32Array) {
    await this.#pool.workers[s].call("setVector", [key, layer, data]).catch(rethrowWorker);
  }

  async setMatrix(
    s: number,
    key: MatrixKey,
    layer: number,
    rowOffset: number,
    data: Float32Array | Uint16Array,
  ) {
    await this.#pool.workers[s]
      .call("setMatrix", [key, layer, rowOffset, data], [data.buffer as ArrayBuffer])
      .catch(rethrowWorker);
  }

  async setRope(invFreq: Float64Array, scaling: number) {
    await this.#pool.all("setRope", () => [invFreq, scaling]).catch(rethrowWorker);
  }

  async forward(input: Float32Array, step: Int32Array, signal?: AbortSignal) {
    if (signal?.aborted) throw new CancelledError();
    // Only the T rows the workers read (a decode step is 1 row, not maxBatch).
    this.#input.set(input.subarray(0, step[0] * this.#hidden));
    this.#step.set(step);
    // Every worker is idle here, so the barrier state can be reset (a failed forward may have
    // left arrivals counted).
    Atomics.store(this.#ctl, ARRIVED, 0);
    Atomics.store(this.#ctl, FAILED, 0);
    Atomics.store(this.#ctl, CANCEL, 0);
    const onAbort = () => Atomics.store(this.#ctl, CANCEL, 1);
    signal?.addEventListener("abort", onAbort);
    let settled: PromiseSettledResult<{ cancelled: boolean }>[];
    try {
      settled = await Promise.allSettled(
        this.#pool.workers.map((w) => w.call<{ cancelled: boolean }>("forward", [step.length])),
      );
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    // Report the worker that failed first-hand, not the ones it released from a barrier.
    const failures = settled.filter((r) => r.status === "rejected").map((r) => r.reason);
    if (failures.length > 0) {
      rethrowWorker(
        failures.find((e) => !String(e?.message).includes("another shard failed")) ?? failures[0],
      );
    }
    const results = settled.map((r) => (r as PromiseFulfilledResult<{ cancelled: boolean }>).value);
    if (results.some((r) => r.cancelled)) throw new CancelledError();
  }

  async logits(rows: Int32Array, view = false) {
    await this.#pool.all("logits", () => [rows]).catch(rethrowWorker);
    const n = rows.length * this.#vocab;
    // The shared buffer never detaches, so a view stays readable until the next pass writes it.
    return view ? this.#logits.subarray(0, n) : this.#logits.slice(0, n);
  }

  async exportKv(table: Int32Array, start: number, end: number) {
    return this.#pool.all<Uint8Array>("exportKv", () => [table, start, end]).catch(rethrowWorker);
  }

  async importKv(parts: Uint8Array[], table: Int32Array, start: number, n: number) {
    await Promise.all(
      this.#pool.workers.map((w, i) =>
        w.call("importKv", [parts[i], table, start, n], [parts[i].buffer as ArrayBuffer]),
      ),
    ).catch(rethrowWorker);
  }

  async copyBlocks(pairs: Int32Array) {
    await this.#pool.all("copyBlocks", () => [pairs]).catch(rethrowWorker);
  }

  async setProfiling(on: boolean) {
    await this.#pool.all("setProfiling", () => [on]).catch(rethrowWorker);
  }

  async profile() {
    return this.#pool.all<Float64Array>("profile", () => []).catch(rethrowWorker);
  }

  async memoryBytes() {
    return this.#pool.all<number>("memoryBytes", () => []).catch(rethrowWorker);
  }

  async close() {
    await this.#pool.close();
  }
}

interface SabLayout {
  ctl: number;
  input: number;
  step: number;
  stepInts: number;
  slots: number;
  logits: number;
  vocab: number;
  vocabOffset: number;
}

function rethrowWorker(err: unknown): never {
  if (err instanceof WorkerCallError) {
    const e = new Error(err.message) as Error & { code?: string };
    e.code = err.code;
    e.stack = err.workerStack ?? e.stack;
    rethrowShardError(e);
  }
  throw err;
}
