// `ultralong inspect DIR [--json]`: what a model directory holds and what it costs to run: config
// summary, parameters, weight bytes, KV bytes per token per dtype, the context its rope settings are
// built for, and the fingerprint (computed once, then read from the cache beside the model).

import { type KvDtype, kvBytesPerToken } from "../../../core/kv/layout.ts";
import type { ModelConfig } from "../../../core/model/config-types.ts";
import { ropeContextLength } from "../../../core/model/rope.ts";
import { loadModelDir } from "../../../core/node/load-model-dir.ts";
import { dtypeBytes, safetensorsDtypeName } from "../../../core/safetensors/dtype.ts";
import { type Command, onePositional, parseCommandArgs } from "../command.ts";

const usage = `usage: ultralong inspect DIR [--json]

Reads a Hugging Face Llama model directory (headers only, plus one pass over the weights for the
fingerprint the first time) and prints its config, parameter count, weight bytes, KV cache bytes per
token (f32, bf16, fp8), the context its rope settings are built for, and its fingerprint.

options:
  --json    print one JSON object instead of text
`;

function ropeSummary(c: ModelConfig): string {
  const s = c.ropeScaling;
  const theta = `theta ${c.ropeTheta}`;
  switch (s.ropeType) {
    case "default":
      return `default, ${theta}`;
    case "linear":
      return `linear factor ${s.factor}, ${theta}`;
    case "dynamic":
      return `dynamic factor ${s.factor}, ${theta}`;
    case "llama3":
      return `llama3 factor ${s.factor} over ${s.originalMaxPositionEmbeddings} (low ${s.lowFreqFactor}, high ${s.highFreqFactor}), ${theta}`;
    case "yarn":
      return `yarn factor ${s.factor} over ${s.originalMaxPositionEmbeddings ?? c.maxPositionEmbeddings}, ${theta}`;
  }
}

const group = (n: number) => n.toLocaleString("en-US");

const KV_DTYPES: [string, KvDtype][] = [
  ["f32", "f32"],
  ["bf16", "bf16"],
  ["fp8", "fp8-e4m3"],
];

export const command: Command = {
  summary: "describe a model directory: config, parameters, KV bytes per token, fingerprint",
  usage,
  async run(argv, io) {
    const { values, positionals } = parseCommandArgs(argv, { json: { type: "boolean" } });
    const model = await loadModelDir(onePositional(positionals, "directory"));
    const c = model.config;
    const tensors = model.weights.tensors();
    let parameters = 0;
    let weightBytes = 0;
    const dtypes = new Set<string>();
    for (const t of tensors) {
      const n = t.shape.reduce((a, d) => a * d, 1);
      parameters += n;
      weightBytes += n * dtypeBytes(t.dtype);
      dtypes.add(safetensorsDtypeName(t.dtype));
    }
    const kvPerToken: Record<string, number> = {};
    for (const [label, dtype] of KV_DTYPES) {
      kvPerToken[label] = kvBytesPerToken({
        layers: c.numHiddenLayers,
        kvHeads: c.numKeyValueHeads,
        headDim: c.headDim,
        dtype,
      });
    }
    const ropeContext = ropeContextLength(c);
    const fingerprint = await model.fingerprint();
    if (values.json) {
      const out = {
        dir: model.files.name,
        config: c,
        generation: model.generation,
        tensors: tensors.length,
        weightDtypes: [...dtypes],
        parameters,
        weightBytes,
        kvBytesPerToken: kvPerToken,
        ropeContext,
        fingerprint,
      };
      io.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
      return 0;
    }
    const lines = [
      ["model", model.files.name],
      [
        "config",
        `${c.architecture}: ${c.numHiddenLayers} layers, hidden ${c.hiddenSize}, ${c.numAttentionHeads} heads / ${c.numKeyValueHeads} kv heads x ${c.headDim}, ffn ${c.intermediateSize}, vocab ${c.vocabSize}, rms eps ${c.rmsNormEps}, ${c.tieWordEmbeddings ? "tied" : "untied"} embeddings`,
      ],
      ["tokens", `bos ${c.bosTokenId ?? "none"}, eos ${model.generation.eosTokenIds.join(" ")}`],
      [
        "rope",
        `${ropeSummary(c)}; built for ${group(ropeContext)} tokens (max_position_embeddings ${group(c.maxPositionEmbeddings)})`,
      ],
      ["parameters", group(parameters)],
      [
        "weights",
        `${group(weightBytes)} bytes, ${[...dtypes].join("+")}, ${tensors.length} tensors`,
      ],
      [
        "kv / token",
        KV_DTYPES.map(([label]) => `${label} ${group(kvPerToken[label])} B`).join(", "),
      ],
      ["fingerprint", fingerprint],
    ];
    io.stdout.write(`${lines.map(([k, v]) => `${k.padEnd(12)} ${v}`).join("\n")}\n`);
    return 0;
  },
};
