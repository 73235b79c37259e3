// The WASM SIMD runtime as a PagedRuntime (core/engine/paged-runtime.ts): the KV of many sequences
// in one pool of blocks per shard, one forward over a batch of them. The single-sequence Runtime
// (runtime.ts) is one contiguous block table over this.
//
// A step stacks every item's rows in item order and cuts them into MAX_BATCH-row micro-batches (an
// item may straddle two: its later rows attend to the K/V its earlier rows wrote one micro-batch
// before). Per micro-batch the projections run over all rows at once; rope takes each row's
// position, kv_store each row's slot, attention runs per item segment over that item's table. The
// rows that need logits go through lm_head together, LOGIT_ROWS at a time.
//
// Numerics: activations, norms, softmax and accumulations in f32; weights held as f32, bf16 or int8
// (per-32 scales); KV cache f32 (default) or bf16. Bytes per token of KV cache, exactly:
//   2 (K, V) * layers * kv_heads * head_dim * (4 for f32 | 2 for bf16)
// the snapshot layout's size (core/kv/layout.ts).

import type {
  PagedRuntime,
  PagedRuntimeInfo,
  PagedRuntimeOptions,
  StepItem,
} from "../../core/engine/paged-runtime.ts";
import type { RuntimeOptions } from "../../core/engine/registry.ts";
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
import { kernelsName, loadWasmModule, onNode } from "./module.ts";
import {
  checkShapes,
  chooseThreads,
  fitMemory,
  MAX_BATCH,
  planShards,
  type ShardPlan,
} from "./plan.ts";
import {
  BLOCK_TOKENS,
  blockTokensProblem,
  LOGIT_ROWS,
  PROFILE_PHASES,
  PROFILE_PREFIX_ROWS,
  PROFILE_TOTAL,
  stepLayout,
  type WeightFormat,
} from "./shard.mjs";
import type { ShardSet } from "./shard-set.ts";

export interface WasmRuntimeOptions extends RuntimeOptions {
  /** The compiled kernels; default: wasm/build/ultralong.wasm (Node only). */
  wasmModule?: WebAssembly.Module;
}

/**
 * Where steps spent their time since profiling was turned on: per shard, ms per phase
 * (shard.mjs PROFILE_PHASES), `glue` the shard's JS between them, `total` its forwards' time; on
 * the main thread, the embedding lookups and the calls' whole time (`runMs`: what a caller waits).
 */
export interface WasmProfile {
  shards: Array<Record<(typeof PROFILE_PHASES)[number] | "glue" | "total", number>>;
  embedMs: number;
  runMs: number;
  /** Tokens (rows) the profiled calls took. */
  tokens: number;
  /** Of those, the rows that attended to a prefix shared with other items in one group pass. */
  sharedPrefixRows: number;
}

/** Profiling beside a runtime seam (bench and diagnostics only). */
export interface Profiled {
  setProfiling(on: boolean): Promise<void>;
  profile(): Promise<WasmProfile>;
}

export type ProfiledPagedRuntime = PagedRuntime & Profiled;

function defaultWeightFormat(model: LoadedModel): WeightFormat {
  const q = model.weights.tensors().find((t) => t.name.endsWith("self_attn.q_proj.weight"));
  return q?.dtype === "bf16" ? "bf16" : "f32";
}

export async function createPagedWasmRuntime(
  options: PagedRuntimeOptions & WasmRuntimeOptions,
): Promise<ProfiledPagedRuntime> {
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
  const pool = options.poolPositions ?? requested;
  if (!Number.isInteger(pool) || pool < 1) {
    throw new InvalidInputError(`poolPositions must be a positive integer, not ${pool}`);
  }
  const blockTokens = options.blockTokens ?? BLOCK_TOKENS;
  const problem = blockTokensProblem(blockTokens);
  if (problem) throw new InvalidInputError(`runtime 'wasm': ${problem}`);
  const base = {
    hidden: config.hiddenSize,
    layers: config.numHiddenLayers,
    headDim: config.headDim,
    eps: config.rmsNormEps,
    weightFormat,
    kvDtype,
    maxBatch: MAX_BATCH,
    maxPositions: Math.max(requested, pool),
    blockTokens,
  } as const;
  let threads = options.threads;
  let sizing = "";
  if (threads === undefined && onNode()) {
    const cores = (await import("node:os")).availableParallelism();
    ({ threads, reason: sizing } = chooseThreads(config, base, cores, Math.max(requested, pool)));
  }
  threads ??= 1;
  if (!Number.isInteger(threads) || threads < 1) {
    throw new InvalidInputError(`threads must be a positive integer, not ${threads}`);
  }
  if (threads > 1 && !onNode()) {
    throw new NotAvailableError("threads > 1 needs Node worker_threads; use threads: 1 here");
  }
  const plans = planShards(config, threads, base);
  const fit = fitMemory(plans, requested, pool);
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
    const info: PagedRuntimeInfo = {
      name: "wasm",
      kv,
      maxPositions: fit.maxPositions,
      threads,
      kernels: kernelsName(module),
      weightBytes,
      weightFormat,
      kvCapacityBytes: kvPayloadBytes(kv, fit.poolPositions),
      blockTokens,
      totalBlocks: fit.poolPositions / blockTokens,
      ...(sizing ? { sizing } : {}),
    };
    return new PagedWasmRuntime(config, info, shards, plans, embed);
  } catch (err) {
    await shards.close();
    throw err;
  }
}

