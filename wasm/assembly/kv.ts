// Writing new keys/values into the cache. The cache of one layer is K (kv_head, cap, hd) then
// V (kv_head, cap, hd), each element f32 or bf16 (round to nearest even): so one token costs
// 2 * layers * kvHeads * hd * (4 | 2) bytes, exactly the snapshot layout's bytes per token.
import { f32ToBf16 } from "./simd";

/**
 * src: token t, kv head h at src + (t * stride + h * hd) floats (the k or v part of the fused qkv
 * output) -> cache row (h, pos0 + t).
 */
export function kv_store(src: usize, stride: i32, T: i32, nkv: i32, hd: i32, cache: usize, cap: i32, pos0: i32, bf16: bool): void {
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < nkv; h++) {
      const s = src + ((<usize>t * <usize>stride + <usize>h * <usize>hd) << 2);
      const row = (<usize>h * <usize>cap + <usize>(pos0 + t)) * <usize>hd;
      if (bf16) {
        for (let d = 0; d < hd; d++) store<u16>(cache + ((row + <usize>d) << 1), f32ToBf16(load<f32>(s + (<usize>d << 2))));
      } else {
        memory.copy(cache + (row << 2), s, <usize>hd << 2);
      }
    }
  }
}
