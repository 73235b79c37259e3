// Chat messages as the edge accepts them (OpenAI chat-completions shape), validated and normalized
// into what chat templates expect. Anything else is refused with InvalidInputError, naming the path.

import { InvalidInputError } from "../errors.ts";

export const CHAT_ROLES = ["system", "user", "assistant", "tool", "ipython"] as const;
export type ChatRole = (typeof CHAT_ROLES)[number];

/** An OpenAI text content part. Other part types (images, files) must be resolved by the caller. */
export interface ChatTextPart {
  type: "text";
  text: string;
}

export interface ChatToolCall {
  id?: string;
  type?: "function";
  function: { name: string; arguments: string | Record<string, unknown> };
}

export interface ChatMessage {
  role: ChatRole;
  content?: string | ChatTextPart[] | null;
  name?: string;
  tool_calls?: ChatToolCall[];
  tool_call_id?: string;
}

/** What templates see: content is always a string; tool-call arguments are objects when JSON. */
export interface TemplateMessage {
  role: ChatRole;
  content: string;
  name?: string;
  tool_calls?: { id?: string; type: "function"; function: { name: string; arguments: unknown } }[];
  tool_call_id?: string;
}

const MESSAGE_KEYS = new Set(["role", "content", "name", "tool_calls", "tool_call_id", "refusal"]);

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function fail(path: string, what: string): never {
  throw new InvalidInputError(`${path}: ${what}`);
}

function text(v: unknown, path: string): string {
  if (typeof v !== "string") fail(path, "must be a string");
  return v;
}

/**
 * Text parts are joined with "\n" (as vLLM does for text-only templates); a part of any other
 * type is refused, since the template could not place it.
 */
function content(v: unknown, path: string): string {
  if (v === undefined || v === null) return "";
  if (typeof v === "string") return v;
  if (!Array.isArray(v)) fail(path, "must be a string or an array of text parts");
  return v
    .map((part, i) => {
      if (!isObject(part) || part.type !== "text") {
        fail(
          `${path}[${i}]`,
          `content part type ${JSON.stringify(isObject(part) ? part.type : part)} is not supported (only "text")`,
        );
      }
      return text(part.text, `${path}[${i}].text`);
    })
    .join("\n");
}

function toolCall(v: unknown, path: string): NonNullable<TemplateMessage["tool_calls"]>[number] {
  if (!isObject(v) || !isObject(v.function))
    fail(path, "must be {type: 'function', function: {name, arguments}}");
  if (v.type !== undefined && v.type !== "function") fail(`${path}.type`, 'must be "function"');
  const name = text(v.function.name, `${path}.function.name`);
  let args: unknown = v.function.arguments ?? {};
  // OpenAI sends arguments as a JSON string; Llama templates print them with `tojson`, so give
  // them the object when the string is JSON (as transformers users pass dicts).
  if (typeof args === "string") {
    try {
      args = JSON.parse(args);
    } catch {
      fail(`${path}.function.arguments`, "must be a JSON object or a string holding one");
    }
  }
  if (!isObject(args)) fail(`${path}.function.arguments`, "must be a JSON object");
  const out: NonNullable<TemplateMessage["tool_calls"]>[number] = {
    type: "function",
    function: { name, arguments: args },
  };
  if (v.id !== undefined) out.id = text(v.id, `${path}.id`);
  return out;
}

/** Validate and normalize a messages array. */
export function normalizeMessages(messages: unknown): TemplateMessage[] {
  if (!Array.isArray(messages)) fail("messages", "must be an array");
  if (messages.length === 0) fail("messages", "must not be empty");
  return messages.map((m, i) => {
    const path = `messages[${i}]`;
    if (!isObject(m)) fail(path, "must be an object");
    for (const key of Object.keys(m))
      if (!MESSAGE_KEYS.has(key)) fail(`${path}.${key}`, "is not a known message field");
    if (!CHAT_ROLES.includes(m.role as ChatRole)) {
      fail(
        `${path}.role`,
        `must be one of ${CHAT_ROLES.join(", ")} (got ${JSON.stringify(m.role)})`,
      );
    }
    const out: TemplateMessage = {
      role: m.role as ChatRole,
      content: content(m.content, `${path}.content`),
    };
    if (m.name !== undefined) out.name = text(m.name, `${path}.name`);
    if (m.tool_call_id !== undefined)
      out.tool_call_id = text(m.tool_call_id, `${path}.tool_call_id`);
    if (m.refusal !== undefined && m.refusal !== null) fail(`${path}.refusal`, "is not supported");
    if (m.tool_calls !== undefined) {
      if (out.role !== "assistant")
        fail(`${path}.tool_calls`, "only assistant messages carry tool calls");
      if (!Array.isArray(m.tool_calls)) fail(`${path}.tool_calls`, "must be an array");
      out.tool_calls = m.tool_calls.map((c, j) => toolCall(c, `${path}.tool_calls[${j}]`));
    }
    return out;
  });
}
