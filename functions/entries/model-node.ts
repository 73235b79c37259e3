// Composition root of the model function on Node: the deployed model container (`ultralong serve
// --role model`, infra/docker/model.Dockerfile) and the model half of local mode (local.ts). It
// assembles what createModelApp needs from a model directory: the runtime the registry picks, the
// tokenizer (for the driver's stop strings), the snapshot store and its nonce ledger, the driver
// engine; then listens. The Hono app itself (functions/model/app.ts) knows none of this.
import { resolve } from "node:path";
import type { PagedRuntime } from "../../core/engine/paged-runtime.ts";
import { describeChoice, type RuntimeOptions } from "../../core/engine/registry.ts";
import type { Runtime } from "../../core/engine/runtime.ts";
import { InvalidInputError } from "../../core/errors.ts";
import type { KvDtype } from "../../core/kv/layout.ts";
import type { SnapshotStore } from "../../core/kv/store.ts";
import { nodeSha256 } from "../../core/node/hasher.ts";
import { loadModelDir } from "../../core/node/load-model-dir.ts";
import { openStore } from "../../core/node/snapshot-dir.ts";
import { StoreNonceLedger } from "../../core/protocol/nonce-ledger.ts";
import type { Tokenizer } from "../../core/tokenizer/index.ts";
import type { NativeTierOptions } from "../../native/ts/native-runtime.ts";
import type { LogSink } from "../http/request-log.ts";
import { createModelApp, type ModelApp } from "../model/app.ts";
import { createDriverEngine } from "../model/driver-engine.ts";
import type { ModelEngine } from "../model/engine.ts";
import { listen } from "../node/listen.ts";
import { loadDirTokenizer } from "../node/tokenizer-cache.ts";
import { runtimes } from "../runtimes.ts";

export interface ModelFunctionOptions {
  modelDir: string;
  /** Id clients name in requests. */
  modelId: string;
  /** Port (default 0: any free port). */
  port?: number;
  hostname?: string;
  /** Snapshot store: a --store spec, a store object, or null for none (default: the cache dir). */
  store?: string | SnapshotStore | null;
  /** Snapshot master keys, first seals (functions/node/snapshot-keys.ts); none: plaintext. */
  snapshotKeys?: Uint8Array[];
  /** Snapshot chunk size in tokens (default 512). */
  snapshotChunkTokens?: number;
  /** Runtime name or "auto" (default). */
  runtime?: string;
  threads?: number;
  /** KV positions (default: min(model's max positions, 131072)). */
  maxPositions?: number;
  /** KV cache element type (default: the runtime's); a runtime without it refuses. */
  kvDtype?: KvDtype;
  /** Weights in memory (default: the checkpoint's); a runtime without the format refuses. */
  weightFormat?: RuntimeOptions["weightFormat"];
  /**
   * Generations that run at once (continuous batching, docs/batching.md). Default: where the
   * runtime batches, one per 2048 positions of the KV pool, 1 to 32; 1 runs one at a time on the
   * single-sequence runtime. A runtime that cannot batch refuses more than 1.
   */
  maxSeqs?: number;
  /** Most tokens one batched step runs (default DEFAULT_MAX_BATCH_TOKENS). */
  maxBatchTokens?: number;
  /** Most prompt tokens a step runs beside decode tokens (default maxBatchTokens). */
  maxPrefillTokens?: number;
  /** Host memory for preempted sequences' KV when the store is absent or failing (docs/batching.md). */
  maxSwapBytes?: number;
  /** Native runtimes: KV positions held in device memory, the rest of the pool in host memory
   *  (docs/native.md "Tiered KV"); default: all of it on the device. */
  deviceKvPositions?: number;
  maxWaiting?: number;
  keepAliveMs?: number;
  log?: LogSink;
  env?: Record<string, string | undefined>;
  /** Signing secret shared with the edge. */
  secret: string;
  /** Secret the per-tenant snapshot salts derive from; stable across restarts. */
  saltSecret: string;
  /** hex SHA-256 of the metrics key; undefined: /metrics answers 403. */
  metricsKeySha256?: string;
}

export interface ModelFunction {
  url: string;
  engine: ModelEngine;
  /** What the registry picked and why each better runtime was skipped (one line, for the log). */
  runtimeChoice: string;
  app: ModelApp;
  /** The model directory's tokenizer, loaded once (local mode's edge reuses it). */
  tokenizer: Tokenizer;
  maxPositions: number;
  /** The snapshot store, null without one (local mode keeps uploaded files beside it). */
  store: SnapshotStore | null;
  /** Stops listening, then closes the engine and its runtime. */
  close(): Promise<void>;
}

/** The runtimes whose engine keeps part of its KV pool in host memory (native/ts). */
const TIERED_RUNTIMES = ["native-wasm", "cuda"];

