// The edge function (Hono, Web Request/Response only, so it runs on Workers, Lambda and Node):
// authenticates API keys to tenants, validates OpenAI requests, applies the chat template and
// tokenizes, enforces tenant limits, and forwards the prompt as a signed, framed token stream to
// the model function, turning its events back into OpenAI responses.
//
// This file is the middleware every route passes (request id and log line, API key, rate limit)
// and the routes without a body; the rest are sub-apps sharing one EdgeDeps (context.ts):
//
//   GET  /healthz                       no key
//   GET  /metrics                       metrics key
//   GET  /v1/models
//   POST /v1/chat/completions, /v1/completions, /v1/completions/text     routes/generate.ts
//   POST /v1/tokenize, /v1/detokenize (also at /tokenize, /detokenize)   routes/tokenize.ts
//   POST /v1/files, GET /v1/files[/{id}], DELETE /v1/files/{id}          file-service.ts
import { Hono } from "hono";
import { toHex } from "../../core/hash/hex.ts";
import { importSigningKey } from "../../core/protocol/signing.ts";
import { bearerToken } from "../http/bearer.ts";
import {
  AuthenticationError,
  describeError,
  errorResponse,
  NotFoundHttpError,
  PermissionError,
  RateLimitError,
} from "../http/http-errors.ts";
import { Metrics } from "../http/metrics.ts";
import { metricsResponse } from "../http/metrics-route.ts";
import { consoleSink, type LogSink } from "../http/request-log.ts";
import { type EdgeDeps, type EdgeEnv, recordRequest } from "./context.ts";
import { FileService } from "./file-service.ts";
import { type FileTokenizer, inThreadFileTokenizer } from "./file-tokenizer.ts";
import { type FileStore, MemoryFileStore } from "./files.ts";
import { type KeyConfig, KeyRing, RateLimiter } from "./keys.ts";
import { generateRoutes } from "./routes/generate.ts";
import { tokenizeRoutes } from "./routes/tokenize.ts";
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

export interface EdgeApp {
  app: Hono<EdgeEnv>;
  metrics: Metrics;
}

export async function createEdgeApp(options: EdgeAppOptions): Promise<EdgeApp> {
  for (const k of ["modelId", "maxContext", "text", "keys", "modelUrl", "secret"] as const) {
    if (!options[k]) throw new Error(`createEdgeApp: '${k}' is required`);
  }
  const clock = options.clock ?? Date.now;
  const text = options.text;
  const keys = options.keys instanceof KeyRing ? options.keys : new KeyRing(options.keys);
  const limiter = new RateLimiter(clock);
  const maxUploadBytes = options.maxUploadBytes ?? 256 << 20;
  const randomId =
    options.randomId ??
    (() => {
      const b = new Uint8Array(12);
      crypto.getRandomValues(b);
      return toHex(b);
    });
  const metrics = new Metrics();
  metrics.counter("ul_edge_requests_total", "Requests by route and status class");
  metrics.counter("ul_edge_prompt_tokens_total", "Prompt tokens forwarded");
  metrics.counter("ul_edge_output_tokens_total", "Tokens returned");
  metrics.counter("ul_edge_cached_tokens_total", "Prompt tokens served from snapshots");
  const deps: EdgeDeps = {
    modelId: options.modelId,
    maxContext: options.maxContext,
    text,
    client: {
      url: options.modelUrl,
      signingKey: await importSigningKey(options.secret),
      fetch: options.modelFetch,
      clock,
    },
    files: new FileService({
      files: options.files ?? new MemoryFileStore(),
      tokenizer: options.fileTokenizer ?? inThreadFileTokenizer(text),
      text,
      metrics,
      maxUploadBytes,
      clock,
      randomId,
    }),
    metrics,
    sink: options.log ?? consoleSink,
    clock,
    randomId,
    maxBodyBytes: options.maxBodyBytes ?? 8 << 20,
    maxUploadBytes,
    keepAliveMs: options.keepAliveMs ?? 15_000,
  };

  const app = new Hono<EdgeEnv>();
  app.onError((err) => errorResponse(err));
  app.notFound((c) => {
    // Not an error to Hono (c.error stays unset), so its code is logged here.
    const err = new NotFoundHttpError("no such route", "route_not_found");
    c.get("log").errorCode = err.code;
    return errorResponse(err);
  });

  // Request id, the one log line per request (a stream writes its own when it ends), the counter.
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
        recordRequest(deps, {
          requestId: c.get("requestId"),
          route: c.req.routePath ?? c.req.path,
          status,
          totalMs: clock() - started,
          ...extra,
        });
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
  app.route("/", generateRoutes(deps));
  app.route("/", tokenizeRoutes(deps));
  app.route(
    "/",
    deps.files.routes<EdgeEnv>((c) => c.get("tenant").id),
  );

  return { app, metrics };
}
