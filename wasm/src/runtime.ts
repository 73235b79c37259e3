// The WASM SIMD runtime: the Llama forward pass on the AssemblyScript kernels (wasm/assembly),
// sharded over worker threads (WorkerShards) or run in this thread (LocalShards: workerd).
//
// Numerics: activations, norms, softmax and accumulations in f32; weights held as f32, bf16 or int8
// (per-32 scales); KV cache f32 (default) or bf16. Bytes per token of KV cache, exactly:
//   2 (K, V) * layers * kv_heads * head_dim * (4 for f32 | 2 for bf16)
// the snapshot layout's size (core/kv/layout.ts); the cache grows by doubling up to maxPositions.

import type { RuntimeFactory, RuntimeOptions } from "../../core/engine/registry.ts";
import {
  checkKvRange,
  checkTruncate,
  type Runtime,
  type RuntimeInfo,
} from "../../core/engine/runtime.ts";
import {
  assert,
  CancelledError,
  InvalidInputError,
  LimitError,
  NotAvailableError,
} from "../../core/errors.ts";
import { fp8PayloadToF32 } from "../../core/kv/fp8.ts";
import {
  type KvDtype,
  type KvLayout,
  kvBytesPerElement,
  kvBytesPerToken,
  kvPayloadBytes,
} from "../../core/kv/layout.ts";
import type { ModelConfig } from "../../core/model/config-types.ts";
import { computeRope } from "../../core/model/rope.ts";
import type { LoadedModel } from "../../core/model/weights.ts";
import { decodeTo16, decodeToF32 } from "../../core/safetensors/dtype.ts";
import { isTokenId } from "../../core/tokenizer/token-id.ts";
import { loadShardWeights } from "./load-weights.ts";
import { LocalShards } from "./local-shards.ts";
import { kernelsName, loadWasmModule, onNode, wasmUnavailableReason } from "./module.ts";
import {
  checkShapes,
  chooseThreads,
  fitMemory,
  MAX_BATCH,
  planShards,
  type ShardPlan,
} from "./plan.ts";
import { PROFILE_PHASES, PROFILE_TOTAL, type WeightFormat } from "./shard.mjs";
import type { ShardSet } from "./shard-set.ts";

export interface WasmRuntimeOptions extends RuntimeOptions {
  /** The compiled kernels; default: wasm/build/ultralong.wasm (Node only). */
  wasmModule?: WebAssembly.Module;
}

function defaultWeightFormat(model: LoadedModel): WeightFormat {
  const q = model.weights.tensors().find((t) => t.name.endsWith("self_attn.q_proj.weight"));
  return q?.dtype === "bf16" ? "bf16" : "f32";
}

/**
 * Where forwards spent their time since profiling was turned on: per shard, ms per phase
 * (shard.mjs PROFILE_PHASES), `glue` the shard's JS between them, `total` its forwards' time; on
 * the main thread, the embedding lookups and the calls' whole time (`runMs`: what a caller waits).
 */
export interface WasmProfile {
  shards: Array<Record<(typeof PROFILE_PHASES)[number] | "glue" | "total", number>>;
  embedMs: number;
  runMs: number;
  /** Tokens the profiled calls took. */
  tokens: number;
}

/** The wasm runtime's profiling, beside the Runtime seam (bench and diagnostics only). */
export interface ProfiledRuntime extends Runtime {
  setProfiling(on: boolean): Promise<void>;
  profile(): Promise<WasmProfile>;
}

