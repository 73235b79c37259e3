// The edge function (Hono, Web Request/Response only, so it runs on Workers, Lambda and Node):
// authenticates API keys to tenants, validates OpenAI requests, applies the chat template and
// tokenizes, enforces tenant limits, and forwards the prompt as a signed, framed token stream to
// the model function, turning its events back into OpenAI responses.
//
//   GET  /healthz                       no key
//   GET  /metrics                       metrics key
//   GET  /v1/models
//   POST /v1/chat/completions           JSON; stream or not
//   POST /v1/completions                JSON; prompt text or token ids
//   POST /v1/completions/text           text/plain body = the prompt, streamed: prefill starts
//                                       before the upload ends; sampling in the query string
//   POST /v1/tokenize, /v1/detokenize   vLLM shapes (also at /tokenize, /detokenize)
//   POST /v1/files, GET /v1/files[/{id}], DELETE /v1/files/{id}
import { type Context, Hono } from "hono";
import { CancelledError, UltralongError } from "../../core/errors.ts";
import { toHex } from "../../core/hash/hex.ts";
import {
  closeQuietly,
  type ModelEvent,
  SSE_HEADERS,
  sseComment,
  sseEvent,
} from "../../core/protocol/events.ts";
import type { GenerateHeader } from "../../core/protocol/header.ts";
import { importSigningKey } from "../../core/protocol/signing.ts";
import { isTokenId } from "../../core/tokenizer/token-id.ts";
import { bearerToken } from "../http/bearer.ts";
import {
  AuthenticationError,
  describeError,
  errorResponse,
  IncompleteBodyError,
  NotFoundHttpError,
  ParamError,
  PermissionError,
  RateLimitError,
  UpstreamError,
} from "../http/http-errors.ts";
import { Metrics, statusClass } from "../http/metrics.ts";
import { metricsResponse } from "../http/metrics-route.ts";
import { consoleSink, type LogSink, logRequest, type RequestLogLine } from "../http/request-log.ts";
import { limitedChunks, readJson, requireMediaType } from "./body.ts";
import { FileService } from "./file-service.ts";
import { type FileTokenizer, inThreadFileTokenizer } from "./file-tokenizer.ts";
import { type FileStore, MemoryFileStore } from "./files.ts";
import { generateRemote } from "./forward.ts";
import { type KeyConfig, KeyRing, RateLimiter, type Tenant } from "./keys.ts";
import {
  type ChatMessage,
  type CompletionRequest,
  parseChatRequest,
  parseCompletionRequest,
  parseQuerySampling,
  requireModel,
  type SamplingParams,
} from "./openai-request.ts";
import { ChunkWriter, Completion, type Kind } from "./openai-response.ts";
import type { EdgeText } from "./text.ts";

export interface EdgeAppOptions {
  /** The model id clients must name (GET /v1/models lists it). */
  modelId: string;
  /** Context length of the served model (prompt + output). */
  maxContext: number;
  text: EdgeText;
  keys: KeyRing | KeyConfig;
  /** Base URL of the model function. */
  modelUrl: string;
  /** Shared signing secret with the model function. */
  secret: string | Uint8Array;
  /** Default global fetch (Workers: a service binding's fetch). */
  modelFetch?: (req: Request) => Promise<Response>;
  files?: FileStore;
  /** Where uploaded files are tokenized (default: this thread, in slices; Node: a worker). */
  fileTokenizer?: FileTokenizer;
  /** JSON body limit, bytes (default 8 MiB). */
  maxBodyBytes?: number;
  /** POST /v1/files and POST /v1/completions/text limit, bytes (default 256 MiB). */
  maxUploadBytes?: number;
  /** SSE keep-alive comment interval to the client, ms (default 15 000). */
  keepAliveMs?: number;
  clock?: () => number;
  log?: LogSink;
  /** Random hex ids (request, completion, file); default crypto.getRandomValues. */
  randomId?: () => string;
}

type Vars = {
  tenant: Tenant;
  requestId: string;
  log: Partial<RequestLogLine> & { deferred?: boolean };
};
type C = Context<{ Variables: Vars }>;

export interface EdgeApp {
  app: Hono<{ Variables: Vars }>;
  metrics: Metrics;
}

