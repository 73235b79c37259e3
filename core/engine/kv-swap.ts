// Where a preempted sequence's KV waits (scheduler.ts): the snapshot store when there is one, else
// host memory up to a byte budget. Preempting a long sequence moves GiBs of KV out of the pool;
// held on the JS heap that can exhaust host memory, so the store comes first and the heap is the
// bounded fallback.
//
// A swap is the sequence's positions [from, tokens) cut into pieces of `chunkTokens` (the last may
// be partial), each exported from the pool, encoded and written on its own. Writes run in the
// background, one piece after another, while their bytes fit in the host budget (the pool goes on
// computing meanwhile); past it a piece is written before the next is exported, so host memory
// stays within the budget plus one piece on the way out, and holds one piece at a time on the way
// back. [0, from) is the run of leading blocks the victim shares with sequences still running (the
// scheduler keeps those in the pool: writing them would free nothing); a later, deeper preemption
// saves them too, ahead of the rest. A piece in the store is one object in the
// snapshot format (core/kv/format.ts, layout.ts), under
//
//   swap/v1/<model fingerprint, 16 hex>/<tenant tag, 16 hex>/<instance, 32 hex>/<seq>-<swap>/<start>
//
// instance: random per KvSwap (per serving process), so processes sharing a store never collide;
// seq: the sequence's opening order; swap: a counter, so two swaps of one sequence differ too. The
// tenant tag (chain-key.ts) keeps a tenant's objects under its own prefix. These are not prefix
// snapshots (kv/v1/): they are named by sequence, not content, and the snapshot cache never reads
// them. Each object is sealed with AES-GCM under a key generated at startup and never written
// anywhere (only this process reads its swaps back): at rest they are unreadable, tamper-evident,
// and leftovers of a crashed process are garbage (`ultralong snapshots rm --prefix swap/`). The
// header's chain key field is SHA-256 of the object key, so an object copied under another key (or
// another tenant's) fails the check. After a restore, or when the sequence closes, its objects
// are deleted; a failed delete is counted and left (store eviction or rm removes it).
//
// A restore checks every object (checksums, GCM tag, range, layout, fingerprint, key binding)
// before importing it; anything off fails that sequence's request with StoreError, never imports
// wrong KV.

import { assert, BusyError, NotFoundError } from "../errors.ts";
import { toHex } from "../hash/hex.ts";
import { sha256 } from "../hash/sha256.ts";
import { tenantTag } from "../kv/chain-key.ts";
import { decodeSnapshot, encodeSnapshot } from "../kv/format.ts";
import { FP8_BLOCK_POSITIONS, type KvLayout, kvPayloadBytes } from "../kv/layout.ts";
import { defaultLogger, type SnapshotLogger, type SnapshotStore, StoreError } from "../kv/store.ts";

/** Default host memory for swapped KV when the store is absent or failing (`--max-swap-bytes`). */
export const DEFAULT_MAX_SWAP_HOST_BYTES = 1 << 30;
/**
 * Default positions per swap object: the snapshot chunk's 512 (bf16 Llama-3.1-8B: 64 MiB an
 * object; encoding holds about 4 copies of a piece at once, so 2048 peaked at ~1 GiB of host memory).
 */
export const DEFAULT_SWAP_CHUNK_TOKENS = 512;
export const SWAP_KEY_ROOT = "swap/v1/";

export interface KvSwapOptions {
  /** Where swapped KV goes first; absent (serve --no-store): host memory only. */
  store?: SnapshotStore;
  /** LoadedModel.fingerprint(), 64 hex: objects name the model. Needed with a store. */
  modelFingerprint?: string;
  /** Most bytes of swapped KV held in host memory at once; past it a preemption fails its victim. */
  maxHostBytes?: number;
  /** Positions per swap piece; rounded up to whole pool blocks and fp8 scale blocks. */
  chunkTokens?: number;
  logger?: SnapshotLogger;
}

/**
 * One piece of a swap: in memory as `bytes` (snapshot layout) or in the store under `key`; while
 * `writing`, both the bytes and a store write of them are under way (the write sets `key` and
 * drops the bytes when it lands, and leaves the bytes in memory when it fails).
 */
interface SwapPiece {
  start: number;
  end: number;
  bytes?: Uint8Array;
  key?: string;
  writing?: Promise<void>;
  /** A read ahead of the restore (prefetch): resolves once `bytes` holds the piece, or it failed. */
  fetching?: Promise<void>;
}

