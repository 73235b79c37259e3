// A deterministic generator of Llama models in the exact Hugging Face layout: config.json,
// generation_config.json, one model.safetensors or N shards plus the index, and (when the vocab is
// Llama 3.1's) the real tokenizer files. Same options and seed = same bytes, on every platform: the
// random numbers use only integer and correctly rounded float arithmetic (no Math.log/cos).
//
// How the weights are drawn (docs/model-directory.md), so activations stay in a sane range through
// every layer, as in GPT-2 / Llama initialisation:
//   embed_tokens            std 1         (the first RMSNorm sees rms ~1 input)
//   q, k, v, gate, up       std 1/sqrt(hidden)        (fan-in scaling: outputs have std ~1)
//   o_proj                  std 1/sqrt(heads*head_dim) / sqrt(2*layers)
//   down_proj               std 1/sqrt(ffn) / sqrt(2*layers)
//   lm_head                 std 1/sqrt(hidden)        (logits std ~1)
//   every RMSNorm weight    1 + uniform(-0.05, 0.05)
// Each residual branch adds about 1/(2*layers) of variance, so the residual stream's rms grows from
// ~1 to under ~1.5 over all layers, whatever the depth. "std s" means s * (sum of 4 uniforms - 2) *
// sqrt(3): Irwin-Hall, close to normal, bounded at 3.46 s, and exact arithmetic.
// Each tensor has its own random stream, seeded by (seed, tensor name), so values do not depend on
// the shard count or dtype: bf16 files hold exactly the round-to-nearest-even of the f32 ones.

import { InvalidInputError } from "../errors.ts";
import { encodeFromF32 } from "../safetensors/dtype.ts";
import {
  indexJson,
  planShards,
  safetensorsChunks,
  type TensorSpec,
} from "../safetensors/writer.ts";
import { configToJson } from "./config.ts";
import type { ModelConfig, RopeScaling, RopeType } from "./config-types.ts";
import { llamaTensors } from "./llama-tensors.ts";

/** Where generated files go (core/node/model-files.ts: DirectorySink). */
export interface ModelSink {
  /** Writes one file from a stream of chunks (or one buffer); replaces any file of that name. */
  writeFile(file: string, chunks: AsyncIterable<Uint8Array> | Uint8Array): Promise<void>;
}

export interface GenerateOptions {
  layers?: number;
  hidden?: number;
  heads?: number;
  kvHeads?: number;
  /** Default hidden / heads. */
  headDim?: number;
  ffn?: number;
  vocab?: number;
  rope?: RopeType;
  /** Default per type: linear 4, dynamic 4, llama3 8, yarn 128. */
  ropeFactor?: number;
  /** Default per type: the context the rope settings are built for (8192 x factor for yarn). */
  maxPos?: number;
  dtype?: "f32" | "bf16";
  shards?: number;
  tieEmbeddings?: boolean;
  seed?: number;
}

/** Llama 3.1's token ids: <|begin_of_text|>, and <|end_of_text|>, <|eom_id|>, <|eot_id|>. */
export const LLAMA31_VOCAB = 128256;
export const LLAMA31_BOS = 128000;
export const LLAMA31_EOS = [128001, 128008, 128009];
/** The original context of Llama 3 that every scaled rope here extends. */
export const ORIGINAL_CONTEXT = 8192;

export const GENERATE_DEFAULTS = {
  layers: 2,
  hidden: 64,
  heads: 4,
  kvHeads: 2,
  ffn: 192,
  vocab: LLAMA31_VOCAB,
  rope: "yarn" as RopeType,
  dtype: "f32" as const,
  shards: 1,
  tieEmbeddings: false,
  seed: 0,
};

function positiveInt(name: string, v: number): number {
  if (!Number.isSafeInteger(v) || v < 1)
    throw new InvalidInputError(`--${name} must be a positive integer, got ${v}`);
  return v;
}

function ropeScaling(type: RopeType, factor: number | undefined): RopeScaling {
  const f = (dflt: number) => {
    const v = factor ?? dflt;
    if (!(Number.isFinite(v) && v >= 1))
      throw new InvalidInputError(`--rope-factor must be >= 1, got ${v}`);
    return v;
  };
  switch (type) {
    case "default":
      if (factor !== undefined)
        throw new InvalidInputError("--rope-factor does not apply to --rope default");
      return { ropeType: "default" };
    case "linear":
      return { ropeType: "linear", factor: f(4) };
    case "dynamic":
      return { ropeType: "dynamic", factor: f(4) };
    case "llama3":
      return {
        ropeType: "llama3",
        factor: f(8),
        lowFreqFactor: 1,
        highFreqFactor: 4,
        originalMaxPositionEmbeddings: ORIGINAL_CONTEXT,
      };
    case "yarn":
      return { ropeType: "yarn", factor: f(128), originalMaxPositionEmbeddings: ORIGINAL_CONTEXT };
  }
}

