// fp8-e4m3 KV payloads (layout in ./layout.ts) for runtimes whose cache is f32 or bf16: they
// import an fp8 payload by dequantising it here to an f32 payload, then take their f32 path.
// e4m3 is the OCP "fn" variant: 4 exponent bits (bias 7), 3 mantissa bits, max 448, no infinity,
// 0x7f / 0xff are NaN.

import { assert } from "../errors.ts";
import { FP8_BLOCK_POSITIONS, fp8ScaleBlocks, type KvLayout, kvPayloadBytes } from "./layout.ts";

/** Every e4m3 byte's value (native/src/dtype.h fp8_e4m3_to_f32). */
const E4M3 = (() => {
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const exp = (b >> 3) & 15;
    const man = b & 7;
    const v =
      exp === 15 && man === 7
        ? Number.NaN
        : exp === 0
          ? man * 2 ** -9
          : (8 + man) * 2 ** (exp - 10);
    t[b] = b & 0x80 ? -v : v;
  }
  return t;
})();

export function fp8E4m3ToF32(byte: number): number {
  return E4M3[byte & 0xff];
}

/** An fp8-e4m3 payload of `tokens` positions as the f32 payload of the same layout. */
export function fp8PayloadToF32(layout: KvLayout, tokens: number, bytes: Uint8Array): Uint8Array {
  assert(layout.dtype === "fp8-e4m3", "an fp8 layout");
  assert(bytes.byteLength === kvPayloadBytes(layout, tokens), "payload size matches the layout");
  const { layers, kvHeads, headDim } = layout;
  const blocks = fp8ScaleBlocks(tokens);
  const perHead = tokens * headDim;
  const out = new Float32Array(2 * layers * kvHeads * perHead);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  let o = 0;
  for (let slice = 0; slice < 2 * layers; slice++) {
    const scalesAt = at; // (kv_head, block) f32
    const valuesAt = at + kvHeads * blocks * 4; // (kv_head, pos, head_dim) fp8
    for (let h = 0; h < kvHeads; h++) {
      for (let b = 0; b < blocks; b++) {
        const scale = view.getFloat32(scalesAt + (h * blocks + b) * 4, true);
        const from = b * FP8_BLOCK_POSITIONS * headDim;
        const to = Math.min(tokens, (b + 1) * FP8_BLOCK_POSITIONS) * headDim;
        const src = valuesAt + h * perHead;
        for (let i = from; i < to; i++) out[o + i] = E4M3[bytes[src + i]] * scale;
      }
      o += perHead;
    }
    at = valuesAt + kvHeads * perHead;
  }
  return new Uint8Array(out.buffer);
}
