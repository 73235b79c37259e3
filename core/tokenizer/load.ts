// Loading a model directory's tokenizer. A compiled vocabulary is used when one is given or sits in
// the directory AND its header hash matches the directory's tokenizer files; otherwise the
// tokenizer is built from tokenizer.json (about a second) and the caller may `compile()` and keep
// the result. A stale or foreign compiled file is never trusted.

import { FormatError, NotFoundError } from "../errors.ts";
import { toHex } from "../hash/hex.ts";
import { sha256 } from "../hash/sha256.ts";
import type { ModelFiles } from "../io/byte-source.ts";
import { Tokenizer } from "./index.ts";
import { sourceBytes } from "./vocabulary.ts";

/** File name of a compiled vocabulary kept beside tokenizer.json (written by `ultralong tokenize --compile`). */
export const COMPILED_TOKENIZER_FILE = "tokenizer.ultralong.bin";

export interface LoadTokenizerOptions {
  /**
   * A compiled vocabulary from elsewhere (bundled with an edge worker). Checked against the
   * directory's tokenizer.json when the directory has one; used as is when it has none.
   */
  compiled?: Uint8Array;
}

/** SHA-256 (hex) of the tokenizer source files, as stamped in a compiled header. WebCrypto. */
export async function tokenizerSourceHash(
  tokenizerJson: Uint8Array,
  configJson?: Uint8Array,
): Promise<string> {
  return toHex(await sha256(sourceBytes(tokenizerJson, configJson)));
}

export async function loadTokenizer(
  files: ModelFiles,
  opts: LoadTokenizerOptions = {},
): Promise<Tokenizer> {
  const names = new Set(await files.list());
  const config = names.has("tokenizer_config.json")
    ? await files.readBytes("tokenizer_config.json")
    : undefined;
  let compiled = opts.compiled;
  if (!compiled && names.has(COMPILED_TOKENIZER_FILE))
    compiled = await files.readBytes(COMPILED_TOKENIZER_FILE);
  if (!names.has("tokenizer.json")) {
    if (compiled) return Tokenizer.fromCompiled(compiled);
    throw new NotFoundError(`${files.name}: no tokenizer.json`);
  }
  const json = await files.readBytes("tokenizer.json");
  if (compiled) {
    try {
      const tok = Tokenizer.fromCompiled(compiled);
      if (tok.sourceSha256 === (await tokenizerSourceHash(json, config))) return tok;
    } catch (err) {
      if (!(err instanceof FormatError)) throw err;
    }
  }
  const text = new TextDecoder();
  return Tokenizer.fromJson(text.decode(json), config && text.decode(config));
}