/**
 * A preempted sequence's KV: positions [from, tokens) in pieces (sorted by start), or `lost`
 * (restoring is impossible). Positions [0, from) stayed in the pool: the sequence kept those
 * blocks because other sequences hold them too (a shared document), so giving them up frees nothing.
 */
export interface SwappedKv {
  from: number;
  tokens: number;
  pieces: SwapPiece[];
  /** Set when the KV could not be kept or restored: every later call of the sequence fails with it. */
  lost?: Error;
  /** prefetch() has run for this swap: its reads, settled once each piece is read or let go. */
  prefetched?: Promise<void>;
  /** The prefetch's reads have all settled: a restore now reads the store only for the pieces
   * that did not fit in the host budget (or failed). */
  fetched?: boolean;
}

export interface KvSwapStats {
  /** Bytes of swap objects written to the store (cumulative). */
  storeBytesWritten: number;
  /** Swapped KV in host memory now: kept there, or exported and still being written. */
  hostBytes: number;
  /** Store writes that failed (the piece went to host memory or the victim failed). */
  storeWriteErrors: number;
  /** Restores that failed (missing or corrupt object, store down): that request failed. */
  restoreFailures: number;
  /** Swap objects whose delete failed (left to the store's eviction). */
  deleteErrors: number;
  /** Bytes of swapped KV read back from the store ahead of a restore (cumulative). */
  storeBytesPrefetched: number;
}

/** Reads and writes one sequence's KV in the pool: the scheduler's export/import over its table. */
export interface PoolKv {
  export(start: number, end: number): Promise<Uint8Array>;
  import(start: number, end: number, bytes: Uint8Array): Promise<void>;
}