export async function createWasmRuntime(options: WasmRuntimeOptions): Promise<ProfiledRuntime> {
  const { model } = options;
  const config = model.config;
  const weightFormat = options.weightFormat ?? defaultWeightFormat(model);
  const kvDtype = options.kvDtype ?? "f32";
  if (kvDtype !== "f32" && kvDtype !== "bf16") {
    throw new NotAvailableError(`runtime 'wasm' stores KV as f32, bf16, not ${kvDtype}`);
  }
  checkShapes(config, weightFormat);
  const requested = options.maxPositions ?? config.maxPositionEmbeddings;
  if (!Number.isInteger(requested) || requested < 1) {
    throw new InvalidInputError(`maxPositions must be a positive integer, not ${requested}`);
  }
  const base = {
    hidden: config.hiddenSize,
    layers: config.numHiddenLayers,
    headDim: config.headDim,
    eps: config.rmsNormEps,
    weightFormat,
    kvDtype,
    maxBatch: MAX_BATCH,
    maxPositions: requested,
  } as const;
  let threads = options.threads;
  let sizing = "";
  if (threads === undefined && onNode()) {
    const cores = (await import("node:os")).availableParallelism();
    ({ threads, reason: sizing } = chooseThreads(config, base, cores, requested));
  }
  threads ??= 1;
  if (!Number.isInteger(threads) || threads < 1) {
    throw new InvalidInputError(`threads must be a positive integer, not ${threads}`);
  }
  if (threads > 1 && !onNode()) {
    throw new NotAvailableError("threads > 1 needs Node worker_threads; use threads: 1 here");
  }
  const plans = planShards(config, threads, base);
  const fit = fitMemory(plans, requested);
  const maxPositions = fit.maxPositions;
  let weightBytes = fit.weightBytes;

  const module = options.wasmModule ?? (await loadWasmModule());
  let shards: ShardSet;
  if (threads === 1) {
    shards = new LocalShards(module, plans[0].spec);
  } else {
    // Imported by a computed URL so bundlers leave it out: a workerd bundle must not pull in
    // node:worker_threads, and the threaded path needs the files on disk anyway (worker.mjs is a
    // worker entry of its own).
    const { WorkerShards } = (await import(
      new URL("./worker-shards.ts", import.meta.url).href
    )) as typeof import("./worker-shards.ts");
    shards = await WorkerShards.start(
      module,
      plans.map((p) => p.spec),
      plans.map((p) => p.vocab.start),
      config.vocabSize,
    );
  }
  try {
    const embed = await loadShardWeights(model, plans, shards, weightFormat);
    weightBytes += embed.byteLength;
    const kv: KvLayout = {
      layers: config.numHiddenLayers,
      kvHeads: config.numKeyValueHeads,
      headDim: config.headDim,
      dtype: kvDtype,
    };
    const info: RuntimeInfo = {
      name: "wasm",
      kv,
      maxPositions,
      threads,
      kernels: kernelsName(module),
      weightBytes,
      weightFormat,
      kvCapacityBytes: kvPayloadBytes(kv, maxPositions),
      ...(sizing ? { sizing } : {}),
    };
    const runtime = new WasmRuntime(config, info, shards, plans, embed);
    await runtime.init();
    return runtime;
  } catch (err) {
    await shards.close();
    throw err;
  }
}

class WasmRuntime implements ProfiledRuntime {
  readonly config: ModelConfig;
  readonly info: RuntimeInfo;
  readonly #shards: ShardSet;
  readonly #plans: ShardPlan[];
  readonly #embed: Float32Array | Uint16Array; // (vocab, hidden), f32 or bf16 bits
  readonly #input: Float32Array; // (MAX_BATCH, hidden) f32
  #position = 0;
  #busy = false;
  #closed = false;
  #ropeSeqLen = -1;
  #profiling: { embedMs: number; runMs: number; tokens: number } | null = null;

  constructor(
    config: ModelConfig,
    info: RuntimeInfo,
    shards: ShardSet,
    plans: ShardPlan[],
    embed: Float32Array | Uint16Array,
  ) {
    this.config = config;
    this.info = info;
    this.#shards = shards;
    this.#plans = plans;
    this.#embed = embed;
    this.#input = new Float32Array(MAX_BATCH * config.hiddenSize);
  }

  async init(): Promise<void> {
    await this.#setRope(0);
  }

  get position(): number {
    return this.#position;
  }

