// A Hugging Face byte-level BPE tokenizer.json (Llama 3's) as llama.cpp's `tokenizer.ggml.*`
// metadata, the way llama.cpp's converter writes a "gpt2" vocabulary: every id in [0, vocab) gets a
// token string (spelled in the GPT-2 byte alphabet, as tokenizer.json spells it) and a type, and
// the merges go in rank order. Tokens are written, not re-derived: llama.cpp then tokenizes text
// as we do, though the benchmark and tests hand it token ids and never depend on that.

import { FormatError } from "../errors.ts";
import type { ModelConfig } from "../model/config-types.ts";
import type { GgufValue } from "./format.ts";

/** llama.cpp's llama_token_type (gguf-py TokenType). */
const TOKEN_TYPE = { normal: 1, control: 3, userDefined: 4, unused: 5 } as const;

interface TokenizerJson {
  model?: { type?: string; vocab?: Record<string, number>; merges?: Array<string | string[]> };
  added_tokens?: Array<{ id: number; content: string; special?: boolean }>;
}

/**
 * The tokenizer.ggml.* entries for `tokenizerJson` and `config` (bos/eos from config.json).
 * `source` names the file in errors.
 */
export function llamaVocabMetadata(
  tokenizerJson: string,
  config: Pick<ModelConfig, "vocabSize" | "bosTokenId" | "eosTokenIds" | "padTokenId">,
  source: string,
): Array<[string, GgufValue]> {
  let tj: TokenizerJson;
  try {
    tj = JSON.parse(tokenizerJson) as TokenizerJson;
  } catch (err) {
    throw new FormatError(`${source}: not JSON: ${(err as Error).message}`);
  }
  const model = tj.model;
  if (model?.type !== "BPE" || !model.vocab || !Array.isArray(model.merges)) {
    throw new FormatError(`${source}: GGUF conversion needs a byte-level BPE model with merges`);
  }
  const n = config.vocabSize;
  const tokens: Array<string | null> = new Array(n).fill(null);
  const types: number[] = new Array(n).fill(TOKEN_TYPE.normal);
  const place = (id: number, text: string, type: number) => {
    if (!Number.isInteger(id) || id < 0 || id >= n) {
      throw new FormatError(`${source}: token ${JSON.stringify(text)} has id ${id}, vocab is ${n}`);
    }
    tokens[id] = text;
    types[id] = type;
  };
  for (const [text, id] of Object.entries(model.vocab)) place(id, text, TOKEN_TYPE.normal);
  for (const t of tj.added_tokens ?? []) {
    place(t.id, t.content, t.special ? TOKEN_TYPE.control : TOKEN_TYPE.userDefined);
  }
  // Ids the tokenizer never produces (a vocab padded past the tokenizer): placeholders, as
  // llama.cpp's converter names them.
  for (let i = 0; i < n; i++) {
    if (tokens[i] === null) {
      tokens[i] = `[PAD${i}]`;
      types[i] = TOKEN_TYPE.unused;
    }
  }
  const merges = model.merges.map((m) => (Array.isArray(m) ? m.join(" ") : m));
  const out: Array<[string, GgufValue]> = [
    ["tokenizer.ggml.model", { type: "string", value: "gpt2" }],
    // The Llama 3 pre-tokenizer regex (tokenizer.json's Split pattern), by llama.cpp's name.
    ["tokenizer.ggml.pre", { type: "string", value: "llama-bpe" }],
    ["tokenizer.ggml.tokens", { type: "array", of: "string", values: tokens as string[] }],
    ["tokenizer.ggml.token_type", { type: "array", of: "i32", values: types }],
    ["tokenizer.ggml.merges", { type: "array", of: "string", values: merges }],
  ];
  if (config.bosTokenId !== null) {
    out.push(["tokenizer.ggml.bos_token_id", { type: "u32", value: config.bosTokenId }]);
    out.push(["tokenizer.ggml.add_bos_token", { type: "bool", value: true }]);
  }
  if (config.eosTokenIds.length > 0) {
    out.push(["tokenizer.ggml.eos_token_id", { type: "u32", value: config.eosTokenIds[0] }]);
  }
  if (config.padTokenId !== null) {
    out.push(["tokenizer.ggml.padding_token_id", { type: "u32", value: config.padTokenId }]);
  }
  return out;
}
