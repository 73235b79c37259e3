// ModelEngine over the sequence driver (core/engine/driver.ts), one runtime, and per-tenant
// snapshot caches (core/kv). The model function app knows only ModelEngine.
//
// Streamed prompts (the edge sends frames while the client is still uploading) go into the driver
// as they arrive: prefill overlaps the upload chunk by chunk (docs/driver.md).

import {
  type DriverEvent,
  eosTokenIds,
  SequenceDriver,
  tokenTextDecoder,
} from "../../core/engine/driver.ts";
import type { PrefixCache } from "../../core/engine/prefix-cache.ts";
import type { Runtime } from "../../core/engine/runtime.ts";
import { toHex } from "../../core/hash/hex.ts";
import type { OneShotSha256 } from "../../core/hash/sha256.ts";
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
  runtime: Runtime;
  /** For token text and stop strings. */
  tokenizer: DecoderFactory;
  /** Snapshot store; without one, no snapshots (the runtime still reuses a held prefix). */
  /** masterKeys: snapshot encryption keys, first seals (functions/node/snapshot-keys.ts). */
  store?: { store: SnapshotStore; name: string; chunkTokens?: number; masterKeys?: Uint8Array[] };
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

/** One tenant's snapshot cache: created once, so simultaneous first requests share it. */
interface TenantCache {
  ready: Promise<SnapshotCache>;
  cache?: SnapshotCache;
}

export async function createDriverEngine(options: DriverEngineOptions): Promise<ModelEngine> {
  const { runtime, model } = options;
  const driver = new SequenceDriver(runtime, {
    eosTokenIds: eosTokenIds(model),
    clock: options.clock,
  });
  const fingerprint = await model.fingerprint();
  const saltKey = await importSigningKey(options.saltSecret);
  const maxCaches = Math.max(1, options.maxTenantCaches ?? 256);
  // Insertion order is recency: a used tenant is moved to the end, the first one is evicted.
  const caches = new Map<string, TenantCache>();
  // Byte counts of evicted caches (after their final flush), so snapshotBytes stays cumulative.
  const retired = { written: 0, read: 0 };
  const draining = new Set<Promise<void>>();
  const enc = new TextEncoder();

  function cacheFor(tenant: string): Promise<PrefixCache | undefined> {
    const s = options.store;
    if (!s) return Promise.resolve(undefined);
    let entry = caches.get(tenant);
    if (entry) {
      caches.delete(tenant);
    } else {
      const e: TenantCache = {
        ready: hmac(saltKey, enc.encode(`ultralong tenant salt\n${tenant}`)).then(
          (mac) => {
            e.cache = createSnapshotCache({
              store: s.store,
              modelFingerprint: fingerprint,
              kvLayout: runtime.info.kv,
              tenantSalt: toHex(mac),
              chunkTokens: s.chunkTokens ?? 512,
              encryption: s.masterKeys?.length ? { masterKeys: s.masterKeys } : undefined,
              sha256: options.sha256,
            });
            return e.cache;
          },
          (err) => {
            if (caches.get(tenant) === e) caches.delete(tenant); // the next request tries again
            throw err;
          },
        ),
      };
      entry = e;
    }
    caches.set(tenant, entry);
    if (caches.size > maxCaches) {
      const [oldest, evicted] = caches.entries().next().value as [string, TenantCache];
      caches.delete(oldest);
      const done: Promise<void> = evicted.ready
        .then(async (c) => {
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
    runtime: runtime.info.name,
    kernels: runtime.info.kernels,
    vocabSize: model.config.vocabSize,
    maxPositions: runtime.info.maxPositions,
    kv: {
      dtype: runtime.info.kv.dtype,
      bytesPerToken: kvBytesPerToken(runtime.info.kv),
      capacityBytes: runtime.info.kvCapacityBytes,
    },
    store: options.store?.name ?? "none",
    ...(runtime.info.weightFormat ? { weights: runtime.info.weightFormat } : {}),
    ...(runtime.info.sizing ? { sizing: runtime.info.sizing } : {}),
  };

  async function* generate(request: GenerationRequest): AsyncGenerator<ModelEvent> {
    const { header, signal } = request;
    const prefixCache = await cacheFor(header.tenant);
    const decoder = options.tokenizer.createDecoder({ skipSpecialTokens: true });
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
    async close() {
      for (const { ready } of caches.values()) await (await ready.catch(() => undefined))?.flush();
      await Promise.all(draining);
      await runtime.close();
    },
  };
}
