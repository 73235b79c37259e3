// A safetensors checkpoint in a model directory: one `model.safetensors`, or the shards named by
// `model.safetensors.index.json` (the layout transformers' save_pretrained writes). Opening reads
// headers only; tensors are read one at a time, in bounded chunks, through ByteSource ranges, so a
// 32 GB F32 checkpoint is never whole in memory (at most one tensor in the caller's dtype plus one
// chunk of raw bytes).
//
// Which file wins mirrors transformers' from_pretrained: `model.safetensors` when present, else the
// index. `pytorch_model.bin` is not read (pickle); such a directory is refused with a message.

import { FormatError, NotFoundError } from "../errors.ts";
import type { ByteSource, ModelFiles } from "../io/byte-source.ts";
import type { WeightDtype } from "../model/config-types.ts";
import type { TensorInfo } from "../model/weights.ts";
import { decodeTo16, decodeToF32, dtypeBytes } from "./dtype.ts";
import { readSafetensorsHeader, type SafetensorsEntry } from "./header.ts";

export const SINGLE_FILE = "model.safetensors";
export const INDEX_FILE = "model.safetensors.index.json";

/** Raw bytes are read in pieces of at most this size unless the source prefers another. */
const DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024;

/** A multiple of 4 bytes (every element size) and at least one element. */
function chunkSize(bytes: number): number {
  return Math.max(4, bytes - (bytes % 4));
}

export interface CheckpointTensor extends SafetensorsEntry {
  /** File name inside the model directory. */
  file: string;
  source: ByteSource;
}

export class Checkpoint {
  private constructor(
    /** Directory name, for messages. */
    readonly dir: string,
    /** Weight files in the order they are listed (index order, or the single file). */
    readonly files: string[],
    /** `model.safetensors.index.json` when sharded, else null. */
    readonly indexFile: string | null,
    private readonly byName: Map<string, CheckpointTensor>,
  ) {}

  /** Reads the index (if any) and every shard header; no weight bytes. */
  static async open(files: ModelFiles): Promise<Checkpoint> {
    const names = new Set(await files.list());
    if (names.has(SINGLE_FILE)) {
      const source = await files.open(SINGLE_FILE);
      const header = await readSafetensorsHeader(source);
      const byName = new Map<string, CheckpointTensor>();
      for (const t of header.tensors) byName.set(t.name, { ...t, file: SINGLE_FILE, source });
      return new Checkpoint(files.name, [SINGLE_FILE], null, byName);
    }
    if (names.has(INDEX_FILE)) return Checkpoint.openSharded(files, names);
    const other = [...names].find((n) => n.endsWith(".bin") || n.endsWith(".pth"));
    throw new NotFoundError(
      `${files.name}: no ${SINGLE_FILE} or ${INDEX_FILE}${other ? ` (found ${other}: only safetensors checkpoints are read)` : ""}`,
    );
  }

  private static async openSharded(files: ModelFiles, names: Set<string>): Promise<Checkpoint> {
    const indexPath = `${files.name}/${INDEX_FILE}`;
    let index: unknown;
    try {
      index = JSON.parse(await files.readText(INDEX_FILE));
    } catch (err) {
      throw new FormatError(
        `${indexPath}: malformed JSON (${(err as Error).message.split("\n")[0]})`,
      );
    }
    const map = (index as { weight_map?: unknown } | null)?.weight_map;
    if (map === null || typeof map !== "object" || Array.isArray(map)) {
      throw new FormatError(`${indexPath}: no weight_map object`);
    }
    const shardOf = new Map<string, string>();
    const shards: string[] = [];
    for (const [tensor, shard] of Object.entries(map as Record<string, unknown>)) {
      if (
        typeof shard !== "string" ||
        shard === "" ||
        /[/\\]/.test(shard) ||
        shard.startsWith(".")
      ) {
        throw new FormatError(
          `${indexPath}: tensor ${tensor}: bad shard name ${JSON.stringify(shard)}`,
        );
      }
      if (!names.has(shard)) {
        throw new FormatError(
          `${indexPath}: tensor ${tensor}: names shard ${shard}, which is missing`,
        );
      }
      if (!shards.includes(shard)) shards.push(shard);
      shardOf.set(tensor, shard);
    }
    const byName = new Map<string, CheckpointTensor>();
    for (const shard of shards) {
      const source = await files.open(shard);
      const header = await readSafetensorsHeader(source);
      for (const t of header.tensors) {
        const mapped = shardOf.get(t.name);
        if (mapped !== shard) {
          throw new FormatError(
            `${source.name}: tensor ${t.name}: ${mapped ? `the index puts it in ${mapped}` : "not in the index"}`,
          );
        }
        byName.set(t.name, { ...t, file: shard, source });
      }
    }
    for (const [tensor, shard] of shardOf) {
      if (!byName.has(tensor)) {
        throw new FormatError(
          `${files.name}/${shard}: tensor ${tensor}: named by the index but absent from the shard`,
        );
      }
    }
    return new Checkpoint(files.name, shards, INDEX_FILE, byName);
  }

  /** Every tensor, in file order (shard by shard, ascending offset). */
  entries(): CheckpointTensor[] {
    return [...this.byName.values()];
  }

  tensors(): TensorInfo[] {
    return this.entries().map(({ name, dtype, shape }) => ({ name, dtype, shape: [...shape] }));
  }

  entry(name: string): CheckpointTensor {
    const t = this.byName.get(name);
    if (!t) throw new NotFoundError(`${this.dir}: tensor ${name}: not in the checkpoint`);
    return t;
  }

  /**
   * The tensor's stored bytes in order, in pieces of `chunkBytes` (default: the source's preferred
   * read size, else 16 MiB), so neither the file nor the tensor is ever whole in memory.
   */
  async *rawChunks(name: string, chunkBytes?: number): AsyncGenerator<Uint8Array> {
    const t = this.entry(name);
    chunkBytes = chunkSize(chunkBytes ?? t.source.preferredReadBytes ?? DEFAULT_CHUNK_BYTES);
    for (let off = 0; off < t.byteLength; off += chunkBytes) {
      const len = Math.min(chunkBytes, t.byteLength - off);
      yield await t.source.read(t.begin + off, len);
    }
  }

  read(name: string, as: "f32"): Promise<Float32Array>;
  read(name: string, as: "bf16" | "f16"): Promise<Uint16Array>;
  read(name: string, as: WeightDtype): Promise<Float32Array | Uint16Array>;
  async read(name: string, as: WeightDtype): Promise<Float32Array | Uint16Array> {
    const t = this.entry(name);
    const n = t.byteLength / dtypeBytes(t.dtype);
    const out = as === "f32" ? new Float32Array(n) : new Uint16Array(n);
    let at = 0;
    for await (const chunk of this.rawChunks(name)) {
      if (as === "f32") decodeToF32(t.dtype, chunk, out as Float32Array, at);
      else decodeTo16(t.dtype, as, chunk, out as Uint16Array, at);
      at += chunk.byteLength / dtypeBytes(t.dtype);
    }
    return out;
  }
}
