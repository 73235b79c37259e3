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

import {
  assert,
  CancelledError,
  InvalidInputError,
  LimitError,
  NotAvailableError,
} from "../errors.ts";
import { fp8PayloadToF32 } from "../kv/fp8.ts";
import {
  type KvDtype,
  type KvLayout,
  kvBytesPerElement,
  kvBytesPerToken,
  kvLayoutOf,
  kvPayloadBytes,
} from "../kv/layout.ts";
import type { ModelConfig } from "../model/config-types.ts";
import { computeRope, type RopeParams, ropeCosSin, rotaryDim } from "../model/rope.ts";
import type { LoadedModel } from "../model/weights.ts";
import {
  bf16ToF32,
  decodeToF32,
  f16ToF32,
  f32BitsToBf16,
  f32BitsToF16,
} from "../safetensors/dtype.ts";
import { isTokenId } from "../tokenizer/token-id.ts";
import type { RuntimeFactory, RuntimeOptions } from "./registry.ts";
import { checkKvRange, checkTruncate, type Runtime, type RuntimeInfo } from "./runtime.ts";

interface LayerWeights {
  inputNorm: Float32Array; // (hidden)
  wq: Float32Array; // (heads * head_dim, hidden)
  wk: Float32Array; // (kv_heads * head_dim, hidden)
  wv: Float32Array; // (kv_heads * head_dim, hidden)
  wo: Float32Array; // (hidden, heads * head_dim)
  bq: Float32Array | null; // (heads * head_dim) when attention_bias
  bk: Float32Array | null; // (kv_heads * head_dim)
  bv: Float32Array | null; // (kv_heads * head_dim)
  bo: Float32Array | null; // (hidden)
  postNorm: Float32Array; // (hidden)
  wGate: Float32Array; // (ffn, hidden)
  wUp: Float32Array; // (ffn, hidden)
  wDown: Float32Array; // (hidden, ffn)
  bGate: Float32Array | null; // (ffn) when mlp_bias
  bUp: Float32Array | null; // (ffn)
  bDown: Float32Array | null; // (hidden)
}

interface Weights {
  embed: Float32Array; // (vocab, hidden)
  layers: LayerWeights[];
  norm: Float32Array; // (hidden)
  lmHead: Float32Array; // (vocab, hidden); the same array as `embed` when tied
}

const SUPPORTED_KV: readonly KvDtype[] = ["f32", "bf16", "f16"];

/** Yield to the event loop at most this often, so an AbortSignal can fire during a long forward. */
const YIELD_EVERY_MS = 20;

async function loadWeights(model: LoadedModel, format: "f32" | "bf16"): Promise<Weights> {
  const c = model.config;
  const names = new Set(model.weights.tensors().map((t) => t.name));
  const read = async (name: string): Promise<Float32Array> => {
    if (format === "f32") return model.weights.read(name, "f32");
    // bf16 in memory: the values a bf16 runtime sees, widened back to f32 exactly.
    const bits = await model.weights.read(name, "bf16");
    const out = new Float32Array(bits.length);
    const outBits = new Uint32Array(out.buffer);
    for (let i = 0; i < bits.length; i++) outBits[i] = bits[i] << 16;
    return out;
  };
  const optional = async (name: string) => (names.has(name) ? read(name) : null);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.numHiddenLayers; l++) {
    const p = `model.layers.${l}`;
    layers.push({
      inputNorm: await read(`${p}.input_layernorm.weight`),
      wq: await read(`${p}.self_attn.q_proj.weight`),
      wk: await read(`${p}.self_attn.k_proj.weight`),
      wv: await read(`${p}.self_attn.v_proj.weight`),
      wo: await read(`${p}.self_attn.o_proj.weight`),
      bq: await optional(`${p}.self_attn.q_proj.bias`),
      bk: await optional(`${p}.self_attn.k_proj.bias`),
      bv: await optional(`${p}.self_attn.v_proj.bias`),
      bo: await optional(`${p}.self_attn.o_proj.bias`),
      postNorm: await read(`${p}.post_attention_layernorm.weight`),
      wGate: await read(`${p}.mlp.gate_proj.weight`),
      wUp: await read(`${p}.mlp.up_proj.weight`),
      wDown: await read(`${p}.mlp.down_proj.weight`),
      bGate: await optional(`${p}.mlp.gate_proj.bias`),
      bUp: await optional(`${p}.mlp.up_proj.bias`),
      bDown: await optional(`${p}.mlp.down_proj.bias`),
    });
  }
  const embed = await read("model.embed_tokens.weight");
  const norm = await read("model.norm.weight");
  // transformers ties when tie_word_embeddings is set, whatever lm_head.weight the file holds.
  const lmHead =
    c.tieWordEmbeddings || !names.has("lm_head.weight") ? embed : await read("lm_head.weight");
  return { embed, layers, norm, lmHead };
}