export class KvSwap {
  readonly store: SnapshotStore | undefined;
  readonly maxHostBytes: number;
  readonly chunkTokens: number;
  readonly #layout: KvLayout;
  readonly #unit: number;
  readonly #fingerprint: string;
  readonly #instance = toHex(crypto.getRandomValues(new Uint8Array(16)));
  readonly #key: Promise<CryptoKey>;
  readonly #log: SnapshotLogger;
  /** Background store writes and deletes under way. */
  readonly #pending = new Set<Promise<void>>();
  #swaps = 0;
  readonly #stats: KvSwapStats = {
    storeBytesWritten: 0,
    hostBytes: 0,
    storeWriteErrors: 0,
    restoreFailures: 0,
    storeBytesPrefetched: 0,
    deleteErrors: 0,
  };

  constructor(layout: KvLayout, blockTokens: number, opts: KvSwapOptions = {}) {
    const max = opts.maxHostBytes ?? DEFAULT_MAX_SWAP_HOST_BYTES;
    assert(Number.isSafeInteger(max) && max >= 0, "max swap host bytes is a count");
    this.store = opts.store;
    this.maxHostBytes = max;
    this.#layout = layout;
    this.#fingerprint = opts.modelFingerprint ?? "0".repeat(64);
    assert(
      !opts.store || /^[0-9a-f]{64}$/.test(opts.modelFingerprint ?? ""),
      "a swap store needs the model fingerprint",
    );
    // Pieces start on pool blocks (imports fill whole blocks) and, for fp8, on scale blocks (a
    // payload's scales are counted from its first position: aligned, they are the pool's own).
    const unit = layout.dtype === "fp8-e4m3" ? lcm(blockTokens, FP8_BLOCK_POSITIONS) : blockTokens;
    this.#unit = unit;
    this.chunkTokens = Math.ceil((opts.chunkTokens ?? DEFAULT_SWAP_CHUNK_TOKENS) / unit) * unit;
    this.#log = opts.logger ?? defaultLogger;
    this.#key = crypto.subtle.generateKey({ name: "AES-GCM", length: 256 }, false, [
      "encrypt",
      "decrypt",
    ]) as Promise<CryptoKey>;
  }

  stats(): KvSwapStats {
    return { ...this.#stats };
  }

  /** Positions per unit a swap may start at: pool blocks, and for fp8 whole scale blocks too. */
  get unitTokens(): number {
    return this.#unit;
  }

  /**
   * Saves positions [from, tokens) of a sequence (`from` a multiple of unitTokens): each piece to
   * the store, or to host memory when there is no store or its write fails. BusyError (nothing
   * kept) when memory would pass maxHostBytes; the caller then fails the sequence instead.
   *
   * With a store, pieces that fit in the host budget are exported and their writes left running
   * in the background: save returns once the KV is out of the pool, so the step that needed the
   * blocks does not wait for the store (the bytes count against the budget until their write
   * lands). A piece past the budget is written before the next is exported, as with no room.
   */
  async save(
    tenant: string,
    order: number,
    from: number,
    tokens: number,
    kv: PoolKv,
  ): Promise<SwappedKv> {
    assert(from >= 0 && from <= tokens && from % this.#unit === 0, "a swap starts on a unit");
    const dir = this.store
      ? `${SWAP_KEY_ROOT}${this.#fingerprint.slice(0, 16)}/${await tenantTag(tenant)}/${this.#instance}/${order}-${this.#swaps++}/`
      : "";
    const saved: SwappedKv = { from, tokens, pieces: [] };
    const later: Array<{ piece: SwapPiece; key: string }> = [];
    try {
      for (let start = from; start < tokens; start += this.chunkTokens) {
        const end = Math.min(tokens, start + this.chunkTokens);
        const bytes = await kv.export(start, end);
        const key = `${dir}${start}`;
        const fits = this.#stats.hostBytes + bytes.length <= this.maxHostBytes;
        if (this.store && fits) {
          this.#stats.hostBytes += bytes.length;
          const piece: SwapPiece = { start, end, bytes };
          later.push({ piece, key });
          saved.pieces.push(piece);
          continue;
        }
        if (this.store && (await this.#put(key, start, end, bytes))) {
          saved.pieces.push({ start, end, key });
          continue;
        }
        if (!fits) {
          throw new BusyError(
            `preempting this sequence needs ${bytes.length} more bytes of host memory for its KV, past the ${this.maxHostBytes}-byte swap budget (${this.store ? `the store ${this.store.name} refused the write` : "no snapshot store"}); retry later or raise --max-swap-bytes`,
          );
        }
        this.#stats.hostBytes += bytes.length;
        saved.pieces.push({ start, end, bytes });
      }
    } catch (err) {
      this.drop(saved);
      throw err;
    }
    // The background writes, one piece after another (one piece's encoding in memory at a time),
    // started once every piece is out of the pool, so they do not slow the exports down.
    let chain = Promise.resolve();
    for (const { piece, key } of later) {
      chain = chain.then(async () => {
        // Restored or dropped before its turn: nothing to write.
        const ok =
          piece.bytes !== undefined && (await this.#put(key, piece.start, piece.end, piece.bytes));
        piece.writing = undefined;
        if (!ok) return; // stays in memory, counted (or is gone)
        piece.key = key; // (a piece dropped meanwhile is deleted by drop's release)
        if (!piece.bytes) return;
        // Its restore is coming (the read-back began, and skipped this piece: it was in memory):
        // the bytes stay for it, or the restore would read them back on the step's path.
        if (saved.prefetched) return;
        this.#stats.hostBytes -= piece.bytes.length;
        piece.bytes = undefined;
      });
      piece.writing = chain;
      this.#track(chain);
    }
    return saved;
  }

  /**
   * Imports the pieces holding positions [0, upTo) back into the pool, each checked first, then
   * drops the swap. StoreError when a piece is missing or fails a check (the swap is dropped too).
   */
  async restore(saved: SwappedKv, upTo: number, kv: PoolKv): Promise<void> {
    try {
      for (const p of saved.pieces) {
        if (p.start >= upTo) break;
        // A piece still being written, or read ahead, comes from memory (a piece being written has
        // its object deleted once written).
        if (!p.bytes && p.fetching) await p.fetching;
        const bytes = p.bytes ?? (await this.#get(p.key as string, p.start, p.end));
        await kv.import(p.start, p.end, bytes);
      }
    } catch (err) {
      this.#stats.restoreFailures++;
      throw err instanceof StoreError
        ? err
        : new StoreError(`this sequence's preempted KV could not be restored: ${message(err)}`, {
            cause: err,
          });
    } finally {
      this.drop(saved);
    }
  }

  /**
   * Reads the store's pieces of positions [0, upTo) back into host memory ahead of the restore,
   * one after another in the background, while they fit in the host budget (a piece that does not
   * is left to the restore): the scheduler calls it when a swapped sequence waits for room, so
   * the step that restores it imports from memory instead of waiting for the store. A failed read
   * is let go; the restore reads that piece again and reports what is wrong. Once per swap: a
   * second call returns the first one's reads. Resolves (never rejects) once they have all settled.
   */
  prefetch(saved: SwappedKv, upTo: number): Promise<void> {
    if (saved.prefetched) return saved.prefetched;
    if (!this.store || saved.lost) {
      saved.fetched = true;
      return Promise.resolve();
    }
    let chain = Promise.resolve();
    for (const p of saved.pieces) {
      if (p.start >= upTo) break;
      if (p.bytes || p.key === undefined) continue;
      const key = p.key;
      const need = kvPayloadBytes(this.#layout, p.end - p.start);
      chain = chain.then(async () => {
        // Restored or dropped meanwhile, or no room: the restore reads it (or nobody does).
        if (p.key !== key || p.bytes || this.#stats.hostBytes + need > this.maxHostBytes) return;
        p.fetching = this.#get(key, p.start, p.end).then(
          (bytes) => {
            if (p.key !== key || p.bytes) return; // let go of while it was read
            p.bytes = bytes;
            this.#stats.hostBytes += bytes.length;
            this.#stats.storeBytesPrefetched += bytes.length;
          },
          () => {},
        );
        await p.fetching;
        p.fetching = undefined;
      });
      this.#track(chain);
    }
    saved.prefetched = chain
      .catch(() => {})
      .then(() => {
        saved.fetched = true;
      });
    return saved.prefetched;
  }

  /**
   * Lets go of a swap: host bytes are freed, store objects deleted in the background (a piece
   * still being written is deleted when its write ends).
   */
  drop(saved: SwappedKv): void {
    for (const p of saved.pieces) {
      if (p.writing) {
        // Its bytes stop counting now (the swap is over; the write ends soon), its object goes
        // once it is written.
        if (p.bytes) this.#stats.hostBytes -= p.bytes.length;
        p.bytes = undefined;
        this.#track(p.writing.then(() => this.#release(p)));
      } else this.#release(p);
    }
    saved.pieces = [];
  }

  #release(p: SwapPiece): void {
    if (p.bytes) {
      this.#stats.hostBytes -= p.bytes.length;
      p.bytes = undefined;
    }
    if (p.key === undefined) return;
    const key = p.key;
    p.key = undefined;
    this.#track(
      (this.store as SnapshotStore).delete(key).catch((err) => {
        this.#stats.deleteErrors++;
        this.#log.warn("swap object not deleted", { key, error: message(err) });
      }),
    );
  }

  /** Keeps `work` (a background write or delete) until it ends, for settled(). */
  #track(work: Promise<void>): void {
    const done: Promise<void> = work.finally(() => this.#pending.delete(done));
    this.#pending.add(done);
  }

  /** Resolves when every write and delete started so far has finished (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.#pending.size) await Promise.all([...this.#pending]);
  }

  /** Encodes and writes one piece; false (logged, counted) when the store refuses. */
  async #put(key: string, start: number, end: number, payload: Uint8Array): Promise<boolean> {
    const store = this.store as SnapshotStore;
    try {
      const object = await encodeSnapshot(
        {
          modelFingerprint: this.#fingerprint,
          layout: this.#layout,
          tokenStart: start,
          tokenEnd: end,
          chainKey: await bindingOf(key),
          previousKey: null,
        },
        payload,
        { key: await this.#key },
      );
      await store.put(key, object);
      this.#stats.storeBytesWritten += object.length;
      return true;
    } catch (err) {
      this.#stats.storeWriteErrors++;
      this.#log.warn("swap write failed; keeping the piece in host memory", {
        key,
        error: message(err),
      });
      return false;
    }
  }

  /** One piece's payload, checked against everything it was written as. */
  async #get(key: string, start: number, end: number): Promise<Uint8Array> {
    const store = this.store as SnapshotStore;
    let object: Uint8Array;
    try {
      object = await store.get(key);
    } catch (err) {
      if (err instanceof NotFoundError) {
        throw new StoreError(`this sequence's preempted KV is gone from ${store.name} (${key})`);
      }
      throw err;
    }
    const { header, payload } = await decodeSnapshot(object, { key: await this.#key });
    const L = this.#layout;
    const h = header.layout;
    const same =
      header.tokenStart === start &&
      header.tokenEnd === end &&
      header.modelFingerprint === this.#fingerprint &&
      h.layers === L.layers &&
      h.kvHeads === L.kvHeads &&
      h.headDim === L.headDim &&
      h.dtype === L.dtype &&
      toHex(header.chainKey) === toHex(await bindingOf(key));
    if (!same) throw new StoreError(`swap object ${key} is not the one written there`);
    return payload;
  }
}

/** The header's chain key field for a swap object: binds it to its store key. */
async function bindingOf(key: string): Promise<Uint8Array> {
  return sha256(new TextEncoder().encode(`ultralong-kv-swap\n${key}`));
}

function lcm(a: number, b: number): number {
  let [x, y] = [a, b];
  while (y) [x, y] = [y, x % y];
  return (a / x) * b;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
