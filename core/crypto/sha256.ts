// SHA-256 through WebCrypto, so it runs in Node, Workers, Lambda and browsers alike. Callers that
// hash large buffers on Node may pass a faster digest: with node:crypto's createHash a 64 MiB S3
// save ran at 62 MB/s, with crypto.subtle (which copies its input first) at 16 MB/s
// (docs/snapshot-format.md, `npm run bench -- snapshots`).

/** A SHA-256 function: 32 bytes out. Injected where large payloads are hashed. */
export type Sha256 = (data: Uint8Array) => Promise<Uint8Array>;

/**
 * TypeScript 5.9's DOM lib types WebCrypto inputs as ArrayBuffer-backed only; our buffers never
 * live in a SharedArrayBuffer, so this narrowing is sound.
 */
export function bufferSource(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return bytes as Uint8Array<ArrayBuffer>;
}

export const subtleSha256: Sha256 = async (data) =>
  new Uint8Array(await crypto.subtle.digest("SHA-256", bufferSource(data)));

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

export function toHex(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += HEX[bytes[i]];
  return s;
}

/** Strict lowercase/uppercase hex decoding; null when `hex` is not even-length hex. */
export function fromHex(hex: string): Uint8Array | null {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) return null;
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Constant-time comparison of equal-length byte strings (false when lengths differ). */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}
