// The one validator for chat messages (OpenAI chat-completions shape): the edge's request parser
// (functions/edge/openai-request.ts, with file parts) and core's renderer (render.ts, text parts
// only) both call parseChatMessages, so a message is accepted or refused the same way over HTTP,
// by the CLI and by renderChat. A refusal is a ChatMessageError naming the path (OpenAI's `param`).
//
// The rules, as OpenAI defines them:
//   role          system, user, assistant or tool. (Llama 3.1's template also knows "ipython", but
//                 renders a tool message as ipython already; "developer" it does not handle.)
//   content       a string or a non-empty array of parts; null or absent only on assistant
//                 messages (one that carries tool_calls needs no text).
//   tool_calls    only on assistant messages: [{id?, type: "function", function: {name, arguments}}],
//                 arguments a JSON object or a string holding one.
//   tool_call_id  required on tool messages, and only there.
//   name          an optional string. Other fields are ignored (as the edge ignores unknown request
//                 fields), except a non-null `refusal`, which no template can place.
// Text parts join with "" (as OpenAI's API concatenates a message's text parts); a file part's
// text is spliced in at its place by the edge (functions/edge/file-service.ts), also with nothing
// between.

import { assert, InvalidInputError } from "../errors.ts";

export const CHAT_ROLES = ["system", "user", "assistant", "tool"] as const;
export type ChatRole = (typeof CHAT_ROLES)[number];

/** An OpenAI text content part. */
export interface ChatTextPart {
  type: "text";
  text: string;
}

/** A file uploaded by POST /v1/files, named in a message (the edge resolves it). */
export interface ChatFilePart {
  type: "file";
  fileId: string;
}

export type ChatContentPart = ChatTextPart | ChatFilePart;

/** A tool call as templates see it: arguments an object (Llama templates print them `tojson`). */
export interface ChatToolCall {
  id?: string;
  type: "function";
  function: { name: string; arguments: Record<string, unknown> };
}

/** A validated message; content as parts, in order. */
export interface ChatMessage {
  role: ChatRole;
  content: ChatContentPart[];
  name?: string;
  tool_calls?: ChatToolCall[];
  tool_call_id?: string;
}

/** What templates see: content is one string. */
export interface TemplateMessage extends Omit<ChatMessage, "content"> {
  content: string;
}

/** Why a message was refused; `param` is the path, `reason` the OpenAI error code. */
export class ChatMessageError extends InvalidInputError {
  constructor(
    readonly param: string,
    what: string,
    readonly reason: "invalid_type" | "invalid_value" | "missing_field" = "invalid_value",
  ) {
    super(`${param}: ${what}`);
  }
}

