// Loads a Hugging Face Llama model directory: config.json (validated by config.ts),
// generation_config.json when present, and the safetensors checkpoint, checked tensor by tensor
// against what the config implies. Only headers are read here; weights are read later, one tensor
// at a time, by whoever builds a runtime. Every refusal is a one-line FormatError (or NotFoundError)
// naming the file and, where there is one, the tensor.

import { FormatError } from "../errors.ts";
import type { ModelFiles } from "../io/byte-source.ts";
import { Checkpoint } from "../safetensors/checkpoint.ts";
import { safetensorsDtypeName } from "../safetensors/dtype.ts";
import { parseConfig, parseGenerationConfig } from "./config.ts";
import type { ModelConfig, WeightDtype } from "./config-types.ts";
import { type FingerprintOptions, modelFingerprint } from "./fingerprint.ts";
import { IGNORED_TENSOR, llamaTensors } from "./llama-tensors.ts";
import type { GenerationDefaults, LoadedModel, ModelWeights, TensorInfo } from "./weights.ts";

export type LoadOptions = FingerprintOptions;

const TORCH_DTYPE_NAMES = { f32: "float32", bf16: "bfloat16", f16: "float16" } as const;

/**
 * Whether tensors stored as `stored` hold values of `declared` exactly. F32 files under a bf16 or
 * f16 torch_dtype are accepted: transformers loads them (casting), and checkpoints are published
 * that way (UltraLong's safetensors are F32). A narrower or different 16-bit type is a real
 * disagreement: the declared precision was lost.
 */
function holdsExactly(stored: WeightDtype, declared: WeightDtype): boolean {
  return stored === declared || stored === "f32";
}

/** Refuses a checkpoint whose tensors are not exactly those of LlamaForCausalLM with `config`. */
export function checkLlamaCheckpoint(config: ModelConfig, checkpoint: Checkpoint): void {
  const dir = checkpoint.dir;
  const expected = llamaTensors(config);
  const want = new Map(expected.map((t) => [t.name, t.shape]));
  const have = new Set(checkpoint.entries().map((e) => e.name));
  const missing = expected.filter((t) => !have.has(t.name));
  if (missing.length > 0) {
    const more = missing.length > 1 ? ` (and ${missing.length - 1} more)` : "";
    throw new FormatError(`${dir}: tensor ${missing[0].name}: missing from the checkpoint${more}`);
  }
  for (const t of checkpoint.entries()) {
    const file = `${dir}/${t.file}`;
    const shape = want.get(t.name);
    if (!shape) {
      if (IGNORED_TENSOR.test(t.name)) continue;
      const why =
        t.name === "lm_head.weight" && config.tieWordEmbeddings
          ? "config.json has tie_word_embeddings, so there must be no lm_head"
          : "LlamaForCausalLM with this config.json has no such tensor";
      throw new FormatError(`${file}: tensor ${t.name}: unexpected (${why})`);
    }
    if (shape.length !== t.shape.length || shape.some((d, i) => d !== t.shape[i])) {
      throw new FormatError(
        `${file}: tensor ${t.name}: shape ${JSON.stringify(t.shape)} but config.json implies ${JSON.stringify(shape)}`,
      );
    }
    if (config.torchDtype !== null && !holdsExactly(t.dtype, config.torchDtype)) {
      throw new FormatError(
        `${file}: tensor ${t.name}: dtype ${safetensorsDtypeName(t.dtype)} cannot hold the torch_dtype ${TORCH_DTYPE_NAMES[config.torchDtype]} that config.json declares`,
      );
    }
  }
}

async function readGeneration(
  files: ModelFiles,
  names: string[],
  config: ModelConfig,
): Promise<GenerationDefaults> {
  if (!names.includes("generation_config.json")) return { eosTokenIds: [...config.eosTokenIds] };
  const gen = parseGenerationConfig(
    await files.readText("generation_config.json"),
    `${files.name}/generation_config.json`,
  );
  // Stop on any eos either file names (transformers' generate() takes generation_config's list,
  // which for Llama 3.1 is the superset; the union is the safe reading of both).
  const eos = [...config.eosTokenIds];
  for (const id of gen.eosTokenIds) if (!eos.includes(id)) eos.push(id);
  return { ...gen, eosTokenIds: eos };
}

export async function loadModel(files: ModelFiles, opts: LoadOptions = {}): Promise<LoadedModel> {
  // Listing first: a missing directory is refused as such, not as a missing config.json.
  const names = await files.list();
  const config = parseConfig(await files.readText("config.json"), `${files.name}/config.json`);
  const generation = await readGeneration(files, names, config);
  const checkpoint = await Checkpoint.open(files);
  checkLlamaCheckpoint(config, checkpoint);

  const infos: TensorInfo[] = checkpoint.tensors().filter((t) => !IGNORED_TENSOR.test(t.name));
  const weights: ModelWeights = {
    tensors: () => infos.map((t) => ({ ...t, shape: [...t.shape] })),
    read: ((name: string, as: "f32" | "bf16" | "f16") =>
      checkpoint.read(name, as)) as ModelWeights["read"],
  };
  let fingerprint: Promise<string> | null = null;
  return {
    files,
    config,
    weights,
    generation,
    fingerprint() {
      if (!fingerprint) {
        fingerprint = modelFingerprint(files, config, checkpoint, opts);
        // A failure (a file vanished or went bad) is not remembered: the next call tries again.
        fingerprint.catch(() => {
          fingerprint = null;
        });
      }
      return fingerprint;
    },
  };
}
