// Generation, as OpenAI's API has it: chat and completions, whole or streamed, and a completion whose
// prompt is the request body itself, streamed into the model function as it uploads.
//
//   POST /v1/chat/completions   JSON; stream or not
//   POST /v1/completions        JSON; prompt text or token ids
//   POST /v1/completions/text   text/plain body = the prompt; sampling in the query string
import { Hono } from "hono";
import { UltralongError } from "../../../core/errors.ts";
import { sseEvent, type UsageEvent } from "../../../core/protocol/events.ts";
import type { GenerateHeader } from "../../../core/protocol/header.ts";
import {
  describeError,
  IncompleteBodyError,
  ParamError,
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
import { ChunkWriter, Completion, type Kind } from "../openai-response.ts";

export function generateRoutes(deps: EdgeDeps): Hono<EdgeEnv> {
  const { text, metrics, clock } = deps;
  const prompts = new Prompts(deps);
  const app = new Hono<EdgeEnv>();

  /** max_tokens checked against the tenant and the context; defaults to what fits. */
  function outputBudget(tenant: Tenant, p: SamplingParams, promptTokens: number | null): number {
    if (p.maxTokens !== null && p.maxTokens > tenant.maxOutputTokens) {
      throw new ParamError(
        "max_tokens",
        `max_tokens is ${p.maxTokens}; this key allows at most ${tenant.maxOutputTokens}`,
      );
    }
    const room = deps.maxContext - (promptTokens ?? 0);
    return Math.max(0, Math.min(p.maxTokens ?? tenant.maxOutputTokens, room));
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
    const events = await generateRemote(deps.client, header, source, abort.signal).catch(
      (err: unknown) => {
        client.release();
        return rethrow(err);
      },
    );

    if (!p.stream) {
      const done = new Completion();
      try {
        for await (const ev of events) {
          if (ev.event === "token") done.add(ev.data);
          else if (ev.event === "usage") done.usage = ev.data;
        }
      } catch (err) {
        rethrow(err);
      } finally {
        client.release();
      }
      if (!done.usage) rethrow(new UpstreamError("the model function ended without usage"));
      account(done.usage!);
      return c.json(done.toJson(kind, ids, p.logprobs, tokenText));
    }

    // Streaming: the response is committed (200); later errors become an `error` data chunk, and
    // the request's log line is written when the stream ends.
    log.deferred = true;
    const started = clock();
    const route = c.req.routePath;
    const requestId = c.get("requestId");
    const writer = new ChunkWriter(kind, ids, p.logprobs, tokenText);
    return sseResponse({
      abort,
      keepAliveMs: deps.keepAliveMs,
      headers: { "x-request-id": requestId },
      async run(send) {
        for await (const ev of events) {
          if (ev.event === "token") send(sseEvent(null, writer.token(ev.data)));
          else if (ev.event === "progress") send(sseEvent(null, writer.progress(ev.data)));
          else if (ev.event === "usage") {
            account(ev.data);
            send(sseEvent(null, writer.finish(ev.data)));
            if (p.includeUsage) send(sseEvent(null, writer.usage(ev.data)));
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
