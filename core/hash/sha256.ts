// SHA-256, the one home for it in core (hex helpers beside it in hex.ts). Two shapes, named by
// how they take their input:
//
//   one-shot   `sha256(bytes)` -> Promise of 32 bytes, through WebCrypto so it runs in Node,
//              Workers, Lambda and browsers alike; `OneShotSha256` is its type, injected where
//              large payloads are hashed (snapshot bodies). On Node pass core/node/hasher.ts's
//              nodeSha256: with node:crypto a 64 MiB S3 save ran at 62 MB/s, with crypto.subtle
//              (which copies its input first) at 16 MB/s (docs/snapshot-format.md,
//              `npm run bench -- snapshots`). `sha256Sync(bytes)` is the synchronous one-shot.
//   streaming  `createSha256()` -> update(bytes) ... digest(), in plain TypeScript (FIPS 180-4),
//              for platforms whose only SHA-256 is WebCrypto's one-shot digest, which cannot
//              stream a 32 GB checkpoint. On Node, core/node/hasher.ts's createNodeSha256 is the
//              same shape over node:crypto (several times faster); both are tested to agree.

import { toHex } from "./hex.ts";

/** A one-shot SHA-256 function: 32 bytes out. */
export type OneShotSha256 = (data: Uint8Array) => Promise<Uint8Array>;

/** A streaming SHA-256: feed bytes with update, then read the digest once. */
export interface StreamingSha256 {
  update(bytes: Uint8Array): void;
  /** The 32-byte digest; the hasher is finished afterwards. */
  digest(): Uint8Array;
}

export type StreamingSha256Factory = () => StreamingSha256;

/**
 * TypeScript 5.9's DOM lib types WebCrypto inputs as ArrayBuffer-backed only; our buffers never
 * live in a SharedArrayBuffer, so this narrowing is sound.
 */
export function bufferSource(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return bytes as Uint8Array<ArrayBuffer>;
}

/** One-shot SHA-256 through WebCrypto. */
export const sha256: OneShotSha256 = async (data) =>
  new Uint8Array(await crypto.subtle.digest("SHA-256", bufferSource(data)));

/** Lower-case hex SHA-256 of a string's UTF-8 bytes (API key hashes). */
export async function sha256Hex(text: string): Promise<string> {
  return toHex(await sha256(new TextEncoder().encode(text)));
}

// biome-ignore format: the round constants read best as a table
const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

class PureSha256 implements StreamingSha256 {
  readonly #h = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  readonly #w = new Uint32Array(64);
  readonly #block = new Uint8Array(64);
  #fill = 0;
  #bytes = 0;
  #done = false;

  update(bytes: Uint8Array): void {
    if (this.#done) throw new Error("assertion failed: StreamingSha256.update after digest");
    this.#bytes += bytes.length;
    let i = 0;
    if (this.#fill > 0) {
      const take = Math.min(64 - this.#fill, bytes.length);
      this.#block.set(bytes.subarray(0, take), this.#fill);
      this.#fill += take;
      i = take;
      if (this.#fill < 64) return;
      this.#compress(this.#block, 0);
      this.#fill = 0;
    }
    for (; i + 64 <= bytes.length; i += 64) this.#compress(bytes, i);
    if (i < bytes.length) {
      this.#block.set(bytes.subarray(i), 0);
      this.#fill = bytes.length - i;
    }
  }

  /** The 32-byte digest; the hasher is finished afterwards. */
  digest(): Uint8Array {
    const bits = this.#bytes * 8;
    const tail = new Uint8Array(((this.#fill + 9 + 63) & ~63) - this.#fill);
    tail[0] = 0x80;
    const dv = new DataView(tail.buffer);
    dv.setUint32(tail.length - 8, Math.floor(bits / 2 ** 32));
    dv.setUint32(tail.length - 4, bits >>> 0);
    this.update(tail);
    this.#done = true;
    const out = new Uint8Array(32);
    const dv2 = new DataView(out.buffer);
    for (let i = 0; i < 8; i++) dv2.setUint32(4 * i, this.#h[i]);
    return out;
  }

  #compress(p: Uint8Array, at: number): void {
    const w = this.#w;
    for (let t = 0; t < 16; t++) {
      const j = at + t * 4;
      w[t] = (p[j] << 24) | (p[j + 1] << 16) | (p[j + 2] << 8) | p[j + 3];
    }
    for (let t = 16; t < 64; t++) {
      const a = w[t - 15];
      const b = w[t - 2];
      const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
      const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
      w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
    }
    const h = this.#h;
    let a = h[0];
    let b = h[1];
    let c = h[2];
    let d = h[3];
    let e = h[4];
    let f = h[5];
    let g = h[6];
    let hh = h[7];
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (hh + S1 + ch + K[t] + w[t]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      hh = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
  }
}

/** Streaming SHA-256 in plain TypeScript. */
export const createSha256: StreamingSha256Factory = () => new PureSha256();

/** One-shot SHA-256, synchronous (unlike WebCrypto's digest). */
export function sha256Sync(data: Uint8Array): Uint8Array {
  const h = createSha256();
  h.update(data);
  return h.digest();
}
