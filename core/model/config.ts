// Hugging Face config.json / generation_config.json -> the typed, validated ModelConfig and
// GenerationDefaults. Nothing else in the project reads these files.
//
// Semantics follow transformers' LlamaConfig: a missing optional field takes LlamaConfig's default
// (num_key_value_heads = num_attention_heads, rms_norm_eps 1e-6, rope_theta 10000, ...), RoPE
// settings are read from `rope_scaling` (transformers 4) or `rope_parameters` (transformers 5), and
// the older `type` key is accepted for `rope_type`. Where transformers only logs a warning for a
// value it cannot use well (factor < 1, beta_fast < beta_slow, a non-"silu" activation) we refuse:
// a server should fail at load with one line, not produce quietly wrong logits.
//
// The shape fields transformers would default (hidden_size 4096, vocab_size 32000, ...) are
// REQUIRED here: defaulting a shape would only move the error to the weight loader, with a worse
// message. Every error is a FormatError whose message is one line: `<source>: <field> <problem>`.

import { FormatError } from "../errors.ts";
import type { ModelConfig, RopeScaling, WeightDtype } from "./config-types.ts";
import type { GenerationDefaults } from "./weights.ts";

type Json = Record<string, unknown>;

/** Architectures whose forward pass is Llama's (the only one every runtime implements). */
const LLAMA_ARCHITECTURES = new Set(["LlamaForCausalLM"]);

const DTYPES: Record<string, WeightDtype> = {
  float32: "f32",
  bfloat16: "bf16",
  float16: "f16",
};
const DTYPE_NAMES: Record<WeightDtype, string> = {
  f32: "float32",
  bf16: "bfloat16",
  f16: "float16",
};

/** Field readers that name the source file and field in every failure. */
class Fields {
  constructor(
    readonly source: string,
    readonly obj: Json,
    readonly prefix = "",
  ) {}

  fail(key: string, problem: string): never {
    throw new FormatError(`${this.source}: ${this.prefix}${key} ${problem}`);
  }

  has(key: string): boolean {
    return this.obj[key] !== undefined && this.obj[key] !== null;
  }

  show(v: unknown): string {
    const s = JSON.stringify(v);
    return s === undefined ? String(v) : s.length > 40 ? `${s.slice(0, 37)}...` : s;
  }

  number(key: string, dflt?: number): number {
    const v = this.obj[key];
    if (v === undefined || v === null) {
      if (dflt === undefined) this.fail(key, "is missing");
      return dflt;
    }
    if (typeof v !== "number" || !Number.isFinite(v)) {
      this.fail(key, `(${this.show(v)}) must be a finite number`);
    }
    return v;
  }

  positive(key: string, dflt?: number): number {
    const v = this.number(key, dflt);
    if (!(v > 0)) this.fail(key, `(${v}) must be > 0`);
    return v;
  }

  atLeastOne(key: string, dflt?: number): number {
    const v = this.number(key, dflt);
    if (!(v >= 1)) this.fail(key, `(${v}) must be >= 1`);
    return v;
  }

  int(key: string, dflt?: number): number {
    const v = this.number(key, dflt);
    if (!Number.isSafeInteger(v)) this.fail(key, `(${v}) must be an integer`);
    return v;
  }

  positiveInt(key: string, dflt?: number): number {
    const v = this.int(key, dflt);
    if (v <= 0) this.fail(key, `(${v}) must be > 0`);
    return v;
  }

