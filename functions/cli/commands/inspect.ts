// `ultralong inspect DIR|CONFIG.json [--gpu-memory SIZE] [--json]`: what a model directory holds and
// what it costs to run: config summary, parameters, weight bytes, KV bytes per token per dtype, the
// context its rope settings are built for, the fingerprint (computed once, then read from the cache
// beside the model), and with --gpu-memory the longest context each CUDA KV dtype allows on one GPU
// of that size (core/model/capacity.ts). A config.json alone gives everything but the weights'
// bytes and the fingerprint: enough to size a GPU before downloading the checkpoint.

import { readFile, stat } from "node:fs/promises";
import { type KvDtype, kvBytesPerToken, kvLayoutOf } from "../../../core/kv/layout.ts";
import {
  CUDA_KV_DTYPES,
  FIXED_RESERVE_BYTES,
  longestContext,
  memoryFor,
  parameterCount,
} from "../../../core/model/capacity.ts";
import { parseConfig } from "../../../core/model/config.ts";
import type { ModelConfig } from "../../../core/model/config-types.ts";
import { parseByteSize } from "../../../core/model/quantities.ts";
import { ropeContextLength } from "../../../core/model/rope.ts";
import type { GenerationDefaults } from "../../../core/model/weights.ts";
import { loadModelDir } from "../../../core/node/load-model-dir.ts";
import { dtypeBytes, safetensorsDtypeName } from "../../../core/safetensors/dtype.ts";
import { type Command, onePositional, parseCommandArgs } from "../command.ts";

const usage = `usage: ultralong inspect DIR|CONFIG.json [--gpu-memory SIZE] [--json]

Reads a Hugging Face Llama model directory (headers only, plus one pass over the weights for the
fingerprint the first time) and prints its config, parameter count, weight bytes, KV cache bytes per
token (f32, bf16, fp8), the context its rope settings are built for, and its fingerprint. Given a
config.json file instead, prints what follows from the config alone (no weight bytes, no
fingerprint).

options:
  --gpu-memory SIZE  also print the longest context each KV dtype of the CUDA runtime (bf16, fp8)
                     allows on one GPU of SIZE beside the weights in bf16, one prefill chunk's
                     scratch and a fixed 1.5 GiB reserve (docs/deploy.md). SIZE: 141G or 141GiB is
                     141 x 2^30 bytes, 141GB is 141 x 10^9, 143771M or 143771MiB is MiB (the unit
                     nvidia-smi reports), a bare number is bytes
  --json             print one JSON object instead of text
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

/** What inspect reports of a directory's checkpoint; null for a config.json alone. */
interface Checkpoint {
  dir: string;
  generation: GenerationDefaults;
  tensors: number;
  weightDtypes: string[];
  parameters: number;
  weightBytes: number;
  fingerprint: string;
}

async function readCheckpoint(dir: string): Promise<{ config: ModelConfig; ckpt: Checkpoint }> {
  const model = await loadModelDir(dir);
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
  const ckpt = {
    dir: model.files.name,
    generation: model.generation,
    tensors: tensors.length,
    weightDtypes: [...dtypes],
    parameters,
    weightBytes,
    fingerprint: await model.fingerprint(),
  };
  return { config: model.config, ckpt };
}

/** The longest context per CUDA KV dtype on one GPU of `memoryBytes`, and what sits beside it. */
function gpuPlan(c: ModelConfig, memoryBytes: number) {
  const base = memoryFor(c, "bf16", 0);
  const longest: Record<string, number> = {};
  for (const [label, dtype] of Object.entries(CUDA_KV_DTYPES)) {
    longest[label] = longestContext(c, dtype, memoryBytes);
  }
  return {
    memoryBytes,
    weightBytes: base.weights,
    reserveBytes: base.activations + base.fixed,
    longestContext: longest,
  };
}

const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(2)} GiB`;

export const command: Command = {
  usage,
  async run(argv, io) {
    const { values, positionals } = parseCommandArgs(argv, {
      json: { type: "boolean" },
      "gpu-memory": { type: "string" },
    });
    const path = onePositional(positionals, "directory or config.json");
    const gpuMemory =
      values["gpu-memory"] === undefined
        ? undefined
        : parseByteSize("--gpu-memory", values["gpu-memory"]);
    const configOnly = await stat(path).then(
      (s) => s.isFile(),
      () => false,
    );
    const { config: c, ckpt } = configOnly
      ? { config: parseConfig(await readFile(path, "utf8"), path), ckpt: null }
      : await readCheckpoint(path);
    const kvPerToken: Record<string, number> = {};
    for (const [label, dtype] of KV_DTYPES) {
      kvPerToken[label] = kvBytesPerToken(kvLayoutOf(c, dtype));
    }
    const ropeContext = ropeContextLength(c);
    const gpu = gpuMemory === undefined ? undefined : gpuPlan(c, gpuMemory);
    const parameters = ckpt?.parameters ?? parameterCount(c);
    if (values.json) {
      const out = {
        dir: ckpt?.dir ?? path,
        config: c,
        generation: ckpt?.generation ?? null,
        tensors: ckpt?.tensors ?? null,
        weightDtypes: ckpt?.weightDtypes ?? null,
        parameters,
        weightBytes: ckpt?.weightBytes ?? null,
        kvBytesPerToken: kvPerToken,
        ropeContext,
        fingerprint: ckpt?.fingerprint ?? null,
        ...(gpu ? { gpu } : {}),
      };
      io.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
      return 0;
    }
    const eos = (ckpt?.generation.eosTokenIds ?? c.eosTokenIds).join(" ");
    const lines = [
      ["model", ckpt?.dir ?? `${path} (config only)`],
      [
        "config",
        `${c.architecture}: ${c.numHiddenLayers} layers, hidden ${c.hiddenSize}, ${c.numAttentionHeads} heads / ${c.numKeyValueHeads} kv heads x ${c.headDim}, ffn ${c.intermediateSize}, vocab ${c.vocabSize}, rms eps ${c.rmsNormEps}, ${c.tieWordEmbeddings ? "tied" : "untied"} embeddings`,
      ],
      ["tokens", `bos ${c.bosTokenId ?? "none"}, eos ${eos}`],
      [
        "rope",
        `${ropeSummary(c)}; built for ${group(ropeContext)} tokens (max_position_embeddings ${group(c.maxPositionEmbeddings)})`,
      ],
      ["parameters", group(parameters)],
      [
        "weights",
        ckpt
          ? `${group(ckpt.weightBytes)} bytes, ${ckpt.weightDtypes.join("+")}, ${ckpt.tensors} tensors`
          : "not read (config only)",
      ],
      [
        "kv / token",
        KV_DTYPES.map(([label]) => `${label} ${group(kvPerToken[label])} B`).join(", "),
      ],
      ["fingerprint", ckpt?.fingerprint ?? "none (config only)"],
    ];
    if (gpu) {
      lines.push(
        [
          "gpu memory",
          `${group(gpu.memoryBytes)} B = ${gib(gpu.memoryBytes)}: bf16 weights ${gib(gpu.weightBytes)} + reserve ${gib(gpu.reserveBytes)} (one prefill chunk, ${gib(FIXED_RESERVE_BYTES)} fixed)`,
        ],
        [
          "max context",
          Object.entries(gpu.longestContext)
            .map(([label, n]) => `${label} ${group(n)} tokens`)
            .join(", "),
        ],
      );
    }
    io.stdout.write(`${lines.map(([k, v]) => `${k.padEnd(12)} ${v}`).join("\n")}\n`);
    return 0;
  },
};
