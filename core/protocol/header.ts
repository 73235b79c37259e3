// The HEADER frame of a generate request (frames.ts): everything but the prompt tokens. The edge
// fills it from a validated OpenAI request; the model function re-validates it (defence in depth:
// a signed header from a buggy edge must still not crash the model function).

import { InvalidInputError } from "../errors.ts";

/** How tokens are chosen and returned: the fields an OpenAI request and this header share. */
export interface Sampling {
  /** 0 = greedy. */
  temperature: number;
  topP: number;
  seed: number | null;
  stop: string[];
  /** Return the chosen token's logprob, and this many alternatives (0..20). */
  logprobs: boolean;
  topLogprobs: number;
}

export interface GenerateHeader extends Sampling {
  v: 1;
  /** The edge's request id, echoed in logs on both sides. */
  requestId: string;
  /** Tenant id from the API key (never from the client): the snapshot salt. */
  tenant: string;
  /** Prompt length when known before the body ends, else null (streamed uploads). */
  promptTokens: number | null;
  maxTokens: number;
  /** Send progress events during prefill. */
  progress: boolean;
}

function isInt(x: unknown, min: number, max: number): x is number {
  return typeof x === "number" && Number.isInteger(x) && x >= min && x <= max;
}

export function parseGenerateHeader(json: unknown): GenerateHeader {
  const h = json as Partial<GenerateHeader> | null;
  const bad = (what: string) => new InvalidInputError(`generate header: ${what}`);
  if (!h || typeof h !== "object" || h.v !== 1) throw bad("unsupported version");
  if (typeof h.requestId !== "string" || h.requestId.length > 128) throw bad("requestId");
  if (typeof h.tenant !== "string" || h.tenant.length === 0 || h.tenant.length > 256)
    throw bad("tenant");
  if (h.promptTokens !== null && !isInt(h.promptTokens, 0, 2 ** 31)) throw bad("promptTokens");
  if (!isInt(h.maxTokens, 0, 2 ** 31)) throw bad("maxTokens");
  if (typeof h.temperature !== "number" || !(h.temperature >= 0 && h.temperature <= 2))
    throw bad("temperature");
  if (typeof h.topP !== "number" || !(h.topP > 0 && h.topP <= 1)) throw bad("topP");
  if (h.seed !== null && !isInt(h.seed, -(2 ** 53), 2 ** 53)) throw bad("seed");
  if (!Array.isArray(h.stop) || h.stop.length > 16 || !h.stop.every((s) => typeof s === "string")) {
    throw bad("stop");
  }
  if (typeof h.logprobs !== "boolean" || !isInt(h.topLogprobs, 0, 20)) throw bad("logprobs");
  if (typeof h.progress !== "boolean") throw bad("progress");
  return h as GenerateHeader;
}
