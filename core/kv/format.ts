// The KV snapshot object, format version 2 (spec: docs/snapshot-format.md). Version 1 objects
// (no fp8) are still read: v2 only gave offsets 32 and 36 their fp8 meaning.
//
//   object = header (256 bytes) || body (bodyBytes)
//   body   = payload (in the layout of ./layout.ts)                    when not encrypted
//          = AES-256-GCM(payload, aad = header[0, 192)) || 16-byte tag  when encrypted
//
// Header, all integers little-endian:
//   off size field
//     0    8 magic "ULKVSNAP"
//     8    2 format version (2; 1 is read too)
//    10    2 header bytes (256)
//    12    4 flags: bit 0 = encrypted; every other bit must be 0
//    16    1 dtype: 1 f32, 2 bf16, 3 f16, 4 fp8-e4m3 (v2 only)
//    17    1 payload layout: 1 = per layer K then V, each (kv_head, pos, head_dim)
//    18    2 reserved, 0
//    20    4 layers          24  4 KV heads          28  4 head_dim
//    32    4 fp8 scale bytes inside the payload (kvScaleBytes; 0 for other dtypes and in v1)
//    36    4 fp8 scale block, positions (64; 0 for other dtypes and in v1)
//    40    8 token start     48  8 token end (exclusive)
//    56    8 payload bytes   64  8 body bytes
//    72   12 AES-GCM nonce (zeros when not encrypted)
//    84    8 master key id (encrypted objects written since key ids: masterKeyId(); else zeros)
//    92    4 reserved, 0
//    96   32 model fingerprint (SHA-256)
//   128   32 chain key       160 32 previous chain key (zeros for the first chunk)
//   192   32 SHA-256 of the body as stored
//   224   32 SHA-256 of header[0, 224)
//
// Checksum choice: SHA-256, not CRC32C. It is native in every runtime through crypto.subtle (a CRC
// would be JavaScript), it has no known collisions so
// a corrupted or substituted object cannot pass by chance, and the header digest lets a reader
// validate the 256-byte header (one ranged GET) before fetching the body. Authenticity against a
// party that can write the bucket is AES-GCM's job (encryption on), not the checksum's.

import {
  GCM_NONCE_BYTES,
  GCM_TAG_BYTES,
  gcmOpen,
  gcmSeal,
  randomNonce,
} from "../crypto/tenant-key.ts";
import { assert, FormatError } from "../errors.ts";
import { bytesEqual, fromHex, toHex } from "../hash/hex.ts";
import { type OneShotSha256, sha256 as webSha256 } from "../hash/sha256.ts";
import {
  FP8_BLOCK_POSITIONS,
  type KvDtype,
  type KvLayout,
  kvPayloadBytes,
  kvScaleBytes,
} from "./layout.ts";

/** The version encodeSnapshot writes. */
export const SNAPSHOT_FORMAT_VERSION = 2;
/** Versions parseSnapshotHeader reads. */
const READ_VERSIONS = [1, 2];

export const SNAPSHOT_MAGIC = "ULKVSNAP";
export const SNAPSHOT_HEADER_BYTES = 256;
/** Header bytes covered by AES-GCM as additional authenticated data. */
export const SNAPSHOT_AAD_BYTES = 192;
const FLAG_ENCRYPTED = 1;
const PAYLOAD_LAYOUT_LAYER_KV = 1;
const DTYPE_CODES: Record<KvDtype, number> = { f32: 1, bf16: 2, f16: 3, "fp8-e4m3": 4 };
const DTYPE_BY_CODE = new Map(Object.entries(DTYPE_CODES).map(([k, v]) => [v, k as KvDtype]));
// Bounds that no real model reaches; they keep a hostile header from asking for absurd sizes.
const MAX_DIM = 1 << 16;

export interface SnapshotMeta {
  /** 64 hex chars: LoadedModel.fingerprint(). */
  modelFingerprint: string;
  layout: KvLayout;
  tokenStart: number;
  tokenEnd: number;
  /** 32 bytes (core/kv/chain-key.ts). */
  chainKey: Uint8Array;
  /** 32 bytes, or null for the first chunk. */
  previousKey: Uint8Array | null;
}

export interface SnapshotHeader extends SnapshotMeta {
  version: number;
  encrypted: boolean;
  payloadBytes: number;
  bodyBytes: number;
  nonce: Uint8Array;
  /** The master key id an encrypted object names, or null (plaintext, or written before ids). */
  keyId: Uint8Array | null;
  bodySha256: Uint8Array;
  /** The raw 256 header bytes (AAD is its first 192). */
  raw: Uint8Array;
}

