// RoPE initialisation: the inverse frequencies and the attention scaling for every rope type, as
// transformers' modeling_rope_utils computes them (default, linear, dynamic, llama3, yarn), and the
// per-position cos/sin runtimes apply with rotate_half. See docs/rope.md for the formulas, the
// transformers versions they follow, and where this deliberately differs (float64, not float32).
//
// Layout (HF rotate_half): for rotary dim D, the pair (x[i], x[i + D/2]) is rotated by the angle
// position * invFreq[i], i in [0, D/2). cos/sin are multiplied by `attentionScaling` (yarn's mscale,
// 1 for the other types), so q.k picks up attentionScaling^2 exactly as in transformers.

import { assert } from "../errors.ts";
import type { ModelConfig } from "./config-types.ts";

/** The config fields RoPE depends on (a full ModelConfig satisfies it). */
export type RopeConfig = Pick<
  ModelConfig,
  "headDim" | "partialRotaryFactor" | "ropeTheta" | "ropeScaling" | "maxPositionEmbeddings"
>;

export interface RopeParams {
  /** (rotaryDim / 2) inverse frequencies, radians per position, float64. */
  invFreq: Float64Array;
  /** Factor applied to cos and sin (transformers' `attention_scaling`). */
  attentionScaling: number;
}

/** Number of rotated channels per head: int(head_dim * partial_rotary_factor). */
export function rotaryDim(config: Pick<ModelConfig, "headDim" | "partialRotaryFactor">): number {
  return Math.floor(config.headDim * config.partialRotaryFactor);
}

/** 1 / base^(2i / dim) for i in [0, dim/2): the unscaled RoPE frequencies. */
function defaultInvFreq(base: number, dim: number): Float64Array {
  const out = new Float64Array(dim / 2);
  for (let i = 0; i < out.length; i++) out[i] = 1 / base ** ((2 * i) / dim);
  return out;
}

/** YaRN's attention temperature: 0.1 * mscale * ln(scale) + 1, and 1 for scale <= 1. */
export function yarnGetMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

/**
 * Inverse frequencies and attention scaling for `config`'s rope settings.
 *
 * `seqLen` only matters for "dynamic": the number of positions the forward pass covers
 * (transformers uses max(position_ids) + 1). transformers recomputes dynamic frequencies
 * statefully (grow-only past max_position_embeddings, reset below it); this function is the
 * stateless value for one forward pass over `seqLen` positions from a fresh model.
 */
