// The Runtime (core/engine/runtime.ts) over a native engine, for both hosts: the emscripten module
// ("native-wasm", reference kernels) and the N-API addon ("cuda"). Everything here is argument
// shaping; the model runs in native/src/engine.cpp.

import type { RuntimeOptions } from "../../core/engine/registry.ts";
import {
  checkKvRange,
  checkTruncate,
  type Runtime,
  type RuntimeInfo,
} from "../../core/engine/runtime.ts";
import { CancelledError, InvalidInputError, NotAvailableError } from "../../core/errors.ts";
import { type KvDtype, type KvLayout, kvLayoutOf, kvPayloadBytes } from "../../core/kv/layout.ts";
import type { ModelConfig } from "../../core/model/config-types.ts";
import { computeRope, rotaryDim } from "../../core/model/rope.ts";
import {
  type BackendInfo,
  Dtype,
  type EngineConfig,
  kvDtypeCode,
  type NativeEngine,
  type NativeEngineBase,
  type NativeHost,
} from "./abi.ts";

export interface NativeRuntimeSpec {
  /** Registry name reported in info. */
  name: string;
  /** ul_backend_kind. */
  backend: number;
  /** RuntimeInfo.kernels: the kernel set this spec runs. */
  kernels: string;
  /** KV dtypes this runtime offers through the Runtime seam, first = default. */
  kvDtypes: KvDtype[];
  /** How weights cross into the engine: f32 (reference keeps f32) or bf16 (CUDA keeps bf16). */
  weightTransfer: "f32" | "bf16";
  /** Default KV capacity when options.maxPositions is absent (capped by the model's maximum). */
  defaultMaxPositions: number;
  /** Rows per chunk inside the engine (0 = engine default). */
  maxChunk: number;
  /**
   * Tokens per synchronous native call: `signal` is checked and the event loop runs between calls.
   * Small for the scalar wasm engine; a whole GPU chunk for CUDA (smaller calls starve the GEMMs).
   */
  callTokens: number;
}

/**
 * RuntimeInfo.kernels from what the engine reports running: "cpp-reference" for the reference
 * kernels, "cuda gemm=cublaslt <file>" or "cuda gemm=own-wmma" on a GPU; the spec's name when the
 * host has no report.
 */
export function kernelsLine(info: BackendInfo | undefined, fallback: string): string {
  if (!info) return fallback;
  if (info.kernels === "reference") return "cpp-reference";
  const gemm = info.cublaslt ? `${info.gemm} ${info.cublaslt}` : info.gemm;
  const own = info.gemmOwnShapes
    ? ` (own-wmma for ${info.gemmOwnShapes} shapes cuBLASLt refused)`
    : "";
  return `${info.kernels} gemm=${gemm}${own}${info.gemmForced ? ` (forced: UL_GEMM=${info.gemmForced})` : ""}`;
}

/** ul_config from the validated ModelConfig; rope from core/model/rope.ts (one implementation). */
export function engineConfig(
  c: ModelConfig,
  spec: NativeRuntimeSpec,
  maxPositions: number,
  kvDtype: KvDtype,
): EngineConfig {
  if (c.attentionBias || c.mlpBias) {
    throw new NotAvailableError(`the native core runs Llama without biases; this model has biases`);
  }
  // "dynamic" rope depends on the sequence length; the engine holds one set of frequencies, those
  // for a sequence of maxPositions (equal to the static value up to max_position_embeddings).
  const rope = computeRope(c, { seqLen: maxPositions });
  return {
    hiddenSize: c.hiddenSize,
    intermediateSize: c.intermediateSize,
    numLayers: c.numHiddenLayers,
    numHeads: c.numAttentionHeads,
    numKvHeads: c.numKeyValueHeads,
    headDim: c.headDim,
    vocabSize: c.vocabSize,
    tieWordEmbeddings: c.tieWordEmbeddings,
    rmsNormEps: c.rmsNormEps,
    rotaryDim: rotaryDim(c),
    invFreq: rope.invFreq,
    attentionScaling: rope.attentionScaling,
    maxPositions,
    kvDtype: kvDtypeCode(kvDtype),
    backend: spec.backend,
    maxChunk: spec.maxChunk,
  };
}

