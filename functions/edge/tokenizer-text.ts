// EdgeText over core/tokenizer's Tokenizer and a chat renderer (core/chat's renderChat bound to the
// model's template).
import type { Tokenizer } from "../../core/tokenizer/index.ts";
import type { EdgeText } from "./text.ts";

export type ChatRenderer = EdgeText["renderChat"];

const RESERVED = /^<\|reserved_special_token_\d+\|>$/;

export function edgeTextFromTokenizer(tokenizer: Tokenizer, renderChat: ChatRenderer): EdgeText {
  // Llama 3 ships 250 <|reserved_special_token_N|> ids that no template emits: refuse them in id
  // prompts. Named control tokens (<|begin_of_text|>, <|eot_id|>, ...) are allowed there, since an
  // id prompt is the client's own template.
  const reserved = new Set<number>();
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    if (tokenizer.isSpecial(id) && RESERVED.test(tokenizer.decode([id]))) reserved.add(id);
  }
  return {
    vocabSize: tokenizer.vocabSize,
    bosId: tokenizer.bosTokenId ?? null,
    encode: (text) => tokenizer.encode(text),
    createEncoder: () => tokenizer.createEncoder(),
    decode: (ids) => tokenizer.decode(ids),
    tokenByteLength: (id) => tokenizer.tokenBytes(id).length,
    isReservedId: (id) => reserved.has(id),
    renderChat,
  };
}
