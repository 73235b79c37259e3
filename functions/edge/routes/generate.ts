// Generation, as OpenAI's API has it: chat and completions, whole or streamed, and a completion whose
// prompt is the request body itself, streamed into the model function as it uploads.
//
//   POST /v1/chat/completions   JSON; stream or not
//   POST /v1/completions        JSON; prompt text or token ids
//   POST /v1/completions/text   text/plain body = the prompt; sampling in the query string
import { Hono } from "hono";
import { BusyError, CancelledError, UltralongError } from "../../../core/errors.ts";
import { type ModelEvent, sseEvent, type UsageEvent } from "../../../core/protocol/events.ts";
import type { GenerateHeader } from "../../../core/protocol/header.ts";
import {
  describeError,
  IncompleteBodyError,
  ParamError,
  RateLimitError,
  UpstreamError,
} from "../../http/http-errors.ts";
import { usageLogFields } from "../../http/request-log.ts";
import { clientAbort, sseResponse } from "../../http/sse.ts";
import { limitedChunks, readJson, requireMediaType } from "../body.ts";
import {
  type EdgeContext,
  type EdgeDeps,
  type EdgeEnv,
  Prompts,
  recordRequest,
} from "../context.ts";
import { generateRemote } from "../forward.ts";
import type { Tenant } from "../keys.ts";
import {
  parseChatRequest,
  parseCompletionRequest,
  parseQuerySampling,
  type SamplingParams,
} from "../openai-request.ts";
import {
  ChunkWriter,
  Completion,
  completionJson,
  type Kind,
  totalUsage,
} from "../openai-response.ts";

type Event = Exclude<ModelEvent, { event: "error" }>;

