// The model function (Hono, Web Request/Response only): verifies the edge's signature, reads the
// framed token stream, runs one generation per runtime through a bounded queue, and streams
// events back as SSE. It never sees API keys or prompt text.
//
//   POST /v1/generate   signed, application/x-ultralong-frames -> text/event-stream (events.ts)
//   GET  /healthz       liveness
//   GET  /readyz        model, runtime, KV capacity, queue
//   GET  /metrics       Prometheus text, behind the metrics key
import { Hono } from "hono";
import { InvalidInputError } from "../../core/errors.ts";
import { sseEvent, type UsageEvent } from "../../core/protocol/events.ts";
import {
  FRAME_END,
  FRAME_HEADER,
  FRAME_TOKENS,
  FRAMES_CONTENT_TYPE,
  type Frame,
  GENERATE_PATH,
  readFrames,
} from "../../core/protocol/frames.ts";
import { type GenerateHeader, parseGenerateHeader } from "../../core/protocol/header.ts";
import type { NonceLedger } from "../../core/protocol/nonce-ledger.ts";
import { importSigningKey, RequestVerifier } from "../../core/protocol/signing.ts";
import {
  describeError,
  errorResponse,
  NotFoundHttpError,
  UnsupportedMediaTypeError,
} from "../http/http-errors.ts";
import { Metrics, statusClass } from "../http/metrics.ts";
import { hasMetricsKey, metricsResponse } from "../http/metrics-route.ts";
import { completeBody } from "../http/request-body.ts";
import { consoleSink, type LogSink, logRequest, usageLogFields } from "../http/request-log.ts";
import { clientAbort, sseResponse } from "../http/sse.ts";
import type { ModelEngine } from "./engine.ts";
import { GenerationQueue } from "./queue.ts";

const yieldToEventLoop: () => Promise<void> =
  typeof setImmediate === "function"
    ? () => new Promise((resolve) => setImmediate(resolve))
    : () => new Promise((resolve) => setTimeout(resolve, 0));

export interface ModelAppOptions {
  engine: ModelEngine;
  /** Shared secret with the edge (required). */
  secret: string | Uint8Array;
  /** hex SHA-256 of the metrics key; without it /metrics answers 403. */
  metricsKeySha256?: string;
  /** Requests that may wait for the runtime (default 8). */
  maxWaiting?: number;
  /** SSE keep-alive comment interval, ms (default 15 000). */
  keepAliveMs?: number;
  /** Signature freshness window, ms (default 60 000). */
  signatureWindowMs?: number;
  /**
   * Where served request nonces are claimed (core/protocol/nonce-ledger.ts). Default: this
   * process's memory; a deployment passes its store's ledger so that a request is served once
   * across instances and restarts.
   */
  nonceLedger?: NonceLedger;
  clock?: () => number;
  log?: LogSink;
}

export interface ModelApp {
  app: Hono;
  metrics: Metrics;
  queue: GenerationQueue;
}