function fingerprintBytes(fp: string): Uint8Array {
  const bytes = fromHex(fp);
  if (bytes === null || bytes.length !== 32) {
    throw new FormatError(
      `model fingerprint must be 64 hex chars (SHA-256), got '${fp.slice(0, 80)}'`,
    );
  }
  return bytes;
}

function readU64(view: DataView, at: number, what: string): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new FormatError(`snapshot ${what} is too large`);
  return Number(v);
}

function isZero(bytes: Uint8Array): boolean {
  return bytes.every((b) => b === 0);
}

/** Build a snapshot object; with `key` the body is encrypted. The payload is not modified. */
export async function encodeSnapshot(
  meta: SnapshotMeta,
  payload: Uint8Array,
  opts: {
    key?: CryptoKey;
    sha256?: OneShotSha256;
    nonce?: Uint8Array;
    /** Write into this buffer (exactly snapshotObjectBytes long) instead of a new one. */
    into?: Uint8Array;
    /** With `key`: the id of the master key it derives from (8 bytes, masterKeyId()). */
    keyId?: Uint8Array;
  } = {},
): Promise<Uint8Array> {
  const sha256 = opts.sha256 ?? webSha256;
  const { layout } = meta;
  const tokens = meta.tokenEnd - meta.tokenStart;
  assert(tokens > 0 && meta.tokenStart >= 0, "snapshot token range is non-empty");
  assert(payload.length === kvPayloadBytes(layout, tokens), "payload size matches the layout");
  assert(meta.chainKey.length === 32, "chain key is 32 bytes");
  assert(meta.previousKey === null || meta.previousKey.length === 32, "previous key is 32 bytes");
  const encrypted = opts.key !== undefined;
  const nonce = encrypted ? (opts.nonce ?? randomNonce()) : new Uint8Array(GCM_NONCE_BYTES);
  const bodyBytes = payload.length + (encrypted ? GCM_TAG_BYTES : 0);

  // Reusing `into` matters: a fresh 64 MiB buffer costs a page fault per 4 KiB on first touch,
  // which on a busy machine took longer than the copy and the hash together.
  assert(
    !opts.into || opts.into.length === SNAPSHOT_HEADER_BYTES + bodyBytes,
    "into has the object size",
  );
  const object = opts.into ?? new Uint8Array(SNAPSHOT_HEADER_BYTES + bodyBytes);
  object.fill(0, 0, SNAPSHOT_HEADER_BYTES);
  const header = object.subarray(0, SNAPSHOT_HEADER_BYTES);
  const view = new DataView(object.buffer, object.byteOffset, SNAPSHOT_HEADER_BYTES);
  header.set(new TextEncoder().encode(SNAPSHOT_MAGIC), 0);
  view.setUint16(8, SNAPSHOT_FORMAT_VERSION, true);
  view.setUint16(10, SNAPSHOT_HEADER_BYTES, true);
  view.setUint32(12, encrypted ? FLAG_ENCRYPTED : 0, true);
  view.setUint8(16, DTYPE_CODES[layout.dtype]);
  view.setUint8(17, PAYLOAD_LAYOUT_LAYER_KV);
  view.setUint32(20, layout.layers, true);
  view.setUint32(24, layout.kvHeads, true);
  view.setUint32(28, layout.headDim, true);
  const fp8 = layout.dtype === "fp8-e4m3";
  view.setUint32(32, kvScaleBytes(layout, tokens), true);
  view.setUint32(36, fp8 ? FP8_BLOCK_POSITIONS : 0, true);
  view.setBigUint64(40, BigInt(meta.tokenStart), true);
  view.setBigUint64(48, BigInt(meta.tokenEnd), true);
  view.setBigUint64(56, BigInt(payload.length), true);
  view.setBigUint64(64, BigInt(bodyBytes), true);
  header.set(nonce, 72);
  if (encrypted && opts.keyId) {
    assert(opts.keyId.length === KEY_ID_BYTES, "key id is 8 bytes");
    header.set(opts.keyId, 84);
  }
  header.set(fingerprintBytes(meta.modelFingerprint), 96);
  header.set(meta.chainKey, 128);
  if (meta.previousKey) header.set(meta.previousKey, 160);

  const body = object.subarray(SNAPSHOT_HEADER_BYTES);
  if (opts.key) {
    const aad = header.slice(0, SNAPSHOT_AAD_BYTES);
    body.set(await gcmSeal(opts.key, nonce, payload, aad));
  } else {
    body.set(payload);
  }
  header.set(await sha256(body), 192);
  header.set(await sha256(header.subarray(0, 224)), 224);
  return object;
}

