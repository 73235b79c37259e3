// The PagedRuntime (core/engine/paged-runtime.ts) over a paged native engine
// (ul_engine_create_paged), for both hosts: the emscripten module ("native-wasm", reference kernels)
// and the N-API addon ("cuda"). Argument shaping only: the step, the block tables and the checks
// of every argument are native/src/engine.cpp's; its statuses arrive here as core's typed errors.

import type {
  PagedRuntime,
  PagedRuntimeInfo,
  PagedRuntimeOptions,
  StepItem,
} from "../../core/engine/paged-runtime.ts";
import { CancelledError, InvalidInputError, NotAvailableError } from "../../core/errors.ts";
import { type KvDtype, kvLayoutOf, kvPayloadBytes } from "../../core/kv/layout.ts";
import type { ModelConfig } from "../../core/model/config-types.ts";
import { kvDtypeCode, type NativeHost, type NativePagedEngine } from "./abi.ts";
import {
  deviceBlocksOf,
  engineConfig,
  kernelsLine,
  loadEngineWeights,
  type NativeRuntimeSpec,
  type NativeTierOptions,
  nativeOptions,
} from "./native-runtime.ts";

/**
 * Positions per block when options.blockTokens is absent: 64, the fp8 scale block (an fp8 pool
 * needs a multiple of it) and the wasm runtime's block, so the scheduler's tables look alike.
 */
export const NATIVE_BLOCK_TOKENS = 64;

/** Builds a paged runtime: the pool is allocated whole at create (totalBlocks x blockTokens);
 *  with deviceKvPositions, blocks from deviceKvPositions / blockTokens up live in host memory. */
export async function createNativePagedRuntime(
  host: NativeHost,
  spec: NativeRuntimeSpec,
  options: PagedRuntimeOptions & NativeTierOptions,
): Promise<PagedRuntime> {
  if (!host.createPaged) {
    throw new NotAvailableError(
      `runtime '${spec.name}': this build of the native host has no paged engine (ABI 3); rebuild it`,
    );
  }
  const c = options.model.config;
  const { kvDtype, maxPositions } = nativeOptions(spec, options);
  const blockTokens = options.blockTokens ?? NATIVE_BLOCK_TOKENS;
  const pool = options.poolPositions ?? maxPositions;
  for (const [name, v] of [
    ["blockTokens", blockTokens],
    ["poolPositions", pool],
  ] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new InvalidInputError(`${name} must be a positive integer, not ${v}`);
    }
  }
  const totalBlocks = Math.ceil(pool / blockTokens);
  const deviceBlocks = deviceBlocksOf(host, options, blockTokens);
  const engine = await loadEngineWeights(
    host.createPaged(
      engineConfig(c, spec, maxPositions, kvDtype),
      blockTokens,
      totalBlocks,
      deviceBlocks,
    ),
    spec,
    options,
  );
  const mem = engine.memory();
  return new NativePagedRuntime(
    c,
    {
      name: spec.name,
      kv: kvLayoutOf(c, kvDtype),
      maxPositions,
      threads: 1,
      kernels: kernelsLine(engine.backendInfo?.(), spec.kernels),
      weightBytes: mem.weightBytes,
      kvCapacityBytes: mem.kvBytes,
      blockTokens,
      totalBlocks,
    },
    engine,
  );
}

class NativePagedRuntime implements PagedRuntime {
  readonly config: ModelConfig;
  readonly info: PagedRuntimeInfo;
  #engine: NativePagedEngine | null;
  readonly #kvCode: number;

  constructor(config: ModelConfig, info: PagedRuntimeInfo, engine: NativePagedEngine) {
    this.config = config;
    this.info = info;
    this.#engine = engine;
    this.#kvCode = kvDtypeCode(info.kv.dtype);
  }

  #live(): NativePagedEngine {
    if (!this.#engine) throw new InvalidInputError(`runtime '${this.info.name}' is closed`);
    return this.#engine;
  }

  // One native call: a cancel lands before it, not inside (a native call cannot be interrupted;
  // the scheduler's steps are bounded by its token budget).
  async step(items: readonly StepItem[], signal?: AbortSignal): Promise<(Float32Array | null)[]> {
    const e = this.#live();
    items.forEach((item, i) => {
      if (!(item.tokens instanceof Int32Array) || !(item.table instanceof Int32Array)) {
        throw new InvalidInputError(`step item ${i}: tokens and table must be Int32Arrays`);
      }
    });
    if (signal?.aborted) throw new CancelledError();
    const logits = await e.step(items);
    const V = this.config.vocabSize;
    let row = 0;
    return items.map((item) => {
      if (!item.logits) return null;
      const out = logits!.subarray(row * V, (row + 1) * V);
      row++;
      return out;
    });
  }

  async copyBlocks(pairs: ReadonlyArray<readonly [from: number, to: number]>): Promise<void> {
    const flat = new Int32Array(pairs.length * 2);
    pairs.forEach(([from, to], i) => {
      for (const id of [from, to]) {
        if (!Number.isInteger(id))
          throw new InvalidInputError(`copyBlocks: ${id} is not a block id`);
      }
      flat[2 * i] = from;
      flat[2 * i + 1] = to;
    });
    this.#live().copyBlocks(flat);
  }

  async exportKv(table: Int32Array, start: number, end: number): Promise<Uint8Array> {
    const e = this.#live();
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || start > end) {
      throw new InvalidInputError(`exportKv(${start}, ${end}): not a position range`);
    }
    const bytes = kvPayloadBytes(this.info.kv, end - start);
    return e.exportKvPaged(table, start, end, this.#kvCode as 0, bytes);
  }

  async importKv(
    table: Int32Array,
    start: number,
    bytes: Uint8Array,
    tokens: number,
    dtype: KvDtype,
  ): Promise<void> {
    this.#live().importKvPaged(table, start, bytes, tokens, kvDtypeCode(dtype));
  }

  async close(): Promise<void> {
    this.#engine?.destroy();
    this.#engine = null;
  }
}
