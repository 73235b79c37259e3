// A loaded Hugging Face Llama model as a llama.cpp "llama" GGUF: the hyperparameters under
// `llama.*`, the tensors under llama.cpp's names, and how each tensor's bytes are made.
//
// Two things differ from the HF checkpoint beyond names:
// - q_proj and k_proj rows are permuted per head. HF applies RoPE with rotate_half, pairing channel
//   i with i + head_dim/2; llama.cpp's llama graph rotates adjacent pairs (2i, 2i+1). Reordering
//   each head's rows from [first half, second half] to interleaved makes the two the same function
//   (llama.cpp's convert_hf_to_gguf does this permutation too).
// - the rope scaling is written the way llama.cpp reads it: linear and yarn as
//   `llama.rope.scaling.*`; llama3 as a `rope_freqs.weight` tensor of per-pair frequency divisors
//   (llama.cpp divides each base frequency by it); dynamic NTK has no llama.cpp equivalent and is
//   refused.
// 1-D tensors (the RMSNorm weights) stay f32, as llama.cpp's converter keeps them; matrices take
// the requested type.

import { InvalidInputError } from "../errors.ts";
import type { ModelConfig } from "../model/config-types.ts";
import { computeRope, rotaryDim } from "../model/rope.ts";
import type { ModelWeights } from "../model/weights.ts";
import type { GgmlType, GgufTensorInfo, GgufValue } from "./format.ts";
import type { GgufTensorSpec } from "./writer.ts";

/** llama_ftype for a file whose matrices are all of one type. */
const FILE_TYPE: Record<GgmlType, number> = { f32: 0, f16: 1, bf16: 32 };

export interface LlamaGgufPlan {
  metadata: Array<[string, GgufValue]>;
  tensors: GgufTensorSpec[];
  /** The bytes of one planned tensor (read from the checkpoint, converted, permuted). */
  data(t: GgufTensorInfo): Promise<Uint8Array>;
}

/** Where a GGUF tensor comes from: an HF tensor name, and the per-head row permutation if any. */
interface Source {
  hf: string;
  permuteHeads?: number;
}

function ropeMetadata(config: ModelConfig): Array<[string, GgufValue]> {
  const s = config.ropeScaling;
  const f32 = (value: number): GgufValue => ({ type: "f32", value });
  const u32 = (value: number): GgufValue => ({ type: "u32", value });
  const str = (value: string): GgufValue => ({ type: "string", value });
  switch (s.ropeType) {
    case "default":
    case "llama3": // carried by rope_freqs.weight
      return [];
    case "linear":
      return [
        ["llama.rope.scaling.type", str("linear")],
        ["llama.rope.scaling.factor", f32(s.factor)],
      ];
    case "dynamic":
      throw new InvalidInputError(
        "rope_scaling dynamic (NTK) has no llama.cpp equivalent: GGUF conversion refuses it",
      );
    case "yarn": {
      if (s.attentionFactor !== undefined || s.mscale || s.mscaleAllDim || s.truncate === false) {
        throw new InvalidInputError(
          "yarn attention_factor, mscale, mscale_all_dim and truncate: false have no llama.cpp equivalent: GGUF conversion refuses them",
        );
      }
      const out: Array<[string, GgufValue]> = [
        ["llama.rope.scaling.type", str("yarn")],
        ["llama.rope.scaling.factor", f32(s.factor)],
        [
          "llama.rope.scaling.original_context_length",
          u32(s.originalMaxPositionEmbeddings ?? config.maxPositionEmbeddings),
        ],
      ];
      // transformers treats 0 as "use the default" (`or 32`), as llama.cpp does when absent.
      if (s.betaFast) out.push(["llama.rope.scaling.yarn_beta_fast", f32(s.betaFast)]);
      if (s.betaSlow) out.push(["llama.rope.scaling.yarn_beta_slow", f32(s.betaSlow)]);
      return out;
    }
  }
}

/** llama3's frequency divisors: base inverse frequency / scaled inverse frequency, per pair. */
function llama3RopeFreqs(config: ModelConfig): Float32Array {
  const scaled = computeRope(config).invFreq;
  const dim = rotaryDim(config);
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < out.length; i++) out[i] = 1 / config.ropeTheta ** ((2 * i) / dim) / scaled[i];
  return out;
}

/**
 * Reorders each head's rows from HF's [x(0..d/2), x(d/2..d)] to [x0, x(d/2), x1, x(d/2+1), ...]:
 * GGUF row (h, 2j + t) = HF row (h, t * d/2 + j). `rowBytes` bytes per row.
 */
function permuteHeadRows(src: Uint8Array, heads: number, rowBytes: number): Uint8Array {
  const rows = src.byteLength / rowBytes;
  const d = rows / heads;
  const out = new Uint8Array(src.byteLength);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < d / 2; j++) {
      for (let t = 0; t < 2; t++) {
        const from = (h * d + t * (d / 2) + j) * rowBytes;
        out.set(src.subarray(from, from + rowBytes), (h * d + 2 * j + t) * rowBytes);
      }
    }
  }
  return out;
}