/** Size of the object that encodeSnapshot makes for a payload of `payloadBytes`. */
export function snapshotObjectBytes(payloadBytes: number, encrypted: boolean): number {
  return SNAPSHOT_HEADER_BYTES + payloadBytes + (encrypted ? GCM_TAG_BYTES : 0);
}

/**
 * Parse and check the 256-byte header on its own: magic, version, sizes, field ranges, reserved
 * bytes and the header digest. Throws FormatError on anything off.
 */
export async function parseSnapshotHeader(
  bytes: Uint8Array,
  sha256?: OneShotSha256,
): Promise<SnapshotHeader> {
  if (bytes.length < SNAPSHOT_HEADER_BYTES) {
    throw new FormatError(`snapshot is ${bytes.length} bytes, shorter than its 256-byte header`);
  }
  const raw = bytes.slice(0, SNAPSHOT_HEADER_BYTES);
  const view = new DataView(raw.buffer);
  if (new TextDecoder().decode(raw.subarray(0, 8)) !== SNAPSHOT_MAGIC) {
    throw new FormatError("not a KV snapshot (bad magic)");
  }
  if (view.getUint16(10, true) !== SNAPSHOT_HEADER_BYTES) {
    throw new FormatError("snapshot header size is not 256");
  }
  const digest = await (sha256 ?? webSha256)(raw.subarray(0, 224));
  if (!bytesEqual(digest, raw.subarray(224, 256))) {
    throw new FormatError("snapshot header checksum mismatch");
  }
  // The header is intact from here on. What this build does not know (a newer version, flag, dtype,
  // layout or scale block) was written by a newer build: not damage, so UnreadableError, and the
  // cache leaves it in place instead of quarantining a newer instance's work.
  const version = view.getUint16(8, true);
  if (!READ_VERSIONS.includes(version)) {
    throw new UnreadableError(
      `snapshot format version ${version} is not supported (this build reads ${READ_VERSIONS.join(", ")})`,
    );
  }
  const flags = view.getUint32(12, true);
  if ((flags & ~FLAG_ENCRYPTED) !== 0) throw new UnreadableError(`unknown snapshot flags ${flags}`);
  const encrypted = (flags & FLAG_ENCRYPTED) !== 0;
  const dtype = DTYPE_BY_CODE.get(view.getUint8(16));
  if (dtype === undefined) throw new UnreadableError(`unknown KV dtype code ${view.getUint8(16)}`);
  if (dtype === "fp8-e4m3" && version < 2) {
    throw new FormatError("fp8-e4m3 snapshots need format v2 (v1 has no scales)");
  }
  if (view.getUint8(17) !== PAYLOAD_LAYOUT_LAYER_KV) {
    throw new UnreadableError(`unknown payload layout code ${view.getUint8(17)}`);
  }
  if (view.getUint16(18, true) !== 0 || !isZero(raw.subarray(92, 96))) {
    throw new FormatError("snapshot reserved fields are not zero");
  }
  const scaleBytes = view.getUint32(32, true);
  const scaleBlock = view.getUint32(36, true);
  if (dtype !== "fp8-e4m3" && (scaleBytes !== 0 || scaleBlock !== 0)) {
    throw new FormatError(`a ${dtype} snapshot carries fp8 scale fields`);
  }
  if (dtype === "fp8-e4m3" && scaleBlock !== FP8_BLOCK_POSITIONS) {
    throw new UnreadableError(
      `fp8 scale blocks of ${scaleBlock} positions are not supported (this build uses ${FP8_BLOCK_POSITIONS})`,
    );
  }
  const layout: KvLayout = {
    layers: view.getUint32(20, true),
    kvHeads: view.getUint32(24, true),
    headDim: view.getUint32(28, true),
    dtype,
  };
  for (const [name, v] of Object.entries(layout)) {
    if (typeof v === "number" && (v < 1 || v > MAX_DIM)) {
      throw new FormatError(`snapshot ${name} ${v} is out of range`);
    }
  }
  const tokenStart = readU64(view, 40, "token start");
  const tokenEnd = readU64(view, 48, "token end");
  if (tokenEnd <= tokenStart) throw new FormatError("snapshot token range is empty");
  const payloadBytes = readU64(view, 56, "payload size");
  const bodyBytes = readU64(view, 64, "body size");
  if (scaleBytes !== kvScaleBytes(layout, tokenEnd - tokenStart)) {
    throw new FormatError("snapshot fp8 scale size does not match its layout and token range");
  }
  if (payloadBytes !== kvPayloadBytes(layout, tokenEnd - tokenStart)) {
    throw new FormatError("snapshot payload size does not match its layout and token range");
  }
  if (bodyBytes !== payloadBytes + (encrypted ? GCM_TAG_BYTES : 0)) {
    throw new FormatError("snapshot body size does not match its payload size");
  }
  const nonce = raw.slice(72, 84);
  if (!encrypted && !isZero(nonce)) throw new FormatError("unencrypted snapshot carries a nonce");
  const keyId = raw.slice(84, 92);
  if (!encrypted && !isZero(keyId)) throw new FormatError("unencrypted snapshot carries a key id");
  const previous = raw.slice(160, 192);
  return {
    version,
    encrypted,
    layout,
    tokenStart,
    tokenEnd,
    payloadBytes,
    bodyBytes,
    nonce,
    keyId: isZero(keyId) ? null : keyId,
    modelFingerprint: toHex(raw.subarray(96, 128)),
    chainKey: raw.slice(128, 160),
    previousKey: isZero(previous) ? null : previous,
    bodySha256: raw.slice(192, 224),
    raw,
  };
}

