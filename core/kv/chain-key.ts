// Chain keys: chunk i of a prompt is named by
//
//   key_i = SHA-256( lp("ultralong-kv-chain") || lp(u16 key version) || lp(model fingerprint)
//                  || lp(KV dtype) || lp(tenant salt) || lp(key_{i-1} or empty) || lp(tokens_i) )
//
// where lp(x) = u32 little-endian byte length of x, then x; tokens are int32 little-endian. Two
// prompts share key_i exactly when they share the model, dtype, tenant and the first (i+1) chunks
// of tokens. Length prefixes make the encoding injective (no two field lists hash the same bytes).
// The tenant salt must come from the server (the API key's tenant), never from the client: it is
// what keeps one tenant from ever hitting, or timing, another tenant's snapshots.

import { toBytes } from "../crypto/tenant-key.ts";
import { assert } from "../errors.ts";
import { toHex } from "../hash/hex.ts";
import { sha256 } from "../hash/sha256.ts";
import type { KvDtype } from "./layout.ts";

/**
 * The chain key's own version (1), not the object format's: format v2 added fp8 payloads without
 * changing what a chunk is, so v1 objects keep their keys and are still found and read. A change to
 * the key derivation or to what a chunk's KV means bumps this one.
 */
export const CHAIN_KEY_VERSION = 1;
const DOMAIN = new TextEncoder().encode("ultralong-kv-chain");

export interface ChainKeyContext {
  modelFingerprint: string;
  dtype: KvDtype;
  tenantSalt: string | Uint8Array;
}

function lengthPrefixed(fields: Uint8Array[]): Uint8Array {
  const total = fields.reduce((n, f) => n + 4 + f.length, 0);
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  let at = 0;
  for (const f of fields) {
    view.setUint32(at, f.length, true);
    out.set(f, at + 4);
    at += 4 + f.length;
  }
  return out;
}

function int32le(tokens: Int32Array): Uint8Array {
  const out = new Uint8Array(tokens.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < tokens.length; i++) view.setInt32(4 * i, tokens[i], true);
  return out;
}

/** key_i from key_{i-1} (null for the first chunk) and chunk i's token IDs. 32 bytes. */
export async function chainKey(
  ctx: ChainKeyContext,
  previous: Uint8Array | null,
  tokens: Int32Array,
): Promise<Uint8Array> {
  assert(previous === null || previous.length === 32, "previous chain key is 32 bytes");
  const version = new Uint8Array([CHAIN_KEY_VERSION & 0xff, CHAIN_KEY_VERSION >> 8]);
  const data = lengthPrefixed([
    DOMAIN,
    version,
    toBytes(ctx.modelFingerprint),
    toBytes(ctx.dtype),
    toBytes(ctx.tenantSalt),
    previous ?? new Uint8Array(0),
    int32le(tokens),
  ]);
  return sha256(data);
}

/** Keys of the first `chunks` whole chunks of `tokens` (chunk i = tokens[i*C, (i+1)*C)). */
export async function chainKeys(
  ctx: ChainKeyContext,
  tokens: Int32Array,
  chunkTokens: number,
  chunks: number,
): Promise<Uint8Array[]> {
  assert(chunks * chunkTokens <= tokens.length, "chain keys only for whole chunks");
  const keys: Uint8Array[] = [];
  let previous: Uint8Array | null = null;
  for (let i = 0; i < chunks; i++) {
    previous = await chainKey(
      ctx,
      previous,
      tokens.subarray(i * chunkTokens, (i + 1) * chunkTokens),
    );
    keys.push(previous);
  }
  return keys;
}

/**
 * A public, non-reversible tag for a tenant, used as a path segment so one tenant's snapshots can
 * be listed or removed (`ultralong snapshots rm --prefix`). 16 hex chars of SHA-256 over the salt.
 */
export async function tenantTag(tenantSalt: string | Uint8Array): Promise<string> {
  const data = lengthPrefixed([toBytes("ultralong-tenant-tag"), toBytes(tenantSalt)]);
  return toHex((await sha256(data)).subarray(0, 8));
}
