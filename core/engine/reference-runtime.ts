// The reference runtime: a plain TypeScript Llama forward pass, read top to bottom, with no SIMD and
// no threads. It is the oracle the WASM and native runtimes are tested against, and a runtime that
// runs anywhere core runs (Node, workerd, a browser) on small models.
//
// Semantics are Hugging Face transformers' LlamaForCausalLM:
//   x = embed_tokens[ids]
//   per layer:  h = RMSNorm(x) * w_in                     (mean of squares, then * rsqrt(var + eps))
//               q, k, v = h Wq^T (+bq), h Wk^T (+bk), h Wv^T (+bv)
//               q, k rotated with rotate_half RoPE, cos/sin from core/model/rope.ts, both times
//                 attention_scaling (yarn's mscale), so q.k carries its square as in transformers
//               causal attention, softmax(q k^T / sqrt(head_dim)) v, query head h reading KV head
//                 h / (heads / kv_heads) (GQA, transformers' repeat_kv)
//               x += o_proj(attn);  h = RMSNorm(x) * w_post;  x += down(silu(gate(h)) * up(h))
//   logits = RMSNorm(x_last) * w_norm, times lm_head^T (embed_tokens when tied)
//
// Numerics: weights and activations are stored as f32; every dot product, the softmax, RMSNorm's
// mean and the RoPE angle are computed in f64 (JavaScript numbers) and rounded to f32 on store.
// Each position's arithmetic is the same whatever the chunking (attention always reads K and V back
// from the cache, rounded to the cache dtype), so chunked prefill, decode after prefill and one
// whole prefill agree bit for bit.
//
// Partial rotary (partial_rotary_factor < 1, which transformers' Llama does not support) rotates the
// first rotary_dim channels, as GPT-NeoX does. "dynamic" rope is computed per forward call for the
// positions that call covers, which is what transformers does with a cache (so, as there, a long
// dynamic-rope prompt gives different values chunked and whole once it passes
// max_position_embeddings).

import { assert, InvalidInputError, LimitError, NotAvailableError } from "../errors.ts";
import { type KvDtype, kvLayoutOf, kvPayloadBytes } from "../kv/layout.ts";
import type { ModelConfig } from "../model/config-types.ts";
import { computeRope, type RopeParams } from "../model/rope.ts";
import { isTokenId } from "../tokenizer/token-id.ts";
import {
  acquireWeights,
  forwardRows,
  growKvRows,
  importablePayload,
  type KvRows,
  layerCheckpoint,
  readKvRows,
  rowLogits,
  type Weights,
  writeKvRows,
} from "./reference-layers.ts";
import type { RuntimeFactory, RuntimeOptions } from "./registry.ts";
import { checkKvRange, checkTruncate, type Runtime, type RuntimeInfo } from "./runtime.ts";

const SUPPORTED_KV: readonly KvDtype[] = ["f32", "bf16", "f16"];

class ReferenceRuntime implements Runtime {
  readonly config: ModelConfig;
  readonly info: RuntimeInfo;
  #position = 0;
  #closed = false;
  #weights: Weights;
  /**
   * Per layer: K and V, each (kv_head, capacity, head_dim), K after RoPE. Held as f32 values that
   * are already rounded to the cache dtype (so a bf16 cache computes exactly what bf16 storage
   * gives, without a conversion in the attention loop); exportKv writes the dtype's bits.
   */
  #k: Float32Array[] = [];
  #v: Float32Array[] = [];
  #capacity = 0;
  /** RoPE for every type but dynamic, whose frequencies depend on the positions a call covers. */
  #rope: RopeParams | null;
  readonly #release: () => void;

  constructor(config: ModelConfig, weights: Weights, info: RuntimeInfo, release: () => void) {
    this.config = config;
    this.#weights = weights;
    this.info = info;
    this.#release = release;
    this.#rope = config.ropeScaling.ropeType === "dynamic" ? null : computeRope(config);
  }

  get position(): number {
    return this.#position;
  }

