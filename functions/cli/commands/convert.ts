// `ultralong convert --to gguf --model DIR --out FILE [--type f32|f16|bf16]`: a model directory as
// a llama.cpp GGUF file (core/node/gguf.ts; what is mapped and how: docs/gguf.md), so the same
// weights run in llama.cpp, as `npm run bench -- cpu-peer` does.

import { InvalidInputError } from "../../../core/errors.ts";
import type { GgmlType } from "../../../core/gguf/format.ts";
import { convertModelDirToGguf } from "../../../core/node/gguf.ts";
import { type Command, parseCommandArgs } from "../command.ts";

const usage = `usage: ultralong convert --to gguf --model DIR --out FILE [--type f32|f16|bf16]

Writes the model directory as a llama.cpp GGUF file (architecture "llama"): the matrices in --type
(default: the checkpoint's), norms f32, q/k rows permuted per head as llama.cpp's rotary expects,
the RoPE scaling as llama.cpp reads it (yarn, linear, llama3; dynamic is refused), the Llama 3
tokenizer as tokenizer.ggml.* (docs/gguf.md). FILE is written under a temporary name and renamed:
a failed conversion leaves nothing there.

options:
  --to gguf          the output format (the only one)
  --model DIR        Hugging Face Llama model directory
  --out FILE         the GGUF file to write
  --type T           f32|f16|bf16 matrices (default: the checkpoint's dtype)
`;

const TYPES = ["f32", "f16", "bf16"];

export const command: Command = {
  usage,
  async run(argv, io) {
    const { values } = parseCommandArgs(argv, {
      to: { type: "string" },
      model: { type: "string" },
      out: { type: "string" },
      type: { type: "string" },
    });
    if (values.to !== "gguf") {
      throw new InvalidInputError(
        values.to === undefined ? "--to gguf is required" : `--to must be gguf, got '${values.to}'`,
      );
    }
    if (!values.model) throw new InvalidInputError("--model DIR is required (see --help)");
    if (!values.out) throw new InvalidInputError("--out FILE is required (see --help)");
    if (values.type !== undefined && !TYPES.includes(values.type)) {
      throw new InvalidInputError(`--type must be f32, f16 or bf16, got '${values.type}'`);
    }
    const r = await convertModelDirToGguf(values.model, values.out, {
      type: values.type as GgmlType | undefined,
    });
    io.stdout.write(`wrote ${r.path}: ${r.tensors} tensors, ${r.type}, ${r.bytes} bytes\n`);
    return 0;
  },
};
