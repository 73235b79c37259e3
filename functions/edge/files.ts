// Uploaded documents (POST /v1/files), per tenant. A file is tokenized once, at upload, and its ids
// are stored beside its text; a chat part that names it reads the ids (file-splice.ts). A tenant
// sees only its own files: every key is prefixed by the tenant id, which comes from the API key,
// never from the request.

import { NotFoundError } from "../../core/errors.ts";
import { toHex } from "../../core/hash/hex.ts";
import { NotFoundHttpError } from "../http/http-errors.ts";
import type { FileEdges } from "./file-encoding.ts";
import { joinParts } from "./typed-parts.ts";

export interface StoredFile {
  id: string;
  tenant: string;
  filename: string;
  purpose: string;
  bytes: number;
  createdAt: number;
  /** Token count of the text, special-token matching off. */
  tokens: number;
  /** Objects text.0.. (absent: one object `text`, written by an older version). */
  textParts?: number;
  /** Objects ids.0.. (absent: no usable ids yet, an older version's file: see setIds). */
  idsParts?: number;
  /** How a chat part splices the ids; null: the part is the file's text (file-splice.ts). */
  edges?: FileEdges | null;
}

/** A new file's contents, written in order as they are produced; visible only after commit. */
export interface FileWriter {
  text(bytes: Uint8Array): Promise<void>;
  ids(ids: Int32Array): Promise<void>;
  /** Writes what is buffered, then the metadata (with the part counts filled in). */
  commit(meta: StoredFile): Promise<StoredFile>;
  /** Removes what was written. */
  abort(): Promise<void>;
}

export interface FileStore {
  create(tenant: string, id: string): FileWriter;
  /** null when absent OR owned by another tenant (the two must be indistinguishable). */
  get(tenant: string, id: string): Promise<StoredFile | null>;
  /** The stored ids, or null when there are none yet (a file from an older version). */
  ids(file: StoredFile): Promise<Int32Array | null>;
  /** The text's bytes (UTF-8, as uploaded). */
  text(file: StoredFile): Promise<Uint8Array>;
  /** Stores ids for a file that had none, then its updated metadata. */
  setIds(file: StoredFile, ids: Int32Array, edges: FileEdges | null): Promise<StoredFile>;
  list(tenant: string): Promise<StoredFile[]>;
  delete(tenant: string, id: string): Promise<boolean>;
}

export async function getFileOr404(
  store: FileStore,
  tenant: string,
  id: string,
  param: string | null = null,
): Promise<StoredFile> {
  const f = await store.get(tenant, id);
  if (!f) throw new NotFoundHttpError(`No such file: '${id}'`, "file_not_found", param);
  return f;
}

export function fileObject(f: StoredFile): Record<string, unknown> {
  return {
    id: f.id,
    object: "file",
    bytes: f.bytes,
    created_at: Math.floor(f.createdAt / 1000),
    filename: f.filename,
    purpose: f.purpose,
    status: "processed",
    status_details: null,
    // Extension: the token count, so a client can budget its prompt.
    tokens: f.tokens,
  };
}

/** The subset of core/kv's SnapshotStore that files need (any store: directory, S3). */
export interface ObjectStore {
  put(key: string, bytes: Uint8Array): Promise<void>;
  get(key: string): Promise<Uint8Array>;
  delete(key: string): Promise<void>;
  list(prefix: string): AsyncIterable<{ key: string }>;
}

/** Bytes per stored part: what one upload holds in memory per kind (text, ids) before a put. */
export const PART_BYTES = 4 << 20;

/** Collects bytes and puts them as numbered objects of PART_BYTES (the last one shorter). */
class PartWriter {
  #parts: Uint8Array[] = [];
  #size = 0;
  count = 0;
  constructor(
    readonly store: ObjectStore,
    readonly key: (i: number) => string,
  ) {}

