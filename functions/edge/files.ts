// Uploaded documents (POST /v1/files), per tenant. A file is decoded and tokenized once at upload;
// requests that reference it by id reuse the stored ids. A tenant sees only its own files: every
// key is prefixed by the tenant id, which comes from the API key, never from the request.
import { toHex } from "../../core/crypto/sha256.ts";
import { NotFoundHttpError } from "../platform/http-errors.ts";

export interface StoredFile {
  id: string;
  tenant: string;
  filename: string;
  purpose: string;
  bytes: number;
  createdAt: number;
  /** Token count of the text, special-token matching off. */
  tokens: number;
}

export interface FileRecord extends StoredFile {
  text: string;
  ids: Int32Array;
}

/** Where files live: memory (tests, Workers without a bucket) or a SnapshotStore-backed adapter. */
export interface FileStore {
  put(record: FileRecord): Promise<void>;
  /** null when absent OR owned by another tenant (the two must be indistinguishable). */
  get(tenant: string, id: string): Promise<FileRecord | null>;
  list(tenant: string): Promise<StoredFile[]>;
  delete(tenant: string, id: string): Promise<boolean>;
}

export class MemoryFileStore implements FileStore {
  readonly #files = new Map<string, FileRecord>();
  async put(record: FileRecord): Promise<void> {
    this.#files.set(`${record.tenant}\u0000${record.id}`, record);
  }
  async get(tenant: string, id: string): Promise<FileRecord | null> {
    return this.#files.get(`${tenant}\u0000${id}`) ?? null;
  }
  async list(tenant: string): Promise<StoredFile[]> {
    return [...this.#files.values()]
      .filter((f) => f.tenant === tenant)
      .map(({ text: _t, ids: _i, ...meta }) => meta);
  }
  async delete(tenant: string, id: string): Promise<boolean> {
    return this.#files.delete(`${tenant}\u0000${id}`);
  }
}

export async function getFileOr404(
  store: FileStore,
  tenant: string,
  id: string,
  param: string | null = null,
): Promise<FileRecord> {
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

/**
 * Files in an object store, beside the snapshots: files/<tenant hex>/<id>/{meta.json,text,ids}.
 * The tenant is hex-encoded so any tenant id is a valid key segment; ids are int32 LE, (n,).
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

  async put(r: FileRecord): Promise<void> {
    const { text, ids, ...meta } = r;
    const ids8 = new Uint8Array(ids.length * 4);
    const view = new DataView(ids8.buffer);
    for (let i = 0; i < ids.length; i++) view.setInt32(i * 4, ids[i], true);
    await this.store.put(this.#key(r.tenant, r.id, "text")!, new TextEncoder().encode(text));
    await this.store.put(this.#key(r.tenant, r.id, "ids")!, ids8);
    // meta.json last: a file is listed only once all of it is stored.
    await this.store.put(
      this.#key(r.tenant, r.id, "meta.json")!,
      new TextEncoder().encode(JSON.stringify(meta)),
    );
  }

  async #meta(tenant: string, id: string): Promise<StoredFile | null> {
    const key = this.#key(tenant, id, "meta.json");
    if (!key) return null;
    try {
      return JSON.parse(new TextDecoder().decode(await this.store.get(key))) as StoredFile;
    } catch (err) {
      if ((err as { code?: string }).code === "not_found") return null;
      throw err;
    }
  }

  async get(tenant: string, id: string): Promise<FileRecord | null> {
    const meta = await this.#meta(tenant, id);
    if (!meta) return null;
    const text = new TextDecoder().decode(await this.store.get(this.#key(tenant, id, "text")!));
    const raw = await this.store.get(this.#key(tenant, id, "ids")!);
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const ids = new Int32Array(raw.byteLength / 4);
    for (let i = 0; i < ids.length; i++) ids[i] = view.getInt32(i * 4, true);
    return { ...meta, text, ids };
  }

  async list(tenant: string): Promise<StoredFile[]> {
    const out: StoredFile[] = [];
    for await (const o of this.store.list(this.#prefix(tenant))) {
      if (!o.key.endsWith("/meta.json")) continue;
      const id = o.key.slice(this.#prefix(tenant).length).split("/")[0];
      const meta = await this.#meta(tenant, id);
      if (meta) out.push(meta);
    }
    return out.sort((a, b) => a.createdAt - b.createdAt);
  }

  async delete(tenant: string, id: string): Promise<boolean> {
    if (!(await this.#meta(tenant, id))) return false;
    for (const part of ["meta.json", "text", "ids"])
      await this.store.delete(this.#key(tenant, id, part)!);
    return true;
  }
}