  tokenId(key: string, v: unknown): number {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
      this.fail(key, `(${this.show(v)}) must be a non-negative integer token id`);
    }
    return v;
  }

  optionalTokenId(key: string, dflt: number | null): number | null {
    const v = this.obj[key];
    if (v === undefined) return dflt;
    if (v === null) return null;
    return this.tokenId(key, v);
  }

  /** An int, a list of ints, or null (-> []); `dflt` when absent. */
  tokenIds(key: string, dflt: number[]): number[] {
    const v = this.obj[key];
    if (v === undefined) return dflt;
    if (v === null) return [];
    if (Array.isArray(v)) return v.map((x) => this.tokenId(key, x));
    return [this.tokenId(key, v)];
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.obj[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== "boolean") this.fail(key, `(${this.show(v)}) must be true or false`);
    return v;
  }

  string(key: string): string | undefined {
    const v = this.obj[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "string") this.fail(key, `(${this.show(v)}) must be a string`);
    return v;
  }

  /** Refuse keys a rope type does not take (transformers warns and ignores; see KNOWN_EXTRA). */
  only(allowed: Set<string>, what: string): void {
    for (const key of Object.keys(this.obj)) {
      if (!allowed.has(key)) this.fail(key, `is not a parameter of ${what}`);
    }
  }
}

function parseJsonObject(text: string, source: string): Json {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const why = e instanceof Error ? e.message.split("\n")[0] : String(e);
    throw new FormatError(`${source}: not valid JSON (${why})`, { cause: e });
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new FormatError(`${source}: must be a JSON object`);
  }
  return value as Json;
}

// Keys transformers accepts beside each rope type's own (it puts rope_theta and
// partial_rotary_factor inside rope_parameters since v5).
const COMMON_ROPE_KEYS = ["rope_type", "type", "rope_theta", "partial_rotary_factor"];
// Keys that real checkpoints carry beside a rope_scaling although transformers does not read them:
// a Llama 3.1 config converted to yarn keeps llama3's low/high_freq_factor, and NousResearch's
// Yarn-Llama-2 configs say `finetuned`. transformers ignores them (with a warning), so do we; any
// other unknown key is refused as a likely typo.
const KNOWN_EXTRA: Record<string, string[]> = {
  yarn: ["low_freq_factor", "high_freq_factor", "finetuned"],
  dynamic: ["original_max_position_embeddings"],
  linear: [],
  llama3: [],
  default: [],
};
const ROPE_KEYS: Record<RopeScaling["ropeType"], string[]> = {
  default: [],
  linear: ["factor"],
  dynamic: ["factor"],
  llama3: ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
  yarn: [
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "attention_factor",
    "mscale",
    "mscale_all_dim",
    "truncate",
  ],
};

/**
 * rope_scaling / rope_parameters -> RopeScaling. `topLevelOriginal` is a top-level
 * original_max_position_embeddings, which transformers 5 prefers for llama3 and yarn.
 */