class NativeRuntime implements Runtime {
  readonly config: ModelConfig;
  readonly info: RuntimeInfo;
  #engine: NativeEngine | null;
  readonly #kvCode: number;
  readonly #callTokens: number;

  constructor(config: ModelConfig, info: RuntimeInfo, engine: NativeEngine, callTokens: number) {
    this.config = config;
    this.info = info;
    this.#engine = engine;
    this.#kvCode = kvDtypeCode(info.kv.dtype);
    this.#callTokens = callTokens;
  }

  get position(): number {
    return this.#live().position();
  }

  #live(): NativeEngine {
    if (!this.#engine) throw new InvalidInputError(`runtime '${this.info.name}' is closed`);
    return this.#engine;
  }

  async forward(tokens: Int32Array, signal?: AbortSignal): Promise<Float32Array> {
    const logits = await this.#run(tokens, true, signal);
    return logits!;
  }

  async prefill(tokens: Int32Array, signal?: AbortSignal): Promise<void> {
    await this.#run(tokens, false, signal);
  }

  // Calls of `callTokens` tokens so a cancel lands between them (a native call cannot be
  // interrupted), yielding to the event loop in between. A cancelled call truncates back what it
  // had finished, so the visible position is unchanged, as the seam requires.
  async #run(
    tokens: Int32Array,
    wantLogits: boolean,
    signal?: AbortSignal,
  ): Promise<Float32Array | null> {
    const e = this.#live();
    if (tokens.length === 0) throw new InvalidInputError("forward needs at least one token");
    const start = e.position();
    const step = this.#callTokens;
    let logits: Float32Array | null = null;
    for (let at = 0; at < tokens.length; at += step) {
      if (signal?.aborted) {
        e.truncate(start);
        throw new CancelledError();
      }
      const part = tokens.subarray(at, Math.min(tokens.length, at + step));
      const last = at + step >= tokens.length;
      logits = e.forwardAsync
        ? await e.forwardAsync(part, wantLogits && last)
        : e.forward(part, wantLogits && last);
      if (!last) await new Promise<void>((resolve) => setImmediate(resolve));
    }
    return logits;
  }

  truncate(position: number): void {
    const e = this.#live();
    checkTruncate(position, e.position());
    e.truncate(position);
  }

  async exportKv(start: number, end: number): Promise<Uint8Array> {
    const e = this.#live();
    checkKvRange(start, end, e.position());
    return e.exportKv(start, end, this.#kvCode as 0, kvPayloadBytes(this.info.kv, end - start));
  }

  async importKv(bytes: Uint8Array, tokens: number, dtype: KvLayout["dtype"]): Promise<void> {
    this.#live().importKv(bytes, tokens, kvDtypeCode(dtype));
  }

  async close(): Promise<void> {
    this.#engine?.destroy();
    this.#engine = null;
  }
}

/** The options both forms check the same way: KV dtype, weight format, positions per sequence. */
export function nativeOptions(
  spec: NativeRuntimeSpec,
  options: RuntimeOptions,
): { kvDtype: KvDtype; maxPositions: number } {
  const c = options.model.config;
  const kvDtype = options.kvDtype ?? spec.kvDtypes[0];
  if (!spec.kvDtypes.includes(kvDtype)) {
    throw new NotAvailableError(
      `runtime '${spec.name}' stores KV as ${spec.kvDtypes.join(", ")}, not ${kvDtype}`,
    );
  }
  if (options.weightFormat !== undefined && options.weightFormat !== spec.weightTransfer) {
    throw new NotAvailableError(
      `runtime '${spec.name}' holds weights as ${spec.weightTransfer}, not ${options.weightFormat}`,
    );
  }
  const maxPositions =
    options.maxPositions ?? Math.min(c.maxPositionEmbeddings, spec.defaultMaxPositions);
  if (!Number.isInteger(maxPositions) || maxPositions < 1) {
    throw new InvalidInputError(`maxPositions must be a positive integer, not ${maxPositions}`);
  }
  return { kvDtype, maxPositions };
}

