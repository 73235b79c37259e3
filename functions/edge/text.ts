// What the edge needs from the tokenizer and chat template (core/tokenizer, core/chat), as a port so
// the app is testable against the real tokenizer and runs wherever core runs.
//
// Safety rule (issue 3): text from a request is encoded with special-token matching OFF, so a user
// typing "<|eot_id|>" gets the ids of those characters; control tokens come only from the template.

import type { TemplateMessage } from "../../core/chat/messages.ts";

/**
 * A validated message (core/chat/messages.ts) with its file parts resolved: content is their text,
 * or a marker `encodeText` replaces; tool calls, tool_call_id and name pass on to the template.
 */
export type ChatMessageText = TemplateMessage;

export interface StreamingEncoder {
  /** Ids that are final given the text so far (may hold back a tail until more text arrives). */
  push(text: string): ArrayLike<number>;
  /** The remaining ids. */
  end(): ArrayLike<number>;
}

export interface EdgeText {
  /** Token ids run 0..vocabSize-1. */
  readonly vocabSize: number;
  /** <|begin_of_text|>, prepended to plain completion prompts; null if the model has none. */
  readonly bosId: number | null;
  /** Encodes request text, special-token matching off. */
  encode(text: string): ArrayLike<number>;
  /** Streaming encode (same ids as `encode` of the concatenation). */
  createEncoder(): StreamingEncoder;
  decode(ids: ArrayLike<number>): string;
  /** Ids a client may not send in an id prompt (Llama 3's <|reserved_special_token_N|>). */
  isReservedId(id: number): boolean;
  /** Bytes of one token (byte-level BPE: a token may hold part of a UTF-8 character). */
  tokenByteLength(id: number): number;
  /**
   * The model's chat template applied with add_generation_prompt, as ids. `encodeText`, when
   * given, encodes each run of text between the template's control tokens (default `encode`).
   */
  renderChat(
    messages: ChatMessageText[],
    encodeText?: (text: string) => ArrayLike<number>,
  ): ArrayLike<number> | Promise<ArrayLike<number>>;
}