function parseRope(
  r: Fields,
  topLevelOriginal: number | undefined,
  maxPositionEmbeddings: number,
): RopeScaling {
  const typeKey = r.has("rope_type") ? "rope_type" : "type";
  const typeName = r.string(typeKey) ?? "default";
  if (!Object.hasOwn(ROPE_KEYS, typeName)) {
    r.fail(typeKey, `("${typeName}") is not one of ${Object.keys(ROPE_KEYS).join(", ")}`);
  }
  const ropeType = typeName as RopeScaling["ropeType"];
  r.only(
    new Set([...COMMON_ROPE_KEYS, ...ROPE_KEYS[ropeType], ...KNOWN_EXTRA[ropeType]]),
    `rope_type "${ropeType}"`,
  );
  const original = (): number =>
    topLevelOriginal ?? r.positiveInt("original_max_position_embeddings", maxPositionEmbeddings);
  switch (ropeType) {
    case "default":
      return { ropeType };
    case "linear":
      return { ropeType, factor: r.atLeastOne("factor") };
    case "dynamic": {
      const out: RopeScaling = { ropeType, factor: r.atLeastOne("factor") };
      if (r.has("original_max_position_embeddings")) {
        out.originalMaxPositionEmbeddings = r.positiveInt("original_max_position_embeddings");
      }
      return out;
    }
    case "llama3": {
      const lowFreqFactor = r.positive("low_freq_factor");
      const highFreqFactor = r.positive("high_freq_factor");
      if (!(highFreqFactor > lowFreqFactor)) {
        r.fail(
          "high_freq_factor",
          `(${highFreqFactor}) must be greater than low_freq_factor (${lowFreqFactor})`,
        );
      }
      if (topLevelOriginal === undefined && !r.has("original_max_position_embeddings")) {
        r.fail("original_max_position_embeddings", "is missing (required for llama3)");
      }
      return {
        ropeType,
        factor: r.atLeastOne("factor"),
        lowFreqFactor,
        highFreqFactor,
        originalMaxPositionEmbeddings: original(),
      };
    }
    case "yarn": {
      // transformers 5: `factor: null` means max_position_embeddings / original.
      const orig = original();
      const factor = r.obj.factor === null ? maxPositionEmbeddings / orig : r.atLeastOne("factor");
      const out: Extract<RopeScaling, { ropeType: "yarn" }> = {
        ropeType,
        factor,
        originalMaxPositionEmbeddings: orig,
      };
      if (r.has("beta_fast")) out.betaFast = r.positive("beta_fast");
      if (r.has("beta_slow")) out.betaSlow = r.positive("beta_slow");
      if ((out.betaFast ?? 32) < (out.betaSlow ?? 1)) {
        r.fail(
          "beta_fast",
          `(${out.betaFast ?? 32}) must be >= beta_slow (${out.betaSlow ?? 1}); unset means 32 and 1`,
        );
      }
      if (r.has("attention_factor")) out.attentionFactor = r.positive("attention_factor");
      // mscale / mscale_all_dim may be 0 (transformers treats 0 like "unset").
      if (r.has("mscale")) out.mscale = r.number("mscale");
      if (r.has("mscale_all_dim")) out.mscaleAllDim = r.number("mscale_all_dim");
      if (r.has("truncate")) out.truncate = r.bool("truncate", true);
      return out;
    }
  }
}