/** Resolves after `ms`, or rejects with the signal's reason when it fires first. */
function waitOrAbort(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * The events of a request's `n` choices, each with its index, as they come. `first` is choice 0's
 * (sent, and taken by the model function); `start(i)` sends choice i's. The others are sent once
 * choice 0 has its first token, when the model function holds the prompt's KV for the tenant: as
 * named blocks on a batched runtime, as the held prompt or its snapshots on one that runs a
 * sequence at a time. Sent together, the latter would compute the prompt n times side by side.
 * `stop()` cancels whatever still runs, when the consumer stops or a choice fails (the first
 * failure is thrown; a choice the model function refuses, 429 included, is one).
 */
async function* choiceEvents(
  first: AsyncGenerator<Event>,
  n: number,
  start: (i: number) => Promise<AsyncGenerator<Event>>,
  stop: () => void,
): AsyncGenerator<{ index: number; ev: Event }> {
  if (n === 1) {
    for await (const ev of first) yield { index: 0, ev };
    return;
  }
  type Item = { index: number; ev?: Event; end?: true; error?: unknown };
  const items: Item[] = [];
  let wake: (() => void) | null = null;
  const push = (item: Item) => {
    items.push(item);
    wake?.();
    wake = null;
  };
  let others = false;
  const startOthers = () => {
    if (others) return;
    others = true;
    for (let i = 1; i < n; i++) void pump(i, () => start(i));
  };
  const pump = async (index: number, open: () => Promise<AsyncGenerator<Event>>) => {
    try {
      for await (const ev of await open()) {
        push({ index, ev });
        if (ev.event !== "progress") startOthers();
      }
      push({ index, end: true });
    } catch (error) {
      push({ index, error: error ?? new Error("a choice failed") });
    }
  };
  void pump(0, async () => first);
  try {
    for (let ended = 0; ended < n; ) {
      while (items.length === 0) await new Promise<void>((resolve) => (wake = resolve));
      const item = items.shift()!;
      if (item.error !== undefined) throw item.error;
      if (item.end) {
        ended++;
        startOthers();
      } else yield { index: item.index, ev: item.ev! };
    }
  } finally {
    stop();
  }
}

export function generateRoutes(deps: EdgeDeps): Hono<EdgeEnv> {
  const { text, metrics, clock } = deps;
  const prompts = new Prompts(deps);
  const app = new Hono<EdgeEnv>();

  /**
   * max_tokens (of each choice) checked against the tenant, whose limit is on a request's
   * generated tokens, all choices together, and against the context; defaults to what fits.
   */
  function outputBudget(tenant: Tenant, p: SamplingParams, promptTokens: number | null): number {
    if (p.maxTokens !== null && p.maxTokens * p.n > tenant.maxOutputTokens) {
      throw new ParamError(
        "max_tokens",
        p.n === 1
          ? `max_tokens is ${p.maxTokens}; this key allows at most ${tenant.maxOutputTokens}`
          : `max_tokens is ${p.maxTokens} for each of n = ${p.n} choices; this key allows at most ${tenant.maxOutputTokens} generated tokens a request`,
      );
    }
    const share = Math.floor(tenant.maxOutputTokens / p.n);
    if (p.n > 1 && share === 0) {
      throw new ParamError(
        "n",
        `n is ${p.n}; this key allows at most ${tenant.maxOutputTokens} generated tokens a request`,
      );
    }
    const room = deps.maxContext - (promptTokens ?? 0);
    return Math.max(0, Math.min(p.maxTokens ?? share, room));
  }

  function checkPromptLength(tenant: Tenant, n: number, maxTokens: number | null) {
    if (n === 0) throw new ParamError("prompt", "the prompt is empty");
    if (n > tenant.maxPromptTokens) {
      throw new ParamError(
        "messages",
        `the prompt is ${n} tokens; this key allows at most ${tenant.maxPromptTokens}`,
        "context_length_exceeded",
      );
    }
    if (n + (maxTokens ?? 1) > deps.maxContext) {
      throw new ParamError(
        "messages",
        `This model's maximum context length is ${deps.maxContext} tokens; the prompt is ${n} tokens and ${maxTokens ?? 1} more were requested`,
        "context_length_exceeded",
      );
    }
  }

  app.post("/v1/chat/completions", async (c) => {
    const req = parseChatRequest(await readJson(c.req.raw, deps.maxBodyBytes));
    prompts.checkModel(req.model);
    const tenant = c.get("tenant");
    const ids = await prompts.chat(tenant, req.messages, (n) =>
      checkPromptLength(tenant, n, req.maxTokens),
    );
    checkPromptLength(tenant, ids.length, req.maxTokens);
    return generate(c, "chat", req, ids);
  });

  app.post("/v1/completions", async (c) => {
    const req = parseCompletionRequest(await readJson(c.req.raw, deps.maxBodyBytes));
    prompts.checkModel(req.model);
    // Before BOS is prepended: "" would otherwise be served as BOS alone (OpenAI, vLLM refuse it).
    if (req.prompt.kind === "text" ? req.prompt.text === "" : req.prompt.ids.length === 0)
      throw new ParamError("prompt", "'prompt' must not be empty");
    const ids = prompts.completion(req);
    checkPromptLength(c.get("tenant"), ids.length, req.maxTokens);
    return generate(c, "completion", req, ids);
  });

  app.post("/v1/completions/text", async (c) => {
    requireMediaType(c.req.raw, "text/plain");
    const q = parseQuerySampling(new URL(c.req.url).searchParams);
    const req = parseCompletionRequest({ ...q, model: q.model ?? deps.modelId, prompt: "" });
    prompts.checkModel(req.model);
    return generate(c, "completion", req, uploadedPrompt(c.req.raw, c.get("tenant")));
  });

  /** Streaming: bytes -> UTF-8 (fatal) -> streaming encoder -> frames, as the upload arrives. */
  async function* uploadedPrompt(raw: Request, tenant: Tenant): AsyncGenerator<Int32Array> {
    const decoder = new TextDecoder("utf-8", { fatal: true });
    const encoder = text.createEncoder();
    let pending: number[] = text.bosId === null ? [] : [text.bosId];
    let total = pending.length;
    const take = (ids: ArrayLike<number>) => {
      for (let i = 0; i < ids.length; i++) pending.push(ids[i]);
      total += ids.length;
      if (total > tenant.maxPromptTokens) {
        throw new ParamError(
          "prompt",
          `the prompt is over ${tenant.maxPromptTokens} tokens, this key's limit`,
          "context_length_exceeded",
        );
      }
    };
    for await (const chunk of limitedChunks(raw, deps.maxUploadBytes)) {
      let s: string;
      try {
        s = decoder.decode(chunk, { stream: true });
      } catch {
        throw new ParamError(null, "request body is not valid UTF-8", "invalid_utf8");
      }
      take(encoder.push(s));
      // A frame per body chunk read: the model function prefills each 512-token chunk as soon as
      // its tokens are there, so holding tokens back here would only delay it (a slow upload's
      // first progress came after 2048 tokens). A frame costs 37 bytes and one HMAC call.
      if (pending.length > 0) {
        yield Int32Array.from(pending);
        pending = [];
      }
    }
    try {
      take(encoder.push(decoder.decode()));
    } catch (err) {
      if (err instanceof UltralongError) throw err;
      throw new ParamError(null, "request body is not valid UTF-8", "invalid_utf8");
    }
    take(encoder.end());
    if (total === (text.bosId === null ? 0 : 1))
      throw new ParamError("prompt", "the prompt is empty");
    if (pending.length > 0) yield Int32Array.from(pending);
  }

  /**
   * Forwards one generation and answers in OpenAI's shape. `prompt` is either all the ids, or a
   * stream of them (uploads): then its errors (too long, bad UTF-8) are the ones reported, since
   * the model function only sees a body that ended early.
   */
  async function generate(
    c: EdgeContext,
    kind: Kind,
    p: SamplingParams,
    prompt: Int32Array | AsyncIterable<Int32Array>,
  ): Promise<Response> {
    const tenant = c.get("tenant");
    const log = c.get("log");
    const known = prompt instanceof Int32Array ? prompt.length : null;
    if (p.n > 1 && !(prompt instanceof Int32Array)) {
      // Each choice sends the prompt again: a streamed upload (POST /v1/completions/text) is read once.
      throw new ParamError("n", "n > 1 needs the prompt in a JSON body (POST /v1/completions)");
    }
    let promptError: unknown = null;
    let promptEnded = prompt instanceof Int32Array;
    const source: AsyncIterable<Int32Array> | Iterable<Int32Array> =
      prompt instanceof Int32Array
        ? [prompt]
        : (async function* () {
            try {
              yield* prompt;
              promptEnded = true;
            } catch (err) {
              promptError = err;
              throw err;
            }
          })();
    const header: GenerateHeader = {
      v: 1,
      requestId: c.get("requestId"),
      tenant: tenant.id,
      promptTokens: known,
      maxTokens: outputBudget(tenant, p, known),
      temperature: p.temperature,
      topP: p.topP,
      seed: p.seed,
      stop: p.stop,
      logprobs: p.logprobs,
      topLogprobs: p.topLogprobs,
      progress: p.progress && p.stream,
    };
    const client = clientAbort(c.req.raw.signal);
    const abort = client.controller;
    const ids = {
      id: `${kind === "chat" ? "chatcmpl" : "cmpl"}-${deps.randomId()}`,
      created: Math.floor(clock() / 1000),
      model: deps.modelId,
    };
    const tokenText = (id: number) => text.decode([id]);
    // What the request failed of: the prompt's own error (too long, bad UTF-8, cut off) first; a
    // client gone before its upload ended cut its body (400), one gone after cancelled (499).
    const failure = (err: unknown): unknown => {
      if (promptError) return promptError;
      if (!abort.signal.aborted) return err;
      return promptEnded ? abort.signal.reason : new IncompleteBodyError();
    };
    const rethrow = (err: unknown): never => {
      throw failure(err);
    };
    const account = (u: UsageEvent) => {
      metrics.inc("ul_edge_prompt_tokens_total", {}, u.promptTokens);
      metrics.inc("ul_edge_output_tokens_total", {}, u.completionTokens);
      metrics.inc("ul_edge_cached_tokens_total", {}, u.cachedTokens);
      Object.assign(log, usageLogFields(u));
    };
    // n > 1 (ids only): every choice's request is cancelled with the client, or when one fails.
    const choices = new AbortController();
    const cancelChoices = () => choices.abort(abort.signal.reason);
    if (abort.signal.aborted) cancelChoices();
    else if (p.n > 1) abort.signal.addEventListener("abort", cancelChoices, { once: true });
    const signal = p.n === 1 ? abort.signal : choices.signal;
    const choiceHeader = (i: number): GenerateHeader => {
      if (i === 0) return header;
      const seed = p.seed === null ? null : p.seed + i;
      return {
        ...header,
        requestId: `${header.requestId}.${i}`,
        // Distinct seeds, so the choices differ; past the safe range they count down instead.
        seed: seed === null || Number.isSafeInteger(seed) ? seed : p.seed! - i,
      };
    };
    const first = await generateRemote(deps.client, header, source, signal).catch(
      (err: unknown) => {
        client.release();
        return rethrow(err);
      },
    );
    /**
     * Choice i's request. A model function without room for it now (its queue full: 429; short of
     * memory: 503 with a retry-after) is asked again after the wait it names, until the request
     * ends: the choices then run as places free up.
     */
    const openChoice = async (i: number) => {
      for (;;) {
        try {
          return await generateRemote(deps.client, choiceHeader(i), [prompt as Int32Array], signal);
        } catch (err) {
          if (!(err instanceof RateLimitError || err instanceof BusyError) || signal.aborted) {
            throw err;
          }
          await waitOrAbort(err.retryAfterS * 1000, signal);
        }
      }
    };
    const events = choiceEvents(first, p.n, openChoice, () => {
      abort.signal.removeEventListener("abort", cancelChoices);
      choices.abort(new CancelledError("the request's other choices ended"));
    });

    if (!p.stream) {
      const done = Array.from({ length: p.n }, () => new Completion());
      try {
        for await (const { index, ev } of events) {
          if (ev.event === "token") done[index].add(ev.data);
          else if (ev.event === "usage") done[index].usage = ev.data;
        }
      } catch (err) {
        rethrow(err);
      } finally {
        client.release();
      }
      if (done.some((d) => !d.usage)) {
        rethrow(new UpstreamError("the model function ended without usage"));
      }
      const usage = totalUsage(done.map((d) => d.usage!));
      account(usage);
      return c.json(completionJson(kind, ids, done, usage, p.logprobs, tokenText));
    }

    // Streaming: the response is committed (200); later errors become an `error` data chunk, and
    // the request's log line is written when the stream ends.
    log.deferred = true;
    const started = clock();
    const route = c.req.routePath;
    const requestId = c.get("requestId");
    const writers = Array.from(
      { length: p.n },
      (_, i) => new ChunkWriter(kind, ids, p.logprobs, tokenText, i),
    );
    return sseResponse({
      abort,
      keepAliveMs: deps.keepAliveMs,
      headers: { "x-request-id": requestId },
      async run(send) {
        const usages: UsageEvent[] = [];
        for await (const { index, ev } of events) {
          const writer = writers[index];
          if (ev.event === "token") send(sseEvent(null, writer.token(ev.data)));
          else if (ev.event === "progress") {
            // Choice 0's, for the prompt's prefill (the others share its chunks).
            if (index === 0) send(sseEvent(null, writer.progress(ev.data)));
          } else if (ev.event === "usage") {
            send(sseEvent(null, writer.finish(ev.data)));
            usages[index] = ev.data;
            // The request's usage once the last choice has its own.
            if (usages.filter(Boolean).length === p.n) {
              const usage = totalUsage(usages);
              account(usage);
              if (p.includeUsage) send(sseEvent(null, writers[0].usage(usage)));
            }
          }
        }
        send(sseEvent(null, "[DONE]"));
      },
      fail(err) {
        const d = describeError(failure(err));
        log.errorCode = d.body.error.code;
        return { status: d.status, event: sseEvent(null, d.body) };
      },
      done(status) {
        client.release();
        const { deferred: _, ...line } = log;
        recordRequest(deps, {
          ...line,
          requestId,
          route,
          status,
          totalMs: clock() - started,
        });
      },
    });
  }

  return app;
}
