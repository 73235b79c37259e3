// Composition root of local mode (`ultralong serve`, tests, benchmarks): the model function
// (model-node.ts, the same assembly the model container runs) and the edge as two Hono apps on two
// loopback sockets in one process. The edge forwards over real HTTP, signed, exactly as deployed;
// only the composition (which keys, where uploaded files live, a worker thread for their
// tokenization) is local. With role "model" only the model function starts, as in the container.
import { basename, resolve } from "node:path";
import { toHex } from "../../core/hash/hex.ts";
import { sha256Hex } from "../../core/hash/sha256.ts";
import { createEdgeApp, type EdgeApp } from "../edge/app.ts";
import { ObjectFileStore } from "../edge/files.ts";
import { DEFAULT_LIMITS, type KeyConfig } from "../edge/keys.ts";
import {
  type ChatRenderer,
  edgeTextFromTokenizer,
  templateChatRenderer,
} from "../edge/tokenizer-text.ts";
import type { ModelApp } from "../model/app.ts";
import type { ModelEngine } from "../model/engine.ts";
import { listen } from "../node/listen.ts";
import { workerFileTokenizer } from "../node/worker-file-tokenizer.ts";
import { type ModelFunctionOptions, startModelFunction } from "./model-node.ts";

/**
 * The model function's options (model-node.ts) with local defaults, and the edge's. `port` and
 * `hostname` are the edge's (the model function takes a free loopback port), or the model
 * function's with role "model". Snapshot master keys encrypt nothing else: uploaded files beside
 * the snapshots are stored as sent.
 */
export interface LocalOptions
  extends Omit<ModelFunctionOptions, "modelId" | "secret" | "saltSecret" | "metricsKeySha256"> {
  /** Id clients name in requests (default: the directory's name). */
  modelId?: string;
  /** API keys; default: one demo key (`demoKey`) for tenant "demo". */
  keys?: KeyConfig;
  /** The demo key when no `keys` are given (default: random; `ultralong serve` keeps one). */
  demoKey?: string;
  renderChat?: ChatRenderer;
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
  /** The demo key (only when no keys were given). */
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
  const modelId = options.modelId ?? basename(resolve(options.modelDir));
  const secret = options.secret ?? randomHex(32);
  const metricsKey = `ul-metrics-${randomHex(16)}`;
  const metricsKeySha256 = options.keys?.metricsKeySha256 ?? (await sha256Hex(metricsKey));
  const role = options.role ?? "both";
  const fn = await startModelFunction({
    ...options,
    modelId,
    // The model function takes a free loopback port unless it is all that serves.
    port: role === "model" ? options.port : 0,
    hostname: role === "model" ? options.hostname : undefined,
    secret,
    saltSecret: options.saltSecret ?? `salt:${secret}`,
    metricsKeySha256,
  });
  const served = {
    modelUrl: fn.url,
    modelId,
    metricsKey: options.keys?.metricsKeySha256 === undefined ? metricsKey : "",
    engine: fn.engine,
    runtimeChoice: fn.runtimeChoice,
    model: fn.app,
  };
  if (role === "model") {
    return { ...served, url: fn.url, demoKey: null, edge: null, close: () => fn.close() };
  }
  // Closed in reverse when the edge's start fails: a refused start leaves nothing running.
  const opened: Array<() => Promise<void>> = [() => fn.close()];
  const unwind = async (err: unknown): Promise<never> => {
    for (const close of opened.reverse()) await close().catch(() => {});
    throw err;
  };
  let demoKey: string | null = null;
  let keys = options.keys;
  if (!keys) {
    demoKey = options.demoKey ?? `ul-demo-${randomHex(16)}`;
    keys = {
      tenants: { demo: { ...DEFAULT_LIMITS, maxPromptTokens: fn.maxPositions - 1 } },
      keys: [{ sha256: await sha256Hex(demoKey), tenant: "demo" }],
    };
  }
  keys = { ...keys, metricsKeySha256 };
  const renderChat = options.renderChat ?? templateChatRenderer(fn.tokenizer, modelId);
  // Uploaded files are tokenized in a worker thread, so the edge keeps answering meanwhile.
  const fileTokenizer = workerFileTokenizer(fn.tokenizer);
  opened.push(() => fileTokenizer.close());
  const edge = await createEdgeApp({
    modelId,
    maxContext: fn.maxPositions,
    text: edgeTextFromTokenizer(fn.tokenizer, renderChat),
    keys,
    modelUrl: fn.url,
    secret,
    keepAliveMs: options.keepAliveMs,
    log: options.log,
    // Files live beside the snapshots when there is a store (they survive restarts), else in memory.
    files: fn.store ? new ObjectFileStore(fn.store) : undefined,
    fileTokenizer,
  }).catch(unwind);
  const edgeServer = await listen(edge.app, {
    port: options.port,
    hostname: options.hostname,
  }).catch(unwind);
  return {
    ...served,
    url: edgeServer.url,
    demoKey,
    edge,
    async close() {
      await edgeServer.close();
      await fileTokenizer.close();
      await fn.close();
    },
  };
}
