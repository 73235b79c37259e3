// Hex and byte-string helpers (core/hash/sha256.ts is the SHA-256 beside them).

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

/** Constant-time equality of two hex strings' bytes (false when either is not hex). */
export function timingSafeEqualHex(a: string, b: string): boolean {
  const x = fromHex(a);
  const y = fromHex(b);
  return x !== null && y !== null && bytesEqual(x, y);
}
