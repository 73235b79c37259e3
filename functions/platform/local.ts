// Local mode (`ultralong serve`, tests, benchmarks): the model function and the edge as two Hono
// apps on two loopback sockets in one process. The edge forwards over real HTTP, signed, exactly as
// deployed; only the composition (which runtime, which store, which keys) is local.
import { basename, resolve } from "node:path";
import { describeChoice } from "../../core/engine/registry.ts";
import { InvalidInputError } from "../../core/errors.ts";
import { toHex } from "../../core/hash/hex.ts";
import { sha256Hex } from "../../core/hash/sha256.ts";
import type { KvDtype } from "../../core/kv/layout.ts";
import type { SnapshotStore } from "../../core/kv/store.ts";
import { nodeSha256 } from "../../core/node/hasher.ts";
import { loadModelDir } from "../../core/node/load-model-dir.ts";
import { openStore } from "../../core/node/snapshot-dir.ts";
import { StoreNonceLedger } from "../../core/protocol/nonce-ledger.ts";
import { createEdgeApp, type EdgeApp } from "../edge/app.ts";
import { ObjectFileStore } from "../edge/files.ts";
import { DEFAULT_LIMITS, type KeyConfig } from "../edge/keys.ts";
import {
  type ChatRenderer,
  edgeTextFromTokenizer,
  templateChatRenderer,
} from "../edge/tokenizer-text.ts";
import { createModelApp, type ModelApp } from "../model/app.ts";
import { createDriverEngine } from "../model/driver-engine.ts";
import type { ModelEngine } from "../model/engine.ts";
import { runtimes } from "../runtimes.ts";
import { listen } from "./node.ts";
import type { LogSink } from "./request-log.ts";
import { loadDirTokenizer } from "./tokenizer-cache.ts";
import { workerFileTokenizer } from "./worker-file-tokenizer.ts";

export interface LocalOptions {
  modelDir: string;
  /** Id clients name in requests (default: the directory's name). */
  modelId?: string;
  /** Edge port (default 0: any free port). The model function always takes a free port. */
  port?: number;
  hostname?: string;
  /** Snapshot store: a --store spec, a store object, or null for none (default: the cache dir). */
  store?: string | SnapshotStore | null;
  /**
   * Snapshot master keys, first seals (functions/platform/snapshot-keys.ts); none: plaintext.
   * Also encrypts nothing else: uploaded files beside the snapshots are stored as sent.
   */
  snapshotKeys?: Uint8Array[];
  /** Snapshot chunk size in tokens (default 512). */
  snapshotChunkTokens?: number;
  /** API keys; default: one random demo key for tenant "demo". */
  keys?: KeyConfig;
  /** Runtime name or "auto" (default). */
  runtime?: string;
  threads?: number;
  /** KV positions (default: min(model's max positions, 131072)). */
  maxPositions?: number;
  /** KV cache element type (default: the runtime's); a runtime without it refuses. */
  kvDtype?: KvDtype;
  maxWaiting?: number;
  keepAliveMs?: number;
  log?: LogSink;
  renderChat?: ChatRenderer;
  env?: Record<string, string | undefined>;
  /** Signing secret shared by edge and model function (default: random per process). */
  secret?: string;
  /**
   * Secret the per-tenant snapshot salts derive from. Must be stable across restarts for
   * snapshots to be found again (default: derived from `secret`).
   */
  saltSecret?: string;
  /** "model": only the model function, on `port` (a deployed model container). Default "both". */
  role?: "both" | "model";
}

export interface LocalServer {
  url: string;
  modelUrl: string;
  modelId: string;
  /** The generated demo key (only when no keys were given). */
  demoKey: string | null;
  /** Key for GET /metrics on both apps. */
  metricsKey: string;
  engine: ModelEngine;
  /** What the registry picked and why each better runtime was skipped (one line, for the log). */
  runtimeChoice: string;
  /** null with role "model". */
  edge: EdgeApp | null;
  model: ModelApp;
  close(): Promise<void>;
}

function randomHex(bytes: number): string {
  const b = new Uint8Array(bytes);
  crypto.getRandomValues(b);
  return toHex(b);
}

