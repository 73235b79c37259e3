// The PrefixCache (core/engine/prefix-cache.ts) over a SnapshotStore: content-addressed, verified,
// tenant-isolated KV snapshots, one object per chunk of `chunkTokens` prompt tokens.
//
// Object keys: kv/v1/<model fingerprint, 16 hex>/<tenant tag, 16 hex>/<chain key, 64 hex>
// Quarantine:  quarantine/<the same key>
//
// restore: computes the chain keys of the prompt's whole chunks, fetches up to `restoreAhead`
//   chunks at once and imports them in order as they arrive, so download overlaps import. It stops
//   at the first chunk that is absent or fails a check. A failed check is retried once (the bytes
//   may have been damaged in transit); failing twice, the object is quarantined and the chunk is a
//   miss that the driver recomputes (and save then rewrites). Never imports unchecked bytes.
// save: exports the chunk, then encodes and uploads it in the background. At most
//   `maxPendingUploads` uploads are in flight; a save beyond that waits for one to finish, which
//   bounds memory to (maxPendingUploads + 1) chunks and slows prefill only when the store is
//   slower than compute. Upload errors are logged and counted, never thrown. A key that already
//   has an object is not written again (see upload()).
// Encryption: objects are sealed under the first master key and name it (format.ts key id). An
//   object that is intact but not readable here (encrypted with no key configured, sealed under a
//   key not listed, plaintext where encryption is on) is a miss left in place; one whose tag fails
//   under the key it names was tampered with and is quarantined like any bad object.

import { deriveTenantKey, masterKeyId } from "../crypto/tenant-key.ts";
import type { PrefixCache, PrefixCacheRestore } from "../engine/prefix-cache.ts";
import type { Runtime } from "../engine/runtime.ts";
import {
  assert,
  CancelledError,
  FormatError,
  InvalidInputError,
  NotFoundError,
} from "../errors.ts";
import { bytesEqual, toHex } from "../hash/hex.ts";
import { type OneShotSha256, sha256 as webSha256 } from "../hash/sha256.ts";
import { type ChainKeyContext, chainKey, tenantTag } from "./chain-key.ts";
import {
  decodeSnapshot,
  encodeSnapshot,
  type SnapshotKey,
  snapshotObjectBytes,
  UnreadableError,
} from "./format.ts";
import type { KvLayout } from "./layout.ts";
import { defaultLogger, type SnapshotLogger, type SnapshotStore } from "./store.ts";

export interface SnapshotCacheOptions {
  store: SnapshotStore;
  /** LoadedModel.fingerprint(): 64 hex chars. */
  modelFingerprint: string;
  /** The runtime's KV layout (runtime.info.kv); snapshots are stored in this dtype. */
  kvLayout: KvLayout;
  /** Server-side per-tenant secret (never from the client). */
  tenantSalt: string | Uint8Array;
  chunkTokens: number;
  /**
   * Encrypt at rest with per-tenant keys HKDF(master key, tenantSalt). The first master key seals
   * new objects; every listed key opens the objects it sealed (key rotation: keep the old key
   * listed until its objects have expired or been rewritten).
   */
  encryption?: { masterKeys: Uint8Array[] };
  logger?: SnapshotLogger;
  /** Uploads in flight before save blocks (default 2). */
  maxPendingUploads?: number;
  /** Chunks fetched ahead of the one being imported (default 3). */
  restoreAhead?: number;
  sha256?: OneShotSha256;
}

export interface SnapshotCacheStats {
  restoredChunks: number;
  restoredTokens: number;
  /** Restores that stopped on an absent chunk (or restored nothing). */
  misses: number;
  /** Objects that failed verification twice and were moved to quarantine/. */
  quarantined: number;
  /** Objects that failed verification once but passed when fetched again. */
  refetched: number;
  uploads: number;
  /** Saves not uploaded because an object with that key was already in the store. */
  uploadsSkipped: number;
  uploadErrors: number;
  bytesUploaded: number;
  bytesDownloaded: number;
  pendingUploads: number;
  peakPendingUploads: number;
}

export interface SnapshotCache extends PrefixCache {
  stats(): SnapshotCacheStats;
  /** Store key of the chunk with this chain key (for tools and tests). */
  objectKey(chainKey: Uint8Array): Promise<string>;
  /** Chain keys of the first `chunks` whole chunks of `tokens`. */
  chainKeys(tokens: Int32Array, chunks: number): Promise<Uint8Array[]>;
}