  /**
   * Rope for a forward ending at `end`. Only "dynamic" depends on it: its frequencies are those of
   * one forward over `end` positions (computeRope's stateless rule), so positions cached by an
   * earlier, shorter call keep the rotation they were computed with, as in transformers' cache.
   */
  async #setRope(end: number): Promise<void> {
    const dynamic = this.config.ropeScaling.ropeType === "dynamic";
    const seqLen = dynamic ? Math.max(end, this.config.maxPositionEmbeddings) : 0;
    if (seqLen === this.#ropeSeqLen) return;
    const rope = computeRope(this.config, dynamic ? { seqLen } : {});
    assert(rope.invFreq.length * 2 === this.config.headDim, "rope covers the whole head");
    await this.#shards.setRope(rope.invFreq, rope.attentionScaling);
    this.#ropeSeqLen = seqLen;
  }

  forward(tokens: Int32Array, signal?: AbortSignal): Promise<Float32Array> {
    return this.#run(tokens, true, signal) as Promise<Float32Array>;
  }

  async prefill(tokens: Int32Array, signal?: AbortSignal): Promise<void> {
    await this.#run(tokens, false, signal);
  }

  async setProfiling(on: boolean): Promise<void> {
    await this.#shards.setProfiling(on);
    this.#profiling = on ? { embedMs: 0, runMs: 0, tokens: 0 } : null;
  }

