// Writing new keys/values into the paged cache. Block b of one layer holds K (kv_head, bs, hd) at
// k + b * blockStride (V likewise from v), each element f32 or bf16 (round to nearest even): so
// one token costs 2 * layers * kvHeads * hd * (4 | 2) bytes, exactly the snapshot layout's bytes
// per token.
import { f32ToBf16 } from "./simd";

/**
 * src: token t, kv head h at src + (t * stride + h * hd) floats (the k or v part of the fused qkv
 * output) -> row (h, slot % bs) of block slot / bs, slot = slots[t] (i32).
 */
export function kv_store(
  src: usize, stride: i32, T: i32, nkv: i32, hd: i32,
  cache: usize, slots: usize, bs: i32, blockStride: usize, bf16: bool,
): void {
  for (let t = 0; t < T; t++) {
    const slot = load<i32>(slots + (<usize>t << 2));
    const block = cache + <usize>(slot / bs) * blockStride;
    for (let h = 0; h < nkv; h++) {
      const s = src + ((<usize>t * <usize>stride + <usize>h * <usize>hd) << 2);
      const row = (<usize>h * <usize>bs + <usize>(slot % bs)) * <usize>hd;
      if (bf16) {
        for (let d = 0; d < hd; d++) store<u16>(block + ((row + <usize>d) << 1), f32ToBf16(load<f32>(s + (<usize>d << 2))));
      } else {
        memory.copy(block + (row << 2), s, <usize>hd << 2);
      }
    }
  }
}
