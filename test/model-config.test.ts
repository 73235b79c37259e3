// config.json and generation_config.json parsing: every Llama field, every rope type and key
// layout transformers accepts, and one clear line for each kind of bad value.
import { describe, expect, it } from "vitest";
import { FormatError } from "../core/errors.ts";
import { configToJson, parseConfig, parseGenerationConfig } from "../core/model/config.ts";
import { ULTRALONG_CONFIG as ULTRALONG } from "./support/ultralong-config.ts";

const parse = (obj: unknown) => parseConfig(JSON.stringify(obj), "config.json");
const withField = (patch: Record<string, unknown>) => ({ ...ULTRALONG, ...patch });
const without = (key: string) => {
  const copy: Record<string, unknown> = { ...ULTRALONG };
  delete copy[key];
  return copy;
};

function errorOf(f: () => unknown): FormatError {
  try {
    f();
  } catch (e) {
    if (e instanceof FormatError) return e;
    throw e;
  }
  throw new Error("expected a FormatError, got none");
}

describe("parseConfig", () => {
  it("reads UltraLong's config", () => {
    const c = parse(ULTRALONG);
    expect(c).toEqual({
      architecture: "LlamaForCausalLM",
      hiddenSize: 4096,
      intermediateSize: 14336,
      numHiddenLayers: 32,
      numAttentionHeads: 32,
      numKeyValueHeads: 8,
      headDim: 128,
      rmsNormEps: 1e-5,
      ropeTheta: 500000,
      ropeScaling: { ropeType: "yarn", factor: 128, originalMaxPositionEmbeddings: 8192 },
      partialRotaryFactor: 1,
      maxPositionEmbeddings: 1048576,
      vocabSize: 128256,
      tieWordEmbeddings: false,
      bosTokenId: 128000,
      eosTokenIds: [128001, 128008, 128009],
      padTokenId: null,
      torchDtype: "f32",
      attentionBias: false,
      mlpBias: false,
      hiddenAct: "silu",
    });
  });

  it("reads Llama-3.1-8B-Instruct's published config.json", () => {
    const text = `{
      "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
      "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
      "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
      "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
      "pretraining_tp": 1, "rms_norm_eps": 1e-05,
      "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"},
      "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
      "transformers_version": "4.42.3", "use_cache": true, "vocab_size": 128256}`;
    const c = parseConfig(text, "config.json");
    expect(c.ropeScaling).toEqual({
      ropeType: "llama3",
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    });
    expect(c.torchDtype).toBe("bf16");
    expect(c.headDim).toBe(128);
  });

  it("reads a Yarn-Llama-2 config (older `type` key and the unused `finetuned`)", () => {
    const c = parse(
      withField({
        rope_theta: 10000,
        max_position_embeddings: 131072,
        rope_scaling: {
          factor: 32.0,
          finetuned: true,
          original_max_position_embeddings: 4096,
          type: "yarn",
        },
      }),
    );
    expect(c.ropeScaling).toEqual({
      ropeType: "yarn",
      factor: 32,
      originalMaxPositionEmbeddings: 4096,
    });
  });

  it("takes LlamaConfig's defaults for optional fields", () => {
    const c = parse({
      model_type: "llama",
      hidden_size: 64,
      intermediate_size: 128,
      num_hidden_layers: 1,
      num_attention_heads: 4,
      vocab_size: 100,
    });
    expect(c.numKeyValueHeads).toBe(4);
    expect(c.headDim).toBe(16);
    expect(c.rmsNormEps).toBe(1e-6);
    expect(c.ropeTheta).toBe(10000);
    expect(c.maxPositionEmbeddings).toBe(2048);
    expect(c.ropeScaling).toEqual({ ropeType: "default" });
    expect(c.bosTokenId).toBe(1);
    expect(c.eosTokenIds).toEqual([2]);
    expect(c.tieWordEmbeddings).toBe(false);
    expect(c.torchDtype).toBeNull();
  });

  it("takes eos as an int or a list, and head_dim explicit or derived", () => {
    expect(parse(withField({ eos_token_id: 128009 })).eosTokenIds).toEqual([128009]);
    expect(parse(withField({ eos_token_id: null })).eosTokenIds).toEqual([]);
    const c = parse(withField({ head_dim: 64 }));
    expect(c.headDim).toBe(64);
    expect(parse(withField({ torch_dtype: "bfloat16" })).torchDtype).toBe("bf16");
    expect(parse({ ...without("torch_dtype"), dtype: "float16" }).torchDtype).toBe("f16");
  });

  it("reads every rope type, the older `type` key and transformers 5's rope_parameters", () => {
    expect(parse(withField({ rope_scaling: null })).ropeScaling).toEqual({ ropeType: "default" });
    expect(parse(withField({ rope_scaling: { type: "linear", factor: 4 } })).ropeScaling).toEqual({
      ropeType: "linear",
      factor: 4,
    });
    expect(parse(withField({ rope_scaling: { type: "dynamic", factor: 2 } })).ropeScaling).toEqual({
      ropeType: "dynamic",
      factor: 2,
    });
    const llama3 = {
      rope_type: "llama3",
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    };
    expect(parse(withField({ rope_scaling: llama3 })).ropeScaling).toEqual({
      ropeType: "llama3",
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    });
    const yarn = {
      rope_type: "yarn",
      factor: 40,
      original_max_position_embeddings: 4096,
      beta_fast: 32,
      beta_slow: 1,
      mscale: 0.7,
      mscale_all_dim: 0.7,
      attention_factor: 1.1,
      truncate: false,
    };
    expect(parse(withField({ rope_scaling: yarn })).ropeScaling).toEqual({
      ropeType: "yarn",
      factor: 40,
      originalMaxPositionEmbeddings: 4096,
      betaFast: 32,
      betaSlow: 1,
      mscale: 0.7,
      mscaleAllDim: 0.7,
      attentionFactor: 1.1,
      truncate: false,
    });
    // transformers 5: rope_theta inside rope_parameters, no top-level rope_theta.
    const v5 = {
      ...without("rope_scaling"),
      rope_theta: undefined,
      rope_parameters: { rope_type: "yarn", rope_theta: 250000, factor: 128 },
    };
    const c5 = parse(v5);
    expect(c5.ropeTheta).toBe(250000);
    // no original given: max_position_embeddings is the original (transformers' standardisation)
    expect(c5.ropeScaling).toEqual({
      ropeType: "yarn",
      factor: 128,
      originalMaxPositionEmbeddings: 1048576,
    });
    // yarn `factor: null` means max_position_embeddings / original
    const derived = parse(
      withField({
        rope_scaling: { rope_type: "yarn", factor: null, original_max_position_embeddings: 8192 },
      }),
    );
    expect(derived.ropeScaling).toMatchObject({ factor: 128 });
    // a Llama 3.1 config converted to yarn keeps llama3's keys; yarn ignores them
    const converted = parse(
      withField({
        rope_scaling: { ...ULTRALONG.rope_scaling, low_freq_factor: 1, high_freq_factor: 4 },
      }),
    );
    expect(converted.ropeScaling).toEqual(parse(ULTRALONG).ropeScaling);
  });

  it("a top-level original_max_position_embeddings wins for yarn and llama3 (transformers 5)", () => {
    const c = parse(
      withField({
        original_max_position_embeddings: 4096,
        rope_scaling: { rope_type: "yarn", factor: 4 },
      }),
    );
    expect(c.ropeScaling).toMatchObject({ originalMaxPositionEmbeddings: 4096 });
  });

  // One line naming file and field for each kind of bad value.
  const bad: [string, unknown, string][] = [
    ["not JSON", "{", "config.json: not valid JSON"],
    ["an array", [], "config.json: must be a JSON object"],
    [
      "kv heads not dividing heads",
      withField({ num_attention_heads: 8, num_key_value_heads: 3, head_dim: 128 }),
      "config.json: num_key_value_heads (3) must divide num_attention_heads (8)",
    ],
    [
      "heads not dividing hidden",
      withField({ num_attention_heads: 24, num_key_value_heads: 8 }),
      "config.json: num_attention_heads (24) must divide hidden_size (4096) when head_dim is not given",
    ],
    ["missing hidden_size", without("hidden_size"), "config.json: hidden_size is missing"],
    [
      "string vocab",
      withField({ vocab_size: "128256" }),
      'config.json: vocab_size ("128256") must be a finite number',
    ],
    [
      "fractional layers",
      withField({ num_hidden_layers: 2.5 }),
      "config.json: num_hidden_layers (2.5) must be an integer",
    ],
    [
      "zero heads",
      withField({ num_attention_heads: 0 }),
      "config.json: num_attention_heads (0) must be > 0",
    ],
    ["negative eps", withField({ rms_norm_eps: -1 }), "config.json: rms_norm_eps (-1) must be > 0"],
    ["zero theta", withField({ rope_theta: 0 }), "config.json: rope_theta (0) must be > 0"],
    [
      "odd head_dim",
      withField({ head_dim: 63 }),
      "config.json: head_dim gives a rotary dimension of 63",
    ],
    [
      "other architecture",
      withField({ architectures: ["Qwen2ForCausalLM"] }),
      'config.json: architectures ("Qwen2ForCausalLM") is not supported: only LlamaForCausalLM',
    ],
    [
      "no architecture",
      { ...without("architectures"), model_type: undefined },
      "config.json: architectures is missing",
    ],
    [
      "gelu",
      withField({ hidden_act: "gelu" }),
      'config.json: hidden_act ("gelu") is not supported',
    ],
    [
      "eos as string",
      withField({ eos_token_id: "2" }),
      'config.json: eos_token_id ("2") must be a non-negative integer token id',
    ],
    [
      "eos beyond vocab",
      withField({ eos_token_id: [128001, 200000] }),
      "config.json: eos_token_id (200000) must be < vocab_size (128256)",
    ],
    [
      "bool as string",
      withField({ tie_word_embeddings: "false" }),
      'config.json: tie_word_embeddings ("false") must be true or false',
    ],
    [
      "unknown dtype",
      withField({ torch_dtype: "float8_e4m3fn" }),
      'config.json: torch_dtype ("float8_e4m3fn") is not one of float32, bfloat16, float16',
    ],
    [
      "unknown rope type",
      withField({ rope_scaling: { rope_type: "longrope", factor: 2 } }),
      'config.json: rope_scaling.rope_type ("longrope") is not one of default, linear, dynamic, llama3, yarn',
    ],
    [
      "older type key, unknown",
      withField({ rope_scaling: { type: "su", factor: 2 } }),
      'config.json: rope_scaling.type ("su") is not one of',
    ],
    [
      "rope_scaling not an object",
      withField({ rope_scaling: 4 }),
      "config.json: rope_scaling (4) must be an object or null",
    ],
    [
      "linear without factor",
      withField({ rope_scaling: { rope_type: "linear" } }),
      "config.json: rope_scaling.factor is missing",
    ],
    [
      "factor below 1",
      withField({ rope_scaling: { rope_type: "dynamic", factor: 0.5 } }),
      "config.json: rope_scaling.factor (0.5) must be >= 1",
    ],
    [
      "llama3 without original",
      withField({
        rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4 },
      }),
      "config.json: rope_scaling.original_max_position_embeddings is missing (required for llama3)",
    ],
    [
      "llama3 bands reversed",
      withField({
        rope_scaling: {
          rope_type: "llama3",
          factor: 8,
          low_freq_factor: 4,
          high_freq_factor: 1,
          original_max_position_embeddings: 8192,
        },
      }),
      "config.json: rope_scaling.high_freq_factor (1) must be greater than low_freq_factor (4)",
    ],
    [
      "yarn betas reversed",
      withField({ rope_scaling: { rope_type: "yarn", factor: 4, beta_fast: 1, beta_slow: 8 } }),
      "config.json: rope_scaling.beta_fast (1) must be >= beta_slow (8)",
    ],
    [
      "yarn truncate as string",
      withField({ rope_scaling: { rope_type: "yarn", factor: 4, truncate: "no" } }),
      'config.json: rope_scaling.truncate ("no") must be true or false',
    ],
    [
      "yarn typo",
      withField({ rope_scaling: { rope_type: "yarn", factor: 4, beta_fst: 4 } }),
      'config.json: rope_scaling.beta_fst is not a parameter of rope_type "yarn"',
    ],
    [
      "rope_parameters and rope_scaling disagree",
      withField({ rope_parameters: { rope_type: "linear", factor: 2 } }),
      "config.json: rope_scaling disagrees with rope_parameters",
    ],
  ];
  for (const [what, value, message] of bad) {
    it(`refuses ${what} with one line`, () => {
      const text = typeof value === "string" ? value : JSON.stringify(value);
      const e = errorOf(() => parseConfig(text, "config.json"));
      expect(e.code).toBe("invalid_format");
      expect(e.message).toContain(message);
      expect(e.message.startsWith(message.slice(0, 12))).toBe(true);
      expect(e.message).not.toContain("\n");
    });
  }

  it("names the source it was given", () => {
    const e = errorOf(() => parseConfig("{}", "/models/x/config.json"));
    expect(e.message).toMatch(/^\/models\/x\/config\.json: /);
  });
});

