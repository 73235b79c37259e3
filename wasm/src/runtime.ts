// The WASM SIMD runtime for one sequence: the Runtime seam (core/engine/runtime.ts) as one
// contiguous block table (blocks 0, 1, 2, ...) over the paged runtime (paged-runtime.ts), so the
// forward pass, KV layout and export/import exist once. The position is the only state it adds.

import type { RuntimeFactory } from "../../core/engine/registry.ts";
import {
  checkKvRange,
  checkTruncate,
  type Runtime,
  type RuntimeInfo,
} from "../../core/engine/runtime.ts";
import { assert } from "../../core/errors.ts";
import type { KvDtype } from "../../core/kv/layout.ts";
import type { ModelConfig } from "../../core/model/config-types.ts";
import { wasmUnavailableReason } from "./module.ts";
import {
  createPagedWasmRuntime,
  type Profiled,
  type ProfiledPagedRuntime,
  type WasmProfile,
  type WasmRuntimeOptions,
} from "./paged-runtime.ts";

export { createPagedWasmRuntime, type WasmProfile, type WasmRuntimeOptions };

/** The wasm runtime's profiling, beside the Runtime seam (bench and diagnostics only). */
export type ProfiledRuntime = Runtime & Profiled;

export async function createWasmRuntime(options: WasmRuntimeOptions): Promise<ProfiledRuntime> {
  // The pool is exactly one sequence's positions; its blocks are taken in order as it grows.
  // (Its info, blockTokens and totalBlocks included, is this runtime's.)
  return new WasmRuntime(await createPagedWasmRuntime({ ...options, poolPositions: undefined }));
}

class WasmRuntime implements ProfiledRuntime {
  readonly config: ModelConfig;
  readonly info: RuntimeInfo;
  readonly #paged: ProfiledPagedRuntime;
  readonly #table: Int32Array; // block b holds positions [b * blockTokens, (b + 1) * blockTokens)
  #position = 0;
  #busy = false;

  constructor(paged: ProfiledPagedRuntime) {
    this.config = paged.config;
    this.info = paged.info;
    this.#paged = paged;
    this.#table = Int32Array.from({ length: paged.info.totalBlocks }, (_, b) => b);
  }

  get position(): number {
    return this.#position;
  }

  forward(tokens: Int32Array, signal?: AbortSignal): Promise<Float32Array> {
    return this.#run(tokens, true, signal) as Promise<Float32Array>;
  }

  async prefill(tokens: Int32Array, signal?: AbortSignal): Promise<void> {
    await this.#run(tokens, false, signal);
  }

  async #run(tokens: Int32Array, logits: boolean, signal?: AbortSignal) {
    this.#enter();
    try {
      const item = { tokens, start: this.#position, table: this.#table, logits };
      const [out] = await this.#paged.step([item], signal);
      // A failed step leaves the position: K/V it wrote past it are ignored and later overwritten.
      this.#position += tokens.length;
      return out;
    } finally {
      this.#busy = false;
    }
  }

  setProfiling(on: boolean): Promise<void> {
    return this.#paged.setProfiling(on);
  }

  profile(): Promise<WasmProfile> {
    return this.#paged.profile();
  }

  truncate(position: number): void {
    checkTruncate(position, this.#position);
    this.#position = position;
  }

  async exportKv(start: number, end: number): Promise<Uint8Array> {
    checkKvRange(start, end, this.#position);
    return this.#paged.exportKv(this.#table, start, end);
  }

  async importKv(bytes: Uint8Array, tokens: number, dtype: KvDtype): Promise<void> {
    this.#enter();
    try {
      await this.#paged.importKv(this.#table, this.#position, bytes, tokens, dtype);
      this.#position += tokens;
    } finally {
      this.#busy = false;
    }
  }

  close(): Promise<void> {
    return this.#paged.close();
  }

  #enter(): void {
    assert(!this.#busy, "one call at a time: a forward or importKv is already running");
    this.#busy = true;
  }
}

/** Registry entry: the CPU runtime, available wherever the kernels are built. */
export const wasmRuntimeFactory: RuntimeFactory = {
  name: "wasm",
  priority: 10,
  unavailableReason: wasmUnavailableReason,
  create: (options) => createWasmRuntime(options),
  createPaged: (options) => createPagedWasmRuntime(options),
};
