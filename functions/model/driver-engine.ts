// ModelEngine over the sequence driver (core/engine/driver.ts), one runtime, and per-tenant
// snapshot caches (core/kv). The model function app knows only ModelEngine.
//
// Streamed prompts (the edge sends frames while the client is still uploading) go into the driver
// as they arrive: prefill overlaps the upload chunk by chunk (docs/driver.md).

import { BlockPrefixIndex, createBlockPrefixCache } from "../../core/engine/block-prefix-cache.ts";
import {
  type DriverEvent,
  eosTokenIds,
  SequenceDriver,
  tokenTextDecoder,
} from "../../core/engine/driver.ts";
import type { PagedRuntime } from "../../core/engine/paged-runtime.ts";
import type { PrefixCache } from "../../core/engine/prefix-cache.ts";
import type { Runtime } from "../../core/engine/runtime.ts";
import { BatchScheduler, type SchedulerStats } from "../../core/engine/scheduler.ts";
import { InvalidInputError } from "../../core/errors.ts";
import { toHex } from "../../core/hash/hex.ts";
import type { OneShotSha256 } from "../../core/hash/sha256.ts";
import { chainKeys } from "../../core/kv/chain-key.ts";
import { kvBytesPerToken } from "../../core/kv/layout.ts";
import { createSnapshotCache, type SnapshotCache } from "../../core/kv/snapshot-cache.ts";
import type { SnapshotStore } from "../../core/kv/store.ts";
import type { LoadedModel } from "../../core/model/weights.ts";
import type { ModelEvent } from "../../core/protocol/events.ts";
import { hmac, importSigningKey } from "../../core/protocol/signing.ts";
import type { EngineInfo, GenerationRequest, ModelEngine } from "./engine.ts";

/** Streaming detokenizer factory (core/tokenizer's Tokenizer.createDecoder satisfies it). */
export interface DecoderFactory {
  createDecoder(opts?: { skipSpecialTokens?: boolean }): {
    push(id: number): string;
    end(): string;
  };
}

export interface DriverEngineOptions {
  /** Model id reported in readiness. */
  modelId: string;
  model: LoadedModel;
  /**
   * One sequence at a time on a Runtime, or many at once on a PagedRuntime (continuous batching,
   * docs/batching.md): `maxSeqs` generations run together, steps of at most `maxBatchTokens`.
   * Preempted sequences' KV goes to the store, else host memory up to `maxSwapBytes`.
   */
  runtime:
    | Runtime
    | {
        paged: PagedRuntime;
        maxSeqs: number;
        maxBatchTokens?: number;
        maxPrefillTokens?: number;
        maxSwapBytes?: number;
      };
  /** For token text and stop strings. */
  tokenizer: DecoderFactory;
  /** Snapshot store; without one, no snapshots (the runtime still reuses a held prefix). */
  /** masterKeys: snapshot encryption keys, first seals (functions/node/snapshot-keys.ts). */
  store?: { store: SnapshotStore; name: string; chunkTokens?: number; masterKeys?: Uint8Array[] };
  /**
   * Prefix chunk in tokens for shared KV blocks when there is no store (with one, its
   * chunkTokens); default 512. A multiple of the runtime's KV block.
   */
  chunkTokens?: number;
  /**
   * Secret from which per-tenant snapshot salts are derived: salt = HMAC(secret, tenant). Server
   * side only, so a client can never pick another tenant's salt.
   */
  saltSecret: string | Uint8Array;
  /**
   * Tenants whose snapshot caches are kept (default 256); beyond that the least recently used
   * tenant's cache is flushed and dropped (its snapshots stay in the store and are found again).
   */
  maxTenantCaches?: number;
  clock?: () => number;
  /**
   * SHA-256 for snapshot bodies (default crypto.subtle). On Node pass core/node's nodeSha256: the
   * CLI's snapshot path already did, and subtle copies its input first (`npm run bench -- snapshots`).
   */
  sha256?: OneShotSha256;
}

/**
 * One tenant's prefix cache: created once, so simultaneous first requests share it. `cache` is
 * the snapshot cache (with a store); `prefix` what the driver gets: the snapshot cache, or with
 * batching the shared-block cache in front of it.
 */
interface TenantCache {
  ready: Promise<PrefixCache | undefined>;
  cache?: SnapshotCache;
}

