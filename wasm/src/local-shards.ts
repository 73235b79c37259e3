// One shard in this thread: the single-threaded runtime (workerd has no worker_threads).
// Cancellation: the layer loop checks the signal between layers and, at most every YIELD_MS,
// yields to the event loop so an abort scheduled by a timer or a closed socket can run.
import { CancelledError } from "../../core/errors.ts";
import { PROFILE_TOTAL, Shard, type ShardSpec } from "./shard.mjs";
import { rethrowShardError } from "./shard-errors.ts";
import type { ShardSet } from "./shard-set.ts";

const YIELD_MS = 20;

const yieldToEventLoop = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

export class LocalShards implements ShardSet {
  readonly count = 1;
  readonly #shard: Shard;

  constructor(module: WebAssembly.Module, spec: ShardSpec) {
    try {
      this.#shard = new Shard(module, spec);
    } catch (err) {
      rethrowShardError(err);
    }
  }

  async setVector(
    _s: number,
    key: Parameters<Shard["setVector"]>[0],
    layer: number,
    data: Float32Array,
  ) {
    this.#shard.setVector(key, layer, data);
  }

  async setMatrix(
    _s: number,
    key: Parameters<Shard["setMatrix"]>[0],
    layer: number,
    rowOffset: number,
    data: Float32Array | Uint16Array,
  ) {
    this.#shard.setMatrix(key, layer, rowOffset, data);
  }

  async setRope(invFreq: Float64Array, scaling: number) {
    this.#shard.setRope(invFreq, scaling);
  }

  async forward(input: Float32Array, step: Int32Array, signal?: AbortSignal) {
    const shard = this.#shard;
    const t = shard.clock();
    try {
      shard.step().set(step);
      shard.input().set(input.subarray(0, step[0] * shard.spec.hidden));
      shard.begin();
      let last = Date.now();
      for (let l = 0; l < shard.spec.layers; l++) {
        if (signal) {
          if (Date.now() - last >= YIELD_MS) {
            await yieldToEventLoop();
            last = Date.now();
          }
          if (signal.aborted) throw new CancelledError();
        }
        shard.attention(l, null);
        shard.ffn(l, null);
      }
    } catch (err) {
      rethrowShardError(err);
    } finally {
      shard.lap(PROFILE_TOTAL, t);
    }
  }

  async logits(rows: Int32Array) {
    const shard = this.#shard;
    const t = shard.clock();
    try {
      // Always a copy: the view would be of wasm memory, which a later grow detaches.
      return shard.logits(rows).slice();
    } finally {
      shard.lap(PROFILE_TOTAL, t);
    }
  }

  async setProfiling(on: boolean) {
    this.#shard.setProfiling(on);
  }

  async profile() {
    return [this.#shard.profile?.slice() ?? new Float64Array(0)];
  }

  async exportKv(table: Int32Array, start: number, end: number) {
    try {
      return [this.#shard.exportKv(table, start, end)];
    } catch (err) {
      rethrowShardError(err);
    }
  }

  async importKv(parts: Uint8Array[], table: Int32Array, start: number, n: number) {
    try {
      this.#shard.importKv(parts[0], table, start, n);
    } catch (err) {
      rethrowShardError(err);
    }
  }

  async copyBlocks(pairs: Int32Array) {
    try {
      this.#shard.copyBlocks(pairs);
    } catch (err) {
      rethrowShardError(err);
    }
  }

  async memoryBytes() {
    return [this.#shard.memoryBytes];
  }

  async close() {}
}