  async forward(tokens: Int32Array, signal?: AbortSignal): Promise<Float32Array> {
    return (await this.#run(tokens, true, signal))!;
  }

  async prefill(tokens: Int32Array, signal?: AbortSignal): Promise<void> {
    await this.#run(tokens, false, signal);
  }

  truncate(position: number): void {
    this.#open();
    checkTruncate(position, this.#position);
    this.#position = position;
  }

  async exportKv(start: number, end: number): Promise<Uint8Array> {
    this.#open();
    checkKvRange(start, end, this.#position);
    return readKvRows(this.#caches(), this.info.kv, (p) => p, start, end - start);
  }

  async importKv(bytes: Uint8Array, tokens: number, dtype: KvDtype): Promise<void> {
    this.#open();
    const payload = importablePayload(this.info.kv, bytes, tokens, dtype);
    this.#checkRoom(tokens);
    this.#ensureCapacity(this.#position + tokens);
    writeKvRows(this.#caches(), this.info.kv, (p) => p, this.#position, tokens, payload);
    this.#position += tokens;
  }

  /** The caches as reference-layers.ts takes them (growKvRows replaces the arrays in place). */
  #caches(): KvRows {
    return { k: this.#k, v: this.#v, capacity: this.#capacity };
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#release();
    this.#k = [];
    this.#v = [];
  }

  #open(): void {
    if (this.#closed) throw new Error("assertion failed: the runtime is closed");
  }

  #checkRoom(tokens: number): void {
    if (this.#position + tokens > this.info.maxPositions) {
      throw new LimitError(
        `${this.#position + tokens} positions exceed this runtime's ${this.info.maxPositions}`,
      );
    }
  }

  /** Grow the cache (doubling) to hold `positions`, keeping [0, position). */
  #ensureCapacity(positions: number): void {
    if (positions <= this.#capacity) return;
    const capacity = Math.min(this.info.maxPositions, Math.max(positions, this.#capacity * 2, 256));
    this.#capacity = growKvRows(this.#caches(), this.info.kv, capacity, this.#position).capacity;
  }

  async #run(
    tokens: Int32Array,
    wantLogits: boolean,
    signal?: AbortSignal,
  ): Promise<Float32Array | null> {
    this.#open();
    const c = this.config;
    const T = tokens.length;
    if (T === 0) throw new InvalidInputError("forward: no tokens");
    for (let t = 0; t < T; t++) {
      if (!isTokenId(tokens[t], c.vocabSize)) {
        throw new InvalidInputError(`token id ${tokens[t]} is outside [0, ${c.vocabSize})`);
      }
    }
    this.#checkRoom(T);
    const p0 = this.#position;
    this.#ensureCapacity(p0 + T);

    const H = c.hiddenSize;
    const w = this.#weights;
    const checkpoint = layerCheckpoint(signal);

    // (T, hidden) residual stream.
    const x = new Float32Array(T * H);
    for (let t = 0; t < T; t++) x.set(w.embed.subarray(tokens[t] * H, (tokens[t] + 1) * H), t * H);
    await forwardRows(c, w, this.#rope, x, [{ row0: 0, T, start: p0, slot: (p) => p }], {
      ...this.#caches(),
      dtype: this.info.kv.dtype,
      checkpoint,
    });

    let logits: Float32Array | null = null;
    if (wantLogits) {
      await checkpoint();
      logits = rowLogits(c, w, x, T - 1);
    }
    // Commit only now: a cancelled call leaves the position (and so the visible cache) unchanged.
    this.#position = p0 + T;
    return logits;
  }
}

/** The reference runtimes' options, checked: KV dtype, weight format, positions per sequence. */
export function referenceOptions(options: RuntimeOptions) {
  const c = options.model.config;
  const kvDtype = options.kvDtype ?? "f32";
  if (!SUPPORTED_KV.includes(kvDtype)) {
    throw new NotAvailableError(
      `runtime 'reference' stores KV as ${SUPPORTED_KV.join(", ")}, not ${kvDtype}`,
    );
  }
  const format = options.weightFormat ?? "f32";
  if (format !== "f32" && format !== "bf16") {
    throw new NotAvailableError(`the reference runtime holds f32 or bf16 weights, not ${format}`);
  }
  assert(c.numAttentionHeads % c.numKeyValueHeads === 0, "heads divisible by kv heads");
  const maxPositions = options.maxPositions ?? c.maxPositionEmbeddings;
  if (!Number.isInteger(maxPositions) || maxPositions < 1) {
    throw new InvalidInputError(`maxPositions must be a positive integer, not ${maxPositions}`);
  }
  return { kvDtype, format, maxPositions } as const;
}

/** RuntimeInfo of a reference runtime over `weights` (KV capacity for maxPositions). */
export function referenceInfo(
  c: ModelConfig,
  opts: ReturnType<typeof referenceOptions>,
  weights: Weights,
): RuntimeInfo {
  const kv = kvLayoutOf(c, opts.kvDtype);
  const arrays = new Set<Float32Array>([weights.embed, weights.norm, weights.lmHead]);
  for (const layer of weights.layers) {
    for (const a of Object.values(layer)) if (a) arrays.add(a);
  }
  let weightBytes = 0;
  for (const a of arrays) weightBytes += a.byteLength;
  return {
    name: "reference",
    kv,
    maxPositions: opts.maxPositions,
    threads: 1,
    kernels: "typescript",
    weightBytes,
    kvCapacityBytes: kvPayloadBytes(kv, opts.maxPositions),
  };
}

/** Loads (or shares) the weights for checked options; call release() when done with them. */
export async function referenceWeights(
  options: RuntimeOptions,
  opts: ReturnType<typeof referenceOptions>,
): Promise<{ weights: Weights; release: () => void }> {
  const shared = acquireWeights(options.model, opts.format);
  try {
    return { weights: await shared.weights, release: shared.release };
  } catch (err) {
    shared.release();
    throw err;
  }
}

/** Builds the reference runtime for a loaded model. */
export async function createReferenceRuntime(options: RuntimeOptions): Promise<Runtime> {
  const c = options.model.config;
  const opts = referenceOptions(options);
  const { weights, release } = await referenceWeights(options, opts);
  return new ReferenceRuntime(c, weights, referenceInfo(c, opts, weights), release);
}

/** Registry entry: always available, lowest priority (it is the slowest runtime). */
export const referenceRuntimeFactory: RuntimeFactory = {
  name: "reference",
  priority: 0,
  unavailableReason: async () => null,
  create: createReferenceRuntime,
  createPaged: async (options) =>
    (await import("./paged-reference-runtime.ts")).createPagedReferenceRuntime(options),
};