/** A key a reader holds: a tenant key and the id of the master key it derives from. */
export interface SnapshotKey {
  /** masterKeyId() of the master key (8 bytes), or null to try it on any encrypted object. */
  id: Uint8Array | null;
  key: CryptoKey;
}

/**
 * Check a whole object (header and body) and return its payload, decrypting it when encrypted with
 * the key among `keys` whose id the header names (every key for an object without an id; `key` is
 * one key with no id). Throws:
 *   UnreadableError  intact, but not readable in this configuration: encrypted and no key here,
 *                    sealed under a master key this reader does not hold, or plaintext where
 *                    encryption is required. Not evidence of damage: leave the object alone.
 *   DecryptError     intact checksums, but the AES-GCM tag fails under the key the object names:
 *                    tampered (or a key id collision, 2^-64).
 *   FormatError      anything else off: size, checksum, header fields.
 */
export async function decodeSnapshot(
  object: Uint8Array,
  opts: { key?: CryptoKey; keys?: SnapshotKey[]; sha256?: OneShotSha256 } = {},
): Promise<{ header: SnapshotHeader; payload: Uint8Array }> {
  const sha256 = opts.sha256 ?? webSha256;
  const header = await parseSnapshotHeader(object, sha256);
  if (object.length !== SNAPSHOT_HEADER_BYTES + header.bodyBytes) {
    throw new FormatError(
      `snapshot is ${object.length} bytes, header says ${SNAPSHOT_HEADER_BYTES + header.bodyBytes}`,
    );
  }
  const body = object.subarray(SNAPSHOT_HEADER_BYTES);
  if (!bytesEqual(await sha256(body), header.bodySha256)) {
    throw new FormatError("snapshot body checksum mismatch");
  }
  const keys = [...(opts.keys ?? []), ...(opts.key ? [{ id: null, key: opts.key }] : [])];
  if (!header.encrypted) {
    if (keys.length)
      throw new UnreadableError("snapshot is not encrypted but encryption is required");
    return { header, payload: body };
  }
  if (!keys.length) throw new UnreadableError("snapshot is encrypted and no key is configured");
  const named = header.keyId;
  const candidates = keys.filter((k) => !named || !k.id || bytesEqual(k.id, named));
  if (!candidates.length) {
    throw new UnreadableError(
      `snapshot is sealed under master key ${toHex(named!)}, which this server does not hold`,
    );
  }
  const aad = header.raw.subarray(0, SNAPSHOT_AAD_BYTES);
  for (const k of candidates) {
    const payload = await gcmOpen(k.key, header.nonce, body, aad);
    if (payload !== null) return { header, payload };
  }
  // With an id, the key it names failed: tampered. Without one (an object from before key ids,
  // tried under every key), a wrong key and tampering look the same: not readable here.
  if (named || (candidates.length === 1 && !candidates[0].id)) {
    throw new DecryptError("snapshot does not decrypt with this tenant's key");
  }
  throw new UnreadableError("snapshot opens with none of the configured keys");
}

/** Intact, but not readable with this reader's keys (or lack of them); see decodeSnapshot. */
export class UnreadableError extends FormatError {}

/** The object is intact (checksums pass) but its AES-GCM tag fails under the key it names. */
export class DecryptError extends FormatError {}

/** Bytes of a master key id in the header. */
export const KEY_ID_BYTES = 8;