  async add(bytes: Uint8Array): Promise<void> {
    let at = 0;
    while (at < bytes.length) {
      const take = Math.min(bytes.length - at, PART_BYTES - this.#size);
      // Copied: callers may reuse their buffers (a request body's chunks).
      this.#parts.push(bytes.slice(at, at + take));
      this.#size += take;
      at += take;
      if (this.#size === PART_BYTES) await this.flush();
    }
  }

  async flush(): Promise<void> {
    if (this.#size === 0) return;
    const part = joinParts(this.#parts, (n) => new Uint8Array(n));
    this.#parts = [];
    this.#size = 0;
    await this.store.put(this.key(this.count++), part);
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Int32Array([1]).buffer)[0] === 1;

/** int32 LE bytes of ids (a copy). */
function idsToBytes(ids: Int32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(ids.slice().buffer);
  const out = new Uint8Array(ids.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < ids.length; i++) view.setInt32(i * 4, ids[i], true);
  return out;
}

/**
 * Files in an object store, beside the snapshots:
 *   files/<tenant hex>/<id>/meta.json     StoredFile, written last (a file exists once it is there)
 *   files/<tenant hex>/<id>/text.<i>      UTF-8 as uploaded, parts of PART_BYTES
 *   files/<tenant hex>/<id>/ids.<i>       token ids, int32 LE, (n,), parts of PART_BYTES
 * An older version wrote one `text` object (and an `ids` object without the splice data, ignored):
 * such a file gets ids.<i> on first use (setIds). The tenant is hex-encoded so any tenant id is a
 * valid key segment.
 */
export class ObjectFileStore implements FileStore {
  constructor(readonly store: ObjectStore) {}

  #prefix(tenant: string): string {
    return `files/${toHex(new TextEncoder().encode(tenant))}/`;
  }

  #key(tenant: string, id: string, part: string): string | null {
    // Ids are ours ("file-" + hex); anything else cannot exist and must not reach the store as a key.
    return /^file-[0-9a-f]{8,64}$/.test(id) ? `${this.#prefix(tenant)}${id}/${part}` : null;
  }

  #parts(tenant: string, id: string, kind: "text" | "ids"): PartWriter {
    return new PartWriter(this.store, (i) => this.#key(tenant, id, `${kind}.${i}`)!);
  }

  async #putMeta(meta: StoredFile): Promise<void> {
    await this.store.put(
      this.#key(meta.tenant, meta.id, "meta.json")!,
      new TextEncoder().encode(JSON.stringify(meta)),
    );
  }

  create(tenant: string, id: string): FileWriter {
    if (!this.#key(tenant, id, "meta.json")) throw new Error(`invalid file id '${id}'`);
    const text = this.#parts(tenant, id, "text");
    const ids = this.#parts(tenant, id, "ids");
    return {
      text: (bytes) => text.add(bytes),
      ids: (part) => ids.add(idsToBytes(part)),
      commit: async (meta) => {
        await text.flush();
        await ids.flush();
        const done = { ...meta, textParts: text.count, idsParts: ids.count };
        await this.#putMeta(done);
        return done;
      },
      abort: async () => {
        for (let i = 0; i < text.count; i++) await this.store.delete(text.key(i));
        for (let i = 0; i < ids.count; i++) await this.store.delete(ids.key(i));
      },
    };
  }

  async get(tenant: string, id: string): Promise<StoredFile | null> {
    const key = this.#key(tenant, id, "meta.json");
    if (!key) return null;
    try {
      return JSON.parse(new TextDecoder().decode(await this.store.get(key))) as StoredFile;
    } catch (err) {
      if ((err as { code?: string }).code === "not_found") return null;
      throw err;
    }
  }

  async #read(f: StoredFile, kind: "text" | "ids", count: number): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    for (let i = 0; i < count; i++)
      parts.push(await this.store.get(this.#key(f.tenant, f.id, `${kind}.${i}`)!));
    return joinParts(parts, (n) => new Uint8Array(n));
  }

  async ids(f: StoredFile): Promise<Int32Array | null> {
    if (f.idsParts === undefined) return null;
    const raw = await this.#read(f, "ids", f.idsParts);
    // Little-endian hosts (all that run this) copy the bytes as they are: a chat naming a 4M-token
    // file spends no 4M-step loop on the event loop.
    if (LITTLE_ENDIAN) return new Int32Array(raw.slice().buffer, 0, raw.byteLength / 4);
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const ids = new Int32Array(raw.byteLength / 4);
    for (let i = 0; i < ids.length; i++) ids[i] = view.getInt32(i * 4, true);
    return ids;
  }

  async text(f: StoredFile): Promise<Uint8Array> {
    if (f.textParts === undefined) return this.store.get(this.#key(f.tenant, f.id, "text")!);
    return this.#read(f, "text", f.textParts);
  }

  async setIds(f: StoredFile, ids: Int32Array, edges: FileEdges | null): Promise<StoredFile> {
    const parts = this.#parts(f.tenant, f.id, "ids");
    await parts.add(idsToBytes(ids));
    await parts.flush();
    const done = { ...f, tokens: ids.length, idsParts: parts.count, edges };
    await this.#putMeta(done);
    return done;
  }

  async list(tenant: string): Promise<StoredFile[]> {
    const out: StoredFile[] = [];
    for await (const o of this.store.list(this.#prefix(tenant))) {
      if (!o.key.endsWith("/meta.json")) continue;
      const id = o.key.slice(this.#prefix(tenant).length).split("/")[0];
      const meta = await this.get(tenant, id);
      if (meta) out.push(meta);
    }
    return out.sort((a, b) => a.createdAt - b.createdAt);
  }

  async delete(tenant: string, id: string): Promise<boolean> {
    if (!(await this.get(tenant, id))) return false;
    // meta.json first: from then on the file is absent, whatever else is left.
    await this.store.delete(this.#key(tenant, id, "meta.json")!);
    const keys: string[] = [];
    for await (const o of this.store.list(`${this.#prefix(tenant)}${id}/`)) keys.push(o.key);
    for (const key of keys) await this.store.delete(key);
    return true;
  }
}

/** Objects in a Map: files in memory (tests, Workers without a bucket), per instance. */
export class MemoryObjectStore implements ObjectStore {
  readonly #objects = new Map<string, Uint8Array>();
  async put(key: string, bytes: Uint8Array): Promise<void> {
    this.#objects.set(key, bytes);
  }
  async get(key: string): Promise<Uint8Array> {
    const o = this.#objects.get(key);
    if (!o) throw new NotFoundError(`no object ${key}`);
    return o;
  }
  async delete(key: string): Promise<void> {
    this.#objects.delete(key);
  }
  async *list(prefix: string): AsyncIterable<{ key: string }> {
    for (const key of [...this.#objects.keys()]) if (key.startsWith(prefix)) yield { key };
  }
}

export class MemoryFileStore extends ObjectFileStore {
  constructor() {
    super(new MemoryObjectStore());
  }
}
