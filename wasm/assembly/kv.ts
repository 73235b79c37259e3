// Writing new keys/values into the paged cache. Block b of one layer holds K at k + b * blockStride
// and V at v + b * blockStride, each element f32 or bf16 (round to nearest even): so one token costs
// 2 * layers * kvHeads * hd * (4 | 2) bytes, exactly the snapshot layout's bytes per token.
//   V  (kv_head, bs, hd): a position's row of hd elements, what P V reads key by key.
//   K  (kv_head, bs / 16, hd, 16): panels of 16 positions, dim-major inside a panel, so attention's
//      score micro-tile reads dim d of 16 keys as four vectors, one panel front to back
//      (wasm/assembly/attention.ts). Element (row i, dim d) of a head's block lies at
//      ((i / 16) hd + d) 16 + i % 16. bs is a multiple of 64, so panels never straddle blocks.
import { f32ToBf16 } from "./simd";

export const PANEL: i32 = 16;

/** Element offset of (row, dim d) inside one head's K block (kv.ts's panel layout). */
// @ts-ignore: decorator
@inline
export function kPanelAt(row: i32, d: i32, hd: i32): usize {
  return (<usize>(row >> 4) * <usize>hd + <usize>d) * PANEL + <usize>(row & 15);
}

/**
 * src: token t, kv head h at src + (t * stride + h * hd) floats (the k or v part of the fused qkv
 * output) -> row (h, slot % bs) of block slot / bs, slot = slots[t] (i32); `panels` for K (the
 * layout above), not for V.
 */
export function kv_store(
  src: usize, stride: i32, T: i32, nkv: i32, hd: i32,
  cache: usize, slots: usize, bs: i32, blockStride: usize, bf16: bool, panels: bool,
): void {
  const eb: usize = bf16 ? 2 : 4;
  for (let t = 0; t < T; t++) {
    const slot = load<i32>(slots + (<usize>t << 2));
    const block = cache + <usize>(slot / bs) * blockStride;
    const i = slot % bs;
    for (let h = 0; h < nkv; h++) {
      const s = src + ((<usize>t * <usize>stride + <usize>h * <usize>hd) << 2);
      const head = block + <usize>h * <usize>bs * <usize>hd * eb;
      if (panels) {
        for (let d = 0; d < hd; d++) {
          const at = head + kPanelAt(i, d, hd) * eb;
          const v = load<f32>(s + (<usize>d << 2));
          if (bf16) store<u16>(at, f32ToBf16(v));
          else store<f32>(at, v);
        }
      } else {
        const row = head + <usize>i * <usize>hd * eb;
        if (bf16) {
          for (let d = 0; d < hd; d++) store<u16>(row + (<usize>d << 1), f32ToBf16(load<f32>(s + (<usize>d << 2))));
        } else {
          memory.copy(row, s, <usize>hd << 2);
        }
      }
    }
  }
}

/**
 * K rows [row, row + rows) of one head's block at `head` (its panels) and the same rows
 * position-major at `buf` (rows x hd elements, the snapshot layout's): copied into the panels when
 * `toPanels`, out of them otherwise. exportKv / importKv's conversion (wasm/src/shard.mjs).
 */
export function kv_panel_rows(
  head: usize, row: i32, rows: i32, hd: i32, bf16: bool, buf: usize, toPanels: bool,
): void {
  const eb: usize = bf16 ? 2 : 4;
  const step = <usize>PANEL * eb; // one dim to the next inside a panel
  for (let i = 0; i < rows; i++) {
    let p = head + kPanelAt(row + i, 0, hd) * eb;
    let o = buf + <usize>i * <usize>hd * eb;
    const end = o + <usize>hd * eb;
    if (bf16) {
      if (toPanels) for (; o < end; o += 2, p += step) store<u16>(p, load<u16>(o));
      else for (; o < end; o += 2, p += step) store<u16>(o, load<u16>(p));
    } else {
      if (toPanels) for (; o < end; o += 4, p += step) store<f32>(p, load<f32>(o));
      else for (; o < end; o += 4, p += step) store<f32>(o, load<f32>(p));
    }
  }
}