export async function createDriverEngine(options: DriverEngineOptions): Promise<ModelEngine> {
  const { model } = options;
  const batched = "paged" in options.runtime ? options.runtime : null;
  const single = "paged" in options.runtime ? null : options.runtime;
  const fingerprint = await model.fingerprint();
  const scheduler = batched
    ? new BatchScheduler(batched.paged, {
        maxBatchTokens: batched.maxBatchTokens,
        maxPrefillTokens: batched.maxPrefillTokens,
        swap: {
          store: options.store?.store,
          modelFingerprint: fingerprint,
          maxHostBytes: batched.maxSwapBytes,
        },
      })
    : null;
  const index = scheduler ? new BlockPrefixIndex(scheduler.pool) : null;
  const rtInfo = batched ? batched.paged.info : (single as Runtime).info;
  const chunkTokens = options.store?.chunkTokens ?? options.chunkTokens ?? 512;
  if (batched && chunkTokens % batched.paged.info.blockTokens !== 0) {
    throw new InvalidInputError(
      `the prefix chunk (${chunkTokens} tokens) must be whole KV blocks of ${batched.paged.info.blockTokens}`,
    );
  }
  const eos = eosTokenIds(model);
  const driver = single
    ? new SequenceDriver(single, { eosTokenIds: eos, clock: options.clock })
    : null;
  const saltKey = await importSigningKey(options.saltSecret);
  const maxCaches = Math.max(1, options.maxTenantCaches ?? 256);
  // Insertion order is recency: a used tenant is moved to the end, the first one is evicted.
  const caches = new Map<string, TenantCache>();
  // Byte counts of evicted caches (after their final flush), so snapshotBytes stays cumulative.
  const retired = { written: 0, read: 0 };
  const draining = new Set<Promise<void>>();
  const enc = new TextEncoder();

  /** The tenant's prefix cache: its snapshots (with a store) behind its shared blocks (batched). */
  async function prefixCacheOf(tenant: string, e: TenantCache): Promise<PrefixCache | undefined> {
    const s = options.store;
    if (!s && !index) return undefined;
    const tenantSalt = toHex(await hmac(saltKey, enc.encode(`ultralong tenant salt\n${tenant}`)));
    if (s) {
      e.cache = createSnapshotCache({
        store: s.store,
        modelFingerprint: fingerprint,
        kvLayout: rtInfo.kv,
        tenantSalt,
        chunkTokens,
        encryption: s.masterKeys?.length ? { masterKeys: s.masterKeys } : undefined,
        sha256: options.sha256,
      });
    }
    if (!index) return e.cache;
    const snapshots = e.cache;
    const ctx = { modelFingerprint: fingerprint, dtype: rtInfo.kv.dtype, tenantSalt };
    return createBlockPrefixCache({
      index,
      chunkTokens,
      chainKeys: snapshots
        ? (tokens, chunks) => snapshots.chainKeys(tokens, chunks)
        : (tokens, chunks) => chainKeys(ctx, tokens, chunkTokens, chunks),
      next: snapshots,
    });
  }

  function cacheFor(tenant: string): Promise<PrefixCache | undefined> {
    let entry = caches.get(tenant);
    if (entry) {
      caches.delete(tenant);
    } else {
      const e: TenantCache = { ready: Promise.resolve(undefined) };
      e.ready = prefixCacheOf(tenant, e).catch((err) => {
        if (caches.get(tenant) === e) caches.delete(tenant); // the next request tries again
        throw err;
      });
      entry = e;
    }
    caches.set(tenant, entry);
    if (caches.size > maxCaches) {
      const [oldest, evicted] = caches.entries().next().value as [string, TenantCache];
      caches.delete(oldest);
      const done: Promise<void> = evicted.ready
        .then(async () => {
          const c = evicted.cache;
          if (!c) return;
          await c.flush();
          const st = c.stats();
          retired.written += st.bytesUploaded;
          retired.read += st.bytesDownloaded;
        })
        .catch(() => {})
        .finally(() => draining.delete(done));
      draining.add(done);
    }
    return entry.ready;
  }

  const info: EngineInfo = {
    model: options.modelId,
    fingerprint,
    runtime: rtInfo.name,
    kernels: rtInfo.kernels,
    vocabSize: model.config.vocabSize,
    maxPositions: rtInfo.maxPositions,
    kv: {
      dtype: rtInfo.kv.dtype,
      bytesPerToken: kvBytesPerToken(rtInfo.kv),
      capacityBytes: rtInfo.kvCapacityBytes,
    },
    store: options.store?.name ?? "none",
    maxSeqs: batched ? batched.maxSeqs : 1,
    ...(batched && scheduler
      ? {
          batching: {
            maxBatchTokens: scheduler.maxBatchTokens,
            maxPrefillTokens: scheduler.maxPrefillTokens,
            blockTokens: batched.paged.info.blockTokens,
            totalBlocks: batched.paged.info.totalBlocks,
            swapTo: scheduler.swap.store ? "store" : "host",
            maxSwapBytes: scheduler.swap.maxHostBytes,
          },
        }
      : {}),
    ...(rtInfo.weightFormat ? { weights: rtInfo.weightFormat } : {}),
    ...(rtInfo.sizing ? { sizing: rtInfo.sizing } : {}),
  };

  async function* generate(request: GenerationRequest): AsyncGenerator<ModelEvent> {
    const { header } = request;
    const prefixCache = await cacheFor(header.tenant);
    const decoder = options.tokenizer.createDecoder({ skipSpecialTokens: true });
    // Batched: a sequence of its own for this request (its blocks go back when it ends).
    const seq = scheduler?.open(header.tenant);
    try {
      yield* run(
        seq
          ? new SequenceDriver(seq, { eosTokenIds: eos, clock: options.clock })
          : (driver as SequenceDriver),
        request,
        prefixCache,
        decoder,
      );
    } finally {
      if (seq) index?.abandon(seq);
      await seq?.close();
    }
  }

  async function* run(
    driver: SequenceDriver,
    request: GenerationRequest,
    prefixCache: PrefixCache | undefined,
    decoder: ReturnType<DecoderFactory["createDecoder"]>,
  ): AsyncGenerator<ModelEvent> {
    const { header, signal } = request;
    // The verified frames go straight in: the driver checks each token once and prefills each
    // chunk as soon as its tokens are there.
    const events = driver.generate({
      prompt: request.prompt,
      maxTokens: header.maxTokens,
      sampling: {
        temperature: header.temperature,
        topP: header.topP,
        seed: header.seed ?? undefined,
        logprobs: header.logprobs ? header.topLogprobs : undefined,
      },
      stop: header.stop,
      decoder: tokenTextDecoder(decoder),
      prefixCache,
      isolationKey: header.tenant,
      signal,
    });
    for await (const ev of events) {
      if (ev.type === "progress") {
        yield progress(ev, ev.promptComplete ? ev.totalTokens : header.promptTokens);
      } else if (ev.type === "token") {
        const data: Extract<ModelEvent, { event: "token" }>["data"] = { id: ev.id, text: ev.text };
        if (ev.logprob !== undefined) data.logprob = ev.logprob;
        if (ev.top) data.top = ev.top.map((t) => ({ id: t.id, text: "", logprob: t.logprob }));
        yield { event: "token", data };
      } else {
        // Uploads run behind compute; wait for them so the next request (or process) sees them.
        await prefixCache?.flush();
        yield {
          event: "usage",
          data: {
            promptTokens: ev.usage.promptTokens,
            completionTokens: ev.usage.completionTokens,
            cachedTokens: ev.usage.cachedTokens,
            finishReason: ev.finishReason,
            prefillMs: ev.timings.prefillMs,
            decodeMs: ev.timings.decodeMs,
          },
        };
      }
    }
  }

  function progress(
    ev: Extract<DriverEvent, { type: "progress" }>,
    total: number | null,
  ): ModelEvent {
    return {
      event: "progress",
      data: {
        done: ev.doneTokens,
        total,
        cached: ev.cachedTokens,
        tokensPerSecond: ev.tokensPerSecond,
      },
    };
  }

  return {
    info: () => info,
    generate,
    snapshotBytes() {
      let { written, read } = retired;
      for (const { cache } of caches.values()) {
        if (!cache) continue;
        const s = cache.stats();
        written += s.bytesUploaded;
        read += s.bytesDownloaded;
      }
      return { written, read };
    },
    ...(scheduler ? { batchStats: (): SchedulerStats => scheduler.stats() } : {}),
    async close() {
      for (const { ready } of caches.values()) await (await ready.catch(() => undefined))?.flush();
      await Promise.all(draining);
      await (batched ? batched.paged.close() : single?.close());
    },
  };
}
