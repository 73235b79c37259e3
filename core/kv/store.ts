// The SnapshotStore seam (ARCHITECTURE.md): a flat key -> bytes object store. Implementations:
// the local directory (core/node/snapshot-dir.ts, the embedded default) and S3 (./s3-store.ts).
// Keys are validated the same way everywhere, so a key that works on one store works on all and no
// key can name a path outside a directory store.

import { InvalidInputError, UltralongError } from "../errors.ts";

export interface ObjectInfo {
  /** The key as given to put (without any store prefix). */
  key: string;
  size: number;
  /** Last modification, ms since the epoch. */
  lastModified: number;
}

export interface ByteRange {
  offset: number;
  length: number;
}

export interface SnapshotStore {
  /** For messages: "/path/to/dir" or "s3://bucket/prefix". */
  readonly name: string;
  /** Write the whole object atomically: readers see the old object, the new one, or none. */
  put(key: string, bytes: Uint8Array, signal?: AbortSignal): Promise<void>;
  /**
   * Write the object only if no object has this key, atomically against every other writer of the
   * store (other processes and instances too): true when this call created it, false when one was
   * there. For small objects (the replay ledger's nonces, core/protocol/nonce-ledger.ts).
   */
  create(key: string, bytes: Uint8Array): Promise<boolean>;
  /** The whole object, or exactly `range.length` bytes from `range.offset`. NotFoundError if absent. */
  get(key: string, range?: ByteRange, signal?: AbortSignal): Promise<Uint8Array>;
  /** Size and modification time, or null when absent. */
  head(key: string): Promise<ObjectInfo | null>;
  /** Remove the object; absent is not an error. */
  delete(key: string): Promise<void>;
  /** Every object whose key starts with `prefix`, in no guaranteed order. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /** Rename `from` to `to` (quarantine). NotFoundError if `from` is absent. */
  move(from: string, to: string): Promise<void>;
}

/** The store could not be reached or refused an operation (after retries). */
export class StoreError extends UltralongError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("store_unavailable", message, options);
  }
}

/** Logging hook shared by stores and the snapshot cache; the default drops debug lines. */
export interface SnapshotLogger {
  debug(message: string, data?: Record<string, unknown>): void;
  warn(message: string, data?: Record<string, unknown>): void;
}

export const defaultLogger: SnapshotLogger = {
  debug() {},
  warn(message, data) {
    console.warn(`ultralong snapshots: ${message}${data ? ` ${JSON.stringify(data)}` : ""}`);
  },
};

const SEGMENT = /^[A-Za-z0-9._-]+$/;
export const MAX_KEY_LENGTH = 512;

/**
 * Keys are '/'-separated segments of [A-Za-z0-9._-], none empty, none "." or "..", no leading or
 * trailing '/', at most 512 chars. This rejects absolute paths, parent references, backslashes,
 * NUL and every other byte with meaning to a filesystem or URL. Throws InvalidInputError.
 */
export function validateKey(key: string): string {
  if (typeof key !== "string" || key.length === 0 || key.length > MAX_KEY_LENGTH) {
    throw new InvalidInputError(`snapshot key must be 1..${MAX_KEY_LENGTH} chars`);
  }
  for (const segment of key.split("/")) {
    if (!SEGMENT.test(segment) || segment === "." || segment === "..") {
      throw new InvalidInputError(`invalid snapshot key '${key.slice(0, 100)}'`);
    }
  }
  return key;
}

/** A list prefix: empty, or a key prefix whose complete segments are valid. */
export function validatePrefix(prefix: string): string {
  if (prefix === "") return prefix;
  const trimmed = prefix.endsWith("/") ? prefix.slice(0, -1) : prefix;
  validateKey(trimmed);
  return prefix;
}