  async profile(): Promise<WasmProfile> {
    const main = this.#profiling ?? { embedMs: 0, runMs: 0, tokens: 0 };
    const shards = (await this.#shards.profile()).map((p) => {
      const row = Object.fromEntries(PROFILE_PHASES.map((name, i) => [name, p[i] ?? 0]));
      const phases = PROFILE_PHASES.reduce((sum, _, i) => sum + (p[i] ?? 0), 0);
      const total = p[PROFILE_TOTAL] ?? 0;
      return { ...row, glue: total - phases, total } as WasmProfile["shards"][number];
    });
    return { shards, ...main };
  }

  async #run(tokens: Int32Array, wantLogits: boolean, signal?: AbortSignal) {
    this.#enter();
    const start = this.#position;
    const prof = this.#profiling;
    const t0 = prof ? performance.now() : 0;
    try {
      const n = tokens.length;
      if (n === 0) throw new InvalidInputError("forward needs at least one token");
      if (start + n > this.info.maxPositions) {
        throw new LimitError(
          `${start + n} positions exceed this runtime's ${this.info.maxPositions}`,
        );
      }
      const V = this.config.vocabSize;
      for (const t of tokens) {
        if (!isTokenId(t, V)) throw new InvalidInputError(`token id ${t} is outside [0, ${V})`);
      }
      if (signal?.aborted) throw new CancelledError();
      await this.#setRope(start + n);
      let logits: Float32Array | null = null;
      for (let i = 0; i < n; i += MAX_BATCH) {
        const T = Math.min(MAX_BATCH, n - i);
        const te = prof ? performance.now() : 0;
        this.#embedRows(tokens.subarray(i, i + T));
        if (prof) prof.embedMs += performance.now() - te;
        const last = i + T === n;
        logits = await this.#shards.forward(
          this.#position,
          this.#input,
          T,
          wantLogits && last,
          signal,
        );
        this.#position += T;
      }
      if (prof) {
        prof.runMs += performance.now() - t0;
        prof.tokens += n;
      }
      return wantLogits ? logits : undefined;
    } catch (err) {
      // Nothing partial is visible: KV past the old position is ignored and later overwritten.
      this.#position = start;
      throw err;
    } finally {
      this.#busy = false;
    }
  }

  #embedRows(tokens: Int32Array): void {
    const H = this.config.hiddenSize;
    const table = this.#embed;
    if (table instanceof Float32Array) {
      for (let t = 0; t < tokens.length; t++) {
        this.#input.set(table.subarray(tokens[t] * H, (tokens[t] + 1) * H), t * H);
      }
      return;
    }
    const bits = new Uint32Array(this.#input.buffer);
    for (let t = 0; t < tokens.length; t++) {
      const src = tokens[t] * H;
      for (let i = 0; i < H; i++) bits[t * H + i] = table[src + i] << 16;
    }
  }

  truncate(position: number): void {
    this.#open();
    checkTruncate(position, this.#position);
    this.#position = position;
  }

  async exportKv(start: number, end: number): Promise<Uint8Array> {
    this.#open();
    checkKvRange(start, end, this.#position);
    const parts = await this.#shards.exportKv(start, end);
    const out = new Uint8Array(kvPayloadBytes(this.info.kv, end - start));
    for (const { s, at, shardAt, bytes } of this.#kvPieces(end - start)) {
      out.set(parts[s].subarray(shardAt, shardAt + bytes), at);
    }
    return out;
  }

  async importKv(bytes: Uint8Array, tokens: number, dtype: KvDtype): Promise<void> {
    this.#enter();
    try {
      if (!Number.isInteger(tokens) || tokens < 0) {
        throw new InvalidInputError(`importKv: token count ${tokens} is not a count`);
      }
      const from: KvLayout = { ...this.info.kv, dtype };
      if (bytes.byteLength !== kvPayloadBytes(from, tokens)) {
        throw new InvalidInputError(
          `importKv: ${bytes.byteLength} bytes is not ${tokens} tokens of ${dtype} KV (${kvBytesPerToken(from)} bytes per token)`,
        );
      }
      if (this.#position + tokens > this.info.maxPositions) {
        throw new LimitError(
          `${this.#position + tokens} positions exceed this runtime's ${this.info.maxPositions}`,
        );
      }
      // fp8 payloads are dequantised to f32 first (core/kv/fp8.ts); the cache keeps its dtype.
      const own =
        dtype === "fp8-e4m3"
          ? this.#toCacheDtype(fp8PayloadToF32(from, tokens, bytes), "f32")
          : this.#toCacheDtype(bytes, dtype);
      const row = this.#rowBytes() * tokens;
      const parts = this.#plans.map(
        (p) =>
          new Uint8Array(2 * this.config.numHiddenLayers * (p.kvHeads.end - p.kvHeads.start) * row),
      );
      for (const { s, at, shardAt, bytes } of this.#kvPieces(tokens)) {
        parts[s].set(own.subarray(at, at + bytes), shardAt);
      }
      await this.#shards.importKv(parts, this.#position, tokens);
      this.#position += tokens;
    } finally {
      this.#busy = false;
    }
  }

  #toCacheDtype(bytes: Uint8Array, dtype: "f32" | "bf16" | "f16"): Uint8Array {
    const to = this.info.kv.dtype;
    if (dtype === to) return bytes;
    const n = bytes.byteLength / kvBytesPerElement(dtype);
    if (to === "f32") {
      const out = new Float32Array(n);
      decodeToF32(dtype, bytes, out, 0);
      return new Uint8Array(out.buffer);
    }
    const out = new Uint16Array(n);
    decodeTo16(dtype, "bf16", bytes, out, 0);
    return new Uint8Array(out.buffer);
  }

  /**
   * How `tokens` positions of snapshot-layout KV, per layer K then V each (kv_head, position,
   * head_dim), split into the shards' contiguous KV-head ranges: for each piece in snapshot order,
   * the shard `s`, its offset `at` in the snapshot bytes, `shardAt` in that shard's part, and its
   * length.
   */
  *#kvPieces(tokens: number): Generator<{ s: number; at: number; shardAt: number; bytes: number }> {
    const row = this.#rowBytes() * tokens;
    const shardAt = this.#plans.map(() => 0);
    let at = 0;
    for (let block = 0; block < 2 * this.config.numHiddenLayers; block++) {
      for (let s = 0; s < this.#plans.length; s++) {
        const { kvHeads } = this.#plans[s];
        const bytes = (kvHeads.end - kvHeads.start) * row;
        yield { s, at, shardAt: shardAt[s], bytes };
        shardAt[s] += bytes;
        at += bytes;
      }
    }
  }

  #rowBytes(): number {
    return this.config.headDim * kvBytesPerElement(this.info.kv.dtype);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#shards.close();
  }

  #open(): void {
    assert(!this.#closed, "the runtime is closed");
  }

  #enter(): void {
    this.#open();
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
};