/** Parse and validate a Hugging Face config.json. `source` names the file in error messages. */
export function parseConfig(text: string, source: string): ModelConfig {
  const f: Fields = new Fields(source, parseJsonObject(text, source));

  // Architecture: LlamaForCausalLM (architectures[0]) or model_type "llama".
  let architecture: string | undefined;
  const archs = f.obj.architectures;
  if (archs !== undefined && archs !== null) {
    const first: unknown = Array.isArray(archs) ? archs[0] : undefined;
    if (typeof first !== "string") {
      f.fail("architectures", `(${f.show(archs)}) must be a non-empty list of names`);
    }
    architecture = first;
    if (!LLAMA_ARCHITECTURES.has(first)) {
      f.fail("architectures", `("${architecture}") is not supported: only LlamaForCausalLM`);
    }
  }
  const modelType = f.string("model_type");
  if (modelType !== undefined && modelType !== "llama") {
    f.fail("model_type", `("${modelType}") is not supported: only "llama"`);
  }
  if (architecture === undefined && modelType === undefined) {
    f.fail("architectures", "is missing (and no model_type): cannot tell the model is Llama");
  }

  const hiddenSize = f.positiveInt("hidden_size");
  const intermediateSize = f.positiveInt("intermediate_size");
  const numHiddenLayers = f.positiveInt("num_hidden_layers");
  const numAttentionHeads = f.positiveInt("num_attention_heads");
  const numKeyValueHeads = f.positiveInt("num_key_value_heads", numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    f.fail(
      "num_key_value_heads",
      `(${numKeyValueHeads}) must divide num_attention_heads (${numAttentionHeads})`,
    );
  }
  let headDim: number;
  if (f.has("head_dim")) {
    headDim = f.positiveInt("head_dim");
  } else {
    if (hiddenSize % numAttentionHeads !== 0) {
      f.fail(
        "num_attention_heads",
        `(${numAttentionHeads}) must divide hidden_size (${hiddenSize}) when head_dim is not given`,
      );
    }
    headDim = hiddenSize / numAttentionHeads;
  }

  const vocabSize = f.positiveInt("vocab_size");
  const maxPositionEmbeddings = f.positiveInt("max_position_embeddings", 2048);
  const rmsNormEps = f.positive("rms_norm_eps", 1e-6);

  const act = f.string("hidden_act") ?? "silu";
  if (act !== "silu") f.fail("hidden_act", `("${act}") is not supported: only "silu"`);

  // RoPE: transformers 5 writes `rope_parameters` (with rope_theta inside), transformers 4 writes
  // `rope_scaling` plus a top-level rope_theta. Either, never both disagreeing.
  const ropeKey = f.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  const ropeObj = f.obj[ropeKey] ?? {};
  if (typeof ropeObj !== "object" || Array.isArray(ropeObj)) {
    f.fail(ropeKey, `(${f.show(ropeObj)}) must be an object or null`);
  }
  if (ropeKey === "rope_parameters" && f.has("rope_scaling")) {
    if (JSON.stringify(f.obj.rope_scaling) !== JSON.stringify(f.obj.rope_parameters)) {
      f.fail("rope_scaling", "disagrees with rope_parameters: give one of them");
    }
  }
  const r = new Fields(source, ropeObj as Json, `${ropeKey}.`);
  const ropeTheta = r.has("rope_theta")
    ? r.positive("rope_theta")
    : f.positive("rope_theta", 10000);
  const partialRotaryFactor = r.has("partial_rotary_factor")
    ? r.positive("partial_rotary_factor")
    : f.positive("partial_rotary_factor", 1);
  if (partialRotaryFactor > 1) {
    f.fail("partial_rotary_factor", `(${partialRotaryFactor}) must be <= 1`);
  }
  const rotaryDim = Math.floor(headDim * partialRotaryFactor);
  if (rotaryDim < 2 || rotaryDim % 2 !== 0) {
    f.fail(
      f.has("head_dim") ? "head_dim" : "hidden_size",
      `gives a rotary dimension of ${rotaryDim} (head_dim ${headDim} x partial_rotary_factor ` +
        `${partialRotaryFactor}): RoPE needs an even number >= 2`,
    );
  }
  const topOriginal = f.has("original_max_position_embeddings")
    ? f.positiveInt("original_max_position_embeddings")
    : undefined;
  const ropeScaling = parseRope(r, topOriginal, maxPositionEmbeddings);

  let torchDtype: WeightDtype | null = null;
  const dtypeKey = f.has("torch_dtype") ? "torch_dtype" : "dtype";
  const dtypeName = f.string(dtypeKey);
  if (dtypeName !== undefined) {
    torchDtype = Object.hasOwn(DTYPES, dtypeName) ? DTYPES[dtypeName] : null;
    if (torchDtype === null) {
      f.fail(dtypeKey, `("${dtypeName}") is not one of ${Object.keys(DTYPES).join(", ")}`);
    }
  }

  const bosTokenId = f.optionalTokenId("bos_token_id", 1);
  const eosTokenIds = f.tokenIds("eos_token_id", [2]);
  const padTokenId = f.optionalTokenId("pad_token_id", null);
  for (const [key, id] of [
    ["bos_token_id", bosTokenId],
    ["pad_token_id", padTokenId],
    ...eosTokenIds.map((id) => ["eos_token_id", id] as const),
  ] as const) {
    if (id !== null && id >= vocabSize) f.fail(key, `(${id}) must be < vocab_size (${vocabSize})`);
  }

  return {
    architecture: architecture ?? "LlamaForCausalLM",
    hiddenSize,
    intermediateSize,
    numHiddenLayers,
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    rmsNormEps,
    ropeTheta,
    ropeScaling,
    partialRotaryFactor,
    maxPositionEmbeddings,
    vocabSize,
    tieWordEmbeddings: f.bool("tie_word_embeddings", false),
    bosTokenId,
    eosTokenIds,
    padTokenId,
    torchDtype,
    attentionBias: f.bool("attention_bias", false),
    mlpBias: f.bool("mlp_bias", false),
    hiddenAct: "silu",
  };
}

