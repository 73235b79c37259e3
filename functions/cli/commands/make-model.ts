// `ultralong make-model DIR [...]`: writes a deterministic random Llama model in the exact Hugging
// Face layout (core/model/generate.ts says how the weights are drawn).

import { InvalidInputError } from "../../../core/errors.ts";
import type { RopeType } from "../../../core/model/config-types.ts";
import { GENERATE_DEFAULTS, type GenerateOptions } from "../../../core/model/generate.ts";
import { makeModelDir } from "../../../core/node/make-model.ts";
import { type Command, intOption, onePositional, parseCommandArgs } from "../command.ts";

const usage = `usage: ultralong make-model DIR [options]

Writes a random Llama model (same seed = same bytes) into DIR, which must be new or empty:
config.json, generation_config.json, model.safetensors (or N shards + index), and the Llama 3.1
tokenizer files (when the vocab is 128256 or more).

options:
  --layers N          decoder layers (default ${GENERATE_DEFAULTS.layers})
  --hidden N          hidden size (default ${GENERATE_DEFAULTS.hidden})
  --heads N           query heads (default ${GENERATE_DEFAULTS.heads})
  --kv-heads N        key/value heads (default ${GENERATE_DEFAULTS.kvHeads})
  --head-dim N        head dimension (default hidden / heads)
  --ffn N             MLP intermediate size (default ${GENERATE_DEFAULTS.ffn})
  --vocab N           vocabulary size (default ${GENERATE_DEFAULTS.vocab}, Llama 3.1's)
  --rope TYPE         default|linear|dynamic|llama3|yarn (default yarn, UltraLong's)
  --rope-factor F     scaling factor (default: linear 4, dynamic 4, llama3 8, yarn 128)
  --max-pos N         max_position_embeddings (default: the context the rope is built for)
  --dtype D           f32|bf16 (default f32)
  --shards N          safetensors files (default 1: model.safetensors)
  --tie-embeddings    tie lm_head to embed_tokens (no lm_head tensor)
  --seed N            random seed (default 0)
`;

export const command: Command = {
  usage,
  async run(argv, io) {
    const { values, positionals } = parseCommandArgs(argv, {
      layers: { type: "string" },
      hidden: { type: "string" },
      heads: { type: "string" },
      "kv-heads": { type: "string" },
      "head-dim": { type: "string" },
      ffn: { type: "string" },
      vocab: { type: "string" },
      rope: { type: "string" },
      "rope-factor": { type: "string" },
      "max-pos": { type: "string" },
      dtype: { type: "string" },
      shards: { type: "string" },
      "tie-embeddings": { type: "boolean" },
      seed: { type: "string" },
    });
    const dir = onePositional(positionals, "directory");
    let ropeFactor: number | undefined;
    if (values["rope-factor"] !== undefined) {
      ropeFactor = Number(values["rope-factor"]);
      if (values["rope-factor"].trim() === "" || !Number.isFinite(ropeFactor)) {
        throw new InvalidInputError(
          `--rope-factor must be a number, got '${values["rope-factor"]}'`,
        );
      }
    }
    const opts: GenerateOptions = {
      layers: intOption("layers", values.layers),
      hidden: intOption("hidden", values.hidden),
      heads: intOption("heads", values.heads),
      kvHeads: intOption("kv-heads", values["kv-heads"]),
      headDim: intOption("head-dim", values["head-dim"]),
      ffn: intOption("ffn", values.ffn),
      vocab: intOption("vocab", values.vocab),
      rope: values.rope as RopeType | undefined,
      ropeFactor,
      maxPos: intOption("max-pos", values["max-pos"]),
      dtype: values.dtype as "f32" | "bf16" | undefined,
      shards: intOption("shards", values.shards),
      tieEmbeddings: values["tie-embeddings"],
      seed: intOption("seed", values.seed),
    };
    const made = await makeModelDir(dir, opts);
    io.stdout.write(`wrote ${made.files.length} files to ${dir}: ${made.files.join(", ")}\n`);
    return 0;
  },
};
