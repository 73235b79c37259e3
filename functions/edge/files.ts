// Uploaded documents (POST /v1/files), per tenant. A file is decoded and tokenized once at upload;
// requests that reference it by id reuse the stored ids. A tenant sees only its own files: every
// key is prefixed by the tenant id, which comes from the API key, never from the request.
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