export async function createEdgeApp(options: EdgeAppOptions): Promise<EdgeApp> {
  for (const k of ["modelId", "maxContext", "text", "keys", "modelUrl", "secret"] as const) {
    if (!options[k]) throw new Error(`createEdgeApp: '${k}' is required`);
  }
  const clock = options.clock ?? Date.now;
  const sink = options.log ?? consoleSink;
  const text = options.text;
  const keys = options.keys instanceof KeyRing ? options.keys : new KeyRing(options.keys);
  const limiter = new RateLimiter(clock);
  const maxBody = options.maxBodyBytes ?? 8 << 20;
  const maxUpload = options.maxUploadBytes ?? 256 << 20;
  const keepAliveMs = options.keepAliveMs ?? 15_000;
  const randomId =
    options.randomId ??
    (() => {
      const b = new Uint8Array(12);
      crypto.getRandomValues(b);
      return toHex(b);
    });
  const client = {
    url: options.modelUrl,
    signingKey: await importSigningKey(options.secret),
    fetch: options.modelFetch,
    clock,
  };
  const metrics = new Metrics();
  metrics.counter("ul_edge_requests_total", "Requests by route and status class");
  metrics.counter("ul_edge_prompt_tokens_total", "Prompt tokens forwarded");
  metrics.counter("ul_edge_output_tokens_total", "Tokens returned");
  metrics.counter("ul_edge_cached_tokens_total", "Prompt tokens served from snapshots");
  const fileService = new FileService({
    files: options.files ?? new MemoryFileStore(),
    tokenizer: options.fileTokenizer ?? inThreadFileTokenizer(text),
    text,
    metrics,
    maxUploadBytes: maxUpload,
    clock,
    randomId,
  });

  const app = new Hono<{ Variables: Vars }>();
  app.onError((err) => errorResponse(err));
  app.notFound((c) => {
    // Not an error to Hono (c.error stays unset), so its code is logged here.
    const err = new NotFoundHttpError("no such route", "route_not_found");
    c.get("log").errorCode = err.code;
    return errorResponse(err);
  });

  // Request id, the one log line per request, and the requests counter.
  app.use("*", async function requestLog(c, next) {
    const started = clock();
    c.set("requestId", c.req.header("x-request-id")?.slice(0, 64) || `req_${randomId()}`);
    c.set("log", {});
    let status = 500;
    try {
      await next();
      status = c.res.status;
    } catch (err) {
      status = describeError(err).status;
      throw err;
    } finally {
      const extra = c.get("log");
      // Hono hands a thrown error to onError (errorResponse) and keeps it in c.error.
      if (c.error) extra.errorCode ??= describeError(c.error).body.error.code;
      if (!extra.deferred) {
        const route = c.req.routePath ?? c.req.path;
        metrics.inc("ul_edge_requests_total", { route, class: statusClass(status) });
        logRequest(
          sink,
          {
            app: "edge",
            requestId: c.get("requestId"),
            route,
            status,
            totalMs: clock() - started,
            ...extra,
          },
          clock,
        );
      }
    }
    c.header("x-request-id", c.get("requestId"));
  });

  app.get("/healthz", (c) => c.json({ ok: true }));
  app.get("/metrics", (c) => metricsResponse(c, metrics, keys.metricsKeySha256));

  // Everything below needs an API key.
  app.use("*", async function authenticate(c, next) {
    const token = bearerToken(c.req.header("authorization"));
    if (token === null)
      throw new AuthenticationError("Missing API key: send Authorization: Bearer <key>");
    const tenant = await keys.lookup(token);
    if (!tenant) throw new AuthenticationError("Incorrect API key provided");
    if (tenant.disabled) throw new PermissionError("this API key's tenant is disabled");
    const wait = limiter.take(tenant);
    if (wait !== null)
      throw new RateLimitError(`rate limit of ${tenant.rpm} requests per minute reached`, wait);
    c.set("tenant", tenant);
    c.get("log").tenant = tenant.id;
    await next();
  });

  app.get("/v1/models", (c) =>
    c.json({
      object: "list",
      data: [
        {
          id: options.modelId,
          object: "model",
          created: 0,
          owned_by: "ultralong",
          max_model_len: options.maxContext,
        },
      ],
    }),
  );

  const checkModel = (model: string) => {
    if (model !== options.modelId) {
      throw new NotFoundHttpError(
        `The model '${model}' does not exist (this server serves '${options.modelId}')`,
        "model_not_found",
        "model",
      );
    }
  };

  /** Refuses ids a client may not send: out of the vocabulary or reserved control tokens. */
  const checkIds = (ids: ArrayLike<number>, param: string) => {
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!isTokenId(id, text.vocabSize)) {
        throw new ParamError(
          param,
          `${param}[${i}] = ${id} is outside the vocabulary (0..${text.vocabSize - 1})`,
        );
      }
      if (text.isReservedId(id))
        throw new ParamError(param, `${param}[${i}] = ${id} is a reserved control token`);
    }
  };

  async function chatIds(
    tenant: Tenant,
    messages: ChatMessage[],
    checkLength?: (atLeast: number) => void,
  ): Promise<Int32Array> {
    // File parts read the files' stored ids (file-service.ts); nothing re-tokenizes a file here.
    const chat = await fileService.resolveChat(tenant.id, messages, checkLength);
    return Int32Array.from(await text.renderChat(chat.messages, chat.encodeText));
  }

  function completionIds(req: CompletionRequest): Int32Array {
    if (req.prompt.kind === "ids") {
      checkIds(req.prompt.ids, "prompt");
      return Int32Array.from(req.prompt.ids);
    }
    const ids = text.encode(req.prompt.text);
    const out = new Int32Array(ids.length + (text.bosId === null ? 0 : 1));
    if (text.bosId !== null) out[0] = text.bosId;
    out.set(ids, text.bosId === null ? 0 : 1);
    return out;
  }

  /** max_tokens checked against the tenant and the context; defaults to what fits. */
  function outputBudget(tenant: Tenant, p: SamplingParams, promptTokens: number | null): number {
    if (p.maxTokens !== null && p.maxTokens > tenant.maxOutputTokens) {
      throw new ParamError(
        "max_tokens",
        `max_tokens is ${p.maxTokens}; this key allows at most ${tenant.maxOutputTokens}`,
      );
    }
    const room = options.maxContext - (promptTokens ?? 0);
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
    if (n + (maxTokens ?? 1) > options.maxContext) {
      throw new ParamError(
        "messages",
        `This model's maximum context length is ${options.maxContext} tokens; the prompt is ${n} tokens and ${maxTokens ?? 1} more were requested`,
        "context_length_exceeded",
      );
    }
  }

  app.post("/v1/chat/completions", async (c) => {
    const req = parseChatRequest(await readJson(c.req.raw, maxBody));
    checkModel(req.model);
    const tenant = c.get("tenant");
    const ids = await chatIds(tenant, req.messages, (n) =>
      checkPromptLength(tenant, n, req.maxTokens),
    );
    checkPromptLength(tenant, ids.length, req.maxTokens);
    return generate(c, "chat", req, ids);
  });

  app.post("/v1/completions", async (c) => {
    const req = parseCompletionRequest(await readJson(c.req.raw, maxBody));
    checkModel(req.model);
    // Before BOS is prepended: "" would otherwise be served as BOS alone (OpenAI, vLLM refuse it).
    if (req.prompt.kind === "text" ? req.prompt.text === "" : req.prompt.ids.length === 0)
      throw new ParamError("prompt", "'prompt' must not be empty");
    const ids = completionIds(req);
    checkPromptLength(c.get("tenant"), ids.length, req.maxTokens);
    return generate(c, "completion", req, ids);
  });

  app.post("/v1/completions/text", async (c) => {
    requireMediaType(c.req.raw, "text/plain");
    const q = parseQuerySampling(new URL(c.req.url).searchParams);
    const req = parseCompletionRequest({ ...q, model: q.model ?? options.modelId, prompt: "" });
    checkModel(req.model);
    const tenant = c.get("tenant");
    const raw = c.req.raw;
    // Streaming: bytes -> UTF-8 (fatal) -> streaming encoder -> frames, as the upload arrives.
    async function* upload(): AsyncGenerator<Int32Array> {
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
      for await (const chunk of limitedChunks(raw, maxUpload)) {
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
    return generate(c, "completion", req, upload());
  });

  /**
   * Forwards one generation and answers in OpenAI's shape. `prompt` is either all the ids, or a
   * stream of them (uploads): then its errors (too long, bad UTF-8) are the ones reported, since
   * the model function only sees a body that ended early.
   */
  async function generate(
    c: C,
    kind: Kind,
    p: SamplingParams,
    prompt: Int32Array | AsyncIterable<Int32Array>,
  ): Promise<Response> {
    const tenant = c.get("tenant");
    const log = c.get("log");
    const known = prompt instanceof Int32Array ? prompt.length : null;
    const maxTokens = outputBudget(tenant, p, known);
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
      maxTokens,
      temperature: p.temperature,
      topP: p.topP,
      seed: p.seed,
      stop: p.stop,
      logprobs: p.logprobs,
      topLogprobs: p.topLogprobs,
      progress: p.progress && p.stream,
    };
    const abort = new AbortController();
    const clientSignal = c.req.raw.signal;
    const onAbort = () => abort.abort(new CancelledError("client went away"));
    // A listener added to a signal that has already fired never runs (a client gone while its
    // request was read and tokenized): check the state too.
    if (clientSignal?.aborted) onAbort();
    else clientSignal?.addEventListener("abort", onAbort, { once: true });
    const ids = {
      id: `${kind === "chat" ? "chatcmpl" : "cmpl"}-${randomId()}`,
      created: Math.floor(clock() / 1000),
      model: options.modelId,
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
    const account = (u: Extract<ModelEvent, { event: "usage" }>["data"]) => {
      metrics.inc("ul_edge_prompt_tokens_total", {}, u.promptTokens);
      metrics.inc("ul_edge_output_tokens_total", {}, u.completionTokens);
      metrics.inc("ul_edge_cached_tokens_total", {}, u.cachedTokens);
      Object.assign(log, {
        promptTokens: u.promptTokens,
        completionTokens: u.completionTokens,
        cachedTokens: u.cachedTokens,
        finishReason: u.finishReason,
        prefillMs: u.prefillMs,
        decodeMs: u.decodeMs,
      });
    };
    const events = await generateRemote(client, header, source, abort.signal).catch(rethrow);

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
        clientSignal?.removeEventListener("abort", onAbort);
      }
      if (!done.usage) rethrow(new UpstreamError("the model function ended without usage"));
      account(done.usage!);
      return c.json(done.toJson(kind, ids, p.logprobs, tokenText));
    }

    // Streaming: the response is committed (200); later errors become an `error` data chunk.
    log.deferred = true;
    const started = clock();
    const route = c.req.routePath;
    const requestId = c.get("requestId");
    const writer = new ChunkWriter(kind, ids, p.logprobs, tokenText);
    let timer: ReturnType<typeof setInterval> | undefined;
    const finish = (status: number) => {
      clearInterval(timer);
      clientSignal?.removeEventListener("abort", onAbort);
      metrics.inc("ul_edge_requests_total", { route, class: statusClass(status) });
      logRequest(
        sink,
        {
          app: "edge",
          requestId,
          route,
          status,
          totalMs: clock() - started,
          ...log,
          deferred: undefined,
        } as RequestLogLine,
        clock,
      );
    };
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        const send = (bytes: Uint8Array) => {
          if (!abort.signal.aborted) controller.enqueue(bytes);
        };
        timer = setInterval(() => send(sseComment("keep-alive")), keepAliveMs);
        void (async () => {
          let status = 200;
          try {
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
          } catch (err) {
            const d = describeError(failure(err));
            status = d.status;
            log.errorCode = d.body.error.code;
            send(sseEvent(null, d.body));
          } finally {
            finish(status);
            closeQuietly(controller);
          }
        })();
      },
      cancel() {
        clearInterval(timer);
        abort.abort(new CancelledError("client went away"));
      },
    });
    return new Response(body, {
      headers: { ...SSE_HEADERS, "x-request-id": requestId },
    });
  }

  // ---- tokenize / detokenize (vLLM's shapes) ----
  const tokenize = async (c: C) => {
    const body = await readJson(c.req.raw, maxBody);
    if (body.model !== undefined) checkModel(requireModel(body));
    let ids: Int32Array;
    if (body.messages !== undefined) {
      ids = await chatIds(
        c.get("tenant"),
        parseChatRequest({ ...body, model: options.modelId }).messages,
      );
    } else {
      const req = parseCompletionRequest({ model: options.modelId, prompt: body.prompt });
      if (req.prompt.kind !== "text") throw new ParamError("prompt", "'prompt' must be a string");
      const addSpecial = body.add_special_tokens ?? true;
      if (typeof addSpecial !== "boolean")
        throw new ParamError(
          "add_special_tokens",
          "'add_special_tokens' must be a boolean",
          "invalid_type",
        );
      ids = addSpecial ? completionIds(req) : Int32Array.from(text.encode(req.prompt.text));
    }
    return c.json({ count: ids.length, max_model_len: options.maxContext, tokens: [...ids] });
  };
  const detokenize = async (c: C) => {
    const body = await readJson(c.req.raw, maxBody);
    if (body.model !== undefined) checkModel(requireModel(body));
    const tokens = body.tokens;
    if (!Array.isArray(tokens))
      throw new ParamError("tokens", "'tokens' must be an array of token ids", "invalid_type");
    for (const [i, id] of tokens.entries()) {
      if (!isTokenId(id, text.vocabSize)) {
        throw new ParamError(
          "tokens",
          `tokens[${i}] = ${JSON.stringify(id)} is not a token id (0..${text.vocabSize - 1})`,
        );
      }
    }
    return c.json({ prompt: text.decode(tokens as number[]) });
  };
  for (const prefix of ["/v1", ""]) {
    app.post(`${prefix}/tokenize`, tokenize);
    app.post(`${prefix}/detokenize`, detokenize);
  }

  // ---- files ----
  fileService.routes(app, (c: C) => c.get("tenant").id);

  return { app, metrics };
}
