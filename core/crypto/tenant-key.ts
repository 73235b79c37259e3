// Encryption at rest for KV snapshots: AES-256-GCM per object with a per-tenant key derived by
// HKDF-SHA256, all through WebCrypto (Node, Workers, Lambda, browsers).
//
//   tenant key = HKDF-SHA256(IKM = master key, salt = tenant salt, info = "ultralong kv snapshot v1")
//
// The tenant salt is the server-held per-tenant secret that also feeds the chain keys
// (core/kv/chain-key.ts). Deleting a tenant's salt (or rotating the master key) makes every
// snapshot of that tenant undecryptable: crypto-erasure without touching the store.
// Nonces are 96 random bits per object; at 2^32 objects per tenant key the collision risk stays
// below NIST SP 800-38D's 2^-32 bound. Content-addressed objects may be rewritten: each write draws
// a fresh nonce, so a key-nonce pair is never reused for different plaintext.

import { InvalidInputError } from "../errors.ts";
import { fromHex } from "../hash/hex.ts";
import { bufferSource as bs, sha256 } from "../hash/sha256.ts";

export const GCM_NONCE_BYTES = 12;
export const GCM_TAG_BYTES = 16;
const INFO = new TextEncoder().encode("ultralong kv snapshot v1");

export function toBytes(value: string | Uint8Array): Uint8Array {
  return typeof value === "string" ? new TextEncoder().encode(value) : value;
}

/** The per-tenant AES-256-GCM key (non-extractable). `master` must be at least 32 bytes. */
export async function deriveTenantKey(
  master: Uint8Array,
  tenantSalt: string | Uint8Array,
): Promise<CryptoKey> {
  if (master.length < 32) {
    throw new InvalidInputError(
      `snapshot master key must be at least 32 bytes, got ${master.length}`,
    );
  }
  const ikm = await crypto.subtle.importKey("raw", bs(master), "HKDF", false, ["deriveKey"]);
  return crypto.subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt: bs(toBytes(tenantSalt)), info: INFO },
    ikm,
    { name: "AES-GCM", length: 256 },
    false,
    ["encrypt", "decrypt"],
  );
}

/**
 * The id a snapshot header carries for the master key that sealed it (8 bytes): SHA-256 over a
 * label and the key. It lets a reader holding several keys (rotation) pick the right one, and tell
 * "sealed under a key I do not hold" (leave it) from "tampered under my key" (quarantine). It says
 * nothing about the key beyond equality: 64 bits of a hash of a 256-bit secret.
 */
export async function masterKeyId(master: Uint8Array): Promise<Uint8Array> {
  const label = new TextEncoder().encode("ultralong snapshot master key id v1\0");
  const data = new Uint8Array(label.length + master.length);
  data.set(label, 0);
  data.set(master, label.length);
  return (await sha256(data)).slice(0, 8);
}

export function randomNonce(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(GCM_NONCE_BYTES));
}

/** ciphertext || 16-byte tag. `aad` is authenticated, not encrypted. */
export async function gcmSeal(
  key: CryptoKey,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  aad: Uint8Array,
): Promise<Uint8Array> {
  const out = await crypto.subtle.encrypt(
    { name: "AES-GCM", iv: bs(nonce), additionalData: bs(aad), tagLength: 128 },
    key,
    bs(plaintext),
  );
  return new Uint8Array(out);
}

/** The plaintext, or null when the tag does not verify (wrong key, tampered bytes or AAD). */
export async function gcmOpen(
  key: CryptoKey,
  nonce: Uint8Array,
  sealed: Uint8Array,
  aad: Uint8Array,
): Promise<Uint8Array | null> {
  try {
    const out = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: bs(nonce), additionalData: bs(aad), tagLength: 128 },
      key,
      bs(sealed),
    );
    return new Uint8Array(out);
  } catch {
    return null;
  }
}

/** Parse a master key given as 64 hex chars or base64 of 32+ bytes (e.g. from an env var). */
export function parseMasterKey(text: string): Uint8Array {
  const t = text.trim();
  const hex = t.length >= 64 ? fromHex(t) : null;
  if (hex) return hex;
  let bin: string;
  try {
    bin = atob(t);
  } catch {
    throw new InvalidInputError("snapshot master key must be hex (64+ chars) or base64");
  }
  const out = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  if (out.length < 32) throw new InvalidInputError("snapshot master key must be at least 32 bytes");
  return out;
}
