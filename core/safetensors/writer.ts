// Writes safetensors files byte for byte as Hugging Face does (safetensors' `serialize` and
// transformers' save_pretrained sharding), so a generated model is indistinguishable in layout from
// a downloaded one:
// - within a file, tensors are ordered by dtype (wider first: F32, BF16, F16) then by name, and the
//   data offsets follow that order with no gaps;
// - the header is compact JSON, `__metadata__` ({"format":"pt"}) first, then the tensors in data
//   order with keys dtype, shape, data_offsets; it is padded with spaces to a multiple of 8 bytes;
// - shards are named model-00001-of-0000N.safetensors; the index is json.dumps(indent=2,
//   sort_keys=True) + "\n" of {"metadata": {"total_size": data bytes}, "weight_map": {...}}.

import type { WeightDtype } from "../model/config-types.ts";
import { dtypeBytes, safetensorsDtypeName } from "./dtype.ts";

export interface TensorSpec {
  name: string;
  dtype: WeightDtype;
  shape: number[];
}

export function tensorBytes(t: TensorSpec): number {
  return t.shape.reduce((a, d) => a * d, 1) * dtypeBytes(t.dtype);
}

const DTYPE_RANK: Record<WeightDtype, number> = { f32: 2, bf16: 1, f16: 0 };

/** Data order inside one safetensors file, as the safetensors library lays it out. */
export function fileOrder(tensors: TensorSpec[]): TensorSpec[] {
  return [...tensors].sort(
    (a, b) =>
      DTYPE_RANK[b.dtype] - DTYPE_RANK[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );
}

/**
 * The 8-byte length plus padded JSON header for `tensors` laid out in the given order.
 * Callers pass `fileOrder(tensors)` to match Hugging Face.
 */
export function encodeHeader(
  ordered: TensorSpec[],
  metadata: Record<string, string> | null = { format: "pt" },
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let off = 0;
  for (const t of ordered) {
    const n = tensorBytes(t);
    header[t.name] = {
      dtype: safetensorsDtypeName(t.dtype),
      shape: t.shape,
      data_offsets: [off, off + n],
    };
    off += n;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) {
    const padded = new Uint8Array(json.length + pad).fill(0x20);
    padded.set(json);
    json = padded;
  }
  const out = new Uint8Array(8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

/**
 * One safetensors file as a stream of byte chunks: the header, then each tensor's bytes from
 * `data` (called once per tensor, in data order, so only one tensor is in memory at a time).
 */
export async function* safetensorsChunks(
  ordered: TensorSpec[],
  data: (t: TensorSpec) => Promise<Uint8Array> | Uint8Array,
  metadata: Record<string, string> | null = { format: "pt" },
): AsyncGenerator<Uint8Array> {
  yield encodeHeader(ordered, metadata);
  for (const t of ordered) {
    const bytes = await data(t);
    if (bytes.byteLength !== tensorBytes(t)) {
      throw new Error(
        `assertion failed: ${t.name}: ${bytes.byteLength} bytes, want ${tensorBytes(t)}`,
      );
    }
    yield bytes;
  }
}

export function shardName(i: number, n: number): string {
  const p = (x: number) => String(x).padStart(5, "0");
  return `model-${p(i + 1)}-of-${p(n)}.safetensors`;
}

export interface ShardPlan {
  file: string;
  /** In data order within the file. */
  tensors: TensorSpec[];
}

/**
 * Splits `tensors` (in state-dict order) into `shards` contiguous, non-empty groups of roughly equal
 * bytes, as transformers' max_shard_size splitting does in state-dict order. One shard gives the
 * single `model.safetensors`.
 */
export function planShards(tensors: TensorSpec[], shards: number): ShardPlan[] {
  if (!Number.isInteger(shards) || shards < 1 || shards > tensors.length) {
    throw new RangeError(`shards must be 1..${tensors.length}, got ${shards}`);
  }
  if (shards === 1) return [{ file: "model.safetensors", tensors: fileOrder(tensors) }];
  const total = tensors.reduce((a, t) => a + tensorBytes(t), 0);
  const groups: TensorSpec[][] = [[]];
  let done = 0;
  for (let i = 0; i < tensors.length; i++) {
    const k = groups.length - 1;
    // Move on when this shard has reached its share of bytes, or when the tensors left are just
    // enough to give every later shard one.
    const later = shards - 1 - k;
    const mustMove = later > 0 && groups[k].length > 0 && tensors.length - i === later;
    const full = later > 0 && groups[k].length > 0 && done >= (total * (k + 1)) / shards;
    if (mustMove || full) groups.push([]);
    groups[groups.length - 1].push(tensors[i]);
    done += tensorBytes(tensors[i]);
  }
  return groups.map((g, i) => ({ file: shardName(i, shards), tensors: fileOrder(g) }));
}

/** `model.safetensors.index.json` text for a sharded plan. */
export function indexJson(plans: ShardPlan[]): string {
  const weightMap: Record<string, string> = {};
  const entries: [string, string][] = [];
  let total = 0;
  for (const p of plans) {
    for (const t of p.tensors) {
      entries.push([t.name, p.file]);
      total += tensorBytes(t);
    }
  }
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  for (const [k, v] of entries) weightMap[k] = v;
  return `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`;
}