/**
 * Starts the model function. A refused start (a bad store, key file, max-positions or port)
 * leaves no runtime workers running and no socket listening.
 */
export async function startModelFunction(options: ModelFunctionOptions): Promise<ModelFunction> {
  const dir = resolve(options.modelDir);
  const model = await loadModelDir(dir);
  const choice = await runtimes.choose(options.runtime ?? "auto");
  const maxPositions =
    options.maxPositions ?? Math.min(model.config.maxPositionEmbeddings, 131_072);
  if (maxPositions > model.config.maxPositionEmbeddings) {
    throw new InvalidInputError(
      `--max-positions ${maxPositions} is beyond the model's context (max_position_embeddings ${model.config.maxPositionEmbeddings})`,
    );
  }
  const createPaged = choice.factory.createPaged;
  if ((options.maxSeqs ?? 0) > 1 && !createPaged) {
    throw new InvalidInputError(
      `runtime '${choice.factory.name}' runs one sequence at a time; --max-seqs ${options.maxSeqs} needs a runtime that batches (wasm, native-wasm, cuda, reference)`,
    );
  }
  const maxSeqs =
    options.maxSeqs ??
    (createPaged ? Math.min(32, Math.max(1, Math.floor(maxPositions / 2048))) : 1);
  if (options.deviceKvPositions !== undefined && !TIERED_RUNTIMES.includes(choice.factory.name)) {
    throw new InvalidInputError(
      `--device-kv-positions needs a runtime with tiered KV (${TIERED_RUNTIMES.join(", ")}), not '${choice.factory.name}'`,
    );
  }
  const runtimeOptions: RuntimeOptions & NativeTierOptions = {
    model,
    maxPositions,
    threads: options.threads,
    kvDtype: options.kvDtype,
    weightFormat: options.weightFormat,
    deviceKvPositions: options.deviceKvPositions,
  };
  // Runtime workers start while the tokenizer loads on this thread.
  const creating: Promise<Runtime | PagedRuntime> =
    createPaged && maxSeqs > 1
      ? createPaged(runtimeOptions)
      : choice.factory.create(runtimeOptions);
  // A refusal (bad --max-positions, dtype) may come while the tokenizer loads: it is awaited below,
  // and must not count as an unhandled rejection, which would end the process with a stack trace.
  creating.catch(() => {});
  const tokenizer = await loadDirTokenizer(dir, model.files).catch(async (err) => {
    await (await creating).close();
    throw err;
  });
  const runtime = await creating;
  // What is open, closed in reverse when the start fails from here on.
  let closeOpened: () => Promise<void> = () => runtime.close();
  const unwind = async (err: unknown): Promise<never> => {
    await closeOpened().catch(() => {});
    throw err;
  };
  let store: SnapshotStore | null = null;
  try {
    const s = options.store;
    if (s !== null) store = typeof s === "object" ? s : openStore(s, { env: options.env });
  } catch (err) {
    await unwind(err);
  }
  // A store that ignores If-None-Match would accept every replay: refuse it before serving.
  const ledger = store ? new StoreNonceLedger(store) : undefined;
  await ledger?.checkExclusive().catch(unwind);
  const engine = await createDriverEngine({
    modelId: options.modelId,
    model,
    runtime:
      "step" in runtime
        ? {
            paged: runtime,
            maxSeqs,
            maxBatchTokens: options.maxBatchTokens,
            maxPrefillTokens: options.maxPrefillTokens,
            maxSwapBytes: options.maxSwapBytes,
          }
        : runtime,
    tokenizer,
    store: store
      ? {
          store,
          name:
            typeof options.store === "object"
              ? "custom"
              : (options.store ?? "default cache directory"),
          chunkTokens: options.snapshotChunkTokens,
          masterKeys: options.snapshotKeys,
        }
      : undefined,
    chunkTokens: options.snapshotChunkTokens,
    saltSecret: options.saltSecret,
    sha256: nodeSha256,
  }).catch(unwind);
  closeOpened = () => engine.close(); // closes the runtime too
  const app = await createModelApp({
    engine,
    secret: options.secret,
    metricsKeySha256: options.metricsKeySha256,
    maxWaiting: options.maxWaiting,
    keepAliveMs: options.keepAliveMs,
    log: options.log,
    // With a store, a signed request is served once by every instance sharing it, across restarts.
    nonceLedger: ledger,
  }).catch(unwind);
  const server = await listen(app.app, {
    port: options.port,
    hostname: options.hostname,
  }).catch(unwind);
  return {
    url: server.url,
    engine,
    runtimeChoice: describeChoice(choice),
    app,
    tokenizer,
    maxPositions,
    store,
    async close() {
      await server.close();
      await engine.close();
    },
  };
}