/** out (rows, outF) = x (rows, inF) W^T (+ b), W (outF, inF) row-major; f64 accumulation. */
function linear(
  x: Float32Array,
  rows: number,
  w: Float32Array,
  b: Float32Array | null,
  inF: number,
  outF: number,
): Float32Array {
  const out = new Float32Array(rows * outF);
  for (let o = 0; o < outF; o++) {
    const wo = o * inF;
    const bias = b ? b[o] : 0;
    for (let r = 0; r < rows; r++) {
      const xr = r * inF;
      let sum = 0;
      for (let i = 0; i < inF; i++) sum += x[xr + i] * w[wo + i];
      out[r * outF + o] = sum + bias;
    }
  }
  return out;
}

/** Row-wise RMSNorm of x (rows, n) times weight (n), as transformers' LlamaRMSNorm. */
function rmsNorm(x: Float32Array, rows: number, n: number, weight: Float32Array, eps: number) {
  const out = new Float32Array(rows * n);
  for (let r = 0; r < rows; r++) {
    const off = r * n;
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x[off + i] * x[off + i];
    const inv = 1 / Math.sqrt(ss / n + eps);
    // transformers rounds x * rsqrt to the activation dtype before the weight multiply.
    for (let i = 0; i < n; i++) out[off + i] = weight[i] * Math.fround(x[off + i] * inv);
  }
  return out;
}

/**
 * Weights are read-only, so runtimes open at the same time on the same model and format share one
 * copy (tests open many); the copy is dropped when the last of them closes.
 */
const sharedWeights = new WeakMap<
  LoadedModel,
  Map<string, { weights: Promise<Weights>; users: number }>
>();