export interface ParseChatOptions {
  /** Accept `{type: "file", file: {file_id}}` parts (the edge, which has a file store). */
  fileParts?: boolean;
  /** Checks each string a message carries (the edge refuses lone surrogates); returns it. */
  checkText?: (text: string, param: string) => string;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function string(v: unknown, path: string): string {
  if (typeof v !== "string") throw new ChatMessageError(path, "must be a string", "invalid_type");
  return v;
}

function checkedString(v: unknown, path: string, opts: ParseChatOptions): string {
  const s = string(v, path);
  return opts.checkText ? opts.checkText(s, path) : s;
}

function parts(
  v: unknown,
  path: string,
  role: ChatRole,
  opts: ParseChatOptions,
): ChatContentPart[] {
  const text = (s: unknown, p: string) => checkedString(s, p, opts);
  if ((v === undefined || v === null) && role === "assistant") return [];
  if (v === undefined) throw new ChatMessageError(path, "is required", "missing_field");
  if (typeof v === "string") return [{ type: "text", text: text(v, path) }];
  if (!Array.isArray(v))
    throw new ChatMessageError(
      path,
      "must be a string or an array of content parts",
      "invalid_type",
    );
  // As OpenAI: an empty parts array is refused (an empty string is a message, and is kept).
  if (v.length === 0) throw new ChatMessageError(path, "must not be an empty array");
  return v.map((part, i): ChatContentPart => {
    const p = `${path}[${i}]`;
    if (!isObject(part))
      throw new ChatMessageError(p, "must be a content part object", "invalid_type");
    if (part.type === "text") return { type: "text", text: text(part.text, `${p}.text`) };
    if (part.type === "file" && opts.fileParts) {
      const id = isObject(part.file) ? part.file.file_id : undefined;
      if (typeof id !== "string" || id.length === 0)
        throw new ChatMessageError(`${p}.file.file_id`, "must be a file id from POST /v1/files");
      return { type: "file", fileId: id };
    }
    // One message for both callers, so HTTP and the renderer refuse alike; only the edge, which
    // holds the files, takes file parts (docs/http-api.md).
    throw new ChatMessageError(
      `${p}.type`,
      `content part type ${JSON.stringify(part.type)} is not supported (text, and file over HTTP)`,
    );
  });
}

function toolCall(v: unknown, path: string, opts: ParseChatOptions): ChatToolCall {
  if (!isObject(v) || !isObject(v.function))
    throw new ChatMessageError(path, "must be {type: 'function', function: {name, arguments}}");
  if (v.type !== undefined && v.type !== "function")
    throw new ChatMessageError(`${path}.type`, 'must be "function"');
  const name = checkedString(v.function.name, `${path}.function.name`, opts);
  let args: unknown = v.function.arguments ?? {};
  // OpenAI sends arguments as a JSON string; Llama templates print them with `tojson`, so give
  // them the object when the string is JSON (as transformers users pass dicts).
  if (typeof args === "string") {
    try {
      args = JSON.parse(args);
    } catch {
      args = null;
    }
  }
  if (!isObject(args))
    throw new ChatMessageError(
      `${path}.function.arguments`,
      "must be a JSON object or a string holding one",
    );
  const out: ChatToolCall = { type: "function", function: { name, arguments: args } };
  if (v.id !== undefined) out.id = checkedString(v.id, `${path}.id`, opts);
  return out;
}

/** Validate a messages array. */
export function parseChatMessages(messages: unknown, opts: ParseChatOptions = {}): ChatMessage[] {
  if (messages === undefined)
    throw new ChatMessageError("messages", "is required", "missing_field");
  if (!Array.isArray(messages))
    throw new ChatMessageError("messages", "must be an array", "invalid_type");
  if (messages.length === 0) throw new ChatMessageError("messages", "must not be empty");
  return messages.map((m, i) => {
    const path = `messages[${i}]`;
    if (!isObject(m)) throw new ChatMessageError(path, "must be an object", "invalid_type");
    const role = m.role as ChatRole;
    if (!CHAT_ROLES.includes(role)) {
      throw new ChatMessageError(
        `${path}.role`,
        `must be one of ${CHAT_ROLES.join(", ")} (got ${JSON.stringify(m.role)})`,
      );
    }
    const out: ChatMessage = { role, content: parts(m.content, `${path}.content`, role, opts) };
    if (m.name !== undefined) out.name = checkedString(m.name, `${path}.name`, opts);
    if (m.refusal !== undefined && m.refusal !== null)
      throw new ChatMessageError(`${path}.refusal`, "is not supported");
    if (m.tool_calls !== undefined && m.tool_calls !== null) {
      if (role !== "assistant")
        throw new ChatMessageError(
          `${path}.tool_calls`,
          "only assistant messages carry tool calls",
        );
      if (!Array.isArray(m.tool_calls))
        throw new ChatMessageError(`${path}.tool_calls`, "must be an array", "invalid_type");
      out.tool_calls = m.tool_calls.map((c, j) => toolCall(c, `${path}.tool_calls[${j}]`, opts));
    }
    if (role === "tool") {
      if (m.tool_call_id === undefined)
        throw new ChatMessageError(
          `${path}.tool_call_id`,
          "is required on tool messages",
          "missing_field",
        );
      out.tool_call_id = checkedString(m.tool_call_id, `${path}.tool_call_id`, opts);
    } else if (m.tool_call_id !== undefined) {
      throw new ChatMessageError(`${path}.tool_call_id`, "only tool messages carry tool_call_id");
    }
    return out;
  });
}

/** A message's text parts as one string (see the top of this file for the joining rule). */
export function joinText(content: ChatContentPart[]): string {
  return content
    .map((part) => {
      assert(part.type === "text", "file parts are resolved before a message is rendered");
      return part.text;
    })
    .join("");
}

/** Validate messages and give them the shape templates take (text parts only). */
export function normalizeMessages(messages: unknown): TemplateMessage[] {
  return parseChatMessages(messages).map((m) => ({ ...m, content: joinText(m.content) }));
}
