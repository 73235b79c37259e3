// The safetensors header: 8 bytes little-endian u64 N, then N bytes of UTF-8 JSON
//   { "__metadata__": {str: str}?, "<name>": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]} }
// then the data region; offsets are relative to its start (byte 8 + N). Reading the header costs two
// small reads, never the weights. Every check that the format allows is made here, so a tensor read
// later cannot run off the file or into its neighbour.

import { FormatError } from "../errors.ts";
import type { ByteSource } from "../io/byte-source.ts";
import type { WeightDtype } from "../model/config-types.ts";
import { dtypeBytes, SAFETENSORS_DTYPES } from "./dtype.ts";

/** The safetensors library refuses headers above 100 MB; so do we. */
export const MAX_HEADER_BYTES = 100_000_000;

export interface SafetensorsEntry {
  /** HF tensor name. */
  name: string;
  dtype: WeightDtype;
  /** Row-major shape as stored. */
  shape: number[];
  /** Absolute byte offset of the first element in the file. */
  begin: number;
  byteLength: number;
}

export interface SafetensorsHeader {
  /** The source's name (file path or URL), for messages. */
  file: string;
  /** Bytes before the data region: 8 + JSON length. */
  dataStart: number;
  /** File size in bytes. */
  fileSize: number;
  metadata: Record<string, string> | null;
  /** In file order (ascending offset). */
  tensors: SafetensorsEntry[];
}

function fail(file: string, what: string): never {
  throw new FormatError(`${file}: ${what}`);
}

function isCount(x: unknown): x is number {
  return typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
}

export async function readSafetensorsHeader(source: ByteSource): Promise<SafetensorsHeader> {
  const file = source.name;
  const fileSize = await source.size();
  if (fileSize < 8)
    fail(file, `truncated file: ${fileSize} bytes, less than the 8-byte header length`);
  const lenBytes = await source.read(0, 8);
  const dv = new DataView(lenBytes.buffer, lenBytes.byteOffset, 8);
  const lo = dv.getUint32(0, true);
  const hi = dv.getUint32(4, true);
  const headerLen = hi * 2 ** 32 + lo;
  if (hi !== 0 || headerLen > MAX_HEADER_BYTES) {
    fail(file, `header length ${headerLen} is absurd (limit ${MAX_HEADER_BYTES} bytes)`);
  }
  if (headerLen < 2) fail(file, `header length ${headerLen} is too small for a JSON object`);
  if (8 + headerLen > fileSize) {
    fail(file, `truncated file: header claims ${headerLen} bytes but the file has ${fileSize - 8}`);
  }
  const raw = await source.read(8, headerLen);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch (err) {
    fail(file, `malformed header JSON (${(err as Error).message.split("\n")[0]})`);
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    fail(file, "malformed header: not a JSON object");
  }
  const dataStart = 8 + headerLen;
  const dataSize = fileSize - dataStart;
  let metadata: Record<string, string> | null = null;
  const tensors: SafetensorsEntry[] = [];
  for (const [name, value] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        fail(file, "malformed header: __metadata__ is not an object");
      }
      for (const [k, v] of Object.entries(value)) {
        if (typeof v !== "string")
          fail(file, `malformed header: __metadata__.${k} is not a string`);
      }
      metadata = value as Record<string, string>;
      continue;
    }
    const where = `tensor ${name}`;
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      fail(file, `${where}: malformed header entry (not an object)`);
    }
    const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
    if (typeof dtype !== "string") fail(file, `${where}: malformed header entry (no dtype)`);
    const ours = SAFETENSORS_DTYPES[dtype];
    if (!ours)
      fail(file, `${where}: unknown or unsupported dtype ${dtype} (want F32, BF16 or F16)`);
    if (!Array.isArray(shape) || !shape.every(isCount)) {
      fail(file, `${where}: malformed shape ${JSON.stringify(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
      fail(file, `${where}: malformed data_offsets ${JSON.stringify(offsets)}`);
    }
    const [b, e] = offsets as number[];
    const numel = (shape as number[]).reduce((a, d) => a * d, 1);
    const want = numel * dtypeBytes(ours);
    if (e < b) fail(file, `${where}: data_offsets [${b}, ${e}] end before they begin`);
    if (e - b !== want) {
      fail(
        file,
        `${where}: data_offsets [${b}, ${e}] hold ${e - b} bytes but ${dtype} ${JSON.stringify(shape)} needs ${want}`,
      );
    }
    if (e > dataSize) {
      fail(
        file,
        `${where}: truncated file or offsets past the end: data_offsets end at ${e} but the data region has ${dataSize} bytes`,
      );
    }
    tensors.push({
      name,
      dtype: ours,
      shape: shape as number[],
      begin: dataStart + b,
      byteLength: e - b,
    });
  }
  tensors.sort((x, y) => x.begin - y.begin || x.byteLength - y.byteLength);
  for (let i = 1; i < tensors.length; i++) {
    const prev = tensors[i - 1];
    const cur = tensors[i];
    if (cur.begin < prev.begin + prev.byteLength && cur.byteLength > 0 && prev.byteLength > 0) {
      fail(file, `tensor ${cur.name}: data overlaps tensor ${prev.name}`);
    }
  }
  return { file, dataStart, fileSize, metadata, tensors };
}
