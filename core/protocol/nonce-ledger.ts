// Where the model function remembers which request nonces it has served (ARCHITECTURE.md "Wire
// protocol": a nonce is accepted once across every instance and restart).
//
//   MemoryNonceLedger  one process; with RequestVerifier's "not before this process started" rule a
//                      restart cannot reopen the window, but a second instance can accept a replay.
//   StoreNonceLedger   the deployment's snapshot store: one object per nonce, created only if absent
//                      (S3 `If-None-Match: *`, O_EXCL-style link on a directory). Every instance and
//                      every restart sees the same claims. Objects are tiny; S3 expires them by a
//                      lifecycle rule on `nonces/`, `ultralong snapshots gc` removes old ones locally.
//
// A claim that was retried (the first PUT landed, its answer was lost) finds an object: it carries
// the claimant's random token, so the retry recognises its own claim instead of calling it a replay.

import { NotAvailableError, NotFoundError } from "../errors.ts";
import { toHex } from "../hash/hex.ts";
import type { SnapshotStore } from "../kv/store.ts";

export interface NonceLedger {
  /**
   * True when `nonce` was not claimed before (it is now), false when it was. `timestamp` is the
   * request's signed time (ms). Throws when the ledger cannot be reached: the caller refuses the
   * request rather than risk serving a replay.
   */
  claim(nonce: string, timestamp: number): Promise<boolean>;
}

/** The store prefix under which StoreNonceLedger keeps its objects. */
export const NONCE_PREFIX = "nonces/";

export interface MemoryNonceLedgerOptions {
  clock?: () => number;
  /** Nonces whose timestamp is older than now minus this (ms) are forgotten. */
  windowMs?: number;
  /** Most nonces remembered; past it the oldest are dropped AND older timestamps refused. */
  maxNonces?: number;
}

/** One process's memory (tests, `serve --no-store`). */
export class MemoryNonceLedger implements NonceLedger {
  readonly #clock: () => number;
  readonly #windowMs: number;
  readonly #maxNonces: number;
  /** nonce -> timestamp, in insertion order (Map keeps it). */
  readonly #seen = new Map<string, number>();
  /** Timestamps at or below this are refused (raised when the nonce map overflows). */
  #floor = Number.NEGATIVE_INFINITY;

  constructor(options: MemoryNonceLedgerOptions = {}) {
    this.#clock = options.clock ?? Date.now;
    this.#windowMs = options.windowMs ?? 60_000;
    this.#maxNonces = options.maxNonces ?? 100_000;
  }

  async claim(nonce: string, timestamp: number): Promise<boolean> {
    this.#forgetBefore(this.#clock() - this.#windowMs);
    if (timestamp <= this.#floor || this.#seen.has(nonce)) return false;
    this.#seen.set(nonce, timestamp);
    if (this.#seen.size > this.#maxNonces) {
      const [oldest, oldestTs] = this.#seen.entries().next().value as [string, number];
      this.#seen.delete(oldest);
      this.#floor = Math.max(this.#floor, oldestTs);
    }
    return true;
  }

  /** Drops nonces whose timestamp is below `limit` (the verifier refuses those as stale anyway). */
  #forgetBefore(limit: number): void {
    for (const [nonce, ts] of this.#seen) {
      // Insertion order is close to timestamp order; stop at the first fresh one.
      if (ts >= limit) break;
      this.#seen.delete(nonce);
    }
  }

  get size(): number {
    return this.#seen.size;
  }
}

/** A store that can create an object only where none exists (both SnapshotStores can). */
export type ExclusiveStore = Pick<SnapshotStore, "create" | "get" | "name">;

/** The deployment's store: claims shared by every instance and surviving restarts. */
export class StoreNonceLedger implements NonceLedger {
  readonly #store: ExclusiveStore;
  readonly #random: (bytes: Uint8Array) => void;

  constructor(store: ExclusiveStore, options: { random?: (bytes: Uint8Array) => void } = {}) {
    this.#store = store;
    this.#random = options.random ?? ((b) => crypto.getRandomValues(b));
  }

  async claim(nonce: string, timestamp: number): Promise<boolean> {
    const token = new Uint8Array(16);
    this.#random(token);
    const body = new TextEncoder().encode(JSON.stringify({ ts: timestamp, token: toHex(token) }));
    const key = `${NONCE_PREFIX}${nonce}`;
    if (await this.#store.create(key, body)) return true;
    // Someone holds it. Ours only if a retried create of this very call landed the first time.
    // Absent now (deleted between the two calls) is not ours either; any other failure propagates:
    // the ledger could not answer, which is not evidence of a replay.
    const held = await this.#store.get(key).catch((err: unknown) => {
      if (err instanceof NotFoundError) return null;
      throw err;
    });
    return held !== null && held.length === body.length && held.every((b, i) => b === body[i]);
  }

  /**
   * Proves the store refuses a second create of one key. An S3-compatible server that ignores
   * `If-None-Match` answers 200 to both, and replay protection would silently be off: a server
   * refuses to start on such a store (functions/entries/local.ts) instead.
   */
  async checkExclusive(): Promise<void> {
    const bytes = new Uint8Array(16);
    this.#random(bytes);
    const key = `${NONCE_PREFIX}probe-${toHex(bytes)}`;
    const first = await this.#store.create(key, bytes);
    const second = await this.#store.create(key, bytes);
    if (!first || second) {
      throw new NotAvailableError(
        `the store ${this.#store.name} does not refuse a second create of one object (S3 conditional writes, If-None-Match: *), so it cannot hold the replay ledger`,
      );
    }
  }
}
