// ModelEngine over the sequence driver (core/engine/driver.ts), one runtime, and per-tenant
// snapshot caches (core/kv). The model function app knows only ModelEngine.
//
// Streamed prompts (the edge sends frames while the client is still uploading): the driver takes a
// whole prompt, so while frames arrive we run "warm" generations on the prefix received so far
// (max 1 token, greedy, output dropped). The driver keeps the runtime's KV for a prompt that
// extends what it holds (same isolation key), so the final call only computes the tail: prefill
// overlaps the upload, at the cost of one extra decode step per warm step.

import { toHex } from "../../core/crypto/sha256.ts";
import {
  type DriverEvent,
  eosTokenIds,
  SequenceDriver,
  tokenTextDecoder,
} from "../../core/engine/driver.ts";
import type { PrefixCache } from "../../core/engine/prefix-cache.ts";
import type { Runtime } from "../../core/engine/runtime.ts";
import { CancelledError } from "../../core/errors.ts";
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
  /** masterKeys: snapshot encryption keys, first seals (functions/platform/snapshot-keys.ts). */
  store?: { store: SnapshotStore; name: string; chunkTokens?: number; masterKeys?: Uint8Array[] };
  /**
   * Secret from which per-tenant snapshot salts are derived: salt = HMAC(secret, tenant). Server
   * side only, so a client can never pick another tenant's salt.
   */
  saltSecret: string | Uint8Array;
  /** Prompt tokens received between warm prefills of a streamed prompt (default 4096). */
  warmStepTokens?: number;
  /**
   * Tenants whose snapshot caches are kept (default 256); beyond that the least recently used
   * tenant's cache is flushed and dropped (its snapshots stay in the store and are found again).
   */
  maxTenantCaches?: number;
  clock?: () => number;
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
  const warmStep = options.warmStepTokens ?? 4096;
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
  };

  async function* generate(request: GenerationRequest): AsyncGenerator<ModelEvent> {
    const { header, signal } = request;
    const prefixCache = await cacheFor(header.tenant);
    const prompt: number[] = [];
    let warmed = 0;
    let restored: number | null = null;
    const streamed = header.promptTokens === null;
    for await (const part of request.prompt) {
      for (const id of part) prompt.push(id);
      if (signal.aborted) throw new CancelledError();
      if (streamed && prompt.length - warmed >= warmStep) {
        // Warm prefill of what has arrived; its progress is real prefill progress.
        for await (const ev of driver.generate({
          prompt,
          maxTokens: 1,
          sampling: { temperature: 0 },
          prefixCache,
          isolationKey: header.tenant,
          signal,
        })) {
          if (ev.type === "progress") {
            restored ??= ev.cachedTokens;
            yield progress(ev, null, restored);
          }
        }
        warmed = prompt.length;
      }
    }
    const decoder = options.tokenizer.createDecoder({ skipSpecialTokens: true });
    const events = driver.generate({
      prompt,
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
        restored ??= ev.cachedTokens;
        yield progress(ev, prompt.length, restored);
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
            // Tokens restored from snapshots; KV computed by this request's warm steps is not "cached".
            cachedTokens: Math.min(restored ?? ev.usage.cachedTokens, ev.usage.cachedTokens),
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
    cached: number,
  ): ModelEvent {
    return {
      event: "progress",
      data: { done: ev.doneTokens, total, cached, tokensPerSecond: ev.tokensPerSecond },
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