/** Streams every weight of `model` into a fresh engine and checks it is complete; destroys it on
 *  failure. */
export async function loadEngineWeights<E extends NativeEngineBase>(
  engine: E,
  spec: NativeRuntimeSpec,
  options: RuntimeOptions,
): Promise<E> {
  const { model } = options;
  try {
    for (const t of model.weights.tensors()) {
      if (t.name.endsWith("rotary_emb.inv_freq")) continue; // buffers some checkpoints carry
      if (t.name === "lm_head.weight" && model.config.tieWordEmbeddings) continue;
      if (spec.weightTransfer === "bf16") {
        engine.setTensor(t.name, t.shape, await model.weights.read(t.name, "bf16"), Dtype.bf16);
      } else {
        engine.setTensor(t.name, t.shape, await model.weights.read(t.name, "f32"), Dtype.f32);
      }
    }
    engine.ready();
  } catch (err) {
    engine.destroy();
    throw err;
  }
  return engine;
}

/**
 * Tiered KV (docs/native.md "Tiered KV"): the native runtimes' one option beyond core's.
 * deviceKvPositions: positions of the KV pool kept in device memory, a whole number of blocks (the
 * lowest block ids); the rest of the pool lives in host memory and is staged per layer. Absent:
 * every block resident. Results are the same bit for bit either way.
 */
export interface NativeTierOptions {
  deviceKvPositions?: number;
}

/** deviceKvPositions as blocks of blockTokens positions, or undefined (all resident). The
 *  engine refuses more blocks than its pool has. */
export function deviceBlocksOf(
  host: NativeHost,
  options: NativeTierOptions,
  blockTokens: number,
): number | undefined {
  const v = options.deviceKvPositions;
  if (v === undefined) return undefined;
  if (!Number.isInteger(v) || v < 0 || v % blockTokens !== 0) {
    throw new InvalidInputError(
      `deviceKvPositions must be a whole number of ${blockTokens}-position KV blocks (>= 0), not ${v}`,
    );
  }
  if (!host.tiered) {
    throw new NotAvailableError(
      `the native host '${host.name}' has no tiered KV (ABI 4); rebuild it to use deviceKvPositions`,
    );
  }
  return v / blockTokens;
}

/** Positions per block of the single-sequence engine's pool (ul_engine.h: 64, the fp8 block). */
export const SINGLE_BLOCK_TOKENS = 64;

/** Builds a runtime: creates the engine, streams every weight in, checks it is complete. */
export async function createNativeRuntime(
  host: NativeHost,
  spec: NativeRuntimeSpec,
  options: RuntimeOptions & NativeTierOptions,
): Promise<Runtime> {
  const c = options.model.config;
  const { kvDtype, maxPositions } = nativeOptions(spec, options);
  const deviceBlocks = deviceBlocksOf(host, options, SINGLE_BLOCK_TOKENS);
  const engine = await loadEngineWeights(
    host.create(engineConfig(c, spec, maxPositions, kvDtype), deviceBlocks),
    spec,
    options,
  );
  const kv = kvLayoutOf(c, kvDtype);
  const mem = engine.memory();
  return new NativeRuntime(
    c,
    {
      name: spec.name,
      kv,
      maxPositions,
      threads: 1,
      kernels: kernelsLine(engine.backendInfo?.(), spec.kernels),
      weightBytes: mem.weightBytes,
      kvCapacityBytes: mem.kvBytes,
    },
    engine,
    spec.callTokens,
  );
}
