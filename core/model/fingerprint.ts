// The model fingerprint (ARCHITECTURE.md, KV snapshots): a SHA-256 that changes whenever anything
// that shapes the KV of a token sequence changes: any weight byte, config.json, the tokenizer files,
// the rope settings. It is computed from content, never from names or shapes alone, and cached
// (keyed by every input file's size and mtime) so a 32 GB checkpoint is hashed once.
//
// Definition (docs/model-directory.md has the same, for other implementations). Every field is
// length-prefixed: u64 little-endian byte length, then the bytes; strings are UTF-8.
//   field("ultralong-model-fingerprint-v1")
//   field("config.json"), field(config.json bytes)
//   field("rope"), field(canonical JSON of the normalised rope settings, see ropeSettingsJson)
//   for name in TOKENIZER_FILES: field(name), field("present" | "absent"), field(bytes or empty)
//   field(u64 tensor count)
//   for each tensor, sorted by name (UTF-16 code unit order):
//     field(name), field(safetensors dtype, e.g. "BF16"), field(JSON shape, e.g. "[64,32]"),
//     field(SHA-256 of the tensor's stored bytes, 32 raw bytes)
// Tensors are hashed one by one as they lie in the files (shard by shard, ascending offset, in
// bounded chunks), and combined in name order, so the same weights give the same fingerprint
// however they are sharded, while a change of dtype (F32 vs BF16 files) changes it.

import { toHex } from "../hash/hex.ts";
import { createSha256, type StreamingSha256Factory } from "../hash/sha256.ts";
import type { ModelFiles } from "../io/byte-source.ts";
import type { Checkpoint } from "../safetensors/checkpoint.ts";
import { safetensorsDtypeName } from "../safetensors/dtype.ts";
import type { ModelConfig } from "./config-types.ts";

export const FINGERPRINT_VERSION = "ultralong-model-fingerprint-v1";
export const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
];

/** One input file's identity for the cache key. */
export interface FileStamp {
  name: string;
  size: number;
  mtimeMs: number;
}

/** Whether two stamp lists name the same files with the same sizes and mtimes, in order. */
export function sameStamps(a: FileStamp[], b: FileStamp[]): boolean {
  return (
    a.length === b.length &&
    a.every((x, i) => x.name === b[i].name && x.size === b[i].size && x.mtimeMs === b[i].mtimeMs)
  );
}

/** Where fingerprints are remembered. core/node/fingerprint-cache.ts keeps a file beside the model. */
export interface FingerprintCache {
  /** The cached fingerprint if it was stored under exactly these stamps, else null. */
  get(stamps: FileStamp[]): Promise<string | null>;
  put(stamps: FileStamp[], fingerprint: string): Promise<void>;
}

export interface FingerprintOptions {
  /** Default: the pure-TS SHA-256 (core/hash); Node passes node:crypto's. */
  hasher?: StreamingSha256Factory;
  cache?: FingerprintCache;
}

/** The normalised rope settings as canonical JSON (sorted keys, no whitespace). */
export function ropeSettingsJson(config: ModelConfig): string {
  const settings = {
    headDim: config.headDim,
    maxPositionEmbeddings: config.maxPositionEmbeddings,
    partialRotaryFactor: config.partialRotaryFactor,
    ropeScaling: config.ropeScaling,
    ropeTheta: config.ropeTheta,
  };
  return canonicalJson(settings);
}

function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v)
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`).join(",")}}`;
  }
  return JSON.stringify(v);
}

const utf8 = new TextEncoder();

function u64le(n: number): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(n), true);
  return out;
}

/** The files whose stamps key the cache: config, tokenizer files present, index, shards. */
export async function fingerprintStamps(
  files: ModelFiles,
  checkpoint: Checkpoint,
): Promise<FileStamp[]> {
  const present = new Set(await files.list());
  const names = ["config.json", ...TOKENIZER_FILES.filter((f) => present.has(f))];
  if (checkpoint.indexFile) names.push(checkpoint.indexFile);
  names.push(...checkpoint.files);
  const out: FileStamp[] = [];
  for (const name of names) out.push({ name, ...(await files.stat(name)) });
  return out;
}

/** Computes the fingerprint from content (no cache). */
export async function computeFingerprint(
  files: ModelFiles,
  config: ModelConfig,
  checkpoint: Checkpoint,
  hasher: StreamingSha256Factory = createSha256,
): Promise<string> {
  const h = hasher();
  const field = (bytes: Uint8Array | string) => {
    const b = typeof bytes === "string" ? utf8.encode(bytes) : bytes;
    h.update(u64le(b.byteLength));
    h.update(b);
  };
  field(FINGERPRINT_VERSION);
  field("config.json");
  field(await files.readBytes("config.json"));
  field("rope");
  field(ropeSettingsJson(config));
  const present = new Set(await files.list());
  for (const name of TOKENIZER_FILES) {
    field(name);
    const has = present.has(name);
    field(has ? "present" : "absent");
    field(has ? await files.readBytes(name) : new Uint8Array(0));
  }
  const digests = new Map<string, Uint8Array>();
  for (const t of checkpoint.entries()) {
    const th = hasher();
    for await (const chunk of checkpoint.rawChunks(t.name)) th.update(chunk);
    digests.set(t.name, th.digest());
  }
  const entries = checkpoint
    .entries()
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  field(u64le(entries.length));
  for (const t of entries) {
    field(t.name);
    field(safetensorsDtypeName(t.dtype));
    field(JSON.stringify(t.shape));
    field(digests.get(t.name)!);
  }
  return toHex(h.digest());
}

/** The fingerprint, from the cache when its stamps still match, else computed and stored. */
export async function modelFingerprint(
  files: ModelFiles,
  config: ModelConfig,
  checkpoint: Checkpoint,
  opts: FingerprintOptions = {},
): Promise<string> {
  const { cache, hasher } = opts;
  if (!cache) return computeFingerprint(files, config, checkpoint, hasher);
  const stamps = await fingerprintStamps(files, checkpoint);
  const hit = await cache.get(stamps);
  if (hit) return hit;
  const fp = await computeFingerprint(files, config, checkpoint, hasher);
  // A file that changed while we hashed would make the entry lie: store only if stamps held.
  if (sameStamps(await fingerprintStamps(files, checkpoint), stamps)) await cache.put(stamps, fp);
  return fp;
}