/** The ModelConfig the generator writes for `opts` (validated; throws InvalidInputError). */
export function generatedConfig(opts: GenerateOptions = {}): ModelConfig {
  const o = { ...GENERATE_DEFAULTS, ...stripUndefined(opts) };
  const hidden = positiveInt("hidden", o.hidden);
  const heads = positiveInt("heads", o.heads);
  const kvHeads = positiveInt("kv-heads", o.kvHeads);
  if (heads % kvHeads !== 0) {
    throw new InvalidInputError(`--heads (${heads}) must be a multiple of --kv-heads (${kvHeads})`);
  }
  if (opts.headDim === undefined && hidden % heads !== 0) {
    throw new InvalidInputError(
      `--hidden (${hidden}) must be a multiple of --heads (${heads}), or give --head-dim`,
    );
  }
  const headDim = positiveInt("head-dim", opts.headDim ?? hidden / heads);
  if (headDim % 2 !== 0) throw new InvalidInputError(`--head-dim must be even, got ${headDim}`);
  const types: RopeType[] = ["default", "linear", "dynamic", "llama3", "yarn"];
  if (!types.includes(o.rope)) {
    throw new InvalidInputError(`--rope must be one of ${types.join(", ")}, got ${o.rope}`);
  }
  const scaling = ropeScaling(o.rope, opts.ropeFactor);
  // Default max_position_embeddings: what the rope is built for. llama3 mirrors Llama 3.1, whose
  // config says 131072 with factor 8 over 8192.
  let builtFor = ORIGINAL_CONTEXT;
  if (scaling.ropeType === "linear" || scaling.ropeType === "yarn") {
    builtFor = Math.round(ORIGINAL_CONTEXT * scaling.factor);
  } else if (scaling.ropeType === "llama3") {
    builtFor = Math.max(131072, Math.round(ORIGINAL_CONTEXT * scaling.factor));
  }
  const vocab = positiveInt("vocab", o.vocab);
  const llamaIds = vocab >= LLAMA31_VOCAB;
  if (o.dtype !== "f32" && o.dtype !== "bf16") {
    throw new InvalidInputError(`--dtype must be f32 or bf16, got ${o.dtype}`);
  }
  return {
    architecture: "LlamaForCausalLM",
    hiddenSize: hidden,
    intermediateSize: positiveInt("ffn", o.ffn),
    numHiddenLayers: positiveInt("layers", o.layers),
    numAttentionHeads: heads,
    numKeyValueHeads: kvHeads,
    headDim,
    rmsNormEps: 1e-5,
    ropeTheta: 500000,
    ropeScaling: scaling,
    partialRotaryFactor: 1,
    maxPositionEmbeddings: positiveInt("max-pos", opts.maxPos ?? builtFor),
    vocabSize: vocab,
    tieWordEmbeddings: o.tieEmbeddings,
    // A vocab too small for Llama 3.1's special ids gets transformers' LlamaConfig defaults.
    bosTokenId: llamaIds ? LLAMA31_BOS : 1,
    eosTokenIds: llamaIds ? [...LLAMA31_EOS] : [2],
    padTokenId: null,
    torchDtype: o.dtype,
    attentionBias: false,
    mlpBias: false,
    hiddenAct: "silu",
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

// ---- the random numbers -------------------------------------------------------------------------

/** splitmix32: spreads a 32-bit seed into well-mixed state words. */
function splitmix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** xoshiro128** (Blackman and Vigna): 32-bit outputs, period 2^128 - 1. */
class Xoshiro128 {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seedWords: number[]) {
    let s = 0;
    const next = (w: number) => (s = splitmix32((s ^ w) >>> 0));
    this.a = next(seedWords[0] ?? 0);
    this.b = next(seedWords[1] ?? 0);
    this.c = next(seedWords[2] ?? 0);
    this.d = next(seedWords[3] ?? 0);
    if ((this.a | this.b | this.c | this.d) === 0) this.a = 1;
  }

  next(): number {
    const r = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return r;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** FNV-1a over the UTF-16 code units of `s`. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

const SQRT3 = Math.sqrt(3);
const U32 = 2 ** -32;

/** The f32 values of tensor `name` (shape from the config), exactly as the generator writes them. */
export function generatedTensor(config: ModelConfig, name: string, seed: number): Float32Array {
  const t = llamaTensors(config).find((x) => x.name === name);
  if (!t) throw new Error(`assertion failed: ${name} is not a tensor of this config`);
  const n = t.shape.reduce((a, d) => a * d, 1);
  const out = new Float32Array(n);
  const rng = new Xoshiro128([seed >>> 0, Math.floor(seed / 2 ** 32) >>> 0, fnv1a(name), n >>> 0]);
  if (t.shape.length === 1) {
    // RMSNorm weight: 1 + uniform(-0.05, 0.05).
    for (let i = 0; i < n; i++) out[i] = 1 + 0.1 * (rng.next() * U32 - 0.5);
    return out;
  }
  const layers = config.numHiddenLayers;
  let std: number;
  if (name === "model.embed_tokens.weight") std = 1;
  else if (name.endsWith("o_proj.weight") || name.endsWith("down_proj.weight")) {
    std = 1 / Math.sqrt(t.shape[1]) / Math.sqrt(2 * layers);
  } else std = 1 / Math.sqrt(t.shape[1]);
  const scale = std * SQRT3;
  for (let i = 0; i < n; i++) {
    const s = (rng.next() + rng.next() + rng.next() + rng.next()) * U32 - 2; // exact in float64
    out[i] = s * scale;
  }
  return out;
}

// ---- the files ----------------------------------------------------------------------------------

export interface TokenizerFiles {
  /** tokenizer.json bytes. */
  tokenizer: Uint8Array;
  /** tokenizer_config.json bytes. */
  tokenizerConfig: Uint8Array;
}

export interface GeneratedModel {
  config: ModelConfig;
  /** Files written, in order. */
  files: string[];
}

/** generation_config.json as Llama 3.1 Instruct ships it (sampling on, t 0.6, top_p 0.9). */
function generationConfigJson(config: ModelConfig): string {
  const gen = {
    bos_token_id: config.bosTokenId,
    do_sample: true,
    eos_token_id: config.eosTokenIds,
    temperature: 0.6,
    top_p: 0.9,
    transformers_version: "4.45.0",
  };
  return `${JSON.stringify(gen, null, 2)}\n`;
}

/**
 * Writes a model into `sink`. `tokenizer` loads the files to copy; it is called only when given and
 * the vocab is Llama 3.1's (a smaller vocab cannot hold the tokenizer's ids, so such a model has no
 * tokenizer files, and the 9 MB tokenizer.json is not read for it).
 */
export async function generateModel(
  sink: ModelSink,
  opts: GenerateOptions = {},
  tokenizer: (() => Promise<TokenizerFiles>) | null = null,
): Promise<GeneratedModel> {
  const config = generatedConfig(opts);
  const seed = opts.seed ?? GENERATE_DEFAULTS.seed;
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new InvalidInputError(`--seed must be a non-negative integer, got ${seed}`);
  }
  const dtype = config.torchDtype ?? "f32";
  const specs: TensorSpec[] = llamaTensors(config).map((t) => ({
    name: t.name,
    dtype,
    shape: t.shape,
  }));
  const shards = opts.shards ?? GENERATE_DEFAULTS.shards;
  if (!Number.isSafeInteger(shards) || shards < 1 || shards > specs.length) {
    throw new InvalidInputError(
      `--shards must be 1..${specs.length} for this model, got ${shards}`,
    );
  }
  const written: string[] = [];
  const write = async (file: string, chunks: AsyncIterable<Uint8Array> | Uint8Array) => {
    await sink.writeFile(file, chunks);
    written.push(file);
  };
  const text = (s: string) => new TextEncoder().encode(s);
  await write("config.json", text(`${JSON.stringify(configToJson(config), null, 2)}\n`));
  await write("generation_config.json", text(generationConfigJson(config)));
  const plans = planShards(specs, shards);
  for (const plan of plans) {
    const data = (t: TensorSpec) => encodeFromF32(generatedTensor(config, t.name, seed), t.dtype);
    await write(plan.file, safetensorsChunks(plan.tensors, data));
  }
  if (plans.length > 1) await write("model.safetensors.index.json", text(indexJson(plans)));
  if (tokenizer && config.vocabSize >= LLAMA31_VOCAB) {
    const files = await tokenizer();
    await write("tokenizer.json", files.tokenizer);
    await write("tokenizer_config.json", files.tokenizerConfig);
  }
  return { config, files: written };
}