describe("configToJson", () => {
  const cases: Record<string, unknown>[] = [
    ULTRALONG,
    withField({ eos_token_id: 128009, torch_dtype: "bfloat16", tie_word_embeddings: true }),
    withField({ rope_scaling: null, head_dim: 64, attention_bias: true }),
    withField({ rope_scaling: { type: "linear", factor: 4 } }),
    withField({
      rope_scaling: { rope_type: "dynamic", factor: 2, original_max_position_embeddings: 4 },
    }),
    withField({
      rope_scaling: {
        rope_type: "llama3",
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 8192,
      },
    }),
    withField({
      rope_scaling: {
        rope_type: "yarn",
        factor: 512,
        original_max_position_embeddings: 8192,
        beta_fast: 4,
        beta_slow: 1,
        mscale: 1,
        mscale_all_dim: 0,
        attention_factor: 1.2,
        truncate: false,
      },
    }),
  ];
  cases.forEach((obj, i) => {
    it(`round-trips case ${i} through parseConfig`, () => {
      const c = parse(obj);
      const json = configToJson(c);
      expect(parse(json)).toEqual(c);
    });
  });

  it("writes the HF field names", () => {
    const json = configToJson(parse(ULTRALONG));
    expect(json).toMatchObject({
      architectures: ["LlamaForCausalLM"],
      model_type: "llama",
      num_key_value_heads: 8,
      head_dim: 128,
      rope_theta: 500000,
      rope_scaling: { rope_type: "yarn", factor: 128, original_max_position_embeddings: 8192 },
      eos_token_id: [128001, 128008, 128009],
      torch_dtype: "float32",
    });
  });
});

