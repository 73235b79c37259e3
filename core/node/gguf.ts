// Converts a local Hugging Face Llama model directory (what `ultralong make-model` writes, or a
// downloaded one) into a llama.cpp GGUF file (core/gguf/llama.ts says what is mapped and how),
// streaming one tensor at a time. The file is written under a temporary name and renamed, so a
// failed conversion leaves nothing at OUT.

import { basename, dirname } from "node:path";
import { InvalidInputError } from "../errors.ts";
import type { GgmlType } from "../gguf/format.ts";
import { planLlamaGguf } from "../gguf/llama.ts";
import { llamaVocabMetadata } from "../gguf/llama-vocab.ts";
import { ggufChunks, ggufLayout } from "../gguf/writer.ts";
import { loadModelDir } from "./load-model-dir.ts";
import { DirectorySink } from "./model-files.ts";

export interface ConvertGgufOptions {
  /** Matrix type; default the checkpoint's (f32 or bf16; f16 stays f16). */
  type?: GgmlType;
}

export interface ConvertGgufResult {
  path: string;
  type: GgmlType;
  tensors: number;
  bytes: number;
}

export async function convertModelDirToGguf(
  dir: string,
  out: string,
  opts: ConvertGgufOptions = {},
): Promise<ConvertGgufResult> {
  if (opts.type !== undefined && !["f32", "f16", "bf16"].includes(opts.type)) {
    throw new InvalidInputError(`GGUF type must be f32, f16 or bf16, got ${opts.type}`);
  }
  const model = await loadModelDir(dir);
  const stored = model.weights.tensors().find((t) => t.name.endsWith("q_proj.weight"))?.dtype;
  const type = opts.type ?? stored ?? "f32";
  const vocab = llamaVocabMetadata(
    await model.files.readText("tokenizer.json"),
    model.config,
    `${model.files.name}/tokenizer.json`,
  );
  const plan = planLlamaGguf(model.config, model.weights, vocab, {
    type,
    name: basename(model.files.name),
  });
  const layout = ggufLayout(plan.metadata, plan.tensors);
  let bytes = 0;
  async function* counted() {
    for await (const c of ggufChunks(layout, plan.data)) {
      bytes += c.byteLength;
      yield c;
    }
  }
  await new DirectorySink(dirname(out)).writeFile(basename(out), counted());
  return { path: out, type, tensors: layout.tensors.length, bytes };
}