function ropeScalingToJson(s: RopeScaling): Json | null {
  switch (s.ropeType) {
    case "default":
      return null;
    case "linear":
      return { rope_type: "linear", factor: s.factor };
    case "dynamic": {
      const out: Json = { rope_type: "dynamic", factor: s.factor };
      if (s.originalMaxPositionEmbeddings !== undefined) {
        out.original_max_position_embeddings = s.originalMaxPositionEmbeddings;
      }
      return out;
    }
    case "llama3":
      return {
        rope_type: "llama3",
        factor: s.factor,
        low_freq_factor: s.lowFreqFactor,
        high_freq_factor: s.highFreqFactor,
        original_max_position_embeddings: s.originalMaxPositionEmbeddings,
      };
    case "yarn": {
      const out: Json = { rope_type: "yarn", factor: s.factor };
      const optional: [string, unknown][] = [
        ["original_max_position_embeddings", s.originalMaxPositionEmbeddings],
        ["beta_fast", s.betaFast],
        ["beta_slow", s.betaSlow],
        ["attention_factor", s.attentionFactor],
        ["mscale", s.mscale],
        ["mscale_all_dim", s.mscaleAllDim],
        ["truncate", s.truncate],
      ];
      for (const [k, v] of optional) if (v !== undefined) out[k] = v;
      return out;
    }
  }
}

/**
 * ModelConfig -> the fields of a Hugging Face config.json (transformers 4 layout: `rope_scaling`
 * and a top-level `rope_theta`, which transformers 4 and 5 both read). `parseConfig` of its JSON
 * gives back an equal ModelConfig.
 */
export function configToJson(config: ModelConfig): Json {
  const out: Json = {
    architectures: [config.architecture],
    model_type: "llama",
    hidden_size: config.hiddenSize,
    intermediate_size: config.intermediateSize,
    num_hidden_layers: config.numHiddenLayers,
    num_attention_heads: config.numAttentionHeads,
    num_key_value_heads: config.numKeyValueHeads,
    head_dim: config.headDim,
    hidden_act: config.hiddenAct,
    rms_norm_eps: config.rmsNormEps,
    rope_theta: config.ropeTheta,
    rope_scaling: ropeScalingToJson(config.ropeScaling),
    max_position_embeddings: config.maxPositionEmbeddings,
    vocab_size: config.vocabSize,
    tie_word_embeddings: config.tieWordEmbeddings,
    bos_token_id: config.bosTokenId,
    eos_token_id: config.eosTokenIds.length === 1 ? config.eosTokenIds[0] : config.eosTokenIds,
    pad_token_id: config.padTokenId,
    attention_bias: config.attentionBias,
    attention_dropout: 0.0,
    mlp_bias: config.mlpBias,
    initializer_range: 0.02,
    pretraining_tp: 1,
    use_cache: true,
  };
  if (config.partialRotaryFactor !== 1) out.partial_rotary_factor = config.partialRotaryFactor;
  if (config.torchDtype !== null) out.torch_dtype = DTYPE_NAMES[config.torchDtype];
  return out;
}

/**
 * Parse generation_config.json. `eosTokenIds` is this file's list only (empty when absent): the
 * model loader takes the union with config.json's. Sampling fields are passed through when
 * present; a value of the wrong type or out of range is refused.
 */
export function parseGenerationConfig(text: string, source: string): GenerationDefaults {
  const f: Fields = new Fields(source, parseJsonObject(text, source));
  const out: GenerationDefaults = { eosTokenIds: f.tokenIds("eos_token_id", []) };
  if (f.has("temperature")) {
    const t = f.number("temperature");
    if (t < 0) f.fail("temperature", `(${t}) must be >= 0`);
    out.temperature = t;
  }
  if (f.has("top_p")) {
    const p = f.number("top_p");
    if (!(p > 0 && p <= 1)) f.fail("top_p", `(${p}) must be in (0, 1]`);
    out.topP = p;
  }
  if (f.has("top_k")) {
    const k = f.int("top_k");
    if (k < 0) f.fail("top_k", `(${k}) must be >= 0`);
    out.topK = k;
  }
  return out;
}