export const SNAPSHOT_KEY_ROOT = "kv/v1/";
export const QUARANTINE_ROOT = "quarantine/";

type Fetched = { payload: Uint8Array } | { miss: string };

export function createSnapshotCache(opts: SnapshotCacheOptions): SnapshotCache {
  const { store, kvLayout: layout, chunkTokens: C } = opts;
  if (!Number.isInteger(C) || C < 1)
    throw new InvalidInputError(`chunkTokens must be a positive integer, got ${C}`);
  if (!/^[0-9a-f]{64}$/.test(opts.modelFingerprint)) {
    throw new InvalidInputError("modelFingerprint must be 64 lowercase hex chars (SHA-256)");
  }
  const logger = opts.logger ?? defaultLogger;
  const sha256 = opts.sha256 ?? webSha256;
  const maxPending = Math.max(1, opts.maxPendingUploads ?? 2);
  const ahead = Math.max(1, opts.restoreAhead ?? 3);
  const ctx: ChainKeyContext = {
    modelFingerprint: opts.modelFingerprint,
    dtype: layout.dtype,
    tenantSalt: opts.tenantSalt,
  };
  if (opts.encryption && opts.encryption.masterKeys.length === 0)
    throw new InvalidInputError("encryption needs at least one master key");
  const keysPromise: Promise<SnapshotKey[]> | undefined = opts.encryption
    ? Promise.all(
        opts.encryption.masterKeys.map(async (m) => ({
          id: await masterKeyId(m),
          key: await deriveTenantKey(m, opts.tenantSalt),
        })),
      )
    : undefined;
  // Surface a bad master key at first use, not as an unhandled rejection.
  keysPromise?.catch(() => {});
  const dirPromise = tenantTag(opts.tenantSalt).then(
    (tag) => `${SNAPSHOT_KEY_ROOT}${opts.modelFingerprint.slice(0, 16)}/${tag}/`,
  );
  const stats: SnapshotCacheStats = {
    restoredChunks: 0,
    restoredTokens: 0,
    misses: 0,
    quarantined: 0,
    refetched: 0,
    uploads: 0,
    uploadsSkipped: 0,
    uploadErrors: 0,
    bytesUploaded: 0,
    bytesDownloaded: 0,
    pendingUploads: 0,
    peakPendingUploads: 0,
  };
  const pending = new Set<Promise<void>>();
  // Object buffers of whole chunks, reused across saves (at most maxPending + 1 exist).
  const buffers: Uint8Array[] = [];

  // Chain-key memo: the keys of the longest prompt prefix seen, extended as chunks arrive, so a
  // prefill of n chunks hashes each chunk once (not n^2 / 2 times).
  let memoTokens = new Int32Array(0);
  let memoKeys: Uint8Array[] = [];
  async function keysFor(tokens: Int32Array, chunks: number): Promise<Uint8Array[]> {
    const limit = Math.min(chunks, memoKeys.length);
    // Compared, not trusted by array identity: a caller may reuse an array with new tokens. For a
    // 1M-token prompt in 512-token chunks this is ~10^9 int compares over the whole prefill (about
    // a second), against hours of compute.
    let valid = 0;
    while (valid < limit) {
      const a = tokens.subarray(valid * C, (valid + 1) * C);
      const b = memoTokens.subarray(valid * C, (valid + 1) * C);
      let same = true;
      for (let j = 0; j < C; j++)
        if (a[j] !== b[j]) {
          same = false;
          break;
        }
      if (!same) break;
      valid++;
    }
    const keys = memoKeys.slice(0, valid);
    for (let i = valid; i < chunks; i++) {
      keys.push(
        await chainKey(ctx, i === 0 ? null : keys[i - 1], tokens.subarray(i * C, (i + 1) * C)),
      );
    }
    // Keep a longer memo that this call only confirmed a prefix of; else remember this prompt.
    if (!(valid === chunks && chunks < memoKeys.length)) {
      memoTokens = tokens.slice(0, chunks * C);
      memoKeys = keys;
    }
    return keys;
  }

  async function objectKey(key: Uint8Array): Promise<string> {
    return `${await dirPromise}${toHex(key)}`;
  }

  function sameLayout(a: KvLayout, b: KvLayout): boolean {
    return (
      a.layers === b.layers &&
      a.kvHeads === b.kvHeads &&
      a.headDim === b.headDim &&
      a.dtype === b.dtype
    );
  }

  async function check(object: Uint8Array, i: number, keys: Uint8Array[]): Promise<Uint8Array> {
    const tenantKeys = keysPromise ? await keysPromise : undefined;
    const { header, payload } = await decodeSnapshot(object, { keys: tenantKeys, sha256 });
    if (header.modelFingerprint !== opts.modelFingerprint)
      throw new FormatError("model fingerprint mismatch");
    if (!sameLayout(header.layout, layout)) throw new FormatError("KV layout mismatch");
    if (header.tokenStart !== i * C || header.tokenEnd !== (i + 1) * C)
      throw new FormatError("token range mismatch");
    if (!bytesEqual(header.chainKey, keys[i])) throw new FormatError("chain key mismatch");
    const prev = i === 0 ? null : keys[i - 1];
    if (
      prev === null
        ? header.previousKey !== null
        : !header.previousKey || !bytesEqual(header.previousKey, prev)
    ) {
      throw new FormatError("previous chain key mismatch");
    }
    return payload;
  }

  async function quarantine(objKey: string, reason: string): Promise<void> {
    stats.quarantined++;
    logger.warn("quarantining snapshot that failed verification", { key: objKey, reason });
    try {
      await store.move(objKey, QUARANTINE_ROOT + objKey);
    } catch (err) {
      if (err instanceof NotFoundError) return; // another instance got there first
      logger.warn("quarantine move failed; deleting instead", { key: objKey, error: String(err) });
      await store.delete(objKey).catch(() => {});
    }
  }

  async function fetchChunk(i: number, keys: Uint8Array[], signal: AbortSignal): Promise<Fetched> {
    const objKey = await objectKey(keys[i]);
    for (let attempt = 0; ; attempt++) {
      let object: Uint8Array;
      try {
        object = await store.get(objKey, undefined, signal);
      } catch (err) {
        if (err instanceof NotFoundError) return { miss: "absent" };
        if (signal.aborted) return { miss: "cancelled" };
        logger.warn("snapshot fetch failed; treating as a miss", {
          key: objKey,
          error: String(err),
        });
        return { miss: "store error" };
      }
      stats.bytesDownloaded += object.length;
      try {
        const payload = await check(object, i, keys);
        if (attempt > 0) stats.refetched++;
        return { payload };
      } catch (err) {
        if (!(err instanceof FormatError)) throw err;
        if (err instanceof UnreadableError) {
          // Intact but not for this configuration (no key here, a master key this server does not
          // hold, plaintext where encryption is on): a miss that leaves the object alone, so one
          // misconfigured instance cannot destroy the cache that correctly configured ones share.
          logger.warn("snapshot is not readable with this server's keys; treating as a miss", {
            key: objKey,
            reason: err.message,
          });
          return { miss: "unreadable" };
        }
        if (attempt === 0) {
          logger.debug("snapshot failed verification; fetching again", {
            key: objKey,
            reason: err.message,
          });
          continue;
        }
        await quarantine(objKey, err.message);
        return { miss: "quarantined" };
      }
    }
  }

  async function restore(
    runtime: Runtime,
    tokens: Int32Array,
    signal?: AbortSignal,
  ): Promise<PrefixCacheRestore> {
    // The runtime holds tokens[0, position) at a chunk boundary (empty, or chunks restored or
    // computed before): the chain continues from there, so a streamed prompt restores chunk by
    // chunk as it arrives. Whole chunks of `tokens` only: the driver passes the prompt minus its
    // last token, which it always computes (it needs that position's logits).
    const from = runtime.position;
    assert(from % C === 0 && from <= tokens.length, "restore continues at a chunk boundary");
    const first = from / C;
    const chunks = Math.floor(tokens.length / C);
    if (chunks <= first || !sameLayout({ ...runtime.info.kv, dtype: layout.dtype }, layout)) {
      stats.misses++;
      return { restoredTokens: 0 };
    }
    const keys = await keysFor(tokens, chunks);
    const abort = new AbortController();
    const onAbort = () => abort.abort();
    signal?.addEventListener("abort", onAbort, { once: true });
    const inflight: Promise<Fetched>[] = [];
    const start = (i: number) => {
      const p = fetchChunk(i, keys, abort.signal);
      p.catch(() => {});
      inflight[i] = p;
    };
    let restored = 0;
    try {
      for (let i = first; i < chunks; i++) {
        for (let j = i; j < Math.min(chunks, i + ahead); j++) if (!inflight[j]) start(j);
        const got = await inflight[i];
        inflight[i] = Promise.resolve({ miss: "consumed" });
        if (signal?.aborted) throw new CancelledError();
        if ("miss" in got) {
          stats.misses++;
          logger.debug("snapshot chain ends", { chunk: i, reason: got.miss });
          break;
        }
        try {
          await runtime.importKv(got.payload, C, layout.dtype);
        } catch (err) {
          logger.warn("runtime refused snapshot KV; recomputing from here", {
            chunk: i,
            error: String(err),
          });
          runtime.truncate(from + restored);
          stats.misses++;
          break;
        }
        restored += C;
        stats.restoredChunks++;
        stats.restoredTokens += C;
      }
    } finally {
      abort.abort();
      signal?.removeEventListener("abort", onAbort);
    }
    return { restoredTokens: restored };
  }

  async function upload(objKey: string, object: Uint8Array): Promise<void> {
    try {
      // Keys are content addresses: an object already there holds this chunk, is waiting to be
      // found bad (then quarantined, and the save after that writes it), or belongs to another
      // configuration (another master key, or none). Overwriting would gain nothing in the first
      // case and let one misconfigured instance destroy the shared cache in the last.
      if (await store.head(objKey)) {
        stats.uploadsSkipped++;
        return;
      }
      await store.put(objKey, object);
      stats.uploads++;
      stats.bytesUploaded += object.length;
    } catch (err) {
      stats.uploadErrors++;
      logger.warn("snapshot upload failed", { key: objKey, error: String(err) });
    }
  }

  let warnedDtype = false;
  async function save(
    runtime: Runtime,
    tokens: Int32Array,
    startPos: number,
    end: number,
  ): Promise<void> {
    assert(end - startPos === C && startPos % C === 0, "save takes one aligned whole chunk");
    assert(end <= tokens.length, "saved chunk lies inside the prompt");
    if (!sameLayout(runtime.info.kv, layout)) {
      if (!warnedDtype)
        logger.warn("runtime KV layout differs from the snapshot layout; not saving");
      warnedDtype = true;
      return;
    }
    while (pending.size >= maxPending) await Promise.race(pending);
    // Take the slot before the first await, so saves called at once cannot all pass the wait;
    // the upload takes it over below.
    let release = () => {};
    const slot = new Promise<void>((resolve) => {
      release = resolve;
    });
    pending.add(slot);
    try {
      const i = startPos / C;
      const keys = await keysFor(tokens, i + 1);
      const payload = await runtime.exportKv(startPos, end);
      const sealWith = keysPromise ? (await keysPromise)[0] : undefined;
      const size = snapshotObjectBytes(payload.length, sealWith !== undefined);
      let into = buffers.pop();
      if (into && into.length !== size) into = undefined;
      const object = await encodeSnapshot(
        {
          modelFingerprint: opts.modelFingerprint,
          layout,
          tokenStart: startPos,
          tokenEnd: end,
          chainKey: keys[i],
          previousKey: i === 0 ? null : keys[i - 1],
        },
        payload,
        { key: sealWith?.key, keyId: sealWith?.id ?? undefined, sha256, into },
      );
      const objKey = await objectKey(keys[i]);
      const p: Promise<void> = upload(objKey, object).finally(() => {
        if (buffers.length < maxPending) buffers.push(object);
        pending.delete(p);
        stats.pendingUploads = pending.size;
      });
      pending.add(p);
    } catch (err) {
      stats.uploadErrors++;
      logger.warn("snapshot export failed", { start: startPos, end, error: String(err) });
    } finally {
      pending.delete(slot);
      release();
    }
    stats.pendingUploads = pending.size;
    stats.peakPendingUploads = Math.max(stats.peakPendingUploads, pending.size);
  }

  async function flush(): Promise<void> {
    while (pending.size > 0) await Promise.allSettled([...pending]);
  }

  return {
    chunkTokens: C,
    restore,
    save,
    flush,
    stats: () => ({ ...stats }),
    objectKey,
    chainKeys: (tokens, chunks) => keysFor(tokens, chunks),
  };
}
