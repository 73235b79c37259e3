// The reference runtimes' arithmetic (reference-runtime.ts: one sequence; paged-reference-runtime.ts:
// a batch of sequences over KV blocks): weights, linear, RMSNorm and the layer loop over rows, in
// one place, so the single-sequence oracle and the batched one compute each row identically (a
// sequence's logits in a batch equal its logits alone, bit for bit). Numerics as reference-runtime.ts
// describes: f32 storage, f64 dot products, softmax, RMSNorm mean and RoPE angle.

import { CancelledError, InvalidInputError } from "../errors.ts";
import { fp8PayloadToF32 } from "../kv/fp8.ts";
import {
  type KvDtype,
  type KvLayout,
  kvBytesPerElement,
  kvBytesPerToken,
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

export interface LayerWeights {
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

export interface Weights {
  embed: Float32Array; // (vocab, hidden)
  layers: LayerWeights[];
  norm: Float32Array; // (hidden)
  lmHead: Float32Array; // (vocab, hidden); the same array as `embed` when tied
}

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
export function linear(
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
export function rmsNorm(
  x: Float32Array,
  rows: number,
  n: number,
  weight: Float32Array,
  eps: number,
) {
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

export function acquireWeights(model: LoadedModel, format: "f32" | "bf16") {
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

/** Rows [row0, row0 + T) of a forward are positions [start, start + T) of one sequence. */
export interface RowSegment {
  row0: number;
  T: number;
  start: number;
  /** The cache slot (row within each KV head's region) of the sequence's position p. */
  slot: (p: number) => number;
}

/**
 * KV caches: per layer K and V, each (kv_head, capacity, head_dim), K after RoPE, held as f32
 * values already rounded to the cache dtype (so a bf16 cache computes exactly what bf16 storage
 * gives, with no conversion in the attention loop); exports write the dtype's bits.
 */
export interface KvRows {
  k: Float32Array[];
  v: Float32Array[];
  capacity: number;
}

/** What forwardRows reads and writes. */
export interface RowKv extends KvRows {
  /** The cache dtype values are rounded to on store. */
  dtype: KvDtype;
  /** Runs between layers (yields, checks cancellation). */
  checkpoint(): Promise<void>;
}

/**
 * Every layer over x (rows, hidden), the residual stream, updated in place: the projections over
 * all rows at once, RoPE, K/V stored at each row's slot, and causal attention of each segment's
 * rows over its own sequence (positions 0 .. start + t). `rope` null: dynamic, computed per
 * segment for the positions it covers (as one forward of that sequence would).
 */
export async function forwardRows(
  c: ModelConfig,
  w: Weights,
  rope: RopeParams | null,
  x: Float32Array,
  segments: readonly RowSegment[],
  kv: RowKv,
): Promise<void> {
  const H = c.hiddenSize;
  const hd = c.headDim;
  const nH = c.numAttentionHeads;
  const nKV = c.numKeyValueHeads;
  const ffn = c.intermediateSize;
  const R = x.length / H;

  // (R, rot/2) cos and sin of each row's position, f64.
  const half = rotaryDim(c) / 2;
  const cos = new Float64Array(R * half);
  const sin = new Float64Array(R * half);
  for (const seg of segments) {
    const params = rope ?? computeRope(c, { seqLen: seg.start + seg.T });
    for (let t = 0; t < seg.T; t++) {
      const r = seg.row0 + t;
      ropeCosSin(params, seg.start + t, cos.subarray(r * half), sin.subarray(r * half));
    }
  }
  const rotate = (m: Float32Array, heads: number) => {
    for (let r = 0; r < R; r++) {
      for (let h = 0; h < heads; h++) {
        const off = (r * heads + h) * hd;
        for (let i = 0; i < half; i++) {
          const a = m[off + i];
          const b = m[off + i + half];
          const cs = cos[r * half + i];
          const sn = sin[r * half + i];
          m[off + i] = a * cs - b * sn;
          m[off + i + half] = b * cs + a * sn;
        }
      }
    }
  };

  const scale = 1 / Math.sqrt(hd);
  const group = nH / nKV;
  const maxLen = Math.max(...segments.map((s) => s.start + s.T));
  const scores = new Float64Array(maxLen);
  const slots = new Int32Array(maxLen);
  const acc = new Float64Array(hd);
  const cap = kv.capacity;
  for (let l = 0; l < c.numHiddenLayers; l++) {
    await kv.checkpoint();
    const lw = w.layers[l];
    const h = rmsNorm(x, R, H, lw.inputNorm, c.rmsNormEps);
    const q = linear(h, R, lw.wq, lw.bq, H, nH * hd); // (R, heads, head_dim)
    const k = linear(h, R, lw.wk, lw.bk, H, nKV * hd); // (R, kv_heads, head_dim)
    const v = linear(h, R, lw.wv, lw.bv, H, nKV * hd); // (R, kv_heads, head_dim)
    rotate(q, nH);
    rotate(k, nKV);
    const kCache = kv.k[l];
    const vCache = kv.v[l];
    for (const seg of segments) {
      for (let t = 0; t < seg.T; t++) {
        const r = seg.row0 + t;
        const slot = seg.slot(seg.start + t);
        for (let g = 0; g < nKV; g++) {
          const at = (g * cap + slot) * hd;
          storeKv(kv.dtype, kCache, at, k, (r * nKV + g) * hd, hd);
          storeKv(kv.dtype, vCache, at, v, (r * nKV + g) * hd, hd);
        }
      }
    }

    // (R, heads, head_dim) attention output.
    const attn = new Float32Array(R * nH * hd);
    for (const seg of segments) {
      const end = seg.start + seg.T;
      for (let j = 0; j < end; j++) slots[j] = seg.slot(j);
      for (let t = 0; t < seg.T; t++) {
        const r = seg.row0 + t;
        const len = seg.start + t + 1; // causal: positions 0 .. start+t
        for (let qh = 0; qh < nH; qh++) {
          const g = Math.floor(qh / group);
          const qOff = (r * nH + qh) * hd;
          const base = g * cap * hd;
          let max = Number.NEGATIVE_INFINITY;
          for (let j = 0; j < len; j++) {
            const kj = base + slots[j] * hd;
            let dot = 0;
            for (let i = 0; i < hd; i++) dot += q[qOff + i] * kCache[kj + i];
            scores[j] = dot * scale;
            if (scores[j] > max) max = scores[j];
          }
          let sum = 0;
          acc.fill(0);
          for (let j = 0; j < len; j++) {
            const p = Math.exp(scores[j] - max);
            const vj = base + slots[j] * hd;
            sum += p;
            for (let i = 0; i < hd; i++) acc[i] += p * vCache[vj + i];
          }
          for (let i = 0; i < hd; i++) attn[qOff + i] = acc[i] / sum;
        }
      }
    }
    const o = linear(attn, R, lw.wo, lw.bo, nH * hd, H);
    for (let i = 0; i < x.length; i++) x[i] += o[i];

    const h2 = rmsNorm(x, R, H, lw.postNorm, c.rmsNormEps);
    const gate = linear(h2, R, lw.wGate, lw.bGate, H, ffn); // (R, ffn)
    const up = linear(h2, R, lw.wUp, lw.bUp, H, ffn); // (R, ffn)
    for (let i = 0; i < gate.length; i++) {
      const gv = gate[i];
      gate[i] = (gv / (1 + Math.exp(-gv))) * up[i];
    }
    const down = linear(gate, R, lw.wDown, lw.bDown, ffn, H);
    for (let i = 0; i < x.length; i++) x[i] += down[i];
  }
}

/** Logits (vocab) of row r of the final residual stream x (rows, hidden). */
export function rowLogits(c: ModelConfig, w: Weights, x: Float32Array, r: number): Float32Array {
  const H = c.hiddenSize;
  const last = rmsNorm(x.subarray(r * H, (r + 1) * H), 1, H, w.norm, c.rmsNormEps);
  return linear(last, 1, w.lmHead, null, H, c.vocabSize);
}

/** cache[at .. at+n) = values[from .. from+n), rounded to the cache dtype (f32, bf16, f16). */
export function storeKv(
  dtype: KvDtype,
  cache: Float32Array,
  at: number,
  values: Float32Array,
  from: number,
  n: number,
): void {
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

/**
 * The snapshot-layout bytes (core/kv/layout.ts, in the cache dtype) of `n` positions from `start`
 * of the sequence whose position p is at slot(p). Exact: the values are representable already.
 */
export function readKvRows(
  kv: KvRows,
  layout: KvLayout,
  slot: (p: number) => number,
  start: number,
  n: number,
): Uint8Array {
  const { layers, kvHeads, headDim: hd, dtype } = layout;
  const out = new Uint8Array(kvPayloadBytes(layout, n));
  const f32 = new Float32Array(out.buffer);
  const u16 = new Uint16Array(out.buffer);
  const to16 = dtype === "bf16" ? f32BitsToBf16 : f32BitsToF16;
  let at = 0;
  for (let l = 0; l < layers; l++) {
    for (const cache of [kv.k[l], kv.v[l]]) {
      const bits = new Uint32Array(cache.buffer, cache.byteOffset, cache.length);
      for (let h = 0; h < kvHeads; h++) {
        for (let p = start; p < start + n; p++, at += hd) {
          const from = (h * kv.capacity + slot(p)) * hd;
          if (dtype === "f32") f32.set(cache.subarray(from, from + hd), at);
          else for (let i = 0; i < hd; i++) u16[at + i] = to16(bits[from + i]);
        }
      }
    }
  }
  return out;
}

/**
 * An importKv payload checked against `layout` (whose dtype is the cache's) and in a dtype the
 * caches take: fp8 is dequantised to f32 first (core/kv/fp8.ts); the cache keeps its own dtype.
 */
export function importablePayload(
  layout: KvLayout,
  bytes: Uint8Array,
  tokens: number,
  dtype: KvDtype,
): { bytes: Uint8Array; dtype: "f32" | "bf16" | "f16" } {
  const from: KvLayout = { ...layout, dtype };
  if (!Number.isInteger(tokens) || tokens < 0) {
    throw new InvalidInputError(`importKv: token count ${tokens} is not a count`);
  }
  if (bytes.byteLength !== kvPayloadBytes(from, tokens)) {
    throw new InvalidInputError(
      `importKv: ${bytes.byteLength} bytes is not ${tokens} tokens of ${dtype} KV ` +
        `(${kvBytesPerToken(from)} bytes per token)`,
    );
  }
  if (dtype === "fp8-e4m3") return { bytes: fp8PayloadToF32(from, tokens, bytes), dtype: "f32" };
  return { bytes, dtype };
}

/** Writes an importablePayload's `n` positions at positions [start, start + n), slots by slot(p). */
export function writeKvRows(
  kv: KvRows,
  layout: KvLayout,
  slot: (p: number) => number,
  start: number,
  n: number,
  payload: { bytes: Uint8Array; dtype: "f32" | "bf16" | "f16" },
): void {
  const { layers, kvHeads, headDim: hd } = layout;
  const values = new Float32Array(payload.bytes.byteLength / kvBytesPerElement(payload.dtype));
  decodeToF32(payload.dtype, payload.bytes, values, 0);
  let at = 0;
  for (let l = 0; l < layers; l++) {
    for (const cache of [kv.k[l], kv.v[l]]) {
      for (let h = 0; h < kvHeads; h++) {
        for (let p = start; p < start + n; p++, at += hd) {
          storeKv(layout.dtype, cache, (h * kv.capacity + slot(p)) * hd, values, at, hd);
        }
      }
    }
  }
}

/**
 * Grows every cache of `kv` to `capacity` slots per KV head, keeping slots [0, keep): the arrays in
 * kv.k and kv.v are replaced; returns kv with its new capacity.
 */
export function growKvRows(kv: KvRows, layout: KvLayout, capacity: number, keep: number): KvRows {
  const { layers, kvHeads, headDim: hd } = layout;
  for (let l = 0; l < layers; l++) {
    for (const caches of [kv.k, kv.v]) {
      const old = caches[l];
      const grown = new Float32Array(kvHeads * capacity * hd);
      if (old) {
        for (let h = 0; h < kvHeads; h++) {
          const from = h * kv.capacity * hd;
          grown.set(old.subarray(from, from + keep * hd), h * capacity * hd);
        }
      }
      caches[l] = grown;
    }
  }
  kv.capacity = capacity;
  return kv;
}

/** Yield to the event loop at most this often, so an AbortSignal can fire during a long forward. */
const YIELD_EVERY_MS = 20;

/**
 * The checkpoint a reference forward runs between layers: a macrotask turn at most every
 * YIELD_EVERY_MS (so a timer or a closed socket can abort it), then CancelledError if `signal` fired.
 */
export function layerCheckpoint(signal?: AbortSignal): () => Promise<void> {
  let lastYield = Date.now();
  return async () => {
    if (Date.now() - lastYield > YIELD_EVERY_MS) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      lastYield = Date.now();
    }
    if (signal?.aborted) throw new CancelledError();
  };
}
