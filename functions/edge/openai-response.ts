// Model events -> OpenAI response objects (chat.completion, text_completion, their stream chunks,
// usage, logprobs, and the opt-in progress chunk). Pure functions: the app decides when to send.
import type { ProgressEvent, TokenEvent, UsageEvent } from "../../core/protocol/events.ts";

export type Kind = "chat" | "completion";

export interface ResponseIds {
  id: string;
  created: number;
  model: string;
}

const utf8 = new TextEncoder();

/** Text of one token for logprobs (may be a partial UTF-8 sequence; `bytes` carries the truth). */
export type TokenText = (id: number) => string;

function chatLogprob(ev: TokenEvent, tokenText: TokenText) {
  const text = tokenText(ev.id);
  return {
    token: text,
    logprob: ev.logprob ?? 0,
    bytes: [...utf8.encode(text)],
    top_logprobs: (ev.top ?? []).map((t) => {
      const tt = t.text || tokenText(t.id);
      return { token: tt, logprob: t.logprob, bytes: [...utf8.encode(tt)] };
    }),
  };
}

/** Accumulates a completion for the non-stream response. */
export class Completion {
  text = "";
  readonly tokens: TokenEvent[] = [];
  usage: UsageEvent | null = null;

  add(ev: TokenEvent): void {
    this.text += ev.text;
    this.tokens.push(ev);
  }

  /** This choice of a response, at `index`. */
  choiceJson(
    kind: Kind,
    index: number,
    logprobs: boolean,
    tokenText: TokenText,
  ): Record<string, unknown> {
    const finish = this.usage!.finishReason === "length" ? "length" : "stop";
    if (kind === "chat") {
      return {
        index,
        message: { role: "assistant", content: this.text, refusal: null },
        logprobs: logprobs
          ? { content: this.tokens.map((t) => chatLogprob(t, tokenText)), refusal: null }
          : null,
        finish_reason: finish,
      };
    }
    return {
      index,
      text: this.text,
      logprobs: logprobs ? completionLogprobs(this.tokens, 0, tokenText) : null,
      finish_reason: finish,
    };
  }
}

/** The non-stream response of `choices` (request field `n`), with their summed `usage`. */
export function completionJson(
  kind: Kind,
  ids: ResponseIds,
  choices: Completion[],
  usage: UsageEvent,
  logprobs: boolean,
  tokenText: TokenText,
): Record<string, unknown> {
  return {
    id: ids.id,
    object: kind === "chat" ? "chat.completion" : "text_completion",
    created: ids.created,
    model: ids.model,
    system_fingerprint: null,
    choices: choices.map((c, i) => c.choiceJson(kind, i, logprobs, tokenText)),
    usage: usageJson(usage),
  };
}

/**
 * The usage of a request's choices: the prompt (and its cached part) once, as OpenAI counts it,
 * and every choice's completion tokens; the first choice's finish reason and prefill, the longest
 * decode.
 */
export function totalUsage(us: UsageEvent[]): UsageEvent {
  return {
    ...us[0],
    completionTokens: us.reduce((n, u) => n + u.completionTokens, 0),
    decodeMs: Math.max(...us.map((u) => u.decodeMs)),
  };
}

export function usageJson(u: UsageEvent): Record<string, unknown> {
  return {
    prompt_tokens: u.promptTokens,
    completion_tokens: u.completionTokens,
    total_tokens: u.promptTokens + u.completionTokens,
    prompt_tokens_details: { cached_tokens: u.cachedTokens },
  };
}

function completionLogprobs(tokens: TokenEvent[], offset: number, tokenText: TokenText) {
  const out = {
    tokens: [] as string[],
    token_logprobs: [] as number[],
    top_logprobs: [] as Record<string, number>[],
    text_offset: [] as number[],
  };
  let at = offset;
  for (const t of tokens) {
    const text = tokenText(t.id);
    out.tokens.push(text);
    out.token_logprobs.push(t.logprob ?? 0);
    const top: Record<string, number> = {};
    for (const alt of t.top ?? []) top[alt.text || tokenText(alt.id)] = alt.logprob;
    out.top_logprobs.push(top);
    out.text_offset.push(at);
    at += t.text.length;
  }
  return out;
}

/** Builds stream chunks; tracks the text offset for completion logprobs. */
export class ChunkWriter {
  #offset = 0;
  #first = true;
  constructor(
    readonly kind: Kind,
    readonly ids: ResponseIds,
    readonly logprobs: boolean,
    readonly tokenText: TokenText,
    /** The choice's index (request field `n`). */
    readonly index = 0,
  ) {}

  #base(choices: unknown[]): Record<string, unknown> {
    return {
      id: this.ids.id,
      object: this.kind === "chat" ? "chat.completion.chunk" : "text_completion",
      created: this.ids.created,
      model: this.ids.model,
      system_fingerprint: null,
      choices,
    };
  }

  token(ev: TokenEvent): Record<string, unknown> {
    if (this.kind === "chat") {
      const delta: Record<string, unknown> = { content: ev.text };
      if (this.#first) delta.role = "assistant";
      this.#first = false;
      const logprobs = this.logprobs
        ? { content: [chatLogprob(ev, this.tokenText)], refusal: null }
        : null;
      return this.#base([{ index: this.index, delta, logprobs, finish_reason: null }]);
    }
    const logprobs = this.logprobs ? completionLogprobs([ev], this.#offset, this.tokenText) : null;
    this.#offset += ev.text.length;
    return this.#base([{ index: this.index, text: ev.text, logprobs, finish_reason: null }]);
  }

  finish(u: UsageEvent): Record<string, unknown> {
    const finish = u.finishReason === "length" ? "length" : "stop";
    if (this.kind === "chat") {
      const delta: Record<string, unknown> = this.#first ? { role: "assistant", content: "" } : {};
      return this.#base([{ index: this.index, delta, logprobs: null, finish_reason: finish }]);
    }
    return this.#base([{ index: this.index, text: "", logprobs: null, finish_reason: finish }]);
  }

  /** stream_options.include_usage: a last chunk with empty choices and the usage. */
  usage(u: UsageEvent): Record<string, unknown> {
    return { ...this.#base([]), usage: usageJson(u) };
  }

  /** Opt-in progress: empty choices (SDKs tolerate it) plus a `progress` object. */
  progress(p: ProgressEvent): Record<string, unknown> {
    return {
      ...this.#base([]),
      progress: {
        prompt_tokens_done: p.done,
        prompt_tokens_total: p.total,
        cached_tokens: p.cached,
        tokens_per_second: Math.round(p.tokensPerSecond * 10) / 10,
      },
    };
  }
}