describe("parseGenerationConfig", () => {
  it("reads Llama 3.1's generation_config.json", () => {
    const g = parseGenerationConfig(
      JSON.stringify({
        bos_token_id: 128000,
        do_sample: true,
        eos_token_id: [128001, 128008, 128009],
        temperature: 0.6,
        top_p: 0.9,
        transformers_version: "4.42.3",
      }),
      "generation_config.json",
    );
    expect(g).toEqual({ eosTokenIds: [128001, 128008, 128009], temperature: 0.6, topP: 0.9 });
  });

  it("takes eos as an int, and no eos as none", () => {
    expect(parseGenerationConfig('{"eos_token_id": 2, "top_k": 50}', "g.json")).toEqual({
      eosTokenIds: [2],
      topK: 50,
    });
    expect(parseGenerationConfig("{}", "g.json")).toEqual({ eosTokenIds: [] });
  });

  it("refuses bad values with one line", () => {
    expect(errorOf(() => parseGenerationConfig('{"top_p": 1.5}', "g.json")).message).toBe(
      "g.json: top_p (1.5) must be in (0, 1]",
    );
    expect(errorOf(() => parseGenerationConfig('{"temperature": "hot"}', "g.json")).message).toBe(
      'g.json: temperature ("hot") must be a finite number',
    );
    expect(
      errorOf(() => parseGenerationConfig('{"eos_token_id": [1, -2]}', "g.json")).message,
    ).toBe("g.json: eos_token_id (-2) must be a non-negative integer token id");
    expect(errorOf(() => parseGenerationConfig("nope", "g.json")).message).toMatch(
      /^g\.json: not valid JSON/,
    );
  });
});