export async function startLocal(options: LocalOptions): Promise<LocalServer> {
  const dir = resolve(options.modelDir);
  const modelId = options.modelId ?? basename(dir);
  const model = await loadModelDir(dir);
  const choice = await runtimes.choose(options.runtime ?? "auto");
  const factory = choice.factory;
  const maxPositions =
    options.maxPositions ?? Math.min(model.config.maxPositionEmbeddings, 131_072);
  if (maxPositions > model.config.maxPositionEmbeddings) {
    throw new InvalidInputError(
      `--max-positions ${maxPositions} is beyond the model's context (max_position_embeddings ${model.config.maxPositionEmbeddings})`,
    );
  }
  // Runtime workers start while the tokenizer loads on this thread.
  const creating = factory.create({
    model,
    maxPositions,
    threads: options.threads,
    kvDtype: options.kvDtype,
  });
  // A refusal (bad --max-positions, dtype) may come while the tokenizer loads: it is awaited below,
  // and must not count as an unhandled rejection, which would end the process with a stack trace.
  creating.catch(() => {});
  const tokenizer = await loadDirTokenizer(dir, model.files).catch(async (err) => {
    await (await creating).close();
    throw err;
  });
  const runtime = await creating;
  // What is open, closed in reverse when the start fails from here on: a refused start (a bad
  // store, key file or port) leaves no runtime workers running and no socket listening.
  const opened: Array<() => Promise<void>> = [() => runtime.close()];
  const unwind = async (err: unknown): Promise<never> => {
    for (const close of opened.reverse()) await close().catch(() => {});
    throw err;
  };
  let store:
    | { store: SnapshotStore; name: string; chunkTokens?: number; masterKeys?: Uint8Array[] }
    | undefined;
  try {
    if (options.store !== null) {
      const s = options.store;
      store =
        typeof s === "object"
          ? {
              store: s,
              name: "custom",
              chunkTokens: options.snapshotChunkTokens,
              masterKeys: options.snapshotKeys,
            }
          : {
              store: openStore(s, { env: options.env }),
              name: s ?? "default cache directory",
              chunkTokens: options.snapshotChunkTokens,
              masterKeys: options.snapshotKeys,
            };
    }
  } catch (err) {
    await unwind(err);
  }
  const secret = options.secret ?? randomHex(32);
  // A store that ignores If-None-Match would accept every replay: refuse it before serving.
  const ledger = store ? new StoreNonceLedger(store.store) : undefined;
  await ledger?.checkExclusive().catch(unwind);
  const engine = await createDriverEngine({
    modelId,
    model,
    runtime,
    tokenizer,
    store,
    saltSecret: options.saltSecret ?? `salt:${secret}`,
    sha256: nodeSha256,
  }).catch(unwind);
  opened[0] = () => engine.close(); // closes the runtime too
  const metricsKey = `ul-metrics-${randomHex(16)}`;
  const metricsKeySha256 = await sha256Hex(metricsKey);
  let demoKey: string | null = null;
  let keys = options.keys;
  if (!keys) {
    demoKey = `ul-demo-${randomHex(16)}`;
    keys = {
      tenants: { demo: { ...DEFAULT_LIMITS, maxPromptTokens: maxPositions - 1 } },
      keys: [{ sha256: await sha256Hex(demoKey), tenant: "demo" }],
    };
  }
  keys = { ...keys, metricsKeySha256: keys.metricsKeySha256 ?? metricsKeySha256 };
  const modelApp = await createModelApp({
    engine,
    secret,
    metricsKeySha256: keys.metricsKeySha256,
    maxWaiting: options.maxWaiting,
    keepAliveMs: options.keepAliveMs,
    log: options.log,
    // With a store, a signed request is served once by every instance sharing it, across restarts.
    nonceLedger: ledger,
  }).catch(unwind);
  if (options.role === "model") {
    const server = await listen(modelApp.app, {
      port: options.port,
      hostname: options.hostname,
    }).catch(unwind);
    return {
      url: server.url,
      modelUrl: server.url,
      modelId,
      demoKey: null,
      metricsKey: keys.metricsKeySha256 === metricsKeySha256 ? metricsKey : "",
      engine,
      runtimeChoice: describeChoice(choice),
      edge: null,
      model: modelApp,
      async close() {
        await server.close();
        await engine.close();
      },
    };
  }
  const modelServer = await listen(modelApp.app).catch(unwind);
  opened.push(() => modelServer.close());
  const renderChat = options.renderChat ?? templateChatRenderer(tokenizer, modelId);
  // Uploaded files are tokenized in a worker thread, so the edge keeps answering meanwhile.
  const fileTokenizer = workerFileTokenizer(tokenizer);
  opened.push(() => fileTokenizer.close());
  const edge = await createEdgeApp({
    modelId,
    maxContext: maxPositions,
    text: edgeTextFromTokenizer(tokenizer, renderChat),
    keys,
    modelUrl: modelServer.url,
    secret,
    keepAliveMs: options.keepAliveMs,
    log: options.log,
    // Files live beside the snapshots when there is a store (they survive restarts), else in memory.
    files: store ? new ObjectFileStore(store.store) : undefined,
    fileTokenizer,
  }).catch(unwind);
  const edgeServer = await listen(edge.app, {
    port: options.port,
    hostname: options.hostname,
  }).catch(unwind);
  return {
    url: edgeServer.url,
    modelUrl: modelServer.url,
    modelId,
    demoKey,
    metricsKey: keys.metricsKeySha256 === metricsKeySha256 ? metricsKey : "",
    engine,
    runtimeChoice: describeChoice(choice),
    edge,
    model: modelApp,
    async close() {
      await edgeServer.close();
      await fileTokenizer.close();
      await modelServer.close();
      await engine.close();
    },
  };
}