export async function createModelApp(options: ModelAppOptions): Promise<ModelApp> {
  if (!options.engine) throw new Error("createModelApp: 'engine' is required");
  if (!options.secret) throw new Error("createModelApp: 'secret' is required");
  const clock = options.clock ?? Date.now;
  const log = options.log ?? consoleSink;
  const keepAliveMs = options.keepAliveMs ?? 15_000;
  const key = await importSigningKey(options.secret);
  const verifier = new RequestVerifier(key, {
    clock,
    windowMs: options.signatureWindowMs,
    ledger: options.nonceLedger,
  });
  const engine = options.engine;
  // One generation per sequence the engine runs at once (1, or --max-seqs with batching).
  const queue = new GenerationQueue(engine.info().maxSeqs, options.maxWaiting ?? 8);
  const metrics = new Metrics();
  metrics.counter("ul_model_requests_total", "Requests by route and status class");
  metrics.counter("ul_model_prompt_tokens_total", "Prompt tokens received");
  metrics.counter("ul_model_cached_tokens_total", "Prompt tokens restored from snapshots");
  metrics.counter("ul_model_output_tokens_total", "Tokens generated");
  metrics.gauge("ul_model_queue_active", "Generations running", () => queue.active);
  metrics.gauge(
    "ul_model_queue_waiting",
    "Generations waiting for the runtime",
    () => queue.waiting,
  );
  metrics.gauge(
    "ul_model_queue_waits",
    "Generations so far that found the runtime busy and waited (cumulative)",
    () => queue.waited,
  );
  metrics.gauge(
    "ul_model_snapshot_bytes_written",
    "Snapshot bytes uploaded",
    () => engine.snapshotBytes?.().written ?? 0,
  );
  metrics.gauge(
    "ul_model_snapshot_bytes_read",
    "Snapshot bytes restored",
    () => engine.snapshotBytes?.().read ?? 0,
  );

  const batch = engine.batchStats?.bind(engine);
  if (batch) {
    metrics.gauge(
      "ul_model_seqs_running",
      "Sequences open in the batch scheduler",
      () => batch().sequences,
    );
    metrics.gauge(
      "ul_model_seqs_waiting",
      "Sequences with tokens queued for the next step",
      () => batch().waiting,
    );
    metrics.gauge(
      "ul_model_seqs_swapped",
      "Sequences preempted (KV in the snapshot store or host memory)",
      () => batch().swapped,
    );
    metrics.gauge(
      "ul_model_kv_blocks_used",
      "KV blocks in sequences' tables",
      () => batch().blocks.used,
    );
    metrics.gauge(
      "ul_model_kv_blocks_cached",
      "KV blocks of ended sequences kept for shared prefixes",
      () => batch().blocks.cached,
    );
    metrics.gauge("ul_model_kv_blocks_free", "KV blocks free", () => batch().blocks.free);
    metrics.gauge(
      "ul_model_batch_steps",
      "Batched forward steps (cumulative)",
      () => batch().steps,
    );
    metrics.gauge(
      "ul_model_batch_tokens",
      "Tokens in all steps (cumulative; / steps = mean batch)",
      () => batch().stepTokens,
    );
    metrics.gauge(
      "ul_model_batch_sequences",
      "Sequences in all steps (cumulative; / steps = mean)",
      () => batch().stepSequences,
    );
    metrics.gauge(
      "ul_model_preemptions",
      "Sequences preempted so far (cumulative)",
      () => batch().preemptions,
    );
    metrics.gauge(
      "ul_model_preemption_kept_blocks",
      "KV blocks preemptions left in the pool because running sequences share them (cumulative)",
      () => batch().preemptionKeptBlocks,
    );
    metrics.gauge(
      "ul_model_swap_store_bytes",
      "Bytes of preempted sequences' KV written to the snapshot store (cumulative)",
      () => batch().swap.storeBytesWritten,
    );
    metrics.gauge(
      "ul_model_swap_host_bytes",
      "Bytes of preempted sequences' KV held in host memory now (pieces being written or read ahead included)",
      () => batch().swap.hostBytes,
    );
    metrics.gauge(
      "ul_model_swap_restore_failures",
      "Preempted sequences whose KV could not be restored (their requests failed; cumulative)",
      () => batch().swap.restoreFailures,
    );
    metrics.gauge(
      "ul_model_swap_prefetch_bytes",
      "Bytes of preempted sequences' KV read back from the store ahead of their restore (cumulative)",
      () => batch().swap.storeBytesPrefetched,
    );
  }

  // Which runtime, kernels and KV dtype serve: a constant 1 whose labels say it (Prometheus' *_info).
  const served = engine.info();
  metrics.set(
    "ul_model_runtime_info",
    1,
    {
      runtime: served.runtime,
      kernels: served.kernels,
      kv_dtype: served.kv.dtype,
    },
    "Runtime, kernels (GEMM backend) and KV dtype serving this model",
  );

  const app = new Hono();
  app.onError((err) => errorResponse(err));
  app.notFound(() => errorResponse(new NotFoundHttpError("no such route", "route_not_found")));

  app.get("/healthz", (c) => c.json({ ok: true }));
  // Anyone who reaches the model function learns that it is ready; the model, its fingerprint, the
  // runtime and the store's location only with the metrics key (operators, not the network).
  app.get("/readyz", async (c) => {
    const queueState = { active: queue.active, waiting: queue.waiting, max: queue.maxWaiting };
    if (!(await hasMetricsKey(c, options.metricsKeySha256)))
      return c.json({ ready: true, queue: queueState });
    return c.json({ ready: true, ...engine.info(), queue: queueState });
  });
  app.get("/metrics", (c) => metricsResponse(c, metrics, options.metricsKeySha256));

  app.post(GENERATE_PATH, async (c) => {
    const started = clock();
    const requestId = c.req.header("x-request-id") ?? "";
    const finish = (status: number, extra: Partial<Parameters<typeof logRequest>[1]> = {}) => {
      metrics.inc("ul_model_requests_total", { route: GENERATE_PATH, class: statusClass(status) });
      logRequest(
        log,
        {
          app: "model",
          requestId,
          route: GENERATE_PATH,
          status,
          totalMs: clock() - started,
          ...extra,
        },
        clock,
      );
    };
    let frames: AsyncGenerator<Frame> | null = null;
    try {
      const signature = await verifier.verify("POST", GENERATE_PATH, c.req.raw.headers);
      const type = (c.req.header("content-type") ?? "").split(";")[0].trim();
      if (type !== FRAMES_CONTENT_TYPE)
        throw new UnsupportedMediaTypeError(`expected ${FRAMES_CONTENT_TYPE}`);
      // A body cut off by the edge's connection is its IncompleteBodyError (400), not ours.
      const body = completeBody(c.req.raw);
      if (!body) throw new InvalidInputError("empty body");
      frames = readFrames(body, key, signature);
      const first = await frames.next();
      if (first.done || first.value.type !== FRAME_HEADER)
        throw new InvalidInputError("missing HEADER frame");
      const header = parseGenerateHeader(first.value.json);
      return await stream(c.req.raw.signal, header, frames, started, finish);
    } catch (err) {
      await frames?.return(undefined);
      const { status, body } = describeError(err);
      finish(status, { errorCode: body.error.code });
      throw err;
    }
  });

  async function stream(
    clientSignal: AbortSignal,
    header: GenerateHeader,
    frames: AsyncGenerator<Frame>,
    started: number,
    finish: (status: number, extra?: Record<string, unknown>) => void,
  ): Promise<Response> {
    const client = clientAbort(clientSignal);
    const abort = client.controller;
    // A full queue is refused now (429, before anything streams). Otherwise the response starts at
    // once and the wait for the runtime happens inside it: the edge then holds this response's body
    // through the queue wait too, and cancels it when its client goes away (functions/edge/forward.ts).
    let acquired: Promise<() => void>;
    try {
      acquired = queue.acquire(abort.signal);
    } catch (err) {
      client.release();
      throw err;
    }
    acquired.catch(() => {}); // awaited in the stream below
    // Token ids are checked by the driver, once each, as they arrive.
    async function* prompt(): AsyncGenerator<Int32Array> {
      for await (const f of frames) {
        if (f.type === FRAME_END) return;
        if (f.type !== FRAME_TOKENS) continue;
        metrics.inc("ul_model_prompt_tokens_total", {}, f.tokens.length);
        yield f.tokens;
      }
    }
    const stats: Record<string, unknown> = { tenant: header.tenant };
    let release = () => {};
    return sseResponse({
      abort,
      keepAliveMs,
      async run(send) {
        release = await acquired;
        stats.queueMs = clock() - started;
        for await (const ev of engine.generate({
          header,
          prompt: prompt(),
          signal: abort.signal,
        })) {
          if (ev.event === "progress" && !header.progress) continue;
          if (ev.event === "usage") account(ev.data, stats);
          send(sseEvent(ev.event, ev.data));
          // A CPU runtime computes inside promise continuations: without a macrotask turn the
          // socket never flushes and a client's disconnect is never seen until the end.
          await yieldToEventLoop();
        }
      },
      fail(err) {
        // Once the client is gone, whatever broke is its cancellation (CancelledError: 499).
        const d = describeError(abort.signal.aborted ? abort.signal.reason : err);
        stats.errorCode = d.body.error.code;
        const { code, message } = d.body.error;
        const retry = d.retryAfterS === undefined ? {} : { retryAfterS: d.retryAfterS };
        return {
          status: d.status,
          event: sseEvent("error", { code, message, status: d.status, ...retry }),
        };
      },
      done(status) {
        client.release();
        release();
        finish(status, stats);
        // Not awaited: a read of the request body still pending ends only with the socket.
        frames.return(undefined).catch(() => {});
      },
    });
  }

  /** A generation's usage into the metrics and its log line. */
  function account(u: UsageEvent, stats: Record<string, unknown>): void {
    metrics.inc("ul_model_cached_tokens_total", {}, u.cachedTokens);
    metrics.inc("ul_model_output_tokens_total", {}, u.completionTokens);
    if (u.prefillMs > 0)
      metrics.set(
        "ul_model_prefill_tokens_per_second",
        ((u.promptTokens - u.cachedTokens) / u.prefillMs) * 1000,
      );
    if (u.decodeMs > 0)
      metrics.set("ul_model_decode_tokens_per_second", (u.completionTokens / u.decodeMs) * 1000);
    Object.assign(stats, usageLogFields(u));
  }

  return { app, metrics, queue };
}
