// Byte-range access to files wherever they live: a local file (core/node), fetch, or S3. Weights are
// read tensor by tensor through this so a 32 GB F32 checkpoint is never whole in memory.

export interface ByteSource {
  /** For error messages: a file path or URL. */
  readonly name: string;
  /** Total size in bytes. */
  size(): Promise<number>;
  /** Exactly `length` bytes from `offset`; rejects (FormatError) if the source is shorter. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Optional: the read size this source serves best when streaming a large range (a local file:
   * ~1 MiB, which stays in cache while it is converted or hashed; S3 or fetch: many MiB, to amortise
   * request latency). Readers default to 16 MiB.
   */
  readonly preferredReadBytes?: number;
}

/** A model directory: config.json, tokenizer files, safetensors shards. */
export interface ModelFiles {
  /** For error messages: the directory path or URL. */
  readonly name: string;
  /** File names directly in the directory. */
  list(): Promise<string[]>;
  /** Whole small file as text (config.json, tokenizer.json); NotFoundError if absent. */
  readText(file: string): Promise<string>;
  /** Whole small file as bytes; NotFoundError if absent. */
  readBytes(file: string): Promise<Uint8Array>;
  /** Range access to a large file. */
  open(file: string): Promise<ByteSource>;
  /** Size and modification time, for cache keys (fingerprint). */
  stat(file: string): Promise<{ size: number; mtimeMs: number }>;
}