/** One item's rows in the micro-batch being filled. */
interface Segment {
  item: number;
  row0: number;
  rows: number;
  p0: number;
}

class PagedWasmRuntime implements ProfiledPagedRuntime {
  readonly config: ModelConfig;
  readonly info: PagedRuntimeInfo;
  readonly #shards: ShardSet;
  readonly #plans: ShardPlan[];
  readonly #embed: Float32Array | Uint16Array; // (vocab, hidden), f32 or bf16 bits
  readonly #input: Float32Array; // (MAX_BATCH, hidden) f32
  readonly #step: Int32Array; // shard.mjs stepLayout, written per micro-batch
  readonly #layout: ReturnType<typeof stepLayout>;
  #busy = false;
  #closed = false;
  #ropeSeqLen = -1;
  #profiling: { embedMs: number; runMs: number; tokens: number } | null = null;

  constructor(
    config: ModelConfig,
    info: PagedRuntimeInfo,
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
    this.#layout = stepLayout(MAX_BATCH, Math.ceil(plans[0].spec.maxPositions / info.blockTokens));
    this.#step = new Int32Array(this.#layout.ints);
  }

  /**
   * Rope's seqLen for a forward ending at `end`: only "dynamic" depends on it (its frequencies are
   * those of one forward over `end` positions, computeRope's stateless rule), so positions cached
   * by an earlier, shorter call keep the rotation they were computed with, as in transformers'
   * cache. 0 for every other rope type.
   */
  #seqLenFor(end: number): number {
    if (this.config.ropeScaling.ropeType !== "dynamic") return 0;
    return Math.max(end, this.config.maxPositionEmbeddings);
  }

  async #setRope(seqLen: number): Promise<void> {
    if (seqLen === this.#ropeSeqLen) return;
    const rope = computeRope(this.config, seqLen > 0 ? { seqLen } : {});
    assert(rope.invFreq.length * 2 === this.config.headDim, "rope covers the whole head");
    await this.#shards.setRope(rope.invFreq, rope.attentionScaling);
    this.#ropeSeqLen = seqLen;
  }

  async setProfiling(on: boolean): Promise<void> {
    await this.#shards.setProfiling(on);
    this.#profiling = on ? { embedMs: 0, runMs: 0, tokens: 0 } : null;
  }

  async profile(): Promise<WasmProfile> {
    const main = this.#profiling ?? { embedMs: 0, runMs: 0, tokens: 0 };
    const raw = await this.#shards.profile();
    const shards = raw.map((p) => {
      const row = Object.fromEntries(PROFILE_PHASES.map((name, i) => [name, p[i] ?? 0]));
      const phases = PROFILE_PHASES.reduce((sum, _, i) => sum + (p[i] ?? 0), 0);
      const total = p[PROFILE_TOTAL] ?? 0;
      return { ...row, glue: total - phases, total } as WasmProfile["shards"][number];
    });
    // Every shard groups alike: any shard's count.
    const sharedPrefixRows = raw[0]?.[PROFILE_PREFIX_ROWS] ?? 0;
    return { shards, ...main, sharedPrefixRows };
  }

  async step(items: readonly StepItem[], signal?: AbortSignal): Promise<(Float32Array | null)[]> {
    this.#enter();
    const prof = this.#profiling;
    const t0 = prof ? performance.now() : 0;
    try {
      let blocks = 0;
      items.forEach((item, i) => {
        blocks = Math.max(blocks, this.#checkItem(item, i));
      });
      if (signal?.aborted) throw new CancelledError();
      const out: (Float32Array | null)[] = items.map(() => null);
      // Dynamic rope: items whose seqLen differs run as separate passes (one rope table each).
      const groups = new Map<number, number[]>();
      items.forEach((item, i) => {
        const key = this.#seqLenFor(item.start + item.tokens.length);
        groups.set(key, [...(groups.get(key) ?? []), i]);
      });
      const views: number[] = []; // items whose logits are a view of the shards' buffer
      for (const [seqLen, members] of groups) {
        await this.#setRope(seqLen);
        await this.#pass(items, members, blocks, out, views, signal);
      }
      if (prof) {
        prof.runMs += performance.now() - t0;
        prof.tokens += items.reduce((n, item) => n + item.tokens.length, 0);
      }
      return out;
    } finally {
      this.#busy = false;
    }
  }

  /** Checks one item (InvalidInputError / LimitError naming it); returns the blocks it needs held. */
  #checkItem(item: StepItem, i: number): number {
    const { tokens, start, table } = item;
    const n = tokens.length;
    if (n === 0) throw new InvalidInputError(`step item ${i}: a forward needs at least one token`);
    if (!Number.isInteger(start) || start < 0) {
      throw new InvalidInputError(`step item ${i}: start ${start} is not a position`);
    }
    if (start + n > this.info.maxPositions) {
      throw new LimitError(
        `step item ${i}: ${start + n} positions exceed this runtime's ${this.info.maxPositions}`,
      );
    }
    const V = this.config.vocabSize;
    for (const t of tokens) {
      if (!isTokenId(t, V)) {
        throw new InvalidInputError(`step item ${i}: token id ${t} is outside [0, ${V})`);
      }
    }
    return this.#checkTable(table, start + n, `step item ${i}`);
  }

  /** Checks that `table` names valid blocks for positions [0, end); returns highest id + 1. */
  #checkTable(table: Int32Array, end: number, what: string): number {
    const bs = this.info.blockTokens;
    const need = Math.ceil(end / bs);
    if (!(table instanceof Int32Array) || table.length < need) {
      throw new InvalidInputError(
        `${what}: a block table for ${end} positions needs ${need} blocks of ${bs}, not ${table?.length}`,
      );
    }
    let most = 0;
    for (let b = 0; b < need; b++) {
      const id = table[b];
      if (id < 0 || id >= this.info.totalBlocks) {
        throw new InvalidInputError(
          `${what}: block id ${id} is outside [0, ${this.info.totalBlocks})`,
        );
      }
      most = Math.max(most, id + 1);
    }
    return most;
  }

  /** The rows of `members` (item indices) in micro-batches; fills `out` with requested logits. */
  async #pass(
    items: readonly StepItem[],
    members: number[],
    blocks: number,
    out: (Float32Array | null)[],
    views: number[],
    signal?: AbortSignal,
  ): Promise<void> {
    const bs = this.info.blockTokens;
    const L = this.#layout;
    const step = this.#step;
    let T = 0;
    let segments: Segment[] = [];
    const flush = async () => {
      step[0] = T;
      step[1] = segments.length;
      step[2] = blocks;
      let at = L.tables;
      segments.forEach((s, i) => {
        const o = L.segments + 4 * i;
        const len = Math.ceil((s.p0 + s.rows) / bs);
        step.set([s.row0, s.rows, s.p0, at], o);
        step.set(items[s.item].table.subarray(0, len), at);
        at += len;
      });
      await this.#shards.forward(this.#input, step.subarray(0, at), signal);
      // The rows whose item ends here and asked for logits, LOGIT_ROWS per lm_head pass.
      const wanted = segments.filter((s) => {
        const item = items[s.item];
        return item.logits && s.p0 + s.rows === item.start + item.tokens.length;
      });
      for (let i = 0; i < wanted.length; i += LOGIT_ROWS) {
        const part = wanted.slice(i, i + LOGIT_ROWS);
        const rows = Int32Array.from(part, (s) => s.row0 + s.rows - 1);
        // A pass whose rows all read their logits at once (transientLogits) may get a view of the
        // shards' buffer (no 0.5 MB copy a row); this pass overwrites it, so earlier views of this
        // step are copied first.
        for (const k of views.splice(0)) out[k] = (out[k] as Float32Array).slice();
        const view = part.every((s) => items[s.item].transientLogits === true);
        const logits = await this.#shards.logits(rows, view);
        const V = this.config.vocabSize;
        part.forEach((s, j) => {
          out[s.item] = logits.subarray(j * V, (j + 1) * V);
          if (view) views.push(s.item);
        });
      }
      T = 0;
      segments = [];
    };
    for (const i of members) {
      const { tokens, start, table } = items[i];
      for (let off = 0; off < tokens.length; ) {
        const rows = Math.min(tokens.length - off, MAX_BATCH - T);
        const p0 = start + off;
        segments.push({ item: i, row0: T, rows, p0 });
        for (let r = 0; r < rows; r++) {
          const p = p0 + r;
          step[L.positions + T + r] = p;
          step[L.slots + T + r] = table[Math.floor(p / bs)] * bs + (p % bs);
        }
        this.#embedRows(tokens.subarray(off, off + rows), T);
        T += rows;
        off += rows;
        if (T === MAX_BATCH) await flush();
      }
    }
    if (T > 0) await flush();
  }

  /** Embeddings of `tokens` into the input rows from `row0` on. */
  #embedRows(tokens: Int32Array, row0: number): void {
    const prof = this.#profiling;
    const t0 = prof ? performance.now() : 0;
    const H = this.config.hiddenSize;
    const table = this.#embed;
    if (table instanceof Float32Array) {
      for (let t = 0; t < tokens.length; t++) {
        this.#input.set(table.subarray(tokens[t] * H, (tokens[t] + 1) * H), (row0 + t) * H);
      }
    } else {
      const bits = new Uint32Array(this.#input.buffer);
      for (let t = 0; t < tokens.length; t++) {
        const src = tokens[t] * H;
        const dst = (row0 + t) * H;
        for (let i = 0; i < H; i++) bits[dst + i] = table[src + i] << 16;
      }
    }
    if (prof) prof.embedMs += performance.now() - t0;
  }

  async copyBlocks(pairs: ReadonlyArray<readonly [from: number, to: number]>): Promise<void> {
    this.#enter();
    try {
      const flat = new Int32Array(pairs.length * 2);
      pairs.forEach(([from, to], i) => {
        for (const id of [from, to]) {
          if (!Number.isInteger(id) || id < 0 || id >= this.info.totalBlocks) {
            throw new InvalidInputError(
              `copyBlocks: block id ${id} is outside [0, ${this.info.totalBlocks})`,
            );
          }
        }
        flat[2 * i] = from;
        flat[2 * i + 1] = to;
      });
      if (flat.length > 0) await this.#shards.copyBlocks(flat);
    } finally {
      this.#busy = false;
    }
  }

  async exportKv(table: Int32Array, start: number, end: number): Promise<Uint8Array> {
    this.#open();
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || start > end) {
      throw new InvalidInputError(`exportKv(${start}, ${end}): not a position range`);
    }
    if (end > this.info.maxPositions) {
      throw new InvalidInputError(
        `exportKv(${start}, ${end}): past this runtime's ${this.info.maxPositions} positions`,
      );
    }
    this.#checkTable(table, end, "exportKv");
    const parts = await this.#shards.exportKv(table, start, end);
    const out = new Uint8Array(kvPayloadBytes(this.info.kv, end - start));
    for (const { s, at, shardAt, bytes } of this.#kvPieces(end - start)) {
      out.set(parts[s].subarray(shardAt, shardAt + bytes), at);
    }
    return out;
  }

  async importKv(
    table: Int32Array,
    start: number,
    bytes: Uint8Array,
    tokens: number,
    dtype: KvDtype,
  ): Promise<void> {
    this.#enter();
    try {
      if (!Number.isInteger(tokens) || tokens < 0) {
        throw new InvalidInputError(`importKv: token count ${tokens} is not a count`);
      }
      if (!Number.isInteger(start) || start < 0) {
        throw new InvalidInputError(`importKv: start ${start} is not a position`);
      }
      const from: KvLayout = { ...this.info.kv, dtype };
      if (bytes.byteLength !== kvPayloadBytes(from, tokens)) {
        throw new InvalidInputError(
          `importKv: ${bytes.byteLength} bytes is not ${tokens} tokens of ${dtype} KV (${kvBytesPerToken(from)} bytes per token)`,
        );
      }
      if (start + tokens > this.info.maxPositions) {
        throw new LimitError(
          `${start + tokens} positions exceed this runtime's ${this.info.maxPositions}`,
        );
      }
      this.#checkTable(table, start + tokens, "importKv");
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
      await this.#shards.importKv(parts, table, start, tokens);
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
    assert(!this.#busy, "one call at a time: a step, copyBlocks or importKv is already running");
    this.#busy = true;
  }
}