function asBytes(a: Float32Array | Uint16Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * The GGUF for `config` and `weights` with matrices of `type` and `vocab` (llama-vocab.ts) as the
 * tokenizer metadata.
 */
export function planLlamaGguf(
  config: ModelConfig,
  weights: ModelWeights,
  vocab: Array<[string, GgufValue]>,
  opts: { type: GgmlType; name: string },
): LlamaGgufPlan {
  if (config.attentionBias || config.mlpBias) {
    throw new InvalidInputError("GGUF conversion supports Llama without attention or MLP biases");
  }
  if (config.partialRotaryFactor !== 1) {
    throw new InvalidInputError("GGUF conversion needs rope over the whole head");
  }
  const u32 = (value: number): GgufValue => ({ type: "u32", value });
  const f32 = (value: number): GgufValue => ({ type: "f32", value });
  const metadata: Array<[string, GgufValue]> = [
    ["general.architecture", { type: "string", value: "llama" }],
    ["general.name", { type: "string", value: opts.name }],
    ["general.file_type", u32(FILE_TYPE[opts.type])],
    ["llama.vocab_size", u32(config.vocabSize)],
    ["llama.context_length", u32(config.maxPositionEmbeddings)],
    ["llama.embedding_length", u32(config.hiddenSize)],
    ["llama.block_count", u32(config.numHiddenLayers)],
    ["llama.feed_forward_length", u32(config.intermediateSize)],
    ["llama.attention.head_count", u32(config.numAttentionHeads)],
    ["llama.attention.head_count_kv", u32(config.numKeyValueHeads)],
    ["llama.attention.key_length", u32(config.headDim)],
    ["llama.attention.value_length", u32(config.headDim)],
    ["llama.attention.layer_norm_rms_epsilon", f32(config.rmsNormEps)],
    ["llama.rope.freq_base", f32(config.ropeTheta)],
    ["llama.rope.dimension_count", u32(rotaryDim(config))],
    ...ropeMetadata(config),
    ...vocab,
  ];

  const H = config.hiddenSize;
  const q = config.numAttentionHeads * config.headDim;
  const kv = config.numKeyValueHeads * config.headDim;
  const F = config.intermediateSize;
  const V = config.vocabSize;
  const sources = new Map<string, Source>();
  const tensors: GgufTensorSpec[] = [];
  // dims are ggml's ne: an HF (out, in) matrix is [in, out].
  const add = (name: string, dims: number[], source: Source) => {
    tensors.push({ name, type: dims.length === 1 ? "f32" : opts.type, dims });
    sources.set(name, source);
  };
  add("token_embd.weight", [H, V], { hf: "model.embed_tokens.weight" });
  let ropeFreqs: Float32Array | null = null;
  if (config.ropeScaling.ropeType === "llama3") {
    ropeFreqs = llama3RopeFreqs(config);
    tensors.push({ name: "rope_freqs.weight", type: "f32", dims: [ropeFreqs.length] });
  }
  for (let l = 0; l < config.numHiddenLayers; l++) {
    const hf = `model.layers.${l}`;
    const b = `blk.${l}`;
    add(`${b}.attn_norm.weight`, [H], { hf: `${hf}.input_layernorm.weight` });
    add(`${b}.attn_q.weight`, [H, q], {
      hf: `${hf}.self_attn.q_proj.weight`,
      permuteHeads: config.numAttentionHeads,
    });
    add(`${b}.attn_k.weight`, [H, kv], {
      hf: `${hf}.self_attn.k_proj.weight`,
      permuteHeads: config.numKeyValueHeads,
    });
    add(`${b}.attn_v.weight`, [H, kv], { hf: `${hf}.self_attn.v_proj.weight` });
    add(`${b}.attn_output.weight`, [q, H], { hf: `${hf}.self_attn.o_proj.weight` });
    add(`${b}.ffn_norm.weight`, [H], { hf: `${hf}.post_attention_layernorm.weight` });
    add(`${b}.ffn_gate.weight`, [H, F], { hf: `${hf}.mlp.gate_proj.weight` });
    add(`${b}.ffn_up.weight`, [H, F], { hf: `${hf}.mlp.up_proj.weight` });
    add(`${b}.ffn_down.weight`, [F, H], { hf: `${hf}.mlp.down_proj.weight` });
  }
  add("output_norm.weight", [H], { hf: "model.norm.weight" });
  // Tied embeddings: no output.weight; llama.cpp then uses token_embd for the logits.
  if (!config.tieWordEmbeddings) add("output.weight", [H, V], { hf: "lm_head.weight" });

  async function data(t: GgufTensorInfo): Promise<Uint8Array> {
    if (t.name === "rope_freqs.weight" && ropeFreqs) return asBytes(ropeFreqs);
    const src = sources.get(t.name);
    if (!src) throw new Error(`assertion failed: no source for GGUF tensor ${t.name}`);
    const bytes = asBytes(
      t.type === "f32" ? await weights.read(src.hf, "f32") : await weights.read(src.hf, t.type),
    );
    if (src.permuteHeads === undefined) return bytes;
    return permuteHeadRows(bytes, src.permuteHeads, t.dims[0] * (t.type === "f32" ? 4 : 2));
  }
  return { metadata, tensors, data };
}