function acquireWeights(model: LoadedModel, format: "f32" | "bf16") {
  let byFormat = sharedWeights.get(model);
  if (!byFormat) sharedWeights.set(model, (byFormat = new Map()));
  let entry = byFormat.get(format);
  if (!entry) {
    entry = { weights: loadWeights(model, format), users: 0 };
    byFormat.set(format, entry);
  }
  entry.users++;
  const map = byFormat;
  const held = entry;
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    if (--held.users === 0 && map.get(format) === held) map.delete(format);
  };
  return { weights: held.weights, release };
}

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
    const { layers, kvHeads, headDim } = this.info.kv;
    const n = end - start;
    const out = new Uint8Array(kvPayloadBytes(this.info.kv, n));
    const dtype = this.info.kv.dtype;
    const f32 = new Float32Array(out.buffer);
    const u16 = new Uint16Array(out.buffer);
    let at = 0;
    for (let l = 0; l < layers; l++) {
      for (const cache of [this.#k[l], this.#v[l]]) {
        for (let h = 0; h < kvHeads; h++) {
          const from = (h * this.#capacity + start) * headDim;
          const rows = cache.subarray(from, from + n * headDim);
          if (dtype === "f32") {
            f32.set(rows, at);
          } else {
            // Exact: the values are already representable in the dtype.
            const bits = new Uint32Array(rows.buffer, rows.byteOffset, rows.length);
            const to16 = dtype === "bf16" ? f32BitsToBf16 : f32BitsToF16;
            for (let i = 0; i < rows.length; i++) u16[at + i] = to16(bits[i]);
          }
          at += n * headDim;
        }
      }
    }
    return out;
  }

  async importKv(bytes: Uint8Array, tokens: number, dtype: KvDtype): Promise<void> {
    this.#open();
    const layout: KvLayout = { ...this.info.kv, dtype };
    if (!Number.isInteger(tokens) || tokens < 0) {
      throw new InvalidInputError(`importKv: token count ${tokens} is not a count`);
    }
    if (bytes.byteLength !== kvPayloadBytes(layout, tokens)) {
      throw new InvalidInputError(
        `importKv: ${bytes.byteLength} bytes is not ${tokens} tokens of ${dtype} KV ` +
          `(${kvBytesPerToken(layout)} bytes per token)`,
      );
    }
    if (dtype === "fp8-e4m3") {
      // Dequantised to f32 first (core/kv/fp8.ts); the cache keeps its own dtype.
      await this.importKv(fp8PayloadToF32(layout, tokens, bytes), tokens, "f32");
      return;
    }
    this.#checkRoom(tokens);
    this.#ensureCapacity(this.#position + tokens);
    const { layers, kvHeads, headDim } = this.info.kv;
    const span = tokens * headDim;
    const elemBytes = kvBytesPerElement(dtype);
    const scratch = new Float32Array(span); // (tokens, head_dim), f32
    let at = 0;
    for (let l = 0; l < layers; l++) {
      for (const cache of [this.#k[l], this.#v[l]]) {
        for (let h = 0; h < kvHeads; h++) {
          const src = bytes.subarray(at, at + span * elemBytes);
          at += span * elemBytes;
          decodeToF32(dtype, src, scratch, 0);
          this.#store(cache, (h * this.#capacity + this.#position) * headDim, scratch, 0, span);
        }
      }
    }
    this.#position += tokens;
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
    const { layers, kvHeads, headDim } = this.info.kv;
    const capacity = Math.min(this.info.maxPositions, Math.max(positions, this.#capacity * 2, 256));
    for (let l = 0; l < layers; l++) {
      for (const caches of [this.#k, this.#v]) {
        const old = caches[l];
        const grown = new Float32Array(kvHeads * capacity * headDim);
        if (old) {
          for (let h = 0; h < kvHeads; h++) {
            const from = h * this.#capacity * headDim;
            grown.set(old.subarray(from, from + this.#position * headDim), h * capacity * headDim);
          }
        }
        caches[l] = grown;
      }
    }
    this.#capacity = capacity;
  }

  /** cache[at .. at+n) = values[from .. from+n), rounded to the cache dtype. */
  #store(cache: Float32Array, at: number, values: Float32Array, from: number, n: number): void {
    const dtype = this.info.kv.dtype;
    if (dtype === "f32") {
      cache.set(values.subarray(from, from + n), at);
      return;
    }
    const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
    for (let i = 0; i < n; i++) {
      const b = bits[from + i];
      cache[at + i] = dtype === "bf16" ? bf16ToF32(f32BitsToBf16(b)) : f16ToF32(f32BitsToF16(b));
    }
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
    const hd = c.headDim;
    const nH = c.numAttentionHeads;
    const nKV = c.numKeyValueHeads;
    const ffn = c.intermediateSize;
    const w = this.#weights;
    let lastYield = Date.now();
    const checkpoint = async () => {
      if (Date.now() - lastYield > YIELD_EVERY_MS) {
        await new Promise((resolve) => setTimeout(resolve, 0));
        lastYield = Date.now();
      }
      if (signal?.aborted) throw new CancelledError();
    };

    // (T, rot/2) cos and sin for positions p0 .. p0+T-1, f64.
    const rope = this.#rope ?? computeRope(c, { seqLen: p0 + T });
    const half = rotaryDim(c) / 2;
    const cos = new Float64Array(T * half);
    const sin = new Float64Array(T * half);
    for (let t = 0; t < T; t++) {
      ropeCosSin(rope, p0 + t, cos.subarray(t * half), sin.subarray(t * half));
    }
    const rotate = (x: Float32Array, heads: number) => {
      for (let t = 0; t < T; t++) {
        for (let h = 0; h < heads; h++) {
          const off = (t * heads + h) * hd;
          for (let i = 0; i < half; i++) {
            const a = x[off + i];
            const b = x[off + i + half];
            const cs = cos[t * half + i];
            const sn = sin[t * half + i];
            x[off + i] = a * cs - b * sn;
            x[off + i + half] = b * cs + a * sn;
          }
        }
      }
    };

    // (T, hidden) residual stream.
    const x = new Float32Array(T * H);
    for (let t = 0; t < T; t++) x.set(w.embed.subarray(tokens[t] * H, (tokens[t] + 1) * H), t * H);

    const scale = 1 / Math.sqrt(hd);
    const group = nH / nKV;
    const scores = new Float64Array(p0 + T);
    const acc = new Float64Array(hd);
    for (let l = 0; l < c.numHiddenLayers; l++) {
      await checkpoint();
      const lw = w.layers[l];
      const h = rmsNorm(x, T, H, lw.inputNorm, c.rmsNormEps);
      const q = linear(h, T, lw.wq, lw.bq, H, nH * hd); // (T, heads, head_dim)
      const k = linear(h, T, lw.wk, lw.bk, H, nKV * hd); // (T, kv_heads, head_dim)
      const v = linear(h, T, lw.wv, lw.bv, H, nKV * hd); // (T, kv_heads, head_dim)
      rotate(q, nH);
      rotate(k, nKV);
      const kCache = this.#k[l];
      const vCache = this.#v[l];
      for (let t = 0; t < T; t++) {
        for (let g = 0; g < nKV; g++) {
          const at = (g * this.#capacity + p0 + t) * hd;
          this.#store(kCache, at, k, (t * nKV + g) * hd, hd);
          this.#store(vCache, at, v, (t * nKV + g) * hd, hd);
        }
      }

      // (T, heads, head_dim) attention output.
      const attn = new Float32Array(T * nH * hd);
      for (let t = 0; t < T; t++) {
        const len = p0 + t + 1; // causal: positions 0 .. p0+t
        for (let qh = 0; qh < nH; qh++) {
          const g = Math.floor(qh / group);
          const qOff = (t * nH + qh) * hd;
          const base = g * this.#capacity * hd;
          let max = Number.NEGATIVE_INFINITY;
          for (let j = 0; j < len; j++) {
            const kj = base + j * hd;
            let dot = 0;
            for (let i = 0; i < hd; i++) dot += q[qOff + i] * kCache[kj + i];
            scores[j] = dot * scale;
            if (scores[j] > max) max = scores[j];
          }
          let sum = 0;
          acc.fill(0);
          for (let j = 0; j < len; j++) {
            const p = Math.exp(scores[j] - max);
            const vj = base + j * hd;
            sum += p;
            for (let i = 0; i < hd; i++) acc[i] += p * vCache[vj + i];
          }
          for (let i = 0; i < hd; i++) attn[qOff + i] = acc[i] / sum;
        }
      }
      const o = linear(attn, T, lw.wo, lw.bo, nH * hd, H);
      for (let i = 0; i < x.length; i++) x[i] += o[i];

      const h2 = rmsNorm(x, T, H, lw.postNorm, c.rmsNormEps);
      const gate = linear(h2, T, lw.wGate, lw.bGate, H, ffn); // (T, ffn)
      const up = linear(h2, T, lw.wUp, lw.bUp, H, ffn); // (T, ffn)
      for (let i = 0; i < gate.length; i++) {
        const gv = gate[i];
        gate[i] = (gv / (1 + Math.exp(-gv))) * up[i];
      }
      const down = linear(gate, T, lw.wDown, lw.bDown, ffn, H);
      for (let i = 0; i < x.length; i++) x[i] += down[i];
    }

    let logits: Float32Array | null = null;
    if (wantLogits) {
      await checkpoint();
      const last = rmsNorm(x.subarray((T - 1) * H), 1, H, w.norm, c.rmsNormEps);
      logits = linear(last, 1, w.lmHead, null, H, c.vocabSize);
    }
    // Commit only now: a cancelled call leaves the position (and so the visible cache) unchanged.
    this.#position = p0 + T;
    return logits;
  }
}

/** Builds the reference runtime for a loaded model. */
export async function createReferenceRuntime(options: RuntimeOptions): Promise<Runtime> {
  const { model } = options;
  const c = model.config;
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
  const shared = acquireWeights(model, format);
  let weights: Weights;
  try {
    weights = await shared.weights;
  } catch (err) {
    shared.release();
    throw err;
  }
  const kv = kvLayoutOf(c, kvDtype);
  const arrays = new Set<Float32Array>([weights.embed, weights.norm, weights.lmHead]);
  for (const layer of weights.layers) {
    for (const a of Object.values(layer)) if (a) arrays.add(a);
  }
  let weightBytes = 0;
  for (const a of arrays) weightBytes += a.byteLength;
  return new ReferenceRuntime(
    c,
    weights,
    {
      name: "reference",
      kv,
      maxPositions,
      threads: 1,
      kernels: "typescript",
      weightBytes,
      kvCapacityBytes: kvPayloadBytes(kv, maxPositions),
    },
    shared.release,
  );
}

/** Registry entry: always available, lowest priority (it is the slowest runtime). */
export const referenceRuntimeFactory: RuntimeFactory = {
  name: "reference",
  priority: 0,
  unavailableReason: async () => null,
  create: createReferenceRuntime,
};
