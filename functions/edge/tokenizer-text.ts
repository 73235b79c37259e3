// EdgeText over core/tokenizer's Tokenizer and a chat renderer (core/chat's renderChat bound to the
// model's template).
import { renderChat } from "../../core/chat/index.ts";
import { InvalidInputError } from "../../core/errors.ts";
import type { Tokenizer } from "../../core/tokenizer/index.ts";
import type { EdgeText } from "./text.ts";

export type ChatRenderer = EdgeText["renderChat"];

/**
 * The model's own chat template with the assistant turn opened, as every edge serves chats (Node,
 * Workers, Lambda, tests); a model without a template refuses chats with one line naming it.
 */
export function templateChatRenderer(tokenizer: Tokenizer, modelId: string): ChatRenderer {
  const template = tokenizer.chatTemplate;
  return (messages, encodeText) => {
    if (!template)
      throw new InvalidInputError(`${modelId} has no chat_template: use /v1/completions`);
    return renderChat(tokenizer, template, messages, { addGenerationPrompt: true, encodeText });
  };
}

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