export function computeRope(config: RopeConfig, opts: { seqLen?: number } = {}): RopeParams {
  const dim = rotaryDim(config);
  assert(dim >= 2 && dim % 2 === 0, `rotary dim ${dim} must be even and >= 2`);
  const base = config.ropeTheta;
  const s = config.ropeScaling;
  switch (s.ropeType) {
    case "default":
      return { invFreq: defaultInvFreq(base, dim), attentionScaling: 1 };

    case "linear": {
      const invFreq = defaultInvFreq(base, dim);
      for (let i = 0; i < invFreq.length; i++) invFreq[i] /= s.factor;
      return { invFreq, attentionScaling: 1 };
    }

    case "dynamic": {
      // NTK-aware: stretch the base once the sequence outgrows max_position_embeddings.
      // transformers reads config.max_position_embeddings here, never original_max_...
      const maxPos = config.maxPositionEmbeddings;
      const seqLen = Math.max(opts.seqLen ?? maxPos, maxPos);
      const scaled = base * ((s.factor * seqLen) / maxPos - (s.factor - 1)) ** (dim / (dim - 2));
      return { invFreq: defaultInvFreq(scaled, dim), attentionScaling: 1 };
    }

    case "llama3": {
      // Long wavelengths (beyond original / low_freq_factor) are divided by factor, short ones
      // (below original / high_freq_factor) kept, the band between blended linearly in 1/wavelen.
      const invFreq = defaultInvFreq(base, dim);
      const old = s.originalMaxPositionEmbeddings;
      const lowFreqWavelen = old / s.lowFreqFactor;
      const highFreqWavelen = old / s.highFreqFactor;
      for (let i = 0; i < invFreq.length; i++) {
        const f = invFreq[i];
        const wavelen = (2 * Math.PI) / f;
        if (wavelen > lowFreqWavelen) {
          invFreq[i] = f / s.factor;
        } else if (!(wavelen < highFreqWavelen)) {
          const smooth = (old / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
          invFreq[i] = ((1 - smooth) * f) / s.factor + smooth * f;
        }
      }
      return { invFreq, attentionScaling: 1 };
    }

    case "yarn": {
      const factor = s.factor;
      const original = s.originalMaxPositionEmbeddings ?? config.maxPositionEmbeddings;
      let attentionScaling: number;
      if (s.attentionFactor !== undefined) {
        attentionScaling = s.attentionFactor;
      } else if (s.mscale && s.mscaleAllDim) {
        // Both set and non-zero (transformers tests truthiness): DeepSeek-style ratio.
        attentionScaling = yarnGetMscale(factor, s.mscale) / yarnGetMscale(factor, s.mscaleAllDim);
      } else {
        attentionScaling = yarnGetMscale(factor);
      }
      // `or 32` / `or 1` in transformers: 0 also means the default.
      const betaFast = s.betaFast || 32;
      const betaSlow = s.betaSlow || 1;
      const truncate = s.truncate ?? true;
      // The pair index whose wavelength completes `rotations` turns over the original context.
      const correctionDim = (rotations: number) =>
        (dim * Math.log(original / (rotations * 2 * Math.PI))) / (2 * Math.log(base));
      let low = correctionDim(betaFast);
      let high = correctionDim(betaSlow);
      if (truncate) {
        low = Math.floor(low);
        high = Math.ceil(high);
      }
      low = Math.max(low, 0);
      high = Math.min(high, dim - 1);
      if (low === high) high += 0.001; // transformers' guard against a zero-width ramp
      const half = dim / 2;
      const invFreq = new Float64Array(half);
      for (let i = 0; i < half; i++) {
        const posFreq = base ** ((2 * i) / dim);
        const extrapolation = 1 / posFreq;
        const interpolation = 1 / (factor * posFreq);
        const ramp = Math.min(Math.max((i - low) / (high - low), 0), 1);
        const extrapolationFactor = 1 - ramp;
        invFreq[i] =
          interpolation * (1 - extrapolationFactor) + extrapolation * extrapolationFactor;
      }
      return { invFreq, attentionScaling };
    }
  }
}

/**
 * The context length the rope settings are built for (what `ultralong inspect` reports):
 * yarn: original_max_position_embeddings x factor (max_position_embeddings x factor when the
 * config gives no original, as transformers then treats max_position_embeddings as the original);
 * llama3: the larger of max_position_embeddings and original x factor (Llama 3.1 says 131072 with
 * 8192 x 8 = 65536); default, linear, dynamic: max_position_embeddings.
 */
export function ropeContextLength(config: RopeConfig): number {
  const s = config.ropeScaling;
  switch (s.ropeType) {
    case "yarn":
      return Math.round(
        (s.originalMaxPositionEmbeddings ?? config.maxPositionEmbeddings) * s.factor,
      );
    case "llama3":
      return Math.max(
        config.maxPositionEmbeddings,
        Math.round(s.originalMaxPositionEmbeddings * s.factor),
      );
    default:
      return config.maxPositionEmbeddings;
  }
}

/**
 * cos and sin of `position * invFreq[i]`, times `attentionScaling`, for i in [0, invFreq.length),
 * written into `cos` and `sin` (each at least invFreq.length long; the rotate_half halves share
 * them). The angle is formed in float64, so it stays exact to ~1e-16 relative at position 4M,
 * where transformers' float32 angle is already off by up to ~0.25 rad in the fastest channel.
 */
export function ropeCosSin(
  rope: RopeParams,
  position: number,
  cos: Float32Array | Float64Array,
  sin: Float32Array | Float64Array,
): void {
  const { invFreq, attentionScaling } = rope;
  for (let i = 0; i < invFreq.length; i++) {
    const angle = position * invFreq[i];
    cos[i] = Math.cos(angle) * attentionScaling;
    sin[i] = Math.sin(angle) * attentionScaling;
  }
}
