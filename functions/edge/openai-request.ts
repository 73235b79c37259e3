// Validation of OpenAI request bodies into one typed request. Every refusal is a ParamError naming
// the field (OpenAI's `param`), so a client sees which field is wrong. Unknown fields are ignored,
// as OpenAI does, so SDKs that send newer fields keep working.
import { type ChatMessage, ChatMessageError, parseChatMessages } from "../../core/chat/messages.ts";
import type { Sampling } from "../../core/protocol/header.ts";
import { ParamError } from "../http/http-errors.ts";
import { checkWellFormed } from "./body.ts";

export type { ChatMessage };

/** Most choices one request may ask for (`n`); each is a generation on the model function. */
export const MAX_CHOICES = 16;

export interface SamplingParams extends Sampling {
  /** Choices to generate from the prompt (OpenAI's `n`), 1..MAX_CHOICES. */
  n: number;
  /** null = not given: the tenant's max output tokens (bounded by context) applies. */
  maxTokens: number | null;
  stream: boolean;
  includeUsage: boolean;
  /** Extension: progress chunks during prefill (empty choices + progress object). */
  progress: boolean;
}

export type PromptInput = { kind: "text"; text: string } | { kind: "ids"; ids: number[] };

export interface ChatRequest extends SamplingParams {
  model: string;
  messages: ChatMessage[];
}

export interface CompletionRequest extends SamplingParams {
  model: string;
  prompt: PromptInput;
}

type Json = Record<string, unknown>;

// temperature default 1 as OpenAI documents.
const DEFAULT_TEMPERATURE = 1;

function typeName(v: unknown): string {
  return v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
}

function wrongType(param: string, want: string, v: unknown): ParamError {
  return new ParamError(param, `'${param}' must be ${want}, got ${typeName(v)}`, "invalid_type");
}

function optNumber(
  body: Json,
  param: string,
  min: number,
  max: number,
  integer = false,
): number | null {
  const v = body[param];
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isFinite(v)) throw wrongType(param, "a number", v);
  if (integer && !Number.isInteger(v))
    throw new ParamError(param, `'${param}' must be an integer, got ${v}`);
  if (v < min || v > max)
    throw new ParamError(param, `'${param}' must be between ${min} and ${max}, got ${v}`);
  return v;
}

function optBool(body: Json, param: string): boolean | null {
  const v = body[param];
  if (v === undefined || v === null) return null;
  if (typeof v !== "boolean") throw wrongType(param, "a boolean", v);
  return v;
}

export function requireModel(body: Json): string {
  const m = body.model;
  if (m === undefined) throw new ParamError("model", "'model' is required", "missing_field");
  if (typeof m !== "string") throw wrongType("model", "a string", m);
  return m;
}

function sampling(body: Json, kind: "chat" | "completion"): SamplingParams {
  const n = optNumber(body, "n", 1, MAX_CHOICES, true) ?? 1;
  const maxTokens =
    optNumber(body, "max_completion_tokens", 1, 2 ** 31, true) ??
    optNumber(body, "max_tokens", 1, 2 ** 31, true);
  const stopRaw = body.stop;
  let stop: string[] = [];
  if (typeof stopRaw === "string") stop = [stopRaw];
  else if (Array.isArray(stopRaw)) {
    if (stopRaw.length > 16) throw new ParamError("stop", "'stop' may hold at most 16 strings");
    stop = stopRaw.map((s, i) => {
      if (typeof s !== "string") throw wrongType(`stop[${i}]`, "a string", s);
      return s;
    });
  } else if (stopRaw !== undefined && stopRaw !== null)
    throw wrongType("stop", "a string or an array of strings", stopRaw);
  stop = stop.filter((s) => s.length > 0).map((s, i) => checkWellFormed(s, `stop[${i}]`));

  let logprobs = false;
  let topLogprobs = 0;
  if (kind === "chat") {
    logprobs = optBool(body, "logprobs") ?? false;
    topLogprobs = optNumber(body, "top_logprobs", 0, 20, true) ?? 0;
    if (topLogprobs > 0 && !logprobs)
      throw new ParamError("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  } else {
    const lp = optNumber(body, "logprobs", 0, 20, true);
    logprobs = lp !== null;
    topLogprobs = lp ?? 0;
  }
  const stream = optBool(body, "stream") ?? false;
  const so = body.stream_options;
  let includeUsage = false;
  if (so !== undefined && so !== null) {
    if (typeof so !== "object" || Array.isArray(so))
      throw wrongType("stream_options", "an object", so);
    if (!stream)
      throw new ParamError(
        "stream_options",
        "'stream_options' is only allowed with 'stream': true",
      );
    includeUsage = optBool(so as Json, "include_usage") ?? false;
  }
  if (optBool(body, "echo")) throw new ParamError("echo", "'echo' is not supported");
  return {
    n,
    maxTokens,
    temperature: optNumber(body, "temperature", 0, 2) ?? DEFAULT_TEMPERATURE,
    topP: optNumber(body, "top_p", Number.MIN_VALUE, 1) ?? 1,
    seed: optNumber(body, "seed", -(2 ** 53 - 1), 2 ** 53 - 1, true),
    stop,
    logprobs,
    topLogprobs,
    stream,
    includeUsage,
    progress: optBool(body, "progress") ?? false,
  };
}

export function parseChatRequest(body: Json): ChatRequest {
  const model = requireModel(body);
  let messages: ChatMessage[];
  try {
    // core/chat/messages.ts is the one validator (the renderer's too); here it also takes file
    // parts, and its refusals become OpenAI-shaped ParamErrors.
    messages = parseChatMessages(body.messages, { fileParts: true, checkText: checkWellFormed });
  } catch (err) {
    if (err instanceof ChatMessageError) throw new ParamError(err.param, err.message, err.reason);
    throw err;
  }
  return { model, messages, ...sampling(body, "chat") };
}

export function parseCompletionRequest(body: Json): CompletionRequest {
  const model = requireModel(body);
  let p = body.prompt;
  if (p === undefined) throw new ParamError("prompt", "'prompt' is required", "missing_field");
  // A batch of one is accepted; larger batches are not (n = 1 per request).
  if (Array.isArray(p) && p.length === 1 && (typeof p[0] === "string" || Array.isArray(p[0])))
    p = p[0];
  let prompt: PromptInput;
  if (typeof p === "string") prompt = { kind: "text", text: checkWellFormed(p, "prompt") };
  else if (Array.isArray(p) && p.every((x) => typeof x === "number")) {
    const ids = p as number[];
    ids.forEach((id, i) => {
      if (!Number.isInteger(id))
        throw new ParamError("prompt", `prompt[${i}] = ${id} is not an integer token id`);
    });
    prompt = { kind: "ids", ids };
  } else if (Array.isArray(p)) {
    throw new ParamError(
      "prompt",
      "'prompt' must be a string, an array of token ids, or a batch of one of those",
    );
  } else throw wrongType("prompt", "a string or an array of token ids", p);
  return { model, prompt, ...sampling(body, "completion") };
}

/** Query-string sampling for the streamed text/plain endpoint (same names as the JSON fields). */
export function parseQuerySampling(query: URLSearchParams): Json {
  const body: Json = {};
  for (const [k, v] of query) {
    if (["stream", "progress"].includes(k)) body[k] = v === "true" || v === "1";
    else if (["max_tokens", "temperature", "top_p", "seed", "logprobs", "n"].includes(k))
      body[k] = Number(v);
    else if (k === "stop") body.stop = [...((body.stop as string[]) ?? []), v];
    else body[k] = v;
  }
  return body;
}
